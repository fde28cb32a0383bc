//! `cargo xtask bench --cache`: the cache device (`/dev/kcache0`) against the disk it caches
//! and against the page cache, side by side in one run (issue 14's benchmark).
//!
//! Each configuration boots the client VM over a fresh ext4 image that QEMU throttles
//! (`throttling.bps-total`: a slow disk or network storage) and runs
//! `images/linux/initramfs/bench-cache.sh`: write a file set larger than the VM's RAM, then read
//! it twice, every byte verified. `disk` reads the throttled disk, `kcache` reads through the
//! cache device (cold, then from a host-mode appliance), `ram` runs in a VM large enough to keep
//! everything in its page cache (the lower bound). Rounds alternate the order; tables show
//! medians and the second pass's time as a ratio of the disk's.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use qemu_tests::ext4_image::Ext4Image;
use qemu_tests::linux_vm::{client_command, tagged_lines, wait_exit, Appliance, ClientImage};
use qemu_tests::Qemu;

use crate::host::{apt_install, cargo, run, step};
use crate::medians::median_of;
use crate::{artefacts, docs_section, testing};

#[derive(clap::Args, Debug, Clone)]
pub struct CacheBenchArgs {
    /// The disk's throttle, MB/s (reads and writes together).
    #[arg(long = "cache-disk-mbps", default_value_t = 4)]
    pub cache_disk_mbps: u64,
    /// Files in the set.
    #[arg(long = "cache-files", default_value_t = 32)]
    pub cache_files: u32,
    /// MiB per file.
    #[arg(long = "cache-file-mib", default_value_t = 8)]
    pub cache_file_mib: u32,
    /// RAM of the VM for `disk` and `kcache` (below the file set).
    #[arg(long = "cache-vm-memory", default_value = "128M")]
    pub cache_vm_memory: String,
    /// RAM of the VM for `ram` (the file set fits in its page cache).
    #[arg(long = "cache-ram-vm-memory", default_value = "1G")]
    pub cache_ram_vm_memory: String,
    /// Rounds (every configuration once per round, order alternating).
    #[arg(long = "cache-rounds", default_value_t = 1)]
    pub cache_rounds: usize,
    /// Limit for one VM, seconds.
    #[arg(long = "cache-vm-timeout", default_value_t = 1800)]
    pub cache_vm_timeout_s: u64,
}

const MODES: [&str; 3] = ["disk", "kcache", "ram"];
/// The client identity of the keyed kclient sessions.
const BENCH_CLIENT: u64 = 0xcac4e;

pub fn run_bench(args: &CacheBenchArgs, no_docs: bool) -> Result<()> {
    step("cache bench: client image (kernel cached), release appliance, e2fsprogs");
    testing::xtask(&["client-image"])?;
    run(cargo().args(["build", "--release", "-p", "appliance"]))?;
    apt_install(&["e2fsprogs"])?;
    let image = artefacts::client_image()?;
    let mut runs: BTreeMap<&str, Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for round in 0..args.cache_rounds {
        let mut order = MODES;
        if round % 2 == 1 {
            order.reverse();
        }
        for mode in order {
            step(&format!(
                "cache bench: {mode}, round {}/{}",
                round + 1,
                args.cache_rounds
            ));
            let r = run_mode(args, &image, mode)?;
            println!("  {r:?}");
            runs.entry(mode).or_default().push(r);
        }
    }
    let table = report(args, &runs);
    println!("{table}");
    if !no_docs {
        docs_section::write("cache-bench", &table)?;
        step("docs/benchmarks.md: cache-bench section rewritten");
    }
    Ok(())
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// One configuration's VM: its `TMEM-CACHEBENCH` line.
fn run_mode(
    args: &CacheBenchArgs,
    image: &ClientImage,
    mode: &str,
) -> Result<BTreeMap<String, String>> {
    let set_mib = u64::from(args.cache_files) * u64::from(args.cache_file_mib);
    let disk = Ext4Image::new("tmem-cachebench", set_mib + set_mib / 2 + 64)?;
    let mut append = format!(
        "tmem_test=cachebench tmem_cache_mode={mode} tmem_files={} tmem_file_mib={}",
        args.cache_files, args.cache_file_mib
    );
    // Only the cache device talks to an appliance (keyed, like every default setup).
    let _appliance = if mode == "kcache" {
        let key = hex(&tmemctl::secure::random_key()?);
        let bin = artefacts::workspace_binary("appliance")?;
        let memory = format!("{}MiB", set_mib * 2);
        let app = Appliance::start_with(
            &bin,
            &memory,
            None,
            &["--key", &format!("{BENCH_CLIENT:#x}:{key}")],
        )?;
        append.push_str(&format!(
            " tmem_target=10.0.2.2:{} tmem_client_id={BENCH_CLIENT:#x} tmem_key={key}",
            app.port
        ));
        Some(app)
    } else {
        None
    };
    let memory = if mode == "ram" {
        &args.cache_ram_vm_memory
    } else {
        &args.cache_vm_memory
    };
    let mut cmd = client_command(image, memory, 2, &append);
    cmd.args(["-drive", &drive(&disk.path, args.cache_disk_mbps << 20)]);
    let mut vm = Qemu::spawn(&format!("cachebench-{mode}"), cmd)?;
    let waited = vm.wait_for_output(
        "TMEM-CACHEBENCH",
        Duration::from_secs(args.cache_vm_timeout_s),
    );
    wait_exit(&mut vm, Duration::from_secs(120));
    if let Err(e) = waited {
        bail!("{mode}: no result ({e})\n{}", vm.log_tail());
    }
    let log = vm.output();
    let r: BTreeMap<String, String> = tagged_lines(&log, "TMEM-CACHEBENCH")
        .next()
        .context("TMEM-CACHEBENCH line")?;
    ensure!(
        r.get("ok").map(String::as_str) == Some("1"),
        "{mode}: a pass failed or did not verify: {r:?}\n{}",
        vm.log_tail()
    );
    Ok(r)
}

fn drive(image: &Path, bps: u64) -> String {
    format!(
        "file={},format=raw,if=virtio,cache=unsafe,throttling.bps-total={bps}",
        image.display()
    )
}

/// The markdown section: medians per configuration and the ratios to the disk.
fn report(args: &CacheBenchArgs, runs: &BTreeMap<&str, Vec<BTreeMap<String, String>>>) -> String {
    let set_mib = u64::from(args.cache_files) * u64::from(args.cache_file_mib);
    let disk2 = runs
        .get("disk")
        .map_or(f64::NAN, |r| median_of(r, "pass2_ms"));
    let mut s = format!(
        "Command: `cargo xtask bench --cache` (defaults: {} x {} MiB files = {set_mib} MiB, \
         disk throttled to {} MB/s, VM {} / `ram` VM {}, {} round(s), medians). Measured {} \
         under QEMU TCG with user networking on this 2-core host: ratios are comparable, \
         absolute times are not.\n\n",
        args.cache_files,
        args.cache_file_mib,
        args.cache_disk_mbps,
        args.cache_vm_memory,
        args.cache_ram_vm_memory,
        args.cache_rounds,
        today_utc()
    );
    s.push_str("| configuration | first pass (s) | second pass (s) | second pass / disk | hits / misses (second pass) |\n");
    s.push_str("|---|---:|---:|---:|---|\n");
    for mode in MODES {
        let Some(r) = runs.get(mode) else { continue };
        let (p1, p2) = (median_of(r, "pass1_ms"), median_of(r, "pass2_ms"));
        let hm = if mode == "kcache" {
            format!(
                "{:.0} / {:.0}",
                median_of(r, "hits"),
                median_of(r, "misses")
            )
        } else {
            "-".into()
        };
        let what = match mode {
            "disk" => "ext4 on the throttled disk",
            "kcache" => "ext4 on /dev/kcache0 over it (appliance on the host)",
            _ => "ext4 on the disk, everything in the page cache",
        };
        s.push_str(&format!(
            "| `{mode}`: {what} | {:.1} | {:.1} | {:.2}x | {hm} |\n",
            p1 / 1000.0,
            p2 / 1000.0,
            p2 / disk2
        ));
    }
    s
}

/// Today's date (UTC), for the table's caption.
fn today_utc() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}
