//! The appliance's connection core with keys: arbitrary authentication material in HELLO, and
//! after a real handshake (snow as the client) arbitrary ciphertext, or arbitrary frames sealed
//! properly so they reach the session through the record layer. Must never panic; sealed replies
//! must open and be well-formed frames.
#![no_main]

use appliance::auth::{AuthConfig, Authenticator};
use appliance::connection::Connection;
use appliance::keys::KeyRing;
use appliance::store::{Store, StoreConfig};
use libfuzzer_sys::fuzz_target;
use protocol::noise::{self, MSG1_LEN, MSG2_PAYLOAD_LEN, RECORD_HEADER_LEN, TAG_LEN};
use protocol::*;
use std::sync::Arc;
use std::time::Instant;

const KEY: [u8; 32] = [7; 32];

fn connection() -> Connection {
    let store = Arc::new(Store::new(StoreConfig { memory_limit: 8 << 20, client_quota: None, raw_threshold: 3584 }));
    let mut keys = KeyRing::new();
    keys.insert(1, KEY).unwrap();
    let auth = Arc::new(Authenticator::new(AuthConfig::with_keys(keys)));
    Connection::new(store, Arc::default(), auth, None, Instant::now())
}

fn feed(conn: &mut Connection, bytes: &[u8]) -> bool {
    let mut fed = 0;
    while fed < bytes.len() {
        if !conn.wants_input() {
            return conn.process().is_ok();
        }
        let spare = conn.input_buffer();
        let n = spare.len().min(bytes.len() - fed);
        spare[..n].copy_from_slice(&bytes[fed..fed + n]);
        conn.input_received(n, Instant::now());
        fed += n;
        if conn.process().is_err() {
            return false;
        }
    }
    true
}

fn hello(auth: &[u8]) -> Vec<u8> {
    let req = Request::Hello(Hello { auth_method: AUTH_NOISE, auth, ..Hello::new(1) });
    let mut buf = vec![0u8; 256];
    let n = req.emit(1, 0, &mut buf).unwrap();
    buf.truncate(n);
    buf
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut conn = connection();
    if mode % 3 == 0 {
        let n = rest.len().min(AUTH_MAX);
        let mut stream = hello(&rest[..n]);
        stream.extend_from_slice(&rest[n..]);
        feed(&mut conn, &stream);
        return;
    }
    let mut msg1 = [0u8; MSG1_LEN];
    let prologue = noise::prologue(&Hello { auth_method: AUTH_NOISE, auth: &msg1, ..Hello::new(1) });
    let mut hs = snow::Builder::new("Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
        .psk(0, &KEY).unwrap().prologue(&prologue).unwrap().build_initiator().unwrap();
    hs.write_message(&1u64.to_le_bytes(), &mut msg1).unwrap();
    assert!(feed(&mut conn, &hello(&msg1)));
    // The HELLO reply goes out in clear: take it and finish the handshake.
    let out = conn.output().to_vec();
    let h = Header::parse(&out).unwrap();
    let Ok(Reply::Hello(r)) = Reply::parse(h.opcode, h.status, &out[HEADER_LEN..h.frame_len()]) else {
        panic!("no HELLO reply");
    };
    let mut limits = [0u8; MSG2_PAYLOAD_LEN];
    hs.read_message(r.auth, &mut limits).unwrap();
    conn.output_sent(out.len(), Instant::now());
    let mut t = hs.into_transport_mode().unwrap();
    if mode % 3 == 1 {
        feed(&mut conn, rest);
        return;
    }
    let mut wire = Vec::new();
    for chunk in rest.chunks(noise::MAX_RECORD_PLAINTEXT) {
        let at = wire.len();
        wire.resize(at + RECORD_HEADER_LEN + chunk.len() + TAG_LEN, 0);
        wire[at..at + 2].copy_from_slice(&((chunk.len() + TAG_LEN) as u16).to_le_bytes());
        t.write_message(chunk, &mut wire[at + 2..]).unwrap();
    }
    let ok = feed(&mut conn, &wire);
    // Whatever came back opens and holds whole reply frames.
    let sealed = conn.output().to_vec();
    let mut plain = Vec::new();
    let mut at = 0;
    while at + 2 <= sealed.len() {
        let len = u16::from_le_bytes([sealed[at], sealed[at + 1]]) as usize;
        let mut out = vec![0u8; len];
        let n = t.read_message(&sealed[at + 2..at + 2 + len], &mut out).expect("reply record opens");
        plain.extend_from_slice(&out[..n]);
        at += 2 + len;
    }
    if ok {
        let mut replies = &plain[..];
        while !replies.is_empty() {
            let len = frame_len(replies).unwrap().expect("whole reply frame");
            let h = Header::parse(replies).unwrap();
            assert!(h.is_reply());
            Reply::parse(h.opcode, h.status, &replies[HEADER_LEN..len]).expect("well-formed reply");
            replies = &replies[len..];
        }
    }
});
