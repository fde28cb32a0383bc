//! The tmem store: pools of pages per client, kept compressed in a slab allocator under a hard budget.
//!
//! Semantics (RAMster/zcache): a put to an existing key replaces the page (and a failed duplicate put
//! removes the old one, so a later get never returns stale data); ephemeral pools are a cache — pages
//! are evicted oldest first when memory is needed, and a get removes the page; persistent pools keep
//! pages until flushed — a put that does not fit is refused with `NoSpace`, never dropped.
//!
//! All state sits behind one mutex; the expensive parts (checksums, compression, decompression) run in
//! the caller's thread outside it, so the critical sections are short map operations and memcpy.

use crate::codec::Stored;
use crate::slab::{class_for, class_size, SlabAllocator, SlotHandle};
use protocol::{PageKey, PoolKind, StatId, Status, MAX_PAGE_DATA, PAGE_SIZE, STAT_COUNT};
use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

/// Budget charged per stored page for its index entry (B-tree entry and, for ephemeral pages, its LRU
/// entry). An estimate of the maps' real cost; data bytes are exact.
pub const ENTRY_METADATA_BYTES: usize = 96;

/// Most pools one client may hold (bounds what a client can make us allocate).
pub const MAX_POOLS_PER_CLIENT: usize = 1024;

/// Limits and policies.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Hard limit on bytes for page data plus metadata.
    pub memory_limit: usize,
    /// Per-client limit (bytes, same accounting), if any.
    pub client_quota: Option<usize>,
    /// Pages whose LZ4 form is larger than this are stored raw.
    pub raw_threshold: usize,
}

#[derive(Clone, Copy)]
enum Data {
    Fill(u64),
    Lz4 { slot: SlotHandle, len: u16 },
    Raw { slot: SlotHandle },
    Sealed { slot: SlotHandle, len: u16 },
}

#[derive(Clone, Copy)]
struct Entry {
    data: Data,
    crc: u32,
    /// Position in the LRU (ephemeral pages only).
    lru: u64,
}

impl Entry {
    /// Budget this entry takes: its slot (exactly the slot size; slab tails are counted by the
    /// allocator as a whole) plus metadata.
    fn charge(&self) -> usize {
        ENTRY_METADATA_BYTES
            + match self.data {
                Data::Fill(_) => 0,
                Data::Lz4 { len, .. } | Data::Sealed { len, .. } => {
                    class_size(class_for(len as usize))
                }
                Data::Raw { .. } => PAGE_SIZE,
            }
    }

    fn stored_len(&self) -> usize {
        match self.data {
            Data::Fill(_) => 0,
            Data::Lz4 { len, .. } | Data::Sealed { len, .. } => len as usize,
            Data::Raw { .. } => PAGE_SIZE,
        }
    }
}

type PageId = ([u64; 3], u32);

struct Pool {
    owner: u64,
    kind: PoolKind,
    pages: BTreeMap<PageId, Entry>,
}

#[derive(Default)]
struct Counters {
    persistent_pages: u64,
    ephemeral_pages: u64,
    stored_bytes: u64,
    fill_pages: u64,
    raw_pages: u64,
    puts: u64,
    get_hits: u64,
    get_misses: u64,
    flushes: u64,
    evictions: u64,
    no_space: u64,
    quota: u64,
}

struct Inner {
    pools: HashMap<u32, Pool>,
    next_pool: u32,
    slabs: SlabAllocator,
    /// Ephemeral pages, oldest first: LRU sequence -> key.
    lru: BTreeMap<u64, PageKey>,
    next_lru: u64,
    /// Bytes charged per client (data slots + metadata).
    usage: HashMap<u64, usize>,
    pages: usize,
    counters: Counters,
}

/// Whether a get leaves the page it returns (from the request's flags).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GetMode {
    /// Remove a persistent page too (`GET_AND_FREE`: frontswap's exclusive load).
    pub and_free: bool,
    /// Leave an ephemeral page in place (`GET_KEEP`: a read cache's load); it becomes the most
    /// recently used. Without it an ephemeral get removes the page (cleancache's rule).
    pub keep: bool,
}

/// A page read out of the store: its stored form is copied into the caller's buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fetched {
    /// The page is this word repeated.
    Fill(u64),
    /// The first `len` bytes of the buffer are an LZ4 block.
    Lz4(usize),
    /// The buffer holds the raw page.
    Raw,
    /// The first `len` bytes of the buffer are a page sealed by its client.
    Sealed(usize),
}

/// The store. Cheap to share (`Arc<Store>`); every method takes `&self`.
pub struct Store {
    config: StoreConfig,
    inner: Mutex<Inner>,
}

impl Store {
    /// An empty store.
    pub fn new(config: StoreConfig) -> Store {
        Store {
            config,
            inner: Mutex::new(Inner {
                pools: HashMap::new(),
                next_pool: 1,
                slabs: SlabAllocator::new(),
                lru: BTreeMap::new(),
                next_lru: 1,
                usage: HashMap::new(),
                pages: 0,
                counters: Counters::default(),
            }),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-updated in a way that breaks
        // memory safety; keep serving rather than poisoning every connection.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Creates a pool owned by `client`.
    pub fn new_pool(&self, client: u64, kind: PoolKind) -> Result<u32, Status> {
        let mut s = self.lock();
        let owned = s.pools.values().filter(|p| p.owner == client).count();
        if owned >= MAX_POOLS_PER_CLIENT {
            return Err(Status::QuotaExceeded);
        }
        let mut id = s.next_pool;
        while id == 0 || s.pools.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        s.next_pool = id.wrapping_add(1);
        s.pools.insert(
            id,
            Pool {
                owner: client,
                kind,
                pages: BTreeMap::new(),
            },
        );
        Ok(id)
    }

    /// Destroys a pool and frees its pages.
    pub fn destroy_pool(&self, client: u64, pool: u32) -> Result<(), Status> {
        let mut s = self.lock();
        s.pool(client, pool)?;
        let removed = s.pools.remove(&pool).map(|p| p.pages).unwrap_or_default();
        for entry in removed.into_values() {
            s.release(client, entry);
            s.counters.flushes += 1;
        }
        Ok(())
    }

    /// Stores a page (already validated by the codec) with its CRC.
    pub fn put(
        &self,
        client: u64,
        key: PageKey,
        stored: Stored<'_>,
        crc: u32,
    ) -> Result<(), Status> {
        let mut s = self.lock();
        let kind = s.pool(client, key.pool)?.kind;
        // A duplicate put replaces: drop the old page first so it can never be returned stale,
        // even if storing the new one fails.
        s.remove_page(client, key);
        let data_len = stored.data().len();
        let charge = ENTRY_METADATA_BYTES
            + match stored {
                Stored::Fill(_) => 0,
                _ => class_size(class_for(data_len)),
            };
        if let Some(quota) = self.config.client_quota {
            if s.usage.get(&client).copied().unwrap_or(0) + charge > quota {
                s.counters.quota += 1;
                return Err(Status::QuotaExceeded);
            }
        }
        // Make room: evict the oldest ephemeral pages until the new page fits the budget.
        loop {
            let extra = match stored {
                Stored::Fill(_) => 0,
                _ => s.slabs.cost_of(data_len),
            };
            if s.bytes_used() + extra + ENTRY_METADATA_BYTES <= self.config.memory_limit {
                break;
            }
            if !s.evict_oldest() {
                s.counters.no_space += 1;
                return Err(Status::NoSpace);
            }
        }
        let data = match stored {
            Stored::Fill(word) => Data::Fill(word),
            Stored::Lz4(bytes) => Data::Lz4 {
                slot: s.slabs.store(bytes),
                len: bytes.len() as u16,
            },
            Stored::Raw(bytes) => Data::Raw {
                slot: s.slabs.store(bytes),
            },
            Stored::Sealed(bytes) => Data::Sealed {
                slot: s.slabs.store(bytes),
                len: bytes.len() as u16,
            },
        };
        let lru = if kind == PoolKind::Ephemeral {
            let seq = s.next_lru;
            s.next_lru += 1;
            s.lru.insert(seq, key);
            seq
        } else {
            0
        };
        let entry = Entry { data, crc, lru };
        *s.usage.entry(client).or_insert(0) += entry.charge();
        s.pages += 1;
        let c = &mut s.counters;
        c.stored_bytes += entry.stored_len() as u64;
        match data {
            Data::Fill(_) => c.fill_pages += 1,
            Data::Raw { .. } => c.raw_pages += 1,
            Data::Lz4 { .. } | Data::Sealed { .. } => {}
        }
        match kind {
            PoolKind::Persistent => c.persistent_pages += 1,
            PoolKind::Ephemeral => c.ephemeral_pages += 1,
        }
        c.puts += 1;
        if let Some(pool) = s.pools.get_mut(&key.pool) {
            pool.pages.insert((key.object, key.index), entry);
        }
        Ok(())
    }

    /// Reads a page into `out`; returns its form and CRC. Whether the page stays is `mode`'s
    /// rule for the pool's kind.
    pub fn get(
        &self,
        client: u64,
        key: PageKey,
        mode: GetMode,
        out: &mut [u8; MAX_PAGE_DATA],
    ) -> Result<(Fetched, u32), Status> {
        let mut s = self.lock();
        let pool = s.pool(client, key.pool)?;
        let kind = pool.kind;
        let exclusive = match kind {
            PoolKind::Persistent => mode.and_free,
            PoolKind::Ephemeral => !mode.keep,
        };
        let Some(entry) = pool.pages.get(&(key.object, key.index)).copied() else {
            s.counters.get_misses += 1;
            return Err(Status::NotFound);
        };
        let fetched = match entry.data {
            Data::Fill(word) => Fetched::Fill(word),
            Data::Lz4 { slot, len } => {
                let len = len as usize;
                out[..len].copy_from_slice(s.slabs.read(slot, len));
                Fetched::Lz4(len)
            }
            Data::Raw { slot } => {
                out[..PAGE_SIZE].copy_from_slice(s.slabs.read(slot, PAGE_SIZE));
                Fetched::Raw
            }
            Data::Sealed { slot, len } => {
                let len = len as usize;
                out[..len].copy_from_slice(s.slabs.read(slot, len));
                Fetched::Sealed(len)
            }
        };
        s.counters.get_hits += 1;
        if exclusive {
            s.remove_page(client, key);
        } else if kind == PoolKind::Ephemeral {
            s.touch(key, entry.lru);
        }
        Ok((fetched, entry.crc))
    }

    /// Removes one page; returns whether it existed.
    pub fn flush_page(&self, client: u64, key: PageKey) -> Result<bool, Status> {
        let mut s = self.lock();
        s.pool(client, key.pool)?;
        let existed = s.remove_page(client, key);
        if existed {
            s.counters.flushes += 1;
        }
        Ok(existed)
    }

    /// Removes every page of `object`; returns how many.
    pub fn flush_object(&self, client: u64, pool: u32, object: [u64; 3]) -> Result<u32, Status> {
        let mut s = self.lock();
        let p = s.pool(client, pool)?;
        let indexes: Vec<u32> = p
            .pages
            .range((object, 0)..=(object, u32::MAX))
            .map(|(&(_, i), _)| i)
            .collect();
        for &index in &indexes {
            s.remove_page(
                client,
                PageKey {
                    pool,
                    object,
                    index,
                },
            );
        }
        s.counters.flushes += indexes.len() as u64;
        Ok(indexes.len() as u32)
    }

    /// Store counters, indexed by [`StatId`] (connection-level ones are filled in by the server).
    pub fn stats(&self) -> [u64; STAT_COUNT] {
        let s = self.lock();
        let c = &s.counters;
        let mut v = [0u64; STAT_COUNT];
        v[StatId::Pages as usize] = s.pages as u64;
        v[StatId::PersistentPages as usize] = c.persistent_pages;
        v[StatId::EphemeralPages as usize] = c.ephemeral_pages;
        v[StatId::StoredBytes as usize] = c.stored_bytes;
        v[StatId::DataBytes as usize] = s.slabs.bytes_in_use() as u64;
        v[StatId::MetadataBytes as usize] = (s.pages * ENTRY_METADATA_BYTES) as u64;
        v[StatId::MemoryLimit as usize] = self.config.memory_limit as u64;
        v[StatId::FillPages as usize] = c.fill_pages;
        v[StatId::RawPages as usize] = c.raw_pages;
        v[StatId::Pools as usize] = s.pools.len() as u64;
        v[StatId::Puts as usize] = c.puts;
        v[StatId::GetHits as usize] = c.get_hits;
        v[StatId::GetMisses as usize] = c.get_misses;
        v[StatId::Flushes as usize] = c.flushes;
        v[StatId::Evictions as usize] = c.evictions;
        v[StatId::NoSpaceRefusals as usize] = c.no_space;
        v[StatId::QuotaRefusals as usize] = c.quota;
        v
    }
}

impl Inner {
    fn pool(&self, client: u64, pool: u32) -> Result<&Pool, Status> {
        match self.pools.get(&pool) {
            Some(p) if p.owner == client => Ok(p),
            _ => Err(Status::UnknownPool),
        }
    }

    fn bytes_used(&self) -> usize {
        self.slabs.bytes_in_use() + self.pages * ENTRY_METADATA_BYTES
    }

    /// Makes the ephemeral page at `key` (LRU position `lru`) the most recently used.
    fn touch(&mut self, key: PageKey, lru: u64) {
        let seq = self.next_lru;
        self.next_lru += 1;
        self.lru.remove(&lru);
        self.lru.insert(seq, key);
        if let Some(entry) = self
            .pools
            .get_mut(&key.pool)
            .and_then(|p| p.pages.get_mut(&(key.object, key.index)))
        {
            entry.lru = seq;
        }
    }

    /// Removes the page at `key` if present (the pool must exist); returns whether it did.
    fn remove_page(&mut self, client: u64, key: PageKey) -> bool {
        let removed = self
            .pools
            .get_mut(&key.pool)
            .and_then(|p| p.pages.remove(&(key.object, key.index)));
        match removed {
            Some(entry) => {
                self.release(client, entry);
                true
            }
            None => false,
        }
    }

    /// Frees what an entry (already out of its pool's map) holds and updates accounting.
    fn release(&mut self, owner: u64, entry: Entry) {
        match entry.data {
            Data::Fill(_) => self.counters.fill_pages -= 1,
            Data::Lz4 { slot, .. } | Data::Sealed { slot, .. } => self.slabs.free(slot),
            Data::Raw { slot } => {
                self.slabs.free(slot);
                self.counters.raw_pages -= 1;
            }
        }
        if entry.lru != 0 {
            // Already gone when the page is being evicted; then this is a no-op.
            self.lru.remove(&entry.lru);
            self.counters.ephemeral_pages -= 1;
        } else {
            self.counters.persistent_pages -= 1;
        }
        self.counters.stored_bytes -= entry.stored_len() as u64;
        if let Some(used) = self.usage.get_mut(&owner) {
            *used = used.saturating_sub(entry.charge());
        }
        self.pages -= 1;
    }

    /// Evicts the least recently stored ephemeral page; false if there is none.
    fn evict_oldest(&mut self) -> bool {
        let Some((_, key)) = self.lru.pop_first() else {
            return false;
        };
        let Some(pool) = self.pools.get_mut(&key.pool) else {
            return true;
        };
        let owner = pool.owner;
        if let Some(entry) = pool.pages.remove(&(key.object, key.index)) {
            self.release(owner, entry);
            self.counters.evictions += 1;
        }
        true
    }
}

/// The store budget a heap of `heap_available` bytes can carry: `requested`, or less when the heap
/// cannot hold it with room to spare for the index, connection buffers and (on Hermit) the network
/// driver: a sixteenth of the heap, at least 16 MiB. A budget the heap cannot hold would end in an
/// allocation failure (an abort) when the store fills, instead of `NO_SPACE` replies.
pub fn budget_within_heap(requested: usize, heap_available: usize) -> usize {
    let headroom = (heap_available / 16).max(16 << 20);
    requested.min(heap_available.saturating_sub(headroom))
}
