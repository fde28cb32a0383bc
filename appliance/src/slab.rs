//! Size-class slab allocator for compressed pages.
//!
//! Memory comes in fixed [`SLAB_SIZE`] slabs, each cut into equal slots of one size class (multiples
//! of [`CLASS_STEP`] up to a page). A compressed page takes the smallest class that fits, so the bytes
//! a page costs are its compressed size rounded up to at most `CLASS_STEP - 1` more, unlike zbud's
//! fixed halves. Slabs are allocated whole and released when empty, so [`SlabAllocator::bytes_in_use`]
//! is exactly the memory the store holds for page data, and the budget check is exact.

use std::collections::BTreeSet;

/// Bytes per slab. Large enough that the tail left over after the last slot is < 1.6 % for any class.
pub const SLAB_SIZE: usize = 256 * 1024;

/// Granularity of size classes.
pub const CLASS_STEP: usize = 64;

/// Number of size classes (64, 128, ..., 4160 bytes: a page, or a page sealed by the client with
/// its AEAD tag).
pub const CLASS_COUNT: usize = protocol::MAX_PAGE_DATA.div_ceil(CLASS_STEP);

/// Where an allocation lives. Small and `Copy`, so index entries stay compact.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotHandle {
    slab: u32,
    slot: u16,
}

struct Slab {
    memory: Box<[u8]>,
    class: usize,
    free_slots: Vec<u16>,
}

impl Slab {
    fn slot_count(class: usize) -> usize {
        SLAB_SIZE / class_size(class)
    }
}

/// Slot size of class `class`.
pub fn class_size(class: usize) -> usize {
    (class + 1) * CLASS_STEP
}

/// The class that holds `len` bytes (`len` must be 1..=[`protocol::MAX_PAGE_DATA`]).
pub fn class_for(len: usize) -> usize {
    len.max(1).div_ceil(CLASS_STEP) - 1
}

/// Allocator over slabs, with a hard limit on how many bytes of slabs may exist.
pub struct SlabAllocator {
    slabs: Vec<Option<Slab>>,
    vacant_ids: Vec<u32>,
    /// Per class: slabs that have at least one free slot (lowest id first, which packs pages into
    /// older slabs and lets newer ones drain and be released).
    partial: Vec<BTreeSet<u32>>,
    live_slabs: usize,
}

impl Default for SlabAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl SlabAllocator {
    /// An empty allocator.
    pub fn new() -> Self {
        SlabAllocator {
            slabs: Vec::new(),
            vacant_ids: Vec::new(),
            partial: vec![BTreeSet::new(); CLASS_COUNT],
            live_slabs: 0,
        }
    }

    /// Bytes of slabs currently held.
    pub fn bytes_in_use(&self) -> usize {
        self.live_slabs * SLAB_SIZE
    }

    /// Extra bytes an allocation of `len` would take from the budget: 0 if a partial slab has room,
    /// else one slab.
    pub fn cost_of(&self, len: usize) -> usize {
        if self.partial[class_for(len)].is_empty() {
            SLAB_SIZE
        } else {
            0
        }
    }

    /// Allocates a slot for `len` bytes and copies `data` into it. The caller checks the budget with
    /// [`SlabAllocator::cost_of`] first.
    pub fn store(&mut self, data: &[u8]) -> SlotHandle {
        let class = class_for(data.len());
        let id = match self.partial[class].first() {
            Some(&id) => id,
            None => self.new_slab(class),
        };
        let Some(slab) = self.slabs[id as usize].as_mut() else {
            unreachable!("partial list names a released slab")
        };
        let slot = slab.free_slots.pop().expect("partial slab has a free slot");
        if slab.free_slots.is_empty() {
            self.partial[class].remove(&id);
        }
        let start = slot as usize * class_size(class);
        slab.memory[start..start + data.len()].copy_from_slice(data);
        SlotHandle { slab: id, slot }
    }

    fn new_slab(&mut self, class: usize) -> u32 {
        let count = Slab::slot_count(class);
        // Hand out low slots first (pop from the end).
        let free_slots = (0..count as u16).rev().collect();
        let slab = Slab {
            memory: vec![0u8; SLAB_SIZE].into_boxed_slice(),
            class,
            free_slots,
        };
        let id = match self.vacant_ids.pop() {
            Some(id) => {
                self.slabs[id as usize] = Some(slab);
                id
            }
            None => {
                self.slabs.push(Some(slab));
                (self.slabs.len() - 1) as u32
            }
        };
        self.live_slabs += 1;
        self.partial[class].insert(id);
        id
    }

    /// The first `len` bytes stored at `handle`.
    pub fn read(&self, handle: SlotHandle, len: usize) -> &[u8] {
        let slab = self.slabs[handle.slab as usize]
            .as_ref()
            .expect("live handle");
        let start = handle.slot as usize * class_size(slab.class);
        &slab.memory[start..start + len]
    }

    /// Frees a slot; releases its slab when it becomes empty.
    pub fn free(&mut self, handle: SlotHandle) {
        let Some(slab) = self.slabs[handle.slab as usize].as_mut() else {
            unreachable!("double free of a slab slot")
        };
        let class = slab.class;
        slab.free_slots.push(handle.slot);
        if slab.free_slots.len() == Slab::slot_count(class) {
            self.partial[class].remove(&handle.slab);
            self.slabs[handle.slab as usize] = None;
            self.vacant_ids.push(handle.slab);
            self.live_slabs -= 1;
        } else {
            self.partial[class].insert(handle.slab);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_cover_every_length() {
        assert_eq!(class_for(1), 0);
        assert_eq!(class_for(64), 0);
        assert_eq!(class_for(65), 1);
        assert_eq!(class_for(4096), 63);
        assert_eq!(class_for(protocol::MAX_PAGE_DATA), CLASS_COUNT - 1);
        for len in 1..=4096 {
            let c = class_for(len);
            assert!(class_size(c) >= len && class_size(c) - len < CLASS_STEP);
        }
    }

    #[test]
    fn store_read_free_and_release() {
        let mut a = SlabAllocator::new();
        let mut handles = Vec::new();
        for i in 0..10_000usize {
            let len = 1 + (i * 37) % 4096;
            let data: Vec<u8> = (0..len).map(|j| (i + j) as u8).collect();
            handles.push((a.store(&data), data));
        }
        for (h, data) in &handles {
            assert_eq!(a.read(*h, data.len()), &data[..]);
        }
        assert!(a.bytes_in_use() > 0);
        for (h, _) in handles {
            a.free(h);
        }
        assert_eq!(a.bytes_in_use(), 0, "empty slabs are released");
    }

    #[test]
    fn cost_is_a_slab_only_when_no_partial_slab() {
        let mut a = SlabAllocator::new();
        assert_eq!(a.cost_of(100), SLAB_SIZE);
        let h = a.store(&[1; 100]);
        assert_eq!(a.cost_of(100), 0);
        assert_eq!(a.cost_of(1000), SLAB_SIZE);
        a.free(h);
        assert_eq!(a.cost_of(100), SLAB_SIZE);
    }
}
