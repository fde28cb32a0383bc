//! The appliance's connection core (framing + session + store + codec, as every front end drives
//! it) on an arbitrary byte stream, as a hostile client would send it. A valid HELLO and NEW_POOL
//! are prepended so the fuzzer reaches the page operations. Must never panic, and replies must
//! always be well-formed frames.
#![no_main]

use appliance::auth::{AuthConfig, Authenticator};
use appliance::connection::Connection;
use appliance::store::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use protocol::*;
use std::sync::Arc;
use std::time::Instant;

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(Store::new(StoreConfig { memory_limit: 8 << 20, client_quota: None, raw_threshold: 3584 }));
    let auth = Arc::new(Authenticator::new(AuthConfig::insecure()));
    let mut conn = Connection::new(store, Arc::default(), auth, None, Instant::now());
    let mut stream = vec![0u8; 256];
    let a = Request::Hello(Hello::new(1)).emit(1, 0, &mut stream).unwrap();
    let np = Request::NewPool(NewPool { kind: PoolKind::Persistent, page_size: 4096 });
    let b = np.emit(2, 0, &mut stream[a..]).unwrap();
    stream.truncate(a + b);
    stream.extend_from_slice(data);
    let mut fed = 0;
    while fed < stream.len() {
        let spare = conn.input_buffer();
        let n = spare.len().min(stream.len() - fed).min(1 + data.len() % 4096);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        conn.input_received(n, Instant::now());
        fed += n;
        loop {
            match conn.process() {
                Ok(_) => {}
                Err(_) => return,
            }
            let mut replies = conn.output();
            if replies.is_empty() {
                break;
            }
            let total = replies.len();
            while !replies.is_empty() {
                let len = frame_len(replies).unwrap().expect("whole reply frame");
                let h = Header::parse(replies).unwrap();
                assert!(h.is_reply());
                Reply::parse(h.opcode, h.status, &replies[HEADER_LEN..len]).expect("well-formed reply");
                replies = &replies[len..];
            }
            conn.output_sent(total, Instant::now());
        }
    }
    let _ = conn.input_closed();
});
