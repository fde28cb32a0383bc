//! What a connection's sender thread sends: two fixed rings (allocated once, so the I/O path
//! never allocates), urgent (reads) and normal (writes, repair and the rest), behind a mutex,
//! with a condition variable to wake the sender. Each ring is in order; urgent items go first,
//! at most [`URGENT_STREAK`] in a row while normal ones wait.
//!
//! Only the sender thread writes to the socket. Submitters (any task, including one the OOM killer
//! is about to kill) only queue descriptions of what to send; the sender builds the frames from
//! the request's pages and sends them. A signal to a submitting task therefore can never cut a
//! frame in half and break the connection for everyone on it.

use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};
use kernel::time::msecs_to_jiffies;

use crate::logic::wire_id::RunId;

/// One thing to send.
#[derive(Clone, Copy, Debug)]
pub(crate) enum SendItem {
    /// A run of pages of a request, to one replica (the id says which).
    Run(RunId),
    /// A repair batch (the repair context says which pages), to or from replica `slot`.
    Repair { slot: u8, put: bool, seq: u32 },
    /// A keepalive (STATS).
    Keepalive(u64),
    /// DESTROY_POOL of `pool` (module unload).
    DestroyPool(u32),
}

/// A bounded FIFO allocated once (the I/O path never allocates).
pub(crate) struct Ring<T: Copy> {
    items: KVec<T>,
    head: usize,
    len: usize,
}

impl<T: Copy> Ring<T> {
    /// `capacity` slots, filled with `filler` until used.
    pub(crate) fn new(capacity: usize, filler: T) -> Result<Self> {
        let mut items = KVec::with_capacity(capacity, GFP_KERNEL)?;
        for _ in 0..capacity {
            items.push(filler, GFP_KERNEL)?;
        }
        Ok(Ring {
            items,
            head: 0,
            len: 0,
        })
    }

    /// Appends `item` and returns its slot (its position, fixed until it is popped: a caller
    /// may keep data per slot beside the ring), or gives it back when full.
    pub(crate) fn push(&mut self, item: T) -> core::result::Result<usize, T> {
        let cap = self.items.len();
        if self.len == cap {
            return Err(item);
        }
        let at = (self.head + self.len) % cap;
        self.items[at] = item;
        self.len += 1;
        Ok(at)
    }

    /// The oldest item.
    pub(crate) fn peek(&self) -> Option<&T> {
        (self.len > 0).then(|| &self.items[self.head])
    }

    /// The oldest item and its slot.
    pub(crate) fn pop_slot(&mut self) -> Option<(usize, T)> {
        if self.len == 0 {
            return None;
        }
        let at = self.head;
        self.head = (self.head + 1) % self.items.len();
        self.len -= 1;
        Some((at, self.items[at]))
    }

    /// The oldest item.
    pub(crate) fn pop(&mut self) -> Option<T> {
        self.pop_slot().map(|(_, item)| item)
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// Urgent items sent in a row before a waiting normal one gets its turn.
const URGENT_STREAK: u32 = 8;

struct Queues {
    /// Reads (a page fault waits on them).
    urgent: Ring<SendItem>,
    /// Writes, discards, repair, keepalives, control.
    normal: Ring<SendItem>,
    /// Urgent items popped in a row.
    streak: u32,
    open: bool,
}

impl Queues {
    /// Whether the next item comes from the urgent ring: urgent first, but never more than
    /// [`URGENT_STREAK`] in a row while normal items wait (writes must not starve).
    fn urgent_turn(&self) -> bool {
        self.urgent.len > 0 && (self.normal.len == 0 || self.streak < URGENT_STREAK)
    }

    fn peek(&self) -> Option<&SendItem> {
        if self.urgent_turn() {
            self.urgent.peek()
        } else {
            self.normal.peek()
        }
    }

    fn pop(&mut self) -> Option<SendItem> {
        if self.urgent_turn() {
            self.streak += 1;
            self.urgent.pop()
        } else {
            self.streak = 0;
            self.normal.pop()
        }
    }

    fn is_empty(&self) -> bool {
        self.urgent.len == 0 && self.normal.len == 0
    }
}

/// A connection's send queue.
#[pin_data]
pub(crate) struct SendQueue {
    #[pin]
    ring: Mutex<Queues>,
    #[pin]
    wake: CondVar,
}

impl SendQueue {
    /// A closed queue of `capacity` items of each kind.
    pub(crate) fn new(capacity: usize) -> Result<impl PinInit<Self>> {
        let queues = Queues {
            urgent: Ring::new(capacity, SendItem::Keepalive(0))?,
            normal: Ring::new(capacity, SendItem::Keepalive(0))?,
            streak: 0,
            open: false,
        };
        Ok(pin_init!(Self {
            ring <- new_mutex!(queues, "kclient:sendq"),
            wake <- new_condvar!("kclient:sendq"),
        }))
    }

    /// Queues `item` behind the others of its kind; gives it back if the queue is closed
    /// (connection down) or full.
    pub(crate) fn push(&self, item: SendItem) -> core::result::Result<(), SendItem> {
        self.push_to(item, false)
    }

    /// Queues `item` as urgent: ahead of the normal items (see [`Queues::urgent_turn`]). Reads:
    /// a page fault waits on them, writeback does not.
    pub(crate) fn push_urgent(&self, item: SendItem) -> core::result::Result<(), SendItem> {
        self.push_to(item, true)
    }

    fn push_to(&self, item: SendItem, urgent: bool) -> core::result::Result<(), SendItem> {
        let mut q = self.ring.lock();
        if !q.open {
            return Err(item);
        }
        let pushed = if urgent {
            q.urgent.push(item)
        } else {
            q.normal.push(item)
        };
        drop(q);
        if pushed.is_ok() {
            self.wake.notify_one();
        }
        pushed.map(|_| ())
    }

    /// The next item, waiting up to `timeout_ms` for one.
    pub(crate) fn pop_wait(&self, timeout_ms: u32) -> Option<SendItem> {
        let mut q = self.ring.lock();
        if q.is_empty() {
            let _ = self
                .wake
                .wait_interruptible_timeout(&mut q, msecs_to_jiffies(timeout_ms));
        }
        q.pop()
    }

    /// The next item if there is one and `fits` accepts it (the sender packs several frames into
    /// one send while they fit its buffer).
    pub(crate) fn pop_if(&self, fits: impl FnOnce(&SendItem) -> bool) -> Option<SendItem> {
        let mut q = self.ring.lock();
        if !q.peek().is_some_and(fits) {
            return None;
        }
        q.pop()
    }

    /// Accepts items (the connection is up).
    pub(crate) fn open(&self) {
        self.ring.lock().open = true;
    }

    /// Refuses new items and hands every queued one to `f` (they will never be sent). `f` runs
    /// without the queue's lock held (it may queue on other connections).
    pub(crate) fn close(&self, mut f: impl FnMut(SendItem)) {
        self.ring.lock().open = false;
        self.wake.notify_all();
        loop {
            let item = self.ring.lock().pop();
            match item {
                Some(item) => f(item),
                None => break,
            }
        }
    }

    /// Wakes the sender (to notice a stop).
    pub(crate) fn kick(&self) {
        self.wake.notify_all();
    }
}
