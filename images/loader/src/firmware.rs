//! What the PC firmware (SeaBIOS under QEMU) leaves behind that the kernel wants: the ACPI RSDP,
//! and QEMU's `isa-debug-exit` device to stop the VM when the loader fails.

use crate::phys;
use crate::port::outl;

/// BIOS read-only area that holds the RSDP on PCs (ACPI spec 5.2.5.1). The EBDA, the other
/// place the spec allows, is found through page 0, which we keep unmapped; SeaBIOS uses this one.
const BIOS_AREA: core::ops::Range<u64> = 0xe_0000..0x10_0000;
const RSDP_V1_LEN: usize = 20;

/// Physical address of the ACPI RSDP ("RSD PTR " on a 16-byte boundary with a valid checksum).
pub fn find_rsdp() -> Option<u64> {
    // SAFETY: the BIOS area is ROM-like memory that nothing modifies while the loader runs.
    let area = unsafe { phys::bytes(BIOS_AREA.start, (BIOS_AREA.end - BIOS_AREA.start) as usize) };
    area.chunks_exact(16).enumerate().find_map(|(i, chunk)| {
        let offset = i * 16;
        let candidate = area.get(offset..offset + RSDP_V1_LEN)?;
        let checksum = candidate.iter().fold(0u8, |a, &b| a.wrapping_add(b));
        (chunk.starts_with(b"RSD PTR ") && checksum == 0).then_some(BIOS_AREA.start + offset as u64)
    })
}

/// Stops QEMU through `-device isa-debug-exit,iobase=0xf4` (exit status `(code << 1) | 1`).
/// Without that device the write is ignored and the caller halts instead.
pub fn qemu_exit(code: u32) {
    // SAFETY: port 0xf4 is QEMU's debug-exit device or nothing; no memory is involved.
    unsafe { outl(0xf4, code) };
}
