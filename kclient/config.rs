//! Settings fixed at load time, read from the module parameters and checked together.

use kernel::prelude::*;

use crate::crypto::SecretKey;
use crate::logic::request::MAX_REPLICAS;
use crate::logic::targets::{parse_targets, Targets};
use crate::params;

/// Everything the client is configured with.
pub(crate) struct Config {
    pub(crate) targets: Targets,
    /// Device size in 4 KiB pages.
    pub(crate) pages: u64,
    pub(crate) io_timeout_ms: u32,
    /// A connection owing answers this long (or silent to a keepalive) is reset.
    pub(crate) down_after_ms: u32,
    pub(crate) keepalive_ms: u32,
    pub(crate) repair_pages_per_s: u32,
    /// TCP connections per appliance (also the number of blk-mq hardware queues).
    pub(crate) nr_conns: u32,
    /// Copies of every page.
    pub(crate) replicas: u8,
    pub(crate) client_id: u64,
    /// The pre-shared key for authenticated sessions; `None` only with `insecure=1`.
    pub(crate) key: Option<SecretKey>,
    /// LZ4 pages on the wire, both ways.
    pub(crate) compress: bool,
    /// Seal every page with a key that never leaves this machine.
    pub(crate) encrypt_pages: bool,
    /// NUL-terminated path of the spill device, if any; with [`Config::cache`], the backing
    /// device.
    pub(crate) spill: Option<KVec<u8>>,
    /// This is a cache device (`/dev/kcacheN`) over `spill` (its size replaces `pages`), not the
    /// swap device.
    pub(crate) cache: bool,
}

/// Cache devices one load can make (`/dev/kcache0` .. `/dev/kcache7`).
pub(crate) const MAX_CACHE_DEVICES: usize = 8;

/// The NUL-terminated paths in `cache_backing` (comma-separated, at most [`MAX_CACHE_DEVICES`],
/// no duplicates); empty if not given.
fn backing_paths(list: &[u8]) -> Result<KVec<KVec<u8>>> {
    let mut paths: KVec<KVec<u8>> = KVec::new();
    for part in list.split(|&c| c == b',') {
        if part.is_empty() {
            continue;
        }
        let dup = paths.iter().any(|p| p.get(..p.len() - 1) == Some(part));
        if dup || paths.len() == MAX_CACHE_DEVICES {
            pr_err!(
                "cache_backing=/dev/X[,/dev/Y...]: at most {} devices, each once\n",
                MAX_CACHE_DEVICES
            );
            return Err(EINVAL);
        }
        if let Some(p) = path_param(part)? {
            paths.push(p, GFP_KERNEL)?;
        }
    }
    Ok(paths)
}

/// A module parameter holding a path, NUL-terminated; `None` if empty.
fn path_param(path: &[u8]) -> Result<Option<KVec<u8>>> {
    if path.is_empty() {
        return Ok(None);
    }
    let mut v = KVec::with_capacity(path.len() + 1, GFP_KERNEL)?;
    v.extend_from_slice(path, GFP_KERNEL)?;
    v.push(0, GFP_KERNEL)?;
    Ok(Some(v))
}

impl Config {
    /// Reads and checks the parameters (saying what is wrong in the kernel log): one
    /// configuration per device this load makes, the swap device or one per `cache_backing` path.
    pub(crate) fn from_params() -> Result<KVec<Self>> {
        let mut buf = [0u8; 256];
        let targets = parse_targets(params::remote_target(&mut buf)).map_err(|e| {
            pr_err!(
                "remote_target=HOST:PORT[,HOST:PORT...] (IPv4, at most 8, no duplicates) is \
                 required ({:?})\n",
                e
            );
            EINVAL
        })?;
        let pages = params::size_bytes() / 4096;
        if pages == 0 || pages > u64::from(u32::MAX) {
            pr_err!("size must be between 4K and 16T\n");
            return Err(EINVAL);
        }
        let n = targets.len();
        let replicas = match params::replicas() {
            0 if n >= 2 => 2,
            0 => 1,
            r if r as usize > MAX_REPLICAS || r as usize > n => {
                pr_err!(
                    "replicas={} needs as many targets (given {}) and is at most {}\n",
                    r,
                    n,
                    MAX_REPLICAS
                );
                return Err(EINVAL);
            }
            r => r as u8,
        };
        let key = params::take_key().map(|mut k| {
            let key = SecretKey::new(k);
            crate::crypto::wipe(&mut k);
            key
        });
        if key.is_some() && !params::client_id_given() {
            pr_err!("key= needs client_id= (the appliances' keys files name the client by it)\n");
            return Err(EINVAL);
        }
        if key.is_none() && !params::insecure() {
            pr_err!(
                "no key: give key=HEX and client_id=ID (tmemctl keygen), or insecure=1 to talk to \
                 appliances unauthenticated and in clear\n"
            );
            return Err(EINVAL);
        }
        if key.is_none() {
            pr_warn!(
                "insecure=1: sessions are not authenticated and pages cross the network in clear\n"
            );
        }
        let nr_conns = match params::nr_conns() {
            0 => params::online_cpus().clamp(1, 8),
            c => c.clamp(1, 16),
        };
        let mut spill_buf = [0u8; 128];
        let spill = path_param(params::spill(&mut spill_buf)?)?;
        let mut cache_buf = [0u8; 512];
        let backings = backing_paths(params::cache_backing(&mut cache_buf)?)?;
        let mut replicas = replicas;
        if !backings.is_empty() {
            if spill.is_some() || params::encrypt_pages() {
                pr_err!("cache_backing= does not go with spill= or encrypt_pages=1 (not supported yet)\n");
                return Err(EINVAL);
            }
            if params::replicas() > 1 {
                pr_err!("cache_backing=: the cache keeps one copy (the backing device holds the data); replicas must be 1\n");
                return Err(EINVAL);
            }
            replicas = 1;
        }
        let base = Self {
            targets,
            pages,
            io_timeout_ms: params::io_timeout_ms(),
            down_after_ms: params::down_after_ms(),
            keepalive_ms: params::keepalive_ms(),
            repair_pages_per_s: params::repair_pages_per_s(),
            nr_conns,
            replicas,
            client_id: params::client_id(),
            key,
            compress: params::compress(),
            encrypt_pages: params::encrypt_pages(),
            spill,
            cache: false,
        };
        let mut configs = KVec::with_capacity(backings.len().max(1), GFP_KERNEL)?;
        if backings.is_empty() {
            configs.push(base, GFP_KERNEL)?;
        } else {
            for backing in backings {
                configs.push(base.cache_over(backing), GFP_KERNEL)?;
            }
        }
        Ok(configs)
    }

    /// The same settings for a cache device over `backing`.
    fn cache_over(&self, backing: KVec<u8>) -> Self {
        Self {
            key: self.key.as_ref().map(SecretKey::duplicate),
            spill: Some(backing),
            cache: true,
            ..*self
        }
    }
}
