//! Security in the VM (issue 12): kclient with a key swaps to an appliance with that key.
//!
//! The probe: tmem-workload's pages are deterministic, so the host computes the first 32 bytes
//! of some of its random pages (markers no other data contains) and looks for them.
//!
//! - `sessions_hide_pages_on_the_wire`: a verified 1.5x-RAM workload through a recording proxy
//!   (`kclient_replicas.rs` swaps up to 3x RAM with keys).
//!   No marker crosses the wire (sessions are encrypted), while the appliance's memory
//!   (`/proc/PID/mem`) does hold them: the markers were written and stored, so the probe works.
//! - `encrypt_pages_hides_pages_from_the_appliance`: the same with `encrypt_pages=1`: the
//!   appliance holds the pages but no marker.
//! - `an_appliance_without_the_key_is_refused`: insmod fails with a clear message.
//!
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them).

mod support;

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use qemu_tests::linux_vm::{boot_client, client_image, kernel_problems, parse_result, wait_exit};
use qemu_tests::Qemu;
use support::cluster::{client_args, Node};

const VM_MEMORY: &str = "256M";
/// tmem-workload's seed in the `replicas` script.
const SEED: u64 = 0x746d656d;
const MARKER_LEN: usize = 32;
const MARKERS: usize = 64;

fn splitmix(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first 32 bytes of page `index` in pass 0, if the page starts with random words (kinds
/// 5-7 of tmem-workload.c's `fill_page`, which this mirrors).
fn random_prefix(index: u64) -> Option<[u8; MARKER_LEN]> {
    let mut s = SEED ^ index.wrapping_mul(0x0100_0000_01b3);
    if splitmix(&mut s) % 8 < 5 {
        return None;
    }
    let mut m = [0u8; MARKER_LEN];
    for w in m.chunks_mut(8) {
        w.copy_from_slice(&splitmix(&mut s).to_le_bytes());
    }
    Some(m)
}

/// Markers spread over a workload of `mib` MiB.
fn markers(mib: u64) -> Vec<[u8; MARKER_LEN]> {
    let pages = mib * 256;
    let step = pages / MARKERS as u64;
    (0..MARKERS as u64)
        .filter_map(|k| (k * step..(k + 1) * step).find_map(random_prefix))
        .collect()
}

/// Counts markers in a stream of chunks (a marker may straddle two chunks).
struct Scanner {
    markers: Arc<Vec<[u8; MARKER_LEN]>>,
    tail: Vec<u8>,
    found: u64,
}

impl Scanner {
    fn new(markers: Arc<Vec<[u8; MARKER_LEN]>>) -> Scanner {
        Scanner {
            markers,
            tail: Vec::new(),
            found: 0,
        }
    }

    fn feed(&mut self, chunk: &[u8]) {
        let mut buf = std::mem::take(&mut self.tail);
        buf.extend_from_slice(chunk);
        for m in self.markers.iter() {
            self.found += memchr::memmem::find_iter(&buf, m).count() as u64;
        }
        let keep = buf.len().min(MARKER_LEN - 1);
        self.tail = buf[buf.len() - keep..].to_vec();
    }
}

/// A TCP proxy in front of an appliance that counts markers in both directions.
struct CaptureProxy {
    port: u16,
    stop: Arc<AtomicBool>,
    found: Arc<AtomicU64>,
    bytes: Arc<AtomicU64>,
}

impl CaptureProxy {
    fn start(upstream: u16, markers: Vec<[u8; MARKER_LEN]>) -> CaptureProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let found = Arc::new(AtomicU64::new(0));
        let bytes = Arc::new(AtomicU64::new(0));
        let markers = Arc::new(markers);
        let (s, f, b) = (stop.clone(), found.clone(), bytes.clone());
        std::thread::spawn(move || {
            // Bounded by the test: `stop` is set when the proxy is dropped.
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let _ = client.set_nonblocking(false);
                        for (from, to) in [
                            (client.try_clone(), server.try_clone()),
                            (server.try_clone(), client.try_clone()),
                        ] {
                            let (Ok(from), Ok(to)) = (from, to) else {
                                continue;
                            };
                            let (f, b, m) = (f.clone(), b.clone(), markers.clone());
                            std::thread::spawn(move || pump(from, to, m, &f, &b));
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        CaptureProxy {
            port,
            stop,
            found,
            bytes,
        }
    }
}

impl Drop for CaptureProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Copies `from` to `to` until either side closes, scanning what passes.
fn pump(
    mut from: TcpStream,
    mut to: TcpStream,
    markers: Arc<Vec<[u8; MARKER_LEN]>>,
    found: &AtomicU64,
    bytes: &AtomicU64,
) {
    let mut scanner = Scanner::new(markers);
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        scanner.feed(&buf[..n]);
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    found.fetch_add(scanner.found, Ordering::Relaxed);
    let _ = to.shutdown(std::net::Shutdown::Both);
}

/// Markers in the writable memory of process `pid` (reads `/proc/PID/mem`).
fn markers_in_memory(pid: u32, markers: &[[u8; MARKER_LEN]]) -> u64 {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem");
    let mut scanner = Scanner::new(Arc::new(markers.to_vec()));
    let mut buf = vec![0u8; 16 << 20];
    for line in maps.lines() {
        let mut f = line.split_whitespace();
        let (Some(range), Some(perms)) = (f.next(), f.next()) else {
            continue;
        };
        if !perms.starts_with("rw") {
            continue;
        }
        let Some((a, b)) = range.split_once('-') else {
            continue;
        };
        let (Ok(mut at), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) else {
            continue;
        };
        scanner.tail.clear();
        while at < end {
            let n = ((end - at) as usize).min(buf.len());
            if mem.seek(SeekFrom::Start(at)).is_err() || mem.read_exact(&mut buf[..n]).is_err() {
                break;
            }
            scanner.feed(&buf[..n]);
            at += n as u64;
        }
    }
    scanner.found
}

struct Run {
    result: HashMap<String, String>,
    on_wire: u64,
    wire_bytes: u64,
    in_memory: u64,
    pages_held: u64,
}

/// Swaps `mib` MiB through the proxy to a keyed appliance; probes its memory once every page
/// was written (the workload verifying), then lets the run finish.
fn run(name: &str, mib: u64, extra: &str) -> Run {
    let node = Node::start("2GiB");
    let markers = markers(mib);
    assert!(markers.len() > MARKERS / 2, "markers: {}", markers.len());
    let proxy = CaptureProxy::start(node.port, markers.clone());
    let append = format!(
        "tmem_test=replicas tmem_target=10.0.2.2:{} tmem_size=1G tmem_mib={mib} {} {extra}",
        proxy.port,
        client_args()
    );
    let mut vm: Qemu =
        boot_client(name, &client_image(), VM_MEMORY, 2, &append).expect("boot client VM");
    vm.wait_for_output("tmem-workload: pass 0 verifying", Duration::from_secs(1200))
        .unwrap_or_else(|e| panic!("workload: {e}; log: {}", vm.log_path().display()));
    let pages_held = node.pages();
    let in_memory = markers_in_memory(node.pid().expect("appliance runs"), &markers);
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(1200));
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("no result: {e}; log: {}", vm.log_path().display()));
    let result = parse_result(&log).expect("TMEM-RESULT");
    assert!(
        kernel_problems(&log).is_empty(),
        "log: {}",
        vm.log_path().display()
    );
    assert!(exited, "VM did not power off");
    let r = Run {
        on_wire: proxy.found.load(Ordering::Relaxed),
        wire_bytes: proxy.bytes.load(Ordering::Relaxed),
        result,
        in_memory,
        pages_held,
    };
    eprintln!(
        "{name}: markers on the wire {}, in appliance memory {} ({} pages held, {} MB through the proxy); result {:?}",
        r.on_wire,
        r.in_memory,
        r.pages_held,
        r.wire_bytes >> 20,
        r.result
    );
    r
}

fn assert_passed(r: &Run) {
    assert_eq!(
        r.result.get("status").map(String::as_str),
        Some("pass"),
        "{:?}",
        r.result
    );
    assert!(
        r.result
            .get("handshakes")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            >= 1,
        "authenticated sessions: {:?}",
        r.result
    );
    assert!(
        r.wire_bytes > 100 << 20,
        "the swap traffic went through the proxy"
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn sessions_hide_pages_on_the_wire() {
    let r = run("kclient_secure_wire", 384, "");
    assert_passed(&r);
    assert!(
        r.in_memory > 0,
        "the probe must find the markers where they are in clear (the appliance's memory)"
    );
    assert_eq!(r.on_wire, 0, "plaintext pages on the wire");
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn encrypt_pages_hides_pages_from_the_appliance() {
    let r = run("kclient_secure_pages", 384, "tmem_encrypt=1");
    assert_passed(&r);
    assert!(r.pages_held > 20_000, "the appliance holds the pages");
    assert_eq!(r.in_memory, 0, "plaintext pages in the appliance's memory");
    assert_eq!(r.on_wire, 0, "plaintext pages on the wire");
    assert!(
        r.result
            .get("pages_sealed")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
            > 0,
        "{:?}",
        r.result
    );
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn an_appliance_without_the_key_is_refused() {
    let node = Node::start_with_key("256MiB", [0x5a; 32]);
    let append = format!(
        "tmem_test=replicas tmem_target={} tmem_size=256M tmem_mib=16 tmem_timeout_ms=3000 {}",
        node.target(),
        client_args()
    );
    let mut vm = boot_client(
        "kclient_secure_refused",
        &client_image(),
        VM_MEMORY,
        2,
        &append,
    )
    .expect("boot client VM");
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(600));
    let exited = wait_exit(&mut vm, Duration::from_secs(120));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("no result: {e}; log: {}", vm.log_path().display()));
    let result = parse_result(&log).expect("TMEM-RESULT");
    assert_ne!(
        result.get("insmod").map(String::as_str),
        Some("0"),
        "{result:?}"
    );
    assert!(
        log.contains("HELLO refused: not authenticated"),
        "a clear message; log: {}",
        vm.log_path().display()
    );
    assert!(exited, "VM did not power off");
}
