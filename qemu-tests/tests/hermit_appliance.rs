//! Boots the Hermit appliance image under QEMU TCG and checks that it answers on its port.
//!
//! A VM test (ignored by `cargo test`; `cargo xtask test-vm` runs it): needs
//! `target/images/{loader,appliance}` (or `$TMEM_IMAGES`) from `cargo xtask image`, and fails
//! saying so without them. Only 127.0.0.1 is contacted.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use protocol::{frame_len, Header, Hello, Reply, Request, HEADER_LEN, MAX_FRAME};
use qemu_tests::{free_port, hermit_image, wait_for_port, Qemu};

/// Boot to "listening" is ~1 s under TCG on an idle machine; the machines are shared and busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(90);
const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// Sends one request frame and reads exactly one reply frame.
fn round_trip(stream: &mut std::net::TcpStream, request: &Request<'_>, id: u64) -> Vec<u8> {
    let mut frame = vec![0u8; MAX_FRAME];
    let len = request.emit(id, 0, &mut frame).expect("encode request");
    stream.write_all(&frame[..len]).expect("send request");

    let mut buf = Vec::with_capacity(MAX_FRAME);
    let mut chunk = [0u8; 4096];
    let deadline = Instant::now() + IO_TIMEOUT;
    // Bounded: each read either makes progress or times out (read timeout set by the caller).
    for _ in 0..MAX_FRAME + 16 {
        if let Some(len) = frame_len(&buf).expect("reply framing") {
            if buf.len() >= len {
                buf.truncate(len);
                return buf;
            }
        }
        assert!(
            Instant::now() < deadline,
            "reply incomplete after {IO_TIMEOUT:?}"
        );
        let n = stream.read(&mut chunk).expect("read reply");
        assert!(
            n > 0,
            "appliance closed the connection after {} bytes",
            buf.len()
        );
        buf.extend_from_slice(&chunk[..n]);
    }
    panic!("reply never completed");
}

#[test]
#[ignore = "VM test: run by cargo xtask test-vm"]
fn hermit_appliance_boots_and_answers_hello() {
    let image = hermit_image();
    let port = free_port();
    let listen = format!("0.0.0.0:{port}");
    let start = Instant::now();
    let mut vm = Qemu::boot_hermit(
        "hermit-appliance",
        &image,
        "1G",
        port,
        // Clients without keys: the VM is reached only through QEMU's forward from 127.0.0.1.
        &["--listen", &listen, "--insecure", "--memory", "256MiB"],
    )
    .expect("start qemu-system-x86_64");

    let booted = vm
        .wait_for_output("appliance listening on", BOOT_TIMEOUT)
        .expect("appliance booted");
    eprintln!("appliance listening {booted:?} after QEMU start");

    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = wait_for_port(addr, IO_TIMEOUT).expect("forwarded port reachable");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();

    let reply = round_trip(&mut stream, &Request::Hello(Hello::new(0x746d_656d)), 1);
    let header = Header::parse(&reply).expect("reply header");
    assert!(header.is_reply(), "got a non-reply frame: {header:?}");
    assert_eq!(header.request_id, 1);
    let reply =
        Reply::parse(header.opcode, header.status, &reply[HEADER_LEN..]).expect("reply body");
    let Reply::Hello(hello) = reply else {
        panic!(
            "HELLO answered with {reply:?}; log {}",
            vm.log_path().display()
        );
    };
    assert_eq!(hello.version, u16::from(protocol::VERSION));
    assert!(vm.is_running(), "VM died after answering");
    eprintln!(
        "HELLO answered {:?} after QEMU start: {hello:?}",
        start.elapsed()
    );
}
