//! Host tools the Hermit image needs, installed on demand: the pinned nightly, its LLVM tools, QEMU.
//!
//! The kernel crate pins `nightly-2025-03-15`; building the kernel, the application's std and the
//! loader with that one toolchain keeps the system-call ABI and the Rust ABI in step. That nightly
//! ships no prebuilt std for our targets, so every build uses `-Zbuild-std`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{bail, ensure, Context, Result};

/// The toolchain `hermit-kernel` 0.11.0's `rust-toolchain.toml` pins.
pub const NIGHTLY: &str = "nightly-2025-03-15";

pub use crate::host::step;

/// Removes the variables the outer `cargo run` sets, so the nested cargo picks its own toolchain
/// and flags.
pub fn clean_cargo_env(mut cmd: Command) -> Command {
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_MANIFEST_DIR",
        "CARGO_PKG_NAME",
        "CARGO",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

/// `cargo +NIGHTLY` with a clean environment.
pub fn nightly_cargo() -> Command {
    let mut cmd = clean_cargo_env(Command::new("cargo"));
    cmd.arg(format!("+{NIGHTLY}"));
    cmd
}

/// Installs the pinned nightly with `rust-src` and `llvm-tools` if they are missing.
pub fn ensure_toolchain() -> Result<()> {
    if sysroot().is_ok_and(|s| {
        s.join("lib/rustlib/src/rust/library/std").is_dir()
            && llvm_tool_in(&s, "llvm-objcopy").is_ok()
    }) {
        return Ok(());
    }
    step(&format!(
        "installing Rust {NIGHTLY} with rust-src and llvm-tools"
    ));
    let status = Command::new("rustup")
        .args(["toolchain", "install", NIGHTLY, "--profile", "minimal"])
        .args(["--component", "rust-src", "--component", "llvm-tools"])
        .status()
        .context("running rustup (is rustup installed?)")?;
    ensure!(
        status.success(),
        "rustup toolchain install {NIGHTLY} failed"
    );
    Ok(())
}

fn sysroot() -> Result<PathBuf> {
    static SYSROOT: OnceLock<PathBuf> = OnceLock::new();
    if let Some(s) = SYSROOT.get() {
        return Ok(s.clone());
    }
    let out = clean_cargo_env(Command::new("rustc"))
        .arg(format!("+{NIGHTLY}"))
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    ensure!(out.status.success(), "toolchain {NIGHTLY} is not installed");
    let s = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    Ok(SYSROOT.get_or_init(|| s).clone())
}

fn llvm_tool_in(sysroot: &Path, name: &str) -> Result<PathBuf> {
    let rustlib = sysroot.join("lib/rustlib");
    for entry in std::fs::read_dir(&rustlib)? {
        let path = entry?.path().join("bin").join(name);
        if path.is_file() {
            return Ok(path);
        }
    }
    bail!("{name} not found under {}", rustlib.display())
}

/// Path of an LLVM tool (`llvm-objcopy`, ...) from the nightly's `llvm-tools` component.
pub fn llvm_tool(name: &str) -> Result<PathBuf> {
    llvm_tool_in(&sysroot()?, name)
}

/// Installs QEMU from Debian if `qemu-system-x86_64` is missing (we run as root on these machines).
pub fn ensure_qemu() -> Result<()> {
    ensure_apt_tool("qemu-system-x86_64", "qemu-system-x86")
}

pub use crate::host::ensure_apt_tool;

/// `images/hermit/patches/*.patch`, sorted: small fixes to the published kernel crate, each with a
/// one-line reason at its top. The kernel builds without them; they only change behaviour.
fn patches() -> Result<Vec<PathBuf>> {
    let dir = crate::paths::repo_root().join("images/hermit/patches");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut patches: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "patch"))
        .collect();
    patches.sort();
    Ok(patches)
}

/// Cache-key part for the patch set: `unpatched`, or `p` + FNV-1a hash of names and contents.
pub fn patches_tag() -> Result<String> {
    let patches = patches()?;
    if patches.is_empty() {
        return Ok("unpatched".to_owned());
    }
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for patch in &patches {
        parts.push(
            patch
                .file_name()
                .unwrap_or_default()
                .as_encoded_bytes()
                .to_vec(),
        );
        parts.push(std::fs::read(patch)?);
    }
    let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(format!("p{:08x}", crate::cache_key::fnv1a64(&parts) as u32))
}

/// Applies [`patches`] to the fetched kernel source.
pub fn apply_patches(src: &Path) -> Result<()> {
    let patches = patches()?;
    if !patches.is_empty() {
        ensure_apt_tool("patch", "patch")?;
    }
    for patch in patches {
        step(&format!("kernel: applying {}", patch.display()));
        let status = Command::new("patch")
            .args(["-p1", "--forward", "--input"])
            .arg(&patch)
            .current_dir(src)
            .status()
            .context("running patch")?;
        ensure!(status.success(), "patch {} failed", patch.display());
    }
    Ok(())
}
