//! The Hermit kernel as a link library: fetch `hermit-kernel` from crates.io, build it, post-process it.
//!
//! Hermit applications are ordinary std programs for `x86_64-unknown-hermit`; the kernel is linked
//! into them as `libhermit.a`. Upstream builds that archive with its own `xtask`, which the crates.io
//! package does not ship, so this module does the same steps:
//!
//! 1. obtain the crate source through cargo itself (a throwaway project that depends on
//!    `hermit-kernel = "=VERSION"`; `cargo metadata` downloads and unpacks it),
//! 2. build it with the nightly its `rust-toolchain.toml` pins, `-Zbuild-std=core,alloc`,
//! 3. hide every kernel symbol from the application except the system-call interface (`sys_*`) and a
//!    few entry symbols, because the archive carries its own `core`/`alloc`/`compiler_builtins` whose
//!    symbols would otherwise clash with the application's std,
//! 4. mark every archive member as a Hermit object (ELF OS/ABI byte `0xff`).
//!
//! Everything lands in `~/.cache/tmem/hermit/` keyed by kernel version, feature set, the contents of
//! `images/hermit/patches/`, the exact nightly, the build flags and the post-processing rules
//! (see `library_key`), so a second `cargo xtask image` reuses it and any change rebuilds it.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};
use object::read::archive::ArchiveFile;
use object::{Object, ObjectSymbol};

use crate::cache_key::{fnv1a64, tool_output};
use crate::hermit_tools::{self, step};
use crate::paths;

/// The last crates.io release of the kernel that contains real source.
pub const KERNEL_VERSION: &str = "0.11.0";

/// Kernel features for the appliance: PCI virtio-net and (patch 0013) Intel e1000e, whichever
/// the machine has, ACPI (power-off, APIC discovery), fast FS/GS base, SMP, TCP via smoltcp, an
/// address by DHCP (or static), and console output on the VGA text screen too (what an operator
/// at a spare server sees).
pub const KERNEL_FEATURES: &[&str] = &[
    "pci", "acpi", "fsgsbase", "smp", "tcp", "dhcpv4", "vga", "e1000e",
];

/// Symbols that stay global: the system-call ABI std uses, the entry point, and the symbols the
/// linked application must provide to the kernel or share with it.
const KEEP_EXACT: &[&str] = &["_start", "__bss_start", "mcount", "runtime_entry"];
const KEEP_PREFIX: &str = "sys_";

/// Prefix given to every other defined global kernel symbol.
const HIDE_PREFIX: &str = "tmem_hermit_kernel.";

/// `e_ident[EI_OSABI]` position and Hermit's value for it.
const EI_OSABI: usize = 7;
const ELFOSABI_HERMIT: u8 = 0xff;

/// `RUSTFLAGS` of the kernel build: upstream builds the kernel with this flag (mutable-noalias
/// miscompiles its page tables).
const KERNEL_RUSTFLAGS: &str = "-Zmutable-noalias=no";
/// The target and std build of the kernel library.
const KERNEL_TARGET: &str = "x86_64-unknown-none";
const KERNEL_BUILD_STD: [&str; 2] = [
    "-Zbuild-std=core,alloc",
    "-Zbuild-std-features=compiler-builtins-mem",
];
/// Bump when [`postprocess_archive`] changes in a way its constants above do not show.
const POSTPROCESS_VERSION: u32 = 1;

/// Hash of everything that changes `libhermit.a`: kernel version, features, patches, the exact
/// nightly (`rustc -vV`, which names its commit and LLVM; `llvm-objcopy` comes with it), the
/// flags and build arguments, and the symbol-renaming and OS/ABI rules of the post-processing.
fn library_key() -> Result<u64> {
    let rustc = tool_output(
        hermit_tools::clean_cargo_env(Command::new("rustc"))
            .arg(format!("+{}", hermit_tools::NIGHTLY))
            .arg("-vV"),
    )?;
    let rules = format!(
        "keep {KEEP_EXACT:?} prefix {KEEP_PREFIX} hide {HIDE_PREFIX} osabi {EI_OSABI}={ELFOSABI_HERMIT} v{POSTPROCESS_VERSION}"
    );
    let build = format!(
        "{KERNEL_RUSTFLAGS} {KERNEL_TARGET} {} release locked",
        KERNEL_BUILD_STD.join(" ")
    );
    Ok(fnv1a64(&[
        KERNEL_VERSION.as_bytes(),
        KERNEL_FEATURES.join(",").as_bytes(),
        hermit_tools::patches_tag()?.as_bytes(),
        hermit_tools::NIGHTLY.as_bytes(),
        rustc.as_bytes(),
        build.as_bytes(),
        rules.as_bytes(),
    ]))
}

/// Returns the directory that holds the post-processed `libhermit.a`, building it if needed.
pub fn ensure_libhermit(jobs: usize) -> Result<PathBuf> {
    let key = format!("libhermit-{KERNEL_VERSION}-{:016x}", library_key()?);
    let out_dir = hermit_cache().join(key);
    let lib = out_dir.join("libhermit.a");
    if lib.is_file() {
        step(&format!("kernel: cached {}", lib.display()));
        return Ok(out_dir);
    }
    let src = ensure_kernel_source()?;
    let raw = build_kernel(&src, jobs)?;
    std::fs::create_dir_all(&out_dir)?;
    let tmp = out_dir.join("libhermit.a.tmp");
    postprocess_archive(&raw, &tmp, &out_dir)?;
    std::fs::rename(&tmp, &lib)?;
    step(&format!("kernel: ready {}", lib.display()));
    Ok(out_dir)
}

fn hermit_cache() -> PathBuf {
    paths::cache_dir().join("hermit")
}

/// Downloads (through cargo, from crates.io) and copies the kernel crate into the cache.
fn ensure_kernel_source() -> Result<PathBuf> {
    let src = hermit_cache().join(format!(
        "hermit-kernel-{KERNEL_VERSION}-{}",
        hermit_tools::patches_tag()?
    ));
    if src.join("Cargo.toml").is_file() {
        return Ok(src);
    }
    step(&format!(
        "kernel: fetching hermit-kernel {KERNEL_VERSION} from crates.io"
    ));
    let fetch = hermit_cache().join("fetch");
    std::fs::create_dir_all(fetch.join("src"))?;
    std::fs::write(
        fetch.join("Cargo.toml"),
        format!(
            "[package]\nname = \"fetch-hermit-kernel\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\
             publish = false\n\n[workspace]\n\n[dependencies]\nhermit-kernel = \"={KERNEL_VERSION}\"\n"
        ),
    )?;
    std::fs::write(fetch.join("src/lib.rs"), "")?;
    let output = hermit_tools::clean_cargo_env(Command::new("cargo"))
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(fetch.join("Cargo.toml"))
        .output()
        .context("running cargo metadata")?;
    ensure!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let manifest = meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["name"] == "hermit-kernel" && p["version"] == KERNEL_VERSION)
        .and_then(|p| p["manifest_path"].as_str())
        .context("hermit-kernel not found in cargo metadata")?;
    let registry_dir = Path::new(manifest).parent().context("manifest path")?;
    let tmp = src.with_extension("tmp");
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp)?;
    }
    copy_dir(registry_dir, &tmp)?;
    hermit_tools::apply_patches(&tmp)?;
    std::fs::rename(&tmp, &src)?;
    Ok(src)
}

fn copy_dir(from: &Path, to: &Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Builds the unmodified kernel crate as a static library for `x86_64-unknown-none`.
fn build_kernel(src: &Path, jobs: usize) -> Result<PathBuf> {
    step(&format!(
        "kernel: building hermit-kernel {KERNEL_VERSION} ({}), ~1-2 min",
        KERNEL_FEATURES.join(",")
    ));
    let target_dir = hermit_cache().join("kernel-target");
    let status = hermit_tools::nightly_cargo()
        .current_dir(src)
        .env("CARGO_ENCODED_RUSTFLAGS", KERNEL_RUSTFLAGS)
        .args(["build", "--release", "--locked", "--target", KERNEL_TARGET])
        .args(KERNEL_BUILD_STD)
        .args([
            "--no-default-features",
            "--features",
            &KERNEL_FEATURES.join(","),
        ])
        .arg(format!("-j{jobs}"))
        .arg("--target-dir")
        .arg(&target_dir)
        .status()
        .context("running cargo build for the kernel")?;
    ensure!(status.success(), "kernel build failed");
    Ok(target_dir.join(KERNEL_TARGET).join("release/libhermit.a"))
}

/// Renames the kernel's internal symbols and stamps the Hermit OS/ABI into every member.
fn postprocess_archive(input: &Path, output: &Path, work: &Path) -> Result<()> {
    let data = std::fs::read(input).with_context(|| format!("reading {}", input.display()))?;
    let hidden = symbols_to_hide(&data)?;
    let mut map = String::new();
    for sym in &hidden {
        writeln!(map, "{sym} {HIDE_PREFIX}{sym}")?;
    }
    let map_file = work.join("redefine-syms.txt");
    std::fs::write(&map_file, map)?;
    let status = Command::new(hermit_tools::llvm_tool("llvm-objcopy")?)
        .arg(format!("--redefine-syms={}", map_file.display()))
        .arg(input)
        .arg(output)
        .status()
        .context("running llvm-objcopy")?;
    ensure!(status.success(), "llvm-objcopy --redefine-syms failed");

    let mut data = std::fs::read(output)?;
    let members = set_hermit_osabi(&mut data)?;
    std::fs::write(output, &data)?;
    step(&format!(
        "kernel: hid {} symbols, marked {members} archive members as Hermit objects",
        hidden.len()
    ));
    Ok(())
}

fn keep_global(name: &str) -> bool {
    name.starts_with(KEEP_PREFIX) || KEEP_EXACT.contains(&name)
}

/// Every defined, non-local symbol of every ELF member that is not part of the kernel's ABI.
fn symbols_to_hide(archive: &[u8]) -> Result<BTreeSet<String>> {
    let ar = ArchiveFile::parse(archive).context("parsing libhermit.a")?;
    let mut out = BTreeSet::new();
    for member in ar.members() {
        let member = member?;
        let bytes = member.data(archive)?;
        let Ok(obj) = object::File::parse(bytes) else {
            continue; // not an object file (e.g. a symbol table or rmeta member)
        };
        for sym in obj.symbols() {
            if sym.is_undefined() || sym.is_local() {
                continue;
            }
            let name = sym.name()?;
            if !name.is_empty() && !keep_global(name) {
                out.insert(name.to_owned());
            }
        }
    }
    if out.is_empty() {
        bail!("no kernel symbols found in libhermit.a");
    }
    Ok(out)
}

/// Sets `e_ident[EI_OSABI] = 0xff` in every ELF member in place; returns how many members it changed.
fn set_hermit_osabi(archive: &mut [u8]) -> Result<usize> {
    let ranges: Vec<(u64, u64)> = {
        let ar = ArchiveFile::parse(&*archive).context("parsing post-processed libhermit.a")?;
        ar.members()
            .map(|m| m.map(|m| m.file_range()))
            .collect::<Result<_, _>>()?
    };
    let mut changed = 0;
    for (start, len) in ranges {
        let start = usize::try_from(start)?;
        let len = usize::try_from(len)?;
        let Some(member) = archive.get_mut(start..start + len) else {
            bail!("archive member out of range");
        };
        if member.len() > EI_OSABI && member.starts_with(b"\x7fELF") {
            member[EI_OSABI] = ELFOSABI_HERMIT;
            changed += 1;
        }
    }
    ensure!(changed > 0, "no ELF members in libhermit.a");
    Ok(changed)
}
