//! Block requests as page operations on replicas: submission (cutting requests into runs of
//! pages, one frame per run and replica), building those frames, and applying every answer
//! (a reply, or a failure: an error status, a bad page, a lost connection).
//!
//! - **Write**: a run goes to every replica of its extent that is up; each part (page) completes
//!   when every replica it was sent to answered and at least one stored it. A replica that missed
//!   the write (down) or failed it has its copy marked stale: it is never read from until repair
//!   copies the page back. No replica stored it: the page goes to the spill device if the cluster
//!   is full and one is configured, else the request fails.
//! - **Read**: a page goes to one replica (not stale; the one answering faster); any failure
//!   (error status, NOT_FOUND, CRC, a bad page, a lost connection) retries it on another. None
//!   left: the page is lost (`lost_pages`) and the request fails with an I/O error.
//! - **Discard**: goes to every replica that is up; pages never stored are answered at once.
//!
//! A write is inside the stripe gates of its pages until it completes, so repair never counts a
//! copy made while a write of the stripe was in flight (`logic/stripe_gate.rs`).

use core::sync::atomic::Ordering;

use kernel::prelude::*;

use crate::appliance::Appliance;
use crate::blk::{self, Driver, Inflight, Op};
use crate::client::Client;
use crate::conn::{Conn, SendBufs};
use crate::crypto;
use crate::logic::placement::{extent_of, NO_APPLIANCE};
use crate::logic::request::{PartOutcome, MAX_REPLICAS};
use crate::logic::stripe_gate::{stripe_of, STRIPE_PAGES};
use crate::logic::wire_id::{RunId, WireId};
use crate::lz4;
use crate::protocol::{
    self, crc32c, BatchWriter, Encoding, Header, Page, PageKey, Reply, Request, Status, MAX_BATCH,
    PAGE_SIZE, SEAL_TAG_LEN,
};
use crate::sendq::SendItem;
use crate::spill::{SpillJob, SpillKind};
use crate::stats::{self, STATS};
use crate::thread;

/// Object id of our pages: one swap device per pool.
const OBJECT: [u64; 3] = [0, 0, 0];
/// Request flag: the request entered the stripe gates of its pages (leave them on completion).
const GATED: u32 = 1;
/// Largest LZ4 page worth sending compressed (the appliance keeps bigger ones raw anyway).
const LZ4_LIMIT: usize = PAGE_SIZE - PAGE_SIZE / 8;

/// How one replica answered one part.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Answer {
    Ok,
    /// Refused for lack of room (NO_SPACE, QUOTA_EXCEEDED).
    NoSpace,
    /// NOT_FOUND (a read of a page the replica should have).
    NotFound,
    /// Any other error status, or a page that failed its checks.
    Failed,
    /// The connection it was sent on is gone.
    ConnLost,
}

impl Answer {
    fn of(status: Status) -> Answer {
        match status {
            Status::Ok => Answer::Ok,
            Status::NoSpace | Status::QuotaExceeded => Answer::NoSpace,
            Status::NotFound => Answer::NotFound,
            _ => Answer::Failed,
        }
    }
}

impl Driver for Client {
    fn queue_rq(&self, _hctx: u32, rq: Inflight<'_>) {
        if let Err(status) = self.submit(&rq) {
            stats::inc(&STATS.failed_requests);
            match rq.op() {
                Op::Write => stats::inc(&STATS.failed_puts),
                Op::Read => stats::inc(&STATS.failed_gets),
                _ => stats::inc(&STATS.failed_flushes),
            }
            rq.fail(status);
        }
    }

    fn completed(&self, _op: Op, sector: u64, bytes: u32, flags: u32) {
        if flags & GATED != 0 {
            let first = sector / 8;
            let last = first + u64::from(bytes / PAGE_SIZE as u32).max(1) - 1;
            for stripe in stripe_of(first)..=stripe_of(last) {
                if let Some(g) = self.gates.get(stripe) {
                    g.leave_write();
                }
            }
        }
    }
}

impl Client {
    pub(crate) fn app(&self, idx: u8) -> Option<&Appliance> {
        self.apps.get(usize::from(idx)).map(|a| &**a)
    }

    fn submit(&self, rq: &Inflight<'_>) -> core::result::Result<(), blk::Status> {
        let op = rq.op();
        match op {
            Op::Read | Op::Write | Op::Discard => {}
            Op::Flush if self.cache.is_some() => {
                // The backing device may have a write cache: flush it (the spill thread does).
                rq.state().set_parts(1);
                let page = rq.sector() / 8;
                return if self.queue_spill_job(rq, 0, SpillKind::Flush, page, 0) {
                    Ok(())
                } else {
                    Err(blk::Status::IoErr)
                };
            }
            Op::Flush => {
                rq.succeed();
                return Ok(());
            }
            Op::Other(_) => return Err(blk::Status::NotSupported),
        }
        let (sector, bytes) = (rq.sector(), u64::from(rq.bytes()));
        if sector % 8 != 0 || bytes % PAGE_SIZE as u64 != 0 {
            return Err(blk::Status::IoErr);
        }
        let (first, pages) = (sector / 8, bytes / PAGE_SIZE as u64);
        if first + pages > self.cfg.pages || pages > u64::from(blk::MAX_PARTS) {
            return Err(blk::Status::IoErr);
        }
        if pages == 0 {
            rq.succeed();
            return Ok(());
        }
        rq.state().set_parts(pages as u32);
        if let Some(cache) = &self.cache {
            return self.submit_cached(rq, cache, op, first, pages);
        }
        if op != Op::Read {
            self.enter_gates(rq, first, pages)?;
        }
        // Runs: consecutive pages within one stripe (so within one extent, and at most a BATCH).
        let mut part = 0u32;
        while u64::from(part) < pages {
            let page = first + u64::from(part);
            let stripe_end = (page / STRIPE_PAGES + 1) * STRIPE_PAGES;
            let count = (stripe_end.min(first + pages) - page) as u32;
            match op {
                Op::Read => self.submit_read_run(rq, part, count),
                _ => self.submit_write_run(rq, op, part, count),
            }
            part += count;
        }
        Ok(())
    }

    /// Enters the stripe gates of a write (a gate is closed only for the moment repair marks
    /// copied pages current; bounded anyway).
    fn enter_gates(
        &self,
        rq: &Inflight<'_>,
        first: u64,
        pages: u64,
    ) -> core::result::Result<(), blk::Status> {
        let (a, b) = (stripe_of(first), stripe_of(first + pages - 1));
        let deadline = thread::now_ms() + u64::from(self.cfg.io_timeout_ms);
        for stripe in a..=b {
            let gate = self.gates.get(stripe).ok_or(blk::Status::IoErr)?;
            while !gate.enter_write() {
                if thread::now_ms() >= deadline {
                    for s in a..stripe {
                        if let Some(g) = self.gates.get(s) {
                            g.leave_write();
                        }
                    }
                    return Err(blk::Status::IoErr);
                }
                // Closed only while repair marks copied pages current (no I/O): spin.
                thread::yield_now();
            }
        }
        rq.set_driver_flags(GATED);
        Ok(())
    }

    /// A write or discard run: to every replica that is up.
    fn submit_write_run(&self, rq: &Inflight<'_>, op: Op, part: u32, count: u32) {
        let base = rq.sector() / 8;
        let page0 = base + u64::from(part);
        let map = self.map();
        if op == Op::Discard {
            for p in part..part + count {
                map.set_stored(base + u64::from(p), false);
                self.set_spilled(base + u64::from(p), false);
            }
        }
        let mut set = self.replica_set(extent_of(page0), op == Op::Write);
        if !self.any_up(&set) && self.wait_for_replicas(&set) {
            set = self.replica_set(extent_of(page0), op == Op::Write);
        }
        let mut mask = 0u8;
        for (slot, &a) in set.iter().enumerate().take(usize::from(self.cfg.replicas)) {
            match self.app(a) {
                Some(app) if app.is_up() && !(op == Op::Write && app.is_full()) => {
                    mask |= 1 << slot
                }
                Some(_) if op == Op::Write => {
                    // Missed while down or full: stale until repaired.
                    for p in part..part + count {
                        map.set_stale(slot as u8, base + u64::from(p), true);
                    }
                }
                _ => {}
            }
        }
        if mask == 0 {
            for p in part..part + count {
                if op == Op::Discard {
                    if rq.state().local_part(p) {
                        rq.page_done();
                    }
                } else if !self.queue_spill(rq, p, true) {
                    if !self.full_logged.swap(true, Ordering::AcqRel) {
                        pr_err!("no appliance can take this page (all down or full) and no spill device: writes fail\n");
                    }
                    stats::inc(&STATS.failed_puts);
                    stats::inc(&STATS.failed_requests);
                    rq.fail(blk::Status::IoErr);
                    return;
                }
            }
            return;
        }
        if op == Op::Write && !self.gens.is_empty() {
            for p in part..part + count {
                if let Some(g) = self.gens.get((base + u64::from(p)) as usize) {
                    g.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        for p in part..part + count {
            rq.state().await_all(p, mask);
        }
        for slot in 0..MAX_REPLICAS as u8 {
            if mask & (1 << slot) != 0 {
                self.send_run(rq, set[usize::from(slot)], slot, part, count);
            }
        }
    }

    /// A read run: each page to its best replica (consecutive pages with the same one share a
    /// frame); pages never stored are zeros, pages on the spill device are read from it.
    fn submit_read_run(&self, rq: &Inflight<'_>, part: u32, count: u32) {
        let base = rq.sector() / 8;
        let map = self.map();
        let set = self.replica_set(extent_of(base + u64::from(part)), false);
        if !self.any_up(&set) {
            self.wait_for_replicas(&set);
        }
        let mut p = part;
        while p < part + count {
            let page = base + u64::from(p);
            if !map.is_stored(page) || self.is_spilled(page) {
                if !self.read_locally(rq, p, page) {
                    return;
                }
                p += 1;
                continue;
            }
            let Some(slot) = self.pick_read_slot(&set, page, 0, false) else {
                self.page_lost(rq, p);
                return;
            };
            let mut n = 1;
            while p + n < part + count {
                let next = base + u64::from(p + n);
                if !map.is_stored(next)
                    || self.is_spilled(next)
                    || self.pick_read_slot(&set, next, 0, false) != Some(slot)
                {
                    break;
                }
                n += 1;
            }
            for q in p..p + n {
                rq.state().await_read(q, slot);
            }
            self.send_run(rq, set[usize::from(slot)], slot, p, n);
            p += n;
        }
    }

    /// Whether some appliance of `set` is up.
    fn any_up(&self, set: &[u8; MAX_REPLICAS]) -> bool {
        set.iter().any(|&a| self.app(a).is_some_and(|x| x.is_up()))
    }

    /// No replica of `set` (no appliance at all, for an extent not placed yet) is up: waits for
    /// one to come back, at most `io_timeout_ms` from when it went down (a reconnect after a blip
    /// is not an I/O error). True if one is up.
    fn wait_for_replicas(&self, set: &[u8; MAX_REPLICAS]) -> bool {
        let placed = set.iter().any(|&a| a != NO_APPLIANCE);
        let candidates = || {
            self.apps
                .iter()
                .filter(move |a| !placed || set.contains(&(a.idx as u8)))
                .filter(|a| a.state() != crate::appliance::State::Retired)
        };
        let deadline = candidates()
            .map(|a| a.down_since_ms.load(Ordering::Acquire) + u64::from(self.cfg.io_timeout_ms))
            .max()
            .unwrap_or(0);
        loop {
            if candidates().any(|a| a.is_up()) {
                return true;
            }
            if thread::now_ms() >= deadline || self.stopping() {
                return false;
            }
            thread::sleep_ms(20);
        }
    }

    /// Zeros for a page never stored, or the page from the spill device (by the spill thread).
    fn read_locally(&self, rq: &Inflight<'_>, part: u32, page: u64) -> bool {
        if self.is_spilled(page) {
            return self.queue_spill(rq, part, false) || self.fail_read(rq, part);
        }
        let mut buf = [0u8; 64];
        let ok = (0..PAGE_SIZE / buf.len()).all(|i| {
            buf.fill(0);
            rq.copy_in(part as usize * PAGE_SIZE + i * buf.len(), &buf)
        }) && {
            stats::inc(&STATS.pages_loaded_zero);
            true
        };
        if !ok || !rq.state().local_part(part) {
            return self.fail_read(rq, part);
        }
        rq.page_done();
        true
    }

    pub(crate) fn fail_read(&self, rq: &Inflight<'_>, part: u32) -> bool {
        rq.state().fail_part(part);
        if rq.state().in_flight() {
            stats::inc(&STATS.failed_requests);
        }
        stats::inc(&STATS.failed_gets);
        rq.fail(blk::Status::IoErr);
        false
    }

    /// A page no replica can give back.
    fn page_lost(&self, rq: &Inflight<'_>, part: u32) {
        stats::inc(&STATS.lost_pages);
        self.fail_read(rq, part);
    }

    /// The replica to read `page` from: its copy is current, its appliance up, not tried yet
    /// (`tried` mask), and among those the one answering faster. `now`: only one whose
    /// connection for this page is up (a retry from a receive thread must not wait for a
    /// reconnect, least of all its own).
    fn pick_read_slot(
        &self,
        set: &[u8; MAX_REPLICAS],
        page: u64,
        tried: u8,
        now: bool,
    ) -> Option<u8> {
        let map = self.map();
        let mut best: Option<(u8, u32)> = None;
        for (slot, &a) in set.iter().enumerate().take(usize::from(self.cfg.replicas)) {
            let slot = slot as u8;
            let Some(app) = self.app(a) else { continue };
            if tried & (1 << slot) != 0 || !app.is_up() || map.is_stale(slot, page) {
                continue;
            }
            if now && !app.route(page).is_some_and(|c| c.is_up()) {
                continue;
            }
            // Spread pages over equal replicas: ties broken by stripe.
            let lat = app.read_latency_us.load(Ordering::Relaxed);
            let better = match best {
                None => true,
                Some((b, bl)) => {
                    lat < bl * 3 / 4
                        || (lat <= bl * 5 / 4
                            && bl <= lat * 5 / 4
                            && (stripe_of(page) as u8 ^ slot) & 1 < (stripe_of(page) as u8 ^ b) & 1)
                }
            };
            if better {
                best = Some((slot, lat));
            }
        }
        best.map(|(s, _)| s)
    }

    /// Queues pages `part..part+count` of `rq` for replica `slot` (appliance `app`), on the
    /// connection their stripe routes to. If it cannot be queued, the parts fail on that replica.
    pub(crate) fn send_run(&self, rq: &Inflight<'_>, app: u8, slot: u8, part: u32, count: u32) {
        let page = rq.sector() / 8 + u64::from(part);
        let item = SendItem::Run(RunId {
            gen: rq.gen(),
            slot,
            hctx: rq.hctx() as u8,
            tag: rq.tag() as u16,
            first: part as u8,
            count: count as u16,
        });
        let queued = self
            .app(app)
            .and_then(|a| a.route(page).map(|c| (a, c)))
            .is_some_and(|(a, c)| {
                // Reads go ahead of queued writes: a page fault waits on them, writeback does not
                // (the block layer never reads a page while its write is in flight).
                self.wait_conn(a, c)
                    && if rq.op() == Op::Read {
                        c.queue.push_urgent(item).is_ok()
                    } else {
                        c.queue.push(item).is_ok()
                    }
            });
        if !queued {
            for p in part..part + count {
                if rq.state().awaiting(p) & (1 << slot) != 0 {
                    self.answer(rq, p, slot, Answer::ConnLost, None);
                }
            }
        }
    }

    /// Whether `conn` is up, waiting (bounded by `down_after_ms`) while it reconnects and its
    /// appliance has other connections up.
    fn wait_conn(&self, app: &Appliance, conn: &Conn) -> bool {
        let deadline = thread::now_ms() + u64::from(self.cfg.down_after_ms);
        loop {
            if conn.is_up() {
                return true;
            }
            if app.conns_up() == 0 || thread::now_ms() >= deadline || self.stopping() {
                return false;
            }
            thread::sleep_ms(5);
        }
    }

    /// Applies one replica's answer for one part of `rq`. `page` holds the decoded page for a
    /// successful read.
    pub(crate) fn answer(
        &self,
        rq: &Inflight<'_>,
        part: u32,
        slot: u8,
        answer: Answer,
        page: Option<&[u8; PAGE_SIZE]>,
    ) {
        let index = rq.sector() / 8 + u64::from(part);
        let set = self.replica_set(extent_of(index), false);
        let app = self.app(set[usize::from(slot) % MAX_REPLICAS]);
        match rq.op() {
            Op::Write => {
                let map = self.map();
                map.set_stale(slot, index, answer != Answer::Ok);
                if answer != Answer::Ok {
                    if let Some(a) = app {
                        a.write_failures.fetch_add(1, Ordering::Relaxed);
                        if answer == Answer::NoSpace {
                            a.set_full();
                        }
                    }
                    stats::inc(&STATS.replica_write_failures);
                }
                match rq.state().answer_write(part, slot, answer == Answer::Ok) {
                    PartOutcome::Done => {
                        map.set_stored(index, true);
                        self.set_spilled(index, false);
                        stats::inc(&STATS.pages_stored);
                        rq.page_done();
                    }
                    PartOutcome::Failed => {
                        if answer == Answer::ConnLost && self.resend_write(rq, part, &set) {
                            return;
                        }
                        if self.queue_spill(rq, part, true) {
                            return;
                        }
                        stats::inc(&STATS.failed_puts);
                        if rq.state().in_flight() {
                            stats::inc(&STATS.failed_requests);
                        }
                        if answer == Answer::NoSpace {
                            stats::inc(&STATS.puts_refused);
                            rq.fail(blk::Status::NoSpace);
                        } else {
                            rq.fail(blk::Status::IoErr);
                        }
                    }
                    PartOutcome::Unexpected => stats::inc(&STATS.protocol_errors),
                    PartOutcome::Waiting => {}
                }
            }
            Op::Discard => match rq.state().answer_write(part, slot, true) {
                PartOutcome::Done => {
                    stats::inc(&STATS.pages_discarded);
                    rq.page_done();
                }
                PartOutcome::Unexpected => stats::inc(&STATS.protocol_errors),
                _ => {}
            },
            Op::Read => {
                let ok = answer == Answer::Ok
                    && page.is_some_and(|p| rq.copy_in(part as usize * PAGE_SIZE, p));
                match rq.state().answer_read(part, slot, ok) {
                    PartOutcome::Done => {
                        if let Some(a) = app {
                            a.record_read_latency(rq.age_us().min(u64::from(u32::MAX)) as u32);
                        }
                        stats::inc(&STATS.pages_loaded);
                        if self.cache.is_some() {
                            stats::inc(&STATS.cache_hits);
                        }
                        rq.page_done();
                    }
                    PartOutcome::Failed => match &self.cache {
                        Some(cache) => self.cache_read_failed(cache, rq, part, index),
                        None => self.retry_read(rq, part, &set, index, answer),
                    },
                    PartOutcome::Unexpected => stats::inc(&STATS.protocol_errors),
                    PartOutcome::Waiting => {}
                }
            }
            _ => {}
        }
    }

    /// A read of one page failed on one replica: another one, or the page is lost. When every
    /// replica was tried, the last failure was a lost connection (not an answer) and the request
    /// is young enough, the replicas are tried once more: a connection reset (a false stall
    /// under load, a blip) is not an I/O error while an appliance with the page is reachable.
    fn retry_read(
        &self,
        rq: &Inflight<'_>,
        part: u32,
        set: &[u8; MAX_REPLICAS],
        index: u64,
        answer: Answer,
    ) {
        let mut tried = rq.state().tried(part);
        if self.pick_read_slot(set, index, tried, true).is_none()
            && answer == Answer::ConnLost
            && self.young(rq)
            && rq.state().resend_read(part)
        {
            stats::inc(&STATS.resent_pages);
            tried = 0;
        }
        match self.pick_read_slot(set, index, tried, true) {
            Some(slot) if rq.state().await_read(part, slot) => {
                stats::inc(&STATS.read_retries);
                self.send_run(rq, set[usize::from(slot)], slot, part, 1);
            }
            _ => self.page_lost(rq, part),
        }
    }

    /// Whether `rq` may still be resent (younger than `io_timeout_ms`).
    fn young(&self, rq: &Inflight<'_>) -> bool {
        rq.age_us() / 1000 < u64::from(self.cfg.io_timeout_ms)
    }

    /// A write part that no replica stored because their connections were lost: sent again,
    /// once, to the replicas that are up (see `retry_read` for why). False if it cannot be.
    fn resend_write(&self, rq: &Inflight<'_>, part: u32, set: &[u8; MAX_REPLICAS]) -> bool {
        if !self.young(rq) {
            return false;
        }
        let mut mask = 0u8;
        for (slot, &a) in set.iter().enumerate().take(usize::from(self.cfg.replicas)) {
            let index = rq.sector() / 8 + u64::from(part);
            if self
                .app(a)
                .is_some_and(|x| x.is_up() && x.route(index).is_some_and(|c| c.is_up()))
            {
                mask |= 1 << slot;
            }
        }
        if mask == 0 || !rq.state().resend_write(part, mask) {
            return false;
        }
        stats::inc(&STATS.resent_pages);
        for slot in 0..MAX_REPLICAS as u8 {
            if mask & (1 << slot) != 0 {
                self.send_run(rq, set[usize::from(slot)], slot, part, 1);
            }
        }
        true
    }

    /// Hands part `part` of `rq` to the spill thread: write it to the spill device (every
    /// replica full or down) or read it back. False if there is no spill device or its queue is
    /// full.
    fn queue_spill(&self, rq: &Inflight<'_>, part: u32, write: bool) -> bool {
        let kind = if write {
            SpillKind::Write
        } else {
            SpillKind::Read
        };
        self.queue_spill_job(rq, part, kind, rq.sector() / 8 + u64::from(part), 0)
    }

    /// Hands part `part` (device page `page`) of `rq` to the spill thread; `token`: see
    /// [`SpillJob::token`]. False if there is no spill device or its queue is full.
    pub(crate) fn queue_spill_job(
        &self,
        rq: &Inflight<'_>,
        part: u32,
        kind: SpillKind,
        page: u64,
        token: u32,
    ) -> bool {
        self.spill_on
            && self.spill_q.push(SpillJob {
                hctx: rq.hctx() as u8,
                tag: rq.tag() as u16,
                gen: rq.gen(),
                part: part as u16,
                kind,
                page,
                token,
            })
    }

    /// Body of the spill thread: the only one doing spill I/O (see `spill.rs` for why).
    pub(crate) fn spill_main(&self) {
        while !self.stopping() {
            thread::yield_now();
            let Some(job) = self.spill_q.pop_wait(200) else {
                continue;
            };
            let rq = self
                .set
                .acquire(u32::from(job.hctx), u32::from(job.tag), job.gen);
            if let Some(cache) = &self.cache {
                self.cache_spill(cache, job, rq.as_ref());
                continue;
            }
            let Some(rq) = rq else {
                continue;
            };
            let part = u32::from(job.part);
            if job.kind == SpillKind::Read {
                self.spill_read(&rq, part);
            } else if !self.spill_write(&rq, part) {
                stats::inc(&STATS.failed_puts);
                if rq.state().in_flight() {
                    stats::inc(&STATS.failed_requests);
                }
                rq.fail(blk::Status::IoErr);
            }
        }
    }

    /// A spilled page back into its read part.
    fn spill_read(&self, rq: &Inflight<'_>, part: u32) {
        let page = rq.sector() / 8 + u64::from(part);
        let mut guard = self.spill.lock();
        let read = guard
            .as_mut()
            .map(|s| s.read(page, |b| rq.copy_in(part as usize * PAGE_SIZE, b)));
        drop(guard);
        if matches!(read, Some(Ok(()))) && rq.state().local_part(part) {
            stats::inc(&STATS.pages_spill_read);
            rq.page_done();
        } else {
            self.fail_read(rq, part);
        }
    }

    /// Puts a write's part on the spill device; false if that failed.
    fn spill_write(&self, rq: &Inflight<'_>, part: u32) -> bool {
        let index = rq.sector() / 8 + u64::from(part);
        let mut guard = self.spill.lock();
        let Some(spill) = guard.as_mut() else {
            return false;
        };
        if spill
            .write(index, |b| rq.copy_out(part as usize * PAGE_SIZE, b))
            .is_err()
        {
            return false;
        }
        drop(guard);
        if !self.full_logged.swap(true, Ordering::AcqRel) {
            pr_warn!("every appliance is full or down: pages go to the spill device\n");
        }
        stats::inc(&STATS.pages_spilled);
        self.map().set_stored(index, true);
        self.set_spilled(index, true);
        // Finish the part whatever replicas still owe (their copies are stale now).
        for slot in 0..MAX_REPLICAS as u8 {
            self.map().set_stale(slot, index, true);
        }
        if rq.state().local_part(part) || rq.state().awaiting(part) == 0 {
            rq.page_done();
        }
        true
    }

    fn is_spilled(&self, page: u64) -> bool {
        self.spilled
            .get((page / 64) as usize)
            .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
    }

    fn set_spilled(&self, page: u64, on: bool) {
        if let Some(w) = self.spilled.get((page / 64) as usize) {
            let bit = 1u64 << (page % 64);
            if on {
                w.fetch_or(bit, Ordering::AcqRel);
            } else {
                w.fetch_and(!bit, Ordering::AcqRel);
            }
        }
    }

    /// Calls `f(rq, part, slot, conn)` for every answer an in-flight request still owes: replica
    /// `slot` of part `part`, on the connection `conn` that part's page routes to.
    pub(crate) fn for_each_owed(&self, mut f: impl FnMut(&Inflight<'_>, u32, u8, &Conn)) {
        self.set.for_each_inflight(|rq| {
            let base = rq.sector() / 8;
            for part in 0..rq.state().parts() {
                let owed = rq.state().awaiting(part);
                if owed == 0 {
                    continue;
                }
                let page = base + u64::from(part);
                let set = self.replica_set(extent_of(page), false);
                for slot in 0..MAX_REPLICAS as u8 {
                    if owed & (1 << slot) == 0 {
                        continue;
                    }
                    if let Some(c) = self.app(set[usize::from(slot)]).and_then(|a| a.route(page)) {
                        f(&rq, part, slot, c);
                    }
                }
            }
        });
    }

    /// A connection is gone: every part still owed on it (by any in-flight request) fails there.
    pub(crate) fn resolve_conn(&self, conn: &Conn) {
        self.for_each_owed(|rq, part, slot, c| {
            if c.app == conn.app && c.idx == conn.idx {
                self.answer(rq, part, slot, Answer::ConnLost, None);
            }
        });
    }

    /// A reply to a run. An error means the appliance broke the protocol (the connection is then
    /// dropped, and what it owes fails over to other replicas).
    pub(crate) fn on_run_reply(
        &self,
        conn: &Conn,
        id: RunId,
        h: &Header,
        body: &[u8],
        page: &mut [u8; PAGE_SIZE],
    ) -> Result {
        let Some(rq) = self
            .set
            .acquire(u32::from(id.hctx), u32::from(id.tag), id.gen)
        else {
            stats::inc(&STATS.stale_replies);
            return Ok(());
        };
        let first = u32::from(id.first);
        let count = u32::from(id.count);
        // The run must be one we sent on this connection: its first part owed by that replica
        // here (a forged id for another request or replica is refused).
        let index = rq.sector() / 8 + u64::from(first);
        let set = self.replica_set(extent_of(index), false);
        let on_this = usize::from(set[usize::from(id.slot) % MAX_REPLICAS]) == conn.app;
        if !on_this {
            // Another replica's run: nothing this connection owes. Dropped.
            stats::inc(&STATS.stale_replies);
            return Ok(());
        }
        if first + count > rq.state().parts() || rq.state().awaiting(first) & (1 << id.slot) == 0 {
            // A run the request does not have, or one answered already (a duplicate): the
            // appliance does not follow the protocol. Dropped; what it really owes is found by
            // the failure detector if it never comes.
            stats::inc(&STATS.protocol_errors);
            return Ok(());
        }
        conn.progressed();
        let expected = match rq.op() {
            Op::Write => protocol::Opcode::PutPage,
            Op::Read => protocol::Opcode::GetPage,
            Op::Discard => protocol::Opcode::FlushPage,
            _ => return Err(crate::transport::eproto()),
        };
        let mut lost_pool = false;
        if count == 1 {
            if h.opcode != expected as u8 {
                return Err(crate::transport::eproto());
            }
            let reply = Reply::parse(h.opcode, h.status, body);
            lost_pool |= self.one_answer(&rq, first, id.slot, reply, page)?;
        } else {
            let entries = match Reply::parse(h.opcode, h.status, body) {
                Ok(Reply::Batch(entries))
                    if h.opcode == protocol::Opcode::Batch as u8
                        && entries.len() == count as usize =>
                {
                    entries
                }
                Ok(Reply::Error { status, .. }) if h.opcode == protocol::Opcode::Batch as u8 => {
                    // The whole batch failed (e.g. TOO_LARGE): every part fails on this replica.
                    for part in first..first + count {
                        self.answer(&rq, part, id.slot, batch_failure(status), None);
                    }
                    return Ok(());
                }
                _ => return Err(crate::transport::eproto()),
            };
            for (part, entry) in (first..).zip(entries) {
                if entry.opcode != expected as u8 {
                    return Err(crate::transport::eproto());
                }
                lost_pool |= self.one_answer(&rq, part, id.slot, entry.reply(), page)?;
            }
        }
        if lost_pool {
            // The appliance lost our pool: reconnecting checks it, makes a new one and marks what
            // it held stale.
            conn.kick();
        }
        Ok(())
    }

    /// One part's answer; true if it said UNKNOWN_POOL.
    fn one_answer(
        &self,
        rq: &Inflight<'_>,
        part: u32,
        slot: u8,
        reply: core::result::Result<Reply<'_>, protocol::WireError>,
        page: &mut [u8; PAGE_SIZE],
    ) -> Result<bool> {
        if rq.state().awaiting(part) & (1 << slot) == 0 {
            // Answered already, or never asked of this replica: a duplicate or a forgery. Skipped.
            stats::inc(&STATS.protocol_errors);
            return Ok(false);
        }
        let index = rq.sector() / 8 + u64::from(part);
        let lost_pool = matches!(&reply, Ok(r) if r.status() == Status::UnknownPool);
        let answer = match (rq.op(), reply) {
            (Op::Read, Ok(Reply::Page(p))) => match self.decode_page(&p, index, page) {
                Ok(()) => Answer::Ok,
                Err(()) => Answer::Failed,
            },
            (Op::Write | Op::Discard, Ok(Reply::Done)) => Answer::Ok,
            (
                Op::Discard,
                Ok(Reply::Error {
                    status: Status::NotFound,
                    ..
                }),
            ) => Answer::Ok,
            (_, Ok(Reply::Error { status, .. })) => Answer::of(status),
            _ => return Err(crate::transport::eproto()),
        };
        if answer == Answer::NotFound {
            stats::inc(&STATS.not_found_replies);
        }
        self.answer(
            rq,
            part,
            slot,
            answer,
            (answer == Answer::Ok).then_some(&*page),
        );
        Ok(lost_pool)
    }

    /// Decodes a page from a reply into `out` and checks it: CRC for plain pages; for sealed ones
    /// the AEAD under the page key with the write generation we expect (a stale or swapped page
    /// fails).
    pub(crate) fn decode_page(
        &self,
        p: &Page<'_>,
        index: u64,
        out: &mut [u8; PAGE_SIZE],
    ) -> core::result::Result<(), ()> {
        match (p.encoding, &self.page_key) {
            (Encoding::Sealed, Some(key)) => {
                let gen = self
                    .gens
                    .get(index as usize)
                    .map_or(0, |g| g.load(Ordering::Acquire));
                if crc32c(p.data) != p.crc {
                    stats::inc(&STATS.checksum_errors);
                    return Err(());
                }
                let mut inner = [0u8; PAGE_SIZE];
                let n = p.data.len().saturating_sub(SEAL_TAG_LEN);
                if n == 0
                    || n > PAGE_SIZE
                    || !crypto::open(
                        key.bytes(),
                        seal_nonce(index, gen),
                        &seal_ad(self.cfg.client_id, index, gen),
                        p.data,
                        &mut inner[..n],
                    )
                {
                    stats::inc(&STATS.page_auth_failures);
                    return Err(());
                }
                match n {
                    PAGE_SIZE => out.copy_from_slice(&inner),
                    8 => Page::expand_fill(
                        u64::from_le_bytes([
                            inner[0], inner[1], inner[2], inner[3], inner[4], inner[5], inner[6],
                            inner[7],
                        ]),
                        out,
                    ),
                    _ => {
                        if !lz4::decompress(&inner[..n], out) {
                            stats::inc(&STATS.page_auth_failures);
                            return Err(());
                        }
                    }
                }
                Ok(())
            }
            (Encoding::Sealed, None) | (_, Some(_)) => {
                // Sealed pages only come back if we sealed them, and with encrypt_pages we seal all.
                stats::inc(&STATS.protocol_errors);
                Err(())
            }
            (Encoding::Raw, None) => {
                out.copy_from_slice(p.data.get(..PAGE_SIZE).ok_or(())?);
                check_crc(out, p.crc)
            }
            (Encoding::Fill, None) => {
                Page::expand_fill(p.fill_word().ok_or(())?, out);
                check_crc(out, p.crc)
            }
            (Encoding::Lz4, None) if self.cfg.compress => {
                if !lz4::decompress(p.data, out) {
                    stats::inc(&STATS.protocol_errors);
                    return Err(());
                }
                check_crc(out, p.crc)
            }
            (Encoding::Lz4, None) => {
                // Never asked for (no ACCEPT_LZ4): the appliance does not follow the protocol.
                stats::inc(&STATS.protocol_errors);
                Err(())
            }
        }
    }

    /// Builds the frame of a run at `bufs.frames[at..]`.
    pub(crate) fn build_run(
        &self,
        conn: &Conn,
        bufs: &mut SendBufs,
        id: RunId,
        at: usize,
    ) -> Result<Option<usize>> {
        let Some(rq) = self
            .set
            .acquire(u32::from(id.hctx), u32::from(id.tag), id.gen)
        else {
            return Ok(None);
        };
        let first = u32::from(id.first);
        if rq.state().awaiting(first) & (1 << id.slot) == 0 {
            return Ok(None);
        }
        let pool = self
            .apps
            .get(conn.app)
            .map_or(0, |a| a.pool_id.load(Ordering::Acquire));
        let base = rq.sector() / 8;
        let wire = WireId::Run(id).to_wire();
        let flags = if self.cfg.compress && rq.op() == Op::Read {
            protocol::flags::ACCEPT_LZ4
        } else {
            0
        };
        // The cache device reads without taking its copies away (they are read many times).
        let keep = if self.cache.is_some() && rq.op() == Op::Read {
            protocol::flags::GET_KEEP
        } else {
            0
        };
        let SendBufs {
            frames,
            page,
            sealed,
            lz4,
            ..
        } = bufs;
        let out = frames.get_mut(at..).ok_or(EINVAL)?;
        let mut fill = [0u8; 8];
        let n = if id.count == 1 {
            let req = self.page_request(
                &rq,
                pool,
                base + u64::from(first),
                first,
                page,
                sealed,
                lz4,
                &mut fill,
            )?;
            req.emit(wire, flags | keep, out).map_err(|_| EINVAL)?
        } else {
            let mut batch = BatchWriter::new(out).map_err(|_| EINVAL)?;
            for part in first..first + u32::from(id.count) {
                let req = self.page_request(
                    &rq,
                    pool,
                    base + u64::from(part),
                    part,
                    page,
                    sealed,
                    lz4,
                    &mut fill,
                )?;
                batch.push_request(&req, keep).map_err(|_| EINVAL)?;
            }
            batch.finish_request(wire, flags).map_err(|_| EINVAL)?
        };
        Ok(Some(n))
    }

    /// The page operation for part `part` (device page `index`) of `rq`; a write's page is copied
    /// into `scratch` and sent as a fill word, LZ4 or raw, or sealed (`encrypt_pages`).
    #[allow(clippy::too_many_arguments)]
    fn page_request<'p>(
        &self,
        rq: &Inflight<'_>,
        pool: u32,
        index: u64,
        part: u32,
        scratch: &'p mut KVec<u8>,
        sealed: &'p mut KVec<u8>,
        lz4: &'p mut Option<lz4::Compressor>,
        fill: &'p mut [u8; 8],
    ) -> Result<Request<'p>> {
        let gen = self
            .cache
            .as_ref()
            .and_then(|c| c.state(index))
            .map_or(0, |s| s.gen());
        let key = PageKey {
            pool,
            object: self.page_object(gen),
            index: index as u32,
        };
        Ok(match rq.op() {
            Op::Read => Request::Get { key },
            Op::Discard => Request::FlushPage { key },
            _ => {
                if !rq.copy_out(part as usize * PAGE_SIZE, scratch) {
                    return Err(EIO);
                }
                let data = <&[u8; PAGE_SIZE]>::try_from(&scratch[..]).map_err(|_| EINVAL)?;
                let word = Page::detect_fill(data);
                let compressed = match (word, lz4.as_mut()) {
                    (None, Some(c)) => c.compress(data, LZ4_LIMIT),
                    _ => None,
                };
                if compressed.is_some() {
                    stats::inc(&STATS.pages_compressed);
                }
                if let Some(w) = word {
                    *fill = w.to_le_bytes();
                }
                let inner: &[u8] = match (word, compressed) {
                    (Some(_), _) => &fill[..],
                    (None, Some(lz)) => lz,
                    (None, None) => data,
                };
                let page = match &self.page_key {
                    Some(k) => {
                        let gen = self
                            .gens
                            .get(index as usize)
                            .map_or(0, |g| g.load(Ordering::Acquire));
                        let len = inner.len() + SEAL_TAG_LEN;
                        let out = sealed.get_mut(..len).ok_or(EINVAL)?;
                        crypto::seal(
                            k.bytes(),
                            seal_nonce(index, gen),
                            &seal_ad(self.cfg.client_id, index, gen),
                            inner,
                            out,
                        );
                        stats::inc(&STATS.pages_sealed);
                        Page {
                            encoding: Encoding::Sealed,
                            crc: crc32c(out),
                            data: out,
                        }
                    }
                    None => Page {
                        encoding: match (word, compressed.is_some()) {
                            (Some(_), _) => Encoding::Fill,
                            (None, true) => Encoding::Lz4,
                            (None, false) => Encoding::Raw,
                        },
                        crc: crc32c(data),
                        data: inner,
                    },
                };
                Request::Put { key, page }
            }
        })
    }
}

impl Client {
    /// Object id of a page's key: the swap device's is fixed; the cache device's carries the
    /// block's generation `gen` (see `cache.rs`).
    pub(crate) fn page_object(&self, gen: u32) -> [u64; 3] {
        self.cache.as_ref().map_or(OBJECT, |c| c.object(gen))
    }
}

/// Nonce of a sealed page: (page index, write generation), never reused under one page key.
pub(crate) fn seal_nonce(index: u64, gen: u32) -> u64 {
    (index << 32) | u64::from(gen)
}

/// Associated data of a sealed page: client id, page index, generation.
pub(crate) fn seal_ad(client_id: u64, index: u64, gen: u32) -> [u8; 20] {
    let mut ad = [0u8; 20];
    ad[..8].copy_from_slice(&client_id.to_le_bytes());
    ad[8..16].copy_from_slice(&index.to_le_bytes());
    ad[16..].copy_from_slice(&gen.to_le_bytes());
    ad
}

fn check_crc(page: &[u8; PAGE_SIZE], crc: u32) -> core::result::Result<(), ()> {
    if crc32c(page) != crc {
        stats::inc(&STATS.checksum_errors);
        return Err(());
    }
    Ok(())
}

/// A batch-level error is never a success for its parts.
fn batch_failure(status: Status) -> Answer {
    match Answer::of(status) {
        Answer::Ok => Answer::Failed,
        a => a,
    }
}

/// Keeps `MAX_BATCH` and the stripe size in step: runs never cross a stripe, so one run is one
/// BATCH at most.
const _: () = assert!(STRIPE_PAGES as usize == MAX_BATCH && NO_APPLIANCE == 0xff);
