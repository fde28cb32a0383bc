//! Multiboot2 information: how GRUB starts us from the appliance's boot disk (`multiboot2` in
//! its grub.cfg). Needed on UEFI machines, whose ACPI RSDP is not in the BIOS area: GRUB passes a
//! copy in a tag, and only multiboot2 has such tags.
//!
//! The information is a list of 8-byte-aligned tags (type u32, size u32, data); we read the command
//! line, the modules, the memory map and the RSDP, through bounds-checked slices.

use core::sync::atomic::{AtomicBool, Ordering};

use crate::multiboot::{strip_image_name, u32_at, u64_at, Info, MemoryMap, Modules};
use crate::phys;

/// Value of `eax` at entry when a multiboot2 loader started us.
pub const BOOTLOADER_MAGIC: u32 = 0x36d7_6289;

const TAG_END: u32 = 0;
const TAG_CMDLINE: u32 = 1;
const TAG_MODULE: u32 = 3;
const TAG_MMAP: u32 = 6;
const TAG_ACPI_OLD: u32 = 14;
const TAG_ACPI_NEW: u32 = 15;
/// Largest information structure we accept (GRUB's is a few KiB).
const MAX_INFO: usize = 64 * 1024;
/// ACPI 2.0 RSDP length (a 1.0 RSDP is the first 20 bytes).
const RSDP_LEN: usize = 36;

/// The RSDP copied out of the information structure, which lies in RAM the kernel may reuse.
/// 16-byte aligned as the ACPI spec asks of an RSDP.
#[repr(C, align(16))]
struct RsdpCopy([u8; RSDP_LEN]);
static mut RSDP: RsdpCopy = RsdpCopy([0; RSDP_LEN]);
static RSDP_TAKEN: AtomicBool = AtomicBool::new(false);

/// Keeps the RSDP in loader memory (never reused by the kernel) and returns its address.
fn keep_rsdp(copy: &[u8]) -> u64 {
    assert!(!RSDP_TAKEN.swap(true, Ordering::Relaxed), "two RSDP tags");
    let len = copy.len().min(RSDP_LEN);
    // SAFETY: `RSDP_TAKEN` makes this the only reference ever made to the buffer.
    let rsdp = unsafe { &mut *(&raw mut RSDP) };
    rsdp.0[..len].copy_from_slice(&copy[..len]);
    rsdp.0.as_ptr() as u64
}

/// Parses the structure at `addr`.
pub fn parse(addr: u32) -> Result<Info, &'static str> {
    let addr = u64::from(addr);
    // SAFETY: the multiboot2 loader placed the structure there; nothing else runs.
    let total = u32_at(unsafe { phys::bytes(addr, 8) }, 0) as usize;
    if !(16..=MAX_INFO).contains(&total) {
        return Err("multiboot2 information has an implausible size");
    }
    // SAFETY: as above, for the size the structure gives itself.
    let info = unsafe { phys::bytes(addr, total) };
    let (mut cmdline, mut modules, mut memory) = ("", Modules::default(), MemoryMap::new());
    let (mut rsdp_old, mut rsdp_new, mut have_mmap) = (None, None, false);
    let mut at = 8;
    while at + 8 <= total {
        let (kind, size) = (u32_at(info, at), u32_at(info, at + 4) as usize);
        if kind == TAG_END {
            break;
        }
        let tag = info
            .get(at..at + size)
            .ok_or("multiboot2 tag runs past the end")?;
        let text = |from: usize| {
            let bytes = tag.get(from..).unwrap_or_default();
            let nul = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
            &bytes[..nul]
        };
        match kind {
            TAG_CMDLINE => {
                let raw = core::str::from_utf8(text(8)).map_err(|_| "command line is not UTF-8")?;
                // GRUB passes the kernel's path first only in some versions; drop it if present.
                cmdline = if raw.starts_with('/') {
                    strip_image_name(raw)
                } else {
                    raw.trim()
                };
            }
            TAG_MODULE if size >= 16 => {
                let range = u64::from(u32_at(tag, 8))..u64::from(u32_at(tag, 12));
                modules.add(range, text(16));
            }
            TAG_MMAP if size >= 16 => {
                have_mmap = true;
                let entry_size = u32_at(tag, 8) as usize;
                if entry_size < 24 {
                    return Err("multiboot2 memory map entries too small");
                }
                for entry in tag[16..].chunks_exact(entry_size) {
                    memory.add_entry(u64_at(entry, 0), u64_at(entry, 8), u32_at(entry, 16));
                }
            }
            TAG_ACPI_OLD => rsdp_old = tag.get(8..),
            TAG_ACPI_NEW => rsdp_new = tag.get(8..),
            _ => {}
        }
        at += size.next_multiple_of(8).max(8);
    }
    if !have_mmap {
        return Err("no memory map from the boot loader");
    }
    let (module, config, modules_end) = modules.finish()?;
    Ok(Info {
        addr,
        cmdline,
        module,
        config,
        modules_end,
        memory,
        rsdp: rsdp_new.or(rsdp_old).map(keep_rsdp),
    })
}
