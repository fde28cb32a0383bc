//! `cargo xtask bench --swap`: the same client VM and workloads swapping to kclient + the host-mode
//! appliance, to the kernel's NBD driver + `qemu-nbd` (data in host RAM, `/dev/shm`), to zram, and
//! to a virtio-blk disk (a host file), next to an all-in-RAM run (a VM big enough) as the lower
//! bound. One VM boot per backend runs every workload x working-set size (guest side:
//! `images/linux/initramfs/bench-swap.sh`), one after the other, so all numbers come from one run
//! on the same (shared, TCG) machine and only ratios are reported. Results: a table in
//! `docs/benchmarks.md` (section `swap-bench`), `docs/swap-bench.png` (time vs working set), and
//! the raw rows in `target/swapbench/results.csv`.

mod backend;
mod guest;
mod plot;
mod report;
mod rows;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use qemu_tests::linux_vm::ClientImage;

use crate::host::step;
use crate::{docs_section, paths};
use rows::Row;

#[derive(clap::Args, Clone, Debug)]
pub struct SwapBenchArgs {
    /// Backends, in run order: ram (no swap, big VM), kclient, nbd, zram, disk; `-nozswap` after
    /// kclient, nbd or disk turns zswap off (default: on in front of them); `kclient-lz4` is
    /// kclient compressing pages before sending them (`compress=1`); `kclient-hermit` swaps to
    /// the Hermit appliance VM instead of the host-mode appliance, `kclient-linuxvm` to the same
    /// appliance in a Linux VM of the same size (like for like); `kclient-r2` swaps to two
    /// appliances with every page on both (replicas=2); `kclient-noise` uses a client key
    /// (authenticated, encrypted sessions), `kclient-sealed` also `encrypt_pages=1`.
    #[arg(
        long = "swap-backends",
        value_delimiter = ',',
        default_value = "ram,kclient,kclient-hermit,nbd,disk,zram"
    )]
    pub backends: Vec<String>,
    /// Working-set sizes in MiB.
    #[arg(
        long = "swap-sizes",
        value_delimiter = ',',
        default_value = "64,128,256"
    )]
    pub sizes: Vec<u64>,
    /// Workloads: seq (fill + sequential verify), rand (fill + verify in stride-7919 order), sort
    /// (quicksort of 64-byte records, then verify).
    #[arg(
        long = "swap-workloads",
        value_delimiter = ',',
        default_value = "seq,rand,sort"
    )]
    pub workloads: Vec<String>,
    /// Working sets above this (MiB) run only the seq workload (rand and sort are slow under TCG).
    #[arg(long = "swap-seq-only-above", default_value_t = 256)]
    pub seq_only_above: u64,
    /// RAM of the client VM (MiB) for every backend but `ram`.
    #[arg(long = "swap-vm-mib", default_value_t = 128)]
    pub vm_mib: u64,
    /// vCPUs of the client VM.
    #[arg(long = "swap-vm-cpus", default_value_t = 2)]
    pub vm_cpus: u32,
    /// Rounds: every backend runs once per round, in order, so backends alternate and share the
    /// machine's slow and fast moments; tables show medians (with min-max). Backends on the Hermit
    /// appliance run in the first round only (they take as long as all the others together).
    #[arg(long = "swap-rounds", default_value_t = 3)]
    pub swap_rounds: u32,
    /// The client VM's network: `tap` (a tap device in a network namespace made for the run; the
    /// servers run inside it: close to a real NIC, needs root), `user` (QEMU user networking,
    /// slirp: works anywhere, but its user-space TCP stack dominates and slows NBD badly), or
    /// `auto` (tap when possible, else user, saying why).
    #[arg(long = "swap-net", default_value = "auto", value_parser = ["auto", "tap", "user"])]
    pub net: String,
    /// The client kernel's ChaCha20 (keyed backends): `scalar` boots it with
    /// `clearcpuid=ssse3,avx,avx2,avx512f` so it runs the portable C code, `simd` leaves the
    /// CPU's features (the kernel then picks its AVX2 code). TCG emulates those vector
    /// instructions at about twice the cost of the scalar code, where hardware runs them several
    /// times faster: `simd` would charge the emulator's cost to encryption. Every backend boots
    /// the same way (user space is unaffected).
    #[arg(long = "swap-guest-crypto", default_value = "scalar", value_parser = ["scalar", "simd"])]
    pub guest_crypto: String,
    /// Limit for one backend's VM (all its runs), seconds.
    #[arg(long = "swap-vm-timeout", default_value_t = 2400)]
    pub vm_timeout_s: u64,
    /// Do not run VMs: re-render the table and plot from a results CSV of an earlier run
    /// (`target/swapbench/results.csv`), with the same sizes/backends/workloads arguments.
    #[arg(long = "swap-from-csv")]
    pub from_csv: Option<PathBuf>,
    /// The section of docs/benchmarks.md the table goes to (a run of a few backends, e.g. the
    /// replica and encryption comparison, keeps its own section and leaves the main one); the
    /// plot is drawn only for the main section, `swap-bench`.
    #[arg(long = "swap-section", default_value = "swap-bench")]
    pub section: String,
    /// Set by `cargo xtask bench --no-docs`: print only.
    #[arg(skip)]
    pub no_docs: bool,
}

pub fn run(args: &SwapBenchArgs) -> Result<()> {
    let started = Instant::now();
    let work = paths::repo_root().join("target/swapbench");
    std::fs::create_dir_all(&work)?;
    if let Some(csv) = &args.from_csv {
        let rows = rows::read_csv(csv)?;
        publish(args, &work, &rows, Duration::ZERO, true)?;
        return Ok(());
    }
    let mut args = args.clone();
    args.net = backend::resolve_net(&args.net)?;
    let args = &args;
    let image = guest::prepare()?;
    if args.backends.iter().any(|b| b.contains("-hermit")) {
        step("swap bench: Hermit appliance image");
        crate::testing::xtask(&["image"])?;
    }
    let appliance_bin = crate::artefacts::workspace_binary("appliance")?;

    let mut rows = Vec::new();
    let rounds = args.swap_rounds.max(1);
    for round in 1..=rounds {
        for backend in &args.backends {
            if round > 1 && backend::in_appliance_vm(backend) {
                continue;
            }
            step(&format!(
                "swap bench: round {round}/{rounds}, backend {backend}"
            ));
            run_round(
                args,
                &image,
                &appliance_bin,
                &work,
                backend,
                round,
                &mut rows,
            );
            // After every backend, so an interrupted run still leaves its results.
            publish(args, &work, &rows, started.elapsed(), false)?;
        }
    }
    publish(args, &work, &rows, started.elapsed(), true)?;
    if rows.is_empty() {
        bail!("no benchmark results");
    }
    Ok(())
}

/// One backend's VM in one round; its rows (tagged with the round) are appended to `rows`.
fn run_round(
    args: &SwapBenchArgs,
    image: &ClientImage,
    appliance_bin: &Path,
    work: &Path,
    backend: &str,
    round: u32,
    rows: &mut Vec<Row>,
) {
    match backend::run_backend(args, image, appliance_bin, work, backend) {
        Ok(r) => {
            for mut row in r {
                row.fields.insert("round".into(), round.to_string());
                step(&format!(
                    "  {} {} MiB: {} ms ({})",
                    row.workload,
                    row.mib,
                    row.num("ms"),
                    row.fields.get("status").map(String::as_str).unwrap_or("?")
                ));
                rows.push(row);
            }
        }
        Err(e) => step(&format!("  backend {backend} failed: {e:#}")),
    }
}

/// Writes the CSV and (unless `--no-docs`) the plot and the docs section; prints the table at the end.
fn publish(
    args: &SwapBenchArgs,
    work: &Path,
    rows: &[Row],
    took: Duration,
    last: bool,
) -> Result<()> {
    rows::write_csv(&work.join("results.csv"), rows)?;
    let md = report::render(args, rows, took);
    if last {
        println!("{md}");
    }
    if !args.no_docs && !rows.is_empty() {
        if args.section == "swap-bench" {
            let png = paths::repo_root().join("docs/swap-bench.png");
            if let Err(e) = plot::plot(work, &png, args.vm_mib) {
                step(&format!("plot failed: {e:#}"));
            }
        }
        docs_section::write(&args.section, &md)?;
        if last {
            step(&format!(
                "results written to docs/benchmarks.md (section {})",
                args.section
            ));
        }
    }
    Ok(())
}

/// `1,2,3`: sizes as the guest's command line and the report write them.
fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}
