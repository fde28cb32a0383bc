//! Physical memory as Rust slices.
//!
//! `boot.s` identity-maps the first 4 GiB (except page 0), so below [`MAPPED_END`] a physical address
//! is also a valid pointer. Addresses handed to us by QEMU (multiboot structures, the module, BIOS
//! tables) and the memory we load the kernel into become slices only here, after a range check.

use core::mem::MaybeUninit;

/// End of the identity mapping built by `boot.s`.
pub const MAPPED_END: u64 = 4 << 30;
/// Page 0 is deliberately unmapped.
const MAPPED_START: u64 = 4096;

fn check(addr: u64, len: usize) {
    let end = addr
        .checked_add(len as u64)
        .expect("physical range overflows");
    assert!(
        addr >= MAPPED_START && end <= MAPPED_END,
        "physical range {addr:#x}..{end:#x} is not identity-mapped"
    );
}

/// Read-only view of `len` bytes at physical address `addr`.
///
/// # Safety
/// The range must be RAM or ROM that nothing writes to for the rest of the loader's run.
pub unsafe fn bytes(addr: u64, len: usize) -> &'static [u8] {
    check(addr, len);
    // SAFETY: the range is identity-mapped (checked above) and, per the caller, immutable.
    unsafe { core::slice::from_raw_parts(addr as *const u8, len) }
}

/// Writable view of `len` bytes at physical address `addr`, possibly uninitialised.
///
/// # Safety
/// The range must be free RAM that no other reference covers.
pub unsafe fn bytes_mut(addr: u64, len: usize) -> &'static mut [MaybeUninit<u8>] {
    check(addr, len);
    // SAFETY: identity-mapped (checked above); exclusive per the caller; `MaybeUninit` allows any content.
    unsafe { core::slice::from_raw_parts_mut(addr as *mut MaybeUninit<u8>, len) }
}

/// A NUL-terminated string at `addr` (without the NUL), at most `max` bytes long.
///
/// # Safety
/// As for [`bytes`], for every byte up to the terminator.
pub unsafe fn c_str(addr: u64, max: usize) -> &'static [u8] {
    let mut len = 0;
    // SAFETY: each byte is read through `bytes`, whose contract the caller upholds.
    while len < max && unsafe { bytes(addr + len as u64, 1) }[0] != 0 {
        len += 1;
    }
    // SAFETY: as above, for the bytes just scanned.
    unsafe { bytes(addr, len) }
}
