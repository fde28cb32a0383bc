//! Kernel threads running a Rust closure, and sleeping.
//!
//! The closure should return soon after [`should_stop`] turns true (after [`KThread`] is dropped, or
//! while it is being dropped); the thread then waits for `kthread_stop`, so stopping it is always
//! safe, whether the closure returned early or not.

use core::ptr::NonNull;

use kernel::bindings;
use kernel::error::from_err_ptr;
use kernel::ffi::{c_int, c_void};
use kernel::prelude::*;

/// A running kernel thread, stopped (and waited for) on drop.
///
/// # Invariants
///
/// `task` is a thread created by `kthread_create_on_node` running `entry`, which does not exit
/// before `kthread_stop` and returns 0. `data` is the closure box handed to it and `drop_data`
/// frees such a box; the thread owns it once `entry` runs.
pub(crate) struct KThread {
    task: NonNull<bindings::task_struct>,
    data: *mut c_void,
    drop_data: unsafe fn(*mut c_void),
}

// SAFETY: a task pointer may be used (stopped) from any thread.
unsafe impl Send for KThread {}
// SAFETY: `KThread` has no `&self` methods that mutate.
unsafe impl Sync for KThread {}

impl KThread {
    /// Starts `f` in a new kernel thread called `name` (NUL-terminated, e.g. `c"kclient-rx0"`-like).
    pub(crate) fn spawn<F: FnOnce() + Send + 'static>(name: &CStr, f: F) -> Result<Self> {
        let data = KBox::into_raw(KBox::new(f, GFP_KERNEL)?);
        // SAFETY: `entry::<F>` matches the thread function signature and takes ownership of `data`;
        // the format string "%s" consumes exactly one NUL-terminated string argument.
        let task = unsafe {
            bindings::kthread_create_on_node(
                Some(entry::<F>),
                data.cast::<c_void>(),
                bindings::NUMA_NO_NODE,
                c"%s".as_ptr().cast(),
                name.as_char_ptr(),
            )
        };
        let task = match from_err_ptr(task) {
            Ok(task) => task,
            Err(e) => {
                // SAFETY: the thread was not created, so `data` is still ours.
                drop(unsafe { KBox::from_raw(data) });
                return Err(e);
            }
        };
        // SAFETY: `task` was just created and not started.
        unsafe { bindings::wake_up_process(task) };
        Ok(Self {
            // SAFETY: `from_err_ptr` succeeded, so `task` is not null.
            task: unsafe { NonNull::new_unchecked(task) },
            data: data.cast::<c_void>(),
            drop_data: drop_box::<F>,
        })
    }
}

/// # Safety
///
/// `data` must be a `KBox<F>` leaked by [`KThread::spawn`] that nobody else owns.
unsafe fn drop_box<F>(data: *mut c_void) {
    // SAFETY: guaranteed by the caller.
    drop(unsafe { KBox::from_raw(data.cast::<F>()) });
}

impl Drop for KThread {
    fn drop(&mut self) {
        // SAFETY: the thread does not exit before `kthread_stop` (invariant).
        let ret = unsafe { bindings::kthread_stop(self.task.as_ptr()) };
        // `entry` returns 0. -EINTR means the thread was stopped before it ever ran its function
        // (the kthread core then skips it), so the closure box was never taken: free it here, or
        // it (and the `Arc<Client>` it holds) would leak.
        if ret == -(bindings::EINTR as c_int) {
            // SAFETY: `entry` never ran, so `data` is still the box `spawn` leaked, owned by us.
            unsafe { (self.drop_data)(self.data) };
        }
    }
}

/// # Safety
///
/// Only as the thread function of [`KThread::spawn`], with `data` the `KBox<F>` it leaked.
unsafe extern "C" fn entry<F: FnOnce() + Send + 'static>(data: *mut c_void) -> c_int {
    // SAFETY: `data` is the `KBox<F>` leaked by `spawn`; this is its only owner.
    let f = unsafe { KBox::from_raw(data.cast::<F>()) };
    KBox::into_inner(f)();
    while !should_stop() {
        sleep_ms(20);
    }
    0
}

/// Inside a thread made by [`KThread::spawn`]: whether it has been asked to stop. False in any
/// other context (e.g. a process calling into the module).
pub(crate) fn should_stop() -> bool {
    // SAFETY: `get_current` has no preconditions and returns the running task, which stays valid
    // while it runs this code.
    let flags = unsafe { (*bindings::get_current()).flags };
    // SAFETY: `kthread_should_stop` needs a kernel thread (it reads its `struct kthread`); `&&`
    // calls it only when `PF_KTHREAD` says this is one.
    flags & bindings::PF_KTHREAD != 0 && unsafe { bindings::kthread_should_stop() }
}

/// Sleeps about `ms` milliseconds (interruptible; process context only).
pub(crate) fn sleep_ms(ms: u32) {
    // SAFETY: no memory-safety preconditions. (Sleeping is only correct in process context,
    // where every caller runs; the debug kernel's DEBUG_ATOMIC_SLEEP checks that.)
    unsafe { bindings::msleep_interruptible(ms) };
}

/// Lets other tasks run if this one has run long (a kthread that always has work must call
/// it: without preemption it would hold its CPU, and the soft-lockup watchdog says so).
pub(crate) fn yield_now() {
    // SAFETY: no preconditions; called from process context only (kthread loops).
    unsafe { crate::ffi::kc_cond_resched() };
}

/// Milliseconds on a monotonic clock.
pub(crate) fn now_ms() -> u64 {
    // SAFETY: `ktime_get` has no preconditions.
    let t = unsafe { bindings::ktime_get() };
    (t.max(0) as u64) / 1_000_000
}
