//! The conformance suite (`tmemctl::conformance`) against a host-mode appliance on 127.0.0.1.
//! The QEMU tests run the same suite against the Hermit VM.

mod common;

use common::TestAppliance;
use std::time::Duration;
use tmemctl::conformance::{run_all, Options};

#[test]
fn host_mode_appliance_conforms() {
    let app = TestAppliance::start(64 << 20, Duration::from_secs(2));
    let opts = Options {
        frame_timeout: Duration::from_secs(2),
        idle_connections: 2000,
    };
    run_all(&app.target(), &opts, |name, r| {
        eprintln!("{} {name}", if r.is_ok() { "ok  " } else { "FAIL" })
    })
    .unwrap();
}
