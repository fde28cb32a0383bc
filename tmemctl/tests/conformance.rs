//! The conformance suite (`tmemctl::conformance`) against host-mode appliances on 127.0.0.1, with
//! both I/O models (the event loop is what runs on Hermit). The QEMU tests run the same suite against
//! the Hermit VM.

mod common;

use appliance::server::IoModel;
use common::TestAppliance;
use std::time::Duration;
use tmemctl::conformance::{run_all, Options};

fn conforms(io_model: IoModel) {
    let app = TestAppliance::start_with(64 << 20, Duration::from_secs(2), io_model);
    let opts = Options {
        frame_timeout: Duration::from_secs(2),
        idle_connections: 2000,
    };
    let label = format!("{io_model:?}");
    run_all(&app.target(), &opts, |name, r| {
        eprintln!("{label} {} {name}", if r.is_ok() { "ok  " } else { "FAIL" })
    })
    .unwrap();
}

#[test]
fn thread_per_connection_server_conforms() {
    conforms(IoModel::Threads);
}

#[test]
fn event_loop_server_conforms() {
    conforms(IoModel::EventLoop);
}
