//! `/sys/kernel/debug/kclient/stats`: the file is created in C (`kc_debugfs_init`), its contents
//! are formatted here (`Devices::format_stats`), with the live devices' connection state.

use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::error::to_result;
use kernel::ffi::{c_char, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::ForeignOwnable;

use crate::devices::Devices;
use crate::ffi;

/// The devices whose counters and connections the file reports: an `Arc<Devices>` turned into a
/// raw pointer by [`StatsFile::create`], or null.
static SOURCE: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// The debugfs directory and its `stats` file, removed on drop. It holds a reference to the
/// devices.
pub(crate) struct StatsFile(());

impl StatsFile {
    /// Creates `/sys/kernel/debug/kclient/stats`. Only one may exist (`EBUSY` otherwise).
    pub(crate) fn create(devices: Arc<Devices>) -> Result<Self> {
        let ptr = devices.into_foreign().cast_mut();
        if SOURCE
            .compare_exchange(
                core::ptr::null_mut(),
                ptr,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_err()
        {
            // SAFETY: `ptr` came from `into_foreign` just above and was never shared.
            drop(unsafe { Arc::<Devices>::from_foreign(ptr) });
            return Err(EBUSY);
        }
        // SAFETY: no preconditions; readers of the file find the devices stored above.
        if let Err(e) = to_result(unsafe { ffi::kc_debugfs_init() }) {
            release();
            return Err(e);
        }
        Ok(Self(()))
    }
}

impl Drop for StatsFile {
    fn drop(&mut self) {
        // SAFETY: no preconditions. `debugfs_remove_recursive` waits for running readers (so for
        // any `kclient_stats_format` call) and no reader starts afterwards.
        unsafe { ffi::kc_debugfs_exit() };
        release();
    }
}

/// Drops the reference [`StatsFile::create`] stored; callers make sure no reader runs.
fn release() {
    let ptr = SOURCE.swap(core::ptr::null_mut(), Ordering::AcqRel);
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `into_foreign` in `StatsFile::create`, and the file it serves is
        // gone (or was never created), so nothing borrows it any more.
        drop(unsafe { Arc::<Devices>::from_foreign(ptr) });
    }
}

/// Called when the `stats` file is read: formats the counters into `buf`; returns the length.
#[no_mangle]
pub(crate) extern "C" fn kclient_stats_format(buf: *mut c_char, len: usize) -> usize {
    if buf.is_null() {
        return 0;
    }
    // SAFETY: the C caller passes a buffer valid for writes of `len` bytes, unused by anything
    // else during the call.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let ptr = SOURCE.load(Ordering::Acquire);
    if ptr.is_null() {
        return 0;
    }
    // SAFETY: `ptr` came from `into_foreign` in `StatsFile::create`; `StatsFile::drop` releases it
    // only after `kc_debugfs_exit` removed the file and waited for running readers (this call is
    // one).
    let devices = unsafe { Arc::<Devices>::borrow(ptr) };
    devices.format_stats(buf)
}
