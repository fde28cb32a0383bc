//! The client kernel: host prerequisites, Debian's `linux-source-6.12`, tinyconfig + our fragment, and a
//! cached `make LLVM=1` build outside the repo.
//!
//! Layout under `cache_dir()/linux/`:
//! - `src-<debian version>/linux-source-6.12/`: the extracted tree (never modified; kbuild runs with `O=`).
//! - `build-<debian version>-<key>/`: the object tree. `<key>` hashes the source version, the
//!   fragment(s) and the versions of rustc, clang, ld.lld and bindgen, so changing any of them builds
//!   a fresh tree while the old one stays valid. `build-debug-...` is the debug kernel ([`Flavor`]).
//!
//! kbuild records absolute paths, so both directories must stay where they are; a finished build is
//! marked with a `.tmem-built` stamp and a second run does nothing.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::cache_key::{fnv1a64, tool_output};
use crate::paths;

// Kept at their old path for the modules that import them from here.
pub use crate::host::{run, run_quiet, run_with_progress, step};

/// The rustc the kernel and every module are built with (a module built by another rustc is rejected).
pub const RUST_TOOLCHAIN: &str = "1.95.0";
/// Installed when no usable `bindgen` is on PATH (0.73.2 installs faster than 0.69.5; both work).
const BINDGEN_CRATE: &str = "bindgen-cli@0.73.2";
/// Debian packages the pipeline needs (bookworm names).
const APT_PACKAGES: &[&str] = &[
    "linux-source-6.12",
    "clang",
    "llvm",
    "lld",
    "libclang-dev",
    "libelf-dev",
    "bc",
    "bison",
    "flex",
    "libssl-dev",
    "cpio",
    "busybox-static",
    "qemu-system-x86",
    "ipxe-qemu",
    "make",
    "gcc",
    "libc6-dev",
    "xz-utils",
    "gzip",
];
const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
const SOURCE_DIR_NAME: &str = "linux-source-6.12";
const BUILT_STAMP: &str = ".tmem-built";

/// A configured and built kernel tree, ready for `M=` module builds.
pub struct KernelBuild {
    /// The object tree (`O=`), i.e. what `make -C` gets for out-of-tree modules.
    pub build_dir: PathBuf,
    /// Debian version of `linux-source-6.12` the tree was built from.
    pub source_version: String,
}

impl KernelBuild {
    pub fn bzimage(&self) -> PathBuf {
        self.build_dir.join("arch/x86/boot/bzImage")
    }

    /// What the image was built from, one line: the source package version and the kernel release.
    pub fn provenance(&self) -> String {
        let release = std::fs::read_to_string(self.build_dir.join("include/config/kernel.release"))
            .map(|r| r.trim().to_string())
            .unwrap_or_else(|_| "?".into());
        format!("{SOURCE_PACKAGE} {} (Linux {release})", self.source_version)
    }
}

/// The environment every kernel `make` runs with: pinned rustc, cargo's bin dir on PATH (bindgen).
pub fn make_command(build_dir: &Path, jobs: usize) -> Command {
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(build_dir)
        .arg(format!("-j{jobs}"))
        .arg("LLVM=1")
        .env("RUSTUP_TOOLCHAIN", RUST_TOOLCHAIN)
        .env("PATH", path_with_cargo_bin());
    cmd
}

fn path_with_cargo_bin() -> std::ffi::OsString {
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        dirs.push(PathBuf::from(home).join("bin"));
    } else if let Some(home) = std::env::var_os("HOME") {
        dirs.push(PathBuf::from(home).join(".cargo").join("bin"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}

/// Installs what is missing: Debian packages, the pinned Rust toolchain, bindgen.
pub fn ensure_host_tools() -> Result<()> {
    crate::host::apt_install(APT_PACKAGES)?;

    let have_toolchain = Command::new("rustup")
        .args([
            "component",
            "list",
            "--installed",
            "--toolchain",
            RUST_TOOLCHAIN,
        ])
        .output()
        .map(|out| {
            let list = String::from_utf8_lossy(&out.stdout);
            out.status.success()
                && ["rust-src", "rustfmt", "clippy"]
                    .iter()
                    .all(|c| list.contains(c))
        })
        .unwrap_or(false);
    if !have_toolchain {
        // clippy: kclient is built with `CLIPPY=1` (clippy-driver of this exact toolchain).
        step(&format!(
            "installing Rust {RUST_TOOLCHAIN} with rust-src + rustfmt + clippy"
        ));
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            RUST_TOOLCHAIN,
            "--profile",
            "minimal",
            "-c",
            "rust-src",
            "-c",
            "rustfmt",
            "-c",
            "clippy",
        ]))?;
    }

    let bindgen_ok = Command::new("bindgen")
        .arg("--version")
        .env("PATH", path_with_cargo_bin())
        .output()
        .map(|out| {
            out.status.success() && bindgen_version_ok(&String::from_utf8_lossy(&out.stdout))
        })
        .unwrap_or(false);
    if !bindgen_ok {
        step(&format!("installing {BINDGEN_CRATE} (about 1-3 minutes)"));
        run(Command::new("cargo")
            .arg(format!("+{RUST_TOOLCHAIN}"))
            .args(["install", "--locked", BINDGEN_CRATE]))?;
    }
    Ok(())
}

/// The kernel needs bindgen >= 0.65.1; Debian's packaged 0.60 is too old.
fn bindgen_version_ok(version_output: &str) -> bool {
    let Some(version) = version_output.split_whitespace().nth(1) else {
        return false;
    };
    let parts: Vec<u32> = version.split('.').filter_map(|p| p.parse().ok()).collect();
    matches!(parts.as_slice(), [0, minor, ..] if *minor >= 65)
}

/// Debian version of the kernel source package, as dpkg reports it (e.g. `6.12.118-1~deb12u1`).
fn source_version() -> Result<String> {
    let version =
        tool_output(Command::new("dpkg-query").args(["-W", "-f=${Version}", SOURCE_PACKAGE]))
            .with_context(|| format!("{SOURCE_PACKAGE} is not installed"))?;
    if version.is_empty() {
        bail!("{SOURCE_PACKAGE} is not installed");
    }
    Ok(version)
}

/// `version` made safe for a directory name (also what the cache key hashes).
fn dir_safe(version: &str) -> String {
    version
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Extracts the source tarball once into the cache; returns the source tree.
fn ensure_source(linux_cache: &Path, version: &str) -> Result<PathBuf> {
    let src_root = linux_cache.join(format!("src-{version}"));
    let src = src_root.join(SOURCE_DIR_NAME);
    let stamp = src_root.join(".tmem-extracted");
    if stamp.exists() && src.join("Makefile").exists() {
        return Ok(src);
    }
    step(&format!(
        "extracting {SOURCE_TARBALL} into {}",
        src_root.display()
    ));
    if src.exists() {
        std::fs::remove_dir_all(&src).context("removing a partial extraction")?;
    }
    std::fs::create_dir_all(&src_root)?;
    run(Command::new("tar")
        .arg("-xf")
        .arg(SOURCE_TARBALL)
        .arg("-C")
        .arg(&src_root))?;
    std::fs::write(&stamp, b"")?;
    Ok(src)
}

/// Which client kernel: the normal one, or the debug one (lockdep, KASAN, atomic-sleep checks) that
/// `images/linux/kclient-debug.config` adds on top of the normal fragment.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Flavor {
    Normal,
    Debug,
}

impl Flavor {
    /// Config fragments merged into tinyconfig, in order (paths relative to the repository).
    fn fragments(self) -> &'static [&'static str] {
        match self {
            Flavor::Normal => &["images/linux/kclient.config"],
            Flavor::Debug => &[
                "images/linux/kclient.config",
                "images/linux/kclient-debug.config",
            ],
        }
    }

    fn dir_prefix(self) -> &'static str {
        match self {
            Flavor::Normal => "build",
            Flavor::Debug => "build-debug",
        }
    }
}

/// `program args` run with the pinned toolchain and cargo's bin dir on PATH (as the kernel build
/// runs it): its output, for the cache key.
fn tool_version(program: &str, args: &[&str]) -> Result<String> {
    tool_output(
        Command::new(program)
            .args(args)
            .env("RUSTUP_TOOLCHAIN", RUST_TOOLCHAIN)
            .env("PATH", path_with_cargo_bin()),
    )
}

/// Everything outside the source and the config that changes the kernel's objects: the exact
/// rustc (with its commit and LLVM), clang, the linker and bindgen, as their own `--version` says.
fn toolchain_fingerprint() -> Result<String> {
    let mut parts = vec![format!("toolchain {RUST_TOOLCHAIN}")];
    for (program, args) in [
        ("rustc", &["--version", "--verbose"][..]),
        ("clang", &["--version"][..]),
        ("ld.lld", &["--version"][..]),
        ("bindgen", &["--version"][..]),
    ] {
        parts.push(tool_version(program, args)?);
    }
    Ok(parts.join("\n"))
}

/// Configures (if needed) and builds the client kernel of `flavor`; a no-op when the cached build
/// is complete. The cache key covers the Debian source version, the tool
/// versions ([`toolchain_fingerprint`]) and every fragment's bytes.
pub fn ensure_kernel_flavor(jobs: usize, flavor: Flavor) -> Result<KernelBuild> {
    let mut fragments = Vec::new();
    for rel in flavor.fragments() {
        let path = paths::repo_root().join(rel);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        fragments.push((path, text));
    }
    let debian_version = source_version()?;
    let version = dir_safe(&debian_version);
    let tools = toolchain_fingerprint()?;
    let linux_cache = paths::cache_dir().join("linux");
    let mut key_parts: Vec<&[u8]> = vec![version.as_bytes(), tools.as_bytes()];
    key_parts.extend(fragments.iter().map(|(_, text)| text.as_bytes()));
    let key = fnv1a64(&key_parts);
    let build_dir = linux_cache.join(format!("{}-{version}-{key:016x}", flavor.dir_prefix()));
    let build = KernelBuild {
        build_dir: build_dir.clone(),
        source_version: debian_version,
    };
    if build_dir.join(BUILT_STAMP).exists() && build.bzimage().exists() {
        step(&format!("kernel: cached build {}", build_dir.display()));
        return Ok(build);
    }

    let src = ensure_source(&linux_cache, &version)?;
    std::fs::create_dir_all(&build_dir)?;
    std::fs::write(build_dir.join(".tmem-key"), format!("{version}\n{tools}\n"))?;

    let names: Vec<&str> = flavor.fragments().to_vec();
    step(&format!(
        "kernel ({flavor:?}): tinyconfig + {}",
        names.join(" + ")
    ));
    let mut tiny = make_command(&src, 1);
    tiny.arg(format!("O={}", build_dir.display()))
        .arg("tinyconfig");
    run_quiet(&mut tiny)?;
    let mut merge = Command::new(src.join("scripts/kconfig/merge_config.sh"));
    merge
        .current_dir(&build_dir)
        .env("ARCH", "x86")
        .args(["-m", "-O"])
        .arg(&build_dir)
        .arg(build_dir.join(".config"));
    for (path, _) in &fragments {
        merge.arg(path);
    }
    run_quiet(&mut merge)?;
    let mut olddef = make_command(&src, 1);
    olddef
        .arg(format!("O={}", build_dir.display()))
        .arg("olddefconfig");
    run_quiet(&mut olddef)?;
    for (_, text) in &fragments {
        check_config(&build_dir.join(".config"), text)?;
    }

    step(&format!(
        "kernel ({flavor:?}): building bzImage + modules with -j{jobs} (12-16 min on 2 cores; progress every 30 s)"
    ));
    let mut make = make_command(&build_dir, jobs);
    make.args(["bzImage", "modules"]);
    run_with_progress(&mut make, "kernel")?;
    std::fs::write(build_dir.join(BUILT_STAMP), version.as_bytes())?;
    Ok(build)
}

/// Every `CONFIG_X=y|m|value` and `# CONFIG_X is not set` line of the fragment must survive olddefconfig;
/// otherwise a dependency is missing and the kernel silently lacks a feature.
fn check_config(config_path: &Path, fragment: &str) -> Result<()> {
    let config = std::fs::read_to_string(config_path)?;
    let lines: std::collections::HashSet<&str> = config.lines().collect();
    let mut dropped = Vec::new();
    for line in fragment.lines().map(str::trim) {
        let wanted_unset = line.starts_with("# CONFIG_") && line.ends_with(" is not set");
        if line.starts_with("CONFIG_") {
            if !lines.contains(line) {
                dropped.push(line.to_string());
            }
        } else if wanted_unset {
            let name = line
                .trim_start_matches("# ")
                .trim_end_matches(" is not set");
            if config.lines().any(|l| l.starts_with(&format!("{name}="))) {
                dropped.push(line.to_string());
            }
        }
    }
    if !dropped.is_empty() {
        bail!(
            "kernel config: these fragment lines did not survive olddefconfig (missing dependency?):\n  {}",
            dropped.join("\n  ")
        );
    }
    Ok(())
}
