//! x86 port I/O: the only way to reach the serial port and QEMU's exit device.
//!
//! Port access cannot break Rust's memory safety by itself; the functions are still `unsafe`
//! because writing to an arbitrary port can reprogram hardware (e.g. the interrupt controllers).

use core::arch::asm;

/// Writes a byte to an I/O port.
///
/// # Safety
/// `port` must be a device register for which writing `value` has no effect on memory.
pub unsafe fn outb(port: u16, value: u8) {
    // SAFETY: `out` touches no memory; the caller vouches for the device side effect.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    };
}

/// Reads a byte from an I/O port.
///
/// # Safety
/// `port` must be a device register whose read has no side effect on memory.
pub unsafe fn inb(port: u16) -> u8 {
    let value: u8;
    // SAFETY: `in` touches no memory; the caller vouches for the device side effect.
    unsafe {
        asm!("in al, dx", in("dx") port, out("al") value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// Writes a 32-bit value to an I/O port.
///
/// # Safety
/// As for [`outb`].
pub unsafe fn outl(port: u16, value: u32) {
    // SAFETY: `out` touches no memory; the caller vouches for the device side effect.
    unsafe {
        asm!("out dx, eax", in("dx") port, in("eax") value, options(nomem, nostack, preserves_flags))
    };
}
