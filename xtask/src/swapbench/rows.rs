//! The swap bench's results: one [`Row`] per `TMEM-BENCH` console line, the CSV they are kept in
//! (`target/swapbench/results.csv`), and the pick of each cell's median run.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use qemu_tests::linux_vm::tagged_lines;

/// One `TMEM-BENCH` line.
#[derive(Clone, Debug)]
pub(super) struct Row {
    pub(super) backend: String,
    pub(super) workload: String,
    pub(super) mib: u64,
    pub(super) fields: BTreeMap<String, String>,
}

impl Row {
    /// A row from its `key=value` fields (`backend`, `workload`, `mib` and the measurements).
    pub(super) fn new(fields: BTreeMap<String, String>) -> Row {
        Row {
            backend: fields.get("backend").cloned().unwrap_or_default(),
            workload: fields.get("workload").cloned().unwrap_or_default(),
            mib: fields.get("mib").and_then(|v| v.parse().ok()).unwrap_or(0),
            fields,
        }
    }

    pub(super) fn num(&self, key: &str) -> f64 {
        self.fields
            .get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }
    pub(super) fn ok(&self) -> bool {
        self.fields.get("status").map(String::as_str) == Some("ok")
    }
}

/// The `TMEM-BENCH` lines of a console log.
pub(super) fn parse_rows(log: &str) -> Vec<Row> {
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

pub(super) fn write_csv(path: &Path, rows: &[Row]) -> Result<()> {
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

pub(super) fn read_csv(path: &Path) -> Result<Vec<Row>> {
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
pub(super) fn runs<'a>(rows: &'a [Row], backend: &str, workload: &str, mib: u64) -> Vec<&'a Row> {
    let mut ok: Vec<&Row> = rows
        .iter()
        .filter(|r| r.backend == backend && r.workload == workload && r.mib == mib && r.ok())
        .collect();
    ok.sort_by(|a, b| a.num("ms").total_cmp(&b.num("ms")));
    ok
}

/// The cell's median run (the lower middle one of an even count): its time goes in the tables,
/// its counters in the traffic table.
pub(super) fn find<'a>(
    rows: &'a [Row],
    backend: &str,
    workload: &str,
    mib: u64,
) -> Option<&'a Row> {
    let ok = runs(rows, backend, workload, mib);
    ok.get(ok.len().saturating_sub(1) / 2).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

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
