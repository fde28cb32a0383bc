//! kclient on the debug client kernel (`cargo xtask client-image --debug`, `target/images/debug/`):
//! lockdep (`PROVE_LOCKING`), generic KASAN and `DEBUG_ATOMIC_SLEEP`. Any report of theirs fails.
//!
//! - `debug_kernel_malicious_appliance`: the evil-appliance run of `kclient_evil.rs` (every
//!   [`Mode`], module load, direct I/O, unload) on the debug kernel. It checks what the checkers
//!   need to have seen (every mode ran, nothing hung, no wrong data, every loaded module unloaded);
//!   the per-mode error semantics are `kclient_evil.rs`'s job on the normal kernel.
//! - `debug_kernel_swap`: the swap workload (`compress=1`, verified byte for byte; two appliances
//!   with `replicas=2`, keyed sessions, `encrypt_pages=1`) at 224 MiB, 1.5x
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

use qemu_tests::evil_appliance::{EvilAppliance, Mode};
use qemu_tests::linux_vm::{
    boot_client, debug_client_image, kernel_problems, num, parse_result, tagged_lines, wait_exit,
};
use support::cluster::{client_args, cluster, targets};

const VM_MEMORY: &str = "256M";
const VM_CPUS: u32 = 2;
/// Workload of the swap test: 1.5x the memory the debug kernel leaves free (see the module docs).
const SWAP_MIB: u32 = 224;

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

/// Everything wrong in a debug-kernel console log: kernel problems and checker reports, or a
/// checker that is not running.
fn debug_findings(log: &str) -> Vec<String> {
    let mut found = kernel_problems(log);
    found.extend(
        log.lines()
            .filter(|l| DEBUG_REPORTS.iter().any(|r| l.contains(r)))
            .map(str::to_string),
    );
    for banner in CHECKERS_ACTIVE {
        if !log.contains(banner) {
            found.push(format!("not a debug kernel? no {banner:?} in the boot log"));
        }
    }
    found.dedup();
    found
}

/// Runs `append` on the debug kernel until `TMEM-RESULT` (bounded by `limit`) and power-off;
/// fails on any kernel problem or checker report. Returns the result line, the console log and
/// how long the VM ran.
fn run_debug_vm(
    name: &str,
    append: &str,
    limit: Duration,
) -> (HashMap<String, String>, String, Duration) {
    let image = debug_client_image();
    let start = Instant::now();
    // loglevel=7: KASAN's start-up line is KERN_INFO, which the default loglevel=6 hides.
    // watchdog_thresh=60 (soft lockups reported after 120 s instead of 20 s): under TCG on a
    // busy 2-core host the KASAN kernel's own boot (PID 1 still `swapper`) once held a vCPU for
    // 26 s; a real lockup in kclient still shows, and the test's time limits catch a hang.
    let append = format!("{append} loglevel=7 watchdog_thresh=60");
    let mut vm = boot_client(name, &image, VM_MEMORY, VM_CPUS, &append).expect("boot client VM");
    let waited = vm.wait_for_output("TMEM-RESULT", limit);
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let elapsed = start.elapsed();
    let log = vm.output();
    waited.unwrap_or_else(|e| {
        panic!(
            "{name}: no result within {limit:?}: {e}\nlog: {}",
            vm.log_path().display()
        )
    });
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("{name}: {result:?} (VM ran {elapsed:.1?})");
    let findings = debug_findings(&log);
    assert!(
        findings.is_empty(),
        "{name}: the debug kernel reported problems: {findings:#?}\nlog: {}",
        vm.log_path().display()
    );
    assert_eq!(num(&result, "oops"), Some(0), "{result:?}");
    assert!(exited, "{name}: VM did not power off");
    (result, log, elapsed)
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn debug_kernel_malicious_appliance() {
    let servers: Vec<EvilAppliance> = Mode::ALL
        .iter()
        .map(|&m| EvilAppliance::start(m).expect("start evil appliance"))
        .collect();
    let spec: Vec<String> = servers
        .iter()
        .map(|s| format!("{}:{}", s.mode().name(), s.port()))
        .collect();
    let append = format!(
        "tmem_test=evil tmem_evil={} tmem_timeout_ms=2000",
        spec.join(",")
    );
    let (result, log, _) = run_debug_vm("kclient_debug_evil", &append, Duration::from_secs(1200));
    assert_eq!(
        num(&result, "modes"),
        Some(Mode::ALL.len() as i64),
        "every mode must run: {result:?}"
    );
    let modes: HashMap<String, HashMap<String, String>> = tagged_lines(&log, "TMEM-EVIL")
        .map(|kv: HashMap<String, String>| (kv.get("mode").cloned().unwrap_or_default(), kv))
        .collect();
    let mut failures = Vec::new();
    for mode in Mode::ALL {
        let Some(r) = modes.get(mode.name()) else {
            failures.push(format!("{}: no TMEM-EVIL line", mode.name()));
            continue;
        };
        let n = |k: &str| num(r, k).unwrap_or(-1);
        let field = |k: &str| r.get(k).map(String::as_str).unwrap_or("");
        let mut check = |ok: bool, what: &str| {
            if !ok {
                failures.push(format!("{}: {what} ({r:?})", mode.name()));
            }
        };
        check(n("hang") == 0, "a command had to be killed (hang)");
        if mode.breaks_handshake() {
            check(n("insmod") > 0, "insmod must fail");
            continue;
        }
        check(n("insmod") == 0, "insmod failed");
        check(n("rmmod") == 0, "rmmod failed");
        check(n("r1_bad") == 0, "a single-page read returned wrong data");
        check(field("r2") != "bad", "the 4-page read returned wrong data");
        if mode == Mode::Honest {
            check(
                n("r1_ok") == 4 && field("r2") == "ok" && n("w2") == 0,
                "honest I/O must succeed",
            );
        }
    }
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
         tmem_replicas=2 tmem_encrypt=1 {}",
        targets(&nodes),
        client_args()
    );
    let (result, log, _) = run_debug_vm("kclient_debug_swap", &append, Duration::from_secs(1200));
    for key in ["insmod", "mkswap", "swapon", "workload", "swapoff", "rmmod"] {
        assert_eq!(num(&result, key), Some(0), "{key} failed: {result:?}");
    }
    assert_eq!(result.get("status").map(String::as_str), Some("pass"));
    assert!(
        log.contains("TMEM-WORKLOAD status=ok"),
        "workload did not verify"
    );
    let stored = num(&result, "pages_stored").unwrap_or(0);
    let loaded = num(&result, "pages_loaded").unwrap_or(0);
    assert!(
        stored > 1000 && loaded > 1000,
        "pages must go to the appliance and come back: {result:?}"
    );
    for key in [
        "failed_requests",
        "checksum_errors",
        "lost_pages",
        "protocol_errors",
    ] {
        assert_eq!(num(&result, key), Some(0), "{key} nonzero: {result:?}");
    }
    assert!(
        num(&result, "pages_sealed").unwrap_or(0) > 1000,
        "sealed pages: {result:?}"
    );
    drop(nodes);
}
