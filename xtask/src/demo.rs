//! `cargo xtask demo`: the whole system, end to end, on one machine.
//!
//! Builds the appliance unikernel and the client kernel + kclient (cached after the first run), boots
//! the Hermit appliance VM and a small client VM, puts the client under memory pressure with swap on
//! /dev/kclient0 (zswap in front), and prints what happened. Every VM is owned by a guard that kills
//! it on any exit path, Ctrl-C included.

use anyhow::{bail, Context, Result};
use protocol::StatId;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::artefacts;
use crate::host::step;
use crate::testing::xtask;
use qemu_tests::linux_vm::{boot_client, kernel_problems, parse_result};
use qemu_tests::{free_port, wait_for_port, Qemu};
use tmemctl::secure::{random_key, Identity};

/// The demo client's id; its key is made fresh for every run (`tmemctl keygen` does the same for
/// a real client) and given to both VMs on their command lines, so it shows in their console
/// logs: a throwaway key, never reuse one from a log.
const DEMO_CLIENT: u64 = 0xde30;

#[derive(clap::Args)]
pub struct DemoArgs {
    /// Client VM memory (QEMU syntax).
    #[arg(long, default_value = "256M")]
    client_memory: String,
    /// Workload size in MiB (default: 1.5 x the client's memory, so a good part of it must swap).
    #[arg(long)]
    workload_mib: Option<u64>,
    /// Appliance VM memory (QEMU syntax).
    #[arg(long, default_value = "1G")]
    appliance_memory: String,
    /// Skip building (use the images already in target/images).
    #[arg(long)]
    no_build: bool,
    /// Give up after this many minutes.
    #[arg(long, default_value_t = 40)]
    timeout_min: u64,
}

/// Appliance counters over the run: the last values and the peak of the level counters.
#[derive(Default)]
struct ApplianceView {
    last: Vec<u64>,
    peak_pages: u64,
    peak_stored: u64,
    peak_used: u64,
}

impl ApplianceView {
    fn poll(&mut self, addr: &str, id: &Identity) {
        let Ok(v) = tmemctl::client::Client::connect_as(addr, id, Duration::from_secs(2))
            .and_then(|mut c| c.stats())
        else {
            return;
        };
        let get = |id: StatId| v.get(id as usize).copied().unwrap_or(0);
        if get(StatId::Pages) >= self.peak_pages {
            self.peak_pages = get(StatId::Pages);
            self.peak_stored = get(StatId::StoredBytes);
            self.peak_used = get(StatId::DataBytes) + get(StatId::MetadataBytes);
        }
        self.last = v;
    }

    fn get(&self, id: StatId) -> u64 {
        self.last.get(id as usize).copied().unwrap_or(0)
    }
}

pub fn demo(args: &DemoArgs) -> Result<()> {
    let interrupted = Arc::new(AtomicBool::new(false));
    let flag = interrupted.clone();
    ctrlc::set_handler(move || flag.store(true, Ordering::SeqCst))
        .context("installing the Ctrl-C handler")?;
    let started = Instant::now();
    if !args.no_build {
        step("building the appliance unikernel image (cached after the first run)");
        xtask(&["image"])?;
        step("building the client kernel, kclient and initramfs (first run: ~15 min kernel build)");
        xtask(&["client-image"])?;
    }
    let hermit = artefacts::hermit_image()?;
    let client = artefacts::client_image()?;

    let port = free_port();
    let store = format!("{}M", mib_of(&args.appliance_memory)? * 3 / 4);
    step(&format!(
        "booting the appliance VM (Hermit, {} RAM, store {store}) on 127.0.0.1:{port}",
        args.appliance_memory
    ));
    let listen = format!("0.0.0.0:{port}");
    let key = random_key()?;
    let key_hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    let key_arg = format!("{DEMO_CLIENT:#x}:{key_hex}");
    let identity = Identity::with_key(DEMO_CLIENT, key);
    let mut appliance = Qemu::boot_hermit(
        "demo-appliance",
        &hermit,
        &args.appliance_memory,
        port,
        // Secure by default, as deployed: the appliance serves only the demo client's key.
        &[
            "--listen",
            &listen,
            "--key",
            &key_arg,
            "--memory",
            &store,
            "--log-level",
            "warn",
        ],
    )?;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    wait_for_port(addr, Duration::from_secs(60))
        .context("the appliance VM did not start listening")?;
    appliance.wait_for_output("appliance listening", Duration::from_secs(60))?;

    let mib = args
        .workload_mib
        .unwrap_or(2 * mib_of(&args.client_memory)?);
    step(&format!(
        "booting the client VM ({} RAM, 2 vCPUs, zswap on): insmod kclient remote_target=10.0.2.2:{port} with a key, \
         mkswap + swapon /dev/kclient0, workload of {mib} MiB with verification",
        args.client_memory
    ));
    // Under TCG the Hermit VM's network path moves a few MiB/s (see docs/benchmarks.md): give
    // kclient a longer I/O timeout than its 10 s default, so slowness is not mistaken for a dead
    // appliance.
    let append = format!(
        "tmem_test=swap tmem_target=10.0.2.2:{port} tmem_mib={mib} tmem_size=2G tmem_timeout_ms=60000 \
         tmem_client_id={DEMO_CLIENT:#x} tmem_key={key_hex}"
    );
    let mut vm = boot_client("demo-client", &client, &args.client_memory, 2, &append)?;

    let mut view = ApplianceView::default();
    let deadline = started + Duration::from_secs(args.timeout_min * 60);
    let mut shown = 0;
    let mut last_report = Instant::now();
    let result = loop {
        if interrupted.load(Ordering::SeqCst) {
            bail!("interrupted: VMs stopped");
        }
        if Instant::now() > deadline {
            bail!(
                "the demo did not finish within {} minutes (client log: {})",
                args.timeout_min,
                vm.log_path().display()
            );
        }
        let log = vm.output();
        let progress = log
            .lines()
            .filter(|l| l.contains("TMEM-PHASE") || l.starts_with("tmem-workload:"));
        for line in progress.skip(shown) {
            shown += 1;
            let what = line
                .split_once("TMEM-PHASE ")
                .map(|(_, p)| p.trim())
                .unwrap_or(line.trim());
            eprintln!(
                "    client: {what}  [{:.0}s]",
                started.elapsed().as_secs_f64()
            );
        }
        view.poll(&addr.to_string(), &identity);
        if last_report.elapsed() >= Duration::from_secs(30) {
            last_report = Instant::now();
            eprintln!(
                "    appliance: {} pages held, {} puts, {} gets  [{:.0}s]",
                view.get(StatId::Pages),
                view.get(StatId::Puts),
                view.get(StatId::GetHits),
                started.elapsed().as_secs_f64()
            );
        }
        if let Some(r) = parse_result(&log) {
            break r;
        }
        if !vm.is_running() {
            bail!(
                "the client VM stopped without a result; log: {}",
                vm.log_path().display()
            );
        }
        if !appliance.is_running() {
            bail!(
                "the appliance VM stopped; log: {}",
                appliance.log_path().display()
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    view.poll(&addr.to_string(), &identity);
    let problems = kernel_problems(&vm.output());
    print_summary(&result, &view, mib, args, &problems, started.elapsed());
    drop(vm);
    drop(appliance);
    if result.get("status").map(String::as_str) != Some("pass") || !problems.is_empty() {
        bail!("the demo's workload did not pass (see above)");
    }
    Ok(())
}

fn mib_of(qemu_size: &str) -> Result<u64> {
    let s = qemu_size.trim();
    let (num, mult) = match s.chars().last() {
        Some('G' | 'g') => (&s[..s.len() - 1], 1024),
        Some('M' | 'm') => (&s[..s.len() - 1], 1),
        _ => (s, 1),
    };
    Ok(num
        .parse::<u64>()
        .with_context(|| format!("size {qemu_size:?}: use e.g. 256M or 1G"))?
        * mult)
}

fn print_summary(
    r: &HashMap<String, String>,
    app: &ApplianceView,
    mib: u64,
    args: &DemoArgs,
    problems: &[String],
    elapsed: Duration,
) {
    let val = |k: &str| r.get(k).map(String::as_str).unwrap_or("?").to_string();
    let mib_of_pages = |p: u64| p as f64 * 4096.0 / (1 << 20) as f64;
    let ratio = if app.peak_stored > 0 {
        app.peak_pages as f64 * 4096.0 / app.peak_stored as f64
    } else {
        0.0
    };
    let rows: Vec<(&str, String)> = vec![
        (
            "workload",
            format!(
                "{mib} MiB written and read back in a {} VM: {}",
                args.client_memory,
                val("status")
            ),
        ),
        ("workload time", format!("{} s", val("seconds"))),
        ("pages swapped out (kernel)", val("pswpout")),
        ("  of which compressed by zswap", val("zswpout")),
        ("pages remotified by kclient", val("pages_stored")),
        ("pages loaded back from appliance", val("pages_loaded")),
        ("kclient failed requests", val("failed_requests")),
        (
            "sessions (Noise, client key)",
            format!(
                "{} handshakes, {} authentication failures",
                val("handshakes"),
                val("auth_failures")
            ),
        ),
        (
            "appliance puts / get hits",
            format!("{} / {}", app.get(StatId::Puts), app.get(StatId::GetHits)),
        ),
        (
            "appliance peak pages held",
            format!(
                "{} ({:.1} MiB of pages)",
                app.peak_pages,
                mib_of_pages(app.peak_pages)
            ),
        ),
        (
            "appliance memory at peak",
            format!(
                "{:.1} MiB (compression ratio {ratio:.2})",
                app.peak_used as f64 / (1 << 20) as f64
            ),
        ),
        ("client kernel", crate::linux::image_kernel_source()),
        ("kernel warnings/oopses", problems.len().to_string()),
        (
            "swapoff, rmmod",
            format!("{}, {}", ok(&val("swapoff")), ok(&val("rmmod"))),
        ),
        ("total demo time", format!("{:.0} s", elapsed.as_secs_f64())),
    ];
    println!("\n tmem demo: client VM swapping to a Hermit appliance VM");
    println!(" {}", "-".repeat(78));
    for (k, v) in rows {
        println!(" {k:<34} {v}");
    }
    println!(" {}", "-".repeat(78));
    println!(
        " zswap sits in front of /dev/kclient0 (as zcache did in RAMster): it keeps what compresses\n \
         well in local RAM and sends the appliance the pages it could not compress plus the cold pages\n \
         it writes back, so the appliance's compression ratio here reflects those pages."
    );
}

fn ok(rc: &str) -> &'static str {
    if rc == "0" {
        "ok"
    } else {
        "FAILED"
    }
}
