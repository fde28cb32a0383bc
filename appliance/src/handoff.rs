//! Handing connections from the acceptor to an event loop that may be asleep in `poll`, or gone.
//!
//! The acceptor [`hand`](Handoff::hand)s an item (queued under the lock, then the loop's waker
//! woken); the loop [`take`](Handoff::take)s its items at the start of every pass and, when a
//! pass made no progress, waits until its waker is ready and then [`rearm`](Handoff::rearm)s it.
//! Rearming only after the wait, and taking only after rearming, means a hand-off can never fall
//! between the loop's last look and its sleep. A loop that dies [`retire`](Handoff::retire)s: the
//! flag and the queue share one lock, so an item is either taken, given back to the acceptor, or
//! handed back by `retire` for closing; none is stranded in a queue nobody reads.
//!
//! The sync primitives come from `super::handoff_sync` (std in the appliance, loom in
//! `tests/loom_handoff.rs`, which checks every interleaving of the above).

use super::handoff_sync::Mutex;

/// What ends the receiver's wait: an `eventfd` in its poll set (`crate::wake::Waker`).
pub(crate) trait Wake {
    /// Makes the receiver's next (or current) wait return.
    fn wake(&self);
    /// Undoes the wakes so far, so the next wait sleeps.
    fn reset(&self);
}

struct Queue<T> {
    items: Vec<T>,
    retired: bool,
}

/// Items on their way to one receiver, and the waker that tells it.
pub(crate) struct Handoff<T, W> {
    queue: Mutex<Queue<T>>,
    waker: W,
}

impl<T, W: Wake> Handoff<T, W> {
    pub(crate) fn new(waker: W) -> Self {
        Handoff {
            queue: Mutex::new(Queue {
                items: Vec::new(),
                retired: false,
            }),
            waker,
        }
    }

    pub(crate) fn waker(&self) -> &W {
        &self.waker
    }

    fn queue(&self) -> impl core::ops::DerefMut<Target = Queue<T>> + '_ {
        // A panic while holding this lock leaves the queue consistent (a push or a take).
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `item` and wakes the receiver; gives `item` back if the receiver retired.
    pub(crate) fn hand(&self, item: T) -> Result<(), T> {
        let mut q = self.queue();
        if q.retired {
            return Err(item);
        }
        q.items.push(item);
        drop(q);
        self.waker.wake();
        Ok(())
    }

    /// Everything handed so far (the receiver, at the start of a pass).
    pub(crate) fn take(&self) -> Vec<T> {
        std::mem::take(&mut self.queue().items)
    }

    /// Re-arms the waker (the receiver, after its wait returned and before its next `take`).
    pub(crate) fn rearm(&self) {
        self.waker.reset();
    }

    /// The receiver is gone: nothing more is accepted; returns what was handed and not taken.
    pub(crate) fn retire(&self) -> Vec<T> {
        let mut q = self.queue();
        q.retired = true;
        std::mem::take(&mut q.items)
    }

    pub(crate) fn is_retired(&self) -> bool {
        self.queue().retired
    }
}
