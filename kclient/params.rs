//! The module parameters (declared in C with `module_param`, see `kclient_helpers.c`) and the hook
//! that hands runtime writes of `remote_target` to the live devices.

use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::ffi::{c_char, c_int, c_void};
use kernel::prelude::*;
use kernel::sync::Arc;
use kernel::types::ForeignOwnable;

use crate::devices::Devices;
use crate::ffi;

/// Copies the current `remote_target` into `buf` and returns it (without the NUL; truncated to
/// `buf.len() - 1` bytes).
pub(crate) fn remote_target(buf: &mut [u8]) -> &[u8] {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the helper writes at most that many
    // (NUL included) and returns the string's length, which is below `buf.len()`.
    let n = unsafe { ffi::kc_param_remote_target(buf.as_mut_ptr().cast::<c_char>(), buf.len()) };
    buf.get(..n).unwrap_or(&[])
}

/// `size` in bytes (K/M/G suffixes parsed by the kernel's `memparse`); 0 if unset.
pub(crate) fn size_bytes() -> u64 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_size_bytes() }
}

/// `io_timeout_ms`, clamped to 100 ms .. 1 h.
pub(crate) fn io_timeout_ms() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_io_timeout_ms() }
}

/// `nr_conns` (0: choose from the number of CPUs).
pub(crate) fn nr_conns() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_nr_conns() }
}

/// `client_id`, or a random odd one chosen (once) if it was not given.
pub(crate) fn client_id() -> u64 {
    // SAFETY: reads (and on first use sets) a module parameter; called from module init only.
    unsafe { ffi::kc_param_client_id() }
}

/// `compress`.
pub(crate) fn compress() -> bool {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_compress() }
}

/// The client's key (taken once: the module's copy is wiped), if `key` was given.
pub(crate) fn take_key() -> Option<[u8; 32]> {
    let mut key = [0u8; 32];
    // SAFETY: `key` is valid for writes of 32 bytes.
    unsafe { ffi::kc_param_take_key(key.as_mut_ptr()) }.then_some(key)
}

/// Whether `client_id` was given (a key needs it: the appliance's keys file names it).
pub(crate) fn client_id_given() -> bool {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_client_id_given() }
}

/// `replicas` (0: the default for the number of targets).
pub(crate) fn replicas() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_replicas() }
}

/// `down_after_ms`, clamped to 100 ms .. 10 min.
pub(crate) fn down_after_ms() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_down_after_ms() }
}

/// `keepalive_ms`, clamped to 50 ms .. 10 min.
pub(crate) fn keepalive_ms() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_keepalive_ms() }
}

/// `repair_pages_per_s` (at least 1).
pub(crate) fn repair_pages_per_s() -> u32 {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_repair_pages_per_s() }
}

/// Copies `spill` (a block device path) into `buf` and returns it; empty if not given,
/// `EINVAL` if longer than `buf` holds.
pub(crate) fn spill(buf: &mut [u8]) -> Result<&[u8]> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes; the helper writes at most that many
    // (NUL included) and returns the string's length (below `buf.len()`) or `buf.len()`.
    let n = unsafe { ffi::kc_param_spill(buf.as_mut_ptr().cast::<c_char>(), buf.len()) };
    whole(buf, n, "spill")
}

/// Copies `cache_backing` (block device paths) into `buf` and returns it; empty if not given,
/// `EINVAL` if longer than `buf` holds.
pub(crate) fn cache_backing(buf: &mut [u8]) -> Result<&[u8]> {
    // SAFETY: as in `spill`.
    let n = unsafe { ffi::kc_param_cache_backing(buf.as_mut_ptr().cast::<c_char>(), buf.len()) };
    whole(buf, n, "cache_backing")
}

/// The first `n` bytes of `buf`, unless the parameter did not fit (`n` is `buf.len()`).
fn whole<'a>(buf: &'a [u8], n: usize, name: &str) -> Result<&'a [u8]> {
    if n >= buf.len() {
        pr_err!("{} is too long (at most {} bytes)\n", name, buf.len() - 1);
        return Err(EINVAL);
    }
    Ok(buf.get(..n).unwrap_or(&[]))
}

/// `insecure`.
pub(crate) fn insecure() -> bool {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_insecure() }
}

/// `encrypt_pages`.
pub(crate) fn encrypt_pages() -> bool {
    // SAFETY: reads a module parameter; no preconditions.
    unsafe { ffi::kc_param_encrypt_pages() }
}

/// Online CPUs (the default number of connections follows it).
pub(crate) fn online_cpus() -> u32 {
    // SAFETY: no preconditions.
    unsafe { ffi::kc_num_online_cpus() }
}

/// The devices that runtime `remote_target` writes go to: an `Arc<Devices>` turned into a raw
/// pointer by [`TargetHook::install`], or null.
static HOOKED: AtomicPtr<c_void> = AtomicPtr::new(core::ptr::null_mut());

/// While this exists, writes to `/sys/module/kclient/parameters/remote_target` are validated and
/// passed to every device (`Devices::set_targets`). It holds a reference to the devices.
pub(crate) struct TargetHook(());

impl TargetHook {
    /// Routes `remote_target` writes to `devices`. Only one hook may exist (`EBUSY` otherwise).
    pub(crate) fn install(devices: Arc<Devices>) -> Result<Self> {
        let ptr = devices.into_foreign().cast_mut();
        if HOOKED
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
        // SAFETY: no preconditions; from now on parameter writes call `kclient_target_changed`,
        // which finds the devices stored above.
        unsafe { ffi::kc_params_set_live(true) };
        Ok(Self(()))
    }
}

impl Drop for TargetHook {
    fn drop(&mut self) {
        // SAFETY: no preconditions. It takes the C parameter lock, so it returns after a running
        // `kclient_target_changed` call, and no call starts afterwards.
        unsafe { ffi::kc_params_set_live(false) };
        let ptr = HOOKED.swap(core::ptr::null_mut(), Ordering::AcqRel);
        if !ptr.is_null() {
            // SAFETY: `ptr` came from `into_foreign` in `install`; the C side no longer calls
            // `kclient_target_changed` (above), so nothing borrows it any more.
            drop(unsafe { Arc::<Devices>::from_foreign(ptr) });
        }
    }
}

/// Called by the C parameter code (under its parameter lock, only while live) when
/// `remote_target` is written; an error rejects the write.
#[no_mangle]
pub(crate) extern "C" fn kclient_target_changed(val: *const c_char) -> c_int {
    if val.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the C caller passes a NUL-terminated string valid for the call.
    let val = unsafe { CStr::from_char_ptr(val) };
    let targets = match crate::logic::targets::parse_targets(val.as_bytes()) {
        Ok(t) => t,
        Err(_) => return EINVAL.to_errno(),
    };
    let ptr = HOOKED.load(Ordering::Acquire);
    if !ptr.is_null() {
        // SAFETY: `ptr` came from `into_foreign` in `TargetHook::install`; `TargetHook::drop`
        // releases it only after `kc_params_set_live(false)` has waited for this call.
        let devices = unsafe { Arc::<Devices>::borrow(ptr) };
        if let Err(e) = devices.set_targets(targets) {
            return e.to_errno();
        }
    }
    0
}
