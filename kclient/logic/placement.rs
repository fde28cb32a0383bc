//! Where pages live: the device is cut into extents, and each extent gets a replica set of
//! appliances chosen by rendezvous (highest random weight) hashing.
//!
//! An extent is [`EXTENT_PAGES`] pages (64 MiB). Its replicas are picked the first time it is
//! written, among the appliances that are up and not full, in the order of
//! `weight(extent, appliance)`; the choice then stays for the life of the device (swap does not
//! outlive the module). Weights depend only on the extent and the appliance's address, so the
//! order of `remote_target` does not matter, extents spread evenly (capacity and bandwidth add
//! up), and an appliance added later takes only about 1/N of the new extents' slots, moving
//! nothing that was placed.

use super::request::MAX_REPLICAS;

/// Pages per extent (64 MiB of 4 KiB pages).
pub const EXTENT_PAGES: u64 = 16 * 1024;
/// An empty replica slot.
pub const NO_APPLIANCE: u8 = 0xff;

/// The extent holding `page`.
pub fn extent_of(page: u64) -> usize {
    (page / EXTENT_PAGES) as usize
}

/// A stable 64-bit identity of an appliance address.
pub fn appliance_key(ip: u32, port: u16) -> u64 {
    mix((u64::from(ip) << 16) | u64::from(port))
}

/// SplitMix64's finaliser: a good, cheap 64-bit mixing function (not a security primitive).
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Rendezvous weight of `appliance` (its [`appliance_key`]) for `extent`.
pub fn weight(extent: usize, appliance: u64) -> u64 {
    mix(appliance ^ mix(extent as u64))
}

/// Picks up to `replicas` appliances for `extent` from `candidates` (key, eligible), highest
/// weight first, eligible ones only. Returns indexes into `candidates`; unused slots are
/// [`NO_APPLIANCE`].
pub fn place(extent: usize, candidates: &[(u64, bool)], replicas: usize) -> [u8; MAX_REPLICAS] {
    let mut out = [NO_APPLIANCE; MAX_REPLICAS];
    let mut taken = 0u32;
    for slot in out.iter_mut().take(replicas.min(MAX_REPLICAS)) {
        let best = candidates
            .iter()
            .enumerate()
            .filter(|&(i, &(_, eligible))| eligible && i < 32 && taken & (1 << i) == 0)
            .max_by_key(|&(_, &(key, _))| weight(extent, key));
        match best {
            Some((i, _)) => {
                taken |= 1 << i;
                *slot = i as u8;
            }
            None => break,
        }
    }
    out
}
