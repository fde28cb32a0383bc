//! Hostile and broken clients over real TCP: every case gets a clear error or a closed connection,
//! the appliance never panics or hangs, and other clients keep working.

use appliance::server::{Background, Server, ServerConfig};
use appliance::store::{Store, StoreConfig};
use protocol::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn start(frame_timeout: Duration) -> Background {
    let store = Arc::new(Store::new(StoreConfig {
        memory_limit: 64 << 20,
        client_quota: None,
        raw_threshold: appliance::codec::DEFAULT_RAW_THRESHOLD,
    }));
    let config = ServerConfig {
        max_connections: 4096,
        frame_timeout,
    };
    Server::bind("127.0.0.1:0", store, config)
        .unwrap()
        .spawn()
        .unwrap()
}

struct Conn {
    s: TcpStream,
    next: u64,
}

impl Conn {
    fn open(app: &Background) -> Conn {
        let s = TcpStream::connect(app.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn { s, next: 1 }
    }

    fn hello(app: &Background, client: u64) -> Conn {
        let mut c = Conn::open(app);
        let (status, _) = c.call(&Request::Hello(Hello::new(client)), 0);
        assert_eq!(status, Status::Ok);
        c
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).unwrap();
    }

    /// Reads one reply frame: (header, payload).
    fn recv(&mut self) -> (Header, Vec<u8>) {
        let mut head = [0u8; HEADER_LEN];
        self.s.read_exact(&mut head).expect("reply header");
        let h = Header::parse(&head).unwrap();
        let mut payload = vec![0u8; h.payload_len as usize];
        self.s.read_exact(&mut payload).unwrap();
        (h, payload)
    }

    fn call(&mut self, req: &Request<'_>, flags: u16) -> (Status, Vec<u8>) {
        let mut buf = vec![0u8; MAX_FRAME];
        let id = self.next;
        self.next += 1;
        let n = req.emit(id, flags, &mut buf).unwrap();
        self.send_raw(&buf[..n]);
        let (h, payload) = self.recv();
        assert_eq!(h.request_id, id);
        assert!(h.is_reply());
        (Status::from_u16(h.status).unwrap(), payload)
    }

    /// True once the server has closed the connection (EOF or reset) within the deadline.
    fn closed_within(&mut self, limit: Duration) -> bool {
        self.s.set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 64];
        let start = Instant::now();
        while start.elapsed() < limit {
            match self.s.read(&mut b) {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
        false
    }
}

fn new_pool(c: &mut Conn) -> u32 {
    let (status, payload) = c.call(
        &Request::NewPool(NewPool {
            kind: PoolKind::Persistent,
            page_size: 4096,
        }),
        0,
    );
    assert_eq!(status, Status::Ok);
    u32::from_le_bytes(payload[..4].try_into().unwrap())
}

fn text_page() -> Vec<u8> {
    b"remote memory "
        .iter()
        .cycle()
        .take(PAGE_SIZE)
        .copied()
        .collect()
}

/// The appliance still serves a well-behaved client end to end.
fn assert_healthy(app: &Background) {
    let mut c = Conn::hello(app, 0xfeed);
    let pool = new_pool(&mut c);
    let data = text_page();
    let key = PageKey {
        pool,
        object: [1, 1, 1],
        index: 1,
    };
    let page = Page {
        encoding: Encoding::Raw,
        crc: crc32c(&data),
        data: &data,
    };
    assert_eq!(c.call(&Request::Put { key, page }, 0).0, Status::Ok);
    let (status, payload) = c.call(&Request::Get { key }, 0);
    assert_eq!(status, Status::Ok);
    let got = Page::parse(&payload).unwrap();
    assert_eq!(got.encoding, Encoding::Raw);
    assert_eq!(got.data, &data[..]);
}

#[test]
fn requests_before_hello_are_refused() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::open(&app);
    let (status, _) = c.call(&Request::Stats, 0);
    assert_eq!(status, Status::NotAuthenticated);
    assert_healthy(&app);
}

#[test]
fn unsupported_version_range_is_refused() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::open(&app);
    let hello = Hello {
        min_version: 2,
        max_version: 9,
        ..Hello::new(1)
    };
    assert_eq!(
        c.call(&Request::Hello(hello), 0).0,
        Status::UnsupportedVersion
    );
}

#[test]
fn bad_magic_closes_only_that_connection() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::open(&app);
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_healthy(&app);
}

#[test]
fn oversized_frame_is_refused_before_buffering() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::hello(&app, 1);
    let h = Header {
        opcode: Opcode::PutPage as u8,
        flags: 0,
        request_id: 9,
        payload_len: u32::MAX,
        status: 0,
    };
    let mut head = [0u8; HEADER_LEN];
    // emit refuses nothing here: the length is checked by the receiver.
    h.emit(&mut head).unwrap();
    c.send_raw(&head);
    assert!(c.closed_within(Duration::from_secs(5)));
    assert_healthy(&app);
}

#[test]
fn unknown_opcode_gets_an_error_and_the_connection_stays_usable() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::hello(&app, 1);
    let h = Header {
        opcode: 77,
        flags: 0,
        request_id: 500,
        payload_len: 0,
        status: 0,
    };
    let mut head = [0u8; HEADER_LEN];
    h.emit(&mut head).unwrap();
    c.send_raw(&head);
    let (reply, message) = c.recv();
    assert_eq!(reply.request_id, 500);
    assert_eq!(Status::from_u16(reply.status), Some(Status::UnknownOpcode));
    assert!(String::from_utf8_lossy(&message).contains("unknown opcode 77"));
    assert_eq!(c.call(&Request::Stats, 0).0, Status::Ok);
}

#[test]
fn malformed_payloads_get_clear_errors() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::hello(&app, 1);
    let pool = new_pool(&mut c);
    let key = PageKey {
        pool,
        object: [0; 3],
        index: 0,
    };
    let data = text_page();
    // Wrong checksum.
    let page = Page {
        encoding: Encoding::Raw,
        crc: crc32c(&data) ^ 0xdead,
        data: &data,
    };
    assert_eq!(
        c.call(&Request::Put { key, page }, 0).0,
        Status::BadChecksum
    );
    // Corrupt LZ4 (valid framing, garbage block).
    let garbage = [0xffu8; 100];
    let page = Page {
        encoding: Encoding::Lz4,
        crc: crc32c(&data),
        data: &garbage,
    };
    assert_eq!(
        c.call(&Request::Put { key, page }, 0).0,
        Status::CorruptPayload
    );
    // LZ4 that decodes to less than a page.
    let short = lz4_block_of(&data[..1000]);
    let page = Page {
        encoding: Encoding::Lz4,
        crc: crc32c(&data),
        data: &short,
    };
    assert_eq!(
        c.call(&Request::Put { key, page }, 0).0,
        Status::CorruptPayload
    );
    // Unknown pool, and a pool of another client.
    let page = Page {
        encoding: Encoding::Raw,
        crc: crc32c(&data),
        data: &data,
    };
    let missing = PageKey {
        pool: 999_999,
        ..key
    };
    assert_eq!(
        c.call(&Request::Put { key: missing, page }, 0).0,
        Status::UnknownPool
    );
    let mut other = Conn::hello(&app, 2);
    assert_eq!(other.call(&Request::Get { key }, 0).0, Status::UnknownPool);
    // Wrong page size.
    let np = Request::NewPool(NewPool {
        kind: PoolKind::Ephemeral,
        page_size: 8192,
    });
    assert_eq!(c.call(&np, 0).0, Status::Malformed);
    // A truncated PUT payload inside a well-formed frame.
    let mut buf = vec![0u8; MAX_FRAME];
    let n = Request::Put { key, page }.emit(42, 0, &mut buf).unwrap();
    let cut = n - 100;
    buf[16..20].copy_from_slice(&((cut - HEADER_LEN) as u32).to_le_bytes());
    c.send_raw(&buf[..cut]);
    let (h, _) = c.recv();
    assert_eq!(
        (h.request_id, Status::from_u16(h.status)),
        (42, Some(Status::Malformed))
    );
    // Nothing was stored by any of this.
    assert_eq!(c.call(&Request::Get { key }, 0).0, Status::NotFound);
    assert_healthy(&app);
}

fn lz4_block_of(data: &[u8]) -> Vec<u8> {
    // A minimal valid LZ4 block: one sequence of literals only (token, length bytes, literals).
    let mut out = Vec::new();
    let len = data.len();
    out.push(0xF0);
    let mut rest = len - 15;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
    out.extend_from_slice(data);
    out
}

#[test]
fn batch_entries_fail_individually() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::hello(&app, 1);
    let pool = new_pool(&mut c);
    let data = text_page();
    let good = Page {
        encoding: Encoding::Raw,
        crc: crc32c(&data),
        data: &data,
    };
    let bad = Page {
        crc: good.crc ^ 1,
        ..good
    };
    let mut buf = vec![0u8; MAX_FRAME];
    let mut w = BatchWriter::new(&mut buf).unwrap();
    w.push_request(
        &Request::Put {
            key: PageKey {
                pool,
                object: [0; 3],
                index: 0,
            },
            page: good,
        },
        0,
    )
    .unwrap();
    w.push_request(
        &Request::Put {
            key: PageKey {
                pool,
                object: [0; 3],
                index: 1,
            },
            page: bad,
        },
        0,
    )
    .unwrap();
    w.push_request(
        &Request::Get {
            key: PageKey {
                pool,
                object: [0; 3],
                index: 0,
            },
        },
        0,
    )
    .unwrap();
    w.push_request(
        &Request::Get {
            key: PageKey {
                pool: 4242,
                object: [0; 3],
                index: 0,
            },
        },
        0,
    )
    .unwrap();
    let n = w.finish_request(7, 0).unwrap();
    c.send_raw(&buf[..n]);
    let (h, payload) = c.recv();
    assert_eq!(h.request_id, 7);
    let Reply::Batch(entries) = Reply::parse(h.opcode, h.status, &payload).unwrap() else {
        panic!()
    };
    let statuses: Vec<Status> = entries.map(|e| e.reply().unwrap().status()).collect();
    assert_eq!(
        statuses,
        [
            Status::Ok,
            Status::BadChecksum,
            Status::Ok,
            Status::UnknownPool
        ]
    );
}

#[test]
fn peer_that_stalls_mid_frame_is_dropped_and_others_continue() {
    let app = start(Duration::from_secs(2));
    let mut staller = Conn::hello(&app, 1);
    let mut buf = vec![0u8; MAX_FRAME];
    let n = Request::Stats.emit(5, 0, &mut buf).unwrap();
    staller.send_raw(&buf[..n - 10]);
    assert_healthy(&app);
    assert!(
        staller.closed_within(Duration::from_secs(8)),
        "stalled peer was not dropped"
    );
}

#[test]
fn peer_that_disconnects_mid_frame_loses_nothing_else() {
    let app = start(Duration::from_secs(5));
    let mut keeper = Conn::hello(&app, 3);
    let pool = new_pool(&mut keeper);
    let data = text_page();
    let key = PageKey {
        pool,
        object: [3; 3],
        index: 3,
    };
    let page = Page {
        encoding: Encoding::Raw,
        crc: crc32c(&data),
        data: &data,
    };
    assert_eq!(keeper.call(&Request::Put { key, page }, 0).0, Status::Ok);
    for cut in [1, HEADER_LEN - 1, HEADER_LEN + 7, 1000] {
        let mut c = Conn::hello(&app, 3);
        let mut buf = vec![0u8; MAX_FRAME];
        let n = Request::Put {
            key: PageKey { index: 4, ..key },
            page,
        }
        .emit(1, 0, &mut buf)
        .unwrap();
        c.send_raw(&buf[..cut.min(n - 1)]);
        drop(c);
    }
    let (status, payload) = keeper.call(&Request::Get { key }, 0);
    assert_eq!(status, Status::Ok);
    assert_eq!(Page::parse(&payload).unwrap().data, &data[..]);
    assert_eq!(
        keeper
            .call(
                &Request::Get {
                    key: PageKey { index: 4, ..key }
                },
                0
            )
            .0,
        Status::NotFound
    );
}

#[test]
fn reply_frames_from_a_client_close_the_connection() {
    let app = start(Duration::from_secs(5));
    let mut c = Conn::hello(&app, 1);
    let mut buf = vec![0u8; 256];
    let n = Reply::Done
        .emit(Opcode::PutPage as u8, 1, &mut buf)
        .unwrap();
    c.send_raw(&buf[..n]);
    assert!(c.closed_within(Duration::from_secs(5)));
}

#[test]
fn thousands_of_idle_connections() {
    let app = start(Duration::from_secs(30));
    let idle: Vec<TcpStream> = (0..2000)
        .map(|_| TcpStream::connect(app.addr()).unwrap())
        .collect();
    assert_healthy(&app);
    let mut c = Conn::hello(&app, 9);
    let (status, payload) = c.call(&Request::Stats, 0);
    assert_eq!(status, Status::Ok);
    let stats = StatsView::parse(&payload).unwrap();
    assert!(stats.get(StatId::Connections).unwrap() >= 2000);
    drop(idle);
}

#[test]
fn hello_nonces_are_fresh() {
    let app = start(Duration::from_secs(5));
    let nonce = || {
        let mut c = Conn::open(&app);
        let (status, payload) = c.call(&Request::Hello(Hello::new(1)), 0);
        assert_eq!(status, Status::Ok);
        let Reply::Hello(h) = Reply::parse(Opcode::Hello as u8, 0, &payload).unwrap() else {
            panic!()
        };
        h.nonce
    };
    let (a, b) = (nonce(), nonce());
    assert_ne!(a, b);
    assert_ne!(a, [0; HELLO_NONCE_LEN]);
}
