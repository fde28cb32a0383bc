//! One appliance of `remote_target`: its address, our pool on it, its connections, whether it is
//! up, full or being repaired, and its counters (shown per appliance in debugfs).

use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};

use kernel::prelude::*;
use kernel::sync::{new_mutex, Arc, Mutex};

use crate::conn::Conn;
use crate::logic::placement::appliance_key;
use crate::logic::targets::SocketAddr;

/// What the appliance looks like from here.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub(crate) enum State {
    /// No connection up.
    Down = 0,
    /// Up, and holds every page it should.
    Up = 1,
    /// Up, and repair is copying pages it missed.
    Repairing = 2,
    /// Removed from `remote_target`.
    Retired = 3,
}

impl State {
    pub(crate) fn name(self) -> &'static str {
        match self {
            State::Down => "down",
            State::Up => "up",
            State::Repairing => "repairing",
            State::Retired => "retired",
        }
    }
}

/// Our pool on the appliance.
pub(crate) struct Pool {
    /// `None` until created; then the id the appliance gave.
    pub(crate) id: Option<u32>,
}

/// One appliance.
#[pin_data]
pub(crate) struct Appliance {
    pub(crate) idx: usize,
    #[pin]
    addr: Mutex<SocketAddr>,
    /// Rendezvous key of the address (placement).
    pub(crate) key: AtomicU64,
    #[pin]
    pub(crate) pool: Mutex<Pool>,
    /// The pool id for the I/O path (valid while a connection is up).
    pub(crate) pool_id: AtomicU32,
    pub(crate) conns: KVec<Arc<Conn>>,
    state: AtomicU8,
    /// Refused a put for lack of room: no new extents, no writes, no repair copies go to it
    /// until the monitor lets it be tried again ([`FULL_RETRY_MS`]).
    pub(crate) full: AtomicBool,
    /// When it was last found full (ms).
    full_since_ms: AtomicU64,
    /// "is full" was logged (once per load).
    full_logged: AtomicBool,
    /// Smoothed read latency (µs), to prefer the replica that answers faster.
    pub(crate) read_latency_us: AtomicU32,
    /// Counters for debugfs.
    pub(crate) pages_repaired: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) downs: AtomicU64,
    pub(crate) pools_lost: AtomicU64,
    /// When it went down (ms), for the bounded wait of I/O that has no other replica.
    pub(crate) down_since_ms: AtomicU64,
}

/// How long a full appliance is left alone before a write is tried on it again.
pub(crate) const FULL_RETRY_MS: u64 = 30_000;

impl Appliance {
    pub(crate) fn new(
        idx: usize,
        addr: SocketAddr,
        nr_conns: u32,
        compress: bool,
    ) -> Result<Arc<Self>> {
        let mut conns = KVec::with_capacity(nr_conns as usize, GFP_KERNEL)?;
        for i in 0..nr_conns as usize {
            conns.push(Conn::new(idx, i, compress)?, GFP_KERNEL)?;
        }
        let key = appliance_key(addr.ip, addr.port);
        Arc::pin_init(
            pin_init!(Self {
                idx,
                addr <- new_mutex!(addr, "kclient:addr"),
                key: AtomicU64::new(key),
                pool <- new_mutex!(Pool { id: None }, "kclient:pool"),
                pool_id: AtomicU32::new(0),
                conns,
                state: AtomicU8::new(State::Down as u8),
                full: AtomicBool::new(false),
                full_since_ms: AtomicU64::new(0),
                full_logged: AtomicBool::new(false),
                read_latency_us: AtomicU32::new(0),
                pages_repaired: AtomicU64::new(0),
                write_failures: AtomicU64::new(0),
                downs: AtomicU64::new(0),
                pools_lost: AtomicU64::new(0),
                down_since_ms: AtomicU64::new(crate::thread::now_ms()),
            }),
            GFP_KERNEL,
        )
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        *self.addr.lock()
    }

    /// Points the appliance at a new address (a `remote_target` rewrite): a fresh pool there.
    pub(crate) fn retarget(&self, addr: SocketAddr) {
        *self.addr.lock() = addr;
        self.key
            .store(appliance_key(addr.ip, addr.port), Ordering::Release);
        self.pool.lock().id = None;
        self.full.store(false, Ordering::Release);
        if self.state() == State::Retired {
            self.set_state(State::Down);
        }
        for c in self.conns.iter() {
            c.kick();
        }
    }

    pub(crate) fn state(&self) -> State {
        match self.state.load(Ordering::Acquire) {
            1 => State::Up,
            2 => State::Repairing,
            3 => State::Retired,
            _ => State::Down,
        }
    }

    pub(crate) fn set_state(&self, s: State) {
        self.state.store(s as u8, Ordering::Release);
    }

    /// Up or repairing → down; false if it was not up (another connection of it got there
    /// first), so "is down" is said once.
    pub(crate) fn mark_down(&self) -> bool {
        [State::Up, State::Repairing].iter().any(|&from| {
            self.state
                .compare_exchange(
                    from as u8,
                    State::Down as u8,
                    Ordering::AcqRel,
                    Ordering::Acquire,
                )
                .is_ok()
        })
    }

    /// It refused a put for lack of room.
    pub(crate) fn set_full(&self) {
        if self.full.swap(true, Ordering::AcqRel) {
            return;
        }
        self.full_since_ms
            .store(crate::thread::now_ms(), Ordering::Release);
        if !self.full_logged.swap(true, Ordering::AcqRel) {
            pr_warn!(
                "appliance {} is full: writes and new extents go to the other appliances (or the \
                 spill device); tried again every {} s\n",
                Addr(self.addr()),
                FULL_RETRY_MS / 1000
            );
        }
    }

    pub(crate) fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Lets a full appliance be tried again once [`FULL_RETRY_MS`] have passed (it may have room
    /// after pages were discarded or overwritten).
    pub(crate) fn retry_if_full(&self, now: u64) {
        if self.is_full()
            && now.saturating_sub(self.full_since_ms.load(Ordering::Acquire)) >= FULL_RETRY_MS
        {
            self.full.store(false, Ordering::Release);
        }
    }

    /// Down → up; false if it was not down.
    pub(crate) fn mark_up(&self) -> bool {
        self.state
            .compare_exchange(
                State::Down as u8,
                State::Up as u8,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    }

    /// Up or repairing: writes go to it.
    pub(crate) fn is_up(&self) -> bool {
        matches!(self.state(), State::Up | State::Repairing)
    }

    /// Connections up.
    pub(crate) fn conns_up(&self) -> usize {
        self.conns.iter().filter(|c| c.is_up()).count()
    }

    /// The connection page `page` routes to (by stripe, so a page's operations keep their order).
    pub(crate) fn route(&self, page: u64) -> Option<&Arc<Conn>> {
        let n = self.conns.len();
        if n == 0 {
            return None;
        }
        self.conns
            .get(crate::logic::stripe_gate::stripe_of(page) % n)
    }

    /// Folds one read's latency into the average (1/8 weight).
    pub(crate) fn record_read_latency(&self, us: u32) {
        let old = self.read_latency_us.load(Ordering::Relaxed);
        let new = if old == 0 { us } else { old - old / 8 + us / 8 };
        self.read_latency_us.store(new.max(1), Ordering::Relaxed);
    }
}

/// `a.b.c.d:port` for log lines.
pub(crate) struct Addr(pub(crate) SocketAddr);

impl core::fmt::Display for Addr {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let ip = self.0.ip;
        write!(
            f,
            "{}.{}.{}.{}:{}",
            ip >> 24,
            (ip >> 16) & 0xff,
            (ip >> 8) & 0xff,
            ip & 0xff,
            self.0.port
        )
    }
}
