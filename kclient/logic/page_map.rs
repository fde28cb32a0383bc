//! Per-page facts kept in client memory, one bit each in words of 64 pages: whether a page is
//! stored at all (reads of other pages are zeros, answered locally), and, per replica slot,
//! whether that replica's copy is stale (missed a write while it was down, lost its pool, or its
//! last write of the page failed). A read never goes to a replica whose copy is stale; repair
//! clears the bit once the replica has the page again.
//!
//! Memory: (1 + replicas) bits per page: 96 KiB per GiB of swap with 2 replicas.

use super::request::MAX_REPLICAS;
use super::sync::atomic::{AtomicU64, Ordering};

/// Bit maps over a device's pages, on words the caller allocates ([`PageMap::words_for`] each).
pub struct PageMap<'a> {
    /// Pages stored (written and not discarded).
    pub stored: &'a [AtomicU64],
    /// Per replica slot: that replica's copy is stale.
    pub stale: [&'a [AtomicU64]; MAX_REPLICAS],
}

fn get(words: &[AtomicU64], page: u64) -> bool {
    words
        .get((page / 64) as usize)
        .is_some_and(|w| w.load(Ordering::Acquire) & (1 << (page % 64)) != 0)
}

fn set(words: &[AtomicU64], page: u64, on: bool) -> bool {
    let Some(w) = words.get((page / 64) as usize) else {
        return false;
    };
    let bit = 1u64 << (page % 64);
    let prev = if on {
        w.fetch_or(bit, Ordering::AcqRel)
    } else {
        w.fetch_and(!bit, Ordering::AcqRel)
    };
    prev & bit != 0
}

impl PageMap<'_> {
    /// Words needed for `pages` pages.
    pub fn words_for(pages: u64) -> usize {
        pages.div_ceil(64) as usize
    }

    /// Whether `page` holds data (somewhere).
    pub fn is_stored(&self, page: u64) -> bool {
        get(self.stored, page)
    }

    /// Records that `page` holds data, or not (discarded).
    pub fn set_stored(&self, page: u64, on: bool) {
        set(self.stored, page, on);
    }

    /// Whether replica `slot`'s copy of `page` is stale.
    pub fn is_stale(&self, slot: u8, page: u64) -> bool {
        self.stale.get(slot as usize).is_some_and(|w| get(w, page))
    }

    /// Marks replica `slot`'s copy of `page` stale or current; returns the previous state.
    pub fn set_stale(&self, slot: u8, page: u64, on: bool) -> bool {
        self.stale
            .get(slot as usize)
            .is_some_and(|w| set(w, page, on))
    }

    /// Marks every stored page in `pages` stale on replica `slot` (it lost them); returns how
    /// many.
    pub fn mark_range_stale(&self, slot: u8, pages: core::ops::Range<u64>) -> u64 {
        let mut n = 0;
        for page in pages {
            if self.is_stored(page) && !self.set_stale(slot, page, true) {
                n += 1;
            }
        }
        n
    }

    /// The first page at or after `from` and before `end` that is stored and stale on `slot`.
    pub fn next_stale(&self, slot: u8, from: u64, end: u64) -> Option<u64> {
        let stale = self.stale.get(slot as usize)?;
        let mut page = from;
        while page < end {
            let i = (page / 64) as usize;
            let word = stale.get(i)?.load(Ordering::Acquire)
                & self.stored.get(i)?.load(Ordering::Acquire)
                & (!0u64 << (page % 64));
            if word != 0 {
                let found = i as u64 * 64 + u64::from(word.trailing_zeros());
                return (found < end).then_some(found);
            }
            page = (i as u64 + 1) * 64;
        }
        None
    }
}
