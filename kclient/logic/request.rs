//! The life of one block request, kernel-free: who may touch it, when it completes, with what
//! status, and which replica still owes an answer for each of its pages.
//!
//! Several threads drive a request at once: the submitter, the receive threads of every
//! connection it went out on, the failure detector, blk-mq's timeout handler. The rules:
//!
//! - **Users.** A thread touches a request (copies into or out of its pages) only while it holds
//!   a use: [`RequestState::acquire`] adds one while the request is active, of the expected
//!   generation, and not finished; [`RequestState::release`] drops it.
//! - **Finishing.** The last page answered, a failure, or a timeout *finishes* the request
//!   (sets DONE, once). A failure's status is stored **before** DONE, so whoever completes the
//!   request sees it (completing with "OK" a request meant to fail was a bug of the earlier code).
//! - **Completing.** Whoever drops the last use of a DONE request, or finishes one that has no
//!   users, completes it: exactly once, and never while another thread still copies its data.
//! - **Parts and replicas.** A request is cut into parts (pages). A write part awaits an answer
//!   from every replica it was sent to and succeeds when all answered and at least one stored it;
//!   a read part awaits one replica at a time and may be retried on another. An answer for a part
//!   from a replica that does not owe one (a duplicate, a forgery) is refused.
//!
//! The kernel module compiles this file into `kclient.ko`; the host crate `kclient-logic`
//! compiles the same file and checks every interleaving of these operations with `loom`.

use super::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

/// Most parts (pages) one request may have (a 1 MiB request).
pub const MAX_PARTS: usize = 256;
/// Most replicas of a page.
pub const MAX_REPLICAS: usize = 3;
/// Generations are 20 bits, so (generation, replica, queue, tag, pages) fits a wire request id
/// (see `wire_id`).
pub const GEN_MASK: u32 = 0x000f_ffff;

const USERS_MASK: u64 = 0x3fff_ffff;
const DONE: u64 = 1 << 30;
const ACTIVE: u64 = 1 << 31;
const GEN_SHIFT: u32 = 32;

/// Part byte: replicas that still owe an answer (bits 0-2).
const AWAIT_MASK: u8 = 0b0000_0111;
/// Part byte: replicas that answered OK (writes) or were tried (reads) (bits 3-5).
const SEEN_SHIFT: u32 = 3;
/// Part byte: the part is finished (answered, locally done, or failed).
const FINISHED: u8 = 1 << 6;
/// Part byte: the part was sent again once after its connections were lost (see
/// [`RequestState::resend_write`]); never a second time, so a resend cannot loop.
const RESENT: u8 = 1 << 7;

/// What an answer did to its part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartOutcome {
    /// That replica did not owe an answer for that part (duplicate, forged, or out of range).
    Unexpected,
    /// Recorded; other replicas still owe answers for this part.
    Waiting,
    /// The part is finished successfully.
    Done,
    /// Every replica failed this part (writes), or a read failed and was not retried yet:
    /// [`RequestState::retry_read`] or [`RequestState::fail_part`] decides.
    Failed,
}

/// The shared state of one request (lives in blk-mq's per-request data).
pub struct RequestState {
    state: AtomicU64,
    status: AtomicU32,
    remaining: AtomicU32,
    parts: [AtomicU8; MAX_PARTS],
    nparts: AtomicU32,
}

impl Default for RequestState {
    fn default() -> Self {
        RequestState::new()
    }
}

impl RequestState {
    /// An idle request.
    pub fn new() -> RequestState {
        RequestState {
            state: AtomicU64::new(0),
            status: AtomicU32::new(0),
            remaining: AtomicU32::new(0),
            parts: core::array::from_fn(|_| AtomicU8::new(0)),
            nparts: AtomicU32::new(0),
        }
    }

    /// Starts the request as generation `gen` with `parts` parts (at most [`MAX_PARTS`]); the
    /// caller (the submitter) holds the first use.
    pub fn start(&self, gen: u32, parts: u32) {
        let parts = parts.min(MAX_PARTS as u32);
        for p in &self.parts[..parts as usize] {
            p.store(0, Ordering::Relaxed);
        }
        self.nparts.store(parts, Ordering::Relaxed);
        self.remaining.store(parts, Ordering::Relaxed);
        self.status.store(0, Ordering::Relaxed);
        self.state.store(
            (u64::from(gen & GEN_MASK) << GEN_SHIFT) | ACTIVE | 1,
            Ordering::Release,
        );
    }

    /// Sets the number of parts (at most [`MAX_PARTS`]) of a request started with none, before any
    /// part is sent (until then only the submitter touches parts; other threads may hold uses).
    pub fn set_parts(&self, parts: u32) {
        let parts = parts.min(MAX_PARTS as u32);
        for p in &self.parts[..parts as usize] {
            p.store(0, Ordering::Relaxed);
        }
        self.remaining.store(parts, Ordering::Relaxed);
        self.nparts.store(parts, Ordering::Release);
    }

    /// The request's generation.
    pub fn gen(&self) -> u32 {
        (self.state.load(Ordering::Acquire) >> GEN_SHIFT) as u32
    }

    /// Number of parts.
    pub fn parts(&self) -> u32 {
        self.nparts.load(Ordering::Acquire)
    }

    /// Adds a use if the request is active, not finished, and of generation `gen` (any
    /// generation for `None`). A reply for an older incarnation of the tag fails here.
    pub fn acquire(&self, gen: Option<u32>) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            // `map_or`, not `is_none_or`: the kernel's minimum Rust predates it.
            #[allow(clippy::unnecessary_map_or)]
            let gen_ok = gen.map_or(true, |g| (s >> GEN_SHIFT) as u32 == g & GEN_MASK);
            if !gen_ok || s & ACTIVE == 0 || s & DONE != 0 || s & USERS_MASK == USERS_MASK {
                return false;
            }
            match self
                .state
                .compare_exchange(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return true,
                Err(cur) => s = cur,
            }
        }
    }

    /// Drops a use. True: the caller dropped the last use of a finished request and must
    /// complete it now ([`RequestState::complete`]).
    #[must_use]
    pub fn release(&self) -> bool {
        let prev = self.state.fetch_sub(1, Ordering::AcqRel);
        prev & USERS_MASK == 1 && prev & DONE != 0
    }

    /// Finishes the request: `Some(code)` (non-zero) fails it, `None` succeeds it unless a failure
    /// was recorded. Only the first finish counts. True: nobody holds a use, so the caller must
    /// complete it now.
    #[must_use]
    pub fn finish(&self, failure: Option<u8>) -> bool {
        let mut s = self.state.load(Ordering::Acquire);
        if s & ACTIVE == 0 || s & DONE != 0 {
            return false;
        }
        if let Some(code) = failure {
            // Before DONE: whoever completes must see it. The first failure wins.
            let _ = self.status.compare_exchange(
                0,
                u32::from(code.max(1)),
                Ordering::AcqRel,
                Ordering::Acquire,
            );
        }
        loop {
            if s & ACTIVE == 0 || s & DONE != 0 {
                return false;
            }
            match self
                .state
                .compare_exchange(s, s | DONE, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return s & USERS_MASK == 0,
                Err(cur) => s = cur,
            }
        }
    }

    /// Called once by whoever must complete the request: makes it inactive (nothing can
    /// acquire it any more) and returns its status (0 = success).
    pub fn complete(&self) -> u8 {
        let s = self.state.load(Ordering::Acquire);
        self.state
            .store(s & !(ACTIVE | USERS_MASK), Ordering::Release);
        self.status.load(Ordering::Acquire) as u8
    }

    /// Whether the request is started and not finished.
    pub fn in_flight(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        s & ACTIVE != 0 && s & DONE == 0
    }

    fn part(&self, part: u32) -> Option<&AtomicU8> {
        if part >= self.nparts.load(Ordering::Acquire) {
            return None;
        }
        self.parts.get(part as usize)
    }

    /// A part sent to the replicas in `slots` (bit per replica slot) as a write or discard.
    pub fn await_all(&self, part: u32, slots: u8) {
        if let Some(p) = self.part(part) {
            p.store(slots & AWAIT_MASK, Ordering::Release);
        }
    }

    /// A read part sent to replica `slot`; false if that replica was tried already for it (or
    /// the part is finished).
    pub fn await_read(&self, part: u32, slot: u8) -> bool {
        let Some(p) = self.part(part) else {
            return false;
        };
        let bit = 1u8 << (slot & 3);
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if cur & FINISHED != 0 || cur & (bit << SEEN_SHIFT) != 0 || cur & AWAIT_MASK != 0 {
                return false;
            }
            let next = cur | bit | (bit << SEEN_SHIFT);
            match p.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Replicas that still owe an answer for `part` (bit per slot).
    pub fn awaiting(&self, part: u32) -> u8 {
        self.part(part)
            .map_or(0, |p| p.load(Ordering::Acquire) & AWAIT_MASK)
    }

    /// Replicas already tried for a read part (bit per slot).
    pub fn tried(&self, part: u32) -> u8 {
        self.part(part).map_or(0, |p| {
            (p.load(Ordering::Acquire) >> SEEN_SHIFT) & AWAIT_MASK
        })
    }

    /// A write or discard answer from replica `slot` for `part`.
    pub fn answer_write(&self, part: u32, slot: u8, ok: bool) -> PartOutcome {
        self.answer(part, slot, |cur, bit| {
            let awaiting = cur & AWAIT_MASK & !bit;
            let stored = ((cur >> SEEN_SHIFT) & AWAIT_MASK) | if ok { bit } else { 0 };
            let next = awaiting | (stored << SEEN_SHIFT) | (cur & RESENT);
            match (awaiting, stored) {
                (0, 0) => (next | FINISHED, PartOutcome::Failed),
                (0, _) => (next | FINISHED, PartOutcome::Done),
                _ => (next, PartOutcome::Waiting),
            }
        })
    }

    /// A read answer from replica `slot` for `part`. A failed read leaves the part open for
    /// [`RequestState::await_read`] on another replica or [`RequestState::fail_part`].
    pub fn answer_read(&self, part: u32, slot: u8, ok: bool) -> PartOutcome {
        self.answer(part, slot, |cur, bit| {
            let next = cur & !bit;
            if ok {
                (next | FINISHED, PartOutcome::Done)
            } else {
                (next, PartOutcome::Failed)
            }
        })
    }

    fn answer(
        &self,
        part: u32,
        slot: u8,
        step: impl Fn(u8, u8) -> (u8, PartOutcome),
    ) -> PartOutcome {
        let Some(p) = self.part(part) else {
            return PartOutcome::Unexpected;
        };
        let bit = 1u8 << (slot & 3);
        if bit & AWAIT_MASK == 0 {
            return PartOutcome::Unexpected;
        }
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if cur & FINISHED != 0 || cur & bit == 0 {
                return PartOutcome::Unexpected;
            }
            let (next, outcome) = step(cur, bit);
            match p.compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return outcome,
                Err(c) => cur = c,
            }
        }
    }

    /// A part answered without a replica (a read of a page never stored: zeros). False if the
    /// part was answered already.
    pub fn local_part(&self, part: u32) -> bool {
        let Some(p) = self.part(part) else {
            return false;
        };
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if cur & FINISHED != 0 || cur & AWAIT_MASK != 0 {
                return false;
            }
            match p.compare_exchange(cur, cur | FINISHED, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// A write part that failed on every replica (the outcome [`PartOutcome::Failed`] went to
    /// this caller, so nobody else touches the part) because their connections were lost, not
    /// because they refused it: reopens it once, awaiting `slots`. False if it was resent before.
    pub fn resend_write(&self, part: u32, slots: u8) -> bool {
        self.reopen(part, |cur| {
            (cur & FINISHED != 0 && (cur >> SEEN_SHIFT) & AWAIT_MASK == 0)
                .then_some(slots & AWAIT_MASK)
        })
    }

    /// A read part that every replica failed because their connections were lost: forgets which
    /// replicas were tried, once, so [`RequestState::await_read`] may try them again.
    pub fn resend_read(&self, part: u32) -> bool {
        self.reopen(part, |cur| {
            (cur & FINISHED == 0 && cur & AWAIT_MASK == 0).then_some(0)
        })
    }

    fn reopen(&self, part: u32, next: impl Fn(u8) -> Option<u8>) -> bool {
        let Some(p) = self.part(part) else {
            return false;
        };
        let mut cur = p.load(Ordering::Acquire);
        loop {
            if cur & RESENT != 0 {
                return false;
            }
            let Some(n) = next(cur) else {
                return false;
            };
            match p.compare_exchange(cur, n | RESENT, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => return true,
                Err(c) => cur = c,
            }
        }
    }

    /// Gives up on an open read part (no replica left): marks it finished.
    pub fn fail_part(&self, part: u32) {
        if let Some(p) = self.part(part) {
            p.fetch_or(FINISHED, Ordering::AcqRel);
        }
    }

    /// One part succeeded. True when it was the last: the caller then finishes the request
    /// (`finish(None)`).
    pub fn part_done(&self) -> bool {
        self.remaining.fetch_sub(1, Ordering::AcqRel) == 1
    }
}
