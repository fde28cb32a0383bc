//! The checks every appliance VM test runs the same way: the keyed conformance suite and a
//! verified `tmemctl bench`, failing with the VM's log; and keys written as the appliance takes them.

#![allow(dead_code)] // not every test file uses every helper

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use qemu_tests::{run_bounded, workspace_binary, Qemu};

/// A key as hex, as `--key ID:HEX`, tmem.conf and `TMEM_KEY` take it.
pub fn key_hex(key: &[u8; 32]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// `ID:HEX` for each key (the appliance's `--key` arguments).
pub fn key_args(keys: &HashMap<u64, [u8; 32]>) -> Vec<String> {
    keys.iter()
        .map(|(id, k)| format!("{id:#x}:{}", key_hex(k)))
        .collect()
}

/// Appliance arguments for a conformance run with `keys`: a 256 MiB store, `frame_timeout`,
/// warnings only, and `--key ID:HEX` for each key.
pub fn keyed_conformance_args(
    keys: &HashMap<u64, [u8; 32]>,
    frame_timeout: Duration,
) -> Vec<String> {
    let mut args: Vec<String> = ["--memory", "256MiB", "--frame-timeout"]
        .map(String::from)
        .into();
    args.push(frame_timeout.as_secs().to_string());
    args.extend(["--log-level", "warn"].map(String::from));
    for k in key_args(keys) {
        args.extend(["--key".to_string(), k]);
    }
    args
}

/// How long one read or write of the suite may wait in a VM test: a TCG guest on a busy CI host
/// can pause for more than the suite's default 10 s (a CI run once timed out on a HELLO reply
/// that a local run answers in 10 ms).
const VM_IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The conformance and robustness suite against `addr`, sessions keyed with `keys` (None: the
/// appliance serves clients without keys); `frame_timeout` is the appliance's. A failure quotes
/// the end of the VM's console log (CI keeps no files).
pub fn conformance_passes(
    addr: &str,
    frame_timeout: Duration,
    keys: Option<HashMap<u64, [u8; 32]>>,
    vm: &Qemu,
) {
    let opts = tmemctl::conformance::Options {
        frame_timeout,
        idle_connections: 64,
        io_timeout: VM_IO_TIMEOUT,
        keys,
    };
    let start = Instant::now();
    let result = tmemctl::conformance::run_all(addr, &opts, |name, r| match r {
        Ok(()) => eprintln!("ok    {name} ({:.1?})", start.elapsed()),
        Err(e) => eprintln!("FAIL  {name}: {e:#}"),
    });
    if let Err(e) = result {
        panic!("{e:#}\n{}", vm.log_tail());
    }
}

/// `tmemctl bench` of `pages` (2 connections x depth 8 x batch 16, synthetic corpus, at most
/// 240 s) against `addr`, as `(id, key)` if given, plus `extra` arguments (e.g. `--keep`): it must
/// succeed with every page verified and none refused. Returns its summary.
pub fn verified_bench(
    addr: &str,
    identity: Option<(u64, &[u8; 32])>,
    pages: u64,
    extra: &[&str],
    vm: &Qemu,
) -> BTreeMap<String, String> {
    let mut cmd = Command::new(workspace_binary("tmemctl"));
    if let Some((id, key)) = identity {
        cmd.env("TMEM_KEY", key_hex(key))
            .args(["--client-id", &format!("{id:#x}")]);
    }
    cmd.args(["--target", addr, "bench", "--pages", &pages.to_string()])
        .args(["--threads", "2", "--depth", "8", "--batch", "16"])
        .args(["--corpus", "synthetic", "--max-seconds", "240"])
        .args(extra);
    let out = run_bounded(cmd, Duration::from_secs(300)).expect("tmemctl bench finished");
    eprintln!("{}", out.stdout.trim_end());
    assert!(
        out.status.success(),
        "tmemctl bench failed ({}): {}\n{}\nVM log {}",
        out.status,
        out.stdout,
        out.stderr,
        vm.log_path().display()
    );
    let summary = out.summary();
    assert_eq!(
        summary.get("mismatches").map(String::as_str),
        Some("0"),
        "{summary:?}"
    );
    assert_eq!(
        summary.get("refused").map(String::as_str),
        Some("0"),
        "{summary:?}"
    );
    summary
}
