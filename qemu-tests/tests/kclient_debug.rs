//! kclient on the debug client kernel (`cargo xtask client-image --debug`, `target/images/debug/`):
//! lockdep (`PROVE_LOCKING`), generic KASAN and `DEBUG_ATOMIC_SLEEP`. Any report of theirs fails.
//!
//! - `debug_kernel_malicious_appliance`: the evil-appliance run of `kclient_evil.rs` (every
//!   [`Mode`], module load, direct I/O, unload) on the debug kernel, held to the same per-mode
//!   verdict (`qemu_tests::evil_verdict`) as on the normal kernel.
//! - `debug_kernel_swap`: the swap workload (`compress=1`, verified byte for byte; two appliances
//!   with `replicas=2`, keyed sessions, `encrypt_pages=1`; kclient's failure-detection timeouts
//!   scaled to the slow kernel, see [`DEBUG_DOWN_AFTER_MS`]) at 224 MiB, 1.5x
//!   the ~147 MiB the debug kernel leaves free in a 256 MiB VM. Much shorter than
//!   `kclient_swap.rs`'s 768 MiB: under TCG the debug kernel swaps about 15x slower (384 MiB took
//!   16 minutes), and the point here is the checkers watching every path, not volume.
//!
//! Both also require the boot log to show KASAN and lockdep running (so the debug kernel really
//! booted) and lockdep still on at the end (it turns itself off after its first report).
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them).

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use qemu_tests::evil_appliance::Mode;
use qemu_tests::evil_verdict::{check_mode, failures, start_every_mode};
use qemu_tests::linux_vm::{
    assert_swap_verified, boot_client, debug_client_image, kernel_problems, num, parse_result,
    wait_exit,
};
use support::cluster::{client_args, cluster, targets};

const VM_MEMORY: &str = "256M";
const VM_CPUS: u32 = 2;
/// Workload of the swap test: 1.5x the memory the debug kernel leaves free (see the module docs).
const SWAP_MIB: u32 = 224;

/// kclient's `down_after_ms` in the swap test: the default (3 s) scaled by the ~15x the debug
/// kernel loses under TCG. Its requests took up to 4 s beside a kernel build (kclient's latency
/// histogram), so on a slower CI host queueing can pass for a stall: a reset, then repair
/// traffic on a kernel already short of CPU. Resets and repair under the checkers pass (a run
/// with `down_after_ms=700`), and `kclient_replicas.rs` tests detection times on the normal kernel.
const DEBUG_DOWN_AFTER_MS: u32 = 45_000;
/// kclient's `io_timeout_ms` in the swap test: the default (10 s) scaled alike, above
/// [`DEBUG_DOWN_AFTER_MS`] as kclient expects.
const DEBUG_IO_TIMEOUT_MS: u32 = 150_000;

/// What the debug kernel's checkers print (beyond the `WARNING:`/`BUG:` lines
/// `kernel_problems` already catches): KASAN, lockdep and atomic-sleep reports, and lockdep
/// switching itself off (after a report, or when its tables overflow).
const DEBUG_REPORTS: &[&str] = &[
    "BUG: KASAN",
    "KASAN:",
    "possible circular locking",
    "possible recursive locking",
    "inconsistent lock state",
    "lock order detected",
    "possible irq lock inversion",
    "suspicious RCU usage",
    "bad unlock balance",
    "held lock freed",
    "lock held when returning to user space",
    "Invalid wait context",
    "sleeping function called from invalid context",
    "scheduling while atomic",
    "turning off the locking correctness validator",
    "debug_locks_off",
];

/// Boot messages that prove the checkers run in this kernel.
const CHECKERS_ACTIVE: &[&str] = &[
    "KernelAddressSanitizer initialized",
    "Lock dependency validator",
];

/// Kernel problems and checker reports in (part of) a console log.
fn debug_reports(log: &str) -> Vec<String> {
    let mut found = kernel_problems(log);
    for line in log.lines() {
        // Once per line, though it may match both lists ("BUG: KASAN").
        if DEBUG_REPORTS.iter().any(|r| line.contains(r)) && !found.iter().any(|f| f == line) {
            found.push(line.to_string());
        }
    }
    found
}

/// Everything wrong in a debug-kernel console log: kernel problems and checker reports, or a
/// checker that is not running.
fn debug_findings(log: &str) -> Vec<String> {
    let mut found = debug_reports(log);
    for banner in CHECKERS_ACTIVE {
        if !log.contains(banner) {
            found.push(format!("not a debug kernel? no {banner:?} in the boot log"));
        }
    }
    found.dedup();
    found
}

/// The kernel's line just before it runs the initramfs's `/init`: nothing of ours has run yet.
const INIT_STARTS: &str = "Run /init as init process";
/// Boots per test: a second one only when the first one's checkers fired during the kernel's own
/// boot (see [`boot_only_reports`]).
const BOOT_ATTEMPTS: u32 = 2;

/// The checker reports of a log, if every one of them came before `/init` ran: the debug kernel's
/// own boot, before kclient can be loaded. Such a boot checks nothing of ours (KASAN reports only
/// its first finding, lockdep turns itself off after one), so it is booted again. Seen once in CI
/// (2026-12-07): KASAN "wild-memory-access in do_raw_spin_lock" at 0.39 s, between timer
/// migration set-up and secondary CPU bring-up; not reproduced in local runs.
fn boot_only_reports(log: &str) -> Option<Vec<String>> {
    let (boot, after) = log.split_once(INIT_STARTS)?;
    let before = debug_reports(boot);
    (!before.is_empty() && debug_reports(after).is_empty()).then_some(before)
}

/// Runs `append` on the debug kernel until `TMEM-RESULT` (bounded by `limit`) and power-off;
/// fails on any kernel problem or checker report. Returns the result line, the console log and
/// how long the VM ran.
fn run_debug_vm(
    name: &str,
    append: &str,
    limit: Duration,
) -> (HashMap<String, String>, String, Duration) {
    for attempt in 1..=BOOT_ATTEMPTS {
        let (result, log, elapsed, log_path) = boot_debug_vm(name, append, limit);
        if attempt < BOOT_ATTEMPTS {
            if let Some(reports) = boot_only_reports(&log) {
                eprintln!(
                    "{name}: the debug kernel's own boot (before /init, so before kclient) \
                     reported {reports:#?}\nits checkers are off for the rest of that boot, so \
                     it checked nothing of kclient: booting again (log: {})",
                    log_path.display()
                );
                continue;
            }
        }
        let findings = debug_findings(&log);
        assert!(
            findings.is_empty(),
            "{name}: the debug kernel reported problems: {findings:#?}\nlog: {}",
            log_path.display()
        );
        let result = result.expect("TMEM-RESULT line");
        assert_eq!(num(&result, "oops"), Some(0), "{result:?}");
        return (result, log, elapsed);
    }
    unreachable!("the last attempt returns or panics")
}

/// One boot of the debug kernel: its result line (None if the run never printed one, which
/// the checks then report), console log, run time and log file. Panics if the VM did not
/// finish or power off.
fn boot_debug_vm(
    name: &str,
    append: &str,
    limit: Duration,
) -> (
    Option<HashMap<String, String>>,
    String,
    Duration,
    std::path::PathBuf,
) {
    let image = debug_client_image();
    let start = Instant::now();
    // loglevel=7: KASAN's start-up line is KERN_INFO, which the default loglevel=6 hides.
    // watchdog_thresh=60 (soft lockups reported after 120 s instead of 20 s): under TCG on a
    // busy 2-core host the KASAN kernel's own boot (PID 1 still `swapper`) once held a vCPU for
    // 26 s; a real lockup in kclient still shows, and the test's time limits catch a hang.
    // rcu_cpu_stall_timeout=120 for the same boot stall, which RCU's detector (21 s) reported
    // in one run (unpacking the initramfs under KASAN, "rcu_sched kthread starved").
    let append =
        format!("{append} loglevel=7 watchdog_thresh=60 rcupdate.rcu_cpu_stall_timeout=120");
    let mut vm = boot_client(name, &image, VM_MEMORY, VM_CPUS, &append).expect("boot client VM");
    let waited = vm.wait_for_output("TMEM-RESULT", limit);
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let elapsed = start.elapsed();
    let log = vm.output();
    let log_path = vm.log_path().to_path_buf();
    if boot_only_reports(&log).is_some() {
        // A boot stopped by its own kernel's bug is the caller's to judge, result or not.
        return (parse_result(&log), log, elapsed, log_path);
    }
    waited.unwrap_or_else(|e| {
        panic!(
            "{name}: no result within {limit:?}: {e}\nlog: {}",
            log_path.display()
        )
    });
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("{name}: {result:?} (VM ran {elapsed:.1?})");
    assert!(exited, "{name}: VM did not power off");
    (Some(result), log, elapsed, log_path)
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn debug_kernel_malicious_appliance() {
    let (_servers, spec) = start_every_mode();
    let append = format!("tmem_test=evil tmem_evil={spec} tmem_timeout_ms=2000");
    let (result, log, _) = run_debug_vm("kclient_debug_evil", &append, Duration::from_secs(1200));
    assert_eq!(
        num(&result, "modes"),
        Some(Mode::ALL.len() as i64),
        "every mode must run: {result:?}"
    );
    // The same verdict as on the normal kernel (kclient_evil.rs).
    let failures = failures(&log, check_mode);
    assert!(
        failures.is_empty(),
        "kclient on the debug kernel:\n{}",
        failures.join("\n")
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn debug_kernel_swap() {
    // Every new path under the checkers: two replicas, keyed (Noise) sessions, sealed pages.
    let nodes = cluster(2, "2GiB");
    let append = format!(
        "tmem_test=swap tmem_target={} tmem_size=1G tmem_mib={SWAP_MIB} tmem_compress=1 \
         tmem_replicas=2 tmem_encrypt=1 tmem_down_ms={DEBUG_DOWN_AFTER_MS} \
         tmem_timeout_ms={DEBUG_IO_TIMEOUT_MS} {}",
        targets(&nodes),
        client_args()
    );
    let (result, log, _) = run_debug_vm("kclient_debug_swap", &append, Duration::from_secs(1200));
    assert_swap_verified(&result, &log);
    assert!(
        num(&result, "pages_sealed").unwrap_or(0) > 1000,
        "sealed pages: {result:?}"
    );
    drop(nodes);
}

#[test]
fn only_reports_before_init_make_a_boot_not_count() {
    let report = "[    0.388350] BUG: KASAN: wild-memory-access in do_raw_spin_lock+0xe5/0x2a0";
    let init = "[   12.180116] Run /init as init process";
    let ours = "[   40.000000] BUG: KASAN: slab-use-after-free in kclient_recv+0x10/0x20";
    let boot_bug = format!("{report}\n{init}\nTMEM-RESULT test=evil\n");
    assert_eq!(
        boot_only_reports(&boot_bug),
        Some(vec![report.to_string()]),
        "a report before /init is the kernel's own boot"
    );
    let both = format!("{report}\n{init}\n{ours}\n");
    assert_eq!(boot_only_reports(&both), None, "one after /init is ours");
    assert_eq!(boot_only_reports(&format!("{init}\n{ours}\n")), None);
    assert_eq!(boot_only_reports(&format!("{init}\nclean\n")), None);
    assert_eq!(
        boot_only_reports(report),
        None,
        "no /init: the boot never ended"
    );
}
