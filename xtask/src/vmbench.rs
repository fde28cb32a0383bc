//! `cargo xtask vm-bench`: the Hermit appliance VM against the same appliance code running as a
//! Linux process inside a minimal Linux VM, under QEMU TCG, in the same run.
//!
//! Both VMs get the same QEMU machine: `-accel tcg -cpu max`, the same `-smp` and `-m`, one
//! `virtio-net-pci` NIC (modern only) on QEMU user networking with the appliance port forwarded to
//! 127.0.0.1, and the same appliance arguments. The Linux VM boots the client kernel
//! (`target/images/bzImage` from `cargo xtask client-image`) with an initramfs of its own:
//! busybox-static, a static (musl) build of the appliance, and an `/init` that configures eth0
//! (10.0.2.15/24, gateway 10.0.2.2) and runs the appliance. The client is the host's `tmemctl bench`
//! (every page verified) in three shapes: round trips (1 page per request, 1 in flight), pipelined
//! (16 in flight) and batched (BATCH frames of 16 pages, 4 in flight). The VMs alternate, each round
//! boots each VM afresh, and medians and Hermit/Linux ratios go to `docs/benchmarks.md`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use qemu_tests::tap_lan::TapLan;
use qemu_tests::{free_port, hermit_command, run_bounded, wait_for_port, HermitImage, Qemu};

use crate::host::{cargo, ensure_apt_tool, run, step};
use crate::linux_appliance_vm;
use crate::medians::median_of;
use crate::{docs_section, paths};

#[derive(clap::Args, Clone, Debug)]
pub struct VmBenchArgs {
    /// Rounds (each boots both VMs once and runs every shape; medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Guest memory of both VMs (QEMU `-m`).
    #[arg(long, default_value = "1G")]
    vm_memory: String,
    /// The appliance's `--memory` in both VMs.
    #[arg(long, default_value = "512MiB")]
    store: String,
    /// vCPUs of both VMs.
    #[arg(long, default_value_t = 1)]
    smp: u32,
    /// Multiplies the page counts (1.0: 1500 round-trip pages, 6000 pipelined, 16000 batched).
    #[arg(long, default_value_t = 1.0)]
    scale: f64,
    /// Only these shapes (comma-separated: rt, pipelined, batched).
    #[arg(long, value_delimiter = ',')]
    shapes: Vec<String>,
    /// Extra Hermit kernel arguments (before `--`), to try kernel settings.
    #[arg(long = "hermit-kernel-arg", allow_hyphen_values = true)]
    hermit_kernel_args: Vec<String>,
    /// Extra appliance arguments for the Hermit VM only (repeatable), e.g. `--io-model threads`.
    #[arg(long = "hermit-app-arg", allow_hyphen_values = true)]
    hermit_app_args: Vec<String>,
    /// Directory with the Hermit `loader` and `appliance` (default: target/images), e.g. a
    /// variant with an experimental kernel patch.
    #[arg(long)]
    hermit_images: Option<PathBuf>,
    /// Only these VMs (comma-separated: hermit, linux), e.g. to compare Hermit variants quickly.
    #[arg(long, value_delimiter = ',')]
    vms: Vec<String>,
    /// The VMs' network: `user` (QEMU user networking, a port forwarded from 127.0.0.1) or `tap`
    /// (a tap device in a network namespace made for the run, with a DHCP server; QEMU's tap
    /// backend offers checksum offload, as a LAN's NIC would). `tap` needs root.
    #[arg(long, default_value = "user", value_parser = ["user", "tap"])]
    net: String,
    /// Do not rewrite docs/benchmarks.md, only print.
    #[arg(long)]
    no_docs: bool,
}

/// One client shape: connections x requests in flight x pages per request.
struct Shape {
    name: &'static str,
    what: &'static str,
    pages: u64,
    /// Connections (one client thread each).
    threads: usize,
    depth: usize,
    batch: usize,
}

const SHAPES: [Shape; 4] = [
    Shape {
        name: "rt",
        what: "round trips (1 page/request, 1 in flight)",
        pages: 1500,
        threads: 1,
        depth: 1,
        batch: 1,
    },
    Shape {
        name: "pipelined",
        what: "pipelined (1 page/request, 16 in flight)",
        pages: 6000,
        threads: 1,
        depth: 16,
        batch: 1,
    },
    Shape {
        name: "batched",
        what: "batched (16 pages/request, 4 in flight)",
        pages: 16000,
        threads: 1,
        depth: 4,
        batch: 16,
    },
    // What several vCPUs can share out: kclient also keeps several connections per appliance.
    Shape {
        name: "parallel",
        what: "parallel (4 connections, each 16 pages/request, 4 in flight)",
        pages: 32000,
        threads: 4,
        depth: 4,
        batch: 16,
    },
];

#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
enum Vm {
    Hermit,
    Linux,
}

impl Vm {
    fn label(self) -> &'static str {
        match self {
            Vm::Hermit => "Hermit",
            Vm::Linux => "Linux",
        }
    }
}

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// `cargo xtask vm-bench`: measures, prints the table, and writes it to docs/benchmarks.md.
pub fn vm_bench(args: &VmBenchArgs) -> Result<()> {
    let table = hermit_vs_linux(args)?;
    println!("{table}");
    if !args.no_docs {
        let section = match args.net.as_str() {
            "tap" => "hermit-vs-linux-tap",
            _ => "hermit-vs-linux",
        };
        docs_section::write(section, &table)?;
        step(&format!(
            "results written to docs/benchmarks.md ({section} section)"
        ));
    }
    Ok(())
}

/// Builds what is missing, runs the comparison, and returns the results as a markdown table.
pub fn hermit_vs_linux(args: &VmBenchArgs) -> Result<String> {
    ensure!(args.rounds >= 1, "--rounds must be at least 1");
    let images = paths::images_out();
    let hermit_dir = args.hermit_images.clone().unwrap_or_else(|| images.clone());
    let hermit = HermitImage::in_dir(&hermit_dir);
    if !hermit.loader.is_file() || !hermit.appliance.is_file() {
        ensure!(
            args.hermit_images.is_none(),
            "no Hermit image in {}",
            hermit_dir.display()
        );
        crate::testing::xtask(&["image"])?;
    }
    let bzimage = images.join("bzImage");
    if !bzimage.is_file() {
        crate::testing::xtask(&["client-image"])?;
    }
    step("building tmemctl (release) and the appliance as a static Linux binary (musl)");
    run(cargo().args(["build", "--release", "-p", "tmemctl"]))?;
    let initramfs = linux_appliance_vm::initramfs()?;
    let tmemctl = paths::repo_root().join("target/release/tmemctl");

    let shapes: Vec<&Shape> = SHAPES
        .iter()
        .filter(|s| args.shapes.is_empty() || args.shapes.iter().any(|n| n == s.name))
        .collect();
    ensure!(!shapes.is_empty(), "no shape matches --shapes");
    let lan = match args.net.as_str() {
        "tap" => {
            ensure_apt_tool("dnsmasq", "dnsmasq-base")?;
            Some(TapLan::start("vmbench").context("making the tap network")?)
        }
        _ => None,
    };
    // (vm, shape) -> one summary per round.
    let mut results: BTreeMap<(Vm, &str), Vec<BTreeMap<String, String>>> = BTreeMap::new();
    for round in 0..args.rounds {
        // Alternate which VM goes first, so drift on a shared machine hits both alike.
        let order = if round % 2 == 0 {
            [Vm::Hermit, Vm::Linux]
        } else {
            [Vm::Linux, Vm::Hermit]
        };
        for vm in order {
            if !args.vms.is_empty() && !args.vms.iter().any(|v| v.eq_ignore_ascii_case(vm.label()))
            {
                continue;
            }
            step(&format!(
                "round {}/{}: {} VM",
                round + 1,
                args.rounds,
                vm.label()
            ));
            let port = free_port();
            let app_args = [
                "--listen".to_string(),
                format!("0.0.0.0:{port}"),
                // tmemctl without keys; only QEMU's forward from 127.0.0.1 reaches the VM.
                "--insecure".to_string(),
                "--memory".to_string(),
                args.store.clone(),
                "--log-level".to_string(),
                "warn".to_string(),
            ];
            let mut cmd = match vm {
                Vm::Hermit => {
                    let app: Vec<&str> = app_args
                        .iter()
                        .chain(&args.hermit_app_args)
                        .map(String::as_str)
                        .collect();
                    hermit_command_with_kernel_args(
                        &hermit,
                        &args.vm_memory,
                        port,
                        &app,
                        &args.hermit_kernel_args,
                    )
                }
                Vm::Linux => linux_appliance_vm::command(
                    &bzimage,
                    &initramfs,
                    &args.vm_memory,
                    Ipv4Addr::LOCALHOST,
                    port,
                    &app_args,
                ),
            };
            cmd.args(["-accel", "tcg", "-smp", &args.smp.to_string()]);
            if let Some(lan) = &lan {
                cmd = lan.attach(&cmd);
            }
            let name = format!("vmbench-{}", vm.label().to_lowercase());
            let mut guest = Qemu::spawn(&name, cmd).context("starting QEMU")?;
            let booted = guest
                .wait_for_output("appliance listening on", BOOT_TIMEOUT)
                .with_context(|| format!("{} VM did not start the appliance", vm.label()))?;
            step(&format!(
                "{} appliance listening after {booted:.1?}",
                vm.label()
            ));
            let addr = match &lan {
                Some(lan) => {
                    lan.wait_for_guest(port, Duration::from_secs(30))
                        .context("the guest on the tap device")?;
                    format!("{}:{port}", TapLan::GUEST)
                }
                None => {
                    let addr = format!("127.0.0.1:{port}");
                    wait_for_port(addr.parse()?, Duration::from_secs(30))?;
                    addr
                }
            };
            for shape in &shapes {
                let pages = ((shape.pages as f64 * args.scale) as u64).max(16);
                let summary = tmemctl_bench(&tmemctl, lan.as_ref(), &addr, shape, pages)
                    .with_context(|| format!("log {}", guest.log_path().display()))?;
                eprintln!(
                    "    {:<10} {:>9} ops/s {:>7} MiB/s p50 {:>8} us p99 {:>8} us",
                    shape.name,
                    get(&summary, "ops_s"),
                    get(&summary, "mib_s"),
                    get(&summary, "p50_us"),
                    get(&summary, "p99_us"),
                );
                results.entry((vm, shape.name)).or_default().push(summary);
            }
            ensure!(
                guest.is_running(),
                "{} VM died; log {}",
                vm.label(),
                guest.log_path().display()
            );
            // The guard kills the VM here.
        }
    }
    Ok(render(args, &shapes, &results))
}

fn get<'a>(summary: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    summary.get(key).map(String::as_str).unwrap_or("?")
}

/// The Hermit command line (see [`hermit_command`]) with extra kernel arguments before `--`.
fn hermit_command_with_kernel_args(
    image: &HermitImage,
    memory: &str,
    port: u16,
    app_args: &[&str],
    kernel_args: &[String],
) -> Command {
    let base = hermit_command(image, memory, port, app_args);
    if kernel_args.is_empty() {
        return base;
    }
    let append = format!("{} -- {}", kernel_args.join(" "), app_args.join(" "));
    qemu_tests::with_option(&base, "-append", append)
}

/// One `tmemctl bench` run; fails unless every page came back intact.
fn tmemctl_bench(
    tmemctl: &Path,
    lan: Option<&TapLan>,
    addr: &str,
    shape: &Shape,
    pages: u64,
) -> Result<BTreeMap<String, String>> {
    let mut cmd = Command::new(tmemctl);
    cmd.args(["--target", addr, "bench", "--corpus", "synthetic"])
        .args(["--pages", &pages.to_string()])
        .args(["--threads", &shape.threads.to_string()])
        .args(["--depth", &shape.depth.to_string()])
        .args(["--batch", &shape.batch.to_string(), "--max-seconds", "300"]);
    if let Some(lan) = lan {
        cmd = lan.command(&cmd);
    }
    let start = Instant::now();
    let out = run_bounded(cmd, Duration::from_secs(330))?;
    if !out.status.success() {
        bail!(
            "tmemctl bench ({}) failed after {:.0?}: {}{}",
            shape.name,
            start.elapsed(),
            out.stdout,
            out.stderr
        );
    }
    let summary = out.summary();
    ensure!(
        summary.get("mismatches").map(String::as_str) == Some("0"),
        "pages came back wrong: {summary:?}"
    );
    Ok(summary)
}

fn render(
    args: &VmBenchArgs,
    shapes: &[&Shape],
    results: &BTreeMap<(Vm, &str), Vec<BTreeMap<String, String>>>,
) -> String {
    let med = |vm: Vm, shape: &str, key: &str| {
        median_of(results.get(&(vm, shape)).map_or(&[], Vec::as_slice), key)
    };
    let mut t = format!(
        "Command: `cargo xtask vm-bench --rounds {}{}` (QEMU TCG, `-cpu max -smp {} -m {}`, virtio-net-pci \
         on {}, appliance `--memory {}`; client: host `tmemctl bench`, 1 connection (4 in the parallel shape), \
         synthetic corpus, every page verified; medians of {} rounds, VMs alternating, each booted \
         afresh per round). Ratios are Hermit / Linux: above 1 means Hermit is faster (for p99: \
         Linux p99 / Hermit p99).\n\n",
        args.rounds,
        if args.net == "tap" { " --net tap" } else { "" },
        args.smp,
        args.vm_memory,
        if args.net == "tap" {
            "a tap device in a network namespace (QEMU's tap backend: checksum offload offered; the \
             Hermit VM's address from dnsmasq by DHCP), `tmemctl` in the namespace"
        } else {
            "user networking"
        },
        args.store,
        args.rounds
    );
    t.push_str("| shape | pages | Hermit ops/s | Linux ops/s | **ops/s ratio** | Hermit MiB/s | Linux MiB/s | MiB/s ratio | Hermit p99 us | Linux p99 us | p99 ratio |\n");
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in shapes {
        let (ho, lo) = (
            med(Vm::Hermit, s.name, "ops_s"),
            med(Vm::Linux, s.name, "ops_s"),
        );
        let (hm, lm) = (
            med(Vm::Hermit, s.name, "mib_s"),
            med(Vm::Linux, s.name, "mib_s"),
        );
        let (hp, lp) = (
            med(Vm::Hermit, s.name, "p99_us"),
            med(Vm::Linux, s.name, "p99_us"),
        );
        t.push_str(&format!(
            "| {} | {:.0} | {:.0} | {:.0} | **{:.2}x** | {:.2} | {:.2} | {:.2}x | {:.0} | {:.0} | {:.2}x |\n",
            s.what,
            (s.pages as f64 * args.scale).max(16.0),
            ho,
            lo,
            ho / lo,
            hm,
            lm,
            hm / lm,
            hp,
            lp,
            lp / hp
        ));
    }
    t.push_str(
        "\nops/s counts puts and gets (each page put once and read back once). MiB/s is page data \
         (4 KiB per page) moved per second over both phases.\n",
    );
    t
}
