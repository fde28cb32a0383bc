//! One TCP connection to an appliance: its socket, its send queue, the buffers its sender thread
//! builds frames in, and what the failure detector watches (answers owed, last activity).
//!
//! Threads (see `link.rs`): a receive thread that connects, says HELLO, receives and dispatches
//! replies, and on failure cleans up and reconnects; a sender thread, the only writer to the socket.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_mutex, new_spinlock, Arc, Mutex, SpinLock};

use crate::lz4::Compressor;
use crate::net::TcpStream;
use crate::protocol::{MAX_FRAME, PAGE_SIZE};
use crate::sendq::SendQueue;
use crate::thread;
use crate::transport::Sealer;

/// Items a send queue holds: every run of every request could wait on one connection, plus
/// repair and keepalives.
pub(crate) const QUEUE_ITEMS: usize = 4096;

/// What the sender thread builds frames in (locked while it sends; teardown takes the lock to
/// wait for a send in progress).
pub(crate) struct SendBufs {
    /// Frames, back to back (one BATCH of raw puts at most, plus small frames that fit).
    pub(crate) frames: VVec<u8>,
    /// One page copied out of a request, and its compressed or sealed form.
    pub(crate) page: KVec<u8>,
    pub(crate) sealed: KVec<u8>,
    pub(crate) lz4: Option<Compressor>,
    /// Seals the frames into records when the session is secure.
    pub(crate) sealer: Sealer,
}

/// One connection.
#[pin_data]
pub(crate) struct Conn {
    /// Index of its appliance.
    pub(crate) app: usize,
    /// Index among the appliance's connections (pages route here by stripe).
    pub(crate) idx: usize,
    #[pin]
    stream: SpinLock<Option<Arc<TcpStream>>>,
    #[pin]
    pub(crate) send: Mutex<SendBufs>,
    #[pin]
    pub(crate) queue: SendQueue,
    up: AtomicBool,
    /// Frames sent and not answered yet.
    pub(crate) owed: AtomicU32,
    /// Last progress (ms): an answer that matched something owed, or the moment the connection
    /// went from idle to busy. Replies that match nothing (forged, stale) do not count.
    pub(crate) progress_ms: AtomicU64,
    /// When the unanswered keepalive was sent (ms; 0: none).
    pub(crate) keepalive_since_ms: AtomicU64,
    /// Last frame sent or received (ms).
    pub(crate) last_active_ms: AtomicU64,
    /// The failure detector reset it (cleared when it is up again).
    pub(crate) kicked: AtomicBool,
    /// Status of the last control reply (`u32::MAX`: none yet).
    pub(crate) control_status: AtomicU32,
}

impl Conn {
    pub(crate) fn new(app: usize, idx: usize, compress: bool) -> Result<Arc<Self>> {
        let bufs = SendBufs {
            frames: VVec::from_elem(0u8, MAX_FRAME, GFP_KERNEL)?,
            page: KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?,
            sealed: KVec::from_elem(0u8, crate::protocol::MAX_PAGE_DATA, GFP_KERNEL)?,
            lz4: if compress {
                Some(Compressor::new()?)
            } else {
                None
            },
            sealer: Sealer::new(MAX_FRAME)?,
        };
        let queue = SendQueue::new(QUEUE_ITEMS)?;
        Arc::pin_init(
            pin_init!(Self {
                app,
                idx,
                stream <- new_spinlock!(None, "kclient:stream"),
                send <- new_mutex!(bufs, "kclient:send"),
                queue <- queue,
                up: AtomicBool::new(false),
                owed: AtomicU32::new(0),
                progress_ms: AtomicU64::new(0),
                keepalive_since_ms: AtomicU64::new(0),
                last_active_ms: AtomicU64::new(0),
                kicked: AtomicBool::new(false),
                control_status: AtomicU32::new(u32::MAX),
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    pub(crate) fn stream(&self) -> Option<Arc<TcpStream>> {
        self.stream.lock().clone()
    }

    /// Makes `stream` the connection's socket and accepts items.
    pub(crate) fn publish(&self, stream: Arc<TcpStream>) {
        let old = self.stream.lock().replace(stream);
        // Dropped outside the spinlock: releasing a socket sleeps.
        drop(old);
        self.owed.store(0, Ordering::Release);
        self.keepalive_since_ms.store(0, Ordering::Release);
        self.progress_ms.store(thread::now_ms(), Ordering::Release);
        self.last_active_ms
            .store(thread::now_ms(), Ordering::Release);
        self.queue.open();
        self.kicked.store(false, Ordering::Release);
        self.up.store(true, Ordering::Release);
    }

    /// Marks the connection down and takes its socket away.
    pub(crate) fn unpublish(&self) -> Option<Arc<TcpStream>> {
        self.up.store(false, Ordering::Release);
        self.stream.lock().take()
    }

    /// Breaks the connection; its receive thread notices, cleans up and reconnects.
    pub(crate) fn kick(&self) {
        if let Some(s) = self.stream() {
            s.shutdown();
        }
        self.queue.kick();
    }

    /// `frames` went out, `work` of them carrying page operations (an idle connection becoming
    /// busy with work starts its progress clock; keepalives have their own).
    pub(crate) fn sent(&self, frames: u32, work: u32) {
        let now = thread::now_ms();
        if self.owed.fetch_add(frames, Ordering::AcqRel) == 0 && work > 0 {
            self.progress_ms.store(now, Ordering::Release);
        }
        self.last_active_ms.store(now, Ordering::Release);
    }

    /// A reply came in (whatever it says).
    pub(crate) fn answered(&self) {
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
        self.last_active_ms
            .store(thread::now_ms(), Ordering::Release);
    }

    /// A reply answered something owed on this connection.
    pub(crate) fn progressed(&self) {
        self.progress_ms.store(thread::now_ms(), Ordering::Release);
    }

    /// No progress for `after_ms` (the caller knows it owes something).
    pub(crate) fn no_progress_for(&self, now: u64, after_ms: u32) -> bool {
        now.saturating_sub(self.progress_ms.load(Ordering::Acquire)) >= u64::from(after_ms)
    }

    /// A keepalive unanswered for `after_ms`.
    pub(crate) fn keepalive_overdue(&self, now: u64, after_ms: u32) -> bool {
        let since = self.keepalive_since_ms.load(Ordering::Acquire);
        since != 0 && now.saturating_sub(since) >= u64::from(after_ms)
    }
}
