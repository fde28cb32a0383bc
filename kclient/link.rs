//! The two threads of every connection.
//!
//! - **Receive thread** (`conn_main`): connects, says HELLO (see `transport.rs`), makes sure our
//!   pool is still there (an appliance that restarted empty has lost it: say so, start a new one,
//!   mark what it held as stale), publishes the connection, then receives and dispatches replies.
//!   When the connection fails it unpublishes it, hands back what was queued, waits for a send in
//!   progress, resolves everything still owed on it as failed (so the other replicas answer or
//!   the request fails), and reconnects with exponential backoff.
//! - **Sender thread** (`sender_main`): the only writer to the socket. It takes items off the
//!   queue, builds their frames from the requests' pages (packing several into one send while
//!   they fit), seals them when the session is secure, and sends.

use core::sync::atomic::Ordering;

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::appliance::{Addr, Appliance, State};
use crate::client::Client;
use crate::conn::{Conn, SendBufs};
use crate::io::Answer;
use crate::logic::wire_id::WireId;
use crate::net::TcpStream;
use crate::protocol::{
    Header, NewPool, PoolKind, Reply, Request, Status, BATCH_ENTRY_HEADER_LEN, HEADER_LEN, KEY_LEN,
    MAX_BATCH, MAX_ERROR_MESSAGE, MAX_PAGE_DATA, PAGE_HEADER_LEN, PAGE_SIZE,
};
use crate::sendq::SendItem;
use crate::stats::{self, STATS};
use crate::thread;
use crate::transport::{self, eproto, FrameReader};

/// Request id of control operations.
const CONTROL_ID: u64 = u64::MAX;
/// Object id no page uses: FLUSH_OBJECT on it checks that our pool exists (0 pages flushed).
const PROBE_OBJECT: [u64; 3] = [u64::MAX; 3];

/// Largest frame (request) an item can become.
pub(crate) fn frame_bound(item: &SendItem) -> usize {
    let per_page = BATCH_ENTRY_HEADER_LEN + KEY_LEN + PAGE_HEADER_LEN + MAX_PAGE_DATA;
    match item {
        SendItem::Run(id) => HEADER_LEN + 4 + usize::from(id.count) * per_page,
        SendItem::Repair { .. } => HEADER_LEN + 4 + MAX_BATCH * per_page,
        SendItem::Keepalive(_) | SendItem::DestroyPool(_) => HEADER_LEN + 8,
    }
}

/// Largest reply payload a reply with this id may have (checked before it is read).
fn reply_limit(h: &Header) -> usize {
    let answer = PAGE_HEADER_LEN + MAX_PAGE_DATA.max(MAX_ERROR_MESSAGE);
    let batch = |n: usize| 4 + n * (BATCH_ENTRY_HEADER_LEN + answer);
    match WireId::from_wire(h.request_id) {
        Some(WireId::Run(id)) if id.count == 1 => answer,
        Some(WireId::Run(id)) => batch(usize::from(id.count)),
        Some(WireId::Repair(_)) => batch(MAX_BATCH),
        Some(WireId::Keepalive(_)) => 4 + 1024 * 8,
        Some(WireId::Control) => 64 + MAX_ERROR_MESSAGE,
        None => 0,
    }
}

impl Client {
    /// Body of a connection's receive thread.
    pub(crate) fn conn_main(&self, conn: &Conn) {
        let Some(app) = self.apps.get(conn.app) else {
            return;
        };
        let (Ok(mut reader), Ok(mut page)) = (
            FrameReader::new(),
            KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL),
        ) else {
            pr_err!("no memory for connection {}.{}\n", conn.app, conn.idx);
            return;
        };
        let mut backoff_ms = 100u32;
        let mut connected_before = false;
        let mut failures = 0u32;
        while !self.stopping() {
            if app.state() == State::Retired {
                thread::sleep_ms(200);
                continue;
            }
            let stream = match self.connect(app, conn, &mut reader) {
                Ok(s) => s,
                Err(e) => {
                    stats::inc(&STATS.connect_failures);
                    failures += 1;
                    if failures == 1 || failures % 20 == 0 {
                        pr_warn!(
                            "cannot connect to {} (error {}); retrying\n",
                            Addr(app.addr()),
                            e.to_errno()
                        );
                    }
                    let until = thread::now_ms() + u64::from(backoff_ms);
                    while !self.stopping() && thread::now_ms() < until {
                        thread::sleep_ms(50);
                    }
                    backoff_ms = (backoff_ms * 2).min(5000);
                    continue;
                }
            };
            backoff_ms = 100;
            failures = 0;
            conn.publish(stream.clone());
            if connected_before {
                stats::inc(&STATS.reconnects);
            }
            connected_before = true;
            if app.mark_up() {
                pr_info!("appliance {} is up\n", Addr(app.addr()));
                self.repair_done.notify_all();
            }
            let err = self.receive_loop(conn, &stream, &mut reader, &mut page);
            self.conn_down(app, conn, &stream);
            if !self.stopping() {
                pr_warn!(
                    "{} connection {} lost (error {}); reconnecting\n",
                    Addr(app.addr()),
                    conn.idx,
                    err.to_errno()
                );
            }
        }
    }

    /// TCP, HELLO, and our pool on the appliance (created, or checked and re-created if lost).
    fn connect(
        &self,
        app: &Appliance,
        conn: &Conn,
        reader: &mut FrameReader,
    ) -> Result<Arc<TcpStream>> {
        let stream =
            TcpStream::connect(app.addr(), self.cfg.io_timeout_ms, self.cfg.io_timeout_ms)?;
        let mut guard = conn.send.lock();
        let SendBufs { frames, sealer, .. } = &mut *guard;
        let greeting = transport::hello(
            &stream,
            self.cfg.client_id,
            self.key.as_ref(),
            reader,
            sealer,
            frames,
        )?;
        if usize::from(greeting.max_batch) < MAX_BATCH {
            pr_err!(
                "{} takes batches of {} pages; kclient needs {}\n",
                Addr(app.addr()),
                greeting.max_batch,
                MAX_BATCH
            );
            return Err(eproto());
        }
        let mut control = |req: &Request<'_>| -> Result<(Status, u32)> {
            let n = req.emit(CONTROL_ID, 0, frames).map_err(|_| EINVAL)?;
            sealer.send(&stream, frames.get(..n).ok_or(EINVAL)?)?;
            let (h, body) = reader.next(&stream, reply_limit)?;
            if h.request_id != CONTROL_ID || h.opcode != req.opcode() as u8 {
                stats::inc(&STATS.protocol_errors);
                return Err(eproto());
            }
            match Reply::parse(h.opcode, h.status, body) {
                Ok(Reply::NewPool { pool }) => Ok((Status::Ok, pool)),
                Ok(Reply::Flushed { .. }) => Ok((Status::Ok, 0)),
                Ok(Reply::Error { status, .. }) => Ok((status, 0)),
                _ => Err(eproto()),
            }
        };
        let mut pool = app.pool.lock();
        let mut lost = false;
        if let Some(id) = pool.id {
            let probe = Request::FlushObject(crate::protocol::FlushObject {
                pool: id,
                object: PROBE_OBJECT,
            });
            match control(&probe)? {
                (Status::Ok, _) => {}
                (Status::UnknownPool, _) => lost = true,
                (st, _) => {
                    pr_warn!("pool check on {} failed: {}\n", Addr(app.addr()), st.name());
                    return Err(eproto());
                }
            }
        }
        if pool.id.is_none() || lost {
            let req = Request::NewPool(NewPool {
                // The cache device's copies may be evicted any time: the backing device has all.
                kind: if self.cache.is_some() {
                    PoolKind::Ephemeral
                } else {
                    PoolKind::Persistent
                },
                page_size: PAGE_SIZE as u32,
            });
            let id = match control(&req)? {
                (Status::Ok, id) => id,
                (st, _) => {
                    pr_err!("NEW_POOL refused by {}: {}\n", Addr(app.addr()), st.name());
                    return Err(ENOSPC);
                }
            };
            if lost && self.cache.is_some() {
                app.pools_lost.fetch_add(1, Ordering::Relaxed);
                pr_warn!(
                    "appliance {} lost our cache pool (restarted?): new pool {}; its blocks are \
                     read from the backing device until cached again\n",
                    Addr(app.addr()),
                    id
                );
            } else if lost {
                app.pools_lost.fetch_add(1, Ordering::Relaxed);
                let (pages, unreadable) = self.appliance_lost_everything(app.idx);
                pr_warn!(
                    "appliance {} lost our pool (restarted?): new pool {}; {} pages it held are \
                     stale ({} with no other copy: lost)\n",
                    Addr(app.addr()),
                    id,
                    pages,
                    unreadable
                );
                app.full.store(false, Ordering::Release);
            } else {
                pr_info!("pool {} on {}\n", id, Addr(app.addr()));
            }
            pool.id = Some(id);
        }
        app.pool_id.store(pool.id.unwrap_or(0), Ordering::Release);
        drop(pool);
        drop(guard);
        // GFP_ATOMIC: a few bytes, taken when memory is short (a reconnect), never via reclaim.
        Ok(Arc::new(stream, GFP_ATOMIC)?)
    }

    /// Tears a failed connection down: nothing new is queued, what was queued is handed back,
    /// a send in progress finishes, and everything still owed on it is resolved as failed.
    fn conn_down(&self, app: &Appliance, conn: &Conn, stream: &TcpStream) {
        let _ = conn.unpublish();
        stream.shutdown();
        conn.queue.close(|item| self.drop_item(item));
        let guard = conn.send.lock();
        self.resolve_conn(conn);
        drop(guard);
        if app.conns_up() == 0 && app.mark_down() {
            app.down_since_ms.store(thread::now_ms(), Ordering::Release);
            if self.stopping() {
                return;
            }
            app.downs.fetch_add(1, Ordering::Relaxed);
            stats::inc(&STATS.appliance_downs);
            if self.cache.is_some() {
                pr_warn!(
                    "appliance {} is down: reads go to the backing device\n",
                    Addr(app.addr())
                );
            } else {
                pr_warn!(
                    "appliance {} is down: I/O continues on the other replicas; writes it misses \
                     are repaired when it is back\n",
                    Addr(app.addr())
                );
            }
        }
    }

    fn receive_loop(
        &self,
        conn: &Conn,
        stream: &TcpStream,
        reader: &mut FrameReader,
        page: &mut [u8],
    ) -> Error {
        let Ok(page) = <&mut [u8; PAGE_SIZE]>::try_from(page) else {
            return EINVAL;
        };
        loop {
            if self.stopping() {
                return transport::errno(kernel::bindings::ESHUTDOWN);
            }
            thread::yield_now();
            let (h, body) = match reader.next(stream, reply_limit) {
                Ok(f) => f,
                Err(e) if e == EAGAIN => continue,
                Err(e) => return e,
            };
            conn.answered();
            let handled = match WireId::from_wire(h.request_id) {
                Some(WireId::Run(id)) => self.on_run_reply(conn, id, &h, body, page),
                Some(WireId::Repair(id)) => self.on_repair_reply(conn, id, &h, body, page),
                Some(WireId::Keepalive(_)) => {
                    // Alive, but not progress on owed work: an appliance answering keepalives
                    // and nothing else is still stalled.
                    conn.keepalive_since_ms.store(0, Ordering::Release);
                    Ok(())
                }
                Some(WireId::Control) => {
                    conn.control_status
                        .store(u32::from(h.status), Ordering::Release);
                    Ok(())
                }
                None => Err(eproto()),
            };
            if let Err(e) = handled {
                // The appliance does not follow the protocol: drop the connection (what it owes
                // is then resolved as failed, so other replicas answer).
                stats::inc(&STATS.protocol_errors);
                return e;
            }
        }
    }

    /// Body of a connection's sender thread.
    pub(crate) fn sender_main(&self, conn: &Conn) {
        while !self.stopping() {
            thread::yield_now();
            let Some(item) = conn.queue.pop_wait(200) else {
                continue;
            };
            let mut guard = conn.send.lock();
            let stream = match conn.stream() {
                Some(s) if conn.is_up() => s,
                _ => {
                    drop(guard);
                    self.drop_item(item);
                    continue;
                }
            };
            let bufs = &mut *guard;
            let cap = bufs.frames.len();
            let (mut len, mut frames, mut work) = (0usize, 0u32, 0u32);
            let mut next = Some(item);
            while let Some(item) = next.take() {
                match self.build(conn, bufs, item, len) {
                    Ok(Some(n)) => {
                        len += n;
                        frames += 1;
                        work +=
                            u32::from(matches!(item, SendItem::Run(_) | SendItem::Repair { .. }));
                    }
                    Ok(None) => {}
                    Err(_) => self.drop_item(item),
                }
                next = conn.queue.pop_if(|it| len + frame_bound(it) <= cap);
            }
            if len == 0 {
                continue;
            }
            let SendBufs {
                frames: buf,
                sealer,
                ..
            } = bufs;
            match sealer.send(&stream, &buf[..len]) {
                Ok(()) => conn.sent(frames, work),
                Err(e) => {
                    if STATS.send_errors.fetch_add(1, Ordering::Relaxed) < 10 {
                        pr_warn!(
                            "send on connection {}.{} failed (error {})\n",
                            conn.app,
                            conn.idx,
                            e.to_errno()
                        );
                    }
                    // The receive thread notices, and resolves what this send carried.
                    stream.shutdown();
                }
            }
        }
    }

    /// Builds `item`'s frame at `bufs.frames[at..]`; its length, or `None` if there is nothing
    /// to send any more (the request finished, the unit was resolved).
    fn build(
        &self,
        conn: &Conn,
        bufs: &mut SendBufs,
        item: SendItem,
        at: usize,
    ) -> Result<Option<usize>> {
        match item {
            SendItem::Run(id) => self.build_run(conn, bufs, id, at),
            SendItem::Repair { slot, put, seq } => self.build_repair(bufs, slot, put, seq, at),
            SendItem::Keepalive(seq) => {
                let n = Request::Stats
                    .emit(WireId::Keepalive(seq).to_wire(), 0, &mut bufs.frames[at..])
                    .map_err(|_| EINVAL)?;
                Ok(Some(n))
            }
            SendItem::DestroyPool(pool) => {
                let n = Request::DestroyPool { pool }
                    .emit(CONTROL_ID, 0, &mut bufs.frames[at..])
                    .map_err(|_| EINVAL)?;
                Ok(Some(n))
            }
        }
    }

    /// An item that will never be sent: what it stood for fails (and goes elsewhere if it can).
    pub(crate) fn drop_item(&self, item: SendItem) {
        match item {
            SendItem::Run(id) => {
                let Some(rq) = self
                    .set
                    .acquire(u32::from(id.hctx), u32::from(id.tag), id.gen)
                else {
                    return;
                };
                for part in u32::from(id.first)..u32::from(id.first) + u32::from(id.count) {
                    if rq.state().awaiting(part) & (1 << id.slot) != 0 {
                        self.answer(&rq, part, id.slot, Answer::ConnLost, None);
                    }
                }
            }
            SendItem::Repair { seq, .. } => self.repair_failed(seq),
            SendItem::Keepalive(_) | SendItem::DestroyPool(_) => {}
        }
    }
}
