//! The swap bench's markdown: the time table (medians of the rounds with their spread, ratios to
//! the all-in-RAM run and to NBD) and the traffic table, for `docs/benchmarks.md`.

use std::fmt::Write as _;
use std::time::Duration;

use super::rows::{find, runs, Row};
use super::{join, SwapBenchArgs};

pub(super) fn secs(rows: &[Row], backend: &str, workload: &str, mib: u64) -> String {
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

pub(super) fn ratio(a: Option<&Row>, b: Option<&Row>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b.num("ms") > 0.0 => format!("{:.2}x", a.num("ms") / b.num("ms")),
        _ => "-".into(),
    }
}

/// (a - floor) / (b - floor): how much time above the no-network floor (disk) `a` adds compared
/// with `b`.
pub(super) fn over_floor(a: Option<&Row>, b: Option<&Row>, floor: Option<&Row>) -> String {
    match (a, b, floor) {
        (Some(a), Some(b), Some(f)) if b.num("ms") > f.num("ms") => format!(
            "{:.2}",
            (a.num("ms") - f.num("ms")) / (b.num("ms") - f.num("ms"))
        ),
        _ => "-".into(),
    }
}

/// Backends compared with plain `kclient` in their own column (`X / kclient`).
fn kclient_variants<'a>(backends: &[&'a str]) -> Vec<&'a str> {
    backends
        .iter()
        .copied()
        .filter(|b| {
            b.starts_with("kclient-") && ["-r2", "-noise", "-sealed"].iter().any(|v| b.contains(v))
        })
        .collect()
}

pub(super) fn mib(bytes: f64) -> String {
    if bytes.is_nan() {
        "-".into()
    } else {
        format!("{:.0}", bytes / 1048576.0)
    }
}

pub(super) fn render(args: &SwapBenchArgs, rows: &[Row], took: Duration) -> String {
    let mut t = String::new();
    let backends: Vec<&str> = args.backends.iter().map(String::as_str).collect();
    let swap_backends: Vec<&str> = backends.iter().copied().filter(|b| *b != "ram").collect();
    let _ = write!(
        t,
        "Command: `cargo xtask bench --swap` (sizes {} MiB, workloads {}, backends {}, network {}, \
         guest crypto {}{}). \
         Client VM: our Linux 6.12 kernel, {} MiB RAM, {} vCPUs, QEMU TCG (no KVM) on a 2-core machine \
         shared with other work, so absolute times are slow and noisy: compare ratios within this run only. \
         The `ram` run boots the same VM with {} MiB so nothing swaps (the lower bound). Each backend is \
         one VM boot running every workload x size in sequence (drop_caches between runs); {} round(s): \
         every round boots each backend's VM afresh, backends alternating; times are the median \
         (min-max) of the rounds, ratios are of medians, and kclient-hermit and kclient-linuxvm run in round 1 only; \
         working sets above {} MiB run only seq (above {} MiB for those two).\n\n",
        join(&args.sizes),
        args.workloads.join(","),
        backends.join(","),
        args.net,
        args.guest_crypto,
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
         on user networking), reached through the port its QEMU forwards from 10.0.2.2; **kclient-linuxvm** = \
         the same with the appliance as a static Linux binary in a Linux VM of the same size (our client kernel, \
         busybox), its like-for-like peer; **kclient-lz4** = kclient with `compress=1`; **nbd** = the kernel's nbd driver (set up by our \
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
    let mut heads: Vec<String> = backends.iter().map(|b| format!("{b} s")).collect();
    // Ratio columns only against the peers this run has (a run of kclient variants alone has
    // no ram, nbd or disk).
    let has = |b: &str| backends.contains(&b);
    let ram_cols: &[&str] = if has("ram") { &swap_backends } else { &[] };
    let nbd_cols = has("nbd") && has("kclient");
    heads.extend(ram_cols.iter().map(|b| format!("{b} / ram")));
    let variants = kclient_variants(&backends);
    if nbd_cols {
        heads.push("kclient / nbd".into());
        if has("disk") {
            heads.push("disk / nbd".into());
            heads.push("(kclient - disk) / (nbd - disk)".into());
        }
    }
    for v in &variants {
        heads.push(format!("{v} / kclient"));
        if nbd_cols {
            heads.push(format!("{v} / nbd"));
        }
    }
    for h in &heads {
        let _ = write!(t, " {h} |");
    }
    let _ = writeln!(t, "\n|---|---|---|{}", "---|".repeat(heads.len()));
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
            for b in ram_cols {
                let _ = write!(t, " {} |", ratio(find(rows, b, w, m), ram));
            }
            let nbd = find(rows, "nbd", w, m);
            let (kclient, disk) = (find(rows, "kclient", w, m), find(rows, "disk", w, m));
            if nbd_cols {
                let _ = write!(t, " **{}** |", ratio(kclient, nbd));
                if has("disk") {
                    let _ = write!(
                        t,
                        " {} | {} |",
                        ratio(disk, nbd),
                        over_floor(kclient, nbd, disk)
                    );
                }
            }
            for v in &variants {
                let row = find(rows, v, w, m);
                let _ = write!(t, " **{}** |", ratio(row, kclient));
                if nbd_cols {
                    let _ = write!(t, " {} |", ratio(row, nbd));
                }
            }
            t.push('\n');
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
    // Only the main run draws the plot; other sections would point at another run's picture.
    if args.section == "swap-bench" {
        t.push_str("\n![swap benchmark: time vs working set](swap-bench.png)\n");
    }
    t
}

#[cfg(test)]
mod tests {
    use super::super::rows::parse_rows;
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
    fn every_time_row_has_as_many_cells_as_the_header() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            swap: SwapBenchArgs,
        }
        let log = ["ram", "kclient", "kclient-noise", "nbd", "disk"]
            .iter()
            .map(|b| format!("TMEM-BENCH backend={b} workload=seq mib=64 status=ok ms=1000\n"))
            .collect::<String>();
        let rows = parse_rows(&log);
        for backends in [
            "ram,kclient,kclient-noise,nbd,disk",
            "kclient,kclient-noise",
            "kclient,nbd",
        ] {
            let args = <Cli as clap::Parser>::parse_from([
                "bench",
                "--swap-backends",
                backends,
                "--swap-sizes",
                "64",
                "--swap-workloads",
                "seq",
            ])
            .swap;
            let table = render(&args, &rows, Duration::ZERO);
            let lines: Vec<&str> = table
                .lines()
                .filter(|l| l.starts_with('|'))
                .take(3)
                .collect();
            let cells = |l: &str| l.matches('|').count();
            assert_eq!(cells(lines[0]), cells(lines[1]), "{backends}: {table}");
            assert_eq!(cells(lines[0]), cells(lines[2]), "{backends}: {table}");
            assert_eq!(
                lines[0].contains("/ nbd"),
                backends.contains("nbd"),
                "{backends}"
            );
        }
    }
}
