//! The client: the appliances, where each page lives, and the threads that keep it all going.
//! Safe Rust only; the unsafe parts are in the wrappers.
//!
//! - **Placement** (`logic/placement.rs`): the device is cut into 64 MiB extents; each is placed,
//!   at its first write, on `replicas` appliances chosen by rendezvous hashing among those up and
//!   not full. Capacity and bandwidth add up over the appliances.
//! - **I/O** (`io.rs`): a write goes to every live replica of its extent and completes when all of
//!   them answered and at least one stored it; a read goes to one replica (not stale, fastest)
//!   and falls back to another on any failure; a discard goes to all.
//! - **Connections** (`link.rs`): per appliance `nr_conns` TCP connections, each with a receive
//!   thread and a sender thread; a page's operations always take the same connection.
//! - **Failure detection** (the monitor thread here): a connection that owes answers for
//!   `down_after_ms`, or stays silent to a keepalive, is reset; an appliance with no connection
//!   up is down, and its replicas' pages are marked stale as writes miss them.
//! - **Repair** (`repair.rs`): pages a replica missed (or lost with its pool) are copied to it
//!   from another replica in the background, rate-limited, stripe by stripe.

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_condvar, new_mutex, Arc, CondVar, Mutex};

use crate::appliance::{Addr, Appliance, State};
use crate::blk::TagSet;
use crate::cache::{Cache, FillQueue, FILL_SLOTS};
use crate::config::Config;
use crate::crypto::SecretKey;
use crate::logic::page_map::PageMap;
use crate::logic::placement::{place, EXTENT_PAGES, NO_APPLIANCE};
use crate::logic::request::MAX_REPLICAS;
use crate::logic::stripe_gate::{StripeGate, STRIPE_PAGES};
use crate::logic::targets::Targets;
use crate::repair::RepairSlots;
use crate::sendq::SendItem;
use crate::spill::{Spill, SpillQueue};
use crate::stats::{self, STATS};
use crate::thread::{self, KThread};

/// Extent table word: placed, and the appliance of each replica slot (one byte each).
const PLACED: u32 = 1 << 31;

/// Scalars the hot paths read.
pub(crate) struct Settings {
    pub(crate) pages: u64,
    pub(crate) replicas: u8,
    pub(crate) io_timeout_ms: u32,
    pub(crate) down_after_ms: u32,
    pub(crate) keepalive_ms: u32,
    pub(crate) repair_pages_per_s: u32,
    pub(crate) client_id: u64,
    pub(crate) compress: bool,
}

#[pin_data]
pub(crate) struct Client {
    pub(crate) cfg: Settings,
    /// Pre-shared key of the Noise handshake (`None`: insecure).
    pub(crate) key: Option<SecretKey>,
    /// `encrypt_pages`: the key pages are sealed with (random per load; never leaves the kernel).
    pub(crate) page_key: Option<SecretKey>,
    pub(crate) set: Arc<TagSet<Client>>,
    pub(crate) apps: KVec<Arc<Appliance>>,
    /// `cache_backing`: this is the cache device (`cache.rs`).
    pub(crate) cache: Option<Cache>,
    /// The cache device's pages waiting to be put (the fill thread takes them).
    #[pin]
    pub(crate) fills: FillQueue,
    /// Per extent: [`PLACED`] and the replica set.
    extents: KVec<AtomicU32>,
    stored: KVec<AtomicU64>,
    stale: [KVec<AtomicU64>; MAX_REPLICAS],
    /// Pages that live on the spill device.
    pub(crate) spilled: KVec<AtomicU64>,
    pub(crate) gates: KVec<StripeGate>,
    /// `encrypt_pages`: per page, its write generation (the nonce; a rolled-back page fails).
    pub(crate) gens: KVec<AtomicU32>,
    #[pin]
    pub(crate) spill: Mutex<Option<Spill>>,
    /// A spill device is configured.
    pub(crate) spill_on: bool,
    /// Work for the spill thread (only it touches the spill device).
    #[pin]
    pub(crate) spill_q: SpillQueue,
    #[pin]
    pub(crate) repair: Mutex<RepairSlots>,
    #[pin]
    pub(crate) repair_done: CondVar,
    #[pin]
    threads: Mutex<KVec<KThread>>,
    stopping: AtomicBool,
    /// Said once in the log: every appliance is full.
    pub(crate) full_logged: AtomicBool,
    pub(crate) keepalive_seq: AtomicU64,
}

fn words(pages: u64) -> Result<KVec<AtomicU64>> {
    let n = PageMap::words_for(pages);
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(AtomicU64::new(0), GFP_KERNEL)?;
    }
    Ok(v)
}

/// Largest request in pages: 256 KiB, one BATCH frame's worth (a request crossing a stripe
/// boundary becomes two runs).
pub(crate) const MAX_PAGES: u32 = 64;
/// Tags per hardware queue. What the kernel may queue is bounded by tags x request size: with
/// 1 MiB requests and 128 tags it queued hundreds of MiB of writeback, which took longer than
/// `io_timeout_ms` to drain on a slow link (doubled by replicas). 32 x 256 KiB per queue keeps a
/// client's backlog to a few seconds even at 10 MB/s, far above what a real link needs in flight.
pub(crate) const QUEUE_DEPTH: u32 = 32;

/// Spill jobs that can wait at once (more fail the page: the device is far behind).
const SPILL_JOBS: usize = 8192;

impl Client {
    pub(crate) fn new(mut config: Config, set: Arc<TagSet<Client>>) -> Result<Arc<Self>> {
        let cfg = &mut config;
        // First the spill (or backing) device: a cache device is as large as its backing device.
        let spill = match cfg.spill.take() {
            None => None,
            Some(path) => {
                let path = CStr::from_bytes_with_nul(&path)?;
                match Spill::open(path) {
                    Ok(s) if cfg.cache => {
                        cfg.pages = s.pages().min(u64::from(u32::MAX));
                        Some(s)
                    }
                    Ok(s) if s.pages() >= cfg.pages => Some(s),
                    Ok(s) => {
                        pr_err!(
                            "spill device has {} pages, the device {}\n",
                            s.pages(),
                            cfg.pages
                        );
                        return Err(EINVAL);
                    }
                    Err(e) => {
                        pr_err!(
                            "cannot open the {} device (error {})\n",
                            if cfg.cache { "backing" } else { "spill" },
                            e.to_errno()
                        );
                        return Err(e);
                    }
                }
            }
        };
        if cfg.pages == 0 {
            pr_err!("the backing device is empty\n");
            return Err(EINVAL);
        }
        let mut apps = KVec::with_capacity(cfg.targets.len(), GFP_KERNEL)?;
        for (i, addr) in cfg.targets.as_slice().iter().enumerate() {
            apps.push(
                Appliance::new(i, *addr, cfg.nr_conns, cfg.compress)?,
                GFP_KERNEL,
            )?;
        }
        let n_extents = cfg.pages.div_ceil(EXTENT_PAGES) as usize;
        let mut extents = KVec::with_capacity(n_extents, GFP_KERNEL)?;
        for _ in 0..n_extents {
            extents.push(AtomicU32::new(0), GFP_KERNEL)?;
        }
        let n_stripes = cfg.pages.div_ceil(STRIPE_PAGES) as usize;
        let mut gates = KVec::with_capacity(n_stripes, GFP_KERNEL)?;
        for _ in 0..n_stripes {
            gates.push(StripeGate::new(), GFP_KERNEL)?;
        }
        let mut gens = KVec::new();
        if cfg.encrypt_pages {
            gens.reserve(cfg.pages as usize, GFP_KERNEL)?;
            for _ in 0..cfg.pages {
                gens.push(AtomicU32::new(0), GFP_KERNEL)?;
            }
        }
        let settings = Settings {
            pages: cfg.pages,
            replicas: cfg.replicas,
            io_timeout_ms: cfg.io_timeout_ms,
            down_after_ms: cfg.down_after_ms,
            keepalive_ms: cfg.keepalive_ms,
            repair_pages_per_s: cfg.repair_pages_per_s,
            client_id: cfg.client_id,
            compress: cfg.compress,
        };
        let page_key = cfg.encrypt_pages.then(SecretKey::random);
        let key = cfg.key.take();
        let stored = words(cfg.pages)?;
        let stale = [words(cfg.pages)?, words(cfg.pages)?, words(cfg.pages)?];
        let spilled = words(cfg.pages)?;
        let repair_slots = RepairSlots::new()?;
        // Every page of every request in flight fits (a cache device sends them all here when
        // nothing is cached yet): queues x tags x pages.
        let spill_q =
            SpillQueue::new(SPILL_JOBS.max((cfg.nr_conns * QUEUE_DEPTH * MAX_PAGES) as usize))?;
        let cache = if cfg.cache {
            Some(Cache::new(cfg.pages)?)
        } else {
            None
        };
        let fills = FillQueue::new(if cfg.cache { FILL_SLOTS } else { 0 })?;
        Arc::pin_init(
            pin_init!(Self {
                cfg: settings,
                key,
                page_key,
                set,
                apps,
                cache,
                fills <- fills,
                extents,
                stored,
                stale,
                spilled,
                gates,
                gens,
                spill_on: spill.is_some(),
                spill <- new_mutex!(spill, "kclient:spill"),
                spill_q <- spill_q,
                repair <- new_mutex!(repair_slots, "kclient:repair"),
                repair_done <- new_condvar!("kclient:repair"),
                threads <- new_mutex!(KVec::new(), "kclient:threads"),
                stopping: AtomicBool::new(false),
                full_logged: AtomicBool::new(false),
                keepalive_seq: AtomicU64::new(1),
            }),
            GFP_KERNEL,
        )
    }

    /// The page bitmaps.
    pub(crate) fn map(&self) -> PageMap<'_> {
        PageMap {
            stored: &self.stored,
            stale: [&self.stale[0], &self.stale[1], &self.stale[2]],
        }
    }

    /// Starts every thread, then waits (bounded by `io_timeout_ms`) until some appliance is up.
    pub(crate) fn start(self: &Arc<Self>) -> Result {
        for app in self.apps.iter() {
            for conn in app.conns.iter() {
                let (c, cn) = (self.clone(), conn.clone());
                self.spawn(b"kclient-rx", conn.app, conn.idx, move || c.conn_main(&cn))?;
                let (c, cn) = (self.clone(), conn.clone());
                self.spawn(b"kclient-tx", conn.app, conn.idx, move || {
                    c.sender_main(&cn)
                })?;
            }
        }
        let c = self.clone();
        self.spawn(b"kclient-mon", 0, 0, move || c.monitor_main())?;
        let c = self.clone();
        if self.cache.is_some() {
            // Nothing is replicated on a cache: the repair slot carries fills instead.
            self.spawn(b"kclient-fill", 0, 0, move || c.cache_fill_main())?;
        } else {
            self.spawn(b"kclient-repair", 0, 0, move || c.repair_main())?;
        }
        if self.spill_on {
            let c = self.clone();
            self.spawn(b"kclient-spill", 0, 0, move || c.spill_main())?;
        }
        let deadline = thread::now_ms() + u64::from(self.cfg.io_timeout_ms);
        while thread::now_ms() < deadline && !self.apps.iter().any(|a| a.is_up()) {
            thread::sleep_ms(20);
        }
        if !self.apps.iter().any(|a| a.is_up()) {
            return Err(crate::transport::econnrefused());
        }
        // Give the others a moment, so the first extents get all their replicas at once.
        let grace = thread::now_ms() + 2000;
        while thread::now_ms() < grace.min(deadline) && !self.apps.iter().all(|a| a.is_up()) {
            thread::sleep_ms(20);
        }
        Ok(())
    }

    fn spawn<F: FnOnce() + Send + 'static>(
        &self,
        prefix: &[u8],
        a: usize,
        b: usize,
        f: F,
    ) -> Result {
        let mut name = [0u8; 16];
        let n = fmt_name(&mut name, prefix, a, b);
        let name = CStr::from_bytes_with_nul(name.get(..n).ok_or(EINVAL)?)?;
        let t = KThread::spawn(name, f)?;
        self.threads.lock().push(t, GFP_KERNEL)?;
        Ok(())
    }

    /// Stops every thread and closes every connection. In-flight requests have completed (the disk
    /// is gone) or are failed by the receive threads on their way out.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        for app in self.apps.iter() {
            for conn in app.conns.iter() {
                conn.kick();
            }
        }
        self.repair_done.notify_all();
        let threads = core::mem::take(&mut *self.threads.lock());
        drop(threads);
    }

    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire) || thread::should_stop()
    }

    /// Connections up, and in all (for the counters).
    pub(crate) fn connections(&self) -> (u32, u32) {
        let up = self.apps.iter().map(|a| a.conns_up() as u32).sum();
        let all = self.apps.iter().map(|a| a.conns.len() as u32).sum();
        (up, all)
    }

    /// The replica set of `extent` (appliance index per slot, [`NO_APPLIANCE`] if empty), placing
    /// the extent (or filling its empty slots) among appliances up and not full when `place_now`.
    pub(crate) fn replica_set(&self, extent: usize, place_now: bool) -> [u8; MAX_REPLICAS] {
        let Some(word) = self.extents.get(extent) else {
            return [NO_APPLIANCE; MAX_REPLICAS];
        };
        let mut cur = word.load(Ordering::Acquire);
        let r = self.cfg.replicas as usize;
        loop {
            let set = unpack(cur);
            let missing = set.iter().take(r).any(|&a| a == NO_APPLIANCE);
            if cur & PLACED != 0 && (!missing || !place_now) {
                return set;
            }
            if !place_now {
                return [NO_APPLIANCE; MAX_REPLICAS];
            }
            // Candidates: up and not full, not already in the set.
            let mut cands = [(0u64, false); crate::logic::targets::MAX_TARGETS];
            for (i, a) in self.apps.iter().enumerate() {
                let taken = cur & PLACED != 0 && set.contains(&(i as u8));
                cands[i] = (
                    a.key.load(Ordering::Acquire),
                    a.is_up() && !a.is_full() && !taken,
                );
            }
            let cands = &cands[..self.apps.len()];
            let mut next = if cur & PLACED != 0 {
                set
            } else {
                [NO_APPLIANCE; MAX_REPLICAS]
            };
            let free = next.iter().take(r).filter(|&&a| a == NO_APPLIANCE).count();
            let picks = place(extent, cands, free);
            let mut filled: [bool; MAX_REPLICAS] = [false; MAX_REPLICAS];
            let mut pick = picks.iter().filter(|&&p| p != NO_APPLIANCE);
            for (slot, a) in next.iter_mut().enumerate().take(r) {
                if *a == NO_APPLIANCE {
                    if let Some(&p) = pick.next() {
                        *a = p;
                        filled[slot] = true;
                    }
                }
            }
            if filled.iter().all(|f| !f) && cur & PLACED != 0 {
                return set;
            }
            if next.iter().take(r).all(|&a| a == NO_APPLIANCE) {
                // Nowhere to put it (all down or full): not placed yet.
                return next;
            }
            match word.compare_exchange(
                cur,
                PLACED | pack(next),
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // A slot filled late holds none of the extent's pages: repair copies them.
                    if cur & PLACED != 0 {
                        for (slot, f) in filled.iter().enumerate() {
                            if *f {
                                self.mark_extent_stale(extent, slot as u8);
                            }
                        }
                    }
                    return next;
                }
                Err(c) => cur = c,
            }
        }
    }

    /// Every stored page of `extent` is stale on `slot` (its appliance lost or never had them).
    pub(crate) fn mark_extent_stale(&self, extent: usize, slot: u8) -> u64 {
        let start = extent as u64 * EXTENT_PAGES;
        let end = (start + EXTENT_PAGES).min(self.cfg.pages);
        self.map().mark_range_stale(slot, start..end)
    }

    /// Marks stale everything appliance `app` holds (its pool is gone); returns how many pages,
    /// and how many of them no other replica holds (lost).
    pub(crate) fn appliance_lost_everything(&self, app: usize) -> (u64, u64) {
        let mut pages = 0;
        for e in 0..self.extents.len() {
            let set = self.replica_set(e, false);
            for (slot, &a) in set.iter().enumerate() {
                if a as usize == app {
                    pages += self.mark_extent_stale(e, slot as u8);
                }
            }
        }
        (pages, self.unreadable_pages())
    }

    /// Stored pages no replica holds a current copy of (and not on the spill device).
    pub(crate) fn unreadable_pages(&self) -> u64 {
        let map = self.map();
        let mut n = 0;
        for e in 0..self.extents.len() {
            let set = self.replica_set(e, false);
            let start = e as u64 * EXTENT_PAGES;
            let end = (start + EXTENT_PAGES).min(self.cfg.pages);
            for w in (start / 64)..end.div_ceil(64) {
                let i = w as usize;
                let stored = self.stored.get(i).map_or(0, |x| x.load(Ordering::Relaxed))
                    & !self.spilled.get(i).map_or(0, |x| x.load(Ordering::Relaxed));
                let mut readable = 0u64;
                for (slot, &a) in set.iter().enumerate() {
                    if a != NO_APPLIANCE {
                        readable |= !map.stale[slot]
                            .get(i)
                            .map_or(!0, |x| x.load(Ordering::Relaxed));
                    }
                }
                n += u64::from((stored & !readable).count_ones());
            }
        }
        n
    }

    /// Per appliance: stored pages it should hold, how many of those are stale, and extents with
    /// a stale or missing replica on it (for debugfs).
    pub(crate) fn appliance_pages(&self, app: usize) -> (u64, u64) {
        let map = self.map();
        let (mut held, mut stale) = (0, 0);
        for e in 0..self.extents.len() {
            let set = self.replica_set(e, false);
            for (slot, &a) in set.iter().enumerate() {
                if a as usize != app {
                    continue;
                }
                let start = e as u64 * EXTENT_PAGES;
                let end = (start + EXTENT_PAGES).min(self.cfg.pages);
                if let Some(cache) = &self.cache {
                    // A cache device's blocks held there: those a fill made readable.
                    held += (start..end)
                        .filter(|&p| cache.state(p).is_some_and(|s| s.lookup().is_some()))
                        .count() as u64;
                    continue;
                }
                for w in (start / 64)..end.div_ceil(64) {
                    let i = w as usize;
                    let st = self.stored.get(i).map_or(0, |x| x.load(Ordering::Relaxed));
                    let sl = map.stale[slot]
                        .get(i)
                        .map_or(0, |x| x.load(Ordering::Relaxed));
                    held += u64::from((st & !sl).count_ones());
                    stale += u64::from((st & sl).count_ones());
                }
            }
        }
        (held, stale)
    }

    /// Extents with fewer current replicas than configured (a slot empty or with stale pages).
    pub(crate) fn degraded_extents(&self) -> u64 {
        let map = self.map();
        let r = self.cfg.replicas as usize;
        let mut n = 0;
        for e in 0..self.extents.len() {
            let set = self.replica_set(e, false);
            if set[0] == NO_APPLIANCE {
                continue;
            }
            let start = e as u64 * EXTENT_PAGES;
            let end = (start + EXTENT_PAGES).min(self.cfg.pages);
            let degraded = set.iter().take(r).enumerate().any(|(slot, &a)| {
                a == NO_APPLIANCE || map.next_stale(slot as u8, start, end).is_some()
            });
            n += u64::from(degraded);
        }
        n
    }

    /// Replaces the target list (runtime write of `remote_target`): an appliance at a position
    /// whose address changed is replaced (a new pool there; repair copies its pages from the other
    /// replicas); appliances beyond the new list are retired and their extents re-placed. Adding
    /// appliances needs a reload (`EINVAL`).
    pub(crate) fn set_targets(&self, targets: Targets) -> Result {
        if targets.len() > self.apps.len() {
            pr_err!("remote_target: adding appliances needs a reload of kclient\n");
            return Err(EINVAL);
        }
        for (i, app) in self.apps.iter().enumerate() {
            match targets.as_slice().get(i) {
                Some(&addr) if addr == app.addr() && app.state() != State::Retired => {}
                Some(&addr) => {
                    pr_warn!(
                        "appliance {} replaced by {}: its pages are copied to it from the other replicas\n",
                        Addr(app.addr()),
                        Addr(addr)
                    );
                    app.retarget(addr);
                    let (pages, lost) = self.appliance_lost_everything(i);
                    pr_info!("{} pages to repair, {} with no other copy\n", pages, lost);
                }
                None if app.state() != State::Retired => {
                    pr_warn!("appliance {} retired\n", Addr(app.addr()));
                    app.set_state(State::Retired);
                    for c in app.conns.iter() {
                        c.kick();
                    }
                    self.replace_retired(i);
                }
                None => {}
            }
        }
        Ok(())
    }

    /// Moves every extent slot on retired appliance `app` to another appliance (stale there).
    fn replace_retired(&self, app: usize) {
        for e in 0..self.extents.len() {
            let Some(word) = self.extents.get(e) else {
                continue;
            };
            let mut cur = word.load(Ordering::Acquire);
            loop {
                let mut set = unpack(cur);
                let Some(slot) = set.iter().position(|&a| a as usize == app) else {
                    break;
                };
                set[slot] = NO_APPLIANCE;
                match word.compare_exchange(
                    cur,
                    PLACED | pack(set),
                    Ordering::AcqRel,
                    Ordering::Acquire,
                ) {
                    Ok(_) => {
                        // Refilled (and marked stale) at the next placement of the extent.
                        self.mark_extent_stale(e, slot as u8);
                        let _ = self.replica_set(e, true);
                        break;
                    }
                    Err(c) => cur = c,
                }
            }
        }
    }

    /// Sends DESTROY_POOL to every appliance we have a pool on, waiting (bounded) for answers.
    pub(crate) fn destroy_pools(&self) {
        for app in self.apps.iter() {
            let Some(pool) = app.pool.lock().id else {
                continue;
            };
            let Some(conn) = app.conns.iter().find(|c| c.is_up()) else {
                continue;
            };
            conn.control_status.store(u32::MAX, Ordering::Release);
            if conn.queue.push(SendItem::DestroyPool(pool)).is_err() {
                continue;
            }
            let deadline = thread::now_ms() + u64::from(self.cfg.io_timeout_ms.min(2000));
            while conn.control_status.load(Ordering::Acquire) == u32::MAX
                && thread::now_ms() < deadline
            {
                thread::sleep_ms(10);
            }
            match conn.control_status.load(Ordering::Acquire) {
                0 => pr_info!("destroyed pool {} on {}\n", pool, Addr(app.addr())),
                u32::MAX => pr_warn!("no answer to DESTROY_POOL on {}\n", Addr(app.addr())),
                st => pr_warn!(
                    "DESTROY_POOL on {} failed: status {}\n",
                    Addr(app.addr()),
                    st
                ),
            }
        }
    }

    /// The failure detector: resets connections that owe answers for `down_after_ms`, sends
    /// keepalives on idle ones, and keeps each appliance's state.
    fn monitor_main(&self) {
        let tick = 100u32.min(self.cfg.keepalive_ms / 2).max(10);
        while !self.stopping() {
            thread::sleep_ms(tick);
            let now = thread::now_ms();
            let stalled = self.stalled_conns(now);
            for app in self.apps.iter() {
                app.retry_if_full(now);
                for conn in app.conns.iter().filter(|c| c.is_up()) {
                    let bit = 1u128 << (app.idx * 16 + conn.idx);
                    let overdue =
                        stalled & bit != 0 || conn.keepalive_overdue(now, self.cfg.down_after_ms);
                    // Once per connection: a reset takes its receive thread a moment to notice.
                    if overdue && !conn.kicked.swap(true, Ordering::AcqRel) {
                        stats::inc(&STATS.stalls);
                        pr_warn!(
                            "{} connection {}: no answer for {} ms; resetting it\n",
                            Addr(app.addr()),
                            conn.idx,
                            self.cfg.down_after_ms
                        );
                        conn.kick();
                    } else if !overdue
                        && conn.owed.load(Ordering::Acquire) == 0
                        && now.saturating_sub(conn.last_active_ms.load(Ordering::Acquire))
                            >= u64::from(self.cfg.keepalive_ms)
                    {
                        let seq = self.keepalive_seq.fetch_add(1, Ordering::Relaxed);
                        if conn.queue.push(SendItem::Keepalive(seq)).is_ok() {
                            conn.keepalive_since_ms.store(now.max(1), Ordering::Release);
                        }
                        conn.last_active_ms.store(now, Ordering::Release);
                    }
                }
            }
        }
    }
}

impl Client {
    /// Connections (bit `app * 16 + conn`) that owe an answer for a request older than
    /// `down_after_ms` and made no progress for as long: stalled (or lying: replies that match
    /// nothing do not count as progress).
    fn stalled_conns(&self, now: u64) -> u128 {
        let after = self.cfg.down_after_ms;
        let mut stalled = 0u128;
        self.for_each_owed(|rq, _, _, c| {
            if rq.age_us() / 1000 >= u64::from(after) && c.is_up() && c.no_progress_for(now, after)
            {
                stalled |= 1u128 << (c.app * 16 + c.idx);
            }
        });
        stalled
    }
}

fn unpack(w: u32) -> [u8; MAX_REPLICAS] {
    [w as u8, (w >> 8) as u8, (w >> 16) as u8]
}

fn pack(s: [u8; MAX_REPLICAS]) -> u32 {
    u32::from(s[0]) | (u32::from(s[1]) << 8) | (u32::from(s[2]) << 16)
}

/// Writes "<prefix><a>.<b>\0" (single digits) into `buf`; returns the length with the NUL.
fn fmt_name(buf: &mut [u8; 16], prefix: &[u8], a: usize, b: usize) -> usize {
    let digits = [b'0' + (a % 10) as u8, b'.', b'0' + (b % 10) as u8];
    let mut n = 0;
    for &c in Iterator::chain(prefix.iter(), digits.iter()) {
        if n < buf.len() - 1 {
            buf[n] = c;
            n += 1;
        }
    }
    buf[n] = 0;
    n + 1
}
