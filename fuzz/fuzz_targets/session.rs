//! The appliance's server core (framing + session + store + codec) on an arbitrary byte stream, as a
//! hostile client would send it. A valid HELLO and NEW_POOL are prepended so the fuzzer reaches the
//! page operations. Must never panic, and replies must always be well-formed frames.
#![no_main]

use appliance::framing::{FrameBuffer, ReplyBuffer};
use appliance::session::Session;
use appliance::store::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use protocol::*;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    let store = Arc::new(Store::new(StoreConfig { memory_limit: 8 << 20, client_quota: None, raw_threshold: 3584 }));
    let mut session = Session::new(store, Arc::default());
    let mut stream = vec![0u8; 256];
    let a = Request::Hello(Hello::new(1)).emit(1, 0, &mut stream).unwrap();
    let np = Request::NewPool(NewPool { kind: PoolKind::Persistent, page_size: 4096 });
    let b = np.emit(2, 0, &mut stream[a..]).unwrap();
    stream.truncate(a + b);
    stream.extend_from_slice(data);
    let mut frames = FrameBuffer::default();
    let mut out = ReplyBuffer::default();
    let mut fed = 0;
    while fed < stream.len() {
        let spare = frames.spare();
        let n = spare.len().min(stream.len() - fed).min(1 + data.len() % 4096);
        spare[..n].copy_from_slice(&stream[fed..fed + n]);
        frames.commit(n);
        fed += n;
        loop {
            match frames.next_frame() {
                Ok(Some(frame)) => {
                    if session.handle_frame(frame, &mut out).is_err() {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        let mut replies = out.pending();
        while !replies.is_empty() {
            let len = frame_len(replies).unwrap().expect("whole reply frame");
            let h = Header::parse(replies).unwrap();
            assert!(h.is_reply());
            Reply::parse(h.opcode, h.status, &replies[HEADER_LEN..len]).expect("well-formed reply");
            replies = &replies[len..];
        }
        out.clear();
    }
});
