//! What a reply's request id names. Every frame kclient sends carries one of these, so the
//! receive thread knows what an answer is for before it touches anything, and a reply that
//! names something no longer in flight (or that never was) is dropped or refused.
//!
//! ```text
//! 63 62 | 61 ................................................................ 0
//!  0  0 | gen 20 | replica slot 2 | hw queue 8 | tag 16 | pages-1 8 | first part 8   a run of a request
//!  0  1 | replica slot 2 | get/put 1 | 0 | sequence 27 | page 32                      a repair copy
//!  1  0 | sequence 62                                                                  a keepalive
//!  1  1 | all ones                                                                     HELLO, NEW_POOL, DESTROY_POOL, probes
//! ```

use super::request::GEN_MASK;

/// Request id of control operations (handshake, pool setup and checks).
pub const CONTROL: u64 = u64::MAX;

/// A run of consecutive pages of one block request, sent to one replica as one frame (a single
/// page operation, or a BATCH when `count > 1`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RunId {
    /// The request's generation ([`super::request::RequestState::gen`]).
    pub gen: u32,
    /// Which of the page's replicas (slot in its extent's replica set).
    pub slot: u8,
    /// blk-mq hardware queue.
    pub hctx: u8,
    /// blk-mq tag.
    pub tag: u16,
    /// First part (page) of the request in the run.
    pub first: u8,
    /// Pages in the run, 1..=256 (a BATCH has at most 64).
    pub count: u16,
}

/// A repair copy of one page to (put) or from (get) one replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RepairId {
    /// Replica slot the operation goes to.
    pub slot: u8,
    /// A put (true) or a get.
    pub put: bool,
    /// The repair pass's sequence number (stale answers of an earlier pass are dropped).
    pub seq: u32,
    /// Device page.
    pub page: u32,
}

/// Any request id kclient uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireId {
    /// A run of a block request.
    Run(RunId),
    /// A repair copy.
    Repair(RepairId),
    /// A keepalive (STATS) with its sequence number.
    Keepalive(u64),
    /// A control operation.
    Control,
}

impl WireId {
    /// Encodes the id.
    pub fn to_wire(self) -> u64 {
        match self {
            WireId::Run(r) => {
                (u64::from(r.gen & GEN_MASK) << 42)
                    | (u64::from(r.slot & 3) << 40)
                    | (u64::from(r.hctx) << 32)
                    | (u64::from(r.tag) << 16)
                    | (u64::from(r.count.saturating_sub(1) & 0xff) << 8)
                    | u64::from(r.first)
            }
            WireId::Repair(r) => {
                (1u64 << 62)
                    | (u64::from(r.slot & 3) << 60)
                    | (u64::from(r.put) << 59)
                    | (u64::from(r.seq & 0x07ff_ffff) << 32)
                    | u64::from(r.page)
            }
            WireId::Keepalive(seq) => (2u64 << 62) | (seq & ((1 << 62) - 1)),
            WireId::Control => CONTROL,
        }
    }

    /// Decodes an id; `None` for one kclient never sends (kind 3 other than [`CONTROL`]).
    pub fn from_wire(id: u64) -> Option<WireId> {
        Some(match id >> 62 {
            0 => WireId::Run(RunId {
                gen: ((id >> 42) as u32) & GEN_MASK,
                slot: ((id >> 40) & 3) as u8,
                hctx: (id >> 32) as u8,
                tag: (id >> 16) as u16,
                count: ((id >> 8) & 0xff) as u16 + 1,
                first: id as u8,
            }),
            1 => WireId::Repair(RepairId {
                slot: ((id >> 60) & 3) as u8,
                put: (id >> 59) & 1 == 1,
                seq: ((id >> 32) & 0x07ff_ffff) as u32,
                page: id as u32,
            }),
            2 => WireId::Keepalive(id & ((1 << 62) - 1)),
            _ if id == CONTROL => WireId::Control,
            _ => return None,
        })
    }
}
