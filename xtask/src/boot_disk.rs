//! The appliance's boot disk, `target/images/tmem-appliance.img`: a raw disk image an operator
//! writes to a USB stick or disk with `dd`, booting on BIOS and UEFI machines (docs/deploy.md).
//!
//! One FAT32 partition labelled TMEM (MBR type 0x0c, active), readable and writable from any OS,
//! holds `tmem.conf` (the settings), GRUB's config, our loader, the appliance and GRUB for UEFI
//! (`EFI/BOOT/BOOTX64.EFI`). GRUB for BIOS sits in the MBR and the gap before the partition, as
//! `grub-install` would put it. Everything of GRUB's comes from Debian's packages at build time
//! (`grub-mkimage` with its module directories); the FAT file system is made by `mkfs.fat` and
//! filled by mtools, so the build needs no loop device and no root.

use anyhow::{ensure, Context, Result};
use std::path::Path;
use std::process::Command;

use crate::host::{apt_install, step};
use crate::paths;

/// Where the partition starts (1 MiB, the usual alignment; GRUB's BIOS core goes before it).
const PARTITION_START_SECTOR: usize = 2048;
/// The whole image: 64 MiB (FAT32 needs at least ~33 MiB; the files take ~4 MiB).
const DISK_BYTES: usize = 64 << 20;
const SECTOR: usize = 512;
/// The file-system label GRUB's early config searches for.
const LABEL: &str = "TMEM";
/// GRUB modules in both images: find the partition, read FAT, load multiboot2, show a menu on
/// screen and serial.
const GRUB_MODULES: &[&str] = &[
    "part_msdos",
    "part_gpt",
    "fat",
    "search",
    "search_label",
    "normal",
    "configfile",
    "multiboot2",
    "echo",
    "serial",
    "terminal",
    "sleep",
];
/// Debian packages the build uses.
const PACKAGES: &[&str] = &[
    "grub-pc-bin",
    "grub-efi-amd64-bin",
    "grub-common",
    "mtools",
    "dosfstools",
];

/// Builds the boot disk from `images/{loader,appliance}` into `images/tmem-appliance.img`.
pub fn build(images: &Path, install: bool) -> Result<()> {
    if install {
        apt_install(PACKAGES)?;
    }
    let work = images.join(".boot-disk");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let src = paths::repo_root().join("images/boot-disk");
    let early = src.join("early.cfg");

    let core = work.join("core.img");
    grub_mkimage("i386-pc", &["biosdisk"], &early, &core)?;
    let efi = work.join("BOOTX64.EFI");
    grub_mkimage("x86_64-efi", &["efi_gop"], &early, &efi)?;

    let fat = work.join("partition.img");
    let fat_kib = (DISK_BYTES - PARTITION_START_SECTOR * SECTOR) / 1024;
    run(Command::new("mkfs.fat")
        .args(["-C", "-F", "32", "-n", LABEL])
        .arg(&fat)
        .arg(fat_kib.to_string()))?;
    let sample = paths::repo_root().join("images/boot-config/tmem.conf");
    let files: [(&Path, &str); 5] = [
        (&src.join("grub.cfg"), "::/boot/grub/grub.cfg"),
        (&images.join("loader"), "::/boot/tmem/loader"),
        (&images.join("appliance"), "::/boot/tmem/appliance"),
        (&efi, "::/EFI/BOOT/BOOTX64.EFI"),
        (&sample, "::/tmem.conf"),
    ];
    run(Command::new("mmd").arg("-i").arg(&fat).args([
        "::/boot",
        "::/boot/grub",
        "::/boot/tmem",
        "::/EFI",
        "::/EFI/BOOT",
    ]))?;
    for (from, to) in files {
        run(Command::new("mcopy").arg("-i").arg(&fat).arg(from).arg(to))?;
    }

    let disk = assemble(
        &std::fs::read(&fat)?,
        &std::fs::read(&core)?,
        &std::fs::read(grub_dir("i386-pc").join("boot.img"))?,
    )?;
    let out = images.join("tmem-appliance.img");
    std::fs::write(&out, disk).with_context(|| format!("writing {}", out.display()))?;
    std::fs::remove_dir_all(&work)?;
    step(&format!(
        "boot disk ready: {} (dd it to a USB stick; settings in its tmem.conf)",
        out.display()
    ));
    Ok(())
}

fn grub_dir(platform: &str) -> std::path::PathBuf {
    Path::new("/usr/lib/grub").join(platform)
}

/// A GRUB image for `platform` that finds the TMEM partition (`early`) and reads its grub.cfg.
fn grub_mkimage(platform: &str, extra: &[&str], early: &Path, out: &Path) -> Result<()> {
    run(Command::new("grub-mkimage")
        .args(["-O", platform, "-p", "/boot/grub", "-d"])
        .arg(grub_dir(platform))
        .arg("-c")
        .arg(early)
        .arg("-o")
        .arg(out)
        .args(GRUB_MODULES)
        .args(extra))
}

/// The disk: MBR (GRUB's boot sector code + one partition entry), GRUB's BIOS core in the gap,
/// then the FAT partition.
fn assemble(fat: &[u8], core: &[u8], boot: &[u8]) -> Result<Vec<u8>> {
    let start = PARTITION_START_SECTOR * SECTOR;
    ensure!(
        core.len() <= start - SECTOR,
        "GRUB's BIOS core ({} bytes) does not fit before the partition",
        core.len()
    );
    ensure!(boot.len() == SECTOR, "GRUB's boot.img is not one sector");
    ensure!(
        fat.len().is_multiple_of(SECTOR) && start + fat.len() <= DISK_BYTES,
        "partition image size"
    );
    let mut disk = vec![0u8; DISK_BYTES];
    // boot.img's code, patched as grub-bios-setup does: the core starts at sector 1 (the
    // default, written anyway), and the boot-drive check is skipped (trust the BIOS's drive
    // number, as for any hard disk or USB stick). Its partition-table area stays ours.
    disk[..MBR_CODE_END].copy_from_slice(&boot[..MBR_CODE_END]);
    disk[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&1u64.to_le_bytes());
    disk[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    // GRUB's core right after the MBR; its first sector (diskboot) lists the rest as one run of
    // sectors from sector 2, which `grub-mkimage` already wrote for this placement.
    let blocklist_start = u64::from_le_bytes(core[SECTOR - 12..SECTOR - 4].try_into()?);
    ensure!(
        blocklist_start == 2,
        "GRUB core's blocklist starts at sector {blocklist_start}, not 2"
    );
    disk[SECTOR..SECTOR + core.len()].copy_from_slice(core);
    // Partition 1: active, type 0x0c (FAT32 LBA), CHS fields "use LBA".
    let sectors = u32::try_from(fat.len() / SECTOR)?;
    let entry = &mut disk[PARTITION_TABLE..PARTITION_TABLE + 16];
    entry[..8].copy_from_slice(&[0x80, 0xfe, 0xff, 0xff, 0x0c, 0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&u32::try_from(PARTITION_START_SECTOR)?.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    disk[510..512].copy_from_slice(&[0x55, 0xaa]);
    disk[start..start + fat.len()].copy_from_slice(fat);
    Ok(disk)
}

/// Offsets in the MBR: end of boot code (disk signature and partition table follow), GRUB's
/// boot.img fields (`GRUB_BOOT_MACHINE_KERNEL_SECTOR`, `GRUB_BOOT_MACHINE_DRIVE_CHECK`), table.
const MBR_CODE_END: usize = 0x1b8;
const KERNEL_SECTOR: usize = 0x5c;
const DRIVE_CHECK: usize = 0x66;
const PARTITION_TABLE: usize = 0x1be;

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    ensure!(status.success(), "{:?} failed: {status}", cmd.get_program());
    Ok(())
}
