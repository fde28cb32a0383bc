//! A malicious appliance for the kclient robustness test (`tests/kclient_evil.rs`).
//!
//! It listens on `127.0.0.1` (the guest reaches it as `10.0.2.2:PORT`), answers HELLO and NEW_POOL
//! correctly, so `insmod` succeeds, and then misbehaves on page requests according to its [`Mode`].
//! To exercise the read path (kclient only asks for pages it stored), puts of pages with an index
//! below [`GOOD_PAGES`] are accepted and remembered honestly; puts of higher pages and every get
//! get the mode's treatment. [`Mode::Honest`] behaves correctly throughout (the control).
//!
//! Every connection runs on its own thread; all of them stop when the [`EvilAppliance`] is dropped
//! or after [`MAX_LIFETIME`], whichever comes first. Only 127.0.0.1 is ever used.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::{
    crc32c, flags, frame_len, Encoding, Header, HelloReply, Opcode, Page, Reply, Request, Status,
    HEADER_LEN, MAX_PAYLOAD, PAGE_SIZE,
};

/// Pages with an index below this are stored and answered honestly (the "good" pages).
pub const GOOD_PAGES: u32 = 8;
/// Hard bound on how long a server (and each of its connections) lives.
pub const MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);
/// Request id kclient uses for control operations (HELLO, NEW_POOL, DESTROY_POOL).
const CONTROL_ID: u64 = u64::MAX;

/// How the appliance misbehaves on page requests (gets, and puts of pages >= [`GOOD_PAGES`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Correct answers throughout: the control case.
    Honest,
    /// (a) Bytes that are not a frame (bad magic, bad version, a request instead of a reply).
    Garbage,
    /// (b) A reply header and part of its payload, then the connection is closed.
    Truncated,
    /// (c) A reply header whose payload length is over the protocol maximum, or over what a page
    /// reply can be.
    Oversized,
    /// (d) Replies with unknown ids (other generation, tag, queue) and with an out-of-range page
    /// part; the real request is never answered.
    WrongId,
    /// (d) Every part of a multi-page request is answered as part 0 (duplicate replies); a
    /// single-page request gets a correct answer.
    Duplicate,
    /// (e) Well-framed but wrong replies: for gets a bad CRC, a wrong length, an unknown
    /// encoding, LZ4 that does not decode, the wrong opcode; for puts a FLUSH_PAGE "done".
    BadReply,
    /// (f) STATS and BATCH replies nobody asked for, before every answer and instead of it.
    Unsolicited,
    /// (g) Page requests are read but never answered.
    Stall,
    /// HELLO is answered with garbage: `insmod` must fail, not hang.
    HelloGarbage,
    /// HELLO is never answered: `insmod` must fail within the I/O timeout, not hang.
    HelloStall,
}

impl Mode {
    /// Every mode, control first.
    pub const ALL: [Mode; 11] = [
        Mode::Honest,
        Mode::Garbage,
        Mode::Truncated,
        Mode::Oversized,
        Mode::WrongId,
        Mode::Duplicate,
        Mode::BadReply,
        Mode::Unsolicited,
        Mode::Stall,
        Mode::HelloGarbage,
        Mode::HelloStall,
    ];

    /// Name used on the kernel command line and in the guest's result lines.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Honest => "honest",
            Mode::Garbage => "garbage",
            Mode::Truncated => "truncated",
            Mode::Oversized => "oversized",
            Mode::WrongId => "wrongid",
            Mode::Duplicate => "duplicate",
            Mode::BadReply => "badreply",
            Mode::Unsolicited => "unsolicited",
            Mode::Stall => "stall",
            Mode::HelloGarbage => "hellogarbage",
            Mode::HelloStall => "hellostall",
        }
    }

    /// Whether this mode breaks the handshake (so `insmod` must fail).
    pub fn breaks_handshake(self) -> bool {
        matches!(self, Mode::HelloGarbage | Mode::HelloStall)
    }

    /// The mode called `name`.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }
}

/// What the server saw and did (for the host test's diagnostics).
#[derive(Debug, Default)]
pub struct Counters {
    pub connections: AtomicU64,
    pub requests: AtomicU64,
    pub misbehaved: AtomicU64,
}

/// A running malicious appliance; stops (and joins its threads) on drop.
pub struct EvilAppliance {
    mode: Mode,
    port: u16,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    thread: Option<JoinHandle<()>>,
}

impl EvilAppliance {
    /// Starts a server for `mode` on a free port of 127.0.0.1.
    pub fn start(mode: Mode) -> io::Result<EvilAppliance> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        listener.set_nonblocking(true)?;
        let port = listener.local_addr()?.port();
        let stop = Arc::new(AtomicBool::new(false));
        let counters = Arc::new(Counters::default());
        let shared = Arc::new(Shared {
            mode,
            stop: stop.clone(),
            counters: counters.clone(),
            pages: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            started: Instant::now(),
        });
        let thread = std::thread::Builder::new()
            .name(format!("evil-{}", mode.name()))
            .spawn(move || accept_loop(listener, shared))?;
        Ok(EvilAppliance {
            mode,
            port,
            stop,
            counters,
            thread: Some(thread),
        })
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }
}

impl Drop for EvilAppliance {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Pages stored by honest puts: (pool, index) -> (crc, data).
type PageStore = HashMap<(u32, u32), (u32, Vec<u8>)>;

struct Shared {
    mode: Mode,
    stop: Arc<AtomicBool>,
    counters: Arc<Counters>,
    pages: Mutex<PageStore>,
    /// Drives the variants that cycle (garbage kinds, bad replies, ...).
    seq: AtomicU64,
    started: Instant,
}

impl Shared {
    fn done(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.started.elapsed() > MAX_LIFETIME
    }

    fn next(&self) -> u64 {
        self.seq.fetch_add(1, Ordering::Relaxed)
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    while !shared.done() {
        match listener.accept() {
            Ok((stream, _)) => {
                shared.counters.connections.fetch_add(1, Ordering::Relaxed);
                let s = shared.clone();
                if let Ok(t) =
                    std::thread::Builder::new()
                        .name("evil-conn".into())
                        .spawn(move || {
                            let _ = serve(stream, &s);
                        })
                {
                    conns.push(t);
                }
                // Bounded: finished connection threads are reaped as we go.
                conns.retain(|t| !t.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    for t in conns {
        let _ = t.join();
    }
}

/// What to do with the connection after handling a request.
enum Next {
    Continue,
    Close,
}

fn serve(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_millis(100)))?;
    stream.set_write_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    let mut buf: Vec<u8> = Vec::with_capacity(2 * protocol::MAX_FRAME);
    let mut chunk = vec![0u8; 64 * 1024];
    while !shared.done() {
        match stream.read(&mut chunk) {
            Ok(0) => return Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
        // Every complete frame in the buffer (bounded by what was read).
        loop {
            let len = match frame_len(&buf) {
                Ok(Some(len)) => len,
                Ok(None) => break,
                // The client never sends garbage; if it does, stop talking to it.
                Err(_) => return Ok(()),
            };
            let frame: Vec<u8> = buf.drain(..len).collect();
            let Ok(h) = Header::parse(&frame) else {
                return Ok(());
            };
            shared.counters.requests.fetch_add(1, Ordering::Relaxed);
            match handle(&mut stream, shared, &h, &frame[HEADER_LEN..])? {
                Next::Continue => {}
                Next::Close => {
                    let _ = stream.shutdown(Shutdown::Both);
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// A frame with any header fields (also invalid ones) and `payload`.
fn raw_frame(magic: &[u8; 4], version: u8, opcode: u8, flags: u16, id: u64, len: u32) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN);
    f.extend_from_slice(magic);
    f.push(version);
    f.push(opcode);
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&id.to_le_bytes());
    f.extend_from_slice(&len.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes()); // status
    f.extend_from_slice(&0u16.to_le_bytes()); // reserved
    f
}

/// A well-formed reply frame: `opcode`, `id`, `status`, `payload`.
fn reply_frame(opcode: u8, id: u64, status: u16, payload: &[u8]) -> Vec<u8> {
    let mut f = raw_frame(
        b"TMEM",
        protocol::VERSION,
        opcode,
        flags::REPLY,
        id,
        payload.len() as u32,
    );
    f[20..22].copy_from_slice(&status.to_le_bytes());
    f.extend_from_slice(payload);
    f
}

/// A page payload with any encoding byte, CRC and declared length.
fn page_payload(encoding: u8, crc: u32, declared_len: u32, data: &[u8]) -> Vec<u8> {
    let mut p = vec![encoding, 0, 0, 0];
    p.extend_from_slice(&crc.to_le_bytes());
    p.extend_from_slice(&declared_len.to_le_bytes());
    p.extend_from_slice(data);
    p
}

fn done_reply(opcode: Opcode, id: u64) -> Vec<u8> {
    reply_frame(opcode as u8, id, 0, b"")
}

/// A STATS reply with three counters.
fn stats_reply(id: u64) -> Vec<u8> {
    let mut p = 3u32.to_le_bytes().to_vec();
    for v in [1u64, 2, 3] {
        p.extend_from_slice(&v.to_le_bytes());
    }
    reply_frame(Opcode::Stats as u8, id, 0, &p)
}

/// A valid BATCH reply with one "done" FLUSH_PAGE entry.
fn batch_reply(id: u64) -> Vec<u8> {
    let mut p = Vec::new();
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.push(Opcode::FlushPage as u8);
    p.push(flags::REPLY as u8);
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    reply_frame(Opcode::Batch as u8, id, 0, &p)
}

/// One answer to one page operation: what a standalone reply frame or a BATCH reply entry carries.
#[derive(Clone)]
struct Answer {
    opcode: u8,
    status: u16,
    payload: Vec<u8>,
}

impl Answer {
    fn new(opcode: Opcode, status: Status, payload: Vec<u8>) -> Answer {
        Answer {
            opcode: opcode as u8,
            status: status as u16,
            payload,
        }
    }
}

/// The reply frame for request `id`: the one answer as a frame, or every answer in a BATCH reply.
fn frame_of(id: u64, answers: &[Answer], batch: bool) -> Vec<u8> {
    match answers {
        [a] if !batch => reply_frame(a.opcode, id, a.status, &a.payload),
        _ => {
            let mut p = Vec::new();
            p.extend_from_slice(&(answers.len() as u16).to_le_bytes());
            p.extend_from_slice(&0u16.to_le_bytes());
            for a in answers {
                p.push(a.opcode);
                p.push(flags::REPLY as u8);
                p.extend_from_slice(&a.status.to_le_bytes());
                p.extend_from_slice(&(a.payload.len() as u32).to_le_bytes());
                p.extend_from_slice(&a.payload);
            }
            reply_frame(Opcode::Batch as u8, id, 0, &p)
        }
    }
}

/// A correct GET answer for the page stored under (`pool`, `index`) (NOT_FOUND if none).
fn honest_get(shared: &Shared, pool: u32, index: u32) -> Answer {
    let pages = shared.pages.lock().unwrap_or_else(|e| e.into_inner());
    match pages.get(&(pool, index)) {
        Some((crc, data)) => Answer::new(
            Opcode::GetPage,
            Status::Ok,
            page_payload(0, *crc, PAGE_SIZE as u32, data),
        ),
        None => Answer::new(Opcode::GetPage, Status::NotFound, Vec::new()),
    }
}

/// The correct answer to a page operation. Puts are remembered for good pages (and for every page
/// in honest mode); the others are answered "done" without being stored.
fn honest_answer(shared: &Shared, req: &Request<'_>) -> Answer {
    match req {
        Request::Put { key, page } => {
            let mut data = vec![0u8; PAGE_SIZE];
            match page.encoding {
                Encoding::Raw if page.data.len() == PAGE_SIZE => data.copy_from_slice(page.data),
                Encoding::Fill => {
                    let word = page.fill_word().unwrap_or(0);
                    if let Ok(arr) = <&mut [u8; PAGE_SIZE]>::try_from(&mut data[..]) {
                        Page::expand_fill(word, arr);
                    }
                }
                Encoding::Lz4 => match lz4_flex::block::decompress(page.data, PAGE_SIZE) {
                    Ok(d) if d.len() == PAGE_SIZE => data = d,
                    _ => return Answer::new(Opcode::PutPage, Status::CorruptPayload, Vec::new()),
                },
                _ => return Answer::new(Opcode::PutPage, Status::CorruptPayload, Vec::new()),
            }
            if crc32c(&data) != page.crc {
                return Answer::new(Opcode::PutPage, Status::BadChecksum, Vec::new());
            }
            if shared.mode == Mode::Honest || key.index < GOOD_PAGES {
                shared
                    .pages
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert((key.pool, key.index), (crc32c(&data), data));
            }
            Answer::new(Opcode::PutPage, Status::Ok, Vec::new())
        }
        Request::Get { key } => honest_get(shared, key.pool, key.index),
        Request::FlushPage { .. } => Answer::new(Opcode::FlushPage, Status::Ok, Vec::new()),
        other => Answer::new(other.opcode(), Status::UnknownOpcode, Vec::new()),
    }
}

/// Whether the mode misbehaves on this page operation: gets, puts of pages >= [`GOOD_PAGES`], and
/// (when stalling) flushes.
fn misbehaves_on(mode: Mode, req: &Request<'_>) -> bool {
    match req {
        _ if mode == Mode::Honest => false,
        Request::Get { .. } => true,
        Request::Put { key, .. } => key.index >= GOOD_PAGES,
        Request::FlushPage { .. } => mode == Mode::Stall,
        _ => false,
    }
}

/// `answer` made wrong in one of six ways (`n` picks): for a get a bad CRC, a wrong length, an
/// unknown encoding, LZ4 that does not decode, a fill word that does not match, the wrong opcode; for a
/// put a FLUSH_PAGE "done".
fn bad_answer(answer: &Answer, n: u64) -> Answer {
    if answer.opcode != Opcode::GetPage as u8 {
        return Answer::new(Opcode::FlushPage, Status::Ok, Vec::new());
    }
    let data = answer
        .payload
        .get(12..)
        .filter(|d| d.len() == PAGE_SIZE)
        .map(<[u8]>::to_vec)
        .unwrap_or_else(|| vec![0x33; PAGE_SIZE]);
    let crc = crc32c(&data);
    let page = |p| Answer::new(Opcode::GetPage, Status::Ok, p);
    match n % 6 {
        // The right data, a wrong CRC.
        0 => page(page_payload(0, crc ^ 1, 4096, &data)),
        // Raw page one byte short.
        1 => page(page_payload(0, crc, 4095, &data[..4095])),
        // An encoding that does not exist.
        2 => page(page_payload(9, crc, 4096, &data)),
        // LZ4 that does not decode (kclient accepts LZ4 only when it set ACCEPT_LZ4).
        3 => page(page_payload(1, crc, 16, &[0u8; 16])),
        // A fill page whose CRC does not match its word.
        4 => page(page_payload(2, crc, 8, &[7u8; 8])),
        // The wrong opcode: "PUT done" as the answer to a GET.
        _ => Answer::new(Opcode::PutPage, Status::Ok, Vec::new()),
    }
}

fn handle(stream: &mut TcpStream, shared: &Shared, h: &Header, body: &[u8]) -> io::Result<Next> {
    let id = h.request_id;
    let Ok(req) = Request::parse(h.opcode, body) else {
        stream.write_all(&reply_frame(h.opcode, id, Status::Malformed as u16, b""))?;
        return Ok(Next::Continue);
    };
    let mut out = [0u8; 256];
    match req {
        Request::Hello(_) if shared.mode == Mode::HelloStall => Ok(Next::Continue),
        Request::Hello(_) if shared.mode == Mode::HelloGarbage => {
            stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n garbage garbage garbage")?;
            Ok(Next::Continue)
        }
        Request::Hello(_) => {
            let reply = Reply::Hello(HelloReply {
                version: u16::from(protocol::VERSION),
                max_batch: protocol::MAX_BATCH as u16,
                max_payload: MAX_PAYLOAD as u32,
                nonce: [0x5a; 16],
                auth: &[],
            });
            let n = reply
                .emit(h.opcode, id, &mut out)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            stream.write_all(&out[..n])?;
            Ok(Next::Continue)
        }
        Request::NewPool(_) => {
            let n = Reply::NewPool { pool: 7 }
                .emit(h.opcode, id, &mut out)
                .map_err(|e| io::Error::other(format!("{e:?}")))?;
            stream.write_all(&out[..n])?;
            Ok(Next::Continue)
        }
        Request::DestroyPool { .. } => {
            stream.write_all(&done_reply(Opcode::DestroyPool, id))?;
            Ok(Next::Continue)
        }
        // kclient checks its pool exists after a reconnect with a FLUSH_OBJECT of an unused object.
        Request::FlushObject(f) => {
            let n = if f.pool == 7 {
                Reply::Flushed { pages: 0 }
            } else {
                Reply::Error {
                    status: Status::UnknownPool,
                    message: b"",
                }
            }
            .emit(h.opcode, id, &mut out)
            .map_err(|e| io::Error::other(format!("{e:?}")))?;
            stream.write_all(&out[..n])?;
            Ok(Next::Continue)
        }
        Request::Batch(entries) => {
            let reqs: Result<Vec<Request<'_>>, _> = entries.map(|e| e.request()).collect();
            match reqs {
                Ok(reqs) => page_ops(stream, shared, id, &reqs, true),
                Err(_) => {
                    stream.write_all(&reply_frame(h.opcode, id, Status::Malformed as u16, b""))?;
                    Ok(Next::Continue)
                }
            }
        }
        Request::Put { .. } | Request::Get { .. } | Request::FlushPage { .. } => {
            page_ops(stream, shared, id, &[req], false)
        }
        _ => {
            stream.write_all(&reply_frame(
                h.opcode,
                id,
                Status::UnknownOpcode as u16,
                b"",
            ))?;
            Ok(Next::Continue)
        }
    }
}

/// Answers page operations (one frame, or the entries of a BATCH): honestly, or per the mode.
fn page_ops(
    stream: &mut TcpStream,
    shared: &Shared,
    id: u64,
    reqs: &[Request<'_>],
    batch: bool,
) -> io::Result<Next> {
    let misbehave = reqs.iter().any(|r| misbehaves_on(shared.mode, r));
    let honest: Vec<Answer> = reqs.iter().map(|r| honest_answer(shared, r)).collect();
    if !misbehave {
        if reqs.iter().any(|r| matches!(r, Request::Put { .. })) {
            if shared.mode == Mode::Unsolicited {
                stream.write_all(&stats_reply(0x00ab_cdef_0000_0000))?;
                stream.write_all(&stats_reply(CONTROL_ID))?;
            }
            if shared.mode == Mode::WrongId {
                stream.write_all(&frame_of(id ^ (1 << 42), &honest, batch))?;
            }
        }
        stream.write_all(&frame_of(id, &honest, batch))?;
        return Ok(Next::Continue);
    }

    shared.counters.misbehaved.fetch_add(1, Ordering::Relaxed);
    let n = shared.next();
    let part = id & 0xffff;
    match shared.mode {
        Mode::Honest => {}
        Mode::Garbage => {
            let junk = match n % 3 {
                // Not a frame at all.
                0 => (0..64u8).map(|i| i.wrapping_mul(37) ^ 0xa5).collect(),
                // Right magic, unknown version.
                1 => raw_frame(b"TMEM", 9, Opcode::GetPage as u8, flags::REPLY, id, 0),
                // A request (no REPLY flag) from the appliance.
                _ => raw_frame(b"TMEM", protocol::VERSION, Opcode::GetPage as u8, 0, id, 0),
            };
            stream.write_all(&junk)?;
        }
        Mode::Truncated => {
            let full = frame_of(id, &honest, batch);
            // For a page reply: the header and 100 bytes of payload; for "done" (no payload):
            // half a header.
            let cut = if full.len() > HEADER_LEN + 100 {
                HEADER_LEN + 100
            } else {
                HEADER_LEN / 2
            };
            stream.write_all(&full[..cut])?;
            stream.flush()?;
            std::thread::sleep(Duration::from_millis(50));
            return Ok(Next::Close);
        }
        Mode::Oversized => {
            let len = if n.is_multiple_of(2) {
                u32::MAX
            } else {
                // Allowed by the protocol's frame limit, more than any reply to <= 32 pages.
                200_000
            };
            let opcode = if batch {
                Opcode::Batch
            } else {
                Opcode::GetPage
            };
            let mut f = raw_frame(
                b"TMEM",
                protocol::VERSION,
                opcode as u8,
                flags::REPLY,
                id,
                len,
            );
            f.extend_from_slice(&vec![0x41; 8192]);
            stream.write_all(&f)?;
        }
        Mode::WrongId => {
            let mut ids = vec![
                id ^ (1 << 42),                             // another generation
                id ^ (1 << 16),                             // another tag
                (id & !(0xff << 32)) | (0x7f << 32),        // a hardware queue that does not exist
                (id & !0xffff) | ((part + 0x100) & 0xffff), // another page count (a run it is not)
            ];
            if part != 0 {
                // Pages of another run of the request (a duplicate of their answer).
                ids.push(id & !0xffff);
            }
            for bad in ids {
                stream.write_all(&frame_of(bad, &honest, batch))?;
            }
        }
        Mode::Duplicate => {
            // Every page's answer as its own frame, each claiming to be the request's first page.
            for a in &honest {
                stream.write_all(&frame_of(id & !0xffff, std::slice::from_ref(a), false))?;
            }
        }
        Mode::BadReply => {
            let bad: Vec<Answer> = honest.iter().map(|a| bad_answer(a, n)).collect();
            stream.write_all(&frame_of(id, &bad, batch))?;
        }
        Mode::Unsolicited => {
            stream.write_all(&stats_reply(0x00ab_cdef_0000_0000))?;
            stream.write_all(&stats_reply(CONTROL_ID))?;
            let f = if n.is_multiple_of(2) {
                batch_reply(id)
            } else {
                stats_reply(id)
            };
            stream.write_all(&f)?;
        }
        Mode::Stall | Mode::HelloGarbage | Mode::HelloStall => {}
    }
    Ok(Next::Continue)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Hello, NewPool, PageKey, PoolKind};

    fn send(stream: &mut TcpStream, req: &Request<'_>, id: u64) {
        let mut buf = vec![0u8; protocol::MAX_FRAME];
        let n = req.emit(id, 0, &mut buf).unwrap();
        stream.write_all(&buf[..n]).unwrap();
    }

    /// Reads one frame (header + payload) or returns the error; bounded by the read timeout.
    fn recv(stream: &mut TcpStream) -> io::Result<(Vec<u8>, Vec<u8>)> {
        let mut header = [0u8; HEADER_LEN];
        stream.read_exact(&mut header)?;
        let h = Header::parse(&header).map_err(|e| io::Error::other(format!("{e:?}")))?;
        let mut payload = vec![0u8; h.payload_len as usize];
        stream.read_exact(&mut payload)?;
        Ok((header.to_vec(), payload))
    }

    fn connect(mode: Mode) -> (EvilAppliance, TcpStream, u32) {
        let evil = EvilAppliance::start(mode).unwrap();
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, evil.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send(&mut s, &Request::Hello(Hello::new(1)), CONTROL_ID);
        let (h, p) = recv(&mut s).unwrap();
        let h = Header::parse(&h).unwrap();
        assert!(matches!(
            Reply::parse(h.opcode, h.status, &p),
            Ok(Reply::Hello(_))
        ));
        let np = Request::NewPool(NewPool {
            kind: PoolKind::Persistent,
            page_size: 4096,
        });
        send(&mut s, &np, CONTROL_ID);
        let (h, p) = recv(&mut s).unwrap();
        let h = Header::parse(&h).unwrap();
        let Ok(Reply::NewPool { pool }) = Reply::parse(h.opcode, h.status, &p) else {
            panic!("no pool");
        };
        (evil, s, pool)
    }

    fn put(s: &mut TcpStream, pool: u32, index: u32, data: &[u8; PAGE_SIZE], id: u64) {
        let key = PageKey {
            pool,
            object: [0; 3],
            index,
        };
        let page = Page {
            encoding: Encoding::Raw,
            crc: crc32c(data),
            data,
        };
        send(s, &Request::Put { key, page }, id);
    }

    fn get(s: &mut TcpStream, pool: u32, index: u32, id: u64) {
        let key = PageKey {
            pool,
            object: [0; 3],
            index,
        };
        send(s, &Request::Get { key }, id);
    }

    #[test]
    fn honest_round_trip() {
        let (_evil, mut s, pool) = connect(Mode::Honest);
        let data = [0x42u8; PAGE_SIZE];
        put(&mut s, pool, 20, &data, 1);
        let (h, _) = recv(&mut s).unwrap();
        assert_eq!(Header::parse(&h).unwrap().status, 0);
        get(&mut s, pool, 20, 2);
        let (h, p) = recv(&mut s).unwrap();
        let h = Header::parse(&h).unwrap();
        assert_eq!(h.request_id, 2);
        let Ok(Reply::Page(page)) = Reply::parse(h.opcode, h.status, &p) else {
            panic!("no page");
        };
        assert_eq!(page.data, &data[..]);
        assert_eq!(page.crc, crc32c(&data));
    }

    #[test]
    fn good_pages_are_honest_then_garbage() {
        let (_evil, mut s, pool) = connect(Mode::Garbage);
        put(&mut s, pool, 1, &[1u8; PAGE_SIZE], 5);
        let (h, _) = recv(&mut s).unwrap();
        assert_eq!(Header::parse(&h).unwrap().request_id, 5);
        get(&mut s, pool, 1, 6);
        let mut junk = [0u8; HEADER_LEN];
        s.read_exact(&mut junk).unwrap();
        assert!(Header::parse(&junk).is_err());
    }

    #[test]
    fn bad_replies_fail_to_decode_or_check() {
        let (_evil, mut s, pool) = connect(Mode::BadReply);
        let data = [9u8; PAGE_SIZE];
        put(&mut s, pool, 2, &data, 1);
        recv(&mut s).unwrap();
        for i in 0..6u64 {
            get(&mut s, pool, 2, 100 + i);
            let (h, p) = recv(&mut s).unwrap();
            let h = Header::parse(&h).unwrap();
            let ok = match Reply::parse(h.opcode, h.status, &p) {
                Ok(Reply::Page(page)) => {
                    page.encoding == Encoding::Raw
                        && page.data == &data[..]
                        && page.crc == crc32c(&data)
                }
                _ => false,
            };
            assert!(!ok, "variant {i} looks like a good page");
        }
        // A put of a high page: answered with the wrong opcode.
        put(&mut s, pool, 9, &data, 50);
        let (h, _) = recv(&mut s).unwrap();
        assert_eq!(Header::parse(&h).unwrap().opcode, Opcode::FlushPage as u8);
    }

    #[test]
    fn oversized_and_truncated() {
        let (_evil, mut s, pool) = connect(Mode::Oversized);
        get(&mut s, pool, 3, 1);
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        assert!(
            Header::parse(&h).is_err(),
            "u32::MAX payload must not parse"
        );

        let (_evil, mut s, pool) = connect(Mode::Truncated);
        put(&mut s, pool, 1, &[3u8; PAGE_SIZE], 1);
        recv(&mut s).unwrap();
        get(&mut s, pool, 1, 2);
        assert!(recv(&mut s).is_err(), "a truncated reply then EOF");
    }

    #[test]
    fn stall_never_answers() {
        let (_evil, mut s, pool) = connect(Mode::Stall);
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        get(&mut s, pool, 1, 1);
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err());
    }

    #[test]
    fn broken_handshakes() {
        let evil = EvilAppliance::start(Mode::HelloStall).unwrap();
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, evil.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        send(&mut s, &Request::Hello(Hello::new(1)), CONTROL_ID);
        let mut b = [0u8; 1];
        assert!(s.read(&mut b).is_err(), "no HELLO reply");

        let evil = EvilAppliance::start(Mode::HelloGarbage).unwrap();
        let mut s = TcpStream::connect((Ipv4Addr::LOCALHOST, evil.port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        send(&mut s, &Request::Hello(Hello::new(1)), CONTROL_ID);
        let mut h = [0u8; HEADER_LEN];
        s.read_exact(&mut h).unwrap();
        assert!(Header::parse(&h).is_err());
    }

    #[test]
    fn modes_have_unique_names() {
        for m in Mode::ALL {
            assert_eq!(Mode::from_name(m.name()), Some(m));
        }
    }
}
