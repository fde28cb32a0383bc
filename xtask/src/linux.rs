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
use crate::linux_kernel::{self, step, Flavor};
use crate::paths;

/// In the image directory: the kernel source the image was built from (one line, see
/// [`linux_kernel::KernelBuild::provenance`]).
pub const KERNEL_SOURCE_FILE: &str = "kernel-source.txt";

/// What `target/images/` was built from ([`KERNEL_SOURCE_FILE`]), or `unknown`.
pub fn image_kernel_source() -> String {
    std::fs::read_to_string(paths::images_out().join(KERNEL_SOURCE_FILE))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown (rebuild with `cargo xtask client-image`)".into())
}

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
    /// Build the debug client kernel instead (lockdep, KASAN, atomic-sleep checks;
    /// `images/linux/kclient-debug.config`), its own kclient.ko and initramfs, into
    /// `target/images/debug/`.
    #[arg(long)]
    debug: bool,
}

/// Where a flavor's bootable artefacts go: `target/images/`, or `target/images/debug/`.
pub fn image_dir(flavor: Flavor) -> PathBuf {
    match flavor {
        Flavor::Normal => paths::images_out(),
        Flavor::Debug => paths::images_out().join("debug"),
    }
}

pub fn client_image(args: &ClientImageArgs) -> Result<()> {
    let start = std::time::Instant::now();
    if !args.no_install {
        linux_kernel::ensure_host_tools()?;
    }
    let flavor = if args.debug {
        Flavor::Debug
    } else {
        Flavor::Normal
    };
    let kernel = linux_kernel::ensure_kernel_flavor(args.jobs, flavor)?;
    let out = image_dir(flavor);
    std::fs::create_dir_all(&out)?;
    std::fs::copy(kernel.bzimage(), out.join("bzImage"))?;
    // Debian's source package moves with security updates: say which one this image is.
    std::fs::write(out.join(KERNEL_SOURCE_FILE), kernel.provenance() + "\n")?;
    if args.kernel_only {
        return Ok(());
    }

    let kclient = build_module(&kernel.build_dir, args.jobs, flavor)?;
    std::fs::copy(&kclient, out.join("kclient.ko"))?;

    let work = paths::repo_root().join("target").join("linux-client");
    std::fs::create_dir_all(&work)?;
    let programs = build_guest_programs(&work)?;
    for program in &programs {
        if let Some(name) = program.file_name() {
            std::fs::copy(program, out.join(name))?;
        }
    }

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
            programs: &programs.iter().map(PathBuf::as_path).collect::<Vec<_>>(),
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

/// Builds `kclient.ko` against the cached kernel tree. kbuild writes objects next to the sources
/// (git-ignored); for the debug kernel the sources are mirrored into `target/linux-client/` first,
/// so the two flavors' objects never mix and each stays incremental.
fn build_module(kernel_build: &Path, jobs: usize, flavor: Flavor) -> Result<PathBuf> {
    let src = paths::repo_root().join("kclient");
    generate_protocol(
        &paths::repo_root().join("protocol/src"),
        &src.join("generated/protocol"),
    )?;
    let dir = match flavor {
        Flavor::Normal => src,
        Flavor::Debug => {
            let dir = paths::repo_root().join("target/linux-client/kclient-debug");
            mirror_sources(&src, &dir)?;
            dir
        }
    };
    step(&format!("kclient.ko ({flavor:?} kernel)"));
    let mut make = linux_kernel::make_command(kernel_build, jobs);
    // Lints: kbuild runs clippy-driver instead of rustc with `CLIPPY=1` (the kernel's clippy
    // flags, plus `#![deny(clippy::undocumented_unsafe_blocks)]` in kclient_main.rs), and every
    // rustc or clippy warning fails the build.
    make.arg(format!("M={}", dir.display()))
        .arg("CLIPPY=1")
        .arg("KRUSTFLAGS=-Dwarnings")
        .arg("modules");
    linux_kernel::run_with_progress(&mut make, "kclient")?;
    let ko = dir.join("kclient.ko");
    if !ko.exists() {
        bail!("{} was not produced", ko.display());
    }
    Ok(ko)
}

/// Copies the module's sources (`Kbuild`, `*.rs`, `*.c`, `*.h`, and everything under
/// `generated/`) from `src` to `dst`, writing only files whose contents changed (so kbuild's
/// timestamps stay meaningful) and removing sources that no longer exist.
fn mirror_sources(src: &Path, dst: &Path) -> Result<()> {
    let wanted = |path: &Path, top: bool| {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let name = name.as_deref().unwrap_or("");
        if path.is_dir() {
            return !top || name == "generated" || name == "logic";
        }
        !top || name == "Kbuild" || [".rs", ".c", ".h"].iter().any(|e| name.ends_with(e))
    };
    mirror_tree(src, dst, &wanted, true)
}

fn mirror_tree(
    src: &Path,
    dst: &Path,
    wanted: &dyn Fn(&Path, bool) -> bool,
    top: bool,
) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if !wanted(&path, top) {
            continue;
        }
        let target = dst.join(path.file_name().context("file name")?);
        if path.is_dir() {
            mirror_tree(&path, &target, wanted, false)?;
            continue;
        }
        let body = std::fs::read(&path)?;
        if std::fs::read(&target).ok().as_deref() != Some(body.as_slice()) {
            std::fs::write(&target, body)?;
        }
    }
    for entry in std::fs::read_dir(dst)? {
        let path = entry?.path();
        let name = path.file_name().context("file name")?;
        if path.is_file() && wanted(&path, top) && !src.join(name).exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// The module compiles the workspace's `protocol/` crate as its `protocol` module. That source says
/// `crate::` for its own items, so the copy (git-ignored, rewritten only when it changes) says
/// `crate::protocol::` instead, and drops the crate-level `#![no_std]`. Nothing else is changed.
fn generate_protocol(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    let mut wanted = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let path = entry?.path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let name = path.file_name().context("file name")?.to_owned();
        let text = std::fs::read_to_string(&path)?;
        let mut out = String::from(
            "// GENERATED by `cargo xtask client-image` from protocol/src: do not edit.\n",
        );
        for line in text.lines() {
            if line.trim() == "#![no_std]" {
                continue;
            }
            out.push_str(&line.replace("crate::", "crate::protocol::"));
            out.push('\n');
        }
        let target = dst.join(&name);
        if std::fs::read_to_string(&target).ok().as_deref() != Some(out.as_str()) {
            std::fs::write(&target, out)?;
        }
        wanted.insert(name);
    }
    for entry in std::fs::read_dir(dst)? {
        let entry = entry?;
        if !wanted.contains(&entry.file_name()) {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Guest programs: every `images/linux/workload/*.c` becomes a static `/bin/<name>` (no libc is
/// needed in the initramfs).
fn build_guest_programs(work: &Path) -> Result<Vec<PathBuf>> {
    let dir = paths::repo_root().join("images/linux/workload");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    let mut out = Vec::new();
    for src in sources {
        let name = src.file_stem().context("program name")?;
        let bin = work.join(name);
        step(&format!(
            "guest program {} (static)",
            name.to_string_lossy()
        ));
        linux_kernel::run(
            Command::new("cc")
                .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
                .arg(&bin)
                .arg(&src),
        )?;
        out.push(bin);
    }
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
