//! Client side: Linux 6.12 with CONFIG_RUST, the kclient module and the initramfs.
//!
//! `cargo xtask client-image` works from a fresh Debian bookworm machine: it installs what is missing
//! (apt packages, the pinned rustc, bindgen), builds the kernel once into `~/.cache/tmem/linux/`
//! (see `linux_kernel`), then builds `kclient.ko` (in place in `kclient/`, as kbuild wants), the
//! static workload and the initramfs, and copies the bootable artefacts to `target/images/`:
//! `bzImage`, `kclient.ko`, `initramfs.cpio.gz` (+ `tmem-workload`).
//!
//! Debian's own kernels do not enable CONFIG_RUST, which is why the client VM boots this kernel.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::linux_initramfs;
use crate::linux_kernel::{self, step};
use crate::paths;

#[derive(clap::Args)]
pub struct ClientImageArgs {
    /// Parallel make jobs (the machines are shared: keep it small).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Do not try to install missing apt packages, the Rust toolchain or bindgen.
    #[arg(long)]
    no_install: bool,
    /// Stop after the kernel build.
    #[arg(long)]
    kernel_only: bool,
}

pub fn client_image(args: &ClientImageArgs) -> Result<()> {
    let start = std::time::Instant::now();
    if !args.no_install {
        linux_kernel::ensure_host_tools()?;
    }
    let kernel = linux_kernel::ensure_kernel(args.jobs)?;
    let out = paths::images_out();
    std::fs::create_dir_all(&out)?;
    std::fs::copy(kernel.bzimage(), out.join("bzImage"))?;
    if args.kernel_only {
        return Ok(());
    }

    let kclient = build_module(&kernel.build_dir, args.jobs)?;
    std::fs::copy(&kclient, out.join("kclient.ko"))?;

    let work = paths::repo_root().join("target").join("linux-client");
    std::fs::create_dir_all(&work)?;
    let workload = build_workload(&work)?;
    std::fs::copy(&workload, out.join("tmem-workload"))?;

    step("initramfs");
    let mut modules: Vec<PathBuf> = vec![kclient];
    for extra in ["drivers/block/zram/zram.ko", "drivers/block/nbd.ko"] {
        let path = kernel.build_dir.join(extra);
        if path.exists() {
            modules.push(path);
        }
    }
    let module_refs: Vec<&Path> = modules.iter().map(PathBuf::as_path).collect();
    linux_initramfs::build(
        &linux_initramfs::Contents {
            scripts: &paths::repo_root().join("images/linux/initramfs"),
            busybox: &busybox()?,
            workload: &workload,
            modules: &module_refs,
        },
        &out.join("initramfs.cpio.gz"),
    )?;
    step(&format!(
        "client image ready in {} ({}s): bzImage kclient.ko initramfs.cpio.gz",
        out.display(),
        start.elapsed().as_secs()
    ));
    Ok(())
}

/// Builds `kclient.ko` against the cached kernel tree (kbuild writes objects next to the sources;
/// they are git-ignored).
fn build_module(kernel_build: &Path, jobs: usize) -> Result<PathBuf> {
    let dir = paths::repo_root().join("kclient");
    step("kclient.ko");
    let mut make = linux_kernel::make_command(kernel_build, jobs);
    make.arg(format!("M={}", dir.display())).arg("modules");
    linux_kernel::run_with_progress(&mut make, "kclient")?;
    let ko = dir.join("kclient.ko");
    if !ko.exists() {
        bail!("{} was not produced", ko.display());
    }
    Ok(ko)
}

/// The guest workload, a static C program (no libc needed in the initramfs).
fn build_workload(work: &Path) -> Result<PathBuf> {
    let src = paths::repo_root().join("images/linux/workload/tmem-workload.c");
    let out = work.join("tmem-workload");
    step("tmem-workload (static)");
    linux_kernel::run(
        Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(&out)
            .arg(&src),
    )?;
    Ok(out)
}

fn busybox() -> Result<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return Ok(path);
        }
    }
    Err(anyhow::anyhow!("busybox not found")).context("install busybox-static")
}
