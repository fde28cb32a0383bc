//! End to end over real TCP: the `tmemctl` binary benchmarks and reads stats from a live appliance.

mod common;

use common::TestAppliance;
use std::process::Command;
use std::time::Duration;

fn tmemctl(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tmemctl"))
        .args(args)
        .output()
        .expect("run tmemctl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn summary_value(stdout: &str, key: &str) -> String {
    let last = stdout.lines().last().unwrap_or_default();
    last.split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in summary: {last}"))
        .to_string()
}

#[test]
fn bench_verifies_every_page_single_and_batched() {
    let app = TestAppliance::start(256 << 20, Duration::from_secs(5));
    for batch in ["1", "16"] {
        let (ok, stdout, stderr) = tmemctl(&[
            "--target",
            &app.target(),
            "bench",
            "--pages",
            "3000",
            "--threads",
            "2",
            "--depth",
            "8",
            "--batch",
            batch,
            "--max-seconds",
            "60",
        ]);
        assert!(ok, "bench failed: {stderr}");
        assert_eq!(summary_value(&stdout, "mismatches"), "0");
        assert_eq!(summary_value(&stdout, "refused"), "0");
        let ratio: f64 = summary_value(&stdout, "compression_ratio").parse().unwrap();
        assert!(ratio > 1.5, "synthetic corpus compresses: {ratio}");
        assert!(summary_value(&stdout, "ops_s").parse::<f64>().unwrap() > 0.0);
    }
}

#[test]
fn bench_verifies_every_page_on_the_event_loop_server() {
    let app = TestAppliance::start_with(
        256 << 20,
        Duration::from_secs(5),
        appliance::server::IoModel::EventLoop,
    );
    let (ok, stdout, stderr) = tmemctl(&[
        "--target",
        &app.target(),
        "bench",
        "--pages",
        "5000",
        "--threads",
        "4",
        "--depth",
        "16",
        "--batch",
        "8",
    ]);
    assert!(ok, "bench failed: {stderr}");
    assert_eq!(summary_value(&stdout, "mismatches"), "0");
}

#[test]
fn bench_with_client_side_compression() {
    let app = TestAppliance::start(256 << 20, Duration::from_secs(5));
    let (ok, stdout, stderr) = tmemctl(&[
        "--target",
        &app.target(),
        "bench",
        "--pages",
        "2000",
        "--batch",
        "8",
        "--client-lz4",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(summary_value(&stdout, "mismatches"), "0");
}

#[test]
fn bench_on_live_process_memory() {
    let app = TestAppliance::start(256 << 20, Duration::from_secs(5));
    let (ok, stdout, stderr) = tmemctl(&[
        "--target",
        &app.target(),
        "bench",
        "--pages",
        "4000",
        "--batch",
        "16",
        "--corpus",
        "process",
    ]);
    assert!(ok, "{stderr}");
    assert_eq!(summary_value(&stdout, "mismatches"), "0");
    assert_eq!(summary_value(&stdout, "corpus"), "process");
}

#[test]
fn bench_fails_when_the_appliance_refuses_pages() {
    // 2 MiB cannot hold 3000 random-ish pages: puts are refused, and the bench must not pass.
    let app = TestAppliance::start(2 << 20, Duration::from_secs(5));
    let (ok, stdout, _) = tmemctl(&[
        "--target",
        &app.target(),
        "bench",
        "--pages",
        "3000",
        "--batch",
        "4",
    ]);
    assert!(!ok, "a bench that lost pages must fail");
    assert_ne!(summary_value(&stdout, "refused"), "0");
}

#[test]
fn stats_table_json_and_prometheus() {
    let app = TestAppliance::start(64 << 20, Duration::from_secs(5));
    let (ok, _, stderr) = tmemctl(&[
        "--target",
        &app.target(),
        "bench",
        "--pages",
        "500",
        "--keep",
    ]);
    assert!(ok, "{stderr}");
    let (ok, table, _) = tmemctl(&["--target", &app.target(), "stats"]);
    assert!(ok);
    assert!(table.contains("compression_ratio"), "{table}");
    let (ok, json, _) = tmemctl(&["--target", &app.target(), "stats", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v[0]["pages"], 500);
    assert_eq!(v[0]["puts"], 500);
    assert_eq!(v[0]["memory_limit"], 64 << 20);
    let (ok, prom, _) = tmemctl(&["--target", &app.target(), "stats", "--prometheus"]);
    assert!(ok);
    assert!(
        prom.contains(&format!("tmem_pages{{target=\"{}\"}} 500", app.target())),
        "{prom}"
    );
    assert!(prom.contains("# TYPE tmem_puts_total counter"));
}

#[test]
fn stats_reports_unreachable_appliance() {
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _, stderr) = tmemctl(&["--target", &free.to_string(), "stats"]);
    assert!(!ok);
    assert!(stderr.contains("connecting to appliance"), "{stderr}");
}

/// A sealed page of the largest size (4,096 + tag) comes back whole, alone and in a batch (the
/// appliance once sized single-page replies for 4 KiB and answered INTERNAL).
#[test]
fn sealed_pages_of_full_size_come_back() {
    use protocol::{Encoding, Page, PageKey, PoolKind, Reply, Request, Status, MAX_PAGE_DATA};
    let app = TestAppliance::start(64 << 20, Duration::from_secs(5));
    let mut c = tmemctl::client::Client::connect(&app.target(), 0x5ea1, Duration::from_secs(5))
        .expect("connect");
    let pool = c.new_pool(PoolKind::Persistent).expect("pool");
    let data: Vec<u8> = (0..MAX_PAGE_DATA).map(|i| (i * 7 + 3) as u8).collect();
    let key = |index| PageKey {
        pool,
        object: [1, 2, 3],
        index,
    };
    for index in 0..2 {
        let put = Request::Put {
            key: key(index),
            page: Page {
                encoding: Encoding::Sealed,
                crc: protocol::crc32c(&data),
                data: &data,
            },
        };
        let frame = c.call(&put, 0).expect("put");
        assert_eq!(frame.reply.status(), Status::Ok, "{:?}", frame.reply);
    }
    let frame = c.call(&Request::Get { key: key(0) }, 0).expect("get");
    match &frame.reply {
        Reply::Page(p) => {
            assert_eq!(p.encoding, Encoding::Sealed);
            assert_eq!(p.data, &data[..], "the sealed bytes as stored");
        }
        other => panic!("GET of a sealed page: {other:?}"),
    }
    let gets = [Request::Get { key: key(0) }, Request::Get { key: key(1) }];
    let id = c.send_batch(&gets, 0, 0).expect("batch");
    c.flush().expect("flush");
    let frame = c.recv().expect("batch reply");
    assert_eq!(frame.header.request_id, id);
    let Reply::Batch(entries) = &frame.reply else {
        panic!("batch reply: {:?}", frame.reply);
    };
    for entry in *entries {
        match entry.reply() {
            Ok(Reply::Page(p)) => assert_eq!(p.data, &data[..]),
            other => panic!("batched GET of a sealed page: {other:?}"),
        }
    }
}
