// SPDX-License-Identifier: GPL-2.0

//! kclient: swap on remote compressed memory (tmem appliances), for Linux 6.12.
//!
//! `insmod kclient.ko remote_target=HOST:PORT[,HOST:PORT...] size=1G` creates `/dev/kclient0` for
//! `mkswap`/`swapon`. Pages written to it are stored on the appliance (PUT_PAGE), read back
//! (GET_PAGE) and discarded (FLUSH_PAGE); see `client.rs`. Counters:
//! `/sys/kernel/debug/kclient/stats`. Parameters: `/sys/module/kclient/parameters/`.
//!
//! Layering: `ffi` (C helper declarations) < `blk`, `net`, `thread`, `lz4` (thin safe wrappers; all the
//! `unsafe` lives there) < `client` (the logic, safe Rust) < this file (module entry points).

mod blk;
mod client;
mod ffi;
mod lz4;
mod net;
mod stats;
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

use core::sync::atomic::{AtomicPtr, Ordering};

use kernel::ffi::{c_char, c_int};
use kernel::prelude::*;
use kernel::sync::Arc;

use blk::{Disk, DiskConfig, TagSet};
use client::{Client, Config};

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

/// The live client, for the C callbacks (parameter writes, debugfs). Set while the C side
/// considers the module "live" (`kc_params_set_live`); cleared before teardown.
static CLIENT: AtomicPtr<Client> = AtomicPtr::new(core::ptr::null_mut());

struct KClient {
    disk: Option<Disk<Client>>,
    client: Arc<Client>,
}

fn read_config() -> Result<Config> {
    let mut target = [0u8; 256];
    // SAFETY: `target` is valid for writes of its length.
    let n =
        unsafe { ffi::kc_param_remote_target(target.as_mut_ptr().cast::<c_char>(), target.len()) };
    let targets = client::parse_targets(target.get(..n).ok_or(EINVAL)?).inspect_err(|_| {
        pr_err!("remote_target=HOST:PORT[,HOST:PORT...] (IPv4) is required\n");
    })?;
    // SAFETY: the parameter accessors have no preconditions.
    let (size, io_timeout_ms, nr_conns, client_id, cpus, compress) = unsafe {
        (
            ffi::kc_param_size_bytes(),
            ffi::kc_param_io_timeout_ms(),
            ffi::kc_param_nr_conns(),
            ffi::kc_param_client_id(),
            ffi::kc_num_online_cpus(),
            ffi::kc_param_compress(),
        )
    };
    let pages = size / 4096;
    if pages == 0 || pages > u64::from(u32::MAX) {
        pr_err!("size must be between 4K and 16T\n");
        return Err(EINVAL);
    }
    let nr_conns = if nr_conns == 0 {
        cpus.clamp(1, 8)
    } else {
        nr_conns.clamp(1, 64)
    };
    Ok(Config {
        targets,
        pages,
        io_timeout_ms,
        nr_conns,
        client_id,
        compress,
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
        CLIENT.store((&*client as *const Client).cast_mut(), Ordering::Release);
        // SAFETY: no preconditions; from now on parameter writes may call `kclient_target_changed`.
        unsafe { ffi::kc_params_set_live(true) };
        // SAFETY: no preconditions.
        if unsafe { ffi::kc_debugfs_init() } != 0 {
            pr_warn!("debugfs unavailable; no counters\n");
        }
        pr_info!(
            "/dev/kclient0 ready: {} MiB, {} connection(s), I/O timeout {} ms\n",
            pages / 256,
            conns,
            timeout
        );
        Ok(KClient {
            disk: Some(disk),
            client,
        })
    }
}

impl Drop for KClient {
    fn drop(&mut self) {
        // SAFETY: no preconditions; waits for a running parameter write, then no more calls come.
        unsafe { ffi::kc_params_set_live(false) };
        CLIENT.store(core::ptr::null_mut(), Ordering::Release);
        // SAFETY: no preconditions; waits for running readers.
        unsafe { ffi::kc_debugfs_exit() };
        // The disk first: del_gendisk waits for in-flight I/O, which the connections complete.
        drop(self.disk.take());
        self.client.destroy_pool();
        self.client.stop();
        pr_info!("unloaded\n");
    }
}

/// Called by the C parameter code when `remote_target` is written while the module is live.
#[no_mangle]
pub extern "C" fn kclient_target_changed(val: *const c_char) -> c_int {
    if val.is_null() {
        return EINVAL.to_errno();
    }
    // SAFETY: the C caller passes a NUL-terminated string valid for the call.
    let val = unsafe { CStr::from_char_ptr(val) };
    let targets = match client::parse_targets(val.as_bytes()) {
        Ok(t) => t,
        Err(e) => return e.to_errno(),
    };
    let client = CLIENT.load(Ordering::Acquire);
    if !client.is_null() {
        // SAFETY: `CLIENT` is set only while live; the C side holds its parameter lock during this
        // call and `Drop` clears liveness under that lock before the client can go away.
        unsafe { &*client }.set_targets(targets);
    }
    0
}

/// Called by the debugfs `stats` file: formats the counters into `buf`.
#[no_mangle]
pub extern "C" fn kclient_stats_format(buf: *mut c_char, len: usize) -> usize {
    if buf.is_null() {
        return 0;
    }
    // SAFETY: the C caller passes a buffer valid for writes of `len` bytes.
    let buf = unsafe { core::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
    let client = CLIENT.load(Ordering::Acquire);
    let (up, total) = if client.is_null() {
        (0, 0)
    } else {
        // SAFETY: debugfs is removed (waiting for readers) before `CLIENT` is cleared and dropped.
        let c = unsafe { &*client };
        (c.connected(), c.nr_conns())
    };
    stats::format(buf, up, total)
}
