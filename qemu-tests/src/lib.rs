//! Shared helpers for the VM tests in `tests/` (QEMU process guard, ports, artefact paths).
//!
//! The VM tests boot real images under QEMU TCG and talk to them only through `127.0.0.1`
//! (QEMU user networking forwards a host port to the guest). Three rules keep them from hanging or
//! leaking VMs on a shared machine:
//! - a [`Qemu`] guard kills its VM when dropped, also when the test panics;
//! - every wait is bounded in attempts and in time ([`wait_for_port`], [`Qemu::wait_for_output`]);
//! - a test whose artefacts are missing prints `SKIP` and returns (see [`hermit_image`], [`skip`]);
//!   the real test command (`cargo xtask test-vm`) builds them first and sets `TMEM_REQUIRE_VM=1`,
//!   which turns every such SKIP into a failure, so a broken build cannot pass as skipped tests.

pub mod evil_appliance;
pub mod linux_vm;
pub mod netns;

use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Workspace root (this crate lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("qemu-tests is inside the workspace")
        .to_path_buf()
}

/// Where the bootable artefacts are: `$TMEM_IMAGES`, else `target/images/`.
pub fn images_dir() -> PathBuf {
    std::env::var_os("TMEM_IMAGES")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/images"))
}

/// The appliance unikernel image made by `cargo xtask image`.
#[derive(Clone, Debug)]
pub struct HermitImage {
    /// Our multiboot loader (QEMU `-kernel`).
    pub loader: PathBuf,
    /// The appliance with the Hermit kernel linked in (QEMU `-initrd`).
    pub appliance: PathBuf,
}

/// Whether this process runs as root (`id -u` is 0): needed for namespaces and tap devices, and to
/// call apt-get without sudo.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// Whether VM tests must run: `TMEM_REQUIRE_VM=1` (set by `cargo xtask test-vm`).
pub fn vm_required() -> bool {
    std::env::var("TMEM_REQUIRE_VM").is_ok_and(|v| v == "1")
}

/// Reports that `test` cannot run because of `why` (a missing artefact or tool): prints a
/// `SKIP` line, or panics (fails the test) when [`vm_required`]. Every VM test skips through this.
pub fn skip(test: &str, why: &str) {
    if vm_required() {
        panic!("{test}: {why}; TMEM_REQUIRE_VM=1, so this is a failure, not a skip");
    }
    eprintln!("SKIP {test}: {why}");
}

/// The Hermit image, or `None` after [`skip`] named what is missing.
pub fn hermit_image(test: &str) -> Option<HermitImage> {
    let dir = images_dir();
    let image = HermitImage {
        loader: dir.join("loader"),
        appliance: dir.join("appliance"),
    };
    for path in [&image.loader, &image.appliance] {
        if !path.is_file() {
            skip(
                test,
                &format!(
                    "{} missing (run `cargo xtask image`, or set TMEM_IMAGES)",
                    path.display()
                ),
            );
            return None;
        }
    }
    if !qemu_available() {
        skip(
            test,
            "qemu-system-x86_64 not found (cargo xtask image installs it)",
        );
        return None;
    }
    Some(image)
}

/// A host binary of this workspace (`tmemctl`, `appliance`), release build preferred, or `None`
/// after [`skip`]. `$CARGO_TARGET_DIR` is honoured.
pub fn workspace_binary(test: &str, name: &str) -> Option<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    for profile in ["release", "debug"] {
        let path = target.join(profile).join(name);
        if path.is_file() {
            return Some(path);
        }
    }
    skip(
        test,
        &format!("{name} binary missing (run `cargo build --release -p {name}`)"),
    );
    None
}

/// Output of a bounded child process run by [`run_bounded`].
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: std::process::ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

impl Finished {
    /// The `key=value` pairs of the last stdout line (`tmemctl bench`'s summary).
    pub fn summary(&self) -> std::collections::BTreeMap<String, String> {
        parse_summary(self.stdout.lines().last().unwrap_or_default())
    }
}

/// `key=value key=value ...` into a map (tokens without `=` are ignored).
pub fn parse_summary(line: &str) -> std::collections::BTreeMap<String, String> {
    line.split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Runs `cmd` to completion, killing it (by its own pid) if it takes longer than `timeout`.
/// Output is collected on threads, so a chatty child cannot block on a full pipe.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> io::Result<Finished> {
    use std::io::Read;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut s);
            }
            String::from_utf8_lossy(&s).into_owned()
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let max_polls = timeout.as_millis() / 20 + 1;
    let mut status = None;
    for _ in 0..max_polls {
        if let Some(s) = child.try_wait()? {
            status = Some(s);
            break;
        }
        if start.elapsed() >= timeout {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        let (stdout, stderr) = (
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default(),
        );
        return Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{cmd:?} killed after {timeout:?}; stdout:\n{stdout}\nstderr:\n{stderr}"),
        ));
    };
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Whether `qemu-system-x86_64` is on `PATH`.
pub fn qemu_available() -> bool {
    std::env::var_os("PATH").is_some_and(|paths| {
        std::env::split_paths(&paths).any(|d| d.join("qemu-system-x86_64").is_file())
    })
}

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it; we released it).
/// Another process could take it before QEMU binds it; QEMU then fails to start and the test says so.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

/// Connects to `addr`, retrying every 50 ms until `timeout` (and at most 10 000 attempts).
///
/// With QEMU user networking a connect to a forwarded port succeeds as soon as QEMU runs, even
/// before the guest listens (QEMU then closes it); check the guest's own "listening" output first.
pub fn wait_for_port(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let deadline = Instant::now() + timeout;
    let mut last_err = io::Error::new(io::ErrorKind::TimedOut, "no attempt made");
    for _ in 0..10_000 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break;
        }
        match TcpStream::connect_timeout(&addr, left.min(Duration::from_secs(1))) {
            Ok(stream) => return Ok(stream),
            Err(e) => last_err = e,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        format!("{addr} not reachable within {timeout:?}: {last_err}"),
    ))
}

/// A running QEMU VM. Dropping it kills the VM (also during a panic) and reaps the process.
///
/// The serial console goes to a log file (`target/qemu-tests/NAME-PID-SEQ.log`), kept for debugging.
pub struct Qemu {
    child: Child,
    log: PathBuf,
}

impl Qemu {
    /// Starts `cmd` with stdout/stderr (the serial console) redirected to the log for `name`.
    pub fn spawn(name: &str, mut cmd: Command) -> io::Result<Qemu> {
        let dir = workspace_root().join("target/qemu-tests");
        std::fs::create_dir_all(&dir)?;
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let log = dir.join(format!("{name}-{}-{seq}.log", std::process::id()));
        let out = File::create(&log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        Ok(Qemu { child, log })
    }

    /// Boots the Hermit appliance image with `memory` of RAM (QEMU syntax, e.g. `1G`), guest `port`
    /// forwarded to `127.0.0.1:port`, and `app_args` for the appliance.
    pub fn boot_hermit(
        name: &str,
        image: &HermitImage,
        memory: &str,
        port: u16,
        app_args: &[&str],
    ) -> io::Result<Qemu> {
        Qemu::spawn(name, hermit_command(image, memory, port, app_args))
    }

    /// Boots the appliance image (see [`Qemu::boot_hermit`]) listening on `0.0.0.0:PORT` with a
    /// free `PORT`, then waits (bounded by `timeout`) for its "listening" line and the forwarded
    /// port. Returns the VM and the host address `127.0.0.1:PORT`.
    pub fn boot_hermit_appliance(
        name: &str,
        image: &HermitImage,
        memory: &str,
        app_args: &[&str],
        timeout: Duration,
    ) -> io::Result<(Qemu, SocketAddr)> {
        let port = free_port();
        let listen = format!("0.0.0.0:{port}");
        let mut args = vec!["--listen", listen.as_str()];
        args.extend_from_slice(app_args);
        let mut vm = Qemu::boot_hermit(name, image, memory, port, &args)?;
        let start = Instant::now();
        vm.wait_for_output("appliance listening on", timeout)?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        wait_for_port(
            addr,
            timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(5)),
        )?;
        Ok((vm, addr))
    }

    /// Path of the serial log.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Everything the VM printed so far.
    pub fn output(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits (polling every 20 ms, bounded by `timeout`) until the output contains `needle`.
    /// Fails early if the VM exits.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let max_polls = timeout.as_millis() / 20 + 1;
        for _ in 0..max_polls {
            if self.output().contains(needle) {
                return Ok(start.elapsed());
            }
            if let Some(status) = self.child.try_wait()? {
                return Err(io::Error::other(format!(
                    "QEMU exited ({status}) before printing {needle:?}; log {}:\n{}",
                    self.log.display(),
                    self.output()
                )));
            }
            if start.elapsed() >= timeout {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!(
                "no {needle:?} within {timeout:?}; log {}:\n{}",
                self.log.display(),
                self.output()
            ),
        ))
    }

    /// Whether the VM is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        // Kill by our own child's pid only; ignore "already exited".
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The QEMU command line for the Hermit appliance (TCG; never KVM, which cannot run Hermit here);
/// QEMU forwards 127.0.0.1:`port` to the guest's `port`.
pub fn hermit_command(image: &HermitImage, memory: &str, port: u16, app_args: &[&str]) -> Command {
    hermit_command_fwd(image, memory, Ipv4Addr::LOCALHOST, port, app_args)
}

/// [`hermit_command`] forwarding `fwd_host`:`port` instead (e.g. [`netns::NetNs::HOST`] when QEMU
/// runs inside a namespace whose other VMs must reach the appliance).
pub fn hermit_command_fwd(
    image: &HermitImage,
    memory: &str,
    fwd_host: Ipv4Addr,
    port: u16,
    app_args: &[&str],
) -> Command {
    // Clients on another 10.0.2.0/24 (a client VM behind a tap device) would look like the
    // appliance's own address inside QEMU's default user network; give that network another one.
    let subnet = if fwd_host.is_loopback() {
        ""
    } else {
        ",net=10.0.3.0/24"
    };
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-cpu", "max", "-smp", "1", "-m", memory])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .args([
            "-no-reboot",
            "-device",
            "isa-debug-exit,iobase=0xf4,iosize=0x04",
        ])
        .arg("-kernel")
        .arg(&image.loader)
        .arg("-initrd")
        .arg(&image.appliance)
        .args(["-append", &format!("-- {}", app_args.join(" "))])
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:{fwd_host}:{port}-:{port}{subnet}"),
            "-device",
            "virtio-net-pci,netdev=n0,disable-legacy=on",
        ]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect("port from free_port is free");
    }

    #[test]
    fn wait_for_port_finds_a_listener_and_times_out_without_one() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        wait_for_port(addr, Duration::from_secs(2)).expect("listener reachable");
        drop(listener);
        let start = Instant::now();
        assert!(wait_for_port(addr, Duration::from_millis(300)).is_err());
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn guard_kills_child_on_drop_even_in_panic() {
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let qemu = Qemu::spawn("guard-test", cmd).expect("spawn sleep");
        let pid = qemu.child.id();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || {
            let _vm = qemu;
            panic!("intentional panic: the guard must still kill the VM");
        }));
        assert!(result.is_err());
        // The child was killed and reaped by Drop: its /proc entry is gone.
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
    }
}
