//! A real appliance on a free 127.0.0.1 port, stopped when dropped (even when a test panics).

use appliance::server::{Background, IoModel, Server, ServerConfig};
use appliance::store::{Store, StoreConfig};
use std::sync::Arc;
use std::time::Duration;

pub struct TestAppliance(Background);

impl TestAppliance {
    /// The Linux default: a thread per connection.
    #[allow(dead_code)] // not every test file uses both constructors
    pub fn start(memory: usize, frame_timeout: Duration) -> TestAppliance {
        Self::start_with(memory, frame_timeout, IoModel::Threads)
    }

    pub fn start_with(memory: usize, frame_timeout: Duration, io_model: IoModel) -> TestAppliance {
        let store = Arc::new(Store::new(StoreConfig {
            memory_limit: memory,
            client_quota: None,
            raw_threshold: appliance::codec::DEFAULT_RAW_THRESHOLD,
        }));
        let config = ServerConfig {
            max_connections: 4096,
            frame_timeout,
            io_model,
        };
        let server = Server::bind("127.0.0.1:0", store, config).expect("bind 127.0.0.1:0");
        TestAppliance(server.spawn().expect("start appliance thread"))
    }

    pub fn target(&self) -> String {
        self.0.addr().to_string()
    }
}
