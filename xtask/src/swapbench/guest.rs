//! What the swap bench's client VM boots: the client image (built if missing), the release
//! appliance, qemu-nbd, and the bench's own initramfs with every guest program and the kclient,
//! zram and nbd modules.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use qemu_tests::linux_vm::ClientImage;

use crate::host::{cargo, run as run_cmd, step};
use crate::{linux_initramfs, linux_kernel, paths};

/// Builds what the runs need: the client image (via `cargo xtask client-image` if missing), the
/// release appliance, qemu-nbd, and this benchmark's own initramfs (the client scripts, every
/// guest program, kclient.ko, zram.ko, nbd.ko) in `target/swapbench/`.
pub(super) fn prepare(work: &Path) -> Result<ClientImage> {
    let root = paths::repo_root();
    let images = paths::images_out();
    if !images.join("bzImage").exists() || !images.join("kclient.ko").exists() {
        step("client image missing: cargo xtask client-image");
        crate::testing::xtask(&["client-image"])?;
    }
    if !root.join("target/release/appliance").exists() {
        step("building the release appliance");
        run_cmd(cargo().args(["build", "--release", "-p", "appliance"]))?;
    }
    crate::host::ensure_apt_tool("qemu-nbd", "qemu-utils")?;
    let kernel = linux_kernel::ensure_kernel(2)?;

    step("swap bench: guest programs and initramfs");
    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let src_dir = root.join("images/linux/workload");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    let mut programs = Vec::new();
    for src in sources {
        let bin = bin_dir.join(src.file_stem().context("program name")?);
        run_cmd(
            Command::new("cc")
                .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
                .arg(&bin)
                .arg(&src),
        )?;
        programs.push(bin);
    }
    let mut modules = vec![images.join("kclient.ko")];
    for extra in ["drivers/block/zram/zram.ko", "drivers/block/nbd.ko"] {
        let path = kernel.build_dir.join(extra);
        if !path.exists() {
            bail!(
                "{} missing: images/linux/kclient.config needs CONFIG_ZRAM=m and CONFIG_BLK_DEV_NBD=m",
                path.display()
            );
        }
        modules.push(path);
    }
    let initramfs = work.join("initramfs.cpio.gz");
    let program_refs: Vec<&Path> = programs.iter().map(PathBuf::as_path).collect();
    let module_refs: Vec<&Path> = modules.iter().map(PathBuf::as_path).collect();
    linux_initramfs::build(
        &linux_initramfs::Contents {
            scripts: &root.join("images/linux/initramfs"),
            busybox: Path::new(if Path::new("/bin/busybox").exists() {
                "/bin/busybox"
            } else {
                "/usr/bin/busybox"
            }),
            programs: &program_refs,
            modules: &module_refs,
        },
        &initramfs,
    )?;
    Ok(ClientImage {
        bzimage: images.join("bzImage"),
        initramfs,
    })
}
