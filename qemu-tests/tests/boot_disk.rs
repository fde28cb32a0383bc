//! The appliance's boot disk (`target/images/tmem-appliance.img` from `cargo xtask image`), booted
//! as a spare machine would boot it: from the disk, through GRUB, no `-kernel`, its settings from
//! the `tmem.conf` an operator edits on the disk's FAT partition.
//! - with an Intel e1000e NIC, under SeaBIOS and under OVMF (UEFI): a verified bench runs against
//!   it with the key from its tmem.conf, and under SeaBIOS the conformance suite too;
//!   boot-to-serving time (QEMU start to the first HELLO answered) is printed for each;
//! - a client VM's kclient swaps a verified workload to it (e1000e);
//! - with virtio-net, a static address from tmem.conf is the one it serves on;
//! - a broken tmem.conf: the console names the line and what is wrong, the VGA screen shows it,
//!   and nothing is served.
//!
//! VM tests (ignored by `cargo test`; `cargo xtask test-vm` runs them): they need the disk image
//! (`cargo xtask image`), mtools and OVMF (Debian packages `mtools`, `ovmf`: `cargo xtask test-vm`
//! installs them) and `target/release/tmemctl`, and fail saying so without them.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use qemu_tests::artefacts::{images_dir, require_files, required};
use qemu_tests::{free_port, run_bounded, workspace_root, Nic, Qemu};
use support::checks::{conformance_passes, key_hex, verified_bench};
use tmemctl::secure::Identity;

/// GRUB's menu waits 2 s; OVMF's start under TCG takes 10-30 s on a busy machine.
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
/// Debian's OVMF build (package `ovmf`).
const OVMF_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.fd";
const OVMF_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.fd";

/// Which firmware boots the disk.
#[derive(Clone, Copy, Debug)]
enum Firmware {
    SeaBios,
    Ovmf,
}

/// A private copy of the boot disk, its tmem.conf replaced by `conf`.
/// A private copy of the boot disk (64 MiB). It and its side files (tmem.conf, OVMF's variables,
/// the monitor socket) are removed when it is dropped, also when a test fails; a running QEMU
/// keeps its open files.
struct Disk(PathBuf);

impl std::ops::Deref for Disk {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        for ext in ["img", "conf", "vars.fd", "monitor"] {
            let _ = std::fs::remove_file(self.0.with_extension(ext));
        }
    }
}

fn disk_with(name: &str, conf: &str) -> Disk {
    let image = images_dir().join("tmem-appliance.img");
    required(require_files(&[&image], "cargo xtask image"));
    let dir = workspace_root().join("target/qemu-tests");
    std::fs::create_dir_all(&dir).expect("target/qemu-tests");
    let disk = dir.join(format!("{name}-{}.img", std::process::id()));
    std::fs::copy(&image, &disk).expect("copy of the boot disk");
    let disk = Disk(disk);
    let conf_file = disk.with_extension("conf");
    std::fs::write(&conf_file, conf).expect("tmem.conf written");
    // mtools reaches the partition at its 1 MiB offset, as an operator's OS would mount it.
    let mut mcopy = Command::new("mcopy");
    mcopy
        .arg("-o")
        .arg("-i")
        .arg(format!("{}@@1M", disk.display()))
        .arg(&conf_file)
        .arg("::/tmem.conf");
    let out = run_bounded(mcopy, Duration::from_secs(30)).expect("mcopy ran");
    assert!(out.status.success(), "mcopy failed: {}", out.stderr);
    disk
}

/// Boots `disk` under `firmware` with 1 GiB and a virtio-net NIC whose guest `port` QEMU forwards
/// from 127.0.0.1 (to `guest`, default the address QEMU's DHCP server hands out); `monitor` gets
/// QEMU's human monitor if given.
fn boot(
    name: &str,
    disk: &Path,
    firmware: Firmware,
    nic: Nic,
    port: u16,
    guest: Option<&str>,
    monitor: Option<&Path>,
) -> Qemu {
    let guest = guest.unwrap_or("");
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-cpu", "max", "-smp", "1", "-m", "1G", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=ide", disk.display()))
        .args([
            "-netdev",
            &format!("user,id=n0,hostfwd=tcp:127.0.0.1:{port}-{guest}:{port}"),
        ])
        // No option ROM: the firmware then offers no network boot before the disk.
        .args(["-device", &format!("{},romfile=", nic.device())]);
    match monitor {
        Some(path) => cmd
            .arg("-monitor")
            .arg(format!("unix:{},server,nowait", path.display())),
        None => cmd.args(["-monitor", "none"]),
    };
    if let Firmware::Ovmf = firmware {
        required(require_files(
            &[Path::new(OVMF_CODE), Path::new(OVMF_VARS)],
            "apt-get install ovmf (cargo xtask test-vm does)",
        ));
        let vars = disk.with_extension("vars.fd");
        std::fs::copy(OVMF_VARS, &vars).expect("copy of OVMF's variable store");
        cmd.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars.display()
            ));
    }
    Qemu::spawn(name, cmd).expect("QEMU started")
}

/// Polls (bounded) until a keyed HELLO to `addr` is answered; returns the time since `start`.
fn first_hello(addr: &str, id: &Identity, vm: &mut Qemu, start: Instant) -> Duration {
    let deadline = start + BOOT_TIMEOUT;
    loop {
        if tmemctl::bench::TmemBackend::connect(addr, id, false).is_ok() {
            return start.elapsed();
        }
        assert!(
            vm.is_running(),
            "VM stopped; log {}",
            vm.log_path().display()
        );
        assert!(
            Instant::now() < deadline,
            "no HELLO answered within {BOOT_TIMEOUT:?}; log {}:\n{}",
            vm.log_path().display(),
            vm.output()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// tmem.conf for `port` with `keys` (and nothing insecure).
fn conf(port: u16, keys: &[(u64, [u8; 32])]) -> String {
    let mut text = format!("# written by the boot_disk test\nmemory = auto\nport = {port}\n");
    for (id, key) in keys {
        text += &format!("key = {id:#x} {}\n", key_hex(key));
    }
    text
}

/// Boots the disk under `firmware` with a keyed tmem.conf (plus `extra` lines, and the guest
/// address they set if any); returns the VM, its address and keys.
fn serve(
    name: &str,
    firmware: Firmware,
    nic: Nic,
    extra: &str,
    guest: Option<&str>,
) -> (Qemu, String, std::collections::HashMap<u64, [u8; 32]>) {
    let keys = tmemctl::conformance::suite_keys(0xb007_d15c);
    let port = free_port();
    let listed: Vec<(u64, [u8; 32])> = keys.iter().map(|(id, k)| (*id, *k)).collect();
    let disk = disk_with(name, &(conf(port, &listed) + extra));
    let start = Instant::now();
    let mut vm = boot(name, &disk, firmware, nic, port, guest, None);
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
    let (id, key) = listed[0];
    let took = first_hello(&addr, &Identity::with_key(id, key), &mut vm, start);
    eprintln!(
        "boot to serving ({firmware:?}, {nic:?}, QEMU start to first HELLO answered): {took:.1?}"
    );
    let out = vm.output();
    assert!(
        out.contains("tmem.conf: port"),
        "loader did not read tmem.conf:\n{out}"
    );
    assert!(
        !out.contains(&key_hex(&key)),
        "a key reached the console log"
    );
    (vm, addr, keys)
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn boot_disk_under_seabios_passes_the_conformance_suite_and_a_verified_bench() {
    let (mut vm, addr, keys) = serve("disk-seabios", Firmware::SeaBios, Nic::E1000e, "", None);
    let (id, key) = keys.iter().next().map(|(i, k)| (*i, *k)).expect("a key");
    verified_bench(&addr, Some((id, &key)), 5000, &[], &vm);
    // The image's default `--frame-timeout` (tmem.conf does not set it).
    conformance_passes(&addr, Duration::from_secs(30), Some(keys), &vm);
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn boot_disk_under_uefi_serves_a_verified_bench() {
    let (mut vm, addr, keys) = serve("disk-ovmf", Firmware::Ovmf, Nic::E1000e, "", None);
    let (id, key) = keys.iter().next().map(|(i, k)| (*i, *k)).expect("a key");
    verified_bench(&addr, Some((id, &key)), 5000, &[], &vm);
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// A client VM (256 MiB, kclient with the key from tmem.conf) swaps a 384 MiB workload to the
/// appliance booted from the disk, through the port QEMU forwards from the host (10.0.2.2 in the
/// client's network): every byte verified, kclient's counters clean.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn boot_disk_appliance_takes_a_client_vms_swap() {
    use qemu_tests::linux_vm::{
        assert_swap_verified, boot_client, client_image, kernel_problems, parse_result, wait_exit,
    };
    let image = client_image();
    let (mut appliance, addr, keys) = serve("disk-swap", Firmware::SeaBios, Nic::E1000e, "", None);
    let port = addr.rsplit(':').next().expect("port");
    let (id, key) = keys.iter().next().map(|(i, k)| (*i, *k)).expect("a key");
    let append = format!(
        "tmem_test=swap tmem_target=10.0.2.2:{port} tmem_size=1G tmem_mib=384 \
         tmem_client_id={id:#x} tmem_key={}",
        key_hex(&key)
    );
    let mut vm = boot_client("disk-swap-client", &image, "256M", 2, &append).expect("client VM");
    let waited = vm.wait_for_output("TMEM-RESULT", Duration::from_secs(1200));
    let exited = wait_exit(&mut vm, Duration::from_secs(60));
    let log = vm.output();
    waited.unwrap_or_else(|e| panic!("no result: {e}"));
    let result = parse_result(&log).expect("TMEM-RESULT line");
    eprintln!("client swap to the boot-disk appliance: {result:?}");
    let problems = kernel_problems(&log);
    assert!(problems.is_empty(), "kernel problems: {problems:#?}");
    assert_swap_verified(&result, &log);
    assert!(exited, "client VM did not power off");
    assert!(
        appliance.is_running(),
        "appliance VM died; log {}",
        appliance.log_path().display()
    );
}

/// A static address from tmem.conf: QEMU forwards only to that address, so a kernel that took
/// DHCP's (10.0.2.15) instead would answer nothing.
#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn boot_disk_with_a_static_address_serves_on_it() {
    let (mut vm, addr, keys) = serve(
        "disk-static",
        Firmware::SeaBios,
        Nic::VirtioNet,
        "address = 10.0.2.77/24\ngateway = 10.0.2.2\n",
        Some("10.0.2.77"),
    );
    let (id, key) = keys.iter().next().map(|(i, k)| (*i, *k)).expect("a key");
    verified_bench(&addr, Some((id, &key)), 5000, &[], &vm);
    assert!(
        vm.output().contains("Static address 10.0.2.77/24"),
        "log {}",
        vm.log_path().display()
    );
    assert!(vm.is_running(), "VM died; log {}", vm.log_path().display());
}

/// Reads the first `rows` rows of the VGA text screen through QEMU's monitor (`xp` of 0xb8000).
fn screen_text(monitor: &Path, rows: usize) -> String {
    let mut mon = UnixStream::connect(monitor).expect("QEMU monitor");
    mon.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    writeln!(mon, "xp /{}hx 0xb8000", rows * 80).expect("monitor command");
    let mut reply = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match mon.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(_) if !reply.is_empty() => break,
            Err(_) => {}
        }
    }
    let reply = String::from_utf8_lossy(&reply);
    // Lines "00000000000b8000: 0x4f74 0x4f6d ...": each cell's low byte is the character.
    reply
        .lines()
        .filter_map(|l| l.split_once(": ").map(|(_, cells)| cells))
        .flat_map(|cells| cells.split_whitespace())
        .filter_map(|c| u16::from_str_radix(c.trim_start_matches("0x"), 16).ok())
        .map(|cell| char::from((cell & 0xff) as u8))
        .collect()
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn broken_tmem_conf_is_shown_with_its_line_and_nothing_is_served() {
    let port = free_port();
    let key = [7u8; 32];
    let text = format!("{}insecure = maybe\n", conf(port, &[(0x5e, key)]));
    let bad_line = text.lines().count();
    let disk = disk_with("disk-broken", &text);
    let monitor = disk.with_extension("monitor");
    let mut vm = boot(
        "disk-broken",
        &disk,
        Firmware::SeaBios,
        Nic::VirtioNet,
        port,
        None,
        Some(&monitor),
    );
    let expected = format!("tmem.conf line {bad_line}: insecure:");
    vm.wait_for_output(&expected, BOOT_TIMEOUT)
        .expect("the loader names the broken line on the serial console");
    let screen = screen_text(&monitor, 4);
    assert!(
        screen.contains("cannot start") && screen.contains(&expected),
        "the VGA screen does not show the error: {screen:?}"
    );
    // Nothing starts: the appliance never boots, so a HELLO is never answered.
    std::thread::sleep(Duration::from_secs(3));
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port)).to_string();
    assert!(
        tmemctl::bench::TmemBackend::connect(&addr, &Identity::with_key(0x5e, key), false).is_err(),
        "a HELLO was answered despite the broken tmem.conf"
    );
    assert!(!vm.output().contains("Hermit booted"), "the kernel started");
    assert!(
        vm.is_running(),
        "the machine must halt with the message, not power off"
    );
}
