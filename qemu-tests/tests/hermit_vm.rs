//! The Hermit appliance VM under load, through its forwarded port on 127.0.0.1 only:
//! - `tmemctl bench` puts and reads back every page (verifying every byte), `tmemctl stats --json`
//!   shows them while they are kept;
//! - the protocol conformance and robustness suite (`tmemctl::conformance`) passes against the VM,
//!   with keys (every session authenticated and encrypted);
//! - a 1.5 GiB VM really holds more than 1 GiB of pages (appliance memory in use, not just counts);
//! - on a tap device (checksum offload), fresh connections and a verified bench all succeed;
//! - on an Intel e1000e NIC (kernel patch 0013) instead of virtio-net, the conformance suite and a
//!   verified bench pass.
//!
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them): they need
//! `target/images/{loader,appliance}` (`cargo xtask image`) and `target/release/tmemctl`
//! (`cargo build --release -p tmemctl`), and fail saying so without them. Every VM is killed when
//! its guard drops, also when a check fails; every wait and run is bounded.

use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod support;

use qemu_tests::tap_lan::TapLan;
use qemu_tests::{hermit_image, run_bounded, workspace_binary, Qemu};
use support::checks::{conformance_passes, key_hex, keyed_conformance_args, verified_bench};
use tmemctl::bench::{run_phase, BenchConfig, Op, TmemBackend};
use tmemctl::corpus::Corpus;
use tmemctl::secure::Identity;

/// Boot to "listening" takes ~1 s under TCG on an idle machine; the machines are shared and busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);

fn stats_json(tmemctl: &std::path::Path, addr: &str) -> serde_json::Value {
    let mut cmd = Command::new(tmemctl);
    cmd.args(["--target", addr, "stats", "--json"]);
    let out = run_bounded(cmd, Duration::from_secs(60)).expect("tmemctl stats ran");
    assert!(
        out.status.success(),
        "tmemctl stats failed: {}{}",
        out.stdout,
        out.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("stats --json is not JSON ({e}): {}", out.stdout));
    // One object per appliance, as an array.
    v.as_array().and_then(|a| a.first().cloned()).unwrap_or(v)
}

fn counter(stats: &serde_json::Value, name: &str) -> u64 {
    stats
        .get(name)
        .and_then(|v| v.as_u64())
        .unwrap_or_else(|| panic!("stats have no counter {name}: {stats}"))
}

/// The Hermit appliance VM with `memory` of RAM and `app_args`, its address, and `tmemctl`.
fn boot_with_tmemctl(
    name: &str,
    memory: &str,
    app_args: &[&str],
) -> (Qemu, String, std::path::PathBuf) {
    let image = hermit_image();
    let tmemctl = workspace_binary("tmemctl");
    let (vm, addr) = Qemu::boot_hermit_appliance(name, &image, memory, app_args, BOOT_TIMEOUT)
        .expect("appliance VM booted");
    (vm, addr.to_string(), tmemctl)
}

/// `threads` client-LZ4 bench connections to `addr`, client ids `first_client`, `first_client + 1`...
fn connect_lz4(addr: &str, first_client: u64, threads: usize) -> Vec<TmemBackend> {
    (0..threads as u64)
        .map(|t| TmemBackend::connect(addr, &Identity::insecure(first_client + t), true))
        .collect::<anyhow::Result<Vec<_>>>()
        .expect("connect")
}

/// `tmemctl bench` against the VM (sized for TCG: 20 000 pages, batch 16), every page verified;
/// the pages are kept and `tmemctl stats --json` must count them.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_bench_verifies_every_page_and_stats_show_them() {
    let (mut vm, addr, tmemctl) = boot_with_tmemctl(
        "hermit-bench",
        "1G",
        &["--memory", "512MiB", "--log-level", "warn"],
    );

    let pages = 20_000u64;
    let start = Instant::now();
    verified_bench(&addr, None, pages, &["--keep"], &vm);
    eprintln!("bench of {pages} pages took {:?}", start.elapsed());

    let stats = stats_json(&tmemctl, &addr);
    eprintln!("stats: {stats}");
    assert!(
        counter(&stats, "pages") >= pages,
        "the kept pages are not all counted: {stats}"
    );
    assert!(counter(&stats, "data_bytes") > 0, "{stats}");
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// The protocol conformance and robustness suite, with keys, against the VM's forwarded port.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_passes_the_conformance_suite() {
    let image = hermit_image();
    let frame_timeout = Duration::from_secs(5);
    // With keys, as deployed: every session of the suite authenticated and encrypted (the keys
    // reach the unikernel on its command line, `--key ID:HEX` each).
    let keys = tmemctl::conformance::suite_keys(0x004e_015e);
    let owned = keyed_conformance_args(&keys, frame_timeout);
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let (mut vm, addr) =
        Qemu::boot_hermit_appliance("hermit-conformance", &image, "1G", &args, BOOT_TIMEOUT)
            .expect("appliance VM booted");
    conformance_passes(&addr.to_string(), frame_timeout, Some(keys), &vm);
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// A 1.5 GiB VM (appliance budget 1.2 GiB) holds 1 GiB of pages in its own RAM: 262 144 distinct
/// 4 KiB pages, each kept raw (`--raw-threshold 0`), so the appliance's memory in use is >= 1 GiB.
///
/// Under TCG the VM's network moves only a few MiB/s, so the client sends the (compressible,
/// distinct: each carries its index, see `Corpus::page`) pages LZ4-compressed; the appliance
/// decodes and verifies every one (CRC over the 4 KiB) and stores the 4 KiB. The last chunk is read
/// back byte for byte.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_vm_stores_a_gibibyte() {
    const PAGES: u64 = (1 << 30) / 4096;
    let (mut vm, addr, tmemctl) = boot_with_tmemctl(
        "hermit-gib",
        "1536M",
        &[
            "--memory",
            "1.2GiB",
            "--raw-threshold",
            "0",
            "--log-level",
            "warn",
        ],
    );

    // One page: zeros and a final 1 (not a fill page, so each copy gets its index written in).
    let dir = std::env::temp_dir().join(format!("tmem-gib-corpus-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut page = vec![0u8; 4096];
    page[4095] = 1;
    std::fs::write(dir.join("page"), &page).unwrap();
    let corpus = Arc::new(Corpus::from_dir(&dir, 1).expect("corpus"));
    let _ = std::fs::remove_dir_all(&dir);

    let start = Instant::now();
    let limit = Duration::from_secs(270);
    let chunk = 32_768u64;
    let cfg = BenchConfig {
        pages: chunk,
        threads: 2,
        depth: 8,
        batch: 32,
        client_lz4: true,
        max_time: limit,
        progress: false,
    };
    let mut put = 0u64;
    // Bounded: PAGES / chunk rounds, each bounded by what is left of `limit`.
    for round in 0..PAGES / chunk {
        let mut backends = connect_lz4(&addr, 0x6769_6200 + round * 8, cfg.threads);
        let left = limit.saturating_sub(start.elapsed());
        assert!(!left.is_zero(), "only {put} pages put in {limit:?}");
        let cfg = BenchConfig {
            max_time: left,
            ..cfg.clone()
        };
        let r = run_phase(Op::Put, &mut backends, &corpus, &cfg)
            .unwrap_or_else(|e| panic!("put phase: {e:#}; VM log {}", vm.log_path().display()));
        assert_eq!(r.errors, 0, "pages refused after {put} pages");
        put += r.pages;
        eprintln!(
            "{put} pages put ({:.1?}, {:.0} pages/s this chunk)",
            start.elapsed(),
            r.ops_per_sec()
        );
        if round == PAGES / chunk - 1 {
            let back = run_phase(Op::Get, &mut backends, &corpus, &cfg)
                .unwrap_or_else(|e| panic!("get phase: {e:#}"));
            assert_eq!(back.mismatches, 0, "pages came back wrong");
            assert_eq!(back.pages, chunk);
        }
    }
    let stats = stats_json(&tmemctl, &addr);
    eprintln!("stats: {stats}");
    let pages = counter(&stats, "pages");
    let used = counter(&stats, "data_bytes") + counter(&stats, "metadata_bytes");
    assert!(pages >= PAGES, "appliance holds {pages} pages, not {PAGES}");
    assert!(
        counter(&stats, "data_bytes") >= 1 << 30,
        "page data must really occupy >= 1 GiB of the VM's RAM: {stats}"
    );
    eprintln!(
        "appliance holds {pages} pages = {} MiB of page data in {} MiB of its memory ({:.0?})",
        (pages * 4096) >> 20,
        used >> 20,
        start.elapsed()
    );
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// `--memory` far beyond what a 256 MiB VM can hold: the appliance measures its heap at start-up,
/// caps the store (saying so), and when the store is full it refuses puts with NO_SPACE and keeps
/// serving; before the cap it aborted with an allocation failure once the heap ran out.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_caps_an_oversized_store_and_keeps_serving_when_full() {
    let (mut vm, addr, tmemctl) = boot_with_tmemctl(
        "hermit-cap",
        "256M",
        &[
            "--memory",
            "1GiB",
            "--raw-threshold",
            "0",
            "--log-level",
            "warn",
        ],
    );
    assert!(
        vm.output().contains("store capped at"),
        "no cap reported: {}",
        vm.output()
    );
    let corpus = Arc::new(Corpus::synthetic(16_384, 7));
    let cfg = |pages| BenchConfig {
        pages,
        threads: 2,
        depth: 4,
        batch: 16,
        client_lz4: true,
        max_time: Duration::from_secs(240),
        progress: false,
    };
    // Pages stored while there is room...
    let mut first = connect_lz4(&addr, 0x6361_7000, 2);
    let small = cfg(8_192);
    let put = run_phase(Op::Put, &mut first, &corpus, &small).expect("put phase");
    assert_eq!(put.errors, 0, "refused while the store had room");
    // ...then far more than the capped store (and the VM) can hold: 60 000 pages of 4 KiB.
    let mut flood = connect_lz4(&addr, 0x6361_7100, 2);
    let over = run_phase(Op::Put, &mut flood, &corpus, &cfg(60_000))
        .unwrap_or_else(|e| panic!("flood: {e:#}; VM log {}", vm.log_path().display()));
    assert!(over.errors > 0, "nothing refused: the store was not full");
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
    let stats = stats_json(&tmemctl, &addr);
    eprintln!("stats: {stats}");
    assert!(counter(&stats, "no_space_refusals") >= over.errors);
    assert!(
        counter(&stats, "memory_limit") < 256 << 20,
        "not capped: {stats}"
    );
    assert!(counter(&stats, "data_bytes") <= counter(&stats, "memory_limit"));
    // The pages stored before the store filled are all still there, byte for byte.
    let back = run_phase(Op::Get, &mut first, &corpus, &small).expect("get phase");
    assert_eq!((back.errors, back.mismatches), (0, 0), "stored pages lost");
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// On a tap device QEMU offers checksum offload, which user networking does not: the appliance's
/// segments then leave with their checksums for the device to finish. Kernel patch 0012: the
/// driver left 0 where virtio wants the pseudo-header sum, and the first connection after boot
/// failed (this test, with an image built without 0012: 2 of 3 runs failed, at the first
/// connection). Needs root (a network namespace) and dnsmasq (`cargo xtask test-vm`
/// installs it): without them the test fails saying so.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_serves_on_a_tap_device_with_checksum_offload() {
    let lan = TapLan::start("hermit-tap").unwrap_or_else(|e| panic!("tap network: {e}"));
    let image = hermit_image();
    let tmemctl = workspace_binary("tmemctl");
    let port = qemu_tests::free_port();
    let listen = format!("0.0.0.0:{port}");
    let qemu = qemu_tests::hermit_command(&image, "1G", port, &["--listen", &listen, "--insecure"]);
    let mut vm = Qemu::spawn("hermit-tap", lan.attach(&qemu)).expect("QEMU started");
    vm.wait_for_output("appliance listening on", BOOT_TIMEOUT)
        .expect("appliance listening");
    lan.wait_for_guest(port, BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}; VM log {}", vm.log_path().display()));
    assert!(
        vm.output().contains("CSUM | GUEST_CSUM"),
        "checksum offload not negotiated, so this test proves nothing: {}",
        vm.output()
    );
    let addr = format!("{}:{port}", TapLan::GUEST);
    // Fresh connections one after another (each used to be able to fail), then a verified bench.
    for run in 0..10 {
        let mut stats = Command::new(&tmemctl);
        stats.args(["--target", &addr, "stats"]);
        let out = run_bounded(lan.command(&stats), Duration::from_secs(60)).expect("tmemctl ran");
        assert!(
            out.status.success(),
            "stats run {run} failed: {}{}; VM log {}",
            out.stdout,
            out.stderr,
            vm.log_path().display()
        );
    }
    let mut bench = Command::new(&tmemctl);
    bench.args([
        "--target",
        &addr,
        "bench",
        "--pages",
        "4000",
        "--threads",
        "2",
    ]);
    bench.args(["--max-seconds", "120"]);
    let out = run_bounded(lan.command(&bench), Duration::from_secs(150)).expect("tmemctl ran");
    assert!(
        out.status.success(),
        "bench failed: {}{}; VM log {}",
        out.stdout,
        out.stderr,
        vm.log_path().display()
    );
    let summary = out.summary();
    assert_eq!(summary.get("mismatches").map(String::as_str), Some("0"));
    assert_eq!(summary.get("refused").map(String::as_str), Some("0"));
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// The appliance on the NIC servers have, an Intel e1000e (82574L; kernel patch 0013, chosen at
/// boot because it is the only NIC): the conformance suite and a verified bench pass through it.
/// Then the choice among several NICs: an e1000e without a link placed before the virtio-net NIC
/// (in PCI order) is passed over, and the appliance serves through the virtio-net one.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_serves_on_an_e1000e_nic() {
    let image = hermit_image();
    let tmemctl = workspace_binary("tmemctl");
    let port = qemu_tests::free_port();
    let frame_timeout = Duration::from_secs(5);
    // With keys, as deployed (and as in `hermit_passes_the_conformance_suite`).
    let keys = tmemctl::conformance::suite_keys(0x00e1_000e);
    let mut owned = vec!["--listen".to_string(), format!("0.0.0.0:{port}")];
    owned.extend(keyed_conformance_args(&keys, frame_timeout));
    let args: Vec<&str> = owned.iter().map(String::as_str).collect();
    let qemu = qemu_tests::hermit_command(&image, "1G", port, &args);
    let mut vm = Qemu::spawn(
        "hermit-e1000e",
        qemu_tests::with_nic(&qemu, qemu_tests::Nic::E1000e),
    )
    .expect("QEMU started");
    vm.wait_for_output("appliance listening on", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}; VM log {}", vm.log_path().display()));
    let addr = format!("127.0.0.1:{port}");
    qemu_tests::wait_for_port(addr.parse().unwrap(), Duration::from_secs(30)).expect("forward");
    let in_use = |log: &str, nic: &str| {
        log.lines()
            .any(|l| l.contains(&format!("NIC {nic} ")) && l.contains("link up, in use"))
    };
    assert!(
        in_use(&vm.output(), "e1000e"),
        "the e1000e driver is not the one in use: {}",
        vm.output()
    );

    conformance_passes(&addr, frame_timeout, Some(keys.clone()), &vm);

    // The bench authenticates with one of the suite's keys.
    let (bench_id, bench_key) = keys.iter().next().expect("suite keys");
    verified_bench(&addr, Some((*bench_id, bench_key)), 20_000, &[], &vm);
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
    drop(vm);

    // Two NICs: an e1000e first in PCI order, its link off (set through QEMU's monitor before
    // the guest runs), then the virtio-net NIC that carries the forward.
    let monitor = std::env::temp_dir().join(format!("hermit-e1000e-{port}.sock"));
    let _ = std::fs::remove_file(&monitor);
    let mut first_netdev = true;
    let two = qemu_tests::rewrite_args(&qemu, |a| match a.to_str() {
        Some("-netdev") if std::mem::take(&mut first_netdev) => [
            "-netdev",
            "user,id=n1",
            "-device",
            "e1000e,netdev=n1",
            "-netdev",
        ]
        .map(Into::into)
        .to_vec(),
        Some("-no-reboot") => vec!["-no-reboot".into(), "-S".into()],
        _ => vec![a.to_owned()],
    });
    let two = qemu_tests::with_option(
        &two,
        "-monitor",
        format!("unix:{},server=on,wait=off", monitor.display()),
    );
    let mut vm = Qemu::spawn("hermit-two-nics", two).expect("QEMU started");
    let mut mon = None;
    for _ in 0..100 {
        match std::os::unix::net::UnixStream::connect(&monitor) {
            Ok(s) => {
                mon = Some(s);
                break;
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    let mut mon = mon.expect("QEMU monitor socket");
    std::io::Write::write_all(&mut mon, b"set_link n1 off\ncont\n").expect("monitor commands");
    vm.wait_for_output("appliance listening on", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}; VM log {}", vm.log_path().display()));
    let log = vm.output();
    assert!(
        log.contains("NIC e1000e at 00-00:03.0: link down") && in_use(&log, "virtio"),
        "the NIC with a link was not chosen: {log}"
    );
    let mut stats = Command::new(&tmemctl);
    stats
        .env("TMEM_KEY", key_hex(bench_key))
        .args(["--client-id", &bench_id.to_string()])
        .args(["--target", &addr, "stats"]);
    let out = run_bounded(stats, Duration::from_secs(60)).expect("tmemctl stats ran");
    assert!(
        out.status.success(),
        "stats through the virtio-net NIC failed: {}{}; VM log {}",
        out.stdout,
        out.stderr,
        vm.log_path().display()
    );
    drop(mon);
    let _ = std::fs::remove_file(&monitor);
}
