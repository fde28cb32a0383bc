//! What a client VM must show against each malicious [`Mode`] (`tmem_test=evil`, one
//! `TMEM-EVIL mode=... key=value ...` line per mode): one verdict for the normal and the debug
//! client kernel, so both tests hold kclient to the same rules.

use std::collections::HashMap;

use crate::evil_appliance::{EvilAppliance, Mode};
use crate::linux_vm::{num, tagged_lines};

/// One server per [`Mode::ALL`], and the `tmem_evil=` value that names them to the guest.
pub fn start_every_mode() -> (Vec<EvilAppliance>, String) {
    let servers: Vec<EvilAppliance> = Mode::ALL
        .iter()
        .map(|&m| EvilAppliance::start(m).expect("start evil appliance"))
        .collect();
    let spec: Vec<String> = servers
        .iter()
        .map(|s| format!("{}:{}", s.mode().name(), s.port()))
        .collect();
    (servers, spec.join(","))
}

/// The `TMEM-EVIL mode=... key=value ...` lines of a console log, by mode.
pub fn mode_results(log: &str) -> HashMap<String, HashMap<String, String>> {
    tagged_lines(log, "TMEM-EVIL")
        .map(|kv: HashMap<String, String>| (kv.get("mode").cloned().unwrap_or_default(), kv))
        .collect()
}

/// A mode line's `key` (empty if absent).
pub fn field<'a>(r: &'a HashMap<String, String>, key: &str) -> &'a str {
    r.get(key).map(String::as_str).unwrap_or("")
}

/// Records `what` as wrong unless `ok`.
fn expect(bad: &mut Vec<String>, ok: bool, what: &str) {
    if !ok {
        bad.push(what.to_string());
    }
}

/// Checks one mode's outcome; returns what is wrong (empty: fine).
pub fn check_mode(mode: Mode, r: &HashMap<String, String>) -> Vec<String> {
    let mut bad = Vec::new();
    let n = |k: &str| num(r, k).unwrap_or(-1);
    if mode.breaks_handshake() {
        // insmod must fail (no device), quickly, and leave nothing behind.
        expect(&mut bad, n("insmod") > 0, "insmod must fail");
        expect(&mut bad, field(r, "rmmod") == "na", "nothing to unload");
        expect(
            &mut bad,
            n("hang") == 0,
            "a command had to be killed (hang)",
        );
        expect(
            &mut bad,
            n("seconds") >= 0 && n("seconds") < 30,
            "a broken handshake must fail within the I/O timeout",
        );
        return bad;
    }
    // Every mode: loads, the honest pages are stored, nothing hangs, nothing wrong is accepted,
    // and the module unloads.
    expect(&mut bad, n("insmod") == 0, "insmod failed");
    expect(
        &mut bad,
        n("w1") == 0,
        "write of the honestly stored pages failed",
    );
    expect(
        &mut bad,
        n("hang") == 0,
        "an I/O command had to be killed (hang)",
    );
    expect(
        &mut bad,
        n("r1_bad") == 0,
        "a single-page read returned wrong data",
    );
    expect(
        &mut bad,
        field(r, "r2") != "bad",
        "the 4-page read returned wrong data",
    );
    expect(&mut bad, n("rmmod") == 0, "rmmod failed");
    expect(
        &mut bad,
        n("seconds") >= 0 && n("seconds") < 120,
        "mode took too long (>= 120 s)",
    );
    let errors_expected = |bad: &mut Vec<String>| {
        for (ok, what) in [
            (n("r1_fail") == 4, "single-page reads must all fail"),
            (field(r, "r2") == "fail", "the 4-page read must fail"),
            (
                n("w2") > 0,
                "the write the appliance misbehaves on must fail",
            ),
            (
                [
                    "failed_gets",
                    "failed_puts",
                    "failed_requests",
                    "timeouts",
                    "protocol_errors",
                ]
                .iter()
                .map(|k| n(k).max(0))
                .sum::<i64>()
                    > 0,
                "the failures must show in kclient's counters",
            ),
        ] {
            if !ok {
                bad.push(what.to_string());
            }
        }
    };
    match mode {
        Mode::Honest => {
            expect(
                &mut bad,
                n("r1_ok") == 4,
                "honest single-page reads must succeed",
            );
            expect(
                &mut bad,
                field(r, "r2") == "ok",
                "honest 4-page read must succeed",
            );
            expect(&mut bad, n("w2") == 0, "honest write must succeed");
            for k in [
                "protocol_errors",
                "checksum_errors",
                "failed_requests",
                "timeouts",
            ] {
                expect(
                    &mut bad,
                    n(k) == 0,
                    &format!("{k} must stay 0 with an honest appliance"),
                );
            }
        }
        Mode::Garbage | Mode::Oversized => {
            errors_expected(&mut bad);
            expect(
                &mut bad,
                n("protocol_errors") > 0,
                "protocol_errors must rise",
            );
        }
        Mode::Truncated => {
            errors_expected(&mut bad);
            expect(
                &mut bad,
                n("failed_requests") > 0,
                "failed_requests must rise",
            );
        }
        Mode::WrongId => {
            errors_expected(&mut bad);
            expect(&mut bad, n("stale_replies") > 0, "stale_replies must rise");
            expect(
                &mut bad,
                n("protocol_errors") > 0,
                "out-of-range parts must count as protocol_errors",
            );
        }
        Mode::Duplicate => {
            // Single-page requests got one correct answer each; multi-page ones duplicates.
            expect(
                &mut bad,
                n("r1_ok") == 4,
                "correctly answered single-page reads succeed",
            );
            expect(
                &mut bad,
                field(r, "r2") == "fail",
                "a read answered with duplicates must fail",
            );
            expect(
                &mut bad,
                n("w2") > 0,
                "a write answered with duplicates must fail",
            );
            expect(
                &mut bad,
                n("protocol_errors") > 0,
                "protocol_errors must rise",
            );
        }
        Mode::BadReply => {
            errors_expected(&mut bad);
            expect(
                &mut bad,
                n("checksum_errors") > 0,
                "checksum_errors must rise",
            );
            expect(
                &mut bad,
                n("protocol_errors") > 0,
                "protocol_errors must rise",
            );
        }
        Mode::Unsolicited => {
            errors_expected(&mut bad);
            expect(
                &mut bad,
                n("protocol_errors") > 0,
                "protocol_errors must rise",
            );
            expect(
                &mut bad,
                n("stale_replies") > 0,
                "unsolicited replies must count as stale",
            );
        }
        Mode::Stall => {
            errors_expected(&mut bad);
            expect(
                &mut bad,
                n("stalls") > 0,
                "the failure detector must reset the stalled connection (stalls)",
            );
        }
        Mode::HelloGarbage | Mode::HelloStall => {}
    }
    bad
}

/// Every mode's failures in `log` by `check` (e.g. [`check_mode`]; a missing line is one),
/// `mode: what (its line)` each.
pub fn failures(
    log: &str,
    mut check: impl FnMut(Mode, &HashMap<String, String>) -> Vec<String>,
) -> Vec<String> {
    let modes = mode_results(log);
    let mut failures = Vec::new();
    for mode in Mode::ALL {
        let Some(r) = modes.get(mode.name()) else {
            failures.push(format!("{}: no TMEM-EVIL line", mode.name()));
            continue;
        };
        for what in check(mode, r) {
            failures.push(format!("{}: {what} ({r:?})", mode.name()));
        }
    }
    failures
}
