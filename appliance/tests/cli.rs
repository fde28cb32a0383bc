//! The `appliance` binary: starts on the given address, reports where it listens, refuses bad
//! arguments clearly, and shuts down cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The first `n` stdout lines of the appliance, or a panic after 10 s (never an unbounded wait).
fn first_lines(stdout: ChildStdout, n: usize) -> Vec<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let lines: Vec<String> = BufReader::new(stdout)
            .lines()
            .take(n)
            .map_while(Result::ok)
            .collect();
        let _ = tx.send(lines);
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("appliance printed its address lines within 10 s")
}

struct Kill(std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn listens_serves_and_stops_on_sigterm() {
    let child = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "64MiB",
            "--log-level",
            "warn",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let mut line = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("appliance listening on ")
        .expect("listening line")
        .to_string();
    let conn = std::net::TcpStream::connect(&addr).expect("connect to the appliance");
    let sent = Command::new("kill")
        .args(["-TERM", &child.0.id().to_string()])
        .status()
        .unwrap();
    assert!(sent.success());
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "appliance did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
    drop(conn);
}

#[test]
fn bad_memory_size_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["--listen", "127.0.0.1:0", "--memory", "lots"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--memory") && err.contains("256MiB"), "{err}");
}

#[test]
fn unusable_listen_address_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["--listen", &addr])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains(&format!("cannot listen on {addr}")));
}

#[test]
fn metrics_port_serves_prometheus_text() {
    let child = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--memory",
            "32MiB",
            "--log-level",
            "info",
        ])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = Kill(child);
    let lines = first_lines(child.0.stdout.take().unwrap(), 2);
    let addr = lines
        .iter()
        .find_map(|l| {
            l.strip_prefix("appliance metrics on http://")?
                .strip_suffix("/metrics")
        })
        .expect("metrics line")
        .to_string();
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 200 OK"), "{body}");
    assert!(body.contains("# TYPE tmem_memory_limit gauge"), "{body}");
    assert!(
        body.contains(&format!(
            "tmem_memory_limit{{target=\"{addr}\"}} {}",
            32 << 20
        )),
        "{body}"
    );
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET /other HTTP/1.0\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    assert!(body.starts_with("HTTP/1.0 404"));
}

/// Secure by default: a non-loopback address without keys is refused, saying why; `--insecure`
/// (asked for by name) or keys make it start.
#[test]
fn refuses_a_network_address_without_keys() {
    let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args(["--listen", "0.0.0.0:0", "--memory", "16MiB"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("without client keys") && err.contains("--insecure"),
        "{err}"
    );

    let key = "11".repeat(32);
    for extra in [
        vec!["--insecure".to_string()],
        vec!["--key".to_string(), format!("0x7:{key}")],
    ] {
        let child = Command::new(env!("CARGO_BIN_EXE_appliance"))
            .args(["--listen", "0.0.0.0:0", "--memory", "16MiB"])
            .args(&extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut child = Kill(child);
        let lines = first_lines(child.0.stdout.take().unwrap(), 1);
        assert!(
            lines[0].starts_with("appliance listening on "),
            "{extra:?}: {lines:?}"
        );
    }
    // A bad key is an error naming the argument, never a partial key ring; keys never in output.
    let out = Command::new(env!("CARGO_BIN_EXE_appliance"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--key",
            &format!("7:{}", &key[..60]),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--key") && err.contains("64 hex"), "{err}");
    assert!(
        !err.contains(&key[..60]),
        "key material in the error: {err}"
    );
}
