//! Authenticated sessions against a host appliance with keys, attacked the ways docs/security.md
//! names: wrong key, unknown id, another client's id, no credentials, replayed and truncated
//! handshakes, a handshake flood, and a man in the middle (a proxy in this test) that alters,
//! replays, reorders, drops and injects records. Each is refused with a clear error and counted;
//! the appliance keeps serving honest clients; nothing crosses the wire in clear.

mod common;

use appliance::keys::KeyRing;
use appliance::server::IoModel;
use common::TestAppliance;
use protocol::noise::{self, Cipher, MSG1_LEN};
use protocol::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tmemctl::client::Client;
use tmemctl::secure::Identity;

const A: u64 = 0xa11ce;
const B: u64 = 0xb0b;
const KEY_A: [u8; 32] = [0xaa; 32];
const KEY_B: [u8; 32] = [0xbb; 32];
const T: Duration = Duration::from_secs(10);

fn appliance(io_model: IoModel) -> TestAppliance {
    let mut keys = KeyRing::new();
    keys.insert(A, KEY_A).unwrap();
    keys.insert(B, KEY_B).unwrap();
    TestAppliance::start_keyed(64 << 20, Duration::from_secs(5), io_model, keys)
}

fn page(seed: u8) -> [u8; PAGE_SIZE] {
    let mut p = [0u8; PAGE_SIZE];
    for (i, b) in p.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    p[..18].copy_from_slice(b"TMEM-SECRET-MARKER");
    p
}

/// An honest client stores a page and reads it back intact.
fn honest_round_trip(addr: &str) {
    let mut c = Client::connect_as(addr, &Identity::with_key(A, KEY_A), T).expect("honest HELLO");
    assert!(c.secure);
    let pool = c.new_pool(PoolKind::Persistent).unwrap();
    let key = PageKey {
        pool,
        object: [1, 2, 3],
        index: 4,
    };
    assert_eq!(c.put(key, &page(1)).unwrap(), Status::Ok);
    let mut out = [0u8; PAGE_SIZE];
    assert!(c.get(key, &mut out).unwrap());
    assert_eq!(out, page(1));
    c.destroy_pool(pool).unwrap();
}

fn refused(addr: &str, id: Identity) -> String {
    match Client::connect_as(addr, &id, T) {
        Ok(_) => panic!("{id:?} was let in"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn wrong_unknown_borrowed_and_missing_credentials_are_refused_and_counted() {
    for io in [IoModel::Threads, IoModel::EventLoop] {
        let app = appliance(io);
        let addr = app.target();
        let e = refused(&addr, Identity::with_key(A, [0xab; 32]));
        assert!(e.contains("not authenticated"), "wrong key: {e}");
        refused(&addr, Identity::with_key(0xc, KEY_A));
        // Client B's key under client A's id, and A's id without any key.
        refused(&addr, Identity::with_key(A, KEY_B));
        refused(&addr, Identity::insecure(A));
        refused(&addr, Identity::insecure(0xdead));
        assert_eq!(app.net().auth_failures.load(Ordering::Relaxed), 5, "{io:?}");
        assert_eq!(app.net().handshakes.load(Ordering::Relaxed), 0);
        honest_round_trip(&addr);
        assert_eq!(app.net().handshakes.load(Ordering::Relaxed), 1);
    }
}

/// A HELLO carrying message 1 as a client builds it (snow as initiator, `ts` as timestamp).
fn hello_frame(id: u64, key: &[u8; 32], ts: u64) -> Vec<u8> {
    let mut msg1 = [0u8; MSG1_LEN];
    let fields = Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(id)
    };
    let prologue = noise::prologue(&fields);
    let mut hs = snow::Builder::new("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
        .psk(0, key)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_initiator()
        .unwrap();
    hs.write_message(&ts.to_le_bytes(), &mut msg1).unwrap();
    let req = Request::Hello(Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(id)
    });
    let mut buf = vec![0u8; 256];
    let n = req.emit(1, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

/// Sends `bytes` on a fresh connection; returns the reply status (if any) and whether the
/// appliance then closed the connection.
fn send_hello(addr: &str, bytes: &[u8]) -> (Option<Status>, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut head = [0u8; HEADER_LEN];
    let status = match s.read_exact(&mut head) {
        Ok(()) => {
            let h = Header::parse(&head).unwrap();
            let mut payload = vec![0u8; h.payload_len as usize];
            s.read_exact(&mut payload).unwrap();
            Status::from_u16(h.status)
        }
        Err(_) => None,
    };
    let mut b = [0u8; 1];
    let closed = matches!(s.read(&mut b), Ok(0) | Err(_));
    (status, closed)
}

#[test]
fn replayed_and_truncated_handshakes_are_refused() {
    let app = appliance(IoModel::Threads);
    let addr = app.target();
    let now = 1_700_000_000_000_000_000;
    let hello = hello_frame(A, &KEY_A, now);
    let (first, _) = send_hello(&addr, &hello);
    assert_eq!(first, Some(Status::Ok));
    // The same message 1 again (an eavesdropper replaying it): refused, connection closed.
    let (again, closed) = send_hello(&addr, &hello);
    assert_eq!(again, Some(Status::NotAuthenticated));
    assert!(closed, "a refused HELLO closes the connection");
    // An older handshake of the same client, beyond the window: refused too.
    let (old, _) = send_hello(&addr, &hello_frame(A, &KEY_A, now - 600_000_000_000));
    assert_eq!(old, Some(Status::NotAuthenticated));
    // Message 1 cut short (a valid frame around too few auth bytes), and cut mid-frame.
    let mut short = hello_frame(A, &KEY_A, now + 1);
    short[HEADER_LEN + 6] = 30; // auth_len
    let cut = HEADER_LEN + 16 + 30;
    short[16..20].copy_from_slice(&((cut - HEADER_LEN) as u32).to_le_bytes());
    let (s, _) = send_hello(&addr, &short[..cut]);
    assert_eq!(s, Some(Status::NotAuthenticated));
    let full = hello_frame(A, &KEY_A, now + 2);
    let (s, closed) = send_hello(&addr, &full[..full.len() - 20]);
    assert_eq!(s, None);
    let _ = closed;
    assert_eq!(app.net().auth_failures.load(Ordering::Relaxed), 3);
    honest_round_trip(&addr);
}

#[test]
fn a_handshake_flood_is_refused_cheaply_while_honest_clients_are_served() {
    let app = appliance(IoModel::EventLoop);
    let addr = app.target();
    let flood_addr = addr.clone();
    let flood = std::thread::spawn(move || {
        let start = Instant::now();
        let mut refused = 0;
        for i in 0..300u64 {
            if start.elapsed() > Duration::from_secs(60) {
                break;
            }
            // Wrong keys under a real id, and unknown ids.
            let (id, key) = if i % 2 == 0 {
                (A, [i as u8; 32])
            } else {
                (0xf00d + i, KEY_A)
            };
            if send_hello(&flood_addr, &hello_frame(id, &key, i)).0
                == Some(Status::NotAuthenticated)
            {
                refused += 1;
            }
        }
        refused
    });
    for _ in 0..10 {
        honest_round_trip(&addr);
    }
    let refused = flood.join().unwrap();
    assert_eq!(refused, 300, "every flooding HELLO refused");
    assert_eq!(app.net().auth_failures.load(Ordering::Relaxed), 300);
    assert_eq!(app.net().handshakes.load(Ordering::Relaxed), 10);
}

/// What the man in the middle does to the n-th record of one direction.
#[derive(Clone, Copy, Debug)]
enum Attack {
    /// Forward the bytes as they are, without parsing records (a session without keys).
    Bytes,
    None,
    FlipBit(usize),
    Replay(usize),
    Reorder(usize),
    Drop(usize),
    Inject(usize),
}

/// A proxy between a client and the appliance that forwards the HELLO frame in each direction
/// as it is, then record by record, applying `up` to client->appliance records and `down` to the
/// others, and recording every byte it forwards.
struct Proxy {
    addr: String,
    wire: Arc<Mutex<Vec<u8>>>,
}

fn proxy(upstream: &str, up: Attack, down: Attack) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let wire = Arc::new(Mutex::new(Vec::new()));
    let (upstream, wire2) = (upstream.to_string(), wire.clone());
    std::thread::spawn(move || {
        // One client connection per proxy, bounded in time by the sockets' timeouts.
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let server = TcpStream::connect(&upstream).unwrap();
        for s in [&client, &server] {
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        }
        let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
        let w = wire2.clone();
        std::thread::spawn(move || relay(c2, s2, up, &w));
        relay(server, client, down, &wire2);
    });
    Proxy { addr, wire }
}

fn relay(mut from: TcpStream, mut to: TcpStream, attack: Attack, wire: &Mutex<Vec<u8>>) {
    let forward = |bytes: &[u8], to: &mut TcpStream| {
        wire.lock().unwrap().extend_from_slice(bytes);
        to.write_all(bytes)
    };
    if let Attack::Bytes = attack {
        // Not a secure session: plain frames, forwarded as they come.
        let mut buf = [0u8; 16 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf) {
            if forward(&buf[..n], &mut to).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
        return;
    }
    let mut head = [0u8; HEADER_LEN];
    if from.read_exact(&mut head).is_err() {
        return;
    }
    let len = Header::parse(&head)
        .map(|h| h.payload_len as usize)
        .unwrap_or(0);
    let mut hello = head.to_vec();
    hello.resize(HEADER_LEN + len, 0);
    if from.read_exact(&mut hello[HEADER_LEN..]).is_err() || forward(&hello, &mut to).is_err() {
        return;
    }
    let mut held: Option<Vec<u8>> = None;
    for n in 0..10_000 {
        let mut rec = [0u8; 2];
        if from.read_exact(&mut rec).is_err() {
            break;
        }
        let mut record = rec.to_vec();
        record.resize(2 + u16::from_le_bytes(rec) as usize, 0);
        if from.read_exact(&mut record[2..]).is_err() {
            break;
        }
        let sent = match attack {
            Attack::FlipBit(k) if k == n => {
                let last = record.len() - 1;
                record[last] ^= 0x10;
                forward(&record, &mut to)
            }
            Attack::Replay(k) if k == n => {
                forward(&record, &mut to).and_then(|()| forward(&record, &mut to))
            }
            Attack::Reorder(k) if k == n => {
                held = Some(record);
                Ok(())
            }
            Attack::Reorder(k) if k + 1 == n => forward(&record, &mut to)
                .and_then(|()| forward(&held.take().unwrap_or_default(), &mut to)),
            Attack::Drop(k) if k == n => Ok(()),
            Attack::Inject(k) if k == n => {
                let mut fake = vec![40, 0];
                fake.extend_from_slice(&[0x42; 40]);
                forward(&fake, &mut to).and_then(|()| forward(&record, &mut to))
            }
            _ => forward(&record, &mut to),
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = to.shutdown(std::net::Shutdown::Write);
}

/// Through the proxy, a session using `cipher`: pool, then three puts each flushed as its own
/// record, then their replies.
fn session_through(proxy: &Proxy, cipher: Cipher) -> anyhow::Result<()> {
    let id = Identity {
        cipher,
        ..Identity::with_key(A, KEY_A)
    };
    let mut c = Client::connect_as(&proxy.addr, &id, T)?;
    let pool = c.new_pool(PoolKind::Persistent)?;
    let data = page(7);
    let crc = crc32c(&data);
    let mut ids = Vec::new();
    for i in 0..3 {
        let key = PageKey {
            pool,
            object: [0; 3],
            index: i,
        };
        let put = Request::Put {
            key,
            page: Page {
                encoding: Encoding::Raw,
                crc,
                data: &data,
            },
        };
        ids.push(c.send(&put, 0)?);
        c.flush()?;
    }
    for _ in &ids {
        let r = c.recv()?;
        anyhow::ensure!(r.reply.status() == Status::Ok, "put: {}", r.reply.status());
    }
    let mut out = [0u8; PAGE_SIZE];
    let key = PageKey {
        pool,
        object: [0; 3],
        index: 1,
    };
    anyhow::ensure!(c.get(key, &mut out)? && out == data, "page back");
    c.destroy_pool(pool)?;
    Ok(())
}

/// With each cipher the appliance offers (AES-256-GCM and ChaCha20-Poly1305 records).
#[test]
fn records_altered_replayed_reordered_dropped_or_injected_end_the_session() {
    let app = appliance(IoModel::Threads);
    let mut expected_aead = 0;
    for cipher in Cipher::ALL {
        expected_aead = tampered_sessions_end(&app, cipher, expected_aead);
    }
}

/// The attacks on sessions using `cipher`; `expected_aead` AEAD failures were counted before.
/// Returns the count after.
fn tampered_sessions_end(app: &TestAppliance, cipher: Cipher, mut expected_aead: u64) -> u64 {
    let addr = app.target();
    // Sanity: an honest proxy changes nothing, and the wire never shows the page in clear.
    let p = proxy(&addr, Attack::None, Attack::None);
    session_through(&p, cipher).expect("through an honest proxy");
    let wire = p.wire.lock().unwrap().clone();
    assert!(wire.len() > 3 * PAGE_SIZE, "the proxy saw the session");
    assert!(
        !wire.windows(18).any(|w| w == b"TMEM-SECRET-MARKER"),
        "page contents crossed the wire in clear"
    );
    // Client -> appliance: record 0 is NEW_POOL, 1..=3 the puts.
    for attack in [
        Attack::FlipBit(1),
        Attack::Replay(1),
        Attack::Reorder(1),
        Attack::Drop(1),
        Attack::Inject(2),
    ] {
        let p = proxy(&addr, attack, Attack::None);
        let r = session_through(&p, cipher);
        assert!(r.is_err(), "{cipher:?}: {attack:?} went unnoticed");
        expected_aead += 1;
        let deadline = Instant::now() + Duration::from_secs(10);
        while app.net().aead_failures.load(Ordering::Relaxed) < expected_aead
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert_eq!(
            app.net().aead_failures.load(Ordering::Relaxed),
            expected_aead,
            "{cipher:?}: {attack:?} not counted by the appliance"
        );
        honest_round_trip(&addr);
    }
    // Appliance -> client: the client refuses the record.
    for attack in [Attack::FlipBit(0), Attack::Replay(0), Attack::Inject(1)] {
        let p = proxy(&addr, Attack::None, attack);
        let e = session_through(&p, cipher).expect_err("client accepted a tampered reply");
        let msg = format!("{e:#}");
        assert!(
            msg.contains("authentication") || msg.contains("record"),
            "{cipher:?}: {attack:?}: {msg}"
        );
    }
    honest_round_trip(&addr);
    expected_aead
}

/// The same page through an appliance serving clients without keys does show up on the wire:
/// the check above can fail.
#[test]
fn without_keys_the_marker_is_visible_on_the_wire() {
    let app = TestAppliance::start_with(64 << 20, Duration::from_secs(5), IoModel::Threads);
    let p = proxy(&app.target(), Attack::Bytes, Attack::Bytes);
    let mut c = Client::connect(&p.addr, A, T).unwrap();
    assert!(!c.secure);
    let pool = c.new_pool(PoolKind::Persistent).unwrap();
    let key = PageKey {
        pool,
        object: [0; 3],
        index: 0,
    };
    c.put(key, &page(2)).unwrap();
    drop(c);
    std::thread::sleep(Duration::from_millis(100));
    let wire = p.wire.lock().unwrap().clone();
    assert!(wire.windows(18).any(|w| w == b"TMEM-SECRET-MARKER"));
}
