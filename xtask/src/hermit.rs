//! Appliance unikernel image: Hermit kernel, our boot loader, the appliance ELF; booting it in QEMU.
//!
//! `cargo xtask image` produces two files in `target/images/` (see [`paths::images_out`]):
//! - `loader`: our multiboot boot loader (`images/loader/`), an ELF32 file for QEMU's `-kernel`;
//! - `appliance`: the appliance linked with the Hermit kernel, an ELF64 file for QEMU's `-initrd`
//!   (debug info stripped; the full ELF is `target/hermit/x86_64-unknown-hermit/release/appliance`).
//!
//! `cargo xtask run-appliance --memory 2G --port 7777 [-- APP ARGS]` boots them under QEMU TCG (never
//! KVM: `/dev/kvm` on these machines cannot run Hermit) with virtio-net and user networking, the
//! guest port forwarded to `127.0.0.1:PORT`, and the serial console on stdout.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::hermit_kernel;
use crate::hermit_tools::{self, step};
use crate::paths;

/// Rust target of Hermit applications.
const HERMIT_TARGET: &str = "x86_64-unknown-hermit";

#[derive(clap::Args)]
pub struct ImageArgs {
    /// Build the throwaway echo app (`images/hermit/smoke-app`) instead of the appliance, into
    /// `target/images/smoke/` (boot it with `run-appliance --images target/images/smoke`).
    #[arg(long)]
    smoke: bool,
    /// Parallel jobs for the cargo builds (the machines are shared: keep it small).
    #[arg(long, default_value_t = 2)]
    jobs: usize,
    /// Do not install missing tools (rustup toolchain, QEMU).
    #[arg(long)]
    no_install: bool,
}

#[derive(clap::Args)]
pub struct RunArgs {
    /// Guest memory (QEMU `-m` syntax, e.g. `2G`, `512M`).
    #[arg(long, default_value = "2G")]
    memory: String,
    /// TCP port: the appliance listens on it in the guest and QEMU forwards 127.0.0.1:PORT to it.
    #[arg(long, default_value_t = 7777)]
    port: u16,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Directory with `loader` and `appliance` (default: target/images, or $TMEM_IMAGES).
    #[arg(long)]
    images: Option<PathBuf>,
    /// Page-store size passed as the appliance's `--memory` when no app args are given
    /// (default: three quarters of the guest memory).
    #[arg(long)]
    store: Option<String>,
    /// Environment variable for the appliance, `KEY=VALUE` (repeatable; Hermit's `env=` boot arg).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Extra Hermit kernel argument placed before `--` (repeatable), e.g. `-freq 2400`.
    #[arg(long = "kernel-arg", value_name = "ARG", allow_hyphen_values = true)]
    kernel_args: Vec<String>,
    /// The VM's NIC: `virtio` (virtio-net-pci) or `e1000e` (Intel 82574L, the NIC of servers).
    #[arg(long, value_enum, default_value_t = Nic::Virtio)]
    nic: Nic,
    /// Arguments for the appliance (replace the defaults `--listen 0.0.0.0:PORT --insecure --memory STORE`).
    #[arg(last = true)]
    app_args: Vec<String>,
}

/// A NIC the appliance kernel drives (it picks the one the machine has at boot).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum Nic {
    Virtio,
    E1000e,
}

impl Nic {
    /// QEMU `-device` value for this NIC on netdev `n0` (the VM tests' [`qemu_tests::Nic`]).
    fn qemu_device(self) -> &'static str {
        match self {
            Nic::Virtio => qemu_tests::Nic::VirtioNet,
            Nic::E1000e => qemu_tests::Nic::E1000e,
        }
        .device()
    }
}

pub fn image(args: &ImageArgs) -> Result<()> {
    let start = Instant::now();
    if !args.no_install {
        hermit_tools::ensure_toolchain()?;
        hermit_tools::ensure_qemu()?;
    }
    let libdir = hermit_kernel::ensure_libhermit(args.jobs)?;
    // The smoke image goes to its own folder so it never stands in for the appliance in tests.
    let out = if args.smoke {
        paths::images_out().join("smoke")
    } else {
        paths::images_out()
    };
    std::fs::create_dir_all(&out)?;

    let app = if args.smoke {
        build_app(
            &paths::repo_root().join("images/hermit/smoke-app"),
            None,
            "hermit-smoke",
            &libdir,
            args.jobs,
        )?
    } else {
        build_app(
            &paths::repo_root(),
            Some("appliance"),
            "appliance",
            &libdir,
            args.jobs,
        )?
    };
    strip_debug(&app, &out.join("appliance"))?;

    let loader = build_loader(args.jobs)?;
    copy(&loader, &out.join("loader"))?;
    if !args.smoke {
        crate::boot_disk::build(&out, !args.no_install)?;
    }

    step(&format!(
        "image ready in {}s: {}/{{loader,appliance{}}}",
        start.elapsed().as_secs(),
        out.display(),
        if args.smoke {
            ""
        } else {
            ",tmem-appliance.img"
        }
    ));
    Ok(())
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// Copies the app without debug info: QEMU loads the whole `-initrd` file into guest RAM below the
/// kernel, where it stays. The unstripped ELF (for symbolizing addresses) stays in `target/hermit/`.
fn strip_debug(from: &Path, to: &Path) -> Result<()> {
    let status = Command::new(hermit_tools::llvm_tool("llvm-objcopy")?)
        .arg("--strip-debug")
        .arg(from)
        .arg(to)
        .status()
        .context("running llvm-objcopy --strip-debug")?;
    ensure!(status.success(), "llvm-objcopy --strip-debug failed");
    Ok(())
}

/// Builds a std application for Hermit; its build.rs links `libhermit.a` from `TMEM_HERMIT_LIBDIR`.
fn build_app(
    dir: &Path,
    package: Option<&str>,
    bin: &str,
    libdir: &Path,
    jobs: usize,
) -> Result<PathBuf> {
    step(&format!("app: building {bin} for {HERMIT_TARGET}"));
    // A separate target dir: nightly + build-std artefacts must not churn the host builds in target/.
    let target_dir = paths::repo_root().join("target/hermit");
    let mut cmd = hermit_tools::nightly_cargo();
    cmd.current_dir(dir)
        .env("TMEM_HERMIT_LIBDIR", libdir)
        .args(["build", "--release", "--target", HERMIT_TARGET])
        // The workspace lock file is resolved by the stable toolchain; a dependency declaring a
        // newer `rust-version` than this nightly (1.87) usually still builds, so don't refuse.
        .arg("--ignore-rust-version")
        .args([
            "-Zbuild-std=std,panic_abort",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .arg(format!("-j{jobs}"))
        .arg("--target-dir")
        .arg(&target_dir)
        .args(["--bin", bin]);
    if let Some(p) = package {
        cmd.args(["--package", p]);
    }
    let status = cmd
        .status()
        .context("running cargo build for the Hermit app")?;
    ensure!(
        status.success(),
        "building {bin} for {HERMIT_TARGET} failed"
    );
    let elf = target_dir.join(HERMIT_TARGET).join("release").join(bin);
    check_kernel_linked(&elf)?;
    Ok(elf)
}

/// The Hermit target links even without the kernel (undefined `sys_*` are allowed), producing an
/// image with entry point 0 that cannot boot. Catch that here instead of in QEMU.
fn check_kernel_linked(elf: &Path) -> Result<()> {
    use object::{Object, ObjectSymbol};
    let data = std::fs::read(elf).with_context(|| format!("reading {}", elf.display()))?;
    let file = object::File::parse(&*data)?;
    let has_start = file
        .symbols()
        .any(|s| s.name() == Ok("_start") && !s.is_undefined());
    ensure!(
        file.entry() != 0 && has_start,
        "{} has no Hermit kernel linked in (entry {:#x}): its build.rs must link libhermit.a \
         from TMEM_HERMIT_LIBDIR when CARGO_CFG_TARGET_OS == \"hermit\"",
        elf.display(),
        file.entry()
    );
    Ok(())
}

/// Builds `images/loader` (x86_64-unknown-none) and converts it to ELF32 for QEMU's multiboot.
fn build_loader(jobs: usize) -> Result<PathBuf> {
    step("loader: building images/loader");
    let dir = paths::repo_root().join("images/loader");
    let status = hermit_tools::nightly_cargo()
        .current_dir(&dir)
        .args(["build", "--release", "--target", "x86_64-unknown-none"])
        .args([
            "-Zbuild-std=core",
            "-Zbuild-std-features=compiler-builtins-mem",
        ])
        .arg(format!("-j{jobs}"))
        .status()
        .context("running cargo build for the loader")?;
    ensure!(status.success(), "loader build failed");
    let elf64 = dir.join("target/x86_64-unknown-none/release/tmem-loader");
    let elf32 = dir.join("target/x86_64-unknown-none/release/tmem-loader.elf32");
    // QEMU's multiboot loader only accepts ELF32; the code is 64-bit-linked but lives below 4 GiB.
    let status = Command::new(hermit_tools::llvm_tool("llvm-objcopy")?)
        .args(["--output-target", "elf32-i386"])
        .arg(&elf64)
        .arg(&elf32)
        .status()
        .context("running llvm-objcopy")?;
    ensure!(
        status.success(),
        "llvm-objcopy --output-target elf32-i386 failed"
    );
    Ok(elf32)
}

/// QEMU `-m` size string to MiB (`2G`, `512M`, `1024`).
fn parse_mib(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'G' | 'g')) => (&s[..i], 1024),
        Some((i, 'M' | 'm')) => (&s[..i], 1),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .with_context(|| format!("bad memory size {s:?}"))?;
    Ok(n * mul)
}

pub fn run_appliance(args: &RunArgs) -> Result<()> {
    hermit_tools::ensure_qemu()?;
    let images = args
        .images
        .clone()
        .or_else(|| std::env::var_os("TMEM_IMAGES").map(PathBuf::from))
        .unwrap_or_else(paths::images_out);
    let (loader, app) = (images.join("loader"), images.join("appliance"));
    ensure!(
        loader.is_file() && app.is_file(),
        "{} and {} missing: run `cargo xtask image` first",
        loader.display(),
        app.display()
    );
    let app_args = if args.app_args.is_empty() {
        let store = match &args.store {
            Some(s) => s.clone(),
            None => format!("{}MiB", parse_mib(&args.memory)? * 3 / 4),
        };
        vec![
            "--listen".to_owned(),
            format!("0.0.0.0:{}", args.port),
            // Only QEMU's forward from 127.0.0.1 reaches the VM; clients without keys welcome.
            "--insecure".to_owned(),
            "--memory".to_owned(),
            store,
        ]
    } else {
        args.app_args.clone()
    };
    let mut cmdline: Vec<String> = args.kernel_args.clone();
    for kv in &args.env {
        ensure!(kv.contains('='), "--env wants KEY=VALUE, got {kv:?}");
        cmdline.push(format!("env={kv}"));
    }
    cmdline.push("--".to_owned());
    cmdline.extend(app_args.iter().cloned());
    let cmdline = cmdline.join(" ");
    let port = args.port;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args([
        "-cpu",
        "max",
        "-smp",
        &args.smp.to_string(),
        "-m",
        &args.memory,
    ])
    .args([
        "-display",
        "none",
        "-serial",
        "stdio",
        "-monitor",
        "none",
        "-no-reboot",
    ])
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    .arg("-kernel")
    .arg(&loader)
    .arg("-initrd")
    .arg(&app)
    .args(["-append", &cmdline])
    .args([
        "-netdev",
        &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-:{port}"),
        "-device",
        args.nic.qemu_device(),
    ]);
    step(&format!(
        "booting {} under QEMU TCG ({} RAM); appliance reachable at 127.0.0.1:{port}; args: {}",
        app.display(),
        args.memory,
        boot_config::Redacted(&app_args.join(" "))
    ));
    let status = cmd.status().context("running qemu-system-x86_64")?;
    // Hermit exits through isa-debug-exit: QEMU returns (code << 1) | 1.
    step(&format!("QEMU exited: {status}"));
    Ok(())
}
