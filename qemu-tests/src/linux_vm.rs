//! The Linux client VM (our 6.12 kernel + kclient + busybox initramfs) and the host-mode appliance.
//!
//! The guest's `/init` runs the test named by `tmem_test=` on the kernel command line and prints
//! `TMEM-PHASE ...` progress lines (the swap test also a `TMEM-PROGRESS ...` line every 30 s:
//! swap counters, free memory, kclient's requests and resets, TCP retransmissions) and one
//! `TMEM-RESULT key=value ...` line on the serial console; [`parse_result`] turns that line into
//! a map. A timeout quotes the log's last lines ([`crate::Qemu::log_tail`]). See
//! `images/linux/initramfs/`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::artefacts::{images_dir, require_files, require_qemu, required, workspace_binary};
use crate::netns::NetNs;
use crate::{key_values, ChildGuard, Qemu};

/// Artefacts made by `cargo xtask client-image`.
#[derive(Clone, Debug)]
pub struct ClientImage {
    pub bzimage: PathBuf,
    pub initramfs: PathBuf,
}

impl ClientImage {
    /// The client image in [`images_dir`], checked to exist, with QEMU on `PATH`.
    pub fn locate() -> std::io::Result<ClientImage> {
        Self::locate_in(&images_dir(), "cargo xtask client-image")
    }

    /// The debug client image (lockdep, KASAN, atomic-sleep checks) in `images_dir()/debug/`.
    pub fn locate_debug() -> std::io::Result<ClientImage> {
        Self::locate_in(
            &images_dir().join("debug"),
            "cargo xtask client-image --debug",
        )
    }

    /// The image in `dir`, checked to exist (else: run `make`), with QEMU on `PATH`.
    fn locate_in(dir: &Path, make: &str) -> std::io::Result<ClientImage> {
        let image = ClientImage {
            bzimage: dir.join("bzImage"),
            initramfs: dir.join("initramfs.cpio.gz"),
        };
        require_files(&[&image.bzimage, &image.initramfs], make)?;
        require_qemu()?;
        Ok(image)
    }
}

/// For VM tests: the client image, or a test failure saying what is missing.
pub fn client_image() -> ClientImage {
    required(ClientImage::locate())
}

/// For VM tests: the debug client image ([`ClientImage::locate_debug`]), or a test failure.
pub fn debug_client_image() -> ClientImage {
    required(ClientImage::locate_debug())
}

/// QEMU command line for the client VM: TCG (never KVM here), `smp` vCPUs, `memory` RAM, user
/// networking (the host is 10.0.2.2), serial console on stdout, `append` added to the kernel command line.
pub fn client_command(image: &ClientImage, memory: &str, smp: u32, append: &str) -> Command {
    client_command_on(image, memory, smp, append, "user,id=n0")
}

/// [`client_command`] with another `-netdev` (its id must be `n0`), e.g.
/// [`crate::netns::NetNs::tap_netdev`]; the guest still sees the host at 10.0.2.2.
pub fn client_command_on(
    image: &ClientImage,
    memory: &str,
    smp: u32,
    append: &str,
    netdev: &str,
) -> Command {
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-accel", "tcg", "-cpu", "max", "-m", memory])
        .args(["-smp", &smp.to_string()])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(&image.bzimage)
        .arg("-initrd")
        .arg(&image.initramfs)
        .args([
            "-append",
            &format!("console=ttyS0 panic=-1 oops=panic loglevel=6 {append}"),
        ])
        .args([
            "-netdev",
            netdev,
            "-device",
            // No option ROM: nothing to network-boot, and no dependency on ipxe's ROM files.
            "virtio-net-pci,netdev=n0,romfile=",
        ]);
    cmd
}

/// Boots the client VM (see [`client_command`]); killed when the guard drops.
pub fn boot_client(
    name: &str,
    image: &ClientImage,
    memory: &str,
    smp: u32,
    append: &str,
) -> std::io::Result<Qemu> {
    Qemu::spawn(name, client_command(image, memory, smp, append))
}

/// For VM tests: the host-mode appliance binary (`cargo build -p appliance`), release preferred,
/// or a test failure.
pub fn appliance_binary() -> PathBuf {
    workspace_binary("appliance")
}

/// A host-mode appliance process, killed when dropped (also during a panic; a stopped process is
/// killed all the same by SIGKILL).
pub struct Appliance {
    child: ChildGuard,
    pub port: u16,
}

/// Waits (bounded) until an appliance started with piped stdout says it is listening; reads
/// its stdout on a thread, so a silent appliance cannot block us. On failure the caller drops
/// the guard, which kills it.
pub fn wait_listening(child: &mut ChildGuard, timeout: Duration) -> std::io::Result<()> {
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if !sent && line.contains("listening") {
                    let _ = tx.send(());
                    sent = true;
                }
            }
        });
    }
    rx.recv_timeout(timeout).map_err(|_| {
        std::io::Error::other(format!(
            "appliance did not start listening within {timeout:?}"
        ))
    })
}

impl Appliance {
    /// Starts `binary --listen 127.0.0.1:PORT --memory MEMORY` on a free port and waits (bounded)
    /// until it says it is listening.
    pub fn start(binary: &Path, memory: &str) -> std::io::Result<Appliance> {
        Self::start_in(binary, memory, None)
    }

    /// [`Appliance::start`], or with `netns` inside that namespace listening on its tap address
    /// ([`NetNs::HOST`], where the client VM finds the host).
    pub fn start_in(
        binary: &Path,
        memory: &str,
        netns: Option<&NetNs>,
    ) -> std::io::Result<Appliance> {
        Self::start_with(binary, memory, netns, &[])
    }

    /// [`Appliance::start_in`] with more arguments; with a `--key` among them it serves only
    /// that client, authenticated and encrypted.
    pub fn start_with(
        binary: &Path,
        memory: &str,
        netns: Option<&NetNs>,
        more: &[&str],
    ) -> std::io::Result<Appliance> {
        let port = crate::free_port();
        let host = NetNs::server_host(netns);
        let mut cmd = Command::new(binary);
        cmd.args(["--listen", &format!("{host}:{port}"), "--memory", memory])
            .args(["--log-level", "warn"])
            .args(more);
        if netns.is_some() && !more.contains(&"--key") {
            // Not loopback, so clients without keys (kclient) need it said by name; only the
            // namespace made for the run reaches that address.
            cmd.arg("--insecure");
        }
        let mut child = ChildGuard::new(
            NetNs::command_in(netns, cmd)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()?,
        );
        wait_listening(&mut child, Duration::from_secs(20))?;
        Ok(Appliance { child, port })
    }

    /// Kills the appliance now (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.child.is_running()
    }

    /// The address the host reaches it at (the guest's `10.0.2.2:PORT`; for [`Appliance::start`]).
    pub fn host_addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Freezes the appliance (SIGSTOP): connections stay open but nothing is answered.
    pub fn pause(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGSTOP)
    }

    /// Undoes [`Appliance::pause`] (SIGCONT).
    pub fn resume(&self) -> std::io::Result<()> {
        self.signal(Signal::SIGCONT)
    }

    fn signal(&self, sig: Signal) -> std::io::Result<()> {
        // Our own child, by pid.
        let pid = Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, sig).map_err(std::io::Error::from)
    }
}

/// Parses the `TMEM-RESULT key=value ...` line of a console log.
pub fn parse_result(log: &str) -> Option<HashMap<String, String>> {
    tagged_lines(log, "TMEM-RESULT").next()
}

/// The `key=value` words after `TAG ` on every console line that carries the tag, in log order
/// (the guest scripts report this way: `TMEM-RESULT`, `TMEM-EVIL`, `TMEM-BENCH`).
pub fn tagged_lines<'a, M: FromIterator<(String, String)>>(
    log: &'a str,
    tag: &str,
) -> impl Iterator<Item = M> + 'a {
    let tag = format!("{tag} ");
    log.lines().filter_map(move |l| {
        let (_, rest) = l.split_once(tag.as_str())?;
        Some(key_values(rest))
    })
}

/// Numeric field of a parsed result (`None` if missing or not a number).
pub fn num(result: &HashMap<String, String>, key: &str) -> Option<i64> {
    result.get(key)?.parse().ok()
}

/// What every `tmem_test=swap` run must show (its `TMEM-RESULT` and console `log`): each step of
/// the script succeeded, the workload verified every byte, pages went out to the appliances and
/// came back, and no request failed or was answered wrongly.
pub fn assert_swap_verified(result: &HashMap<String, String>, log: &str) {
    for key in ["insmod", "mkswap", "swapon", "workload", "swapoff", "rmmod"] {
        assert_eq!(num(result, key), Some(0), "{key} failed: {result:?}");
    }
    assert_eq!(result.get("status").map(String::as_str), Some("pass"));
    assert!(
        log.contains("TMEM-WORKLOAD status=ok"),
        "workload did not verify"
    );
    let stored = num(result, "pages_stored").unwrap_or(0);
    let loaded = num(result, "pages_loaded").unwrap_or(0);
    assert!(
        stored > 1000 && loaded > 1000,
        "pages must go to the appliance and come back: {result:?}"
    );
    for key in [
        "failed_requests",
        "checksum_errors",
        "lost_pages",
        "protocol_errors",
    ] {
        assert_eq!(num(result, key), Some(0), "{key} nonzero: {result:?}");
    }
}

/// Waits (bounded) until the VM has exited; returns whether it did.
pub fn wait_exit(vm: &mut Qemu, timeout: Duration) -> bool {
    crate::poll(timeout, Duration::from_millis(100), || {
        Ok((!vm.is_running()).then_some(()))
    })
    .is_ok_and(|exited| exited.is_some())
}

/// Kernel warnings, oopses and hangs in a console log.
pub fn kernel_problems(log: &str) -> Vec<String> {
    kernel_problems_ignoring(log, &[])
}

/// Like [`kernel_problems`], minus lines containing any of `ignore` (e.g. the stack trace of an
/// expected OOM kill; a WARN or BUG still shows up through its own line).
pub fn kernel_problems_ignoring(log: &str, ignore: &[&str]) -> Vec<String> {
    const BAD: &[&str] = &[
        "WARNING:",
        "BUG:",
        "Oops",
        "kernel BUG",
        "Call Trace",
        "general protection",
        "Kernel panic",
        "sleeping function called from invalid context",
        "blocked for more than",
        "soft lockup",
    ];
    log.lines()
        .filter(|l| BAD.iter().any(|b| l.contains(b)))
        .filter(|l| !ignore.iter().any(|i| l.contains(i)))
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_result_line() {
        let log = "boot\r\nTMEM-PHASE x\r\nTMEM-RESULT test=swap status=pass pages_stored=12 \r\n";
        let r = parse_result(log).expect("result line");
        assert_eq!(r.get("status").map(String::as_str), Some("pass"));
        assert_eq!(num(&r, "pages_stored"), Some(12));
        assert!(parse_result("nothing").is_none());
    }

    #[test]
    fn tagged_lines_come_in_order_and_only_with_their_tag() {
        let log = "TMEM-EVIL mode=a w1=0\nTMEM-EVILX mode=z\nnoise\n[ 3.1] TMEM-EVIL mode=b w1=1\n";
        let rows: Vec<HashMap<String, String>> = tagged_lines(log, "TMEM-EVIL").collect();
        let modes: Vec<&str> = rows.iter().map(|r| r["mode"].as_str()).collect();
        assert_eq!(modes, ["a", "b"]);
        assert_eq!(rows[1]["w1"], "1");
    }

    #[test]
    fn finds_kernel_problems() {
        assert!(kernel_problems("[ 1.0] ok\n").is_empty());
        assert_eq!(
            kernel_problems("[ 2.0] BUG: kernel NULL pointer\n").len(),
            1
        );
    }
}
