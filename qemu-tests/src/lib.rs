//! Shared helpers for the VM tests in `tests/` and for `cargo xtask` (QEMU process guard, ports,
//! artefact paths).
//!
//! The VM tests boot real images under QEMU TCG and talk to them only through `127.0.0.1`
//! (QEMU user networking forwards a host port to the guest). Three rules keep them honest and
//! from hanging or leaking VMs on a shared machine:
//! - a [`Qemu`] guard kills its VM when dropped, also when the test panics (every host process a
//!   test or xtask starts is owned by a [`ChildGuard`]);
//! - every wait is bounded in attempts and in time ([`wait_for_port`], [`Qemu::wait_for_output`]);
//! - every VM test is `#[ignore = "VM test: run by cargo xtask test-vm"]`, so `cargo test` counts
//!   it as ignored, not passed; `cargo xtask test-vm` builds the images and runs them with
//!   `--include-ignored`, and a missing image, binary or tool fails the test ([`artefacts`]).

pub mod artefacts;
pub mod evil_appliance;
pub mod evil_verdict;
pub mod ext4_image;
pub mod linux_vm;
pub mod netns;
pub mod poll;
pub mod process;
pub mod tap_lan;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use artefacts::{
    hermit_image, images_dir, locate_workspace_binary, on_path, workspace_binary, workspace_root,
    HermitImage,
};
pub use poll::{poll, timed_out};
pub use process::{key_values, run_bounded, ChildGuard, Finished};

/// Whether this process runs as root (effective uid 0): needed for namespaces and tap devices, and
/// to call apt-get without sudo.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
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
    let connected = poll(timeout, Duration::from_millis(50), || {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(
            &addr,
            left.clamp(Duration::from_millis(1), Duration::from_secs(1)),
        ) {
            Ok(stream) => Ok(Some(stream)),
            Err(e) => {
                last_err = e;
                Ok(None)
            }
        }
    })?;
    connected.ok_or_else(|| {
        timed_out(format!(
            "{addr} not reachable within {timeout:?}: {last_err}"
        ))
    })
}

/// How much of a VM's console a failure message quotes ([`Qemu::log_tail`]).
pub const TAIL_LINES: usize = 80;

/// The last `n` lines of `text` (joined by `\n`) and how many lines it has.
fn last_lines(text: &str, n: usize) -> (String, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    (lines[from..].join("\n"), lines.len())
}

/// A running QEMU VM. Dropping it kills the VM (also during a panic) and reaps the process
/// ([`ChildGuard`]).
///
/// The serial console goes to a log file (`target/qemu-tests/NAME-PID-SEQ.log`), kept for debugging.
pub struct Qemu {
    child: ChildGuard,
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
        Ok(Qemu {
            child: ChildGuard::new(child),
            log,
        })
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
    /// free `PORT`, serving clients without keys (`--insecure`: only QEMU's forward from
    /// 127.0.0.1 reaches that address) unless `app_args` give keys (`--key`), then waits (bounded by `timeout`) for its "listening" line and the forwarded
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
        if !app_args.contains(&"--key") {
            args.push("--insecure");
        }
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

    /// The serial log's last [`TAIL_LINES`] lines, headed by its path, for failure messages: where
    /// a VM was when it stalled is at the end, and CI reports show only a failure's first lines.
    pub fn log_tail(&self) -> String {
        let out = self.output();
        let (tail, total) = last_lines(&out, TAIL_LINES);
        format!(
            "last {} of {total} lines of {} (the whole log is there):\n{tail}",
            tail.lines().count(),
            self.log.display(),
        )
    }

    /// Waits (polling every 20 ms, bounded by `timeout`) until the output contains `needle`.
    /// Fails early if the VM exits.
    pub fn wait_for_output(&mut self, needle: &str, timeout: Duration) -> io::Result<Duration> {
        let start = Instant::now();
        let seen = poll(timeout, Duration::from_millis(20), || {
            if self.output().contains(needle) {
                return Ok(Some(start.elapsed()));
            }
            match self.child.try_wait()? {
                Some(status) => Err(io::Error::other(format!(
                    "QEMU exited ({status}) before printing {needle:?}; {}",
                    self.log_tail()
                ))),
                None => Ok(None),
            }
        })?;
        seen.ok_or_else(|| {
            timed_out(format!(
                "no {needle:?} within {timeout:?}; {}",
                self.log_tail()
            ))
        })
    }

    /// Whether the VM is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
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
    let (nic, _) = appliance_nic(fwd_host, port);
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
        .args(nic);
    cmd
}

/// `qemu` with the value that follows `option` (e.g. `-append`, `-netdev`) replaced by `value`;
/// unchanged if it has no such option.
pub fn with_option(qemu: &Command, option: &str, value: impl Into<OsString>) -> Command {
    let mut args: Vec<OsString> = qemu.get_args().map(|a| a.to_owned()).collect();
    if let Some(i) = args.iter().position(|a| a == option) {
        if let Some(slot) = args.get_mut(i + 1) {
            *slot = value.into();
        }
    }
    let mut cmd = Command::new(qemu.get_program());
    cmd.args(args);
    cmd
}

/// `qemu` with every argument passed through `f` (which returns what replaces it).
pub fn rewrite_args(qemu: &Command, mut f: impl FnMut(&OsStr) -> Vec<OsString>) -> Command {
    let mut cmd = Command::new(qemu.get_program());
    cmd.args(qemu.get_args().flat_map(&mut f));
    cmd
}

/// A NIC the appliance image drives: virtio-net (VMs) or the Intel 82574L of the e1000e family
/// (servers; kernel patch 0013).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nic {
    VirtioNet,
    E1000e,
}

impl Nic {
    /// QEMU's `-device` value for this NIC on netdev `n0`.
    pub fn device(self) -> &'static str {
        match self {
            Nic::VirtioNet => "virtio-net-pci,netdev=n0,disable-legacy=on",
            Nic::E1000e => "e1000e,netdev=n0",
        }
    }
}

/// `qemu` (an appliance VM command, [`appliance_nic`]'s virtio-net NIC) with that NIC replaced by
/// `nic` on the same network and port forward.
pub fn with_nic(qemu: &Command, nic: Nic) -> Command {
    let virtio = Nic::VirtioNet.device();
    let mut replaced = 0;
    let cmd = rewrite_args(qemu, |a| {
        if a == virtio {
            replaced += 1;
            vec![nic.device().into()]
        } else {
            vec![a.to_owned()]
        }
    });
    assert_eq!(replaced, 1, "no virtio-net NIC to replace in {qemu:?}");
    cmd
}

/// The QEMU arguments of an appliance VM's NIC (virtio-net on user networking, forwarding
/// `fwd_host`:`port` to the guest's `port`), and the guest network's first three octets.
/// Clients on another 10.0.2.0/24 (a client VM behind a tap device) would look like the
/// appliance's own address inside QEMU's default user network, so a forward from anything but
/// loopback gives that network another one, 10.0.3.0/24.
pub fn appliance_nic(fwd_host: Ipv4Addr, port: u16) -> ([String; 4], &'static str) {
    let (subnet, net) = if fwd_host.is_loopback() {
        ("", "10.0.2")
    } else {
        (",net=10.0.3.0/24", "10.0.3")
    };
    let args = [
        "-netdev".to_string(),
        format!("user,id=n0,hostfwd=tcp:{fwd_host}:{port}-:{port}{subnet}"),
        "-device".to_string(),
        Nic::VirtioNet.device().to_string(),
    ];
    (args, net)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_quotes_the_end_of_a_console_log() {
        let log = "boot\r\nTMEM-PHASE x\r\nTMEM-PROGRESS up=30s\r\nstuck\r\n";
        assert_eq!(
            last_lines(log, 2),
            ("TMEM-PROGRESS up=30s\nstuck".to_string(), 4)
        );
        assert_eq!(last_lines("a\nb", 80), ("a\nb".to_string(), 2));
        assert_eq!(last_lines("", 80), (String::new(), 0));
    }

    #[test]
    fn with_option_replaces_only_the_value_of_that_option() {
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-m", "1G", "-append", "a b", "-netdev", "user,id=n0"]);
        let changed = with_option(&qemu, "-netdev", "tap,id=n0");
        let args: Vec<_> = changed.get_args().collect();
        assert_eq!(args, ["-m", "1G", "-append", "a b", "-netdev", "tap,id=n0"]);
        assert_eq!(changed.get_program(), "qemu-system-x86_64");
        let same = with_option(&qemu, "-kernel", "x");
        assert_eq!(
            same.get_args().collect::<Vec<_>>(),
            qemu.get_args().collect::<Vec<_>>()
        );
    }

    #[test]
    fn an_appliance_forwarded_from_a_namespace_gets_its_own_subnet() {
        let (args, net) = appliance_nic(Ipv4Addr::LOCALHOST, 7777);
        assert_eq!(net, "10.0.2");
        assert_eq!(args[1], "user,id=n0,hostfwd=tcp:127.0.0.1:7777-:7777");
        let (args, net) = appliance_nic(Ipv4Addr::new(10, 0, 2, 2), 7777);
        assert_eq!(net, "10.0.3");
        assert!(args[1].ends_with(",net=10.0.3.0/24"), "{}", args[1]);
    }

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
    fn dropping_the_vm_guard_ends_the_process_and_keeps_the_log() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo booted; exec sleep 30"]);
        let mut vm = Qemu::spawn("guard-test", cmd).expect("spawn sh");
        vm.wait_for_output("booted", Duration::from_secs(10))
            .expect("output reaches the log");
        assert!(vm.is_running());
        let (pid, log) = (vm.child.id(), vm.log_path().to_path_buf());
        drop(vm);
        assert!(!Path::new(&format!("/proc/{pid}")).exists());
        assert!(std::fs::read_to_string(&log).unwrap().contains("booted"));
        let _ = std::fs::remove_file(log);
    }
}
