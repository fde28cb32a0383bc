//! A LAN for one appliance VM at a time: a network namespace with a tap device
//! ([`crate::netns::NetNs`], the host side at 10.0.2.2) and a DHCP server (dnsmasq) that hands
//! the guest [`TapLan::GUEST`], as a LAN's router would. The Hermit image configures its network
//! only by DHCP; the Linux VM's init sets the same address itself. QEMU's tap backend offers the
//! guests checksum offload (and segmentation offload, which only Linux uses), which its user
//! networking does not.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::netns::NetNs;
use crate::ChildGuard;

/// The namespace and its DHCP server; both go when this drops (the server first).
pub struct TapLan {
    dhcp: ChildGuard,
    ns: NetNs,
}

impl TapLan {
    /// The address every guest on this LAN gets (and the Linux VM's init sets).
    pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 15);

    /// Makes the namespace and starts dnsmasq on its tap device. Needs root and dnsmasq
    /// (Debian's `dnsmasq-base`, which `cargo xtask test-vm` and `vm-bench --net tap` install).
    pub fn start(tag: &str) -> io::Result<TapLan> {
        if let Some(why) = NetNs::unavailable() {
            return Err(io::Error::other(format!(
                "a tap network needs a network namespace: {why}"
            )));
        }
        if which::which("dnsmasq").is_err() {
            return Err(io::Error::other(
                "dnsmasq is missing (apt-get install dnsmasq-base)",
            ));
        }
        let ns = NetNs::create(tag)?;
        let lease = format!("{},{},255.255.255.0,1h", Self::GUEST, Self::GUEST);
        let mut dnsmasq = Command::new("dnsmasq");
        dnsmasq
            .args([
                "--keep-in-foreground",
                "--no-resolv",
                "--no-hosts",
                "--port=0",
            ])
            .args(["--conf-file=/dev/null", "--user=root", "--bind-interfaces"])
            .arg(format!("--interface={}", NetNs::TAP))
            .arg(format!("--dhcp-range={lease}"))
            .arg(format!("--dhcp-option=option:router,{}", NetNs::HOST))
            .arg(format!("--dhcp-leasefile=/tmp/{}.leases", ns.name()));
        let child = ns
            .command(&dnsmasq)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut dhcp = ChildGuard::new(child);
        std::thread::sleep(Duration::from_millis(300));
        if !dhcp.is_running() {
            return Err(io::Error::other(format!(
                "dnsmasq exited at once in {}",
                ns.name()
            )));
        }
        Ok(TapLan { dhcp, ns })
    }

    /// `qemu` with its `-netdev` on the tap device, run inside the namespace.
    pub fn attach(&self, qemu: &Command) -> Command {
        self.ns
            .command(&crate::with_option(qemu, "-netdev", self.ns.tap_netdev()))
    }

    /// `cmd` run inside the namespace, where the guest is reachable.
    pub fn command(&self, cmd: &Command) -> Command {
        self.ns.command(cmd)
    }

    /// Waits (bounded) until the guest accepts connections on `port`.
    pub fn wait_for_guest(&self, port: u16, timeout: Duration) -> io::Result<()> {
        self.ns.wait_for(Self::GUEST, port, timeout)
    }
}

impl Drop for TapLan {
    fn drop(&mut self) {
        self.dhcp.kill();
        let _ = std::fs::remove_file(format!("/tmp/{}.leases", self.ns.name()));
    }
}
