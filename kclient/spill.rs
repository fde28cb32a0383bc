//! The spill device: a local block device (`spill=/dev/...`) for pages no appliance can take, so
//! a full cluster degrades to disk speed instead of failing swap writes (the kernel does not
//! retry a failed swap write elsewhere). Page `i` of kclient's device lives at page `i` of the
//! spill device. I/O is synchronous, through one bounce page, under the caller's lock.

use kernel::ffi::c_char;
use kernel::prelude::*;

use crate::ffi;
use crate::protocol::PAGE_SIZE;

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
