//! A private network namespace with one tap device, for VMs that need a faster network than QEMU
//! user networking (slirp), whose user-space TCP stack is the bottleneck of any swap-over-TCP
//! measurement under TCG and treats some traffic patterns (NBD's) very badly.
//!
//! The tap device carries [`NetNs::HOST`] (10.0.2.2/24), the address the client VM's init script
//! already uses for "the host", so guests need no change. Servers (the host-mode appliance,
//! qemu-nbd) and the client VM's QEMU run inside the namespace ([`NetNs::command`]); nothing is
//! added to the machine's own network. Needs root and `/dev/net/tun`; [`NetNs::unavailable`] says why
//! not. The namespace (and its tap device) is deleted when the guard drops.

use std::io;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// A network namespace made for this process; deleted on drop.
pub struct NetNs {
    name: String,
}

impl NetNs {
    /// The host side of the tap device, as the guests see it.
    pub const HOST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
    /// The tap device inside the namespace (one QEMU at a time may use it).
    pub const TAP: &'static str = "tmtap0";

    /// Why a namespace with a tap device cannot be made on this machine, or `None` if it can.
    pub fn unavailable() -> Option<String> {
        if !crate::is_root() {
            return Some("needs root (network namespaces and tap devices)".into());
        }
        if !std::path::Path::new("/dev/net/tun").exists() {
            return Some("/dev/net/tun is missing".into());
        }
        let ip = Command::new("ip")
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !ip.is_ok_and(|s| s.success()) {
            return Some("the `ip` tool (iproute2) is missing".into());
        }
        None
    }

    /// Creates `tmem-<tag>-<pid>-<n>` with loopback up and [`Self::TAP`] at [`Self::HOST`]/24.
    /// Namespaces left by an earlier process that was killed before its guards ran (their pid is
    /// gone) are deleted first.
    pub fn create(tag: &str) -> io::Result<NetNs> {
        remove_stale(tag);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "tmem-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name])?;
        // From here on the guard deletes the namespace, also if a step below fails.
        let ns = NetNs { name };
        let host = format!("{}/24", Self::HOST);
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns.name,
            "tuntap",
            "add",
            "dev",
            Self::TAP,
            "mode",
            "tap",
        ])?;
        ip(&["-n", &ns.name, "addr", "add", &host, "dev", Self::TAP])?;
        ip(&["-n", &ns.name, "link", "set", Self::TAP, "up"])?;
        Ok(ns)
    }

    /// Where a server listens for the client VM: [`Self::HOST`] inside `netns`, else 127.0.0.1
    /// (QEMU user networking forwards the guest's 10.0.2.2 there).
    pub fn server_host(netns: Option<&NetNs>) -> Ipv4Addr {
        netns.map_or(Ipv4Addr::LOCALHOST, |_| Self::HOST)
    }

    /// `cmd` inside `netns` if there is one ([`Self::command`]), else `cmd` itself.
    pub fn command_in(netns: Option<&NetNs>, cmd: Command) -> Command {
        match netns {
            Some(ns) => ns.command(&cmd),
            None => cmd,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `cmd` run inside the namespace (`ip netns exec`, which execs it: the child's pid is the
    /// program's own, so killing the child kills the program).
    pub fn command(&self, cmd: &Command) -> Command {
        let mut wrapped = Command::new("ip");
        wrapped
            .args(["netns", "exec", &self.name])
            .arg(cmd.get_program())
            .args(cmd.get_args());
        for (key, value) in cmd.get_envs() {
            match value {
                Some(v) => wrapped.env(key, v),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// The QEMU `-netdev` value that attaches a VM to the tap device.
    pub fn tap_netdev(&self) -> String {
        format!("tap,id=n0,ifname={},script=no,downscript=no", Self::TAP)
    }

    /// Waits (bounded in time and attempts) until something inside the namespace accepts TCP
    /// connections on [`Self::HOST`]:`port`.
    pub fn wait_for_port(&self, port: u16, timeout: Duration) -> io::Result<()> {
        self.wait_for(Self::HOST, port, timeout)
    }

    /// Waits (bounded in time and attempts) until `addr`:`port` accepts TCP connections from
    /// inside the namespace (a server in it, or a guest on its tap device).
    pub fn wait_for(&self, addr: Ipv4Addr, port: u16, timeout: Duration) -> io::Result<()> {
        let probe = format!("exec 3<>/dev/tcp/{addr}/{port}");
        let open = crate::poll(timeout, Duration::from_millis(100), || {
            let mut cmd = Command::new("timeout");
            cmd.args(["2", "bash", "-c", &probe]);
            let ok = self
                .command(&cmd)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            Ok(ok.then_some(()))
        })?;
        open.ok_or_else(|| {
            crate::timed_out(format!(
                "nothing listening on {addr}:{port} in {} within {timeout:?}",
                self.name
            ))
        })
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        // Deleting the namespace removes its tap device; processes still inside keep it alive
        // until they exit (the callers' guards kill them first).
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Deletes `tmem-<tag>-<pid>-<n>` namespaces whose process no longer exists.
fn remove_stale(tag: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return;
    };
    let prefix = format!("tmem-{tag}-");
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let pid = rest.split('-').next().unwrap_or("");
        if !pid.is_empty() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn ip(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn namespace_has_the_tap_address_and_is_deleted_on_drop() {
        if let Some(why) = NetNs::unavailable() {
            eprintln!("SKIP namespace test: {why}");
            return;
        }
        let ns = NetNs::create("unit").expect("create namespace");
        let name = ns.name().to_string();
        let mut show = Command::new("ip");
        show.args(["-4", "-o", "addr", "show", "dev", NetNs::TAP]);
        let out = ns.command(&show).output().expect("ip inside the namespace");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("10.0.2.2/24"), "tap address: {text}");
        // Nothing listens yet: the probe must fail within its bound.
        let start = Instant::now();
        assert!(ns.wait_for_port(9, Duration::from_millis(300)).is_err());
        assert!(start.elapsed() < Duration::from_secs(10));
        drop(ns);
        let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
        assert!(!String::from_utf8_lossy(&list.stdout).contains(&name));
    }
}
