//! Running host commands and installing host packages: one implementation for every xtask verb.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// Prints a progress line (to stderr, so stdout stays clean for callers that parse it).
pub fn step(msg: &str) {
    eprintln!("==> {msg}");
}

pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// Runs a command, showing its output only when it fails.
pub fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("{cmd:?} failed: {}", out.status);
    }
    Ok(())
}

/// Runs a long build: stdout lines are counted and summarised periodically, stderr (warnings, errors)
/// passes through, and the tail of stdout is shown on failure.
pub fn run_with_progress(cmd: &mut Command, what: &str) -> Result<()> {
    let start = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let mut last_report = Instant::now();
    let mut count = 0usize;
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.unwrap_or_default();
        count += 1;
        if tail.len() == 30 {
            tail.pop_front();
        }
        tail.push_back(line);
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "    [{what} {:>4}s] {count} steps, now: {}",
                start.elapsed().as_secs(),
                tail.back().map(String::as_str).unwrap_or("").trim()
            );
        }
    }
    let status = child.wait()?;
    if !status.success() {
        for line in &tail {
            eprintln!("    | {line}");
        }
        bail!("{what} build failed: {status}");
    }
    eprintln!(
        "    [{what}] done in {}s ({count} steps)",
        start.elapsed().as_secs()
    );
    Ok(())
}

/// Installs the Debian packages of `packages` that are not installed yet (`apt-get update` first,
/// once per run; through sudo when not root).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    step(&format!(
        "installing Debian packages: {}",
        missing.join(" ")
    ));
    let sudo = !qemu_tests::is_root();
    static UPDATED: OnceLock<()> = OnceLock::new();
    if UPDATED.get().is_none() {
        run(apt_command(sudo).arg("update").arg("-q"))?;
        let _ = UPDATED.set(());
    }
    run(apt_command(sudo)
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing))
}

/// Installs `package` if `program` is not on PATH.
pub fn ensure_apt_tool(program: &str, package: &str) -> Result<()> {
    if which(program) {
        return Ok(());
    }
    apt_install(&[package])?;
    ensure!(
        which(program),
        "{program} still missing after installing {package}"
    );
    Ok(())
}

/// Whether `program` is an executable on PATH (one answer for xtask and the VM tests).
pub use qemu_tests::on_path as which;

/// `cargo` (the one running this xtask, when known) in the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(crate::paths::repo_root());
    c
}

fn apt_command(sudo: bool) -> Command {
    let mut cmd = if sudo {
        let mut c = Command::new("sudo");
        c.arg("apt-get");
        c
    } else {
        Command::new("apt-get")
    };
    cmd.env("DEBIAN_FRONTEND", "noninteractive");
    cmd
}

fn dpkg_installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", pkg])
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
        .unwrap_or(false)
}
