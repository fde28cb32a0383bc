//! The spill device: a local block device (`spill=/dev/...`) for pages no appliance can take, so
//! a full cluster degrades to disk speed instead of failing swap writes (the kernel does not
//! retry a failed swap write elsewhere). Page `i` of kclient's device lives at page `i` of the
//! spill device. I/O is synchronous, through one bounce page, done by one kernel thread
//! ([`SpillQueue`] feeds it): never in `queue_rq` or a receive thread, where waiting for another
//! block device under memory pressure deadlocked (the spill bio sat behind the swapping task's
//! plug, or behind kblockd work that was itself waiting in kclient).

use kernel::ffi::c_char;
use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};
use kernel::time::msecs_to_jiffies;

use crate::ffi;
use crate::protocol::PAGE_SIZE;
use crate::sendq::Ring;

/// What the spill thread does with a job's page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SpillKind {
    /// Read it back into the request.
    Read,
    /// Write the request's page to the device.
    Write,
    /// Flush the device's write cache (a flush request of the cache device; part 0).
    Flush,
}

/// One page of a request for the spill thread.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpillJob {
    pub(crate) hctx: u8,
    pub(crate) tag: u16,
    pub(crate) gen: u32,
    pub(crate) part: u16,
    pub(crate) kind: SpillKind,
    /// Device page (the cache device ends a write's block state by it, request or not).
    pub(crate) page: u64,
    /// The cache device's write token ([`crate::logic::cache_state::WriteStart`]), else 0.
    pub(crate) token: u32,
}

/// Jobs waiting for the spill thread.
#[pin_data]
pub(crate) struct SpillQueue {
    #[pin]
    ring: Mutex<Ring<SpillJob>>,
    #[pin]
    wake: CondVar,
}

impl SpillQueue {
    /// Room for `capacity` jobs (every part of every request in flight fits).
    pub(crate) fn new(capacity: usize) -> Result<impl PinInit<Self>> {
        let filler = SpillJob {
            hctx: 0,
            tag: 0,
            gen: 0,
            part: 0,
            kind: SpillKind::Read,
            page: 0,
            token: 0,
        };
        let ring = Ring::new(capacity, filler)?;
        Ok(pin_init!(Self {
            ring <- new_mutex!(ring, "kclient:spillq"),
            wake <- new_condvar!("kclient:spillq"),
        }))
    }

    /// Queues `job`; false if the queue is full.
    pub(crate) fn push(&self, job: SpillJob) -> bool {
        let pushed = self.ring.lock().push(job).is_ok();
        if pushed {
            self.wake.notify_one();
        }
        pushed
    }

    /// The next job, waiting up to `timeout_ms` for one.
    pub(crate) fn pop_wait(&self, timeout_ms: u32) -> Option<SpillJob> {
        let mut r = self.ring.lock();
        if r.is_empty() {
            let _ = self
                .wake
                .wait_interruptible_timeout(&mut r, msecs_to_jiffies(timeout_ms));
        }
        r.pop()
    }
}

/// An open spill device and its bounce page.
///
/// # Invariants
///
/// `file` was opened by `kc_spill_open` and `bounce` allocated by `kc_page_alloc`; both are
/// released only in `Drop`.
pub(crate) struct Spill {
    file: core::ptr::NonNull<kernel::bindings::file>,
    bounce: core::ptr::NonNull<kernel::bindings::page>,
    pages: u64,
}

// SAFETY: the file and page are used under the owner's lock (`&mut self` methods).
unsafe impl Send for Spill {}

impl Spill {
    /// Opens `path` (a NUL-terminated block device path).
    pub(crate) fn open(path: &CStr) -> Result<Self> {
        // SAFETY: `path` is NUL-terminated and valid for the call.
        let file = unsafe { ffi::kc_spill_open(path.as_char_ptr().cast::<c_char>()) };
        let file = kernel::error::from_err_ptr(file)?;
        let file = core::ptr::NonNull::new(file).ok_or(EINVAL)?;
        // SAFETY: no preconditions.
        let bounce = match core::ptr::NonNull::new(unsafe { ffi::kc_page_alloc() }) {
            Some(b) => b,
            None => {
                // SAFETY: `file` was opened above and is not used elsewhere.
                unsafe { ffi::kc_spill_close(file.as_ptr()) };
                return Err(ENOMEM);
            }
        };
        // SAFETY: `file` is an open block device.
        let pages = unsafe { ffi::kc_spill_pages(file.as_ptr()) };
        Ok(Self {
            file,
            bounce,
            pages,
        })
    }

    /// Capacity in pages.
    pub(crate) fn pages(&self) -> u64 {
        self.pages
    }

    fn bounce(&mut self) -> &mut [u8] {
        // SAFETY: `bounce` is an allocated lowmem page (GFP_KERNEL) owned by `self`; `&mut self`
        // gives exclusive access for the borrow.
        unsafe {
            core::slice::from_raw_parts_mut(
                ffi::kc_page_address(self.bounce.as_ptr()).cast::<u8>(),
                PAGE_SIZE,
            )
        }
    }

    /// Writes one page at `index`; `fill` puts its contents into the (page-sized) buffer.
    pub(crate) fn write(&mut self, index: u64, fill: impl FnOnce(&mut [u8]) -> bool) -> Result {
        if index >= self.pages || !fill(self.bounce()) {
            return Err(EINVAL);
        }
        // SAFETY: `file` is open and `bounce` allocated (invariants); the call is synchronous.
        kernel::error::to_result(unsafe {
            ffi::kc_spill_rw(self.file.as_ptr(), index, self.bounce.as_ptr(), true)
        })
    }

    /// Flushes the device's volatile write cache.
    pub(crate) fn flush(&mut self) -> Result {
        // SAFETY: `file` is open (invariant); the call is synchronous.
        kernel::error::to_result(unsafe { ffi::kc_spill_flush(self.file.as_ptr()) })
    }

    /// The page last read or written (the cache device puts it on an appliance).
    pub(crate) fn last_page(&mut self) -> &[u8] {
        self.bounce()
    }

    /// Reads one page at `index` and hands it to `take` (false: failed).
    pub(crate) fn read(&mut self, index: u64, take: impl FnOnce(&[u8]) -> bool) -> Result {
        if index >= self.pages {
            return Err(EINVAL);
        }
        // SAFETY: as in `write`.
        kernel::error::to_result(unsafe {
            ffi::kc_spill_rw(self.file.as_ptr(), index, self.bounce.as_ptr(), false)
        })?;
        if take(self.bounce()) {
            Ok(())
        } else {
            Err(EIO)
        }
    }
}

impl Drop for Spill {
    fn drop(&mut self) {
        // SAFETY: both were acquired in `open` and are released once, here (invariants).
        unsafe {
            ffi::kc_page_free(self.bounce.as_ptr());
            ffi::kc_spill_close(self.file.as_ptr());
        }
    }
}
