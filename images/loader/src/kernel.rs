//! Loading the Hermit application (kernel linked in) and entering it.
//!
//! `hermit-entry` parses the ELF, copies its segments, applies the relocations of the
//! position-independent image and defines the boot-information ABI. This module chooses where the
//! image goes and performs the jump, which needs the one piece of inline assembly in the Rust code.

use core::arch::asm;
use core::ops::Range;

use hermit_entry::boot_info::RawBootInfo;
use hermit_entry::elf::{KernelObject, LoadedKernel};

use crate::multiboot::MemoryMap;
use crate::phys;

/// The kernel maps itself in 2 MiB pages, so its image starts on a 2 MiB boundary.
const KERNEL_ALIGN: u64 = 2 << 20;

/// Loads the ELF in `module` into RAM above everything the loader still uses (`in_use_end`) and
/// returns what the kernel needs to know about the result.
pub fn load(module: &Range<u64>, in_use_end: u64, memory: &MemoryMap) -> LoadedKernel {
    // SAFETY: the module is the multiboot module QEMU loaded; nothing writes to it.
    let elf = unsafe { phys::bytes(module.start, (module.end - module.start) as usize) };
    let object = KernelObject::parse(elf).unwrap_or_else(|e| panic!("application ELF: {e}"));
    if let Some(version) = object.hermit_version() {
        log::info!("application built against Hermit {version}");
    }
    let size = object.mem_size() as u64;
    // The first aligned place above what is in use that lies wholly in available RAM: firmware
    // maps have holes (OVMF reserves pages at 8 MiB), so "the next 2 MiB boundary" may not be.
    let lowest = in_use_end.max(module.end);
    let start = object.start_addr().unwrap_or_else(|| {
        memory
            .first_fit(lowest, size, KERNEL_ALIGN)
            .unwrap_or_else(|| panic!("no available RAM above {lowest:#x} holds {size} bytes"))
    });
    let range = start..start + size;
    assert!(
        range.start >= module.end.max(in_use_end),
        "application wants {range:#x?}, which overlaps the loader or the module"
    );
    assert!(
        range.end <= phys::MAPPED_END,
        "application {range:#x?} ends above 4 GiB"
    );
    assert!(
        memory.contains(&range),
        "application {range:#x?} is not in available RAM"
    );
    log::info!("loading application ({size} bytes) at {start:#x}");
    // SAFETY: `range` is available RAM (checked) above the loader and the module (checked), so no
    // other reference covers it.
    let target = unsafe { phys::bytes_mut(start, size as usize) };
    object.load_kernel(target, start)
}

extern "C" {
    /// 32 KiB in `boot.s`'s .bss, page-aligned: the kernel's boot stack.
    static mut kernel_stack: [u8; 0x8000];
}

/// Jumps to the kernel entry point: `rdi` = boot info, `esi` = CPU 0, `rsp` = lowest address of
/// its 32 KiB boot stack (Hermit 0.11's `_start` adds the stack size itself).
///
/// `boot_info` must stay valid forever; the caller keeps it in a frame that never returns.
pub fn enter(boot_info: &RawBootInfo, entry_point: u64) -> ! {
    let stack = &raw mut kernel_stack as u64;
    log::info!(
        "jumping to {entry_point:#x}, boot info at {:p}, stack at {stack:#x}",
        boot_info
    );
    // SAFETY: `entry_point` is the entry of the freshly loaded and relocated image and follows
    // hermit-entry's `Entry` ABI; the stack region belongs to nobody else; `boot_info` outlives us
    // (caller's contract); we never return.
    unsafe {
        asm!(
            "mov rsp, {stack}",
            "xor ebp, ebp",
            "jmp {entry}",
            stack = in(reg) stack,
            entry = in(reg) entry_point,
            in("rdi") boot_info as *const RawBootInfo,
            in("esi") 0u32,
            options(noreturn)
        )
    }
}
