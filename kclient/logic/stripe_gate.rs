//! Keeps a repair copy from overtaking a write of the same page, without making writes wait for
//! the network.
//!
//! Repair reads a page from a replica that has it and writes it to one that does not. If a write
//! of that page were in flight meanwhile, the copy could carry the old contents and land after
//! the new ones on the repaired replica. So the device is cut into stripes of [`STRIPE_PAGES`]
//! pages, each with a gate that counts the writes inside it and how many ever entered (an epoch).
//! Repair is optimistic:
//!
//! 1. [`StripeGate::begin_copy`]: only a stripe with no write inside may be copied; it notes the
//!    epoch.
//! 2. It copies (GET from the source, PUT to the target) while writes go on freely.
//! 3. [`StripeGate::commit`]: if no write entered since step 1, it closes the gate for a moment
//!    (writes spin only while the caller marks the copied pages current, no I/O), then
//!    [`StripeGate::open`]. If one did, the copy may be older than that write on the target:
//!    the pages stay stale and are copied again later.
//!
//! An earlier version closed the gate for the whole copy: writes then waited in the block
//! layer's `queue_rq` for network round trips, which stalled the whole hardware queue.

use super::sync::atomic::{AtomicU32, Ordering};

/// Pages per stripe (also the most pages one BATCH frame carries: runs never cross a stripe).
pub const STRIPE_PAGES: u64 = 64;
/// Gate word: repair is marking the stripe's copied pages current (bit 31).
const CLOSED: u32 = 1 << 31;
/// Gate word: writes inside (bits 0-15).
const INSIDE_MASK: u32 = 0xffff;
/// Gate word: writes that ever entered, modulo 2^15 (bits 16-30).
const EPOCH_ONE: u32 = 1 << 16;
const EPOCH_MASK: u32 = 0x7fff << 16;

/// The stripe holding `page`.
pub fn stripe_of(page: u64) -> usize {
    (page / STRIPE_PAGES) as usize
}

/// One stripe's gate.
pub struct StripeGate(AtomicU32);

impl Default for StripeGate {
    fn default() -> Self {
        StripeGate::new()
    }
}

/// What [`StripeGate::begin_copy`] saw: the epoch the copy must still find at commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyTicket(u32);

impl StripeGate {
    /// An open gate.
    pub fn new() -> StripeGate {
        StripeGate(AtomicU32::new(0))
    }

    /// A write enters; false only during a commit (microseconds: try again at once).
    pub fn enter_write(&self) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur & CLOSED != 0 || cur & INSIDE_MASK == INSIDE_MASK {
                return false;
            }
            let next = (cur & CLOSED)
                | (cur.wrapping_add(EPOCH_ONE) & EPOCH_MASK)
                | ((cur & INSIDE_MASK) + 1);
            match self
                .0
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// A write that entered has been answered by every replica.
    pub fn leave_write(&self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }

    /// Repair may copy the stripe now (no write inside): the ticket to commit with.
    pub fn begin_copy(&self) -> Option<CopyTicket> {
        let cur = self.0.load(Ordering::Acquire);
        (cur & (CLOSED | INSIDE_MASK) == 0).then_some(CopyTicket(cur & EPOCH_MASK))
    }

    /// The copy is on the target: true (and the gate closed until [`StripeGate::open`]) if no
    /// write entered since `ticket`, so the copied pages may be marked current.
    pub fn commit(&self, ticket: CopyTicket) -> bool {
        self.0
            .compare_exchange(
                ticket.0,
                ticket.0 | CLOSED,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Whether writes are inside.
    pub fn writers_inside(&self) -> bool {
        self.0.load(Ordering::Acquire) & INSIDE_MASK != 0
    }

    /// Ends a successful commit.
    pub fn open(&self) {
        self.0.fetch_and(!CLOSED, Ordering::AcqRel);
    }
}
