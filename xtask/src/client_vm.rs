//! `cargo xtask client-vm --run FILE`: a user's own program in the client VM, swapping to an
//! appliance through kclient.
//!
//! FILE (a static executable, or a script for busybox `sh`) and its arguments go into an extra
//! cpio archive appended to the client initramfs, together with the current guest scripts, so any
//! client image boots it. The VM (QEMU TCG, user networking: the host is 10.0.2.2) loads kclient
//! pointed at `--target`, or at a host-mode appliance started on 127.0.0.1 for the run, turns on
//! swap on `/dev/kclient0` (zswap in front), runs the program (`tmem_test=run`, see
//! `images/linux/initramfs/run-user.sh`) while its output streams here, then prints kclient's
//! counters and powers off. Every wait is bounded by `--timeout`; Ctrl-C stops the VM.

use std::collections::BTreeMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use protocol::StatId;
use qemu_tests::linux_vm::{boot_client, kernel_problems, tagged_lines, wait_exit, Appliance};
use qemu_tests::{key_values, Qemu};

use crate::host::{cargo, run, step};
use crate::linux_initramfs::{add_scripts, Cpio};
use crate::{artefacts, paths};

#[derive(clap::Args, Debug)]
pub struct ClientVmArgs {
    /// The program to run in the VM: a static executable (e.g. `gcc -static`) or a busybox `sh`
    /// script.
    #[arg(long, value_name = "FILE")]
    run: PathBuf,
    /// RAM of the client VM (QEMU syntax): less than the program uses, so it swaps.
    #[arg(long, default_value = "128M")]
    memory: String,
    /// vCPUs of the client VM.
    #[arg(long, default_value_t = 2)]
    cpus: u32,
    /// Appliance(s) for kclient, `HOST:PORT[,HOST:PORT...]` as the VM reaches them (the host is
    /// 10.0.2.2; `127.0.0.1` and `localhost` are rewritten to it). Default: a host-mode appliance
    /// started on 127.0.0.1 for this run.
    #[arg(long, value_name = "ADDR")]
    target: Option<String>,
    /// `--memory` of the appliance started when there is no `--target`.
    #[arg(long, default_value = "1GiB")]
    appliance_memory: String,
    /// Size of `/dev/kclient0`, the VM's swap space.
    #[arg(long, default_value = "1G")]
    swap_size: String,
    /// kclient's I/O timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    io_timeout_ms: u64,
    /// kclient compresses pages (LZ4) before sending them.
    #[arg(long)]
    compress: bool,
    /// No zswap in front of kclient (every swapped page goes to the appliance).
    #[arg(long)]
    no_zswap: bool,
    /// Limit for the whole run (boot, program, counters, power-off), seconds.
    #[arg(long, default_value_t = 1800)]
    timeout: u64,
    /// Show the whole serial console (kernel messages, setup), not only the program's output.
    #[arg(long)]
    console: bool,
    /// Arguments for the program (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
}

/// Where the program is in the VM.
const GUEST_DIR: &str = "user";

pub fn client_vm(args: &ClientVmArgs) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    ensure!(
        args.run.is_file(),
        "--run {}: no such file",
        args.run.display()
    );
    if artefacts::client_image().is_err() {
        step("client image missing: cargo xtask client-image (first time: ~15 min kernel build)");
        crate::testing::xtask(&["client-image"])?;
    }
    let mut image = artefacts::client_image()?;
    let work = paths::repo_root().join("target/client-vm");
    std::fs::create_dir_all(&work)?;
    let name = guest_name(&args.run);
    image.initramfs = pack(&image.initramfs, &args.run, &name, &args.args, &work)?;

    let (_appliance, target, appliance_addr) = match &args.target {
        Some(t) => (None, guest_target(t)?, None),
        None => {
            step("building the host-mode appliance (release)");
            run(cargo().args(["build", "--release", "-p", "appliance"]))?;
            let bin = artefacts::workspace_binary("appliance")?;
            let a = Appliance::start(&bin, &args.appliance_memory)
                .context("starting the host-mode appliance")?;
            step(&format!(
                "appliance ({}) listening on {} for this run",
                args.appliance_memory,
                a.host_addr()
            ));
            let (target, addr) = (format!("10.0.2.2:{}", a.port), a.host_addr());
            (Some(a), target, Some(addr))
        }
    };
    let append = format!(
        "tmem_test=run tmem_run=/{GUEST_DIR}/{name} tmem_target={target} tmem_size={} \
         tmem_timeout_ms={} tmem_compress={} tmem_zswap={} tmem_run_timeout={}",
        args.swap_size,
        args.io_timeout_ms,
        u8::from(args.compress),
        u8::from(!args.no_zswap),
        args.timeout,
    );
    step(&format!(
        "booting the client VM ({} RAM, {} vCPUs): kclient -> {target}, swap on /dev/kclient0, then {name}",
        args.memory, args.cpus
    ));
    let vm = boot_client("client-vm", &image, &args.memory, args.cpus, &append)?;
    let mut session = Session {
        vm,
        console: Console::default(),
        show_all: args.console,
        running: false,
        appliance_addr,
        appliance_at_end: None,
    };
    // On an error the session (and with it the VM) is dropped: the guard stops QEMU.
    let result = session.follow(Duration::from_secs(args.timeout), &interrupted)?;
    let exited = wait_exit(&mut session.vm, Duration::from_secs(60));
    let log = session.vm.output();
    let log_path = session.vm.log_path().to_path_buf();
    report(
        &log,
        &result,
        session.appliance_at_end.as_deref(),
        &log_path,
    );
    ensure!(
        exited,
        "the VM did not power off (log {})",
        log_path.display()
    );
    let problems = kernel_problems(&log);
    ensure!(
        problems.is_empty(),
        "kernel problems in the VM: {problems:#?} (log {})",
        log_path.display()
    );
    match result.get("status").map(String::as_str) {
        Some("pass") => Ok(()),
        _ => bail!(
            "the run failed: {} (log {})",
            failure(&result),
            log_path.display()
        ),
    }
}

/// A name the kernel command line and the guest shell take as is.
fn guest_name(file: &Path) -> String {
    let name = file
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let plain = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if plain {
        name
    } else {
        "program".into()
    }
}

/// `ADDR[,ADDR...]` as the VM reaches it: each `HOST:PORT`, with the host's own loopback names
/// rewritten to 10.0.2.2 (QEMU user networking's address for the host).
fn guest_target(target: &str) -> Result<String> {
    let mut out = Vec::new();
    for addr in target.split(',') {
        let (host, port) = addr
            .rsplit_once(':')
            .with_context(|| format!("--target {addr}: use HOST:PORT"))?;
        port.parse::<u16>()
            .with_context(|| format!("--target {addr}: bad port"))?;
        let host = match host {
            "127.0.0.1" | "localhost" => "10.0.2.2",
            h => h,
        };
        out.push(format!("{host}:{port}"));
    }
    Ok(out.join(","))
}

/// The client initramfs plus an archive with the program (`/user/NAME`), its arguments
/// (`/user/NAME.args`, one per line) and the current guest scripts; returns its path.
fn pack(base: &Path, program: &Path, name: &str, args: &[String], work: &Path) -> Result<PathBuf> {
    if let Some(bad) = args.iter().find(|a| a.contains('\n')) {
        bail!("program argument {bad:?}: arguments cannot contain newlines");
    }
    let mut cpio = Cpio::default();
    cpio.dir("tmem");
    add_scripts(
        &mut cpio,
        &paths::repo_root().join("images/linux/initramfs"),
    )?;
    cpio.dir(GUEST_DIR);
    cpio.file_from(&format!("{GUEST_DIR}/{name}"), 0o755, program)?;
    if !args.is_empty() {
        let lines: String = args.iter().map(|a| format!("{a}\n")).collect();
        cpio.file(&format!("{GUEST_DIR}/{name}.args"), 0o644, lines.as_bytes());
    }
    let out = work.join("initramfs.cpio.gz");
    cpio.write_gz_after(base, &out)?;
    Ok(out)
}

/// The serial console, read as it grows: complete lines only, `\r` dropped.
#[derive(Default)]
struct Console {
    offset: u64,
    partial: String,
}

impl Console {
    /// Lines completed since the last call.
    fn new_lines(&mut self, log: &Path) -> io::Result<Vec<String>> {
        let mut file = std::fs::File::open(log)?;
        file.seek(SeekFrom::Start(self.offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        self.offset += bytes.len() as u64;
        self.partial.push_str(&String::from_utf8_lossy(&bytes));
        let Some(end) = self.partial.rfind('\n') else {
            return Ok(Vec::new());
        };
        let done: Vec<String> = self.partial[..end]
            .split('\n')
            .map(|l| l.trim_end_matches('\r').to_string())
            .collect();
        self.partial.drain(..=end);
        Ok(done)
    }
}

/// A client VM being followed: its console shown as it comes, until the result line.
struct Session {
    vm: Qemu,
    console: Console,
    show_all: bool,
    /// Between `run-start` and `run-done`: the program's output.
    running: bool,
    /// The appliance started for this run (host address), if any.
    appliance_addr: Option<String>,
    /// Its counters when the program ended.
    appliance_at_end: Option<Vec<u64>>,
}

impl Session {
    /// Streams the console until the `TMEM-RESULT` line (bounded by `limit`); returns it.
    fn follow(
        &mut self,
        limit: Duration,
        interrupted: &AtomicBool,
    ) -> Result<BTreeMap<String, String>> {
        let log = self.vm.log_path().to_path_buf();
        let result = qemu_tests::poll(limit, Duration::from_millis(100), || {
            for line in self.console.new_lines(&log)? {
                if let Some(result) = self.show(&line) {
                    return Ok(Some(result));
                }
            }
            if interrupted.load(Ordering::SeqCst) {
                return Err(io::Error::other("interrupted: VM stopped"));
            }
            if !self.vm.is_running() {
                return Err(io::Error::other("the client VM stopped without a result"));
            }
            Ok(None)
        })
        .with_context(|| format!("log {}", log.display()))?;
        result.with_context(|| format!("no result within the --timeout (log {})", log.display()))
    }

    /// Shows one console line as it should be seen; the result's fields once it arrives.
    fn show(&mut self, line: &str) -> Option<BTreeMap<String, String>> {
        if let Some((_, rest)) = line.split_once("TMEM-RESULT ") {
            return Some(key_values(rest));
        }
        if let Some((_, phase)) = line.split_once("TMEM-PHASE ") {
            match phase.split_whitespace().next() {
                Some("run-start") => self.running = true,
                Some("run-done") => {
                    self.running = false;
                    self.appliance_at_end = self.appliance_addr.as_deref().and_then(stats);
                }
                _ => {}
            }
            eprintln!("    [vm] {phase}");
        } else if self.running || self.show_all {
            println!("{line}");
        } else if line.contains("TMEM-SETUP") || line.starts_with("tmem run:") {
            eprintln!("    [vm] {line}");
        }
        None
    }
}

/// The appliance's counters (one short STATS connection), or `None` if it does not answer.
fn stats(addr: &str) -> Option<Vec<u64>> {
    tmemctl::client::Client::connect(addr, 0x636c_6976, Duration::from_secs(5))
        .and_then(|mut c| c.stats())
        .ok()
}

/// What went wrong, from the result's non-zero steps.
fn failure(result: &BTreeMap<String, String>) -> String {
    let bad: Vec<String> = [
        "insmod", "mkswap", "swapon", "rc", "swapoff", "rmmod", "oops",
    ]
    .iter()
    .filter_map(|k| {
        let v = result.get(*k).map(String::as_str).unwrap_or("?");
        (v != "0").then(|| format!("{k}={v}"))
    })
    .collect();
    if bad.is_empty() {
        format!("{result:?}")
    } else {
        bad.join(" ")
    }
}

/// Prints the program's exit, the kernel's swap counters, kclient's counters and the appliance's.
fn report(
    log: &str,
    result: &BTreeMap<String, String>,
    appliance: Option<&[u64]>,
    log_path: &Path,
) {
    let val = |k: &str| result.get(k).map(String::as_str).unwrap_or("?").to_string();
    println!();
    if val("rc") == "na" {
        println!(
            " program: not run (kclient setup: insmod {}, mkswap {}, swapon {})",
            val("insmod"),
            val("mkswap"),
            val("swapon")
        );
    } else {
        println!(
            " program: exit {} after {} s (swapoff {}, rmmod {})",
            val("rc"),
            val("seconds"),
            val("swapoff"),
            val("rmmod")
        );
    }
    if let Some(vmstat) = tagged_lines::<Vec<(String, String)>>(log, "TMEM-VMSTAT").next() {
        let words: Vec<String> = vmstat.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(" kernel swap counters (/proc/vmstat): {}", words.join(", "));
    }
    let kclient: Vec<(String, String)> =
        tagged_lines(log, "TMEM-KCLIENT").next().unwrap_or_default();
    if !kclient.is_empty() {
        println!(" kclient counters (/sys/kernel/debug/kclient/stats, before swapoff):");
    }
    for (k, v) in kclient {
        println!("   {k:<24} {v}");
    }
    if let Some(s) = appliance {
        let get = |id: StatId| s.get(id as usize).copied().unwrap_or(0);
        println!(
            " appliance when the program ended: {} pages held in {:.1} MiB, {} puts, {} get hits",
            get(StatId::Pages),
            (get(StatId::DataBytes) + get(StatId::MetadataBytes)) as f64 / (1 << 20) as f64,
            get(StatId::Puts),
            get(StatId::GetHits)
        );
    }
    println!(" console log: {}", log_path.display());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_rewritten_for_the_guest_and_checked() {
        assert_eq!(
            guest_target("127.0.0.1:7777,192.168.1.5:7000").unwrap(),
            "10.0.2.2:7777,192.168.1.5:7000"
        );
        assert_eq!(guest_target("localhost:1").unwrap(), "10.0.2.2:1");
        assert!(guest_target("10.0.2.2").is_err());
        assert!(guest_target("10.0.2.2:http").is_err());
    }

    #[test]
    fn guest_names_are_plain() {
        assert_eq!(guest_name(Path::new("/tmp/my-prog_1.sh")), "my-prog_1.sh");
        assert_eq!(guest_name(Path::new("/tmp/a b")), "program");
    }

    #[test]
    fn console_yields_whole_lines_as_they_complete() {
        let log = std::env::temp_dir().join(format!("client-vm-console-{}", std::process::id()));
        std::fs::write(&log, "a\r\nb").unwrap();
        let mut c = Console::default();
        assert_eq!(c.new_lines(&log).unwrap(), ["a"]);
        std::fs::write(&log, "a\r\nbc\r\nd\n").unwrap();
        assert_eq!(c.new_lines(&log).unwrap(), ["bc", "d"]);
        assert!(c.new_lines(&log).unwrap().is_empty());
        let _ = std::fs::remove_file(log);
    }

    #[test]
    fn the_program_its_arguments_and_the_scripts_follow_the_base_archive() {
        let dir = std::env::temp_dir().join(format!("client-vm-pack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (base, prog) = (dir.join("base.cpio.gz"), dir.join("hog"));
        let mut b = Cpio::default();
        b.file("bin/busybox", 0o755, b"base-marker");
        b.write_gz(&base).unwrap();
        std::fs::write(&prog, b"#!/bin/sh\necho prog-marker\n").unwrap();
        let args = ["--mib".to_string(), "300".to_string()];
        let out = pack(&base, &prog, "hog", &args, &dir).unwrap();
        let unpacked = std::process::Command::new("gzip")
            .arg("-dc")
            .arg(&out)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&unpacked.stdout);
        let _ = std::fs::remove_dir_all(&dir);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle} missing"))
        };
        assert!(
            at("base-marker") < at("user/hog"),
            "appended after the base"
        );
        for needle in [
            "prog-marker",
            "user/hog.args",
            "--mib\n300\n",
            "tmem/run-user.sh",
            "run) ",
        ] {
            at(needle);
        }
        assert!(pack(&base, &prog, "hog", &["a\nb".into()], &dir).is_err());
    }
}
