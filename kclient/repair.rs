//! Repair: brings every extent back to full redundancy in the background.
//!
//! A replica's copy of a page is stale when it missed a write (down), failed one, lost its pool
//! (restarted empty), or was newly assigned (an appliance replaced in `remote_target`). The
//! repair thread scans for stale pages on appliances that are up and copies them, a stripe
//! (64 pages) at a time, from a replica that has them: one BATCH of GETs from the source, one
//! BATCH of PUTs of the same bytes to the target (pages are checked on the way: CRC, or the
//! page key's AEAD for sealed pages), rate-limited by `repair_pages_per_s`.
//!
//! Repair batches queue behind foreground writes like any write (one batch in flight at a time,
//! so repair takes a small share of a busy link; ahead of writes it starved them into timeouts).
//! There are two repair slots: the repair thread uses the first (a GET and the PUT of the same
//! bytes), a cache device's fill thread (`cache.rs`) both in turn, so two fill batches can be in
//! flight.
//!
//! **Ordering against writes.** Repair copies a stripe only when no write is inside it, and
//! marks the copied pages current only if no write entered it during the copy (otherwise they
//! stay stale and are copied again later). So a copy can never carry older contents than a write
//! of the same page and count as current; writes never wait for repair's network round trips
//! (`logic/stripe_gate.rs`, loom-tested).

use core::sync::atomic::Ordering;

use kernel::prelude::*;
use kernel::time::msecs_to_jiffies;

use crate::appliance::{Addr, State};
use crate::client::Client;
use crate::conn::SendBufs;
use crate::logic::placement::{EXTENT_PAGES, NO_APPLIANCE};
use crate::logic::request::MAX_REPLICAS;
use crate::logic::stripe_gate::{stripe_of, STRIPE_PAGES};
use crate::logic::wire_id::{RepairId, WireId};
use crate::protocol::{
    self, BatchWriter, Encoding, Header, Page, PageKey, Reply, Request, MAX_BATCH, MAX_PAGE_DATA,
    PAGE_SIZE,
};
use crate::sendq::SendItem;
use crate::stats::{self, STATS};
use crate::thread;

/// Bytes kept per page in the repair buffer: encoding, CRC, length, data.
const STRIDE: usize = 8 + MAX_PAGE_DATA;

/// Repair operations that can be in flight at once.
pub(crate) const REPAIR_SLOTS: usize = 2;

/// The repair slots; an operation's sequence number says which slot it is in (its low bit).
pub(crate) struct RepairSlots {
    /// Operations started, for the sequence numbers.
    started: u32,
    ops: [RepairSlot; REPAIR_SLOTS],
}

impl RepairSlots {
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            started: 0,
            ops: [RepairSlot::new()?, RepairSlot::new()?],
        })
    }

    /// Slot `i` (its pages are set before an operation in it starts).
    pub(crate) fn slot_mut(&mut self, i: usize) -> Option<&mut RepairSlot> {
        self.ops.get_mut(i)
    }

    /// The slot of operation `seq`, if that operation is still the slot's.
    fn op(&mut self, seq: u32) -> Option<&mut RepairSlot> {
        self.ops
            .get_mut(seq as usize % REPAIR_SLOTS)
            .filter(|r| r.seq == seq)
    }
}

/// One repair operation (a GET or PUT batch) and the pages it moves.
pub(crate) struct RepairSlot {
    seq: u32,
    app: usize,
    slot: u8,
    put: bool,
    base: u64,
    mask: u64,
    done: bool,
    ok: u64,
    pages: VVec<u8>,
    /// The cache device's fills: each page's generation (its key's object id); else zeros.
    gens: [u32; MAX_BATCH],
}

impl RepairSlot {
    fn new() -> Result<Self> {
        Ok(Self {
            seq: 0,
            app: 0,
            slot: 0,
            put: false,
            base: 0,
            mask: 0,
            done: true,
            ok: 0,
            pages: VVec::from_elem(0u8, MAX_BATCH * STRIDE, GFP_KERNEL)?,
            gens: [0; MAX_BATCH],
        })
    }

    /// Page `i` of the next put batch: `data` raw (the appliance compresses it), stored under
    /// generation `gen` (the cache device's fills).
    pub(crate) fn set_raw_page(&mut self, i: usize, data: &[u8], gen: u32) {
        let (Some(rec), Some(g)) = (
            self.pages.get_mut(i * STRIDE..(i + 1) * STRIDE),
            self.gens.get_mut(i),
        ) else {
            return;
        };
        let Some(dst) = rec.get_mut(8..8 + data.len()) else {
            return;
        };
        dst.copy_from_slice(data);
        rec[0] = Encoding::Raw as u8;
        rec[1] = 0;
        rec[2..4].copy_from_slice(&(data.len() as u16).to_le_bytes());
        rec[4..8].copy_from_slice(&crate::protocol::crc32c(data).to_le_bytes());
        *g = gen;
    }
}

impl Client {
    /// Body of the repair thread.
    pub(crate) fn repair_main(&self) {
        let mut window_start = thread::now_ms();
        let mut window_pages = 0u64;
        while !self.stopping() {
            thread::sleep_ms(200);
            for app in self.apps.iter() {
                // A full appliance refuses the copies: its stale pages stay stale (reads go to
                // the other replicas) until its pool is renewed or it takes puts again.
                if !app.is_up() || app.is_full() || self.stopping() {
                    continue;
                }
                let mut pending = false;
                for e in 0..self.cfg.pages.div_ceil(EXTENT_PAGES) as usize {
                    let set = self.replica_set(e, false);
                    for slot in 0..MAX_REPLICAS as u8 {
                        if usize::from(set[usize::from(slot)]) != app.idx {
                            continue;
                        }
                        let start = e as u64 * EXTENT_PAGES;
                        let end = (start + EXTENT_PAGES).min(self.cfg.pages);
                        let mut from = start;
                        while let Some(p) = self.map().next_stale(slot, from, end) {
                            from = (stripe_of(p) as u64 + 1) * STRIPE_PAGES;
                            if !self.has_source(&set, slot, p) {
                                continue;
                            }
                            pending = true;
                            if app.state() == State::Up {
                                app.set_state(State::Repairing);
                                pr_info!("repairing appliance {}\n", Addr(app.addr()));
                            }
                            window_pages += u64::from(self.repair_stripe(&set, slot, p));
                            // Rate limit: at most repair_pages_per_s per second.
                            let budget = u64::from(self.cfg.repair_pages_per_s);
                            let elapsed = thread::now_ms().saturating_sub(window_start);
                            if elapsed >= 1000 {
                                window_start = thread::now_ms();
                                window_pages = 0;
                            } else if window_pages >= budget {
                                thread::sleep_ms((1000 - elapsed) as u32);
                                window_start = thread::now_ms();
                                window_pages = 0;
                            }
                            if self.stopping() || !app.is_up() {
                                break;
                            }
                        }
                    }
                }
                if !pending && app.state() == State::Repairing {
                    app.set_state(State::Up);
                    pr_info!("appliance {}: redundancy restored\n", Addr(app.addr()));
                }
            }
        }
    }

    /// Whether some other replica of `page` holds a current copy on an appliance that is up.
    fn has_source(&self, set: &[u8; MAX_REPLICAS], target: u8, page: u64) -> bool {
        self.source_for(set, target, page).is_some()
    }

    fn source_for(&self, set: &[u8; MAX_REPLICAS], target: u8, page: u64) -> Option<u8> {
        (0..self.cfg.replicas).find(|&s| {
            s != target
                && set[usize::from(s)] != NO_APPLIANCE
                && !self.map().is_stale(s, page)
                && self
                    .apps
                    .get(usize::from(set[usize::from(s)]))
                    .is_some_and(|a| a.is_up())
        })
    }

    /// Copies the stale pages of `page`'s stripe to replica `slot`; returns how many it copied.
    /// A stripe with a write inside is left for a later pass; so is one written during the copy
    /// (`logic/stripe_gate.rs` says why).
    fn repair_stripe(&self, set: &[u8; MAX_REPLICAS], slot: u8, page: u64) -> u32 {
        let stripe = stripe_of(page);
        let Some(gate) = self.gates.get(stripe) else {
            return 0;
        };
        let Some(ticket) = gate.begin_copy() else {
            return 0;
        };
        let base = stripe as u64 * STRIPE_PAGES;
        let end = (base + STRIPE_PAGES).min(self.cfg.pages);
        // Group the stale pages by the replica they are copied from.
        let mut by_source = [0u64; MAX_REPLICAS];
        for p in base..end {
            if self.map().is_stored(p) && self.map().is_stale(slot, p) {
                if let Some(src) = self.source_for(set, slot, p) {
                    by_source[usize::from(src)] |= 1 << (p - base);
                }
            }
        }
        let mut copied = 0;
        for (src, &mask) in by_source.iter().enumerate() {
            if mask == 0 {
                continue;
            }
            let got = self.repair_op(set, src as u8, false, base, mask);
            if got == 0 {
                continue;
            }
            let put = self.repair_op(set, slot, true, base, got);
            if put == 0 {
                continue;
            }
            if !gate.commit(ticket) {
                // A write entered the stripe meanwhile: the copy may be older than it on the
                // target. The pages stay stale; the next pass copies them again.
                stats::inc(&STATS.repair_retries);
                return copied;
            }
            for i in 0..64 {
                if put & (1 << i) != 0 {
                    self.map().set_stale(slot, base + i, false);
                    copied += 1;
                }
            }
            gate.open();
            if let Some(t) = self.apps.get(usize::from(set[usize::from(slot)])) {
                t.pages_repaired
                    .fetch_add(u64::from(put.count_ones()), Ordering::Relaxed);
            }
            stats::add(&STATS.pages_repaired, u64::from(put.count_ones()));
        }
        copied
    }

    /// Runs one repair batch (GET from or PUT to replica `slot`) in repair slot 0 and waits
    /// (bounded) for its answer; returns the pages it moved.
    pub(crate) fn repair_op(
        &self,
        set: &[u8; MAX_REPLICAS],
        slot: u8,
        put: bool,
        base: u64,
        mask: u64,
    ) -> u64 {
        let seq = self.repair_start(0, set, slot, put, base, mask);
        self.repair_wait(seq)
    }

    /// Starts a repair batch (GET from or PUT to replica `slot`) in repair slot `op` (its pages
    /// set already for a PUT); returns its sequence number, or `None` if it could not be sent.
    /// An operation still in that slot is abandoned (its late answer is dropped).
    pub(crate) fn repair_start(
        &self,
        op: usize,
        set: &[u8; MAX_REPLICAS],
        slot: u8,
        put: bool,
        base: u64,
        mask: u64,
    ) -> Option<u32> {
        let app_idx = usize::from(set[usize::from(slot)]);
        let app = self.apps.get(app_idx)?;
        let seq = {
            let mut slots = self.repair.lock();
            slots.started = slots.started.wrapping_add(1);
            // The low bit says the slot; 27 bits go on the wire.
            let seq = ((slots.started << 1) | op as u32) & 0x07ff_ffff;
            let r = slots.ops.get_mut(op)?;
            r.seq = seq;
            r.app = app_idx;
            r.slot = slot;
            r.put = put;
            r.base = base;
            r.mask = mask;
            r.done = false;
            r.ok = 0;
            seq
        };
        let sent = app.route(base).is_some_and(|conn| {
            conn.is_up() && conn.queue.push(SendItem::Repair { slot, put, seq }).is_ok()
        });
        if !sent {
            self.repair_failed(seq);
            return None;
        }
        Some(seq)
    }

    /// Waits (bounded by `io_timeout_ms`) for the answer to repair operation `seq`; returns the
    /// pages it moved (0 if it was not sent).
    pub(crate) fn repair_wait(&self, seq: Option<u32>) -> u64 {
        let Some(seq) = seq else {
            return 0;
        };
        let deadline = thread::now_ms() + u64::from(self.cfg.io_timeout_ms);
        let mut slots = self.repair.lock();
        while slots.op(seq).is_some_and(|r| !r.done)
            && thread::now_ms() < deadline
            && !self.stopping()
        {
            let _ = self
                .repair_done
                .wait_interruptible_timeout(&mut slots, msecs_to_jiffies(100));
        }
        let Some(r) = slots.op(seq) else {
            return 0;
        };
        let ok = if r.done { r.ok } else { 0 };
        // Late answers to this operation are dropped from now on.
        r.done = true;
        ok
    }

    /// The repair operation `seq` will not be answered (its item was never sent).
    pub(crate) fn repair_failed(&self, seq: u32) {
        let mut slots = self.repair.lock();
        if let Some(r) = slots.op(seq) {
            r.done = true;
            r.ok = 0;
        }
        drop(slots);
        self.repair_done.notify_all();
    }

    /// Builds a repair batch at `bufs.frames[at..]`.
    pub(crate) fn build_repair(
        &self,
        bufs: &mut SendBufs,
        slot: u8,
        put: bool,
        seq: u32,
        at: usize,
    ) -> Result<Option<usize>> {
        let mut slots = self.repair.lock();
        let Some(r) = slots.op(seq) else {
            return Ok(None);
        };
        if r.done || r.slot != slot || r.put != put {
            return Ok(None);
        }
        let pool = self
            .apps
            .get(r.app)
            .map_or(0, |a| a.pool_id.load(Ordering::Acquire));
        let out = bufs.frames.get_mut(at..).ok_or(EINVAL)?;
        let mut batch = BatchWriter::new(out).map_err(|_| EINVAL)?;
        for i in 0..64u64 {
            if r.mask & (1 << i) == 0 {
                continue;
            }
            let key = PageKey {
                pool,
                object: self.page_object(r.gens[i as usize]),
                index: (r.base + i) as u32,
            };
            let req = if put {
                let rec = &r.pages[i as usize * STRIDE..(i as usize + 1) * STRIDE];
                let len = usize::from(u16::from_le_bytes([rec[2], rec[3]]));
                let encoding = match rec[0] {
                    0 => Encoding::Raw,
                    1 => Encoding::Lz4,
                    2 => Encoding::Fill,
                    _ => Encoding::Sealed,
                };
                Request::Put {
                    key,
                    page: Page {
                        encoding,
                        crc: u32::from_le_bytes([rec[4], rec[5], rec[6], rec[7]]),
                        data: rec.get(8..8 + len).ok_or(EINVAL)?,
                    },
                }
            } else {
                Request::Get { key }
            };
            batch.push_request(&req, 0).map_err(|_| EINVAL)?;
        }
        let wire = WireId::Repair(RepairId {
            slot,
            put,
            seq,
            page: r.base as u32,
        })
        .to_wire();
        Ok(Some(batch.finish_request(wire, 0).map_err(|_| EINVAL)?))
    }

    /// A reply to a repair batch. Pages that came back are checked before they are kept.
    pub(crate) fn on_repair_reply(
        &self,
        conn: &crate::conn::Conn,
        id: RepairId,
        h: &Header,
        body: &[u8],
        page: &mut [u8; PAGE_SIZE],
    ) -> Result {
        let mut slots = self.repair.lock();
        let Some(r) = slots
            .op(id.seq)
            .filter(|r| !r.done && r.slot == id.slot && r.put == id.put && r.app == conn.app)
        else {
            stats::inc(&STATS.stale_replies);
            return Ok(());
        };
        let entries = match Reply::parse(h.opcode, h.status, body) {
            Ok(Reply::Batch(e))
                if h.opcode == protocol::Opcode::Batch as u8
                    && e.len() == r.mask.count_ones() as usize =>
            {
                e
            }
            Ok(Reply::Error { .. }) if h.opcode == protocol::Opcode::Batch as u8 => {
                r.done = true;
                drop(slots);
                self.repair_done.notify_all();
                return Ok(());
            }
            _ => return Err(crate::transport::eproto()),
        };
        conn.progressed();
        let bits: [u64; 64] = core::array::from_fn(|i| i as u64);
        let mut ok = 0u64;
        let (base, mask) = (r.base, r.mask);
        for (i, entry) in bits.iter().filter(|&&i| mask & (1 << i) != 0).zip(entries) {
            let want = if id.put {
                protocol::Opcode::PutPage
            } else {
                protocol::Opcode::GetPage
            };
            if entry.opcode != want as u8 {
                return Err(crate::transport::eproto());
            }
            match entry.reply() {
                Ok(Reply::Done) if id.put => ok |= 1 << i,
                Ok(Reply::Page(p)) if !id.put => {
                    if self.decode_page(&p, base + i, page).is_ok() && p.data.len() <= MAX_PAGE_DATA
                    {
                        let rec = &mut r.pages[*i as usize * STRIDE..(*i as usize + 1) * STRIDE];
                        rec[0] = p.encoding as u8;
                        rec[1] = 0;
                        rec[2..4].copy_from_slice(&(p.data.len() as u16).to_le_bytes());
                        rec[4..8].copy_from_slice(&p.crc.to_le_bytes());
                        rec[8..8 + p.data.len()].copy_from_slice(p.data);
                        ok |= 1 << i;
                    }
                }
                Ok(_) => {}
                Err(_) => return Err(crate::transport::eproto()),
            }
        }
        r.ok = ok;
        r.done = true;
        drop(slots);
        self.repair_done.notify_all();
        Ok(())
    }
}
