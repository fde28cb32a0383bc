//! The devices one load of kclient makes, the swap device `/dev/kclient0` or a cache device
//! `/dev/kcacheN` per `cache_backing` path, and what they share: runtime `remote_target` changes
//! and the debugfs `stats` file. Each device is a [`Client`] of its own (its connections, pool,
//! threads and page maps); the counters in `stats.rs` are the load's, summed over its devices.

use core::fmt::Write;
use core::sync::atomic::{AtomicU64, Ordering};

use kernel::prelude::*;
use kernel::sync::Arc;

use crate::appliance::{Addr, Appliance, State};
use crate::client::Client;
use crate::logic::targets::Targets;
use crate::stats;

/// The clients of this load's devices, in device order.
pub(crate) struct Devices {
    pub(crate) clients: KVec<Arc<Client>>,
}

impl Devices {
    /// A runtime `remote_target` write, applied to every device.
    pub(crate) fn set_targets(&self, targets: Targets) -> Result {
        for c in self.clients.iter() {
            c.set_targets(targets)?;
        }
        Ok(())
    }

    /// The debugfs `stats` file: the counters, then one block per appliance, each figure summed
    /// over the devices (a state other than `up` on any device is the appliance's state).
    pub(crate) fn format_stats(&self, buf: &mut [u8]) -> usize {
        let mut w = stats::writer(buf);
        let Some(first) = self.clients.first() else {
            return 0;
        };
        let sum = |f: &dyn Fn(&Client) -> u64| self.clients.iter().map(|c| f(c)).sum::<u64>();
        let (up, all) = self
            .clients
            .iter()
            .map(|c| c.connections())
            .fold((0, 0), |(u, a), (cu, ca)| (u + cu, a + ca));
        stats::format(&mut w, up, all);
        let _ = writeln!(w, "devices {}", self.clients.len());
        let _ = writeln!(w, "replicas {}", first.cfg.replicas);
        let _ = writeln!(w, "degraded_extents {}", sum(&|c| c.degraded_extents()));
        let _ = writeln!(w, "unreadable_pages {}", sum(&|c| c.unreadable_pages()));
        for (i, app) in first.apps.iter().enumerate() {
            let apps = || self.clients.iter().filter_map(move |c| c.apps.get(i));
            // A counter of this appliance, summed over the devices.
            let total = |counter: fn(&Appliance) -> &AtomicU64| -> u64 {
                apps().map(|a| counter(a).load(Ordering::Relaxed)).sum()
            };
            let state = apps()
                .map(|a| a.state())
                .find(|s| *s != State::Up)
                .unwrap_or(State::Up);
            // One scan of each device's page maps for both figures.
            let (held, stale) = self
                .clients
                .iter()
                .map(|c| c.appliance_pages(i))
                .fold((0, 0), |(h, s), (ch, cs)| (h + ch, s + cs));
            let _ = writeln!(w, "appliance.{i}.addr {}", Addr(app.addr()));
            let _ = writeln!(w, "appliance.{i}.state {}", state.name());
            let conns_up: usize = apps().map(|a| a.conns_up()).sum();
            let _ = writeln!(w, "appliance.{i}.connections_up {conns_up}");
            let _ = writeln!(w, "appliance.{i}.pages_held {held}");
            let _ = writeln!(w, "appliance.{i}.pages_stale {stale}");
            let repaired = total(|a| &a.pages_repaired);
            let _ = writeln!(w, "appliance.{i}.pages_repaired {repaired}");
            let _ = writeln!(
                w,
                "appliance.{i}.write_failures {}",
                total(|a| &a.write_failures)
            );
            let _ = writeln!(w, "appliance.{i}.downs {}", total(|a| &a.downs));
            let _ = writeln!(w, "appliance.{i}.pools_lost {}", total(|a| &a.pools_lost));
            let full = apps().any(|a| a.full.load(Ordering::Relaxed));
            let _ = writeln!(w, "appliance.{i}.full {}", u8::from(full));
            let latency = apps()
                .map(|a| a.read_latency_us.load(Ordering::Relaxed))
                .max()
                .unwrap_or(0);
            let _ = writeln!(w, "appliance.{i}.read_latency_us {latency}");
        }
        w.written()
    }
}
