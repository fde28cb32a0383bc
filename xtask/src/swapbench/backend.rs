//! One backend's run of the swap bench: its server (host-mode appliance, Hermit appliance VM,
//! qemu-nbd, a disk file, or nothing for zram and ram), the client VM running every workload x
//! size, and the rows it printed.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use qemu_tests::linux_vm::{client_command_on, parse_result, wait_exit, Appliance, ClientImage};
use qemu_tests::netns::NetNs;
use qemu_tests::{ChildGuard, Qemu};

use super::rows::{parse_rows, Row};
use super::{join, SwapBenchArgs};
use crate::artefacts;
use crate::host::step;

/// A file removed when dropped.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The client id of the keyed backends (`kclient-noise`, `kclient-sealed`); the key is made
/// per run.
const BENCH_CLIENT: u64 = 0xbe4d;

/// The appliance VM of the `kclient-hermit` and `kclient-linuxvm` backends: RAM, and the store
/// inside it (one vCPU for both).
const APPLIANCE_VM_MEMORY: &str = "1G";
const APPLIANCE_VM_STORE: &str = "768MiB";

/// Whether `backend` swaps to an appliance in its own TCG VM (`kclient-hermit`,
/// `kclient-linuxvm`): the slow columns, run in round 1 only and random access only up to 1x RAM.
pub(super) fn in_appliance_vm(backend: &str) -> bool {
    backend.contains("-hermit") || backend.contains("-linuxvm")
}

/// `auto` becomes `tap` when a namespace with a tap device can be made here, else `user`.
pub(super) fn resolve_net(net: &str) -> Result<String> {
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
pub(super) fn run_backend(
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
    let seq_only_above = if in_appliance_vm(backend) {
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
    if args.guest_crypto == "scalar" {
        append.push_str(" clearcpuid=ssse3,avx,avx2,avx512f");
    }
    // With tap networking, servers and the client VM share a namespace made for this backend; it
    // is dropped last (after every process in it).
    let netns = match args.net.as_str() {
        "tap" => Some(NetNs::create("swapbench").context("creating the network namespace")?),
        _ => None,
    };
    let in_ns = |cmd: Command| NetNs::command_in(netns.as_ref(), cmd);
    let server_host = NetNs::server_host(netns.as_ref());
    let mut _appliance = None;
    let mut _appliance_vm: Option<Qemu> = None;
    let mut _server = None;
    let mut _files = Vec::new();
    let mut extra: Vec<String> = Vec::new();
    match base {
        "ram" | "zram" => {}
        "kclient" if in_appliance_vm(backend) => {
            // The appliance in its own VM (user networking): the Hermit unikernel, or the same
            // appliance as a Linux binary in a Linux VM of the same size; the client VM reaches
            // the port that VM's QEMU forwards from the host, as in `cargo xtask demo`.
            let port = qemu_tests::free_port();
            let listen = format!("0.0.0.0:{port}");
            // kclient has no keys; only the run's own network reaches the VM.
            let app_args = [
                "--listen",
                &listen,
                "--insecure",
                "--memory",
                APPLIANCE_VM_STORE,
                "--log-level",
                "warn",
            ];
            let (name, cmd) = if backend.contains("-hermit") {
                let hermit = artefacts::hermit_image()?;
                let cmd = qemu_tests::hermit_command_fwd(
                    &hermit,
                    APPLIANCE_VM_MEMORY,
                    server_host,
                    port,
                    &app_args,
                );
                ("swapbench-hermit-appliance", cmd)
            } else {
                let initramfs = crate::linux_appliance_vm::initramfs()?;
                let cmd = crate::linux_appliance_vm::command(
                    &image.bzimage,
                    &initramfs,
                    APPLIANCE_VM_MEMORY,
                    server_host,
                    port,
                    &app_args,
                );
                ("swapbench-linux-appliance", cmd)
            };
            let mut vm = Qemu::spawn(name, in_ns(cmd))?;
            vm.wait_for_output("appliance listening on", Duration::from_secs(120))
                .with_context(|| format!("booting the appliance VM of {backend}"))?;
            append.push_str(&format!(" tmem_target=10.0.2.2:{port}"));
            _appliance_vm = Some(vm);
        }
        "kclient" => {
            // -r2: two appliances, every page on both (replicas=2). -noise: a client key, so
            // sessions are authenticated and encrypted. -sealed: also encrypt_pages=1.
            let replicas = if backend.contains("-r2") { 2 } else { 1 };
            let keyed = backend.contains("-noise") || backend.contains("-sealed");
            let key: String = if keyed {
                tmemctl::secure::random_key()?
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect()
            } else {
                String::new()
            };
            let key_arg = format!("{BENCH_CLIENT:#x}:{key}");
            let more: Vec<&str> = if keyed {
                vec!["--key", &key_arg]
            } else {
                Vec::new()
            };
            let mut targets = Vec::new();
            let mut nodes = Vec::new();
            for _ in 0..replicas {
                let a = Appliance::start_with(
                    appliance_bin,
                    &format!("{}MiB", swap_mib * 2),
                    netns.as_ref(),
                    &more,
                )
                .context("starting the appliance")?;
                targets.push(format!("10.0.2.2:{}", a.port));
                nodes.push(a);
            }
            append.push_str(&format!(
                " tmem_target={} tmem_replicas={replicas}",
                targets.join(",")
            ));
            if keyed {
                append.push_str(&format!(" tmem_client_id={BENCH_CLIENT:#x} tmem_key={key}"));
            }
            if backend.contains("-sealed") {
                append.push_str(" tmem_encrypt=1");
            }
            _appliance = Some(nodes);
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
            _server = Some(ChildGuard::new(child));
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
