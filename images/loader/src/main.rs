//! tmem's boot loader for the Hermit appliance (QEMU's `-kernel`, or GRUB on the boot disk).
//!
//! QEMU starts us through multiboot v1 (`-kernel loader -initrd appliance -append ARGS`), GRUB on
//! the appliance's boot disk through multiboot2 (BIOS and UEFI machines). `boot.s`
//! enters 64-bit mode on identity page tables and calls [`loader_main`], which:
//!
//! 1. reads the multiboot information (command line, the module = the appliance ELF, memory map),
//! 2. loads the appliance (a Hermit application with the kernel linked in) above itself,
//! 3. describes RAM and the ACPI RSDP in a small device tree, which is how Hermit 0.11 learns them,
//! 4. jumps to the image with a `RawBootInfo` in `rdi`.
//!
//! Everything the kernel later reads (device tree, boot info, command line, its boot stack) stays
//! below the kernel image, memory Hermit never hands out.

#![no_std]
#![no_main]

mod fdt;
mod firmware;
mod kernel;
mod multiboot;
mod multiboot2;
mod phys;
mod port;
mod screen;
mod serial;
mod settings;

use core::num::{NonZeroU16, NonZeroU64};

use hermit_entry::boot_info::{BootInfo, HardwareInfo, PlatformInfo, RawBootInfo};

core::arch::global_asm!(include_str!("boot.s"), options(att_syntax, raw));

extern "C" {
    /// First byte after the loader's image, .bss included (link.ld).
    static __loader_end: u8;
}

/// Device-tree buffer; 8-byte alignment as the spec requires.
#[repr(C, align(8))]
struct FdtBlob([u8; 4096]);

/// Called by `boot.s` in 64-bit mode with the values QEMU left in `eax` and `ebx`.
#[no_mangle]
extern "C" fn loader_main(magic: u32, info_addr: u32) -> ! {
    serial::init_logger();
    log::info!("tmem-loader {}", env!("CARGO_PKG_VERSION"));

    let info = multiboot::Info::parse(magic, info_addr).unwrap_or_else(|e| panic!("{e}"));
    log::info!("application module at {:#x?}", info.module);
    let cmdline = match &info.config {
        Some(file) => settings::command_line(file, info.cmdline),
        None => info.cmdline,
    };
    log::info!("command line: {}", boot_config::Redacted(cmdline));

    let loader_end = &raw const __loader_end as u64;
    assert!(
        info.module.start >= loader_end,
        "module at {:#x} overlaps the loader (ends {loader_end:#x})",
        info.module.start
    );
    // QEMU stores the command-line strings right after the module; the kernel reads ours later.
    let cmdline_end = info.cmdline.as_ptr() as u64 + info.cmdline.len() as u64 + 1;
    let in_use_end = loader_end.max(cmdline_end).max(info.modules_end);
    let loaded = kernel::load(&info.module, in_use_end, &info.memory);

    let rsdp = info.rsdp.or_else(firmware::find_rsdp);
    match rsdp {
        Some(addr) => log::info!("ACPI RSDP at {addr:#x}"),
        None => log::warn!("no ACPI RSDP found; the kernel will search for it itself"),
    }

    // These locals outlive the jump: this function never returns, and the kernel never reuses the
    // loader's memory (it lies below the kernel image).
    let mut fdt_blob = FdtBlob([0; 4096]);
    let fdt_len = write_device_tree(&info.memory, rsdp, &mut fdt_blob.0);
    let fdt_addr = fdt_blob.0.as_ptr() as u64;
    log::info!("device tree: {fdt_len} bytes at {fdt_addr:#x}");

    let phys_end = info.memory.iter().map(|r| r.end).max().unwrap_or(0);
    let boot_info = RawBootInfo::from(BootInfo {
        hardware_info: HardwareInfo {
            phys_addr_range: 0..phys_end,
            serial_port_base: NonZeroU16::new(serial::COM1),
            device_tree: NonZeroU64::new(fdt_addr),
        },
        load_info: loaded.load_info,
        platform_info: PlatformInfo::Multiboot {
            command_line: Some(cmdline),
            multiboot_info_addr: NonZeroU64::new(info.addr).expect("multiboot info at address 0"),
        },
    });
    kernel::enter(&boot_info, loaded.entry_point)
}

/// The device tree Hermit reads: RAM regions and the RSDP (see [`fdt`]).
fn write_device_tree(memory: &multiboot::MemoryMap, rsdp: Option<u64>, out: &mut [u8]) -> usize {
    let mut fdt = fdt::FdtWriter::new();
    fdt.begin_node(format_args!(""));
    fdt.prop_u32("#address-cells", 2);
    fdt.prop_u32("#size-cells", 2);
    fdt.prop_str("compatible", "hermit,multiboot");
    for region in memory.iter() {
        fdt.begin_node(format_args!("memory@{:x}", region.start));
        fdt.prop_str("device_type", "memory");
        fdt.prop_reg(region.start, region.end - region.start);
        fdt.end_node();
    }
    if let Some(addr) = rsdp {
        fdt.begin_node(format_args!("hermit,rsdp"));
        fdt.prop_reg(addr, 36); // size of an ACPI 2.0 RSDP
        fdt.end_node();
    }
    fdt.end_node();
    fdt.finish(out)
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    log::error!("{info}");
    firmware::qemu_exit(1);
    loop {
        // SAFETY: `hlt` only waits for the next interrupt (interrupts are off: we stay here).
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}
