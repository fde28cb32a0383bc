//! The cache device: `cache_backing=/dev/X[,/dev/Y...]` makes this load of kclient
//! `/dev/kcache0` (`kcache1`...), each the backing device's blocks with clean copies in the
//! appliances' RAM (an ephemeral pool per device: RAMster's cleancache half, which Linux 5.17
//! removed the hooks for). Each device is a `Client` of its own (`devices.rs`).
//!
//! - **Reads**: a block whose copy a fill committed is asked of its appliance with `GET_KEEP`
//!   (the copy stays and becomes most recently used); anything else (never cached, evicted, the
//!   appliance down or its pool lost) is read from the backing device, and that block is then put
//!   into the pool in the background (a *fill*; admission on miss).
//! - **Writes** go to the backing device and complete when it completed them; the block's cached
//!   copy stops being readable when the write starts, and a write that was the only one of its
//!   block in flight fills the cache with what it wrote (write-through).
//! - **Flushes** flush the backing device's write cache.
//!
//! Never a stale block: copies are stored under a key holding the block's generation, which
//! every write moves (`logic/cache_state.rs`, loom-tested), plus a random epoch per load, so a
//! reload, a reconnect or a restarted appliance can cost hits, never return old contents. The
//! backing device's I/O is done by the spill thread (`spill.rs`: one page at a time, never in
//! `queue_rq` or a receive thread); fills are put by the fill thread, a stripe per BATCH with two
//! in flight, through the repair slots (the repair thread does not run on a cache: nothing is
//! replicated).

use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, CondVar, Mutex};
use kernel::time::msecs_to_jiffies;

use crate::blk::{self, Inflight, Op};
use crate::client::Client;
use crate::logic::cache_state::{CacheState, FillTicket, WriteStart};
use crate::logic::placement::{extent_of, NO_APPLIANCE};
use crate::logic::stripe_gate::STRIPE_PAGES;
use crate::protocol::PAGE_SIZE;
use crate::repair::REPAIR_SLOTS;
use crate::sendq::Ring;
use crate::spill::{SpillJob, SpillKind};
use crate::stats::{self, STATS};
use crate::thread;

/// Pages waiting to be put into the cache (4 MiB of buffers): a few stripes' round trips at the
/// rate a disk misses. A fill is only an optimisation: beyond this they are dropped
/// (`cache_fills_dropped`) rather than slowing reads down.
pub(crate) const FILL_SLOTS: usize = 1024;
/// How long the fill thread lets a stripe's fills gather before it sends fewer than a BATCH.
const FILL_GATHER_MS: u32 = 2;

/// Per-block states and the key epoch of one cache device.
pub(crate) struct Cache {
    states: VVec<CacheState>,
    epoch: u64,
}

impl Cache {
    /// States for `pages` blocks (4 bytes each) and a fresh random epoch.
    pub(crate) fn new(pages: u64) -> Result<Self> {
        let mut states = VVec::with_capacity(pages as usize, GFP_KERNEL)?;
        for _ in 0..pages {
            states.push(CacheState::new(), GFP_KERNEL)?;
        }
        let mut epoch = [0u8; 8];
        crate::crypto::random(&mut epoch);
        Ok(Self {
            states,
            epoch: u64::from_le_bytes(epoch),
        })
    }

    pub(crate) fn state(&self, page: u64) -> Option<&CacheState> {
        self.states.get(page as usize)
    }

    /// Object id of a block's copy at generation `gen` (the index is the block number).
    pub(crate) fn object(&self, gen: u32) -> [u64; 3] {
        [self.epoch, u64::from(gen), 0]
    }
}

/// A BATCH of fills sent (`seq` its repair operation; `None`: not sent, nothing stored), the
/// first block of its stripe and each block's ticket.
struct FillBatch {
    seq: Option<u32>,
    base: u64,
    tickets: [Option<FillTicket>; STRIPE_PAGES as usize],
}

/// A fill waiting for the fill thread (its page's contents are in the slot's buffer).
#[derive(Clone, Copy)]
struct FillMeta {
    page: u64,
    ticket: Option<FillTicket>,
}

struct FillRing {
    fills: Ring<FillMeta>,
    /// A page per slot of `fills`.
    data: VVec<u8>,
}

/// Pages read from (or written to) the backing device, waiting to be put into the cache.
#[pin_data]
pub(crate) struct FillQueue {
    #[pin]
    ring: Mutex<FillRing>,
    #[pin]
    wake: CondVar,
}

impl FillQueue {
    /// Room for `slots` pages (0: not a cache device).
    pub(crate) fn new(slots: usize) -> Result<impl PinInit<Self>> {
        let filler = FillMeta {
            page: 0,
            ticket: None,
        };
        let ring = FillRing {
            fills: Ring::new(slots, filler)?,
            data: VVec::from_elem(0u8, slots * PAGE_SIZE, GFP_KERNEL)?,
        };
        Ok(pin_init!(Self {
            ring <- new_mutex!(ring, "kclient:fills"),
            wake <- new_condvar!("kclient:fills"),
        }))
    }

    /// Queues a copy of `data` (a page) to be put as block `page` under `ticket`; false if full.
    pub(crate) fn push(&self, page: u64, ticket: FillTicket, data: &[u8]) -> bool {
        let mut guard = self.ring.lock();
        let FillRing { fills, data: pages } = &mut *guard;
        if data.len() != PAGE_SIZE {
            return false;
        }
        let meta = FillMeta {
            page,
            ticket: Some(ticket),
        };
        let Ok(at) = fills.push(meta) else {
            return false;
        };
        if let Some(dst) = pages.get_mut(at * PAGE_SIZE..(at + 1) * PAGE_SIZE) {
            dst.copy_from_slice(data);
        }
        drop(guard);
        self.wake.notify_one();
        true
    }

    /// Waits up to `timeout_ms` for a queued fill; true if there is one.
    fn wait(&self, timeout_ms: u32) -> bool {
        let mut r = self.ring.lock();
        if r.fills.is_empty() {
            let _ = self
                .wake
                .wait_interruptible_timeout(&mut r, msecs_to_jiffies(timeout_ms));
        }
        !r.fills.is_empty()
    }

    /// Fills queued.
    fn len(&self) -> usize {
        self.ring.lock().fills.len()
    }

    /// Takes the oldest fill and those right behind it in the same stripe, calling
    /// `f(page, ticket, data)` for each; returns the stripe's first page (None: empty).
    fn pop_stripe(&self, mut f: impl FnMut(u64, FillTicket, &[u8])) -> Option<u64> {
        let mut guard = self.ring.lock();
        let FillRing { fills, data } = &mut *guard;
        let stripe = fills.peek()?.page / STRIPE_PAGES;
        while fills
            .peek()
            .is_some_and(|m| m.page / STRIPE_PAGES == stripe)
        {
            let Some((at, m)) = fills.pop_slot() else {
                break;
            };
            if let (Some(t), Some(page)) =
                (m.ticket, data.get(at * PAGE_SIZE..(at + 1) * PAGE_SIZE))
            {
                f(m.page, t, page);
            }
        }
        Some(stripe * STRIPE_PAGES)
    }
}

impl Client {
    /// `queue_rq` of the cache device, for a read or write of `pages` blocks from `first`.
    pub(crate) fn submit_cached(
        &self,
        rq: &Inflight<'_>,
        cache: &Cache,
        op: Op,
        first: u64,
        pages: u64,
    ) -> core::result::Result<(), blk::Status> {
        match op {
            Op::Read => {
                self.cache_read(rq, cache, first, pages);
                Ok(())
            }
            Op::Write => self.cache_write(rq, cache, first, pages),
            _ => Err(blk::Status::NotSupported),
        }
    }

    /// Cached blocks go to their appliance (consecutive ones in a stripe as one BATCH of
    /// `GET_KEEP`), the others to the backing device.
    fn cache_read(&self, rq: &Inflight<'_>, cache: &Cache, first: u64, pages: u64) {
        let mut part = 0u32;
        while u64::from(part) < pages {
            let page = first + u64::from(part);
            let app = self.replica_set(extent_of(page), false)[0];
            let up = app != NO_APPLIANCE && self.app(app).is_some_and(|a| a.is_up());
            let cached = |p: u64| up && cache.state(p).is_some_and(|s| s.lookup().is_some());
            if !cached(page) {
                if !self.cache_miss(rq, part, page) {
                    return;
                }
                part += 1;
                continue;
            }
            let stripe_end = (page / STRIPE_PAGES + 1) * STRIPE_PAGES;
            let mut n = 1;
            while u64::from(part + n) < pages
                && page + u64::from(n) < stripe_end
                && cached(page + u64::from(n))
            {
                n += 1;
            }
            for q in part..part + n {
                rq.state().await_read(q, 0);
            }
            self.send_run(rq, app, 0, part, n);
            part += n;
        }
    }

    /// Part `part` (block `page`) is read from the backing device. False if it cannot be (the
    /// request failed).
    pub(crate) fn cache_miss(&self, rq: &Inflight<'_>, part: u32, page: u64) -> bool {
        stats::inc(&STATS.cache_misses);
        self.queue_spill_job(rq, part, SpillKind::Read, page, 0) || self.fail_read(rq, part)
    }

    /// A cached block's read failed on the appliance (evicted, pool lost, connection lost, a
    /// bad page): not asked there again until refilled; read from the backing device.
    pub(crate) fn cache_read_failed(&self, cache: &Cache, rq: &Inflight<'_>, part: u32, page: u64) {
        if let Some(s) = cache.state(page) {
            s.missed(s.gen());
        }
        self.cache_miss(rq, part, page);
    }

    /// Each block's write starts (its cached copy unreadable from now on) and goes to the
    /// spill thread, which writes it to the backing device.
    fn cache_write(
        &self,
        rq: &Inflight<'_>,
        cache: &Cache,
        first: u64,
        pages: u64,
    ) -> core::result::Result<(), blk::Status> {
        for part in 0..pages as u32 {
            let page = first + u64::from(part);
            let state = cache.state(page).ok_or(blk::Status::IoErr)?;
            let deadline = thread::now_ms() + u64::from(self.cfg.io_timeout_ms);
            let (start, invalidated) = loop {
                if let Some(s) = state.begin_write() {
                    break s;
                }
                // 127 writes of this one block in flight: wait for one to end (bounded). Parts
                // queued already are ended by the spill thread, request or not.
                if thread::now_ms() >= deadline {
                    return Err(blk::Status::IoErr);
                }
                thread::yield_now();
            };
            if invalidated {
                stats::inc(&STATS.cache_invalidations);
            }
            if !self.queue_spill_job(rq, part, SpillKind::Write, page, start.to_word()) {
                let _ = state.end_write(start);
                return Err(blk::Status::IoErr);
            }
        }
        Ok(())
    }

    /// The spill thread's work on a cache device: `rq` is the job's request if it is still in
    /// flight. A write's block state is ended whatever happened, so it never stays "written".
    pub(crate) fn cache_spill(&self, cache: &Cache, job: SpillJob, rq: Option<&Inflight<'_>>) {
        let part = u32::from(job.part);
        match job.kind {
            SpillKind::Flush => {
                let Some(rq) = rq else { return };
                let flushed = self
                    .spill
                    .lock()
                    .as_mut()
                    .is_some_and(|s| s.flush().is_ok());
                if flushed && rq.state().local_part(part) {
                    rq.page_done();
                } else {
                    stats::inc(&STATS.failed_flushes);
                    rq.fail(blk::Status::IoErr);
                }
            }
            SpillKind::Read => {
                let Some(rq) = rq else { return };
                // Before the read: contents read while no write began since are the block's.
                let ticket = cache.state(job.page).and_then(CacheState::fill_ticket);
                let mut guard = self.spill.lock();
                let read = guard.as_mut().is_some_and(|spill| {
                    let ok = spill
                        .read(job.page, |b| rq.copy_in(part as usize * PAGE_SIZE, b))
                        .is_ok();
                    if let (true, Some(t)) = (ok, ticket) {
                        self.queue_fill(job.page, t, spill.last_page());
                    }
                    ok
                });
                drop(guard);
                if read && rq.state().local_part(part) {
                    stats::inc(&STATS.pages_spill_read);
                    rq.page_done();
                } else {
                    self.fail_read(rq, part);
                }
            }
            SpillKind::Write => {
                let start = WriteStart::from_word(job.token);
                let state = cache.state(job.page);
                let mut guard = self.spill.lock();
                let written = match (rq, guard.as_mut()) {
                    (Some(rq), Some(spill)) => {
                        let ok = spill
                            .write(job.page, |b| rq.copy_out(part as usize * PAGE_SIZE, b))
                            .is_ok();
                        // After the backing device completed it: the written contents are the
                        // block's if this write was alone.
                        let ticket = state.and_then(|s| s.end_write(start));
                        if let (true, Some(t)) = (ok, ticket) {
                            self.queue_fill(job.page, t, spill.last_page());
                        }
                        ok
                    }
                    _ => {
                        if let Some(s) = state {
                            let _ = s.end_write(start);
                        }
                        false
                    }
                };
                drop(guard);
                let Some(rq) = rq else { return };
                if written && rq.state().local_part(part) {
                    stats::inc(&STATS.pages_spilled);
                    rq.page_done();
                } else {
                    stats::inc(&STATS.failed_puts);
                    if rq.state().in_flight() {
                        stats::inc(&STATS.failed_requests);
                    }
                    rq.fail(blk::Status::IoErr);
                }
            }
        }
    }

    fn queue_fill(&self, page: u64, ticket: FillTicket, data: &[u8]) {
        if !self.fills.push(page, ticket, data) {
            stats::inc(&STATS.cache_fills_dropped);
        }
    }

    /// Body of the fill thread: puts queued fills into the cache, a stripe per BATCH with up to
    /// [`REPAIR_SLOTS`] batches in flight (one slot each, in turn), and marks each block
    /// readable once its batch stored it, if no write began since its ticket.
    pub(crate) fn cache_fill_main(&self) {
        let Some(cache) = self.cache.as_ref() else {
            return;
        };
        let mut in_flight: [Option<FillBatch>; REPAIR_SLOTS] = [None, None];
        // The slot the next batch goes to; the other one holds the batch started last.
        let mut next = 0;
        while !self.stopping() {
            let busy = in_flight.iter().any(Option::is_some);
            if in_flight[next].is_none() && self.fills.len() >= STRIPE_PAGES as usize {
                // A stripe's worth queued and a slot free: another batch in flight.
                in_flight[next] = self.start_fill(next);
                next = (next + 1) % REPAIR_SLOTS;
            } else if busy {
                // Otherwise the oldest batch ends first (slot `next` if it is taken), while
                // more fills queue for a fuller next batch.
                let oldest = if in_flight[next].is_some() {
                    next
                } else {
                    (next + 1) % REPAIR_SLOTS
                };
                if let Some(batch) = in_flight[oldest].take() {
                    self.finish_fill(cache, batch);
                }
            } else if self.fills.wait(200) {
                if self.fills.len() < STRIPE_PAGES as usize {
                    // Sequential misses arrive a page at a time: one round trip per stripe,
                    // not per page (the spill thread reads a page in well under this).
                    thread::sleep_ms(FILL_GATHER_MS);
                }
                in_flight[next] = self.start_fill(next);
                next = (next + 1) % REPAIR_SLOTS;
            }
        }
    }

    /// Takes the next stripe's fills into repair slot `op` and sends them as one BATCH of PUTs
    /// to the appliance the stripe is placed on (placed at its first fill, on one up and not
    /// full); `None` if nothing was queued.
    fn start_fill(&self, op: usize) -> Option<FillBatch> {
        let mut tickets: [Option<FillTicket>; STRIPE_PAGES as usize] =
            [None; STRIPE_PAGES as usize];
        let mut slots = self.repair.lock();
        let slot = slots.slot_mut(op)?;
        let base = self.fills.pop_stripe(|page, ticket, data| {
            let i = (page % STRIPE_PAGES) as usize;
            slot.set_raw_page(i, data, ticket.gen());
            tickets[i] = Some(ticket);
        });
        drop(slots);
        let base = base?;
        let mask = (0..STRIPE_PAGES as usize)
            .filter(|&i| tickets[i].is_some())
            .fold(0u64, |m, i| m | 1 << i);
        let set = self.replica_set(extent_of(base), true);
        let up = set[0] != NO_APPLIANCE && self.app(set[0]).is_some_and(|a| a.is_up());
        let seq = if up {
            self.repair_start(op, &set, 0, true, base, mask)
        } else {
            None
        };
        Some(FillBatch { seq, base, tickets })
    }

    /// Waits for a fill batch's answer and commits each block it stored (readable, unless a
    /// write began since its ticket).
    fn finish_fill(&self, cache: &Cache, batch: FillBatch) {
        let stored = self.repair_wait(batch.seq);
        for (i, t) in batch.tickets.iter().enumerate() {
            let Some(t) = t else { continue };
            let committed = stored & (1 << i) != 0
                && cache
                    .state(batch.base + i as u64)
                    .is_some_and(|s| s.commit_fill(*t));
            if committed {
                stats::inc(&STATS.cache_fills);
            } else {
                stats::inc(&STATS.cache_fills_dropped);
            }
        }
    }
}
