//! Counters, in the spirit of RAMster's: what went to the appliance, what came back, what failed,
//! and how long requests took. Lock-free (relaxed atomics); shown in `/sys/kernel/debug/kclient/stats`.

use core::fmt::Write;
use core::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// Latency histogram buckets: bucket `i` counts requests that took < 2^i microseconds (the last one
/// counts everything slower).
pub(crate) const LAT_BUCKETS: usize = 24;

pub(crate) struct Stats {
    pub(crate) pages_stored: AtomicU64,
    /// Pages sent LZ4-compressed (the rest went raw or as a fill word).
    pub(crate) pages_compressed: AtomicU64,
    pub(crate) pages_loaded: AtomicU64,
    pub(crate) pages_loaded_zero: AtomicU64,
    pub(crate) pages_discarded: AtomicU64,
    pub(crate) puts_refused: AtomicU64,
    pub(crate) failed_puts: AtomicU64,
    pub(crate) failed_gets: AtomicU64,
    pub(crate) failed_flushes: AtomicU64,
    pub(crate) failed_requests: AtomicU64,
    pub(crate) checksum_errors: AtomicU64,
    pub(crate) lost_pages: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
    pub(crate) inflight_requests: AtomicI64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) connect_failures: AtomicU64,
    pub(crate) timeouts: AtomicU64,
    pub(crate) stale_replies: AtomicU64,
    pub(crate) protocol_errors: AtomicU64,
    pub(crate) send_errors: AtomicU64,
    pub(crate) requests: AtomicU64,
    pub(crate) handshakes: AtomicU64,
    pub(crate) auth_failures: AtomicU64,
    pub(crate) aead_failures: AtomicU64,
    pub(crate) stalls: AtomicU64,
    pub(crate) appliance_downs: AtomicU64,
    pub(crate) replica_write_failures: AtomicU64,
    pub(crate) read_retries: AtomicU64,
    /// Pages sent again after every replica's connection was lost (once per page and request).
    pub(crate) resent_pages: AtomicU64,
    /// Repair copies not counted because a write entered the stripe meanwhile (copied again).
    pub(crate) repair_retries: AtomicU64,
    pub(crate) not_found_replies: AtomicU64,
    pub(crate) pages_repaired: AtomicU64,
    pub(crate) pages_spilled: AtomicU64,
    pub(crate) pages_spill_read: AtomicU64,
    pub(crate) pages_sealed: AtomicU64,
    pub(crate) page_auth_failures: AtomicU64,
    /// Cache device: blocks read from an appliance.
    pub(crate) cache_hits: AtomicU64,
    /// Cache device: blocks read from the backing device.
    pub(crate) cache_misses: AtomicU64,
    /// Cache device: blocks put into the cache and readable there.
    pub(crate) cache_fills: AtomicU64,
    /// Cache device: fills given up (queue full, appliance down, put refused, or a write of the
    /// block began meanwhile).
    pub(crate) cache_fills_dropped: AtomicU64,
    /// Cache device: writes that made a readable cached block unreadable.
    pub(crate) cache_invalidations: AtomicU64,
    pub(crate) lat: [AtomicU64; LAT_BUCKETS],
}

pub(crate) static STATS: Stats = Stats {
    pages_stored: AtomicU64::new(0),
    pages_compressed: AtomicU64::new(0),
    pages_loaded: AtomicU64::new(0),
    pages_loaded_zero: AtomicU64::new(0),
    pages_discarded: AtomicU64::new(0),
    puts_refused: AtomicU64::new(0),
    failed_puts: AtomicU64::new(0),
    failed_gets: AtomicU64::new(0),
    failed_flushes: AtomicU64::new(0),
    failed_requests: AtomicU64::new(0),
    checksum_errors: AtomicU64::new(0),
    lost_pages: AtomicU64::new(0),
    bytes_sent: AtomicU64::new(0),
    bytes_received: AtomicU64::new(0),
    inflight_requests: AtomicI64::new(0),
    reconnects: AtomicU64::new(0),
    connect_failures: AtomicU64::new(0),
    timeouts: AtomicU64::new(0),
    stale_replies: AtomicU64::new(0),
    protocol_errors: AtomicU64::new(0),
    send_errors: AtomicU64::new(0),
    requests: AtomicU64::new(0),
    handshakes: AtomicU64::new(0),
    auth_failures: AtomicU64::new(0),
    aead_failures: AtomicU64::new(0),
    stalls: AtomicU64::new(0),
    appliance_downs: AtomicU64::new(0),
    replica_write_failures: AtomicU64::new(0),
    read_retries: AtomicU64::new(0),
    resent_pages: AtomicU64::new(0),
    repair_retries: AtomicU64::new(0),
    not_found_replies: AtomicU64::new(0),
    pages_repaired: AtomicU64::new(0),
    pages_spilled: AtomicU64::new(0),
    pages_spill_read: AtomicU64::new(0),
    pages_sealed: AtomicU64::new(0),
    page_auth_failures: AtomicU64::new(0),
    cache_hits: AtomicU64::new(0),
    cache_misses: AtomicU64::new(0),
    cache_fills: AtomicU64::new(0),
    cache_fills_dropped: AtomicU64::new(0),
    cache_invalidations: AtomicU64::new(0),
    lat: [const { AtomicU64::new(0) }; LAT_BUCKETS],
};

/// Adds one to a counter.
pub(crate) fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// Records a finished request that took `ns` nanoseconds.
pub(crate) fn record_latency(ns: u64) {
    let us = ns / 1000;
    let bucket = (64 - us.leading_zeros()) as usize;
    inc(&STATS.requests);
    if let Some(b) = STATS.lat.get(bucket.min(LAT_BUCKETS - 1)) {
        inc(b);
    }
}

/// A `fmt::Write` into a fixed buffer that silently truncates.
pub(crate) struct BufWriter<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Write for BufWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        let room = self.buf.len().saturating_sub(self.len);
        let n = s.len().min(room);
        if let (Some(dst), Some(src)) = (
            self.buf.get_mut(self.len..self.len + n),
            s.as_bytes().get(..n),
        ) {
            dst.copy_from_slice(src);
            self.len += n;
        }
        Ok(())
    }
}

/// A writer of `name value` lines into a fixed buffer (truncating).
pub(crate) fn writer(buf: &mut [u8]) -> BufWriter<'_> {
    BufWriter { buf, len: 0 }
}

impl BufWriter<'_> {
    /// Bytes written.
    pub(crate) fn written(&self) -> usize {
        self.len
    }
}

/// Writes the global counters as `name value` lines into `w`.
pub(crate) fn format(w: &mut BufWriter<'_>, connected: u32, conns: u32) {
    let s = &STATS;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let _ = writeln!(w, "pages_stored {}", get(&s.pages_stored));
    let _ = writeln!(w, "pages_compressed {}", get(&s.pages_compressed));
    let _ = writeln!(w, "pages_loaded {}", get(&s.pages_loaded));
    let _ = writeln!(w, "pages_loaded_zero {}", get(&s.pages_loaded_zero));
    let _ = writeln!(w, "pages_discarded {}", get(&s.pages_discarded));
    let _ = writeln!(w, "puts_refused {}", get(&s.puts_refused));
    let _ = writeln!(w, "failed_puts {}", get(&s.failed_puts));
    let _ = writeln!(w, "failed_gets {}", get(&s.failed_gets));
    let _ = writeln!(w, "failed_flushes {}", get(&s.failed_flushes));
    let _ = writeln!(w, "failed_requests {}", get(&s.failed_requests));
    let _ = writeln!(w, "checksum_errors {}", get(&s.checksum_errors));
    let _ = writeln!(w, "lost_pages {}", get(&s.lost_pages));
    let _ = writeln!(w, "bytes_sent {}", get(&s.bytes_sent));
    let _ = writeln!(w, "bytes_received {}", get(&s.bytes_received));
    let _ = writeln!(
        w,
        "inflight_requests {}",
        s.inflight_requests.load(Ordering::Relaxed)
    );
    let _ = writeln!(w, "reconnects {}", get(&s.reconnects));
    let _ = writeln!(w, "connect_failures {}", get(&s.connect_failures));
    let _ = writeln!(w, "timeouts {}", get(&s.timeouts));
    let _ = writeln!(w, "stale_replies {}", get(&s.stale_replies));
    let _ = writeln!(w, "protocol_errors {}", get(&s.protocol_errors));
    let _ = writeln!(w, "send_errors {}", get(&s.send_errors));
    let _ = writeln!(w, "requests {}", get(&s.requests));
    let _ = writeln!(w, "handshakes {}", get(&s.handshakes));
    let _ = writeln!(w, "auth_failures {}", get(&s.auth_failures));
    let _ = writeln!(w, "aead_failures {}", get(&s.aead_failures));
    let _ = writeln!(w, "stalls {}", get(&s.stalls));
    let _ = writeln!(w, "appliance_downs {}", get(&s.appliance_downs));
    let _ = writeln!(
        w,
        "replica_write_failures {}",
        get(&s.replica_write_failures)
    );
    let _ = writeln!(w, "read_retries {}", get(&s.read_retries));
    let _ = writeln!(w, "resent_pages {}", get(&s.resent_pages));
    let _ = writeln!(w, "repair_retries {}", get(&s.repair_retries));
    let _ = writeln!(w, "not_found_replies {}", get(&s.not_found_replies));
    let _ = writeln!(w, "pages_repaired {}", get(&s.pages_repaired));
    let _ = writeln!(w, "pages_spilled {}", get(&s.pages_spilled));
    let _ = writeln!(w, "pages_spill_read {}", get(&s.pages_spill_read));
    let _ = writeln!(w, "pages_sealed {}", get(&s.pages_sealed));
    let _ = writeln!(w, "page_auth_failures {}", get(&s.page_auth_failures));
    let _ = writeln!(w, "cache_hits {}", get(&s.cache_hits));
    let _ = writeln!(w, "cache_misses {}", get(&s.cache_misses));
    let _ = writeln!(w, "cache_fills {}", get(&s.cache_fills));
    let _ = writeln!(w, "cache_fills_dropped {}", get(&s.cache_fills_dropped));
    let _ = writeln!(w, "cache_invalidations {}", get(&s.cache_invalidations));
    // Bytes the backing device did not have to read.
    let _ = writeln!(w, "cache_bytes_saved {}", get(&s.cache_hits) * 4096);
    let _ = writeln!(w, "connections_up {connected}");
    let _ = writeln!(w, "connections {conns}");
    for (i, b) in s.lat.iter().enumerate() {
        let n = get(b);
        if n != 0 {
            let _ = writeln!(w, "latency_us_lt_{} {}", 1u64 << i, n);
        }
    }
}
