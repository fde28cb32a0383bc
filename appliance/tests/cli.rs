//! The `appliance` binary: starts on the given address, reports where it listens, refuses bad
//! arguments clearly, and shuts down cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
