//! The tmem appliance: a compressed page store for remote clients, and the server in front of it.
//!
//! Layers, bottom up: [`slab`] (size-class allocator, exact accounting), [`codec`] (checked LZ4,
//! checksums, fill pages), [`store`] (tmem pools, eviction, quotas), [`framing`] + [`session`] +
//! [`connection`] (the sans-IO connection core: bytes in, bytes out), [`server`] (binds and runs a
//! TCP front end: a thread per connection, or one event loop — the default on Hermit; both are thin
//! shells around [`connection::Connection`]); [`metrics`] (Prometheus text over HTTP).

pub mod auth;
pub mod channel;
pub mod codec;
pub mod connection;
mod event_loop;
pub mod framing;
mod front;
mod handoff;
/// The locks `handoff` uses (loom's in `tests/loom_handoff.rs`).
mod handoff_sync {
    pub(crate) use std::sync::Mutex;
}
#[cfg(target_os = "hermit")]
pub mod hermit_heap;
pub mod keys;
pub mod metrics;
mod readiness;
pub mod server;
pub mod session;
pub mod slab;
pub mod store;
mod threaded;
mod wake;

use protocol::{StatId, STAT_COUNT};
use std::sync::atomic::{AtomicU64, Ordering};

/// Connection-level counters, updated by the server and sessions without taking the store lock.
#[derive(Default, Debug)]
pub struct NetCounters {
    /// Open connections.
    pub connections: AtomicU64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Bytes received.
    pub bytes_in: AtomicU64,
    /// Bytes sent.
    pub bytes_out: AtomicU64,
    /// Malformed requests and unusable streams.
    pub malformed: AtomicU64,
    /// Pages whose checksum did not match.
    pub checksum_errors: AtomicU64,
    /// Pages that did not decompress.
    pub corrupt_pages: AtomicU64,
    /// Authenticated sessions established (Noise handshakes completed).
    pub handshakes: AtomicU64,
    /// HELLOs refused for their credentials (unknown client, wrong key, replay, none given).
    pub auth_failures: AtomicU64,
    /// Records that failed to open (altered, injected, replayed, reordered): connection closed.
    pub aead_failures: AtomicU64,
}

impl NetCounters {
    /// Writes these counters into a STATS vector.
    pub fn fill(&self, values: &mut [u64; STAT_COUNT]) {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        values[StatId::Connections as usize] = get(&self.connections);
        values[StatId::ConnectionsTotal as usize] = get(&self.connections_total);
        values[StatId::BytesIn as usize] = get(&self.bytes_in);
        values[StatId::BytesOut as usize] = get(&self.bytes_out);
        values[StatId::MalformedFrames as usize] = get(&self.malformed);
        values[StatId::ChecksumErrors as usize] = get(&self.checksum_errors);
        values[StatId::CorruptPages as usize] = get(&self.corrupt_pages);
        values[StatId::Handshakes as usize] = get(&self.handshakes);
        values[StatId::AuthFailures as usize] = get(&self.auth_failures);
        values[StatId::AeadFailures as usize] = get(&self.aead_failures);
    }
}
