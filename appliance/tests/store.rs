//! tmem semantics and memory accounting of the store.

use appliance::codec::{self, checksum, Scratch, Stored, DEFAULT_RAW_THRESHOLD};
use appliance::slab::SLAB_SIZE;
use appliance::store::{Fetched, GetMode, Store, StoreConfig, ENTRY_METADATA_BYTES};
use protocol::{Encoding, Page, PageKey, PoolKind, StatId, Status, PAGE_SIZE};

const CLIENT: u64 = 42;

fn store(limit: usize) -> Store {
    Store::new(StoreConfig {
        memory_limit: limit,
        client_quota: None,
        raw_threshold: DEFAULT_RAW_THRESHOLD,
    })
}

/// A page that compresses to roughly `1 / ratio` of a page, different for every seed.
fn page(seed: u64, ratio: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(PAGE_SIZE);
    let noise = PAGE_SIZE / ratio.max(1);
    while out.len() < noise {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.resize(PAGE_SIZE, (seed % 251) as u8);
    out
}

fn put(s: &Store, key: PageKey, data: &[u8]) -> Result<(), Status> {
    let mut scratch = Scratch::default();
    let p = Page {
        encoding: Encoding::Raw,
        crc: checksum(data),
        data,
    };
    let stored = codec::ingest(&p, &mut scratch, DEFAULT_RAW_THRESHOLD).map_err(Status::from)?;
    s.put(CLIENT, key, stored, p.crc)
}

fn get(s: &Store, key: PageKey, and_free: bool) -> Result<Vec<u8>, Status> {
    get_with(
        s,
        key,
        GetMode {
            and_free,
            keep: false,
        },
    )
}

fn get_with(s: &Store, key: PageKey, mode: GetMode) -> Result<Vec<u8>, Status> {
    let mut buf = [0u8; protocol::MAX_PAGE_DATA];
    let (fetched, crc) = s.get(CLIENT, key, mode, &mut buf)?;
    let mut out = [0u8; PAGE_SIZE];
    let stored = match fetched {
        Fetched::Fill(w) => Stored::Fill(w),
        Fetched::Lz4(n) => Stored::Lz4(&buf[..n]),
        Fetched::Raw => Stored::Raw(&buf[..PAGE_SIZE]),
        Fetched::Sealed(n) => Stored::Sealed(&buf[..n]),
    };
    codec::expand(stored, &mut out).unwrap();
    assert_eq!(checksum(&out), crc);
    Ok(out.to_vec())
}

fn key(pool: u32, index: u32) -> PageKey {
    PageKey {
        pool,
        object: [1, 2, 3],
        index,
    }
}

#[test]
fn persistent_get_keeps_unless_get_and_free() {
    let s = store(64 << 20);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    let data = page(1, 4);
    put(&s, key(pool, 0), &data).unwrap();
    assert_eq!(get(&s, key(pool, 0), false).unwrap(), data);
    assert_eq!(get(&s, key(pool, 0), false).unwrap(), data);
    assert_eq!(get(&s, key(pool, 0), true).unwrap(), data);
    assert_eq!(get(&s, key(pool, 0), false), Err(Status::NotFound));
}

#[test]
fn ephemeral_get_is_exclusive() {
    let s = store(64 << 20);
    let pool = s.new_pool(CLIENT, PoolKind::Ephemeral).unwrap();
    put(&s, key(pool, 5), &page(5, 2)).unwrap();
    assert_eq!(get(&s, key(pool, 5), false).unwrap(), page(5, 2));
    assert_eq!(get(&s, key(pool, 5), false), Err(Status::NotFound));
}

const KEEP: GetMode = GetMode {
    and_free: false,
    keep: true,
};

#[test]
fn ephemeral_get_with_keep_leaves_the_page_and_refreshes_it() {
    // Room for a few hundred pages: the cache must evict to take 2000.
    let s = store(4 * SLAB_SIZE);
    let eph = s.new_pool(CLIENT, PoolKind::Ephemeral).unwrap();
    put(&s, key(eph, 0), &page(0, 2)).unwrap();
    put(&s, key(eph, 1), &page(1, 2)).unwrap();
    for _ in 0..3 {
        assert_eq!(get_with(&s, key(eph, 0), KEEP).unwrap(), page(0, 2));
    }
    // Page 0, read last, is newer than page 1. Fill the store far past its room, reading page 0
    // after every put as a hot cached block is read: it is never the oldest, so never evicted.
    for i in 2..2000u32 {
        put(&s, key(eph, i), &page(i as u64, 2)).unwrap();
        assert_eq!(
            get_with(&s, key(eph, 0), KEEP).unwrap(),
            page(0, 2),
            "page 0 evicted at put {i}"
        );
    }
    assert!(
        s.stats()[StatId::Evictions as usize] > 0,
        "the store evicted"
    );
    assert_eq!(get_with(&s, key(eph, 1), KEEP), Err(Status::NotFound));
    // Without GET_KEEP an ephemeral get still consumes the page, and GET_KEEP means nothing to a
    // persistent pool.
    assert_eq!(get(&s, key(eph, 0), false).unwrap(), page(0, 2));
    assert_eq!(get(&s, key(eph, 0), false), Err(Status::NotFound));
    let pers = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    put(&s, key(pers, 0), &page(9, 2)).unwrap();
    assert_eq!(get_with(&s, key(pers, 0), KEEP).unwrap(), page(9, 2));
    assert_eq!(get(&s, key(pers, 0), false).unwrap(), page(9, 2));
}

#[test]
fn duplicate_put_replaces_and_failed_duplicate_put_removes_old() {
    let s = store(SLAB_SIZE + 4 * ENTRY_METADATA_BYTES);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    put(&s, key(pool, 0), &page(1, 8)).unwrap();
    put(&s, key(pool, 0), &page(2, 8)).unwrap();
    // Keeps the only slab the budget allows in use.
    put(&s, key(pool, 1), &page(4, 8)).unwrap();
    assert_eq!(get(&s, key(pool, 0), false).unwrap(), page(2, 8));
    // An incompressible page needs a new (4 KiB class) slab that does not fit: refused, old page gone.
    assert_eq!(put(&s, key(pool, 0), &page(3, 1)), Err(Status::NoSpace));
    assert_eq!(get(&s, key(pool, 0), false), Err(Status::NotFound));
}

#[test]
fn persistent_pages_are_refused_not_dropped_when_full() {
    let s = store(4 * SLAB_SIZE);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    let mut stored = 0u32;
    let mut refused = 0;
    for i in 0..10_000u32 {
        match put(&s, key(pool, i), &page(i as u64, 2)) {
            Ok(()) => stored += 1,
            Err(Status::NoSpace) => refused += 1,
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(
        stored > 100 && refused > 0,
        "stored {stored}, refused {refused}"
    );
    let stats = s.stats();
    assert!(
        stats[StatId::DataBytes as usize] + stats[StatId::MetadataBytes as usize]
            <= (4 * SLAB_SIZE) as u64
    );
    assert_eq!(stats[StatId::NoSpaceRefusals as usize], refused);
    // Every page that was accepted is still there, intact.
    for i in 0..10_000u32 {
        match get(&s, key(pool, i), false) {
            Ok(d) => assert_eq!(d, page(i as u64, 2)),
            Err(Status::NotFound) => assert!(i >= stored),
            Err(e) => panic!("unexpected {e}"),
        }
    }
}

#[test]
fn ephemeral_pages_are_evicted_oldest_first_to_make_room() {
    let s = store(4 * SLAB_SIZE);
    let eph = s.new_pool(CLIENT, PoolKind::Ephemeral).unwrap();
    let pers = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    for i in 0..2000u32 {
        put(&s, key(eph, i), &page(i as u64, 2)).unwrap();
    }
    let evictions_before = s.stats()[StatId::Evictions as usize];
    assert!(
        evictions_before > 0,
        "the cache filled the store and evicted"
    );
    for i in 0..200u32 {
        put(&s, key(pers, i), &page(i as u64 + 7, 2)).unwrap();
    }
    assert!(s.stats()[StatId::Evictions as usize] > evictions_before);
    assert_eq!(
        get(&s, key(eph, 0), false),
        Err(Status::NotFound),
        "oldest evicted first"
    );
    assert_eq!(
        get(&s, key(eph, 1999), false).unwrap(),
        page(1999, 2),
        "newest kept"
    );
    for i in 0..200u32 {
        assert_eq!(get(&s, key(pers, i), false).unwrap(), page(i as u64 + 7, 2));
    }
}

#[test]
fn pools_belong_to_their_client() {
    let s = store(64 << 20);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    let mut buf = [0u8; protocol::MAX_PAGE_DATA];
    assert_eq!(
        s.get(CLIENT + 1, key(pool, 0), GetMode::default(), &mut buf),
        Err(Status::UnknownPool)
    );
    assert_eq!(s.destroy_pool(CLIENT + 1, pool), Err(Status::UnknownPool));
    assert_eq!(get(&s, key(999, 0), false), Err(Status::UnknownPool));
}

#[test]
fn flush_object_and_destroy_pool_free_everything() {
    let s = store(64 << 20);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    for i in 0..100 {
        put(&s, key(pool, i), &page(i as u64, 3)).unwrap();
        put(
            &s,
            PageKey {
                pool,
                object: [9, 9, 9],
                index: i,
            },
            &page(i as u64, 3),
        )
        .unwrap();
    }
    assert_eq!(s.flush_object(CLIENT, pool, [1, 2, 3]).unwrap(), 100);
    assert_eq!(get(&s, key(pool, 3), false), Err(Status::NotFound));
    assert_eq!(s.stats()[StatId::Pages as usize], 100);
    assert!(s
        .flush_page(
            CLIENT,
            PageKey {
                pool,
                object: [9, 9, 9],
                index: 0
            }
        )
        .unwrap());
    s.destroy_pool(CLIENT, pool).unwrap();
    let stats = s.stats();
    assert_eq!(stats[StatId::Pages as usize], 0);
    assert_eq!(stats[StatId::DataBytes as usize], 0);
    assert_eq!(stats[StatId::StoredBytes as usize], 0);
    assert_eq!(stats[StatId::PersistentPages as usize], 0);
}

#[test]
fn quota_limits_one_client() {
    let s = Store::new(StoreConfig {
        memory_limit: 64 << 20,
        client_quota: Some(100 * (PAGE_SIZE + ENTRY_METADATA_BYTES)),
        raw_threshold: DEFAULT_RAW_THRESHOLD,
    });
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    let results: Vec<_> = (0..200)
        .map(|i| put(&s, key(pool, i), &page(i as u64, 1)))
        .collect();
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 100);
    assert_eq!(results[150], Err(Status::QuotaExceeded));
    // Another client is not affected.
    let other = s.new_pool(CLIENT + 1, PoolKind::Persistent).unwrap();
    let data = page(1, 1);
    let mut sc = Scratch::default();
    let p = Page {
        encoding: Encoding::Raw,
        crc: checksum(&data),
        data: &data,
    };
    let stored = codec::ingest(&p, &mut sc, DEFAULT_RAW_THRESHOLD).unwrap();
    s.put(CLIENT + 1, key(other, 0), stored, p.crc).unwrap();
}

#[test]
fn allocator_efficiency_is_close_to_compressed_size() {
    let s = store(512 << 20);
    let pool = s.new_pool(CLIENT, PoolKind::Persistent).unwrap();
    for i in 0..50_000u32 {
        put(&s, key(pool, i), &page(i as u64, 2 + (i as usize % 5))).unwrap();
    }
    let st = s.stats();
    let efficiency =
        st[StatId::StoredBytes as usize] as f64 / st[StatId::DataBytes as usize] as f64;
    assert!(efficiency >= 0.9, "efficiency {efficiency:.3}");
}

#[test]
fn budget_is_capped_to_what_the_heap_can_hold() {
    use appliance::store::budget_within_heap;
    const MIB: usize = 1 << 20;
    // Fits with room to spare: unchanged.
    assert_eq!(budget_within_heap(192 * MIB, 1024 * MIB), 192 * MIB);
    // Too big: a sixteenth of the heap stays free.
    assert_eq!(budget_within_heap(1024 * MIB, 800 * MIB), 750 * MIB);
    // Small heaps keep at least 16 MiB free; a heap smaller than that leaves no budget.
    assert_eq!(budget_within_heap(100 * MIB, 64 * MIB), 48 * MIB);
    assert_eq!(budget_within_heap(100 * MIB, 8 * MIB), 0);
}
