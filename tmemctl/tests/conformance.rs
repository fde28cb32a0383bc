//! The conformance suite (`tmemctl::conformance`) against host-mode appliances on 127.0.0.1, with
//! both I/O models (the event loop is what runs on Hermit). The QEMU tests run the same suite against
//! the Hermit VM.

mod common;

use appliance::server::IoModel;
use common::{suite_key_ring, TestAppliance};
use std::time::Duration;
use tmemctl::conformance::{run_all, Options};

fn conforms(io_model: IoModel, keyed: bool) {
    let seed = 0x5eed;
    let app = if keyed {
        TestAppliance::start_keyed(
            64 << 20,
            Duration::from_secs(2),
            io_model,
            suite_key_ring(seed),
        )
    } else {
        TestAppliance::start_with(64 << 20, Duration::from_secs(2), io_model)
    };
    let opts = Options {
        frame_timeout: Duration::from_secs(2),
        idle_connections: 2000,
        io_timeout: tmemctl::conformance::DEFAULT_IO_TIMEOUT,
        keys: keyed.then(|| tmemctl::conformance::suite_keys(seed)),
    };
    let label = format!("{io_model:?}{}", if keyed { " keyed" } else { "" });
    run_all(&app.target(), &opts, |name, r| {
        eprintln!("{label} {} {name}", if r.is_ok() { "ok  " } else { "FAIL" })
    })
    .unwrap();
}

#[test]
fn thread_per_connection_server_conforms() {
    conforms(IoModel::Threads, false);
}

#[test]
fn event_loop_server_conforms() {
    conforms(IoModel::EventLoop, false);
}

/// The same suite with every session authenticated and every byte sealed after HELLO.
#[test]
fn thread_per_connection_server_conforms_with_keys() {
    conforms(IoModel::Threads, true);
}

#[test]
fn event_loop_server_conforms_with_keys() {
    conforms(IoModel::EventLoop, true);
}
