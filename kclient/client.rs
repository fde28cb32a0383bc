//! The client: turns block requests into tmem page operations on one or more TCP connections to an
//! appliance, and replies back into completed requests. Safe Rust only; the unsafe parts are in the
//! `blk`, `net` and `thread` wrappers.
//!
//! - Each blk-mq hardware queue maps to its own connection (falling back to any live one), with its
//!   own send lock and receive thread: no global lock on the I/O path.
//! - Write = PUT_PAGE per 4 KiB page, read = GET_PAGE, discard = FLUSH_PAGE; consecutive pages of a
//!   request travel as one BATCH frame of up to 64 operations ([`PageRunId`] names the run), so a
//!   256 KiB write costs one frame and one reply, not 64. A bitmap remembers which pages were
//!   stored: reads of other pages return zeros without a round trip, and a stored page the
//!   appliance no longer has is an I/O error, never silent zeros.
//! - A run's wire request id is (request generation, hardware queue, tag, first page, page count),
//!   so replies may arrive in any order and stale replies (after a timeout) are recognised and
//!   dropped.
//! - A lost connection fails everything in flight on it at once; the receive thread reconnects with
//!   exponential backoff, moving through the configured targets. While no connection is up, new I/O
//!   waits at most `io_timeout_ms` from the moment the last connection was lost, then fails at once.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_mutex, new_spinlock, Arc, Mutex, SpinLock};

use crate::blk::{self, Driver, Inflight, Op, TagSet};
use crate::lz4::{self, Compressor};
use crate::net::{SocketAddr, TcpStream};
use crate::protocol::{
    self, crc32c, BatchWriter, Encoding, Header, Hello, NewPool, Page, PageKey, PoolKind, Reply,
    Request, Status, BATCH_ENTRY_HEADER_LEN, HEADER_LEN, MAX_BATCH, MAX_ERROR_MESSAGE, MAX_FRAME,
    MAX_PAYLOAD, PAGE_HEADER_LEN, PAGE_SIZE,
};
use crate::stats::{self, STATS};
use crate::thread::{self, KThread};

/// Request id of control operations (HELLO, NEW_POOL, DESTROY_POOL); page ids never use it.
const CONTROL_ID: u64 = u64::MAX;
/// Largest frame we send: a BATCH of raw PUT_PAGEs.
const SEND_FRAME_MAX: usize = MAX_FRAME;
/// Largest reply payload we accept: the protocol's limit (a BATCH of raw pages fits).
const RECV_PAYLOAD_MAX: usize = MAX_PAYLOAD;
/// Most targets in `remote_target`.
pub(crate) const MAX_TARGETS: usize = 8;
/// Object id of our pages: one swap device per pool.
const OBJECT: [u64; 3] = [0, 0, 0];

/// Names a run of consecutive pages of one block request on the wire: the request id of its frame
/// (a single page operation, or a BATCH when `count > 1`).
///
/// Layout: generation (24 bits) | hardware queue (8) | tag (16) | count - 1 (8) | first page (8).
/// The reply to a run must have exactly `count` answers, so a reply cannot answer pages of another
/// run of the same request.
#[derive(Clone, Copy)]
struct PageRunId {
    gen: u32,
    hctx: u32,
    tag: u32,
    first: u32,
    count: u32,
}

impl PageRunId {
    fn to_wire(self) -> u64 {
        (u64::from(self.gen) << 40)
            | (u64::from(self.hctx & 0xff) << 32)
            | (u64::from(self.tag & 0xffff) << 16)
            | (u64::from(self.count.wrapping_sub(1) & 0xff) << 8)
            | u64::from(self.first & 0xff)
    }

    /// Longest reply payload the run can have: a raw page (or an error message) per page, plus the
    /// BATCH framing when there are several.
    fn max_reply_len(self) -> usize {
        let answer = PAGE_HEADER_LEN + PAGE_SIZE.max(MAX_ERROR_MESSAGE);
        match self.count {
            1 => answer,
            n => 4 + n as usize * (BATCH_ENTRY_HEADER_LEN + answer),
        }
    }

    fn from_wire(id: u64) -> Self {
        Self {
            gen: (id >> 40) as u32,
            hctx: ((id >> 32) & 0xff) as u32,
            tag: ((id >> 16) & 0xffff) as u32,
            count: ((id >> 8) & 0xff) as u32 + 1,
            first: (id & 0xff) as u32,
        }
    }
}

/// Error codes the 6.12 `kernel::error::code` module does not name.
fn errno(code: u32) -> Error {
    Error::from_errno(-(code as i32))
}
fn eproto() -> Error {
    errno(kernel::bindings::EPROTO)
}
fn ebadmsg() -> Error {
    errno(kernel::bindings::EBADMSG)
}
fn econnrefused() -> Error {
    errno(kernel::bindings::ECONNREFUSED)
}
fn eshutdown() -> Error {
    errno(kernel::bindings::ESHUTDOWN)
}

/// Settings fixed at load time.
pub(crate) struct Config {
    pub(crate) targets: KVec<SocketAddr>,
    pub(crate) pages: u64,
    pub(crate) io_timeout_ms: u32,
    pub(crate) nr_conns: u32,
    pub(crate) client_id: u64,
    /// LZ4 pages on the wire, both ways.
    pub(crate) compress: bool,
}

/// `s` without leading and trailing ASCII whitespace (`<[u8]>::trim_ascii` needs Rust 1.80; the
/// kernel accepts 1.78).
fn trim_ascii(s: &[u8]) -> &[u8] {
    let start = s
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(s.len());
    let end = s
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    s.get(start..end).unwrap_or(&[])
}

/// Parses `HOST:PORT[,HOST:PORT...]` (IPv4 dotted quads).
pub(crate) fn parse_targets(s: &[u8]) -> Result<KVec<SocketAddr>> {
    let mut out = KVec::new();
    for item in s.split(|&c| c == b',') {
        let item = trim_ascii(item);
        if item.is_empty() {
            continue;
        }
        if out.len() == MAX_TARGETS {
            return Err(EINVAL);
        }
        out.push(parse_addr(item).ok_or(EINVAL)?, GFP_KERNEL)?;
    }
    if out.is_empty() {
        return Err(EINVAL);
    }
    Ok(out)
}

fn parse_addr(s: &[u8]) -> Option<SocketAddr> {
    let colon = s.iter().rposition(|&c| c == b':')?;
    let (host, port) = (s.get(..colon)?, s.get(colon + 1..)?);
    let port = parse_u32(port)?;
    let mut ip = 0u32;
    let mut parts = 0;
    for part in host.split(|&c| c == b'.') {
        let v = parse_u32(part)?;
        if v > 255 {
            return None;
        }
        ip = (ip << 8) | v;
        parts += 1;
    }
    if parts != 4 || port == 0 || port > 65535 {
        return None;
    }
    Some(SocketAddr {
        ip,
        port: port as u16,
    })
}

fn parse_u32(s: &[u8]) -> Option<u32> {
    if s.is_empty() || s.len() > 9 {
        return None;
    }
    s.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Where pages go: the target list, which one is in use, and our pool on each.
struct Session {
    targets: KVec<SocketAddr>,
    pools: [Option<u32>; MAX_TARGETS],
}

/// Buffers for building frames; the lock around them also keeps frames whole on the wire.
struct SendBufs {
    /// Up to a whole BATCH frame (~264 KiB): vmalloc, not a high-order kmalloc.
    frame: VVec<u8>,
    page: PageScratch,
}

/// Where one outgoing page is prepared: its data, its fill word, its compressed form.
struct PageScratch {
    data: KVec<u8>,
    fill: [u8; 8],
    lz4: Option<Compressor>,
}

/// Largest LZ4 page worth sending compressed; above it the raw page costs little more and the
/// appliance would keep it raw anyway (its default raw threshold).
const LZ4_LIMIT: usize = PAGE_SIZE - PAGE_SIZE / 8;

#[pin_data]
pub(crate) struct Conn {
    idx: u32,
    #[pin]
    send: Mutex<SendBufs>,
    #[pin]
    stream: SpinLock<Option<Arc<TcpStream>>>,
    up: AtomicBool,
    /// Status of the last control reply seen by the receive loop (`u32::MAX`: none yet).
    control_status: AtomicU32,
    /// Which target and pool this connection's pages go to.
    pool: AtomicU32,
}

impl Conn {
    fn new(idx: u32, compress: bool) -> Result<Arc<Self>> {
        let frame = VVec::from_elem(0u8, SEND_FRAME_MAX, GFP_KERNEL)?;
        let page = PageScratch {
            data: KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?,
            fill: [0; 8],
            lz4: if compress {
                Some(Compressor::new()?)
            } else {
                None
            },
        };
        Arc::pin_init(
            pin_init!(Self {
                idx,
                send <- new_mutex!(SendBufs { frame, page }, "kclient:send"),
                stream <- new_spinlock!(None, "kclient:stream"),
                up: AtomicBool::new(false),
                control_status: AtomicU32::new(u32::MAX),
                pool: AtomicU32::new(0),
            }),
            GFP_KERNEL,
        )
    }

    fn stream(&self) -> Option<Arc<TcpStream>> {
        self.stream.lock().clone()
    }

    fn publish(&self, stream: Arc<TcpStream>) {
        let old = self.stream.lock().replace(stream);
        // Dropped outside the spinlock: releasing a socket sleeps.
        drop(old);
        self.up.store(true, Ordering::Release);
    }

    fn unpublish(&self) -> Option<Arc<TcpStream>> {
        self.up.store(false, Ordering::Release);
        self.stream.lock().take()
    }

    /// Breaks the connection; the receive thread notices, fails what is in flight and reconnects.
    fn kick(&self) {
        if let Some(s) = self.stream() {
            s.shutdown();
        }
    }
}

#[pin_data]
pub(crate) struct Client {
    cfg_pages: u64,
    io_timeout_ms: u32,
    client_id: u64,
    compress: bool,
    set: Arc<TagSet<Client>>,
    conns: KVec<Arc<Conn>>,
    /// One bit per page: stored on the appliance (set on a successful put, cleared by discard).
    stored: KVec<AtomicU64>,
    #[pin]
    session: Mutex<Session>,
    current_target: AtomicU32,
    #[pin]
    threads: Mutex<KVec<KThread>>,
    stopping: AtomicBool,
    /// When the last connection went down (ms), 0 while one is up.
    down_since_ms: AtomicU64,
}

impl Client {
    pub(crate) fn new(cfg: Config, set: Arc<TagSet<Client>>) -> Result<Arc<Self>> {
        let mut conns = KVec::with_capacity(cfg.nr_conns as usize, GFP_KERNEL)?;
        for i in 0..cfg.nr_conns {
            conns.push(Conn::new(i, cfg.compress)?, GFP_KERNEL)?;
        }
        let words = cfg.pages.div_ceil(64) as usize;
        let mut stored = KVec::with_capacity(words, GFP_KERNEL)?;
        for _ in 0..words {
            stored.push(AtomicU64::new(0), GFP_KERNEL)?;
        }
        let session = Session {
            targets: cfg.targets,
            pools: [None; MAX_TARGETS],
        };
        Arc::pin_init(
            pin_init!(Self {
                cfg_pages: cfg.pages,
                io_timeout_ms: cfg.io_timeout_ms,
                client_id: cfg.client_id,
                compress: cfg.compress,
                set,
                conns,
                stored,
                session <- new_mutex!(session, "kclient:session"),
                current_target: AtomicU32::new(0),
                threads <- new_mutex!(KVec::new(), "kclient:threads"),
                stopping: AtomicBool::new(false),
                down_since_ms: AtomicU64::new(thread::now_ms().max(1)),
            }),
            GFP_KERNEL,
        )
    }

    /// Connects connection 0 synchronously (so a bad target fails the load), then starts one
    /// receive thread per connection.
    pub(crate) fn start(self: &Arc<Self>) -> Result {
        let first = self.connect(&self.conns[0])?;
        let mut initial = Some(Arc::new(first, GFP_KERNEL)?);
        for conn in self.conns.iter() {
            let client = self.clone();
            let conn2 = conn.clone();
            let stream = initial.take();
            if let Some(s) = &stream {
                conn.publish(s.clone());
                self.down_since_ms.store(0, Ordering::Release);
            }
            let mut name = [0u8; 16];
            let n = fmt_name(&mut name, conn.idx);
            let name = CStr::from_bytes_with_nul(name.get(..n).ok_or(EINVAL)?)?;
            let t = KThread::spawn(name, move || client.conn_main(&conn2, stream))?;
            self.threads.lock().push(t, GFP_KERNEL)?;
        }
        Ok(())
    }

    /// Stops every thread and closes every connection. In-flight requests have completed (the disk
    /// is gone) or are failed by the receive threads on their way out.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for conn in self.conns.iter() {
            conn.kick();
        }
        let threads = core::mem::take(&mut *self.threads.lock());
        drop(threads);
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || thread::should_stop()
    }

    pub(crate) fn connected(&self) -> u32 {
        self.conns
            .iter()
            .filter(|c| c.up.load(Ordering::Acquire))
            .count() as u32
    }

    pub(crate) fn nr_conns(&self) -> u32 {
        self.conns.len() as u32
    }

    /// Replaces the target list (runtime write of `remote_target`); connections move over.
    pub(crate) fn set_targets(&self, targets: KVec<SocketAddr>) {
        {
            let mut s = self.session.lock();
            s.targets = targets;
            s.pools = [None; MAX_TARGETS];
        }
        self.current_target.store(0, Ordering::Release);
        pr_warn!(
            "remote_target changed; pages stored on the old appliance are no longer reachable\n"
        );
        for conn in self.conns.iter() {
            conn.kick();
        }
    }

    /// Sends DESTROY_POOL on a live connection and waits (bounded) for the answer.
    pub(crate) fn destroy_pool(&self) {
        let Some(conn) = self.conns.iter().find(|c| c.up.load(Ordering::Acquire)) else {
            return;
        };
        let pool = conn.pool.load(Ordering::Acquire);
        conn.control_status.store(u32::MAX, Ordering::Release);
        let sent = {
            let mut bufs = conn.send.lock();
            match conn.stream() {
                Some(stream) => send_request(
                    &stream,
                    &mut bufs.frame,
                    &Request::DestroyPool { pool },
                    CONTROL_ID,
                    0,
                )
                .is_ok(),
                None => false,
            }
        };
        if !sent {
            return;
        }
        let deadline = thread::now_ms() + u64::from(self.io_timeout_ms.min(2000));
        while conn.control_status.load(Ordering::Acquire) == u32::MAX && thread::now_ms() < deadline
        {
            thread::sleep_ms(10);
        }
        match conn.control_status.load(Ordering::Acquire) {
            0 => pr_info!("destroyed pool {}\n", pool),
            u32::MAX => pr_warn!("no answer to DESTROY_POOL {}\n", pool),
            st => pr_warn!("DESTROY_POOL {} failed: status {}\n", pool, st),
        }
    }

    fn is_stored(&self, index: u64) -> bool {
        self.stored
            .get((index / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (index % 64)) != 0)
    }

    fn set_stored(&self, index: u64, on: bool) {
        if let Some(w) = self.stored.get((index / 64) as usize) {
            let bit = 1u64 << (index % 64);
            if on {
                w.fetch_or(bit, Ordering::AcqRel);
            } else {
                w.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Opens a connection to the current target: TCP, HELLO, and our pool there (created once).
    fn connect(&self, conn: &Conn) -> Result<TcpStream> {
        let (target_idx, addr) = {
            let s = self.session.lock();
            let cur = self.current_target.load(Ordering::Acquire) as usize;
            let idx = cur.checked_rem(s.targets.len()).unwrap_or(0);
            (idx, *s.targets.get(idx).ok_or(EINVAL)?)
        };
        let result = self.handshake(conn, target_idx, addr);
        if result.is_err() {
            stats::inc(&STATS.connect_failures);
            // Try the next target next time.
            let n = self.session.lock().targets.len() as u32;
            let _ = self.current_target.compare_exchange(
                target_idx as u32,
                (target_idx as u32 + 1).checked_rem(n).unwrap_or(0),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        result
    }

    fn handshake(&self, conn: &Conn, target_idx: usize, addr: SocketAddr) -> Result<TcpStream> {
        let stream = TcpStream::connect(addr, self.io_timeout_ms, self.io_timeout_ms)?;
        let mut bufs = conn.send.lock();
        let hello = Request::Hello(Hello::new(self.client_id));
        send_request(&stream, &mut bufs.frame, &hello, CONTROL_ID, 0)?;
        let (h, len) = recv_frame(&stream, &mut bufs.frame)?;
        match Reply::parse(h.opcode, h.status, bufs.frame.get(..len).ok_or(EINVAL)?) {
            Ok(Reply::Hello(r)) if r.version == u16::from(protocol::VERSION) => {}
            Ok(other) => {
                pr_err!("HELLO refused: {}\n", other.status().name());
                return Err(econnrefused());
            }
            Err(_) => return Err(eproto()),
        }
        // Our pool on this target: created once (the session lock orders concurrent connections).
        let mut session = self.session.lock();
        let pool = match session.pools.get(target_idx).copied().flatten() {
            Some(pool) => pool,
            None => {
                let req = Request::NewPool(NewPool {
                    kind: PoolKind::Persistent,
                    page_size: PAGE_SIZE as u32,
                });
                send_request(&stream, &mut bufs.frame, &req, CONTROL_ID, 0)?;
                let (h, len) = recv_frame(&stream, &mut bufs.frame)?;
                let pool =
                    match Reply::parse(h.opcode, h.status, bufs.frame.get(..len).ok_or(EINVAL)?) {
                        Ok(Reply::NewPool { pool }) => pool,
                        Ok(other) => {
                            pr_err!("NEW_POOL refused: {}\n", other.status().name());
                            return Err(ENOSPC);
                        }
                        Err(_) => return Err(eproto()),
                    };
                if let Some(slot) = session.pools.get_mut(target_idx) {
                    *slot = Some(pool);
                }
                pr_info!(
                    "pool {} on {}.{}.{}.{}:{}\n",
                    pool,
                    addr.ip >> 24,
                    (addr.ip >> 16) & 0xff,
                    (addr.ip >> 8) & 0xff,
                    addr.ip & 0xff,
                    addr.port
                );
                pool
            }
        };
        conn.pool.store(pool, Ordering::Release);
        Ok(stream)
    }

    /// Body of connection `conn`'s thread: (re)connect, receive replies, clean up, repeat.
    fn conn_main(&self, conn: &Conn, mut initial: Option<Arc<TcpStream>>) {
        let mut backoff_ms = 100u32;
        let mut first = true;
        while !self.stopping() {
            let stream = match initial.take() {
                Some(s) => s,
                None => match self
                    .connect(conn)
                    .and_then(|s| Ok(Arc::new(s, GFP_KERNEL)?))
                {
                    Ok(s) => {
                        conn.publish(s.clone());
                        s
                    }
                    Err(_) => {
                        let until = thread::now_ms() + u64::from(backoff_ms);
                        while !self.stopping() && thread::now_ms() < until {
                            thread::sleep_ms(50);
                        }
                        backoff_ms = (backoff_ms * 2).min(5000);
                        continue;
                    }
                },
            };
            backoff_ms = 100;
            if !first {
                stats::inc(&STATS.reconnects);
                pr_info!("connection {} re-established\n", conn.idx);
            }
            first = false;
            self.down_since_ms.store(0, Ordering::Release);

            let err = self.receive_loop(conn, &stream);

            conn.unpublish();
            stream.shutdown();
            // Wait for a sender that still holds the lock (its send fails now), then fail the rest.
            drop(conn.send.lock());
            self.fail_inflight(conn.idx);
            if self.connected() == 0 {
                let _ = self.down_since_ms.compare_exchange(
                    0,
                    thread::now_ms().max(1),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                );
            }
            if !self.stopping() {
                pr_warn!(
                    "connection {} lost (error {}); reconnecting\n",
                    conn.idx,
                    err.to_errno()
                );
            }
        }
    }

    fn fail_inflight(&self, conn_idx: u32) {
        self.set.for_each_inflight(|rq| {
            if rq.owner() == conn_idx {
                stats::inc(&STATS.failed_requests);
                rq.fail(blk::Status::IoErr);
            }
        });
    }

    fn receive_loop(&self, conn: &Conn, stream: &TcpStream) -> Error {
        let mut header = [0u8; HEADER_LEN];
        let mut payload = match VVec::from_elem(0u8, RECV_PAYLOAD_MAX, GFP_KERNEL) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        // On the heap: kernel stacks are small.
        let mut page_buf = match KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL) {
            Ok(p) => p,
            Err(e) => return e.into(),
        };
        let Ok(page) = <&mut [u8; PAGE_SIZE]>::try_from(&mut page_buf[..]) else {
            return EINVAL;
        };
        loop {
            if self.stopping() {
                return eshutdown();
            }
            match stream.recv_exact(&mut header) {
                Ok(()) => {}
                Err(e) if e == EAGAIN => continue,
                Err(e) => return e,
            }
            let Ok(h) = Header::parse(&header) else {
                stats::inc(&STATS.protocol_errors);
                return eproto();
            };
            let len = h.payload_len as usize;
            let limit = match h.request_id {
                CONTROL_ID => RECV_PAYLOAD_MAX,
                id => PageRunId::from_wire(id)
                    .max_reply_len()
                    .min(RECV_PAYLOAD_MAX),
            };
            if !h.is_reply() || len > limit {
                stats::inc(&STATS.protocol_errors);
                return eproto();
            }
            let Some(body) = payload.get_mut(..len) else {
                return eproto();
            };
            if let Err(e) = stream.recv_exact(body) {
                return e;
            }
            stats::add(&STATS.bytes_received, (HEADER_LEN + len) as u64);
            if h.request_id == CONTROL_ID {
                conn.control_status
                    .store(u32::from(h.status), Ordering::Release);
                continue;
            }
            self.handle_reply(conn, &h, body, page);
        }
    }

    fn handle_reply(&self, conn: &Conn, h: &Header, body: &[u8], page: &mut [u8; PAGE_SIZE]) {
        let id = PageRunId::from_wire(h.request_id);
        let Some(rq) = self.set.acquire(id.hctx, id.tag, id.gen) else {
            stats::inc(&STATS.stale_replies);
            return;
        };
        if rq.owner() != conn.idx {
            stats::inc(&STATS.stale_replies);
            return;
        }
        // The reply must answer the operation we sent (a FLUSH_PAGE "done" is no PUT "done").
        let expected = match rq.op() {
            Op::Write => protocol::Opcode::PutPage,
            Op::Read => protocol::Opcode::GetPage,
            Op::Discard => protocol::Opcode::FlushPage,
            Op::Flush | Op::Other(_) => {
                stats::inc(&STATS.protocol_errors);
                rq.fail(blk::Status::IoErr);
                return;
            }
        };
        if id.count == 1 {
            if h.opcode != expected as u8 {
                stats::inc(&STATS.protocol_errors);
                rq.fail(blk::Status::IoErr);
                return;
            }
            let reply = Reply::parse(h.opcode, h.status, body);
            self.complete_part(&rq, id.first, reply, page);
            return;
        }
        // A run of several pages went as one BATCH: its reply has exactly one entry per page, in
        // order (an error for the whole batch fails the request).
        let entries = match Reply::parse(h.opcode, h.status, body) {
            Ok(Reply::Batch(entries))
                if h.opcode == protocol::Opcode::Batch as u8
                    && entries.len() == id.count as usize =>
            {
                entries
            }
            Ok(Reply::Error { status, .. }) if h.opcode == protocol::Opcode::Batch as u8 => {
                self.fail_with(&rq, status);
                return;
            }
            _ => {
                stats::inc(&STATS.protocol_errors);
                rq.fail(blk::Status::IoErr);
                return;
            }
        };
        for (part, entry) in (id.first..).zip(entries) {
            if entry.opcode != expected as u8 {
                stats::inc(&STATS.protocol_errors);
                rq.fail(blk::Status::IoErr);
                return;
            }
            if !self.complete_part(&rq, part, entry.reply(), page) {
                return;
            }
        }
    }

    /// Fails `rq` for an error status the appliance returned for (part of) it.
    fn fail_with(&self, rq: &Inflight<'_>, status: Status) {
        match rq.op() {
            Op::Write => stats::inc(&STATS.failed_puts),
            Op::Read => stats::inc(&STATS.failed_gets),
            _ => stats::inc(&STATS.failed_flushes),
        }
        if rq.op() == Op::Write && matches!(status, Status::NoSpace | Status::QuotaExceeded) {
            stats::inc(&STATS.puts_refused);
            rq.fail(blk::Status::NoSpace);
        } else {
            rq.fail(blk::Status::IoErr);
        }
    }

    /// Applies the appliance's answer for one page (`part`) of `rq`. Returns false once the
    /// request has failed (the rest of a batch reply is then ignored).
    fn complete_part(
        &self,
        rq: &Inflight<'_>,
        part: u32,
        reply: core::result::Result<Reply<'_>, protocol::WireError>,
        page: &mut [u8; PAGE_SIZE],
    ) -> bool {
        // Each part of the request is answered once: a part the request does not have, or a
        // second answer for a part, is a protocol error (it must not complete the request while
        // other parts are unanswered, nor mark pages outside the request as stored).
        if !rq.claim_part(part) {
            stats::inc(&STATS.protocol_errors);
            rq.fail(blk::Status::IoErr);
            return false;
        }
        let index = rq.sector() / 8 + u64::from(part);
        match (rq.op(), reply) {
            (Op::Write, Ok(Reply::Done)) => {
                self.set_stored(index, true);
                stats::inc(&STATS.pages_stored);
                rq.page_done();
            }
            (Op::Read, Ok(Reply::Page(p))) => {
                if decode_page(&p, page, self.compress).is_ok()
                    && rq.copy_in(part as usize * PAGE_SIZE, page)
                {
                    stats::inc(&STATS.pages_loaded);
                    rq.page_done();
                } else {
                    stats::inc(&STATS.failed_gets);
                    rq.fail(blk::Status::IoErr);
                    return false;
                }
            }
            (Op::Read, Ok(Reply::Error { status, .. })) => {
                if status == Status::NotFound {
                    stats::inc(&STATS.lost_pages);
                }
                self.fail_with(rq, status);
                return false;
            }
            (Op::Discard, Ok(Reply::Done))
            | (
                Op::Discard,
                Ok(Reply::Error {
                    status: Status::NotFound,
                    ..
                }),
            ) => {
                stats::inc(&STATS.pages_discarded);
                rq.page_done();
            }
            (Op::Write | Op::Discard, Ok(Reply::Error { status, .. })) => {
                self.fail_with(rq, status);
                return false;
            }
            _ => {
                stats::inc(&STATS.protocol_errors);
                rq.fail(blk::Status::IoErr);
                return false;
            }
        }
        true
    }

    /// A live connection for hardware queue `hctx`, waiting (bounded) while all are down.
    fn pick_conn(&self, hctx: u32) -> Option<&Arc<Conn>> {
        let n = self.conns.len();
        if n == 0 {
            return None;
        }
        loop {
            for k in 0..n {
                let c = &self.conns[(hctx as usize + k) % n];
                if c.up.load(Ordering::Acquire) {
                    return Some(c);
                }
            }
            let since = self.down_since_ms.load(Ordering::Acquire);
            let now = thread::now_ms();
            if self.stopping.load(Ordering::Acquire)
                || (since != 0 && now >= since + u64::from(self.io_timeout_ms))
            {
                return None;
            }
            thread::sleep_ms(20);
        }
    }

    fn submit(&self, hctx: u32, rq: &Inflight<'_>) -> core::result::Result<(), blk::Status> {
        let op = rq.op();
        match op {
            Op::Read | Op::Write | Op::Discard => {}
            Op::Flush => {
                rq.succeed();
                return Ok(());
            }
            Op::Other(_) => return Err(blk::Status::NotSupported),
        }
        let sector = rq.sector();
        let bytes = u64::from(rq.bytes());
        if sector % 8 != 0 || bytes % PAGE_SIZE as u64 != 0 {
            return Err(blk::Status::IoErr);
        }
        let first = sector / 8;
        let pages = bytes / PAGE_SIZE as u64;
        if first + pages > self.cfg_pages || pages > u64::from(blk::MAX_PARTS) {
            return Err(blk::Status::IoErr);
        }
        if pages == 0 {
            rq.succeed();
            return Ok(());
        }
        let pages = pages as u32;
        rq.set_pending(pages);
        let conn = self.pick_conn(hctx).ok_or(blk::Status::IoErr)?;
        rq.set_owner(conn.idx);
        let mut guard = conn.send.lock();
        let stream = conn.stream().ok_or(blk::Status::IoErr)?;
        let pool = conn.pool.load(Ordering::Acquire);
        let mut part = 0;
        while part < pages {
            // Reads of pages never stored are zeros, answered here without a round trip.
            if op == Op::Read && !self.is_stored(first + u64::from(part)) {
                guard.page.data.fill(0);
                // Claimed like a reply: a forged reply for this part cannot also count.
                let offset = part as usize * PAGE_SIZE;
                if !rq.claim_part(part) || !rq.copy_in(offset, &guard.page.data) {
                    return Err(blk::Status::IoErr);
                }
                stats::inc(&STATS.pages_loaded_zero);
                rq.page_done();
                part += 1;
                continue;
            }
            // A run of pages that go to the appliance: up to MAX_BATCH in one frame.
            let mut count = 1;
            while part + count < pages
                && count < MAX_BATCH as u32
                && (op != Op::Read || self.is_stored(first + u64::from(part + count)))
            {
                count += 1;
            }
            let id = PageRunId {
                gen: rq.gen() & blk::GEN_MASK,
                hctx,
                tag: rq.tag(),
                first: part,
                count,
            };
            // A frame that cannot be built (the request's pages could not be copied) fails the
            // request; only a failed send breaks the connection.
            let len = self
                .build_run(&mut guard, rq, pool, id)
                .map_err(|_| blk::Status::IoErr)?;
            let frame = guard.frame.get(..len).ok_or(blk::Status::IoErr)?;
            if let Err(e) = stream.send(frame) {
                if stats::STATS.send_errors.fetch_add(1, Ordering::Relaxed) < 10 {
                    pr_warn!(
                        "send on connection {} failed (error {})\n",
                        conn.idx,
                        e.to_errno()
                    );
                }
                stream.shutdown();
                return Err(blk::Status::IoErr);
            }
            stats::add(&STATS.bytes_sent, len as u64);
            part += count;
        }
        Ok(())
    }

    /// Builds in `bufs.frame` the frame for pages `id.first..id.first + id.count` of `rq` and
    /// returns its length: one page as its own frame, more as one BATCH frame (one header, one
    /// reply, one wake-up on each side for up to 64 pages).
    fn build_run(
        &self,
        bufs: &mut SendBufs,
        rq: &Inflight<'_>,
        pool: u32,
        id: PageRunId,
    ) -> Result<usize> {
        let SendBufs { frame, page } = bufs;
        let base = rq.sector() / 8;
        let wire_id = id.to_wire();
        // Gets may come back LZ4-compressed when we can decode them.
        let flags = if self.compress && rq.op() == Op::Read {
            protocol::flags::ACCEPT_LZ4
        } else {
            0
        };
        let len = if id.count == 1 {
            let req = page_request(rq, pool, base, id.first, page)?;
            req.emit(wire_id, flags, frame).map_err(|_| EINVAL)?
        } else {
            let mut batch = BatchWriter::new(frame).map_err(|_| EINVAL)?;
            for part in id.first..id.first + id.count {
                let req = page_request(rq, pool, base, part, page)?;
                batch.push_request(&req, 0).map_err(|_| EINVAL)?;
            }
            batch.finish_request(wire_id, flags).map_err(|_| EINVAL)?
        };
        if rq.op() == Op::Discard {
            for part in id.first..id.first + id.count {
                self.set_stored(base + u64::from(part), false);
            }
        }
        Ok(len)
    }
}

impl Driver for Client {
    fn queue_rq(&self, hctx: u32, rq: Inflight<'_>) {
        if let Err(status) = self.submit(hctx, &rq) {
            stats::inc(&STATS.failed_requests);
            match rq.op() {
                Op::Write => stats::inc(&STATS.failed_puts),
                Op::Read => stats::inc(&STATS.failed_gets),
                _ => stats::inc(&STATS.failed_flushes),
            }
            rq.fail(status);
        }
    }

    fn timed_out(&self, owner: u32) {
        if let Some(conn) = self.conns.get(owner as usize) {
            pr_warn!("request on connection {} timed out; resetting it\n", owner);
            conn.kick();
        }
    }
}

/// The page operation for part `part` of `rq` (pages from `base`); a write's data is copied into
/// `scratch` first and sent as a fill word, LZ4 (when it shrinks enough) or raw.
fn page_request<'p>(
    rq: &Inflight<'_>,
    pool: u32,
    base: u64,
    part: u32,
    scratch: &'p mut PageScratch,
) -> Result<Request<'p>> {
    let key = PageKey {
        pool,
        object: OBJECT,
        index: (base + u64::from(part)) as u32,
    };
    Ok(match rq.op() {
        Op::Read => Request::Get { key },
        Op::Write => {
            if !rq.copy_out(part as usize * PAGE_SIZE, &mut scratch.data) {
                return Err(EIO);
            }
            let data = <&[u8; PAGE_SIZE]>::try_from(&scratch.data[..]).map_err(|_| EINVAL)?;
            let crc = crc32c(data);
            let page = if let Some(word) = Page::detect_fill(data) {
                scratch.fill = word.to_le_bytes();
                Page {
                    encoding: Encoding::Fill,
                    crc,
                    data: &scratch.fill[..],
                }
            } else if let Some(lz) = scratch
                .lz4
                .as_mut()
                .and_then(|c| c.compress(data, LZ4_LIMIT))
            {
                stats::inc(&STATS.pages_compressed);
                Page {
                    encoding: Encoding::Lz4,
                    crc,
                    data: lz,
                }
            } else {
                Page {
                    encoding: Encoding::Raw,
                    crc,
                    data,
                }
            };
            Request::Put { key, page }
        }
        _ => Request::FlushPage { key },
    })
}

/// Encodes `req` into `frame` and sends it.
fn send_request(
    stream: &TcpStream,
    frame: &mut [u8],
    req: &Request<'_>,
    id: u64,
    flags: u16,
) -> Result {
    let len = req.emit(id, flags, frame).map_err(|_| EINVAL)?;
    stream.send(frame.get(..len).ok_or(EINVAL)?)?;
    stats::add(&STATS.bytes_sent, len as u64);
    Ok(())
}

/// Receives one whole frame into `buf` (control replies during the handshake).
fn recv_frame(stream: &TcpStream, buf: &mut [u8]) -> Result<(Header, usize)> {
    let mut header = [0u8; HEADER_LEN];
    stream.recv_exact(&mut header)?;
    let h = Header::parse(&header).map_err(|_| eproto())?;
    let len = h.payload_len as usize;
    if !h.is_reply() || h.request_id != CONTROL_ID {
        return Err(eproto());
    }
    stream.recv_exact(buf.get_mut(..len).ok_or(eproto())?)?;
    stats::add(&STATS.bytes_received, (HEADER_LEN + len) as u64);
    Ok((h, len))
}

/// Decodes a page payload into `out` and checks its CRC-32C. LZ4 pages are accepted only when we
/// asked for them (`accept_lz4`: the `compress` parameter sets `flags::ACCEPT_LZ4` on gets).
fn decode_page(p: &Page<'_>, out: &mut [u8; PAGE_SIZE], accept_lz4: bool) -> Result {
    match p.encoding {
        Encoding::Raw => out.copy_from_slice(p.data.get(..PAGE_SIZE).ok_or(eproto())?),
        Encoding::Fill => Page::expand_fill(p.fill_word().ok_or(eproto())?, out),
        Encoding::Lz4 if accept_lz4 => {
            if !lz4::decompress(p.data, out) {
                stats::inc(&STATS.protocol_errors);
                return Err(eproto());
            }
        }
        // LZ4 never requested, or a sealed page kclient never stores (it does not seal pages):
        // the appliance does not follow the protocol.
        Encoding::Lz4 | Encoding::Sealed => {
            stats::inc(&STATS.protocol_errors);
            return Err(eproto());
        }
    }
    if crc32c(out) != p.crc {
        stats::inc(&STATS.checksum_errors);
        return Err(ebadmsg());
    }
    Ok(())
}

/// Writes "kclient-rxN\0" into `buf`; returns the length including the NUL.
fn fmt_name(buf: &mut [u8; 16], idx: u32) -> usize {
    let prefix = b"kclient-rx";
    buf[..prefix.len()].copy_from_slice(prefix);
    let mut n = prefix.len();
    let mut digits = [0u8; 10];
    let mut d = 0;
    let mut v = idx;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 || d == digits.len() {
            break;
        }
    }
    while d > 0 && n < buf.len() - 1 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = 0;
    n + 1
}
