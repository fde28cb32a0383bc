//! The tmem wire protocol: one source of truth for the appliance, the kernel module and the host tools.
//!
//! A connection carries frames. Every frame is a fixed 24-byte [`Header`] followed by `payload_len`
//! bytes. Requests carry a client-chosen `request_id`; the reply echoes it, so many requests can be in
//! flight on one connection and replies may come back in any order. Replies set [`flags::REPLY`] and a
//! [`Status`]. Operations follow tmem semantics (RAMster/zcache): pools are ephemeral or persistent,
//! pages are addressed by [`PageKey`] = (pool, object id = 3 x u64, page index), every page payload
//! carries a CRC-32C of the uncompressed page, and [`Opcode::Batch`] packs many page operations in one
//! frame.
//!
//! Layout follows smoltcp's `wire` module: decoders take `&[u8]` and return borrowed representations
//! (`parse`), encoders write into caller-provided buffers (`emit`). Nothing here allocates, panics on
//! any input, or depends on anything: the same file set compiles into the Linux kernel module.
//! The byte-level specification is `docs/protocol.md`; golden vectors live in `tests/golden.rs`.

#![no_std]
#![forbid(unsafe_code)]

mod batch;
mod crc32c;
mod cursor;
mod header;
pub mod keyfile;
mod message;
pub mod noise;
mod page;
mod stats;
mod status;

pub use batch::{BatchEntry, BatchIter, BatchWriter, BATCH_ENTRY_HEADER_LEN};
pub use crc32c::{crc32c, crc32c_append};
pub use header::{frame_len, Header, HEADER_LEN, MAGIC};
pub use message::{
    FlushObject, Hello, HelloReply, NewPool, PoolKind, Reply, Request, AUTH_MAX, AUTH_NOISE,
    AUTH_NOISE_AESGCM, AUTH_NONE, HELLO_NONCE_LEN, MAX_ERROR_MESSAGE,
};
pub use page::{Encoding, Page, PageKey, KEY_LEN, PAGE_HEADER_LEN};
pub use stats::{write_prometheus, StatId, StatsView, STAT_COUNT};
pub use status::{Status, WireError};

/// Protocol version spoken by this source. HELLO negotiates within `[min, max]` ranges.
pub const VERSION: u8 = 1;

/// Size of every page: tmem pages are 4 KiB, as are Linux's swap pages on x86_64.
pub const PAGE_SIZE: usize = 4096;

/// Most page operations one BATCH frame may carry.
pub const MAX_BATCH: usize = 64;

/// Bytes an AEAD tag adds to a page sealed by the client (client-side page encryption).
pub const SEAL_TAG_LEN: usize = 16;

/// Largest page data on the wire: a raw page, or a raw page sealed by the client.
pub const MAX_PAGE_DATA: usize = PAGE_SIZE + SEAL_TAG_LEN;

/// Largest payload either side accepts: a full batch of puts of the largest page data
/// (266,500 bytes). Anything larger is refused before it is buffered, which bounds per-connection
/// memory.
pub const MAX_PAYLOAD: usize =
    4 + MAX_BATCH * (BATCH_ENTRY_HEADER_LEN + KEY_LEN + PAGE_HEADER_LEN + MAX_PAGE_DATA);

/// Largest frame (header + payload).
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD;

/// Operation codes (header byte 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Opcode {
    /// Version negotiation, client identity, authentication material. Must be the first request.
    Hello = 1,
    /// Create a pool (ephemeral or persistent); the reply carries its id.
    NewPool = 2,
    /// Destroy a pool and every page in it.
    DestroyPool = 3,
    /// Store a page (a duplicate put replaces the old page).
    PutPage = 4,
    /// Fetch a page. Ephemeral gets are exclusive; persistent gets keep it unless `GET_AND_FREE`.
    GetPage = 5,
    /// Remove one page.
    FlushPage = 6,
    /// Remove every page of one object.
    FlushObject = 7,
    /// The appliance's counters.
    Stats = 8,
    /// Many page operations in one frame; the reply carries one result per entry, in order.
    Batch = 9,
}

impl Opcode {
    /// Decodes an opcode byte; `None` for codes this version does not know.
    pub fn from_u8(v: u8) -> Option<Opcode> {
        Some(match v {
            1 => Opcode::Hello,
            2 => Opcode::NewPool,
            3 => Opcode::DestroyPool,
            4 => Opcode::PutPage,
            5 => Opcode::GetPage,
            6 => Opcode::FlushPage,
            7 => Opcode::FlushObject,
            8 => Opcode::Stats,
            9 => Opcode::Batch,
            _ => return None,
        })
    }

    /// Operations allowed inside a BATCH frame (page operations only; no nesting).
    pub fn batchable(self) -> bool {
        matches!(
            self,
            Opcode::PutPage | Opcode::GetPage | Opcode::FlushPage | Opcode::FlushObject
        )
    }
}

/// Header flag bits (header bytes 6-7). Batch entries carry the low 8 bits.
pub mod flags {
    /// Set on every reply frame.
    pub const REPLY: u16 = 0x0001;
    /// GET_PAGE on a persistent pool also removes the page (frontswap's exclusive load).
    pub const GET_AND_FREE: u16 = 0x0002;
    /// The client can decode LZ4 pages in replies; without it the appliance sends raw or fill pages.
    pub const ACCEPT_LZ4: u16 = 0x0004;
    /// GET_PAGE on an ephemeral pool leaves the page in place (a read cache, which cannot see
    /// evictions, loads without consuming); the page becomes the most recently used.
    pub const GET_KEEP: u16 = 0x0008;
}
