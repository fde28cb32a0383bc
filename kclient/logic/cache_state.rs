//! The cache device's per-block state: which copy on the appliance, if any, may be read.
//!
//! `/dev/kcache0` keeps clean copies of the backing device's blocks in an ephemeral pool. The
//! copy of a block is stored under a key that carries the block's **generation**, which every
//! write changes (twice: when it starts and when the backing device completed it). So:
//!
//! - a background put (a *fill*) of contents read before a write can only land under an old
//!   generation's key, which no read asks for again: no ordering between puts, gets and the
//!   connections they take is needed;
//! - a fill takes its [`FillTicket`] (the generation) **before** it reads the backing device, and
//!   only while no write of the block is in flight; its put is marked readable
//!   ([`CacheState::commit_fill`]) only if the generation is still the ticket's. Contents read
//!   while the generation stays put are the block's contents, since no write was in flight.
//!
//! Invariant: the appliance's page under (block, generation `g`) holds the block's contents as
//! of the interval in which its generation was `g` with no write in flight, or nothing. A read
//! asks for the current generation (a hit is correct whether or not [`CacheState::lookup`] said
//! so), and asks at all only when the state says a fill committed (a miss costs a round trip).
//!
//! Word layout (one `u32` per block: 1 MiB of RAM per GiB of backing device): bit 0 readable,
//! bits 1-7 writes in flight, bits 8-31 generation (wraps after 2^23 writes of one block; a fill
//! would have to stay between ticket and commit for that many writes to be fooled).

use super::sync::atomic::{AtomicU32, Ordering};

const VALID: u32 = 1;
const WRITER_ONE: u32 = 1 << 1;
const WRITERS_MASK: u32 = 0x7f << 1;
const GEN_ONE: u32 = 1 << 8;
const GEN_SHIFT: u32 = 8;

/// What a fill saw before it read the backing device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FillTicket(u32);

impl FillTicket {
    /// The generation the fill's copy is stored under.
    pub fn gen(self) -> u32 {
        self.0 >> GEN_SHIFT
    }
}

/// A write's view of the block when it began, for [`CacheState::end_write`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteStart(u32);

impl WriteStart {
    /// As a plain word, to carry in a queue ([`WriteStart::from_word`] gives it back).
    pub fn to_word(self) -> u32 {
        self.0
    }

    /// Back from [`WriteStart::to_word`].
    pub fn from_word(w: u32) -> WriteStart {
        WriteStart(w)
    }
}

/// One block's state.
pub struct CacheState(AtomicU32);

impl Default for CacheState {
    fn default() -> Self {
        CacheState::new()
    }
}

impl CacheState {
    /// Nothing cached, generation 0.
    pub fn new() -> CacheState {
        CacheState(AtomicU32::new(0))
    }

    /// The current generation: the key a read asks for.
    pub fn gen(&self) -> u32 {
        self.0.load(Ordering::Acquire) >> GEN_SHIFT
    }

    /// The generation to read if a committed fill says the appliance should have the block.
    pub fn lookup(&self) -> Option<u32> {
        let w = self.0.load(Ordering::Acquire);
        (w & VALID != 0).then_some(w >> GEN_SHIFT)
    }

    /// A write of the block starts (before it is sent to the backing device): nothing cached is
    /// readable any more and fills in progress will not commit. None if 127 writes of this one
    /// block are in flight already (the caller retries); else the start, and whether a cached
    /// copy was readable until now (an invalidation).
    pub fn begin_write(&self) -> Option<(WriteStart, bool)> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            if cur & WRITERS_MASK == WRITERS_MASK {
                return None;
            }
            let next = (cur & !VALID).wrapping_add(GEN_ONE) + WRITER_ONE;
            match self
                .0
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((WriteStart(next), cur & VALID != 0)),
                Err(c) => cur = c,
            }
        }
    }

    /// The backing device completed (or failed) the write begun with `start`. Returns a ticket
    /// for filling the cache with the written contents when this write was the only one in
    /// flight from its start to its end (then they are the block's contents).
    pub fn end_write(&self, start: WriteStart) -> Option<FillTicket> {
        let mut cur = self.0.load(Ordering::Acquire);
        loop {
            let next = (cur - WRITER_ONE).wrapping_add(GEN_ONE);
            match self
                .0
                .compare_exchange(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    // Alone: nobody began a write since ours (the generation moved by our end
                    // only) and none was in flight before it (one writer at our start).
                    let alone = cur == start.0 && start.0 & WRITERS_MASK == WRITER_ONE;
                    return alone.then_some(FillTicket(next));
                }
                Err(c) => cur = c,
            }
        }
    }

    /// A fill may read the backing device now (no write in flight): the ticket to store and
    /// commit its copy with.
    pub fn fill_ticket(&self) -> Option<FillTicket> {
        let w = self.0.load(Ordering::Acquire);
        (w & WRITERS_MASK == 0).then_some(FillTicket(w & !VALID))
    }

    /// The fill's copy is on the appliance: readable from now on if no write began since its
    /// ticket. True if it is (or already was).
    pub fn commit_fill(&self, ticket: FillTicket) -> bool {
        match self.0.compare_exchange(
            ticket.0,
            ticket.0 | VALID,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => true,
            Err(cur) => cur == ticket.0 | VALID,
        }
    }

    /// A read of generation `gen` missed (evicted, or the appliance lost the pool): not worth
    /// asking again until a fill commits.
    pub fn missed(&self, gen: u32) {
        let valid = (gen << GEN_SHIFT) | VALID;
        let _ = self
            .0
            .compare_exchange(valid, valid & !VALID, Ordering::AcqRel, Ordering::Acquire);
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_fill_without_writes_commits_and_is_read_at_its_generation() {
        let s = CacheState::new();
        assert_eq!(s.lookup(), None);
        let t = s.fill_ticket().expect("no write in flight");
        assert!(s.commit_fill(t));
        assert_eq!(s.lookup(), Some(t.gen()));
        assert!(s.commit_fill(t), "a second fill of the same contents");
        s.missed(t.gen());
        assert_eq!(s.lookup(), None, "evicted: not asked again");
        assert_eq!(s.gen(), t.gen());
    }

    #[test]
    fn a_write_makes_the_cached_copy_unreadable_and_moves_the_key() {
        let s = CacheState::new();
        let t = s.fill_ticket().unwrap();
        assert!(s.commit_fill(t));
        let (w, invalidated) = s.begin_write().unwrap();
        assert!(invalidated);
        assert_eq!(s.lookup(), None);
        assert_ne!(s.gen(), t.gen());
        assert_eq!(s.fill_ticket(), None, "no fill while a write is in flight");
        let after = s.end_write(w).expect("alone");
        assert_ne!(after.gen(), t.gen());
        assert!(s.commit_fill(after));
        assert_eq!(s.lookup(), Some(after.gen()));
    }

    #[test]
    fn a_fill_ticketed_before_a_write_never_commits() {
        let s = CacheState::new();
        let t = s.fill_ticket().unwrap();
        let w = s.begin_write().unwrap().0;
        assert!(!s.commit_fill(t), "during the write");
        let _ = s.end_write(w);
        assert!(!s.commit_fill(t), "after the write");
        assert_eq!(s.lookup(), None);
    }

    #[test]
    fn overlapping_writes_fill_nothing() {
        let s = CacheState::new();
        let a = s.begin_write().unwrap().0;
        let b = s.begin_write().unwrap().0;
        assert_eq!(s.end_write(a), None, "b still in flight");
        assert_eq!(s.end_write(b), None, "a was in flight at b's start");
        let c = s.begin_write().unwrap().0;
        assert!(s.end_write(c).is_some(), "alone again");
    }

    #[test]
    fn a_miss_of_an_older_generation_keeps_a_newer_commit() {
        let s = CacheState::new();
        let old = s.fill_ticket().unwrap();
        let w = s.begin_write().unwrap().0;
        let new = s.end_write(w).unwrap();
        assert!(s.commit_fill(new));
        s.missed(old.gen());
        assert_eq!(s.lookup(), Some(new.gen()));
    }

    #[test]
    fn writers_are_bounded_and_generations_wrap() {
        let s = CacheState::new();
        let starts: [WriteStart; 127] = core::array::from_fn(|_| s.begin_write().unwrap().0);
        assert_eq!(s.begin_write(), None);
        for w in starts {
            let _ = s.end_write(w);
        }
        assert!(s.fill_ticket().is_some());
        for _ in 0..(1 << 23) {
            let w = s.begin_write().unwrap().0;
            let _ = s.end_write(w);
        }
        assert_eq!(s.gen(), (254 + (2u32 << 23)) & 0xff_ffff);
        assert!(s.fill_ticket().is_some());
    }
}
