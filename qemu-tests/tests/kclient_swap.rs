//! Client VM tests: swap on `/dev/kclient0` backed by a host-mode appliance.
//!
//! - `swap_workload_3x_ram`: 256 MiB / 2 vCPU guest with zswap, a workload of 3x RAM that must
//!   verify, consistent kclient counters, no kernel warnings, swapoff and rmmod succeed.
//! - `appliance_killed_during_io`: once the appliance holds swapped pages, it is SIGKILLed while
//!   the workload runs; the guest must report errors (failed requests, a failed workload: the kill
//!   hit I/O in flight), not hang or oops, and swapoff, rmmod and poweroff must complete.
//! - `appliance_stalled_during_io`: once the appliance holds swapped pages, it is frozen (SIGSTOP)
//!   for 4 x the I/O timeout, then resumed: requests time out, connections are reset and
//!   re-established, nothing hangs or oopses.
//!
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them): they need
//! `cargo xtask client-image && cargo build --release -p appliance`, and fail saying so without.
//! Env: `TMEM_KCLIENT_MIB` overrides the 3x-RAM run's workload size (default 3 x 256 MiB); the
//! disturbed runs swap 1.5x RAM (the disturbance needs swapping in flight, not volume).

use std::time::{Duration, Instant};

use protocol::StatId;
use qemu_tests::linux_vm::{
    appliance_binary, assert_swap_verified, boot_client, client_image, kernel_problems,
    kernel_problems_ignoring, num, parse_result, wait_exit, Appliance,
};
use qemu_tests::{poll, Qemu};

const VM_MEMORY: &str = "256M";
const VM_CPUS: u32 = 2;

fn workload_mib() -> u64 {
    std::env::var("TMEM_KCLIENT_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3 * 256)
}

/// A workload of 3x the VM's RAM swaps through kclient (with `compress=1`: LZ4 pages both ways)
/// and verifies every byte; kclient's counters must agree with the kernel's swap counters.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn swap_workload_3x_ram() {
    let name = "kclient_swap";
    let (image, appliance_bin) = (client_image(), appliance_binary());
    let appliance = Appliance::start(&appliance_bin, "2GiB").expect("start appliance");
    let mib = workload_mib();
    let append = format!(
        "tmem_test=swap tmem_target=10.0.2.2:{} tmem_size=1G tmem_mib={mib} tmem_compress=1",
        appliance.port
    );
    let mut vm = boot_client(name, &image, VM_MEMORY, VM_CPUS, &append).expect("boot client VM");
    let limit = Duration::from_secs(1500);
    let waited = vm.wait_for_output("TMEM-RESULT", limit);
    // Let the guest finish printing and power off (bounded), then inspect the log.
    let exited = wait_exit(&mut vm, Duration::from_secs(60));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("no result: {e}"));
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("kclient_swap result: {result:?}");

    let problems = kernel_problems(&log);
    assert!(
        problems.is_empty(),
        "kernel problems: {problems:#?}\nlog: {}",
        vm.log_path().display()
    );
    assert_swap_verified(&result, &log);
    assert_eq!(num(&result, "oops"), Some(0), "{result:?}");
    let stored = num(&result, "pages_stored").unwrap_or(0);
    let loaded = num(&result, "pages_loaded").unwrap_or(0);
    let pswpout = num(&result, "pswpout").unwrap_or(0);
    // Every page swapped out went to the appliance (give or take the mkswap header and pages the
    // shell swapped while the counters were being read).
    assert!(
        (stored - pswpout).abs() <= 256,
        "pages stored {stored} vs pswpout {pswpout}: {result:?}"
    );
    let pswpin = num(&result, "pswpin").unwrap_or(0);
    assert!(
        (loaded - pswpin).abs() <= 256,
        "pages loaded {loaded} vs pswpin {pswpin}: {result:?}"
    );
    assert!(
        num(&result, "bytes_sent").unwrap_or(0) >= stored * 56,
        "{result:?}"
    );
    // This run has compress=1: compressible pages went LZ4 both ways (decoded and CRC-checked by
    // kclient on the way back; the workload verified every byte).
    let compressed = num(&result, "pages_compressed").unwrap_or(0);
    assert!(
        compressed > 100 && compressed <= stored,
        "pages_compressed {compressed} of {stored} stored: {result:?}"
    );
    for key in ["failed_puts", "failed_gets", "timeouts"] {
        assert_eq!(num(&result, key), Some(0), "{key} nonzero: {result:?}");
    }
    assert!(exited, "VM did not power off");
    drop(appliance);
}

/// Pages the appliance must hold before a test disturbs it: 8 MiB of swapped-out pages, so the
/// workload has pages there it will need again (the disturbance hits I/O in flight).
const PAGES_BEFORE_DISTURBING: u64 = 2048;

/// The disturbed runs' workload: 1.5x the VM's RAM keeps it swapping through the disturbance
/// and past it, at half the 3x run's cost (the suite's time is mostly VM time).
const DISTURBED_MIB: u64 = 384;

/// Waits until the appliance at 127.0.0.1:`port` holds at least `min_pages` pages (its STATS over
/// TCP, polled every 250 ms; bounded by `timeout`, attempts and the VM staying up). Returns the
/// count it saw.
fn wait_for_stored_pages(vm: &mut Qemu, port: u16, min_pages: u64, timeout: Duration) -> u64 {
    let addr = format!("127.0.0.1:{port}");
    let mut last = String::from("no answer");
    let held = poll(timeout, Duration::from_millis(250), || {
        // A client id of its own: the STATS connection never touches the guest's pools.
        match tmemctl::client::Client::connect(&addr, 0x7374_6174, Duration::from_secs(5))
            .and_then(|mut c| c.stats())
        {
            Ok(v) => {
                let pages = v.get(StatId::Pages as usize).copied().unwrap_or(0);
                if pages >= min_pages {
                    return Ok(Some(pages));
                }
                last = format!("{pages} pages");
            }
            Err(e) => last = format!("{e:#}"),
        }
        if vm.is_running() {
            Ok(None)
        } else {
            Err(std::io::Error::other("the VM stopped"))
        }
    });
    match held {
        Ok(Some(pages)) => pages,
        other => panic!(
            "the appliance did not hold {min_pages} pages within {timeout:?} ({:?}; last: {last}); log {}",
            other.err(),
            vm.log_path().display()
        ),
    }
}

/// What a disturbed run reported, after the checks every disturbance test shares passed.
struct Disturbed {
    result: std::collections::HashMap<String, String>,
    /// Pages the appliance held just before the disturbance.
    stored_before: u64,
    exited: bool,
}

/// Boots the client VM running the `fail` test against a fresh appliance, waits until the
/// appliance holds swapped pages, applies `disturb` to the appliance and collects the result
/// (every wait bounded). Checks what must hold whatever the disturbance: setup succeeded, no kernel
/// problem beyond the OOM killer's report, no oops, rmmod completed.
fn run_disturbed(
    name: &str,
    timeout_ms: u64,
    disturb: impl FnOnce(&mut Appliance, &mut Qemu),
) -> Disturbed {
    let (image, appliance_bin) = (client_image(), appliance_binary());
    let mut appliance = Appliance::start(&appliance_bin, "2GiB").expect("start appliance");
    let append = format!(
        "tmem_test=fail tmem_target=10.0.2.2:{} tmem_size=1G tmem_mib={} tmem_timeout_ms={timeout_ms}",
        appliance.port,
        DISTURBED_MIB
    );
    let mut vm = boot_client(name, &image, VM_MEMORY, VM_CPUS, &append).expect("boot client VM");
    vm.wait_for_output("TMEM-PHASE workload-start", Duration::from_secs(300))
        .expect("workload started");
    let stored_before = wait_for_stored_pages(
        &mut vm,
        appliance.port,
        PAGES_BEFORE_DISTURBING,
        Duration::from_secs(300),
    );
    eprintln!("{name}: the appliance holds {stored_before} pages; disturbing it");
    disturb(&mut appliance, &mut vm);
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(900));
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("{name}: no result after disturbing the appliance: {e}"));
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("{name} result: {result:?}");
    // Expected: swap I/O errors and, once writes fail, possibly the OOM killer (its report has a
    // stack trace). Anything else (WARN, BUG, oops, hung task) is a failure.
    let expected: &[&str] = if log.contains("invoked oom-killer") {
        &["Call Trace:"]
    } else {
        &[]
    };
    let problems = kernel_problems_ignoring(&log, expected);
    assert!(
        problems.is_empty(),
        "kernel problems: {problems:#?}\nlog: {}",
        vm.log_path().display()
    );
    assert_eq!(num(&result, "oops"), Some(0));
    assert!(
        log.contains("TMEM-SETUP insmod=0 swapon=0"),
        "setup failed; log: {}",
        vm.log_path().display()
    );
    assert_eq!(
        num(&result, "rmmod"),
        Some(0),
        "rmmod must complete: {result:?}"
    );
    Disturbed {
        result,
        stored_before,
        exited,
    }
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn appliance_killed_during_io() {
    let run = run_disturbed("kclient_fail", 5000, |appliance, _| {
        appliance.kill();
        eprintln!("appliance killed");
    });
    let result = &run.result;
    // The kill took pages the workload still had to read back: kclient must fail those requests
    // and the workload must not complete as if nothing happened.
    assert!(run.stored_before >= PAGES_BEFORE_DISTURBING);
    assert!(
        num(result, "failed_requests").unwrap_or(0) > 0,
        "the lost appliance must show as failed requests: {result:?}"
    );
    assert_ne!(
        num(result, "workload"),
        Some(0),
        "the workload cannot verify pages that died with the appliance: {result:?}"
    );
    assert!(run.exited, "VM did not power off after the appliance died");
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn appliance_stalled_during_io() {
    let timeout_ms = 3000;
    let run = run_disturbed("kclient_stall", timeout_ms, |appliance, vm| {
        appliance.pause().expect("SIGSTOP appliance");
        let paused = Instant::now();
        eprintln!("appliance paused");
        // Frozen until kclient's failure detector resets the stalled connection (bounded), and
        // for at least 4 x the I/O timeout, so reconnects meet the frozen appliance too.
        vm.wait_for_output("resetting it", Duration::from_millis(20 * timeout_ms))
            .expect("kclient reports the stalled connection while the appliance is frozen");
        let frozen = Duration::from_millis(4 * timeout_ms);
        std::thread::sleep(frozen.saturating_sub(paused.elapsed()));
        appliance.resume().expect("SIGCONT appliance");
        eprintln!("appliance resumed after {:.1?}", paused.elapsed());
    });
    let result = &run.result;
    assert!(run.stored_before >= PAGES_BEFORE_DISTURBING);
    assert_eq!(
        num(result, "swapoff"),
        Some(0),
        "swapoff must complete: {result:?}"
    );
    assert!(
        num(result, "stalls").unwrap_or(0) > 0,
        "the stall must show up in kclient's stalls: {result:?}"
    );
    assert!(run.exited, "VM did not power off after the stall");
}
