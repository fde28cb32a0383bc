//! `cargo xtask test` (the whole suite, the README's test command and what CI runs) and
//! `cargo xtask test-vm` (build the VM images, then boot them in the QEMU tests).
//!
//! The VM tests are `#[ignore]`d, so the host suite's `cargo test --workspace` reports them as
//! ignored (not as passed); `test-vm` runs them with `--include-ignored`, and there a missing image
//! or binary fails the test.

use anyhow::{Context, Result};
use std::process::Command;

use crate::host::{cargo, ensure_apt_tool, run, step};
use crate::paths;

#[derive(clap::Args)]
pub struct TestArgs {
    /// Only the fast host suite: format, lints, unit/property/e2e tests. No VM images or VM tests.
    #[arg(long)]
    fast: bool,
}

/// Host crates linted with `clippy -D warnings` (the whole workspace).
const HOST_CRATES: [&str; 6] = [
    "protocol",
    "appliance",
    "tmemctl",
    "xtask",
    "qemu-tests",
    "kclient-logic",
];

/// Runs one of our own verbs as a child process (each verb stays independent of the others).
pub fn xtask(args: &[&str]) -> Result<()> {
    let exe = std::env::current_exe().context("locating the xtask binary")?;
    run(Command::new(exe).args(args).current_dir(paths::repo_root()))
}

/// Packages and components the host suite needs on a fresh machine.
pub fn ensure_host_prerequisites() -> Result<()> {
    step("host prerequisites (memcached for the benchmark peer, python3 for the process corpus)");
    ensure_apt_tool("memcached", "memcached")?;
    ensure_apt_tool("python3", "python3")?;
    run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))
}

pub fn test(args: &TestArgs) -> Result<()> {
    let start = std::time::Instant::now();
    ensure_host_prerequisites()?;
    step("format check");
    run(cargo().args(["fmt", "--all", "--check"]))?;
    // kclient is not in the workspace (kbuild builds it): its source files, one by one (its crate
    // root is left out: rustfmt would follow `mod protocol` into the sources generated at build
    // time, which are not ours to format).
    let mut kclient_fmt = Command::new("rustfmt");
    kclient_fmt.args(["--edition", "2021", "--check"]);
    for entry in std::fs::read_dir(paths::repo_root().join("kclient")).context("kclient/")? {
        let path = entry?.path();
        let is_root = path.file_name().is_some_and(|n| n == "kclient_main.rs");
        if path.extension().is_some_and(|e| e == "rs") && !is_root {
            kclient_fmt.arg(path);
        }
    }
    run(&mut kclient_fmt)?;
    step("clippy -D warnings (host crates)");
    let mut clippy = cargo();
    clippy.arg("clippy");
    for c in HOST_CRATES {
        clippy.args(["-p", c]);
    }
    run(clippy.args(["--all-targets", "--", "-D", "warnings"]))?;
    step(
        "host tests: protocol, store, server, tmemctl end to end (real TCP on 127.0.0.1), \
         qemu-tests helpers; VM tests are listed as ignored here and run by test-vm",
    );
    run(cargo().args(["test", "--workspace"]))?;
    step("loom: every interleaving of kclient's request state machine (kclient-logic)");
    run(cargo()
        .args(["test", "-p", "kclient-logic", "--release", "--test", "loom"])
        .env("RUSTFLAGS", "--cfg loom")
        // Its own target dir: --cfg loom would otherwise rebuild the whole workspace each time.
        .env("CARGO_TARGET_DIR", paths::repo_root().join("target/loom")))?;
    if args.fast {
        step("fuzzing and VM tests not run (--fast); `cargo xtask fuzz` and `cargo xtask test-vm` run them");
    } else {
        fuzz(&FuzzArgs { seconds: 20 })?;
        test_vm()?;
    }
    step(&format!(
        "all tests passed in {:.0}s",
        start.elapsed().as_secs_f64()
    ));
    Ok(())
}

pub fn test_vm() -> Result<()> {
    step("building the appliance unikernel image");
    xtask(&["image"])?;
    step("building the client kernel, kclient and initramfs");
    xtask(&["client-image"])?;
    // Its VM tests are qemu-tests/tests/kclient_debug.rs: any lockdep/KASAN report fails them.
    step("building the debug client kernel (lockdep, KASAN, atomic-sleep checks) and its kclient");
    xtask(&["client-image", "--debug"])?;
    step("building the host-mode appliance and tmemctl (release)");
    run(cargo().args(["build", "--release", "-p", "appliance", "-p", "tmemctl"]))?;
    // The Hermit appliance on a tap device gets its address from dnsmasq (hermit_vm.rs).
    ensure_apt_tool("dnsmasq", "dnsmasq-base")?;
    // The boot disk boots under UEFI too (boot_disk.rs); mtools edits its tmem.conf.
    // e2fsprogs: the cache device's test makes and checks an ext4 image (kclient_cache.rs).
    crate::host::apt_install(&["ovmf", "mtools", "e2fsprogs"])?;
    step("VM tests (QEMU TCG, one VM test at a time: the machine has 2 cores)");
    run(cargo().args([
        "test",
        "--release",
        "--no-fail-fast",
        "-p",
        "qemu-tests",
        "--",
        "--include-ignored",
        "--test-threads=1",
    ]))
}

#[derive(clap::Args)]
pub struct FuzzArgs {
    /// Seconds per fuzz target.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
}

/// Fuzz targets in `fuzz/` (libFuzzer through cargo-fuzz, on the nightly toolchain).
const FUZZ_TARGETS: [&str; 3] = ["decode", "session", "secure"];

/// Runs every fuzz target for a bounded time; a crash fails with the reproducer's path.
pub fn fuzz(args: &FuzzArgs) -> Result<()> {
    if Command::new("cargo")
        .args(["+nightly", "fuzz", "--version"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        step("installing the nightly toolchain and cargo-fuzz");
        run(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
        run(Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]))?;
    }
    for target in FUZZ_TARGETS {
        step(&format!("fuzzing {target} for {}s", args.seconds));
        run(Command::new("cargo")
            .args([
                "+nightly",
                "fuzz",
                "run",
                target,
                "--",
                &format!("-max_total_time={}", args.seconds),
            ])
            .current_dir(paths::repo_root().join("fuzz")))?;
    }
    Ok(())
}
