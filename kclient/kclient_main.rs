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
use kernel::sync::Arc;

use blk::{Disk, DiskConfig, TagSet};
use client::Client;
use config::Config;
use debugfs::StatsFile;
use params::TargetHook;

module! {
    type: KClient,
    name: "kclient",
    author: "tmem developers",
    description: "Swap device backed by remote compressed memory appliances (tmem)",
    license: "GPL",
}

/// Largest request in pages: 256 KiB, one BATCH frame's worth (a request crossing a stripe
/// boundary becomes two runs).
const MAX_PAGES: u32 = 64;
/// Tags per hardware queue. What the kernel may queue is bounded by tags x request size: with
/// 1 MiB requests and 128 tags it queued hundreds of MiB of writeback, which took longer than
/// `io_timeout_ms` to drain on a slow link (doubled by replicas). 32 x 256 KiB per queue keeps a
/// client's backlog to a few seconds even at 10 MB/s, far above what a real link needs in flight.
const QUEUE_DEPTH: u32 = 32;

/// blk-mq's request timeout on a cache device (see `init`).
const CACHE_RQ_TIMEOUT_MS: u32 = 300_000;

struct KClient {
    /// Routes runtime `remote_target` writes to the client; removed first on unload.
    target_hook: Option<TargetHook>,
    /// `/sys/kernel/debug/kclient/stats`, if debugfs is available.
    stats_file: Option<StatsFile>,
    disk: Option<Disk<Client>>,
    client: Arc<Client>,
}

impl kernel::Module for KClient {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let cfg = Config::from_params()?;
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
        let client = Client::new(cfg, set.clone())?;
        if let Err(e) = client.start() {
            pr_err!("cannot reach any appliance (error {})\n", e.to_errno());
            client.stop();
            return Err(e);
        }
        // A cache device's size is its backing device's (known once the client opened it).
        let (pages, cache) = (client.cfg.pages, client.cache.is_some());
        let name: &[u8] = if cache { b"kcache0" } else { b"kclient0" };
        let disk = Disk::new(
            name,
            set,
            client.clone(),
            &DiskConfig {
                capacity_sectors: pages * 8,
                max_pages: MAX_PAGES,
                discard: !cache,
                write_cache: cache,
            },
            module,
        );
        let disk = match disk {
            Ok(d) => d,
            Err(e) => {
                client.stop();
                return Err(e);
            }
        };
        let target_hook = match TargetHook::install(client.clone()) {
            Ok(hook) => hook,
            Err(e) => {
                drop(disk);
                client.stop();
                return Err(e);
            }
        };
        let stats_file = StatsFile::create(client.clone())
            .inspect_err(|_| pr_warn!("debugfs unavailable; no counters\n"))
            .ok();
        pr_info!(
            "/dev/{} ready: {} MiB{} on {} appliance(s), {} replica(s), {} connection(s) each, \
             I/O timeout {} ms\n",
            if cache { "kcache0" } else { "kclient0" },
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
        Ok(KClient {
            target_hook: Some(target_hook),
            stats_file,
            disk: Some(disk),
            client,
        })
    }
}

impl Drop for KClient {
    fn drop(&mut self) {
        // No more parameter callbacks (waits for a running one), then no more debugfs readers
        // (waits for running ones); each drops its reference to the client.
        drop(self.target_hook.take());
        drop(self.stats_file.take());
        // The disk next: del_gendisk waits for in-flight I/O, which the connections complete.
        drop(self.disk.take());
        self.client.destroy_pools();
        self.client.stop();
        pr_info!("unloaded\n");
    }
}
