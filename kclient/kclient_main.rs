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

#[allow(unsafe_code)]
mod blk;
mod client;
#[allow(unsafe_code)]
mod debugfs;
mod ffi;
#[allow(unsafe_code)]
mod lz4;
#[allow(unsafe_code)]
mod net;
#[allow(unsafe_code)]
mod params;
mod stats;
#[allow(unsafe_code)]
mod thread;

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
use client::{Client, Config};
use debugfs::StatsFile;
use params::TargetHook;

module! {
    type: KClient,
    name: "kclient",
    author: "tmem developers",
    description: "Swap device backed by remote compressed memory appliances (tmem)",
    license: "GPL",
}

/// Largest request in pages (1 MiB, the most parts a request may have: `blk::MAX_PARTS`); it
/// travels as BATCH frames of up to 64 pages.
const MAX_PAGES: u32 = 256;
/// Tags per hardware queue.
const QUEUE_DEPTH: u32 = 128;

struct KClient {
    /// Routes runtime `remote_target` writes to the client; removed first on unload.
    target_hook: Option<TargetHook>,
    /// `/sys/kernel/debug/kclient/stats`, if debugfs is available.
    stats_file: Option<StatsFile>,
    disk: Option<Disk<Client>>,
    client: Arc<Client>,
}

fn read_config() -> Result<Config> {
    let mut target = [0u8; 256];
    let targets = client::parse_targets(params::remote_target(&mut target)).inspect_err(|_| {
        pr_err!("remote_target=HOST:PORT[,HOST:PORT...] (IPv4) is required\n");
    })?;
    let pages = params::size_bytes() / 4096;
    if pages == 0 || pages > u64::from(u32::MAX) {
        pr_err!("size must be between 4K and 16T\n");
        return Err(EINVAL);
    }
    let nr_conns = match params::nr_conns() {
        0 => params::online_cpus().clamp(1, 8),
        n => n.clamp(1, 64),
    };
    Ok(Config {
        targets,
        pages,
        io_timeout_ms: params::io_timeout_ms(),
        nr_conns,
        client_id: params::client_id(),
        compress: params::compress(),
    })
}

impl kernel::Module for KClient {
    fn init(module: &'static ThisModule) -> Result<Self> {
        let cfg = read_config()?;
        let (pages, conns, timeout) = (cfg.pages, cfg.nr_conns, cfg.io_timeout_ms);
        let set = TagSet::<Client>::new(conns, QUEUE_DEPTH, timeout)?;
        let client = Client::new(cfg, set.clone())?;
        if let Err(e) = client.start() {
            pr_err!("cannot reach the appliance (error {})\n", e.to_errno());
            client.stop();
            return Err(e);
        }
        let disk = Disk::new(
            b"kclient0",
            set,
            client.clone(),
            &DiskConfig {
                capacity_sectors: pages * 8,
                max_pages: MAX_PAGES,
                discard: true,
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
            "/dev/kclient0 ready: {} MiB, {} connection(s), I/O timeout {} ms\n",
            pages / 256,
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
        self.client.destroy_pool();
        self.client.stop();
        pr_info!("unloaded\n");
    }
}
