//! STATS reply: a count followed by that many u64 counters, indexed by [`StatId`].
//!
//! ```text
//! payload: count u32 | value u64 * count
//! ```
//! New counters are only ever appended, so old clients read the prefix they know and new clients see
//! missing counters as absent.

use crate::cursor::{Reader, Writer};
use crate::WireError;

macro_rules! stat_ids {
    ($($(#[$doc:meta])* $name:ident = $idx:literal, $label:literal, $gauge:literal;)*) => {
        /// Index of each counter in a STATS reply. Append only.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum StatId { $($(#[$doc])* $name = $idx,)* }

        impl StatId {
            /// Every counter, in wire order.
            pub const ALL: &'static [StatId] = &[$(StatId::$name,)*];

            /// Stable snake_case name (used by `tmemctl stats --json` and Prometheus output).
            pub fn name(self) -> &'static str {
                match self { $(StatId::$name => $label,)* }
            }

            /// Whether the counter is a level (goes up and down) rather than a running total.
            pub fn is_gauge(self) -> bool {
                match self { $(StatId::$name => $gauge,)* }
            }
        }
    };
}

stat_ids! {
    /// Pages currently stored (all pools).
    Pages = 0, "pages", true;
    /// Pages currently stored in persistent pools.
    PersistentPages = 1, "persistent_pages", true;
    /// Pages currently stored in ephemeral pools.
    EphemeralPages = 2, "ephemeral_pages", true;
    /// Sum of the stored sizes of pages (compressed size, 4096 for raw, 0 for fill).
    StoredBytes = 3, "stored_bytes", true;
    /// Bytes the store takes from its memory budget for page data (slabs in use).
    DataBytes = 4, "data_bytes", true;
    /// Bytes accounted for metadata (index entries).
    MetadataBytes = 5, "metadata_bytes", true;
    /// The memory budget (`--memory`).
    MemoryLimit = 6, "memory_limit", true;
    /// Pages stored as a fill word (zero/same-filled).
    FillPages = 7, "fill_pages", true;
    /// Pages stored raw (did not compress below the threshold).
    RawPages = 8, "raw_pages", true;
    /// Live pools.
    Pools = 9, "pools", true;
    /// Open client connections.
    Connections = 10, "connections", true;
    /// Successful puts.
    Puts = 11, "puts", false;
    /// Gets that found their page.
    GetHits = 12, "get_hits", false;
    /// Gets that found nothing.
    GetMisses = 13, "get_misses", false;
    /// Pages removed by flush page/object/pool.
    Flushes = 14, "flushes", false;
    /// Ephemeral pages evicted to make room.
    Evictions = 15, "evictions", false;
    /// Puts refused for lack of memory.
    NoSpaceRefusals = 16, "no_space_refusals", false;
    /// Puts refused because the client's quota was used up.
    QuotaRefusals = 17, "quota_refusals", false;
    /// Pages rejected because their checksum did not match.
    ChecksumErrors = 18, "checksum_errors", false;
    /// Pages rejected because they did not decompress.
    CorruptPages = 19, "corrupt_pages", false;
    /// Frames rejected as malformed (including closed connections).
    MalformedFrames = 20, "malformed_frames", false;
    /// Bytes received from clients.
    BytesIn = 21, "bytes_in", false;
    /// Bytes sent to clients.
    BytesOut = 22, "bytes_out", false;
    /// Connections accepted since start.
    ConnectionsTotal = 23, "connections_total", false;
    /// Authenticated sessions established (Noise handshakes completed).
    Handshakes = 24, "handshakes", false;
    /// HELLOs refused for their credentials (unknown client, wrong key, replayed, none given).
    AuthFailures = 25, "auth_failures", false;
    /// Records that failed authentication (altered, injected, replayed, reordered).
    AeadFailures = 26, "aead_failures", false;
}

/// Number of counters this source knows.
pub const STAT_COUNT: usize = StatId::ALL.len();

/// Most counters a STATS reply may carry (bounds what a client decodes).
const MAX_STATS: usize = 1024;

/// Counters in a STATS reply, borrowed from the frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatsView<'a> {
    values: &'a [u8],
}

impl<'a> StatsView<'a> {
    /// Decodes a STATS payload.
    pub fn parse(payload: &'a [u8]) -> Result<StatsView<'a>, WireError> {
        let mut r = Reader::new(payload);
        let count = r.u32()? as usize;
        if count > MAX_STATS {
            return Err(WireError::TooLarge);
        }
        let values = r.bytes(count * 8)?;
        r.finish()?;
        Ok(StatsView { values })
    }

    /// Encodes `values` (indexed by [`StatId`]) into `scratch` (at least 8 bytes per value) and returns
    /// a view over it, ready for [`crate::Reply::Stats`].
    pub fn encode(values: &[u64], scratch: &'a mut [u8]) -> Result<StatsView<'a>, WireError> {
        let n = values.len().min(MAX_STATS);
        let out = scratch.get_mut(..n * 8).ok_or(WireError::BufferTooSmall)?;
        for (chunk, v) in out.chunks_exact_mut(8).zip(values) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        Ok(StatsView { values: out })
    }

    /// Number of counters present.
    pub fn len(&self) -> usize {
        self.values.len() / 8
    }

    /// Whether there are no counters.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Counter by index, if the appliance sent it.
    pub fn get_index(&self, index: usize) -> Option<u64> {
        let bytes = self.values.get(index * 8..index * 8 + 8)?;
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        Some(u64::from_le_bytes(word))
    }

    /// Counter by id, if the appliance sent it.
    pub fn get(&self, id: StatId) -> Option<u64> {
        self.get_index(id as usize)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.len() as u32)?;
        w.bytes(self.values)
    }
}

/// Writes counters in the Prometheus text exposition format, each with the label `target`.
/// Counters this source does not know are written as `tmem_stat_<index>`.
pub fn write_prometheus(
    out: &mut impl core::fmt::Write,
    target: &str,
    values: impl Iterator<Item = u64>,
) -> core::fmt::Result {
    for (i, v) in values.enumerate() {
        let (name, gauge) = match StatId::ALL.get(i) {
            Some(id) => (id.name(), id.is_gauge()),
            None => ("stat", true),
        };
        let (kind, suffix) = if gauge {
            ("gauge", "")
        } else {
            ("counter", "_total")
        };
        if StatId::ALL.get(i).is_some() {
            writeln!(out, "# TYPE tmem_{name}{suffix} {kind}")?;
            writeln!(out, "tmem_{name}{suffix}{{target=\"{target}\"}} {v}")?;
        } else {
            writeln!(out, "tmem_{name}_{i}{{target=\"{target}\"}} {v}")?;
        }
    }
    Ok(())
}
