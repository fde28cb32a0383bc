//! `cargo xtask bench --swap`: the same client VM and workloads swapping to kclient + the host-mode
//! appliance, to the kernel's NBD driver + `qemu-nbd` (data in host RAM, `/dev/shm`), to zram, and
//! to a virtio-blk disk (a host file), next to an all-in-RAM run (a VM big enough) as the lower
//! bound. One VM boot per backend runs every workload x working-set size (guest side:
//! `images/linux/initramfs/bench-swap.sh`), one after the other, so all numbers come from one run
//! on the same (shared, TCG) machine and only ratios are reported. Results: a table in
//! `docs/benchmarks.md` (section `swap-bench`), `docs/swap-bench.png` (time vs working set), and
//! the raw rows in `target/swapbench/results.csv`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use qemu_tests::linux_vm::{
    client_command_on, parse_result, tagged_lines, wait_exit, Appliance, ClientImage,
};
use qemu_tests::netns::NetNs;
use qemu_tests::Qemu;

use crate::linux_kernel::{self, run as run_cmd, step};
use crate::{linux_initramfs, paths};

#[derive(clap::Args, Clone, Debug)]
pub struct SwapBenchArgs {
    /// Backends, in run order: ram (no swap, big VM), kclient, nbd, zram, disk; `-nozswap` after
    /// kclient, nbd or disk turns zswap off (default: on in front of them); `kclient-lz4` is
    /// kclient compressing pages before sending them (`compress=1`); `kclient-hermit` swaps to
    /// the Hermit appliance VM instead of the host-mode appliance.
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
    /// Limit for one backend's VM (all its runs), seconds.
    #[arg(long = "swap-vm-timeout", default_value_t = 2400)]
    pub vm_timeout_s: u64,
    /// Do not run VMs: re-render the table and plot from a results CSV of an earlier run
    /// (`target/swapbench/results.csv`), with the same sizes/backends/workloads arguments.
    #[arg(long = "swap-from-csv")]
    pub from_csv: Option<PathBuf>,
    /// Set by `cargo xtask bench --no-docs`: print only.
    #[arg(skip)]
    pub no_docs: bool,
}

/// One `TMEM-BENCH` line.
#[derive(Clone, Debug)]
struct Row {
    backend: String,
    workload: String,
    mib: u64,
    fields: BTreeMap<String, String>,
}

impl Row {
    /// A row from its `key=value` fields (`backend`, `workload`, `mib` and the measurements).
    fn new(fields: BTreeMap<String, String>) -> Row {
        Row {
            backend: fields.get("backend").cloned().unwrap_or_default(),
            workload: fields.get("workload").cloned().unwrap_or_default(),
            mib: fields.get("mib").and_then(|v| v.parse().ok()).unwrap_or(0),
            fields,
        }
    }

    fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
    fn ok(&self) -> bool {
        self.fields.get("status").map(String::as_str) == Some("ok")
    }
}

/// A host process (qemu-nbd) killed and reaped when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The Hermit appliance VM of the `kclient-hermit` backend: RAM, and the store inside it.
const HERMIT_VM_MEMORY: &str = "1G";
const HERMIT_STORE: &str = "768MiB";

pub fn run(args: &SwapBenchArgs) -> Result<()> {
    let started = Instant::now();
    let work = paths::repo_root().join("target/swapbench");
    std::fs::create_dir_all(&work)?;
    if let Some(csv) = &args.from_csv {
        let rows = read_csv(csv)?;
        publish(args, &work, &rows, Duration::ZERO, true)?;
        return Ok(());
    }
    let mut args = args.clone();
    args.net = resolve_net(&args.net)?;
    let args = &args;
    let image = prepare(&work)?;
    if args.backends.iter().any(|b| b.contains("-hermit")) {
        step("swap bench: Hermit appliance image");
        crate::testing::xtask(&["image"])?;
    }
    let appliance_bin = paths::repo_root().join("target/release/appliance");

    let mut rows = Vec::new();
    let rounds = args.swap_rounds.max(1);
    for round in 1..=rounds {
        for backend in &args.backends {
            if round > 1 && backend.contains("-hermit") {
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
    match run_backend(args, image, appliance_bin, work, backend) {
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
    write_csv(&work.join("results.csv"), rows)?;
    let md = render(args, rows, took);
    if last {
        println!("{md}");
    }
    if !args.no_docs && !rows.is_empty() {
        let png = paths::repo_root().join("docs/swap-bench.png");
        if let Err(e) = plot(work, &png, args.vm_mib) {
            step(&format!("plot failed: {e:#}"));
        }
        crate::bench::write_docs_section("swap-bench", &md)?;
        if last {
            step("results written to docs/benchmarks.md (section swap-bench) and docs/swap-bench.png");
        }
    }
    Ok(())
}

/// Builds what the runs need: the client image (via `cargo xtask client-image` if missing), the
/// release appliance, qemu-nbd, and this benchmark's own initramfs (the client scripts, every
/// guest program, kclient.ko, zram.ko, nbd.ko) in `target/swapbench/`.
fn prepare(work: &Path) -> Result<ClientImage> {
    let root = paths::repo_root();
    let images = paths::images_out();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    if !images.join("bzImage").exists() || !images.join("kclient.ko").exists() {
        step("client image missing: cargo xtask client-image");
        run_cmd(
            Command::new(&cargo)
                .args(["xtask", "client-image"])
                .current_dir(&root),
        )?;
    }
    if !root.join("target/release/appliance").exists() {
        step("building the release appliance");
        run_cmd(
            Command::new(&cargo)
                .args(["build", "--release", "-p", "appliance"])
                .current_dir(&root),
        )?;
    }
    crate::host::ensure_apt_tool("qemu-nbd", "qemu-utils")?;
    let kernel = linux_kernel::ensure_kernel(2)?;

    step("swap bench: guest programs and initramfs");
    let bin_dir = work.join("bin");
    std::fs::create_dir_all(&bin_dir)?;
    let src_dir = root.join("images/linux/workload");
    let mut sources: Vec<PathBuf> = std::fs::read_dir(&src_dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "c"))
        .collect();
    sources.sort();
    let mut programs = Vec::new();
    for src in sources {
        let bin = bin_dir.join(src.file_stem().context("program name")?);
        run_cmd(
            Command::new("cc")
                .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
                .arg(&bin)
                .arg(&src),
        )?;
        programs.push(bin);
    }
    let mut modules = vec![images.join("kclient.ko")];
    for extra in ["drivers/block/zram/zram.ko", "drivers/block/nbd.ko"] {
        let path = kernel.build_dir.join(extra);
        if !path.exists() {
            bail!(
                "{} missing: images/linux/kclient.config needs CONFIG_ZRAM=m and CONFIG_BLK_DEV_NBD=m",
                path.display()
            );
        }
        modules.push(path);
    }
    let initramfs = work.join("initramfs.cpio.gz");
    let program_refs: Vec<&Path> = programs.iter().map(PathBuf::as_path).collect();
    let module_refs: Vec<&Path> = modules.iter().map(PathBuf::as_path).collect();
    linux_initramfs::build(
        &linux_initramfs::Contents {
            scripts: &root.join("images/linux/initramfs"),
            busybox: Path::new(if Path::new("/bin/busybox").exists() {
                "/bin/busybox"
            } else {
                "/usr/bin/busybox"
            }),
            programs: &program_refs,
            modules: &module_refs,
        },
        &initramfs,
    )?;
    Ok(ClientImage {
        bzimage: images.join("bzImage"),
        initramfs,
    })
}

/// `auto` becomes `tap` when a namespace with a tap device can be made here, else `user`.
fn resolve_net(net: &str) -> Result<String> {
    match (net, NetNs::unavailable()) {
        ("tap", Some(why)) => bail!("--swap-net tap: {why} (use --swap-net user)"),
        ("auto", Some(why)) => {
            step(&format!(
                "swap bench: QEMU user networking (no tap device: {why}); NBD suffers most from it"
            ));
            Ok("user".into())
        }
        ("auto", None) => Ok("tap".into()),
        (other, _) => Ok(other.into()),
    }
}

/// One VM boot: the backend's server (if any), the VM, every workload x size; returns the rows.
fn run_backend(
    args: &SwapBenchArgs,
    image: &ClientImage,
    appliance_bin: &Path,
    work: &Path,
    backend: &str,
) -> Result<Vec<Row>> {
    let base = backend.split('-').next().unwrap_or(backend);
    let max_mib = args.sizes.iter().copied().max().unwrap_or(256);
    let memory = if base == "ram" {
        // Everything fits: the largest working set plus room for the kernel and page cache.
        format!("{}M", max_mib + 512)
    } else {
        format!("{}M", args.vm_mib)
    };
    // Swap space: enough for the largest working set with room to spare.
    let swap_mib = (max_mib * 2).max(1024);
    // The Hermit column is the slowest by far (its appliance is a TCG VM too): random access runs
    // there only up to 1x the VM's RAM, so one bench run stays within the hour.
    let seq_only_above = if backend.contains("-hermit") {
        args.seq_only_above.min(args.vm_mib)
    } else {
        args.seq_only_above
    };
    let mut append = format!(
        "tmem_test=bench tmem_backend={backend} tmem_sizes={} tmem_workloads={} tmem_size={swap_mib}M \
         tmem_timeout_ms=60000 tmem_run_timeout=900 tmem_seq_only_above={}",
        join(&args.sizes),
        args.workloads.join(","),
        seq_only_above
    );
    // With tap networking, servers and the client VM share a namespace made for this backend; it
    // is dropped last (after every process in it).
    let netns = match args.net.as_str() {
        "tap" => Some(NetNs::create("swapbench").context("creating the network namespace")?),
        _ => None,
    };
    let in_ns = |cmd: Command| NetNs::command_in(netns.as_ref(), cmd);
    let server_host = NetNs::server_host(netns.as_ref());
    let mut _appliance = None;
    let mut _hermit: Option<Qemu> = None;
    let mut _server = None;
    let mut _files = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    match base {
        "ram" | "zram" => {}
        "kclient" if backend.contains("-hermit") => {
            // The appliance as the Hermit unikernel in its own VM (user networking); the client
            // VM reaches the port that VM's QEMU forwards from the host, as in `cargo xtask demo`.
            let hermit = qemu_tests::hermit_image("swapbench")
                .context("the Hermit appliance image is missing (cargo xtask image)")?;
            let port = qemu_tests::free_port();
            let listen = format!("0.0.0.0:{port}");
            let cmd = qemu_tests::hermit_command_fwd(
                &hermit,
                HERMIT_VM_MEMORY,
                server_host,
                port,
                &[
                    "--listen",
                    &listen,
                    "--memory",
                    HERMIT_STORE,
                    "--log-level",
                    "warn",
                ],
            );
            let mut vm = Qemu::spawn("swapbench-hermit-appliance", in_ns(cmd))?;
            vm.wait_for_output("appliance listening on", Duration::from_secs(120))
                .context("booting the Hermit appliance VM")?;
            append.push_str(&format!(" tmem_target=10.0.2.2:{port}"));
            _hermit = Some(vm);
        }
        "kclient" => {
            let a = Appliance::start_in(
                &appliance_bin.to_path_buf(),
                &format!("{}MiB", swap_mib * 2),
                netns.as_ref(),
            )
            .context("starting the appliance")?;
            append.push_str(&format!(" tmem_target=10.0.2.2:{}", a.port));
            _appliance = Some(a);
        }
        "nbd" => {
            let file = PathBuf::from(format!(
                "/dev/shm/tmem-swapbench-{}.img",
                std::process::id()
            ));
            sparse_file(&file, swap_mib)?;
            _files.push(TempFile(file.clone()));
            let port = qemu_tests::free_port();
            let mut cmd = Command::new("qemu-nbd");
            cmd.args(["-t", "-f", "raw", "-b", &server_host.to_string()])
                .args(["-p", &port.to_string()])
                .arg(&file);
            let child = in_ns(cmd)
                .stdin(Stdio::null())
                .spawn()
                .context("starting qemu-nbd")?;
            _server = Some(Killed(child));
            match &netns {
                Some(ns) => ns.wait_for_port(port, Duration::from_secs(20)),
                None => qemu_tests::wait_for_port(
                    std::net::SocketAddr::from((server_host, port)),
                    Duration::from_secs(20),
                )
                .map(drop),
            }
            .context("qemu-nbd not listening")?;
            // -t (persistent): the port probe above disconnects before the handshake (qemu-nbd
            // logs a failed negotiation) and must not end the server.
            append.push_str(&format!(" tmem_target=10.0.2.2:{port}"));
        }
        "disk" => {
            let file = work.join("swap-disk.img");
            let _ = std::fs::remove_file(&file);
            sparse_file(&file, swap_mib)?;
            _files.push(TempFile(file.clone()));
            extra.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=virtio,cache=writeback",
                    file.display()
                ),
            ]);
        }
        _ => bail!("unknown backend {backend}"),
    }
    let netdev = match &netns {
        Some(ns) => ns.tap_netdev(),
        None => "user,id=n0".into(),
    };
    let mut cmd = client_command_on(image, &memory, args.vm_cpus, &append, &netdev);
    cmd.args(&extra);
    let mut vm = Qemu::spawn(&format!("swapbench-{backend}"), in_ns(cmd))?;
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(args.vm_timeout_s));
    wait_exit(&mut vm, Duration::from_secs(60));
    let log = vm.output();
    drop(vm);
    let _ = std::fs::write(work.join(format!("{backend}.log")), &log);
    waited.with_context(|| {
        format!("backend {backend}: no result (log target/swapbench/{backend}.log)")
    })?;
    let result = parse_result(&log).context("TMEM-RESULT")?;
    if result.get("status").map(String::as_str) != Some("pass") {
        step(&format!("  backend {backend}: status {result:?}"));
    }
    Ok(parse_rows(&log))
}

fn sparse_file(path: &Path, mib: u64) -> Result<()> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    f.set_len(mib << 20)?;
    Ok(())
}

fn join(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

fn parse_rows(log: &str) -> Vec<Row> {
    tagged_lines(log, "TMEM-BENCH").map(Row::new).collect()
}

const CSV_KEYS: &[&str] = &[
    "round",
    "status",
    "ms",
    "pswpin",
    "pswpout",
    "zswpin",
    "zswpout",
    "net_tx",
    "net_rx",
    "kc_sent",
    "kc_received",
    "kc_requests",
    "zram_compr",
    "blk_reads",
    "blk_read_kib",
    "blk_read_ms",
    "blk_writes",
    "blk_write_kib",
    "blk_write_ms",
];

fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
    let mut s = String::from("backend,workload,mib");
    for k in CSV_KEYS {
        s.push(',');
        s.push_str(k);
    }
    s.push('\n');
    for r in rows {
        s.push_str(&format!("{},{},{}", r.backend, r.workload, r.mib));
        for k in CSV_KEYS {
            s.push(',');
            s.push_str(r.fields.get(*k).map(String::as_str).unwrap_or(""));
        }
        s.push('\n');
    }
    std::fs::write(path, s).with_context(|| format!("writing {}", path.display()))
}

fn read_csv(path: &Path) -> Result<Vec<Row>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().context("empty CSV")?.split(',').collect();
    Ok(lines
        .map(|line| {
            let fields: BTreeMap<String, String> = header
                .iter()
                .zip(line.split(','))
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Row::new(fields)
        })
        .collect())
}

/// The verified runs of one cell, fastest first.
fn runs<'a>(rows: &'a [Row], backend: &str, workload: &str, mib: u64) -> Vec<&'a Row> {
    let mut ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.backend == backend && r.workload == workload && r.mib == mib && r.ok())
        .collect();
    ok.sort_by(|a, b| a.num("ms").total_cmp(&b.num("ms")));
    ok
}

/// The cell's median run (the lower middle one of an even count): its time goes in the tables,
/// its counters in the traffic table.
fn find<'a>(rows: &'a [Row], backend: &str, workload: &str, mib: u64) -> Option<&'a Row> {
    let ok = runs(rows, backend, workload, mib);
    ok.get(ok.len().saturating_sub(1) / 2).copied()
}

fn secs(rows: &[Row], backend: &str, workload: &str, mib: u64) -> String {
    let ok = runs(rows, backend, workload, mib);
    if let Some(r) = find(rows, backend, workload, mib) {
        let median = format!("{:.1}", r.num("ms") / 1000.0);
        return match (ok.first(), ok.last()) {
            (Some(lo), Some(hi)) if ok.len() > 1 => format!(
                "{median} ({:.1}-{:.1})",
                lo.num("ms") / 1000.0,
                hi.num("ms") / 1000.0
            ),
            _ => median,
        };
    }
    match rows
        .iter()
        .find(|r| r.backend == backend && r.workload == workload && r.mib == mib)
    {
        Some(r) if r.fields.get("status").map(String::as_str) == Some("oom") => "OOM".into(),
        Some(_) => "fail".into(),
        None => "-".into(),
    }
}

fn ratio(a: Option<&Row>, b: Option<&Row>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.num("ms") > 0.0 => format!("{:.2}x", a.num("ms") / b.num("ms")),
        _ => "-".into(),
    }
}

fn mib(bytes: f64) -> String {
    if bytes.is_nan() {
        "-".into()
    } else {
        format!("{:.0}", bytes / 1048576.0)
    }
}

fn render(args: &SwapBenchArgs, rows: &[Row], took: Duration) -> String {
    let mut t = String::new();
    let backends: Vec<&str> = args.backends.iter().map(String::as_str).collect();
    let swap_backends: Vec<&str> = backends.iter().copied().filter(|b| *b != "ram").collect();
    let _ = write!(
        t,
        "Command: `cargo xtask bench --swap` (sizes {} MiB, workloads {}, backends {}, network {}{}). \
         Client VM: our Linux 6.12 kernel, {} MiB RAM, {} vCPUs, QEMU TCG (no KVM) on a 2-core machine \
         shared with other work, so absolute times are slow and noisy: compare ratios within this run only. \
         The `ram` run boots the same VM with {} MiB so nothing swaps (the lower bound). Each backend is \
         one VM boot running every workload x size in sequence (drop_caches between runs); {} round(s): \
         every round boots each backend's VM afresh, backends alternating; times are the median \
         (min-max) of the rounds, ratios are of medians, and kclient-hermit runs in round 1 only; \
         working sets above {} MiB run only seq (above {} MiB for kclient-hermit).\n\n",
        join(&args.sizes),
        args.workloads.join(","),
        backends.join(","),
        args.net,
        if took.is_zero() {
            String::new()
        } else {
            format!("; took {} s", took.as_secs())
        },
        args.vm_mib,
        args.vm_cpus,
        args.sizes.iter().max().copied().unwrap_or(0) + 512,
        args.swap_rounds.max(1),
        args.seq_only_above,
        args.seq_only_above.min(args.vm_mib),
    );
    let network = if args.net == "tap" {
        "over a tap device (virtio-net, QEMU's tap backend with offloads) in a network namespace \
         made for the run, where the servers run too, as a host on a LAN would"
    } else {
        "over QEMU user networking (slirp, a user-space TCP stack in the QEMU process)"
    };
    let _ = write!(
        t,
        "Backends: **kclient** = /dev/kclient0 -> host-mode appliance (`target/release/appliance`) at \
         10.0.2.2 {network}; **kclient-hermit** = the same, to the Hermit appliance \
         image in its own VM (1 GiB, store 768 MiB, 1 vCPU; TCG too, sharing the host's 2 cores with the client VM, \
         on user networking), reached through the port its QEMU forwards from 10.0.2.2; **kclient-lz4** = kclient with `compress=1`; **nbd** = the kernel's nbd driver (set up by our \
         `tmem-nbd-client`, newstyle handshake + NBD_SET_SOCK/NBD_DO_IT) -> `qemu-nbd` serving a \
         sparse file in /dev/shm (host RAM), same network path; **zram** = lzo-rle zram device inside \
         the same guest (same RAM); **disk** = virtio-blk backed by a sparse host file (cache=writeback: \
         in practice the host page cache). zswap (lzo, zsmalloc, default 20% pool) is on in front of \
         kclient, nbd and disk (the recommended deployment); `-nozswap` rows have it off. Workloads: \
         **seq** = `tmem-workload MIB 1 SEED 1` (fill, then verify every page in order), **rand** = \
         the same with stride 7919 (every verify read is a random swap-in), **sort** = `tmem-sort MIB` \
         (quicksort of 64-byte records in place, then full verification). Every run with a time verified all its data. \
         **disk / nbd** is the floor for any network block device here: the same guest block and \
         swap path with no network at all.\n\n",
    );
    // Time table.
    t.push_str("| workload | MiB | x VM RAM |");
    for b in &backends {
        let _ = write!(t, " {b} s |");
    }
    for b in &swap_backends {
        let _ = write!(t, " {b} / ram |");
    }
    t.push_str(" kclient / nbd | disk / nbd |\n|---|---|---|");
    for _ in 0..(backends.len() + swap_backends.len() + 2) {
        t.push_str("---|");
    }
    t.push('\n');
    for w in &args.workloads {
        for &m in &args.sizes {
            if !rows.iter().any(|r| &r.workload == w && r.mib == m) {
                continue;
            }
            let _ = write!(t, "| {w} | {m} | {:.1} |", m as f64 / args.vm_mib as f64);
            let ram = find(rows, "ram", w, m);
            for b in &backends {
                let _ = write!(t, " {} |", secs(rows, b, w, m));
            }
            for b in &swap_backends {
                let _ = write!(t, " {} |", ratio(find(rows, b, w, m), ram));
            }
            let nbd = find(rows, "nbd", w, m);
            let _ = writeln!(
                t,
                " **{}** | {} |",
                ratio(find(rows, "kclient", w, m), nbd),
                ratio(find(rows, "disk", w, m), nbd)
            );
        }
    }
    // Traffic table.
    t.push_str(
        "\nPages moved (guest /proc/vmstat deltas: pswpout/pswpin reach the swap device, zswpout are \
         pages zswap kept compressed in guest RAM) and bytes on the guest's NIC (eth0 tx+rx; kclient's \
         own counters in brackets):\n\n| workload | MiB | backend | pswpout | pswpin | zswpout | wire MiB tx | wire MiB rx | wire bytes per swapped page | kclient requests | block writes (avg KiB, avg ms) | block reads (avg KiB, avg ms) |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for w in &args.workloads {
        for &m in &args.sizes {
            for b in &swap_backends {
                let Some(r) = find(rows, b, w, m) else {
                    continue;
                };
                let pages = r.num("pswpout") + r.num("pswpin");
                let wire = r.num("net_tx") + r.num("net_rx");
                let per_page = if pages > 0.0 && wire > 0.0 {
                    format!("{:.0}", wire / pages)
                } else {
                    "-".into()
                };
                let (tx, rx) = if b.starts_with("kclient") {
                    (
                        format!("{} ({})", mib(r.num("net_tx")), mib(r.num("kc_sent"))),
                        format!("{} ({})", mib(r.num("net_rx")), mib(r.num("kc_received"))),
                    )
                } else {
                    (mib(r.num("net_tx")), mib(r.num("net_rx")))
                };
                let reqs = if b.starts_with("kclient") {
                    format!("{:.0}", r.num("kc_requests"))
                } else {
                    "-".into()
                };
                let blk = |n: &str, kib: &str, ms: &str| {
                    let ios = r.num(n);
                    if ios > 0.0 {
                        format!("{ios:.0} ({:.1}, {:.1})", r.num(kib) / ios, r.num(ms) / ios)
                    } else {
                        "-".into()
                    }
                };
                let _ = writeln!(
                    t,
                    "| {w} | {m} | {b} | {:.0} | {:.0} | {:.0} | {tx} | {rx} | {per_page} | {reqs} | {} | {} |",
                    r.num("pswpout"),
                    r.num("pswpin"),
                    r.num("zswpout"),
                    blk("blk_writes", "blk_write_kib", "blk_write_ms"),
                    blk("blk_reads", "blk_read_kib", "blk_read_ms"),
                );
            }
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| !r.ok())
        .map(|r| {
            format!(
                "{} {} {} MiB ({})",
                r.backend,
                r.workload,
                r.mib,
                r.fields.get("status").map(String::as_str).unwrap_or("?")
            )
        })
        .collect();
    if !failed.is_empty() {
        let _ = writeln!(
            t,
            "\nRuns that did not verify (OOM = the guest's OOM killer ended the workload; \
             fail = error or timeout): {}.",
            failed.join(", ")
        );
    }
    t.push_str("\n![swap benchmark: time vs working set](swap-bench.png)\n");
    t
}

const PLOT_PY: &str = r#"
import csv, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
import statistics
rows = [r for r in csv.DictReader(open(sys.argv[1])) if r["status"] == "ok"]
workloads = sorted({r["workload"] for r in rows}, key=["seq", "rand", "sort"].index)
backends = list(dict.fromkeys(r["backend"] for r in rows))
fig, axes = plt.subplots(1, len(workloads), figsize=(5 * len(workloads), 4), squeeze=False)
for ax, w in zip(axes[0], workloads):
    for b in backends:
        times = {}
        for r in rows:
            if r["workload"] == w and r["backend"] == b:
                times.setdefault(int(r["mib"]), []).append(int(r["ms"]) / 1000)
        # Median of the rounds, the lower middle one of an even count (as in the tables).
        pts = sorted((m, sorted(t)[(len(t) - 1) // 2]) for m, t in times.items())
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=b)
    ax.set_title(w)
    ax.set_xlabel("working set (MiB; VM has %s MiB)" % sys.argv[3])
    ax.set_ylabel("completion time (s, QEMU TCG; median of rounds)")
    ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
fig.suptitle("tmem swap benchmark: completion time vs working set (same run)")
fig.tight_layout()
fig.savefig(sys.argv[2], dpi=90)
"#;

/// Draws `png` from `work/results.csv` with matplotlib (installed with pip if missing).
fn plot(work: &Path, png: &Path, vm_mib: u64) -> Result<()> {
    let python = "python3";
    let has_mpl = Command::new(python)
        .args(["-c", "import matplotlib"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_mpl {
        step("installing matplotlib (pip)");
        run_cmd(Command::new(python).args(["-m", "pip", "install", "-q", "matplotlib"]))?;
    }
    let script = work.join("plot.py");
    std::fs::write(&script, PLOT_PY)?;
    run_cmd(
        Command::new(python)
            .arg(&script)
            .arg(work.join("results.csv"))
            .arg(png)
            .arg(vm_mib.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_report_the_median_round_and_the_spread() {
        let log = "TMEM-BENCH backend=nbd workload=seq mib=64 status=ok ms=3000\n\
                   TMEM-BENCH backend=nbd workload=seq mib=64 status=ok ms=1000\n\
                   TMEM-BENCH backend=nbd workload=seq mib=64 status=oom ms=100\n\
                   TMEM-BENCH backend=nbd workload=seq mib=64 status=ok ms=2000\n\
                   TMEM-BENCH backend=disk workload=seq mib=64 status=ok ms=500\n";
        let rows = parse_rows(log);
        assert_eq!(find(&rows, "nbd", "seq", 64).unwrap().num("ms"), 2000.0);
        assert_eq!(secs(&rows, "nbd", "seq", 64), "2.0 (1.0-3.0)");
        assert_eq!(secs(&rows, "disk", "seq", 64), "0.5");
        assert_eq!(secs(&rows, "kclient", "seq", 64), "-");
        let (disk, nbd) = (
            find(&rows, "disk", "seq", 64),
            find(&rows, "nbd", "seq", 64),
        );
        assert_eq!(ratio(disk, nbd), "0.25x");
        // An even count takes the lower middle run.
        let two = parse_rows(&log.replace("ms=3000", "ms=3000 status=fail"));
        assert_eq!(find(&two, "nbd", "seq", 64).unwrap().num("ms"), 1000.0);
    }

    #[test]
    fn bench_lines_become_rows_and_survive_the_csv() {
        let log =
            "noise\nTMEM-BENCH backend=kclient workload=seq mib=64 status=ok ms=840 pswpin=7\n\
                   TMEM-RESULT test=bench\nTMEM-BENCH backend=nbd workload=rand mib=128 ms=12090\n";
        let rows = parse_rows(log);
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].backend.as_str(), rows[0].mib), ("kclient", 64));
        assert_eq!(rows[0].num("pswpin"), 7.0);
        assert_eq!(
            (rows[1].workload.as_str(), rows[1].num("ms")),
            ("rand", 12090.0)
        );
        let csv = std::env::temp_dir().join(format!("swapbench-test-{}.csv", std::process::id()));
        write_csv(&csv, &rows).unwrap();
        let back = read_csv(&csv).unwrap();
        let _ = std::fs::remove_file(&csv);
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[1].backend.as_str(), back[1].num("ms")),
            ("nbd", 12090.0)
        );
    }
}
