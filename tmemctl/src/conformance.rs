//! Protocol conformance and robustness checks against a live appliance at any address: semantics
//! (pools, gets, flushes, batches) and hostile input (garbage, oversized, truncated, stalled and
//! abandoned frames, corrupt pages, many idle connections). The same cases run against host mode in
//! the test suite, against the Hermit VM in the QEMU tests, and from `tmemctl check`.
//!
//! Every case uses its own client id, so it never touches another client's pages; every wait is
//! bounded.

use crate::secure::{self, Identity, Reader, Writer, KEY_LEN};
use anyhow::{bail, ensure, Context, Result};
use protocol::noise::Cipher;
use protocol::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// What the checks may assume about the appliance.
#[derive(Clone)]
pub struct Options {
    /// The appliance's `--frame-timeout`: a peer stalling mid-frame must be dropped within it (+ slack).
    pub frame_timeout: Duration,
    /// How many idle connections to hold open at once.
    pub idle_connections: usize,
    /// How long any one read or write may wait ([`DEFAULT_IO_TIMEOUT`] unless the appliance runs
    /// somewhere that can pause for longer, such as a TCG VM on a busy host).
    pub io_timeout: Duration,
    /// Keys for [`suite_client_ids`] when the appliance has keys (every session then
    /// authenticated and encrypted); `None` for an appliance that serves clients without keys.
    pub keys: Option<HashMap<u64, [u8; KEY_LEN]>>,
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys.
        f.debug_struct("Options")
            .field("frame_timeout", &self.frame_timeout)
            .field("idle_connections", &self.idle_connections)
            .field("io_timeout", &self.io_timeout)
            .field("keys", &self.keys.as_ref().map(|k| k.len()))
            .finish()
    }
}

/// Keys for every id of the suite, derived from `seed` (so a test and the appliance it starts
/// agree on them without a file): `tmemctl check --keys-seed` and the VM tests use this.
pub fn suite_keys(seed: u64) -> HashMap<u64, [u8; KEY_LEN]> {
    suite_client_ids()
        .into_iter()
        .map(|id| {
            let mut key = [0u8; KEY_LEN];
            for (i, chunk) in key.chunks_mut(8).enumerate() {
                // SplitMix64: test keys only, never for real clients (`tmemctl keygen` is).
                let mut z =
                    seed ^ id.rotate_left(17) ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
                z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
                chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
            }
            (id, key)
        })
        .collect()
}

/// One named check.
pub struct Case {
    /// Short name, printed by `tmemctl check`.
    pub name: &'static str,
    /// The check.
    pub run: fn(&str, &Options) -> Result<()>,
}

/// Every check, in the order `run_all` runs them.
pub const CASES: &[Case] = &[
    Case {
        name: "persistent pages round-trip, raw and batched",
        run: round_trip,
    },
    Case {
        name: "sessions with either cipher carry pages (keyed appliances)",
        run: each_cipher,
    },
    Case {
        name: "ephemeral pages: GET_KEEP leaves them, a plain GET takes them",
        run: ephemeral_gets,
    },
    Case {
        name: "requests before HELLO are refused",
        run: before_hello,
    },
    Case {
        name: "unsupported version range is refused",
        run: bad_version_range,
    },
    Case {
        name: "garbage closes only that connection",
        run: bad_magic,
    },
    Case {
        name: "oversized frame is refused before buffering",
        run: oversized,
    },
    Case {
        name: "unknown opcode: error reply, connection usable",
        run: unknown_opcode,
    },
    Case {
        name: "bad checksum, corrupt LZ4, unknown pool, truncated payload",
        run: malformed_payloads,
    },
    Case {
        name: "batch entries fail individually",
        run: batch_errors,
    },
    Case {
        name: "a failed put never leaves the old page behind",
        run: failed_put_removes_old_page,
    },
    Case {
        name: "one identity per connection: a second HELLO is refused",
        run: second_hello,
    },
    Case {
        name: "peer disconnecting mid-frame loses nothing",
        run: disconnect_mid_frame,
    },
    Case {
        name: "reply frames from a client close it",
        run: reply_from_client,
    },
    Case {
        name: "HELLO nonces are fresh",
        run: fresh_nonces,
    },
    Case {
        name: "a flooding connection does not starve another",
        run: busy_neighbour,
    },
    Case {
        name: "idle connections do not block service",
        run: idle_connections,
    },
    Case {
        name: "peer stalling mid-frame is dropped",
        run: stall_mid_frame,
    },
];

/// Runs every case; fails listing the cases that failed.
pub fn run_all(
    addr: &str,
    opts: &Options,
    mut report: impl FnMut(&str, &Result<()>),
) -> Result<()> {
    let mut failed = Vec::new();
    for case in CASES {
        let r = (case.run)(addr, opts);
        report(case.name, &r);
        if let Err(e) = r {
            failed.push(format!("{}: {e:#}", case.name));
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} of {} checks failed:\n  {}",
            failed.len(),
            CASES.len(),
            failed.join("\n  ")
        );
    }
    Ok(())
}

/// Client ids for checks: far from what real clients use, different per case.
fn client_id(case: u64) -> u64 {
    0xc0f0_0000_0000_0000 | (u64::from(std::process::id()) << 8) | case
}

/// How long a read or write waits unless [`Options::io_timeout`] says otherwise.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(10);

fn connect(addr: &str, opts: &Options) -> Result<TcpStream> {
    let s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_read_timeout(Some(opts.io_timeout))?;
    s.set_write_timeout(Some(opts.io_timeout))?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// The client ids the suite uses (each case its own, so cases never touch each other's pages).
pub const SUITE_CASES: u64 = 20;
/// The id `healthy` checks use.
const HEALTHY: u64 = 0x80;

/// Every client id the suite says HELLO as: an appliance with keys needs a key for each
/// ([`Options::keys`]).
pub fn suite_client_ids() -> Vec<u64> {
    (1..=SUITE_CASES).chain([HEALTHY]).map(client_id).collect()
}

struct Conn {
    reader: Reader,
    writer: Writer,
    next: u64,
    nonce: [u8; HELLO_NONCE_LEN],
}

impl Conn {
    /// A connection that has not said HELLO (frames go in clear).
    fn open(addr: &str, opts: &Options) -> Result<Conn> {
        let s = connect(addr, opts)?;
        Ok(Conn {
            reader: Reader::Plain(s.try_clone()?),
            writer: Writer::Plain(s),
            next: 1,
            nonce: [0; HELLO_NONCE_LEN],
        })
    }

    /// A connection after HELLO as `client`: authenticated with its key when the suite has keys.
    fn hello(addr: &str, opts: &Options, client: u64) -> Result<Conn> {
        Conn::hello_with(addr, opts, client, secure::preferred_cipher())
    }

    /// [`Conn::hello`] with keyed sessions sealed by `cipher`.
    fn hello_with(addr: &str, opts: &Options, client: u64, cipher: Cipher) -> Result<Conn> {
        let key = match &opts.keys {
            Some(keys) => Some(
                *keys
                    .get(&client)
                    .with_context(|| format!("no suite key for client {client:#x}"))?,
            ),
            None => None,
        };
        let (reader, writer, greeting) = secure::hello(
            connect(addr, opts)?,
            &Identity {
                client_id: client,
                key,
                cipher,
            },
        )?;
        Ok(Conn {
            reader,
            writer,
            next: 1,
            nonce: greeting.nonce,
        })
    }

    fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        Ok(self.writer.write_all(bytes)?)
    }

    /// Sends a bare header (with whatever payload length it claims, and no payload).
    fn send_header(&mut self, opcode: u8, request_id: u64, payload_len: u32) -> Result<()> {
        let h = Header {
            opcode,
            flags: 0,
            request_id,
            payload_len,
            status: 0,
        };
        let mut head = [0u8; HEADER_LEN];
        h.emit(&mut head)?;
        self.send_raw(&head)
    }

    fn recv(&mut self) -> Result<(Header, Vec<u8>)> {
        let mut head = [0u8; HEADER_LEN];
        self.reader
            .read_exact(&mut head)
            .context("reading a reply header")?;
        let h = Header::parse(&head).map_err(|e| anyhow::anyhow!("reply header: {e}"))?;
        ensure!(h.is_reply(), "the appliance sent a request frame");
        let mut payload = vec![0u8; h.payload_len as usize];
        self.reader.read_exact(&mut payload)?;
        Ok((h, payload))
    }

    fn call(&mut self, req: &Request<'_>, flags: u16) -> Result<(Status, Vec<u8>)> {
        let mut buf = vec![0u8; MAX_FRAME];
        let id = self.next;
        self.next += 1;
        let n = req.emit(id, flags, &mut buf)?;
        self.send_raw(&buf[..n])?;
        let (h, payload) = self.recv()?;
        ensure!(
            h.request_id == id,
            "reply id {} for request {id}",
            h.request_id
        );
        Ok((
            Status::from_u16(h.status).context("unknown status")?,
            payload,
        ))
    }

    fn expect(&mut self, req: &Request<'_>, want: Status) -> Result<Vec<u8>> {
        let (got, payload) = self.call(req, 0)?;
        ensure!(
            got == want,
            "{:?}: expected {want}, got {got}",
            req.opcode()
        );
        Ok(payload)
    }

    fn new_pool(&mut self) -> Result<u32> {
        self.new_pool_of(PoolKind::Persistent)
    }

    fn new_pool_of(&mut self, kind: PoolKind) -> Result<u32> {
        let p = self.expect(
            &Request::NewPool(NewPool {
                kind,
                page_size: 4096,
            }),
            Status::Ok,
        )?;
        Ok(u32::from_le_bytes(
            p.get(..4).context("short NEW_POOL reply")?.try_into()?,
        ))
    }

    /// True once the server closed the connection within `limit`.
    fn closed_within(&mut self, limit: Duration) -> Result<bool> {
        self.reader
            .tcp()
            .set_read_timeout(Some(Duration::from_millis(250)))?;
        let mut b = [0u8; 256];
        let start = Instant::now();
        while start.elapsed() < limit {
            match self.reader.read(&mut b) {
                Ok(0) => return Ok(true),
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return Ok(true),
            }
        }
        Ok(false)
    }
}

fn text_page(seed: u8) -> Vec<u8> {
    let mut p: Vec<u8> = b"remote compressed memory "
        .iter()
        .cycle()
        .take(PAGE_SIZE)
        .copied()
        .collect();
    p[0] = seed;
    p
}

fn key(pool: u32, index: usize) -> PageKey {
    PageKey {
        pool,
        object: [0; 3],
        index: index as u32,
    }
}

/// The 4 KiB page a GET reply's payload carries, decoded and its checksum verified.
fn decoded(payload: &[u8]) -> Result<[u8; PAGE_SIZE]> {
    let page = Page::parse(payload).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut out = [0u8; PAGE_SIZE];
    crate::client::decode_page(&page, &mut out)?;
    Ok(out)
}

fn raw(data: &[u8]) -> Page<'_> {
    Page {
        encoding: Encoding::Raw,
        crc: crc32c(data),
        data,
    }
}

fn close_pool(c: &mut Conn, pool: u32) -> Result<()> {
    c.expect(&Request::DestroyPool { pool }, Status::Ok)
        .map(drop)
}

/// A well-behaved client still gets its page back, intact.
fn healthy(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(HEALTHY))?;
    let pool = c.new_pool()?;
    let data = text_page(7);
    let key = PageKey {
        pool,
        object: [1, 1, 1],
        index: 1,
    };
    c.expect(
        &Request::Put {
            key,
            page: raw(&data),
        },
        Status::Ok,
    )?;
    let got = c.expect(&Request::Get { key }, Status::Ok)?;
    let page = Page::parse(&got).map_err(|e| anyhow::anyhow!("{e}"))?;
    ensure!(page.data == &data[..], "page came back different");
    close_pool(&mut c, pool)
}

/// Each cipher a client may choose gives a working session (the appliance must offer both: a
/// client picks by its own CPU). Without keys there is no cipher to choose.
fn each_cipher(addr: &str, opts: &Options) -> Result<()> {
    if opts.keys.is_none() {
        return Ok(());
    }
    for cipher in Cipher::ALL {
        let mut c = Conn::hello_with(addr, opts, client_id(20), cipher)
            .with_context(|| format!("HELLO with {}", cipher.name()))?;
        let pool = c.new_pool()?;
        let page = text_page(cipher.auth_method());
        c.expect(
            &Request::Put {
                key: key(pool, 0),
                page: raw(&page),
            },
            Status::Ok,
        )?;
        let (status, payload) = c.call(&Request::Get { key: key(pool, 0) }, 0)?;
        ensure!(status == Status::Ok, "{}: get: {status}", cipher.name());
        let out = decoded(&payload)?;
        ensure!(out[..] == page[..], "{}: the page differs", cipher.name());
    }
    Ok(())
}

/// A read cache loads with GET_KEEP (the page stays); cleancache's load consumes the page.
fn ephemeral_gets(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(2))?;
    let pool = c.new_pool_of(PoolKind::Ephemeral)?;
    let page = text_page(2);
    c.expect(
        &Request::Put {
            key: key(pool, 7),
            page: raw(&page),
        },
        Status::Ok,
    )?;
    let get = Request::Get { key: key(pool, 7) };
    for (flags, what) in [
        (flags::GET_KEEP, "first GET_KEEP"),
        (flags::GET_KEEP | flags::ACCEPT_LZ4, "second GET_KEEP"),
        (0, "plain GET after GET_KEEP"),
    ] {
        let (status, payload) = c.call(&get, flags)?;
        ensure!(status == Status::Ok, "{what}: {status}");
        let out = decoded(&payload)?;
        ensure!(out[..] == page[..], "{what}: the page differs");
    }
    let (status, _) = c.call(&get, flags::GET_KEEP)?;
    ensure!(
        status == Status::NotFound,
        "the plain GET left the ephemeral page behind: {status}"
    );
    Ok(())
}

fn round_trip(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(1))?;
    let pool = c.new_pool()?;
    let pages: Vec<Vec<u8>> = (0..40u8).map(text_page).collect();
    for (i, p) in pages.iter().enumerate().take(8) {
        c.expect(
            &Request::Put {
                key: key(pool, i),
                page: raw(p),
            },
            Status::Ok,
        )?;
    }
    let mut buf = vec![0u8; MAX_FRAME];
    let mut w = BatchWriter::new(&mut buf)?;
    for (i, p) in pages.iter().enumerate().skip(8) {
        w.push_request(
            &Request::Put {
                key: key(pool, i),
                page: raw(p),
            },
            0,
        )?;
    }
    let n = w.finish_request(99, 0)?;
    c.send_raw(&buf[..n])?;
    let (h, payload) = c.recv()?;
    let Ok(Reply::Batch(entries)) = Reply::parse(h.opcode, h.status, &payload) else {
        bail!("no batch reply")
    };
    ensure!(
        entries.clone().all(|e| e.status == 0),
        "a batched put failed"
    );
    for (i, p) in pages.iter().enumerate() {
        let (status, payload) = c.call(&Request::Get { key: key(pool, i) }, flags::ACCEPT_LZ4)?;
        ensure!(status == Status::Ok, "get {i}: {status}");
        let out = decoded(&payload)?;
        ensure!(out[..] == p[..], "page {i} differs");
    }
    // Persistent gets keep the page; FLUSH_PAGE removes it.
    let key = key(pool, 3);
    c.expect(&Request::Get { key }, Status::Ok)?;
    c.expect(&Request::FlushPage { key }, Status::Ok)?;
    c.expect(&Request::Get { key }, Status::NotFound)?;
    let flushed = c.expect(
        &Request::FlushObject(FlushObject {
            pool,
            object: [0; 3],
        }),
        Status::Ok,
    )?;
    ensure!(
        flushed.get(..4) == Some(&39u32.to_le_bytes()[..]),
        "FLUSH_OBJECT count"
    );
    close_pool(&mut c, pool)
}

fn before_hello(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::open(addr, opts)?;
    c.expect(&Request::Stats, Status::NotAuthenticated)?;
    // Nothing but HELLO is decoded before HELLO: an unknown opcode gets NOT_AUTHENTICATED too.
    c.send_header(77, 501, 0)?;
    let (reply, _) = c.recv()?;
    ensure!(
        (reply.request_id, Status::from_u16(reply.status)) == (501, Some(Status::NotAuthenticated)),
        "unknown opcode before HELLO: status {}",
        reply.status
    );
    healthy(addr, opts)
}

/// docs/protocol.md: "A put to an existing key replaces the page; if that put fails, the old
/// page is gone too". Every way a put can fail on its own bytes (CRC, LZ4, malformed page), single
/// and batched, in persistent and ephemeral pools.
fn failed_put_removes_old_page(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(17))?;
    let old = text_page(3);
    let new = text_page(4);
    let garbage = [0xffu8; 100];
    for kind in [PoolKind::Persistent, PoolKind::Ephemeral] {
        let p = c.expect(
            &Request::NewPool(NewPool {
                kind,
                page_size: PAGE_SIZE as u32,
            }),
            Status::Ok,
        )?;
        let pool = u32::from_le_bytes(p.get(..4).context("short NEW_POOL reply")?.try_into()?);
        let bad_crc = Page {
            crc: crc32c(&new) ^ 1,
            ..raw(&new)
        };
        let bad_lz4 = Page {
            encoding: Encoding::Lz4,
            crc: crc32c(&new),
            data: &garbage,
        };
        let failures = [
            (bad_crc, Status::BadChecksum),
            (bad_lz4, Status::CorruptPayload),
        ];
        for (i, (page, want)) in failures.iter().enumerate() {
            for batched in [false, true] {
                let key = key(pool, 10 * i + usize::from(batched));
                c.expect(
                    &Request::Put {
                        key,
                        page: raw(&old),
                    },
                    Status::Ok,
                )?;
                let put = Request::Put { key, page: *page };
                let got = if batched {
                    batch_statuses(&mut c, &[put])?[0]
                } else {
                    c.call(&put, 0)?.0
                };
                ensure!(
                    got == *want,
                    "{kind:?} put (batched {batched}): {got}, want {want}"
                );
                c.expect(&Request::Get { key }, Status::NotFound)
                    .with_context(|| format!("{kind:?} stale page after a {want} put"))?;
            }
        }
        // A put whose page part is malformed (unknown encoding) but whose key is whole.
        let key = key(pool, 99);
        c.expect(
            &Request::Put {
                key,
                page: raw(&old),
            },
            Status::Ok,
        )?;
        let mut buf = vec![0u8; MAX_FRAME];
        let n = Request::Put {
            key,
            page: raw(&new),
        }
        .emit(43, 0, &mut buf)?;
        buf[HEADER_LEN + KEY_LEN] = 9;
        c.send_raw(&buf[..n])?;
        let (h, _) = c.recv()?;
        ensure!(
            (h.request_id, Status::from_u16(h.status)) == (43, Some(Status::Malformed)),
            "malformed put: status {}",
            h.status
        );
        c.expect(&Request::Get { key }, Status::NotFound)
            .with_context(|| format!("{kind:?} stale page after a malformed put"))?;
        close_pool(&mut c, pool)?;
    }
    healthy(addr, opts)
}

/// Sends `requests` as one BATCH and returns each entry's status.
fn batch_statuses(c: &mut Conn, requests: &[Request<'_>]) -> Result<Vec<Status>> {
    let mut buf = vec![0u8; MAX_FRAME];
    let mut w = BatchWriter::new(&mut buf)?;
    for r in requests {
        w.push_request(r, 0)?;
    }
    let id = c.next;
    c.next += 1;
    let n = w.finish_request(id, 0)?;
    c.send_raw(&buf[..n])?;
    let (h, payload) = c.recv()?;
    ensure!(h.request_id == id, "batch reply id");
    match Reply::parse(h.opcode, h.status, &payload)? {
        Reply::Batch(entries) => Ok(entries
            .map(|e| Status::from_u16(e.status).unwrap_or(Status::Internal))
            .collect()),
        other => bail!("batch answered with {:?}", other.status()),
    }
}

fn second_hello(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(18))?;
    let pool = c.new_pool()?;
    c.expect(
        &Request::Put {
            key: key(pool, 1),
            page: raw(&text_page(5)),
        },
        Status::Ok,
    )?;
    // Another id on the same connection is refused, and the connection keeps its identity.
    c.expect(
        &Request::Hello(Hello::new(client_id(19))),
        Status::Malformed,
    )?;
    c.expect(&Request::Get { key: key(pool, 1) }, Status::Ok)?;
    close_pool(&mut c, pool)
}

fn bad_version_range(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::open(addr, opts)?;
    let hello = Hello {
        min_version: 2,
        max_version: 9,
        ..Hello::new(client_id(3))
    };
    c.expect(&Request::Hello(hello), Status::UnsupportedVersion)
        .map(drop)
}

fn bad_magic(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::open(addr, opts)?;
    c.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    ensure!(
        c.closed_within(opts.io_timeout)?,
        "garbage did not close the connection"
    );
    healthy(addr, opts)
}

fn oversized(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(5))?;
    c.send_header(Opcode::PutPage as u8, 9, u32::MAX)?;
    ensure!(
        c.closed_within(opts.io_timeout)?,
        "an oversized frame did not close the connection"
    );
    healthy(addr, opts)
}

fn unknown_opcode(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(6))?;
    c.send_header(77, 500, 0)?;
    let (reply, message) = c.recv()?;
    ensure!(reply.request_id == 500, "reply id");
    ensure!(
        Status::from_u16(reply.status) == Some(Status::UnknownOpcode),
        "status {}",
        reply.status
    );
    ensure!(
        String::from_utf8_lossy(&message).contains("unknown opcode 77"),
        "message"
    );
    c.expect(&Request::Stats, Status::Ok).map(drop)
}

/// A minimal valid LZ4 block: one run of literals (token, length bytes, literals).
fn lz4_literals(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0xF0];
    let mut rest = data.len() - 15;
    while rest >= 255 {
        out.push(255);
        rest -= 255;
    }
    out.push(rest as u8);
    out.extend_from_slice(data);
    out
}

fn malformed_payloads(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(7))?;
    let pool = c.new_pool()?;
    let key = PageKey {
        pool,
        object: [0; 3],
        index: 0,
    };
    let data = text_page(1);
    let bad_crc = Page {
        crc: crc32c(&data) ^ 0xdead,
        ..raw(&data)
    };
    c.expect(&Request::Put { key, page: bad_crc }, Status::BadChecksum)?;
    let garbage = [0xffu8; 100];
    let page = Page {
        encoding: Encoding::Lz4,
        crc: crc32c(&data),
        data: &garbage,
    };
    c.expect(&Request::Put { key, page }, Status::CorruptPayload)?;
    let short = lz4_literals(&data[..1000]);
    let page = Page {
        encoding: Encoding::Lz4,
        crc: crc32c(&data),
        data: &short,
    };
    c.expect(&Request::Put { key, page }, Status::CorruptPayload)?;
    c.expect(
        &Request::Put {
            key: PageKey {
                pool: 0x7fff_fff0,
                ..key
            },
            page: raw(&data),
        },
        Status::UnknownPool,
    )?;
    let mut other = Conn::hello(addr, opts, client_id(8))?;
    other.expect(&Request::Get { key }, Status::UnknownPool)?;
    c.expect(
        &Request::NewPool(NewPool {
            kind: PoolKind::Ephemeral,
            page_size: 8192,
        }),
        Status::Malformed,
    )?;
    // A PUT whose payload is cut short inside a well-formed frame.
    let mut buf = vec![0u8; MAX_FRAME];
    let n = Request::Put {
        key,
        page: raw(&data),
    }
    .emit(42, 0, &mut buf)?;
    let cut = n - 100;
    buf[16..20].copy_from_slice(&((cut - HEADER_LEN) as u32).to_le_bytes());
    c.send_raw(&buf[..cut])?;
    let (h, _) = c.recv()?;
    ensure!(
        (h.request_id, Status::from_u16(h.status)) == (42, Some(Status::Malformed)),
        "truncated PUT"
    );
    c.expect(&Request::Get { key }, Status::NotFound)?;
    close_pool(&mut c, pool)?;
    healthy(addr, opts)
}

fn batch_errors(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(9))?;
    let pool = c.new_pool()?;
    let data = text_page(2);
    let good = raw(&data);
    let bad = Page {
        crc: good.crc ^ 1,
        ..good
    };
    let mut buf = vec![0u8; MAX_FRAME];
    let mut w = BatchWriter::new(&mut buf)?;
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
    )?;
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
    )?;
    w.push_request(
        &Request::Get {
            key: PageKey {
                pool,
                object: [0; 3],
                index: 0,
            },
        },
        0,
    )?;
    w.push_request(
        &Request::Get {
            key: PageKey {
                pool: 0x7fff_fff1,
                object: [0; 3],
                index: 0,
            },
        },
        0,
    )?;
    let n = w.finish_request(7, 0)?;
    c.send_raw(&buf[..n])?;
    let (h, payload) = c.recv()?;
    ensure!(h.request_id == 7, "reply id");
    let Ok(Reply::Batch(entries)) = Reply::parse(h.opcode, h.status, &payload) else {
        bail!("no batch reply")
    };
    let statuses: Vec<Status> = entries
        .map(|e| e.reply().map(|r| r.status()).unwrap_or(Status::Internal))
        .collect();
    ensure!(
        statuses
            == [
                Status::Ok,
                Status::BadChecksum,
                Status::Ok,
                Status::UnknownPool
            ],
        "statuses {statuses:?}"
    );
    close_pool(&mut c, pool)
}

fn disconnect_mid_frame(addr: &str, opts: &Options) -> Result<()> {
    let id = client_id(10);
    let mut keeper = Conn::hello(addr, opts, id)?;
    let pool = keeper.new_pool()?;
    let data = text_page(3);
    let key = PageKey {
        pool,
        object: [3; 3],
        index: 3,
    };
    keeper.expect(
        &Request::Put {
            key,
            page: raw(&data),
        },
        Status::Ok,
    )?;
    for cut in [1, HEADER_LEN - 1, HEADER_LEN + 7, 1000] {
        let mut c = Conn::hello(addr, opts, id)?;
        let mut buf = vec![0u8; MAX_FRAME];
        let n = Request::Put {
            key: PageKey { index: 4, ..key },
            page: raw(&data),
        }
        .emit(1, 0, &mut buf)?;
        c.send_raw(&buf[..cut.min(n - 1)])?;
    }
    let got = keeper.expect(&Request::Get { key }, Status::Ok)?;
    ensure!(
        Page::parse(&got)
            .map(|p| p.data == &data[..])
            .unwrap_or(false),
        "kept page changed"
    );
    keeper.expect(
        &Request::Get {
            key: PageKey { index: 4, ..key },
        },
        Status::NotFound,
    )?;
    close_pool(&mut keeper, pool)
}

fn reply_from_client(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(11))?;
    let mut buf = vec![0u8; 256];
    let n = Reply::Done.emit(Opcode::PutPage as u8, 1, &mut buf)?;
    c.send_raw(&buf[..n])?;
    ensure!(
        c.closed_within(opts.io_timeout)?,
        "a reply frame from a client did not close it"
    );
    Ok(())
}

fn fresh_nonces(addr: &str, opts: &Options) -> Result<()> {
    let a = Conn::hello(addr, opts, client_id(12))?.nonce;
    let b = Conn::hello(addr, opts, client_id(12))?.nonce;
    ensure!(
        a != b && a != [0; HELLO_NONCE_LEN],
        "nonces repeat or are zero"
    );
    Ok(())
}

/// Idle connections are opened in groups no larger than the smallest accept backlog an appliance
/// has (the Hermit image keeps 16 listening sockets; Linux, 128): a burst beyond the backlog is
/// refused by any TCP server, which is not what this checks. Each group must be counted by the
/// appliance before the next is opened; then, with all of them held open, service goes on.
const IDLE_GROUP: usize = 8;

fn idle_connections(addr: &str, opts: &Options) -> Result<()> {
    let mut c = Conn::hello(addr, opts, client_id(13))?;
    let counted = |c: &mut Conn| -> Result<u64> {
        let stats = c.expect(&Request::Stats, Status::Ok)?;
        Ok(StatsView::parse(&stats)
            .ok()
            .and_then(|s| s.get(StatId::Connections))
            .unwrap_or(0))
    };
    let mut idle = Vec::with_capacity(opts.idle_connections);
    while idle.len() < opts.idle_connections {
        let group = IDLE_GROUP.min(opts.idle_connections - idle.len());
        for _ in 0..group {
            idle.push(TcpStream::connect(addr)?);
        }
        // Bounded: 20 s per group, polled every 50 ms; `c` itself is one of the connections.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut open = counted(&mut c)?;
        while (open as usize) <= idle.len() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
            open = counted(&mut c)?;
        }
        ensure!(
            open as usize > idle.len(),
            "appliance counts {open} connections with {} idle ones opened",
            idle.len()
        );
    }
    healthy(addr, opts)?;
    let open = counted(&mut c)?;
    ensure!(
        open as usize > opts.idle_connections,
        "appliance counts {open} connections"
    );
    drop(idle);
    Ok(())
}

fn stall_mid_frame(addr: &str, opts: &Options) -> Result<()> {
    let mut staller = Conn::hello(addr, opts, client_id(14))?;
    let mut buf = vec![0u8; MAX_FRAME];
    let n = Request::Stats.emit(5, 0, &mut buf)?;
    staller.send_raw(&buf[..n - 10])?;
    healthy(addr, opts)?;
    let limit = opts.frame_timeout + Duration::from_secs(5);
    ensure!(
        staller.closed_within(limit)?,
        "a peer stalled mid-frame was not dropped within {limit:?}"
    );
    Ok(())
}

/// One connection keeps many puts in flight for a while; meanwhile another client's requests must
/// still be answered promptly. The measurement starts once the flood has its window of frames in
/// flight (not after a guessed delay) and must end while the flood is still going.
fn busy_neighbour(addr: &str, opts: &Options) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;
    /// Frames the flood keeps in flight; the measurement waits for twice as many replies.
    const WINDOW: u64 = 16;
    let addr_owned = addr.to_string();
    let opts_owned = opts.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let replies = Arc::new(AtomicU64::new(0));
    let (stop_flood, replies_flood) = (stop.clone(), replies.clone());
    let flood = std::thread::spawn(move || -> Result<u64> {
        let mut c = Conn::hello(&addr_owned, &opts_owned, client_id(15))?;
        let pool = c.new_pool()?;
        let data = text_page(9);
        let mut buf = vec![0u8; MAX_FRAME];
        let (mut sent, mut done) = (0u64, 0u64);
        let start = Instant::now();
        // Batches of 64 pages, WINDOW in flight: more than the appliance can compress as fast as
        // it arrives, so this connection always has input waiting. Bounded: 30 s (it normally
        // stops when told, after the measurement), 20k frames.
        while !stop_flood.load(SeqCst) && start.elapsed() < Duration::from_secs(30) && sent < 20_000
        {
            while sent - done < WINDOW {
                let mut w = BatchWriter::new(&mut buf)?;
                for i in 0..MAX_BATCH {
                    w.push_request(
                        &Request::Put {
                            key: key(pool, i),
                            page: raw(&data),
                        },
                        0,
                    )?;
                }
                let n = w.finish_request(sent + 1, 0)?;
                c.send_raw(&buf[..n])?;
                sent += 1;
            }
            c.recv()?;
            done += 1;
            replies_flood.store(done, SeqCst);
        }
        while done < sent {
            c.recv()?;
            done += 1;
        }
        close_pool(&mut c, pool)?;
        Ok(done)
    });
    let mut other = Conn::hello(addr, opts, client_id(16))?;
    // Wait (bounded: 10 s, 1000 polls) until the flood has had 2 x WINDOW frames answered: from
    // then on the appliance always has a window of its frames to work on.
    let start = Instant::now();
    for _ in 0..1000 {
        if replies.load(SeqCst) >= 2 * WINDOW
            || flood.is_finished()
            || start.elapsed() > Duration::from_secs(10)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let before = replies.load(SeqCst);
    if before < 2 * WINDOW || flood.is_finished() {
        stop.store(true, SeqCst);
        let why = match flood.join() {
            Ok(Err(e)) => format!("{e:#}"),
            Ok(Ok(n)) => format!("stopped after {n} frames"),
            Err(_) => "panicked".into(),
        };
        bail!("the flooding connection did not get going ({before} frames answered): {why}");
    }
    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        other.expect(&Request::Stats, Status::Ok)?;
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    let during = replies.load(SeqCst) - before;
    let still_flooding = !flood.is_finished();
    stop.store(true, SeqCst);
    let flooded = flood
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))??;
    ensure!(flooded > 0, "the flooding connection made no progress");
    ensure!(
        still_flooding && during > 0,
        "the flood was not running while the other client was measured ({during} frames answered)"
    );
    ensure!(
        worst < Duration::from_secs(2),
        "a request waited {worst:?} behind a busy connection"
    );
    Ok(())
}
