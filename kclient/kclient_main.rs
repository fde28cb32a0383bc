// SPDX-License-Identifier: GPL-2.0

//! kclient: swap on remote compressed memory (tmem appliances), for Linux 6.12.
//!
//! `insmod kclient.ko remote_target=HOST:PORT[,HOST:PORT...] size=1G` creates `/dev/kclient0` for
//! `mkswap`/`swapon`. Pages written to it are stored on the appliance (PUT_PAGE), read back
//! (GET_PAGE) and discarded (FLUSH_PAGE); see `client.rs`. Counters:
//! `/sys/kernel/debug/kclient/stats`. Parameters: `/sys/module/kclient/parameters/`.
//!
//! Layering: `ffi` (C helper declarations) < `blk`, `net`, `thread`, `lz4` (thin safe wrappers) <
//! `client` (the logic, safe Rust) < `params`, `debugfs` (hand the live client to the C parameter
//! and debugfs callbacks) < this file (module entry points, safe Rust). All the `unsafe` lives in
//! the wrappers (`blk`, `net`, `thread`, `lz4`, `params`, `debugfs`), each block justified by a
//! safety comment (`clippy::undocumented_unsafe_blocks`, denied below and checked by
//! `cargo xtask client-image`, which builds with `CLIPPY=1` and warnings denied).

#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(unsafe_code)]
#![recursion_limit = "256"] // pin_init! of `Appliance` (many fields) expands deeper than 128

mod appliance;
#[allow(unsafe_code)]
mod blk;
mod cache;
mod client;
mod config;
mod conn;
#[allow(unsafe_code)]
mod crypto;
#[allow(unsafe_code)]
mod debugfs;
mod devices;
mod ffi;
mod io;
mod link;
mod logic;
#[allow(unsafe_code)]
mod lz4;
#[allow(unsafe_code)]
mod net;
#[allow(unsafe_code)]
mod params;
mod repair;
mod sendq;
#[allow(unsafe_code)]
mod spill;
mod stats;
#[allow(unsafe_code)]
mod thread;
mod transport;

/// The wire format: the workspace's `protocol/` crate (the one source of truth), copied by the
/// build with `crate::` paths rewritten (see `xtask/src/linux.rs`).
#[path = "generated/protocol/lib.rs"]
#[allow(
    dead_code,
    unused_imports,
    unused_attributes,
    missing_docs,
    unreachable_pub
)]
#[allow(clippy::all)]
mod protocol;

use kernel::prelude::*;
use kernel::str::BStr;
use kernel::sync::Arc;

use blk::{Disk, DiskConfig, TagSet};
use client::{Client, MAX_PAGES, QUEUE_DEPTH};
use config::Config;
use debugfs::StatsFile;
use devices::Devices;
use params::TargetHook;

module! {
    type: KClient,
    name: "kclient",
    author: "tmem developers",
    description: "Swap device backed by remote compressed memory appliances (tmem)",
    license: "GPL",
}

/// blk-mq's request timeout on a cache device (see `init`).
const CACHE_RQ_TIMEOUT_MS: u32 = 300_000;

struct KClient {
    /// Routes runtime `remote_target` writes to the devices; removed first on unload.
    target_hook: Option<TargetHook>,
    /// `/sys/kernel/debug/kclient/stats`, if debugfs is available.
    stats_file: Option<StatsFile>,
    devices: KVec<Device>,
}

/// One block device of this load and the client serving it; dropping it takes the device away,
/// then the client's pools and threads.
struct Device {
    disk: Option<Disk<Client>>,
    client: Arc<Client>,
}

impl Device {
    /// The client for `cfg`, connected, and its disk: `/dev/kclient0`, or `/dev/kcache<n>`.
    fn new(cfg: Config, n: usize, module: &'static ThisModule) -> Result<Self> {
        let (conns, timeout) = (cfg.nr_conns, cfg.io_timeout_ms);
        let (apps, replicas) = (cfg.targets.len(), cfg.replicas);
        // A cache device's requests wait for its backing device, behind every page queued for it
        // (16 MiB at most: 16 s on a 1 MB/s disk), and the backing device's driver has its own
        // error handling: blk-mq's timeout is only the last resort there. Appliance stalls are
        // still found within `down_after_ms`, and those reads go to the backing device.
        let rq_timeout = if cfg.cache {
            timeout.max(CACHE_RQ_TIMEOUT_MS)
        } else {
            timeout
        };
        let set = TagSet::<Client>::new(conns, QUEUE_DEPTH, rq_timeout)?;
        let mut dev = Device {
            disk: None,
            client: Client::new(cfg, set.clone())?,
        };
        if let Err(e) = dev.client.start() {
            pr_err!("cannot reach any appliance (error {})\n", e.to_errno());
            return Err(e);
        }
        // A cache device's size is its backing device's (known once the client opened it).
        let (pages, cache) = (dev.client.cfg.pages, dev.client.cache.is_some());
        let mut kcache = *b"kcache0";
        kcache[6] += n as u8; // n < MAX_CACHE_DEVICES (8)
        let name: &[u8] = if cache { &kcache } else { b"kclient0" };
        dev.disk = Some(Disk::new(
            name,
            set,
            dev.client.clone(),
            &DiskConfig {
                capacity_sectors: pages * 8,
                max_pages: MAX_PAGES,
                discard: !cache,
                write_cache: cache,
            },
            module,
        )?);
        pr_info!(
            "/dev/{} ready: {} MiB{} on {} appliance(s), {} replica(s), {} connection(s) each, \
             I/O timeout {} ms\n",
            BStr::from_bytes(name),
            pages / 256,
            if cache {
                ", caching the backing device's blocks"
            } else {
                ""
            },
            apps,
            replicas,
            conns,
            timeout
        );
        Ok(dev)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        // The disk first: del_gendisk waits for in-flight I/O, which the connections complete.
        drop(self.disk.take());
        self.client.destroy_pools();
        self.client.stop();
    }
}

impl kernel::Module for KClient {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let configs = Config::from_params()?;
        let mut devices = KVec::with_capacity(configs.len(), GFP_KERNEL)?;
        let mut clients = KVec::with_capacity(configs.len(), GFP_KERNEL)?;
        // On an error, the devices made so far are dropped (taken away) on return.
        for (n, cfg) in configs.into_iter().enumerate() {
            let dev = Device::new(cfg, n, module)?;
            clients.push(dev.client.clone(), GFP_KERNEL)?;
            devices.push(dev, GFP_KERNEL)?;
        }
        let all = Arc::new(Devices { clients }, GFP_KERNEL)?;
        let target_hook = TargetHook::install(all.clone())?;
        let stats_file = StatsFile::create(all)
            .inspect_err(|_| pr_warn!("debugfs unavailable; no counters\n"))
            .ok();
        Ok(KClient {
            target_hook: Some(target_hook),
            stats_file,
            devices,
        })
    }
}

impl Drop for KClient {
    fn drop(&mut self) {
        // No more parameter callbacks (waits for a running one), then no more debugfs readers
        // (waits for running ones); each drops its reference to the devices.
        drop(self.target_hook.take());
        drop(self.stats_file.take());
        // Then each device: its disk, pools and threads.
        drop(core::mem::take(&mut self.devices));
        pr_info!("unloaded\n");
    }
}
