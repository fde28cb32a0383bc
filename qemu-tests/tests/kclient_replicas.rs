//! Replicas (issue 11): the client VM swaps to several host-mode appliances, each page on two of
//! them, while appliances are killed, restarted empty or frozen. Sessions are authenticated with
//! the client's key (every appliance here has it).
//!
//! - `losing_any_one_appliance_loses_nothing`: three appliances, replicas=2, a verified workload
//!   of 2x RAM, filled and verified twice (two passes: long enough for the kill, the repair and
//!   the second kill to land while it runs). One appliance is SIGKILLed mid-workload and
//!   restarted empty; once repair has brought every extent back to two copies, a *different*
//!   appliance is killed for good. The workload verifies every page (the repaired appliance
//!   serves many of them: checked on its counters), nothing is OOM-killed, the counters show the
//!   failures, the pool loss and the repair.
//! - `both_replicas_lost`: replicas=2 over two appliances, both killed once the workload reads
//!   its pages back: those reads fail with I/O errors counted in `lost_pages`, nothing hangs,
//!   swapoff and rmmod complete.
//! - `a_stalled_appliance_is_detected_in_time`: one of two replicas frozen (SIGSTOP): detected
//!   within `down_after_ms` (+ slack), the workload goes on on the other and verifies.
//! - `an_appliance_restarted_empty_does_not_kill_the_device`: replicas=1 (as before replicas): the
//!   appliance restarts empty; kclient says it lost its pool, starts a new one and keeps writing;
//!   the pages it lost are counted in `lost_pages`.
//! - `a_full_cluster_spills_to_disk`: two small appliances fill up; pages no replica can take go
//!   to the spill device (a virtio disk) and the 3x-RAM workload still verifies, no OOM kill.
//! - `killed_swapping_processes_break_nothing`: while the verified workload swaps, another
//!   swapping process is SIGKILLed again and again (what the OOM killer does): no connection is
//!   reset, nothing times out, the workload verifies.
//!
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qemu_tests::linux_vm::{
    boot_client, client_command, client_image, kernel_problems_ignoring, num, parse_result,
    tagged_lines, wait_exit,
};
use qemu_tests::{poll, Qemu};
use support::cluster::{client_args, cluster, targets, wait_pages, Node};

const VM_MEMORY: &str = "256M";
const VM_CPUS: u32 = 2;
/// Stall detection bound kclient is loaded with (its default).
const DOWN_AFTER_MS: u64 = 3000;

/// The latest `TMEM-KSTAT` line of the console.
fn last_kstat(vm: &Qemu) -> HashMap<String, String> {
    tagged_lines(&vm.output(), "TMEM-KSTAT")
        .last()
        .unwrap_or_default()
}

/// Waits (bounded) for a `TMEM-KSTAT` line satisfying `ok`; fails if the workload ended first.
fn wait_kstat(
    vm: &Qemu,
    what: &str,
    timeout: Duration,
    ok: impl Fn(&HashMap<String, String>) -> bool,
) {
    let got = poll(timeout, Duration::from_secs(1), || {
        if vm.output().contains("TMEM-PHASE workload-done") {
            return Err(std::io::Error::other(format!(
                "the workload ended before {what}: make it longer (tmem_passes)"
            )));
        }
        Ok(ok(&last_kstat(vm)).then_some(()))
    });
    match got {
        Ok(Some(())) => {}
        Ok(None) => panic!(
            "{what} did not happen within {timeout:?}; last: {:?}",
            last_kstat(vm)
        ),
        Err(e) => panic!("{e}; log: {}", vm.log_path().display()),
    }
}

fn n(m: &HashMap<String, String>, k: &str) -> i64 {
    num(m, k).unwrap_or(-1)
}

/// Boots the client VM on the `replicas` script against `nodes`.
fn boot(name: &str, nodes: &[Node], extra: &str) -> Qemu {
    let image = client_image();
    let append = format!(
        "tmem_test=replicas tmem_target={} tmem_size=1G {} {extra}",
        targets(nodes),
        client_args()
    );
    boot_client(name, &image, VM_MEMORY, VM_CPUS, &append).expect("boot client VM")
}

/// Waits for the result and checks what every run must show.
fn finish(mut vm: Qemu, limit: Duration, expected_problems: &[&str]) -> HashMap<String, String> {
    let waited = vm.wait_for_output("TMEM-RESULT", limit);
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("no result: {e}; log: {}", vm.log_path().display()));
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("result: {result:?}");
    let problems = kernel_problems_ignoring(&log, expected_problems);
    assert!(
        problems.is_empty(),
        "kernel problems: {problems:#?}\nlog: {}",
        vm.log_path().display()
    );
    assert!(exited, "VM did not power off");
    result
}

/// Boots the `fail` script (PID 1 survives lost pages) against `nodes` with `extra` settings.
fn boot_failing(name: &str, nodes: &[Node], extra: &str) -> Qemu {
    let append = format!(
        "tmem_test=fail tmem_target={} tmem_size=1G tmem_timeout_ms=5000 {} {extra}",
        targets(nodes),
        client_args()
    );
    boot_client(name, &client_image(), VM_MEMORY, VM_CPUS, &append).expect("boot client VM")
}

/// Waits for the `fail` script's result after pages were lost: the workload may have been
/// OOM-killed (its stack trace is expected then), nothing else may show in the kernel log, the
/// module unloads and the VM powers off.
fn finish_failing(mut vm: Qemu) -> HashMap<String, String> {
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(900));
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    waited.unwrap_or_else(|e| panic!("no result: {e}; log: {}", vm.log_path().display()));
    let log = vm.output();
    let result = parse_result(&log).expect("TMEM-RESULT");
    eprintln!("result: {result:?}");
    let expected: &[&str] = if log.contains("invoked oom-killer") {
        &["Call Trace:"]
    } else {
        &[]
    };
    assert!(
        kernel_problems_ignoring(&log, expected).is_empty(),
        "log: {}",
        vm.log_path().display()
    );
    assert_eq!(num(&result, "rmmod"), Some(0), "{result:?}");
    assert!(exited, "VM did not power off");
    result
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn losing_any_one_appliance_loses_nothing() {
    let mut nodes = cluster(3, "2GiB");
    let mut vm = boot(
        "kclient_replicas",
        &nodes,
        "tmem_replicas=2 tmem_passes=2 tmem_mib=512",
    );
    vm.wait_for_output("TMEM-PHASE workload-start", Duration::from_secs(300))
        .expect("workload started");
    // Both copies of enough pages out there before the first kill.
    wait_pages(&nodes, 30_000, Duration::from_secs(600));
    let victim = nodes
        .iter()
        .map(Node::pages)
        .enumerate()
        .max_by_key(|&(_, p)| p)
        .unwrap()
        .0;
    eprintln!(
        "killing appliance {victim} ({} pages)",
        nodes[victim].pages()
    );
    nodes[victim].kill();
    wait_kstat(
        &vm,
        "the appliance going down",
        Duration::from_secs(60),
        |k| n(k, "appliance_downs") >= 1,
    );
    std::thread::sleep(Duration::from_secs(3));
    eprintln!("restarting appliance {victim} empty");
    nodes[victim].restart();
    wait_kstat(
        &vm,
        "the pool loss being noticed",
        Duration::from_secs(120),
        |k| {
            k.get(&format!("appliance.{victim}.pools_lost"))
                .is_some_and(|v| v != "0")
        },
    );
    let repaired_at = Instant::now();
    wait_kstat(
        &vm,
        "repair restoring every extent",
        Duration::from_secs(900),
        |k| {
            n(k, "degraded_extents") == 0
                && n(k, "pages_repaired") > 0
                && k.get(&format!("appliance.{victim}.state"))
                    .is_some_and(|s| s == "up")
        },
    );
    eprintln!("redundancy restored in {:?}", repaired_at.elapsed());
    let second = (victim + 1) % nodes.len();
    eprintln!(
        "killing appliance {second} ({} pages) for good",
        nodes[second].pages()
    );
    nodes[second].kill();
    let hits_before = nodes[victim].get_hits();
    // The pages whose other copy was on `second` now come only from `victim`, much of it copied
    // there by repair: the workload's verification reads them after this point.
    vm.wait_for_output("TMEM-PHASE workload-done", Duration::from_secs(2400))
        .unwrap_or_else(|e| panic!("workload: {e}; log: {}", vm.log_path().display()));
    let served = nodes[victim].get_hits().saturating_sub(hits_before);
    let result = finish(vm, Duration::from_secs(600), &[]);
    assert_eq!(
        result.get("status").map(String::as_str),
        Some("pass"),
        "{result:?}"
    );
    assert!(
        served > 1000,
        "the repaired appliance served the verification ({served} pages)"
    );
    assert_eq!(num(&result, "oom"), Some(0));
    assert_eq!(num(&result, "lost_pages"), Some(0), "{result:?}");
    assert_eq!(num(&result, "failed_requests"), Some(0), "{result:?}");
    assert!(
        num(&result, "appliance_downs").unwrap_or(0) >= 2,
        "{result:?}"
    );
    assert!(
        num(&result, "pages_repaired").unwrap_or(0) > 1000,
        "{result:?}"
    );
    assert!(
        num(&result, "handshakes").unwrap_or(0) >= 3,
        "authenticated sessions: {result:?}"
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn both_replicas_lost() {
    let mut nodes = cluster(2, "2GiB");
    let mut vm = boot_failing("kclient_both_lost", &nodes, "tmem_replicas=2 tmem_mib=512");
    // Killed once the workload reads its pages back: those reads find no replica.
    vm.wait_for_output("tmem-workload: pass 0 verifying", Duration::from_secs(900))
        .expect("workload verifying");
    for node in nodes.iter_mut() {
        node.kill();
    }
    let result = finish_failing(vm);
    assert!(
        num(&result, "lost_pages").unwrap_or(0) > 0,
        "lost pages counted: {result:?}"
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn a_stalled_appliance_is_detected_in_time() {
    let nodes = cluster(2, "2GiB");
    let mut vm = boot(
        "kclient_stall_replica",
        &nodes,
        &format!("tmem_replicas=2 tmem_passes=2 tmem_mib=384 tmem_down_ms={DOWN_AFTER_MS}"),
    );
    vm.wait_for_output("TMEM-PHASE workload-start", Duration::from_secs(300))
        .expect("workload started");
    wait_pages(&nodes, 20_000, Duration::from_secs(600));
    let before = vm.output().matches("no answer for").count();
    nodes[0].pause();
    let stopped = Instant::now();
    let detected = poll(Duration::from_secs(60), Duration::from_millis(200), || {
        Ok((vm.output().matches("no answer for").count() > before).then(|| stopped.elapsed()))
    })
    .expect("poll")
    .expect("the stall was detected");
    eprintln!("stall detected after {detected:?}");
    std::thread::sleep(Duration::from_secs(10));
    nodes[0].resume();
    let result = finish(vm, Duration::from_secs(1800), &[]);
    assert_eq!(
        result.get("status").map(String::as_str),
        Some("pass"),
        "{result:?}"
    );
    assert_eq!(num(&result, "failed_requests"), Some(0), "{result:?}");
    assert!(num(&result, "stalls").unwrap_or(0) >= 1, "{result:?}");
    assert_eq!(
        num(&result, "timeouts"),
        Some(0),
        "the stall, not io_timeout_ms, must end the wait: {result:?}"
    );
    // Detection bound: down_after_ms, plus the monitor's tick and the console's latency.
    assert!(
        detected <= Duration::from_millis(DOWN_AFTER_MS + 3000),
        "detected after {detected:?}"
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn an_appliance_restarted_empty_does_not_kill_the_device() {
    let mut nodes = cluster(1, "2GiB");
    let mut vm = boot_failing("kclient_restart_empty", &nodes, "");
    vm.wait_for_output("TMEM-PHASE workload-start", Duration::from_secs(300))
        .expect("workload started");
    wait_pages(&nodes, 20_000, Duration::from_secs(600));
    nodes[0].kill();
    std::thread::sleep(Duration::from_secs(3));
    nodes[0].restart();
    vm.wait_for_output("lost our pool", Duration::from_secs(120))
        .expect("kclient says the appliance lost its pool");
    // It keeps writing to the new pool.
    let grew = poll(Duration::from_secs(300), Duration::from_secs(1), || {
        Ok((nodes[0].pages() > 1000).then_some(()))
    })
    .expect("poll");
    assert!(grew.is_some(), "no pages stored in the new pool");
    let result = finish_failing(vm);
    assert!(num(&result, "lost_pages").unwrap_or(0) > 0, "{result:?}");
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn killed_swapping_processes_break_nothing() {
    let nodes = cluster(2, "2GiB");
    let vm = boot(
        "kclient_killed",
        &nodes,
        "tmem_replicas=2 tmem_passes=1 tmem_mib=384 tmem_killers=10",
    );
    let result = finish(vm, Duration::from_secs(1800), &[]);
    assert_eq!(
        result.get("status").map(String::as_str),
        Some("pass"),
        "{result:?}"
    );
    for counter in [
        "timeouts",
        "reconnects",
        "stalls",
        "send_errors",
        "failed_requests",
    ] {
        assert_eq!(num(&result, counter), Some(0), "{counter}: {result:?}");
    }
    assert!(
        num(&result, "kills").unwrap_or(0) >= 5,
        "the killer must have run: {result:?}"
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn a_full_cluster_spills_to_disk() {
    // 2 x 48 MiB of store cannot hold a 768 MiB workload even compressed.
    let nodes = cluster(2, "48MiB");
    let disk = std::env::temp_dir().join(format!("tmem-spill-{}.img", std::process::id()));
    let file = std::fs::File::create(&disk).expect("spill image");
    file.set_len(1 << 30).expect("sparse 1 GiB");
    drop(file);
    struct Remove(std::path::PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(disk.clone());
    let append = format!(
        "tmem_test=replicas tmem_target={} tmem_size=1G tmem_replicas=2 tmem_spill=/dev/vda {}",
        targets(&nodes),
        client_args()
    );
    let mut cmd = client_command(&client_image(), VM_MEMORY, VM_CPUS, &append);
    cmd.args([
        "-drive",
        &format!("file={},format=raw,if=virtio,cache=unsafe", disk.display()),
    ]);
    let vm = Qemu::spawn("kclient_spill", cmd).expect("boot client VM");
    let result = finish(vm, Duration::from_secs(1800), &[]);
    assert_eq!(
        result.get("status").map(String::as_str),
        Some("pass"),
        "{result:?}"
    );
    assert_eq!(num(&result, "oom"), Some(0), "{result:?}");
    assert!(
        num(&result, "pages_spilled").unwrap_or(0) > 1000,
        "pages went to the spill device: {result:?}"
    );
    assert!(
        num(&result, "pages_spill_read").unwrap_or(0) > 0,
        "and were read back from it: {result:?}"
    );
    assert_eq!(num(&result, "failed_requests"), Some(0), "{result:?}");
}
