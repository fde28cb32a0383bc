//! The appliance as a static (musl) Linux binary in a minimal Linux VM: the client kernel
//! (`target/images/bzImage`), an initramfs of busybox and the appliance, and an `/init` that
//! brings up eth0 and runs it. The like-for-like peer of the Hermit appliance VM, for `cargo
//! xtask vm-bench` and the swap bench's `kclient-linuxvm` backend.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::host::{cargo, ensure_apt_tool, run};
use crate::linux_initramfs::Cpio;
use crate::paths;

const MUSL: &str = "x86_64-unknown-linux-musl";

/// The VM: same machine and NIC as [`qemu_tests::hermit_command_fwd`] (one vCPU unless the
/// caller adds `-smp`; [`qemu_tests::appliance_nic`] forwarding `fwd_host`:`port`). The guest's
/// address follows that NIC's network; the appliance's arguments go on the kernel command line
/// (`tmem_args=`, commas for spaces).
pub fn command(
    bzimage: &Path,
    initramfs: &Path,
    memory: &str,
    fwd_host: Ipv4Addr,
    port: u16,
    app_args: &[impl AsRef<str>],
) -> Command {
    let app_args: Vec<&str> = app_args.iter().map(AsRef::as_ref).collect();
    let (nic, net) = qemu_tests::appliance_nic(fwd_host, port);
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-cpu", "max", "-m", memory])
        .args(["-display", "none", "-serial", "stdio", "-monitor", "none"])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(bzimage)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            &format!(
                "console=ttyS0 loglevel=3 panic=-1 tmem_ip={net}.15 tmem_gw={net}.2 tmem_args={}",
                app_args.join(",")
            ),
        ])
        .args(nic);
    cmd
}

/// `/init` of the VM: eth0 at `tmem_ip`/24 via `tmem_gw`, then the appliance.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev 2>/dev/null
arg() { sed -n "s/.*$1=\([^ ]*\).*/\1/p" /proc/cmdline; }
ip link set lo up
ip link set eth0 up
ip addr add "$(arg tmem_ip)/24" dev eth0
ip route add default via "$(arg tmem_gw)"
args=$(arg tmem_args | tr , ' ')
echo "linux appliance vm: eth0 up, starting appliance $args"
/bin/appliance $args
echo "linux appliance vm: appliance exited ($?)"
poweroff -f
"#;

/// Builds the static appliance and the initramfs (`target/images/vmbench/appliance-initramfs.cpio.gz`).
pub fn initramfs() -> Result<PathBuf> {
    run(Command::new("rustup").args(["target", "add", MUSL]))?;
    run(cargo().args(["build", "--release", "-p", "appliance", "--target", MUSL]))?;
    let appliance = paths::repo_root().join(format!("target/{MUSL}/release/appliance"));
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let busybox = match busybox {
        Some(b) => b,
        None => {
            ensure_apt_tool("busybox", "busybox-static")?;
            PathBuf::from("/bin/busybox")
        }
    };
    let dir = paths::images_out().join("vmbench");
    std::fs::create_dir_all(&dir)?;
    let out = dir.join("appliance-initramfs.cpio.gz");
    let mut cpio = Cpio::default();
    for d in ["bin", "proc", "sys", "dev", "tmp", "etc"] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.char_dev("dev/null", 1, 3);
    cpio.file("init", 0o755, INIT.as_bytes());
    cpio.file_from("bin/busybox", 0o755, &busybox)?;
    cpio.file_from("bin/appliance", 0o755, &appliance)?;
    cpio.write_gz(&out)?;
    Ok(out)
}
