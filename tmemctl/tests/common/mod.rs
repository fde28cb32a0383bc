//! A real appliance on a free 127.0.0.1 port, stopped when dropped (even when a test panics).

use appliance::auth::AuthConfig;
use appliance::keys::KeyRing;
use appliance::server::{Background, IoModel, Server, ServerConfig};
use appliance::store::{Store, StoreConfig};
use appliance::NetCounters;
use std::sync::Arc;
use std::time::Duration;

pub struct TestAppliance {
    server: Background,
    net: Arc<NetCounters>,
}

#[allow(dead_code)] // not every test file uses every constructor
impl TestAppliance {
    /// The Linux default: a thread per connection, serving clients without keys.
    pub fn start(memory: usize, frame_timeout: Duration) -> TestAppliance {
        Self::start_with(memory, frame_timeout, IoModel::Threads)
    }

    /// Serving clients without keys (as `--insecure`).
    pub fn start_with(memory: usize, frame_timeout: Duration, io_model: IoModel) -> TestAppliance {
        Self::start_auth(memory, frame_timeout, io_model, AuthConfig::insecure())
    }

    /// Serving exactly the clients in `keys` (authenticated, encrypted).
    pub fn start_keyed(
        memory: usize,
        frame_timeout: Duration,
        io_model: IoModel,
        keys: KeyRing,
    ) -> TestAppliance {
        Self::start_auth(memory, frame_timeout, io_model, AuthConfig::with_keys(keys))
    }

    pub fn start_auth(
        memory: usize,
        frame_timeout: Duration,
        io_model: IoModel,
        auth: AuthConfig,
    ) -> TestAppliance {
        let store = Arc::new(Store::new(StoreConfig {
            memory_limit: memory,
            client_quota: None,
            raw_threshold: appliance::codec::DEFAULT_RAW_THRESHOLD,
        }));
        let config = ServerConfig {
            max_connections: 4096,
            frame_timeout,
            io_model,
            // Two loops whatever the machine: every event-loop test spreads connections over both.
            event_loops: 2,
            auth,
        };
        let server = Server::bind("127.0.0.1:0", store, config).expect("bind 127.0.0.1:0");
        let net = server.net_counters();
        TestAppliance {
            server: server.spawn().expect("start appliance thread"),
            net,
        }
    }

    pub fn target(&self) -> String {
        self.server.addr().to_string()
    }

    /// The appliance's connection counters (handshakes, failures...).
    pub fn net(&self) -> &NetCounters {
        &self.net
    }
}

/// A key ring with the conformance suite's keys for `seed`.
#[allow(dead_code)]
pub fn suite_key_ring(seed: u64) -> KeyRing {
    let mut ring = KeyRing::new();
    for (id, key) in tmemctl::conformance::suite_keys(seed) {
        ring.insert(id, key).expect("distinct ids");
    }
    ring
}
