//! Multiboot v1 information (what QEMU's `-kernel`/`-initrd`/`-append` hand over).
//!
//! We need three things from it: the command line (`-append`), the modules (`-initrd`, or GRUB's
//! `module` lines: the Hermit application, and optionally the operator's `tmem.conf`) and the BIOS
//! memory map. The structure is read through bounds-checked byte slices;
//! only [`crate::phys`] turns the addresses into slices.

use core::ops::Range;

use crate::phys;

/// Value of `eax` at entry when a multiboot v1 loader started us.
pub const BOOTLOADER_MAGIC: u32 = 0x2bad_b002;

const FLAG_CMDLINE: u32 = 1 << 2;
const FLAG_MODS: u32 = 1 << 3;
const FLAG_MMAP: u32 = 1 << 6;
const INFO_SIZE: usize = 52;
const MODULE_ENTRY_SIZE: usize = 16;
/// Modules looked at: the application, tmem.conf, and room for a mistake.
const MAX_MODULES: usize = 4;
/// How the settings module's string ends (GRUB passes its path; QEMU's `-initrd` its file name).
const CONFIG_NAME: &str = "tmem.conf";
const MMAP_TYPE_AVAILABLE: u32 = 1;
/// Enough for QEMU's e820 map (usually 3-6 entries).
pub const MAX_REGIONS: usize = 32;

/// RAM the firmware reports as available, as sorted-by-discovery address ranges.
pub struct MemoryMap {
    regions: [Range<u64>; MAX_REGIONS],
    len: usize,
}

impl MemoryMap {
    pub fn iter(&self) -> impl Iterator<Item = &Range<u64>> {
        self.regions[..self.len].iter()
    }

    /// Whether `range` lies inside one available region.
    pub fn contains(&self, range: &Range<u64>) -> bool {
        self.iter()
            .any(|r| r.start <= range.start && range.end <= r.end)
    }

    /// The lowest `align`-aligned address at or above `lowest` where `size` bytes lie wholly inside
    /// one available region.
    pub fn first_fit(&self, lowest: u64, size: u64, align: u64) -> Option<u64> {
        self.iter()
            .filter_map(|r| {
                let start = r.start.max(lowest).next_multiple_of(align);
                (start.checked_add(size)? <= r.end).then_some(start)
            })
            .min()
    }

    /// An empty map.
    pub const fn new() -> Self {
        MemoryMap {
            regions: [const { 0..0 }; MAX_REGIONS],
            len: 0,
        }
    }

    /// One firmware map entry: kept if it is available RAM, trimmed to whole 4 KiB pages
    /// (Hermit's frame allocator works in pages).
    pub fn add_entry(&mut self, base: u64, len: u64, kind: u32) {
        log::info!("memory map: {base:#011x}..{:#011x} type {kind}", base + len);
        if kind == MMAP_TYPE_AVAILABLE {
            self.push(base.next_multiple_of(4096)..(base + len) & !4095);
        }
    }

    fn push(&mut self, range: Range<u64>) {
        if self.len < MAX_REGIONS && range.start < range.end {
            self.regions[self.len] = range;
            self.len += 1;
        } else if self.len == MAX_REGIONS {
            log::warn!("memory map: ignoring region {range:#x?} (table full)");
        }
    }
}

/// The parts of the multiboot information the loader uses.
pub struct Info {
    /// Physical address of the information structure (passed on to the kernel).
    pub addr: u64,
    /// The `-append` text: QEMU puts the `-kernel` file name first; that word is removed.
    pub cmdline: &'static str,
    /// Physical range of the application ELF (the first module not named `tmem.conf`).
    pub module: Range<u64>,
    /// Physical range of the settings file: the module whose string ends in `tmem.conf`.
    pub config: Option<Range<u64>>,
    /// End of the highest module (the kernel is loaded above all of them).
    pub modules_end: u64,
    pub memory: MemoryMap,
    /// The ACPI RSDP, when the boot loader passed a copy (multiboot2; UEFI machines have none in
    /// the BIOS area).
    pub rsdp: Option<u64>,
}

/// Sorts the boot modules into the application and the settings file.
#[derive(Default)]
pub struct Modules {
    module: Option<Range<u64>>,
    config: Option<Range<u64>>,
    end: u64,
}

impl Modules {
    /// A module the boot loader loaded at `range`, with its string `name`.
    pub fn add(&mut self, range: Range<u64>, name: &[u8]) {
        log::info!(
            "module {range:#x?} {:?}",
            core::str::from_utf8(name).unwrap_or("?")
        );
        self.end = self.end.max(range.end);
        if name.ends_with(CONFIG_NAME.as_bytes()) {
            self.config = self.config.clone().or(Some(range));
        } else {
            self.module = self.module.clone().or(Some(range));
        }
    }

    /// (application, settings file, end of the highest module).
    #[allow(clippy::type_complexity)]
    pub fn finish(self) -> Result<(Range<u64>, Option<Range<u64>>, u64), &'static str> {
        let module = self
            .module
            .ok_or("no application module: pass the Hermit application (-initrd / GRUB module)")?;
        Ok((module, self.config, self.end))
    }
}

pub(crate) fn u32_at(bytes: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"))
}

pub(crate) fn u64_at(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

/// Drops the first word (the loader's own path) from QEMU's multiboot command line.
pub(crate) fn strip_image_name(cmdline: &str) -> &str {
    let cmdline = cmdline.trim_start();
    match cmdline.split_once(' ') {
        Some((_, rest)) => rest.trim(),
        None => "",
    }
}

impl Info {
    /// Parses the structure at `addr` that the multiboot loader described with `magic`.
    pub fn parse(magic: u32, addr: u32) -> Result<Self, &'static str> {
        if magic == crate::multiboot2::BOOTLOADER_MAGIC {
            return crate::multiboot2::parse(addr);
        }
        if magic != BOOTLOADER_MAGIC {
            return Err("not started by a multiboot loader (bad magic in eax)");
        }
        let addr = u64::from(addr);
        // SAFETY: the multiboot loader placed the information structure there and nothing else runs.
        let info = unsafe { phys::bytes(addr, INFO_SIZE) };
        let flags = u32_at(info, 0);

        let cmdline = if flags & FLAG_CMDLINE != 0 {
            // SAFETY: a flagged cmdline field points at a NUL-terminated string from the loader.
            let raw = unsafe { phys::c_str(u64::from(u32_at(info, 16)), 4096) };
            strip_image_name(core::str::from_utf8(raw).map_err(|_| "command line is not UTF-8")?)
        } else {
            ""
        };

        if flags & FLAG_MODS == 0 || u32_at(info, 20) == 0 {
            return Err("no multiboot module: pass the Hermit application with -initrd");
        }
        let count = (u32_at(info, 20) as usize).min(MAX_MODULES);
        // SAFETY: a flagged mods_addr points at mods_count 16-byte entries from the loader.
        let entries =
            unsafe { phys::bytes(u64::from(u32_at(info, 24)), count * MODULE_ENTRY_SIZE) };
        let mut modules = Modules::default();
        for entry in entries.chunks_exact(MODULE_ENTRY_SIZE) {
            let name = match u32_at(entry, 8) {
                0 => &[][..],
                // SAFETY: a module's string field points at a NUL-terminated string from the loader.
                addr => unsafe { phys::c_str(u64::from(addr), 4096) },
            };
            modules.add(
                u64::from(u32_at(entry, 0))..u64::from(u32_at(entry, 4)),
                name,
            );
        }
        let (module, config, modules_end) = modules.finish()?;

        if flags & FLAG_MMAP == 0 {
            return Err("no memory map from the boot loader");
        }
        let mut memory = MemoryMap::new();
        let mmap_len = u32_at(info, 44) as usize;
        // SAFETY: a flagged mmap_addr points at mmap_length bytes of entries from the loader.
        let mmap = unsafe { phys::bytes(u64::from(u32_at(info, 48)), mmap_len) };
        let mut offset = 0;
        // Each entry: size (u32, not counting itself), base (u64), length (u64), type (u32).
        while offset + 24 <= mmap.len() {
            let size = u32_at(mmap, offset) as usize;
            let base = u64_at(mmap, offset + 4);
            let len = u64_at(mmap, offset + 12);
            memory.add_entry(base, len, u32_at(mmap, offset + 20));
            offset += size + 4;
        }
        Ok(Info {
            addr,
            cmdline,
            module,
            config,
            modules_end,
            memory,
            rsdp: None,
        })
    }
}
