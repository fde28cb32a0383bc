//! Keeps a repair copy from overtaking a write of the same page.
//!
//! Repair reads a page from a replica that has it and writes it to one that does not. If a new
//! write of that page were in flight meanwhile, the copy could carry the old contents and land
//! after the new ones on the repaired replica. So the device is cut into stripes of
//! [`STRIPE_PAGES`] pages, each with a gate: writes enter and leave it; repair closes it (new
//! writes wait), waits until the writes inside have left, copies the stripe's stale pages, and
//! opens it again. Foreground writes wait at most one stripe's copy.

use super::sync::atomic::{AtomicU32, Ordering};

/// Pages per stripe (also the most pages one BATCH frame carries: runs never cross a stripe).
pub const STRIPE_PAGES: u64 = 64;
/// Gate word: repair holds the stripe.
const REPAIRING: u32 = 1 << 31;

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

impl StripeGate {
    /// An open gate.
    pub fn new() -> StripeGate {
        StripeGate(AtomicU32::new(0))
    }

    /// A write enters; false while repair holds the stripe (wait and try again).
    pub fn enter_write(&self) -> bool {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur & REPAIRING != 0 {
                return false;
            }
            match self
                .0
                .compare_exchange(cur, cur + 1, Ordering::AcqRel, Ordering::Acquire)
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

    /// Repair closes the gate; false if another repair holds it.
    pub fn close(&self) -> bool {
        self.0.fetch_or(REPAIRING, Ordering::AcqRel) & REPAIRING == 0
    }

    /// Whether writes that entered before [`StripeGate::close`] are still in flight.
    pub fn writers_inside(&self) -> bool {
        self.0.load(Ordering::Acquire) & !REPAIRING != 0
    }

    /// Repair is done with the stripe.
    pub fn open(&self) {
        self.0.fetch_and(!REPAIRING, Ordering::AcqRel);
    }
}
