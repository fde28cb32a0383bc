//! The Noise handshake and record layer (`protocol::noise`) against `snow`, an independent
//! implementation of the same Noise pattern, in both roles; deterministic vectors; and every way
//! a session must refuse bytes (wrong key, altered prologue, altered, replayed, reordered records).

mod support;

use protocol::noise::*;
use protocol::{Hello, AUTH_NOISE, VERSION};
use support::RustCrypto;

const PSK: [u8; KEY_LEN] = [0x42; KEY_LEN];

fn params() -> snow::params::NoiseParams {
    "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s".parse().unwrap()
}

fn hello_prologue(client_id: u64) -> [u8; PROLOGUE_LEN] {
    let placeholder = [0u8; MSG1_LEN];
    prologue(&Hello {
        auth_method: AUTH_NOISE,
        auth: &placeholder,
        ..Hello::new(client_id)
    })
}

/// Our initiator's message 1 for `client_id` (timestamp payload `ts`).
fn our_message_1(
    p: &mut RustCrypto,
    client_id: u64,
    psk: &[u8; KEY_LEN],
    ts: u64,
) -> (Handshake, [u8; MSG1_LEN]) {
    let mut hs = Handshake::new(p, &hello_prologue(client_id), psk);
    let mut msg1 = [0u8; MSG1_LEN];
    hs.write_message_1(p, &ts.to_le_bytes(), &mut msg1).unwrap();
    (hs, msg1)
}

fn snow_responder(client_id: u64, psk: &[u8; KEY_LEN]) -> snow::HandshakeState {
    snow::Builder::new(params())
        .psk(0, psk)
        .unwrap()
        .prologue(&hello_prologue(client_id))
        .unwrap()
        .build_responder()
        .unwrap()
}

/// Records flow both ways between our side and snow's transport, in order, including one longer
/// than a single record's plaintext.
fn exchange(p: &mut RustCrypto, ours: &mut Transport, theirs: &mut snow::TransportState) {
    for len in [0usize, 1, 24, 4096, MAX_RECORD_PLAINTEXT] {
        let msg: Vec<u8> = (0..len).map(|i| (i * 7 + len) as u8).collect();
        let mut record = vec![0u8; RECORD_HEADER_LEN + len + TAG_LEN];
        let n = ours.send.seal_record(p, &msg, &mut record).unwrap();
        let ct_len = record_len([record[0], record[1]]).unwrap();
        assert_eq!(n, RECORD_HEADER_LEN + ct_len);
        let mut got = vec![0u8; ct_len];
        let m = theirs
            .read_message(&record[RECORD_HEADER_LEN..n], &mut got)
            .unwrap();
        assert_eq!(&got[..m], &msg[..]);

        let mut ct = vec![0u8; len + TAG_LEN];
        let c = theirs.write_message(&msg, &mut ct).unwrap();
        let mut back = vec![0u8; len];
        let m = ours.recv.open_record(p, &ct[..c], &mut back).unwrap();
        assert_eq!(&back[..m], &msg[..]);
    }
}

#[test]
fn our_initiator_and_snow_responder_agree() {
    let p = &mut RustCrypto::default();
    let (hs, msg1) = our_message_1(p, 0xabc, &PSK, 123_456_789);
    let mut theirs = snow_responder(0xabc, &PSK);
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    assert_eq!(
        theirs.read_message(&msg1, &mut ts).unwrap(),
        MSG1_PAYLOAD_LEN
    );
    assert_eq!(u64::from_le_bytes(ts), 123_456_789);
    let limits = [1, 0, 64, 0, 4, 17, 4, 0];
    let mut msg2 = [0u8; MSG2_LEN];
    assert_eq!(theirs.write_message(&limits, &mut msg2).unwrap(), MSG2_LEN);
    let their_hash = theirs.get_handshake_hash().to_vec();
    let mut got = [0u8; MSG2_PAYLOAD_LEN];
    let mut ours = hs.read_message_2(p, &msg2, &mut got).unwrap();
    assert_eq!(got, limits);
    let mut theirs = theirs.into_transport_mode().unwrap();
    assert_eq!(their_hash.len(), KEY_LEN);
    exchange(p, &mut ours, &mut theirs);
}

#[test]
fn snow_initiator_and_our_responder_agree() {
    let p = &mut RustCrypto::default();
    let mut theirs = snow::Builder::new(params())
        .psk(0, &PSK)
        .unwrap()
        .prologue(&hello_prologue(9))
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut msg1 = [0u8; MSG1_LEN];
    theirs
        .write_message(&42u64.to_le_bytes(), &mut msg1)
        .unwrap();
    let mut hs = Handshake::new(p, &hello_prologue(9), &PSK);
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    hs.read_message_1(p, &msg1, &mut ts).unwrap();
    assert_eq!(u64::from_le_bytes(ts), 42);
    let mut msg2 = [0u8; MSG2_LEN];
    let mut ours = hs
        .write_message_2(p, &[9; MSG2_PAYLOAD_LEN], &mut msg2)
        .unwrap();
    let mut limits = [0u8; MSG2_PAYLOAD_LEN];
    theirs.read_message(&msg2, &mut limits).unwrap();
    assert_eq!(limits, [9; MSG2_PAYLOAD_LEN]);
    let mut theirs = theirs.into_transport_mode().unwrap();
    exchange(p, &mut ours, &mut theirs);
}

/// With fixed ephemeral keys both implementations produce the same bytes; pinned here so a change
/// to the handshake cannot go unnoticed (docs/protocol.md describes these messages).
#[test]
fn deterministic_vectors_match_snow() {
    let e_i = [1u8; KEY_LEN];
    let e_r = [2u8; KEY_LEN];
    let p = &mut RustCrypto {
        fixed: vec![e_i, e_r],
    };
    let mut initiator = Handshake::new(p, &hello_prologue(7), &PSK);
    let mut msg1 = [0u8; MSG1_LEN];
    initiator
        .write_message_1(p, &1u64.to_le_bytes(), &mut msg1)
        .unwrap();

    let mut snow_i = snow::Builder::new(params())
        .psk(0, &PSK)
        .unwrap()
        .prologue(&hello_prologue(7))
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&e_i)
        .build_initiator()
        .unwrap();
    let mut snow_msg1 = [0u8; MSG1_LEN];
    snow_i
        .write_message(&1u64.to_le_bytes(), &mut snow_msg1)
        .unwrap();
    assert_eq!(msg1, snow_msg1, "message 1 differs from snow's");

    let mut responder = Handshake::new(p, &hello_prologue(7), &PSK);
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    responder.read_message_1(p, &msg1, &mut ts).unwrap();
    let mut msg2 = [0u8; MSG2_LEN];
    let mut r = responder
        .write_message_2(p, &[3; MSG2_PAYLOAD_LEN], &mut msg2)
        .unwrap();
    let mut snow_r = snow::Builder::new(params())
        .psk(0, &PSK)
        .unwrap()
        .prologue(&hello_prologue(7))
        .unwrap()
        .fixed_ephemeral_key_for_testing_only(&e_r)
        .build_responder()
        .unwrap();
    snow_r.read_message(&snow_msg1, &mut ts).unwrap();
    let mut snow_msg2 = [0u8; MSG2_LEN];
    snow_r
        .write_message(&[3; MSG2_PAYLOAD_LEN], &mut snow_msg2)
        .unwrap();
    assert_eq!(msg2, snow_msg2, "message 2 differs from snow's");

    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    assert_eq!(hex(&msg1), MSG1_GOLDEN, "message 1 bytes changed");
    assert_eq!(hex(&msg2), MSG2_GOLDEN, "message 2 bytes changed");

    // The first record each way, pinned too.
    let mut i = initiator_transport(p, initiator, &msg2);
    let mut rec = [0u8; RECORD_HEADER_LEN + 4 + TAG_LEN];
    i.send.seal_record(p, b"TMEM", &mut rec).unwrap();
    assert_eq!(hex(&rec), RECORD_GOLDEN, "record bytes changed");
    let mut out = [0u8; 4];
    r.recv
        .open_record(p, &rec[RECORD_HEADER_LEN..], &mut out)
        .unwrap();
    assert_eq!(&out, b"TMEM");
}

fn initiator_transport(p: &mut RustCrypto, hs: Handshake, msg2: &[u8]) -> Transport {
    let mut payload = [0u8; MSG2_PAYLOAD_LEN];
    hs.read_message_2(p, msg2, &mut payload).unwrap()
}

const MSG1_GOLDEN: &str = "a4e09292b651c278b9772c569f5fa9bb13d906b46ab68c9df9dc2b4409f8a2098864d1538df760a594d00dc5519c39f46e9d2c85db0a7865";
const MSG2_GOLDEN: &str = "ce8d3ad1ccb633ec7b70c17814a5c76ecd029685050d344745ba05870e587d59e009224c7930b23e46e771da05d1401dcfa44e50fbcb113c";
const RECORD_GOLDEN: &str = "1400482217aa474d45de32a145fbdb7635f8fad29491";

#[test]
fn a_wrong_key_is_refused_by_either_side() {
    let p = &mut RustCrypto::default();
    let other = [0x43; KEY_LEN];
    // The appliance (responder) detects a client without the key at message 1.
    let (_, msg1) = our_message_1(p, 1, &other, 5);
    let mut theirs = snow_responder(1, &PSK);
    assert!(theirs.read_message(&msg1, &mut [0u8; 64]).is_err());
    let mut ours = Handshake::new(p, &hello_prologue(1), &PSK);
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    assert_eq!(
        ours.read_message_1(p, &msg1, &mut ts),
        Err(NoiseError::Decrypt)
    );
    // The client detects an appliance without the key at message 2.
    let (hs, msg1) = our_message_1(p, 1, &PSK, 5);
    let mut impostor = Handshake::new(p, &hello_prologue(1), &other);
    // It cannot even read message 1; answering blindly with its own key fails at the client.
    assert!(impostor.read_message_1(p, &msg1, &mut ts).is_err());
    let mut fake = Handshake::new(p, &hello_prologue(1), &other);
    let (_, fake_msg1) = our_message_1(p, 1, &other, 5);
    fake.read_message_1(p, &fake_msg1, &mut ts).unwrap();
    let mut msg2 = [0u8; MSG2_LEN];
    fake.write_message_2(p, &[0; MSG2_PAYLOAD_LEN], &mut msg2)
        .unwrap();
    let mut limits = [0u8; MSG2_PAYLOAD_LEN];
    assert_eq!(
        hs.read_message_2(p, &msg2, &mut limits).err(),
        Some(NoiseError::Decrypt)
    );
}

#[test]
fn another_client_id_in_hello_is_refused() {
    let p = &mut RustCrypto::default();
    // A message 1 made for client 1 presented under client 2's id (the prologue differs).
    let (_, msg1) = our_message_1(p, 1, &PSK, 5);
    let mut theirs = snow_responder(2, &PSK);
    assert!(theirs.read_message(&msg1, &mut [0u8; 64]).is_err());
}

fn session_pair(p: &mut RustCrypto) -> (Transport, Transport) {
    let (hs, msg1) = our_message_1(p, 3, &PSK, 1);
    let mut r = Handshake::new(p, &hello_prologue(3), &PSK);
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    r.read_message_1(p, &msg1, &mut ts).unwrap();
    let mut msg2 = [0u8; MSG2_LEN];
    let responder = r
        .write_message_2(p, &[0; MSG2_PAYLOAD_LEN], &mut msg2)
        .unwrap();
    (initiator_transport(p, hs, &msg2), responder)
}

fn seal(p: &mut RustCrypto, t: &mut Transport, msg: &[u8]) -> Vec<u8> {
    let mut rec = vec![0u8; RECORD_HEADER_LEN + msg.len() + TAG_LEN];
    let n = t.send.seal_record(p, msg, &mut rec).unwrap();
    rec.truncate(n);
    rec
}

fn open(p: &mut RustCrypto, t: &mut Transport, rec: &[u8]) -> Result<Vec<u8>, NoiseError> {
    let mut out = vec![0u8; rec.len()];
    let n = t.recv.open_record(p, &rec[RECORD_HEADER_LEN..], &mut out)?;
    out.truncate(n);
    Ok(out)
}

#[test]
fn altered_replayed_and_reordered_records_fail() {
    let p = &mut RustCrypto::default();
    // Altered: any bit of the ciphertext or tag.
    for bit in [0usize, 8 * 5 + 3, 8 * (4 + TAG_LEN) - 1] {
        let (mut a, mut b) = session_pair(p);
        let mut rec = seal(p, &mut a, b"TMEMpage");
        rec[RECORD_HEADER_LEN + bit / 8] ^= 1 << (bit % 8);
        assert_eq!(open(p, &mut b, &rec), Err(NoiseError::Decrypt));
    }
    // Replayed.
    let (mut a, mut b) = session_pair(p);
    let r0 = seal(p, &mut a, b"first");
    assert_eq!(open(p, &mut b, &r0).unwrap(), b"first");
    assert_eq!(open(p, &mut b, &r0), Err(NoiseError::Decrypt));
    // Reordered.
    let (mut a, mut b) = session_pair(p);
    let r0 = seal(p, &mut a, b"first");
    let r1 = seal(p, &mut a, b"second");
    assert_eq!(open(p, &mut b, &r1), Err(NoiseError::Decrypt));
    let _ = r0;
    // From another session (same key, other ephemerals).
    let (mut a, _) = session_pair(p);
    let (_, mut c) = session_pair(p);
    let r = seal(p, &mut a, b"cross");
    assert_eq!(open(p, &mut c, &r), Err(NoiseError::Decrypt));
    // The two directions have different keys: a record reflected back does not open.
    let (mut a, _) = session_pair(p);
    let r = seal(p, &mut a, b"mirror");
    let mut a_recv = a;
    assert_eq!(open(p, &mut a_recv, &r), Err(NoiseError::Decrypt));
}

#[test]
fn streams_are_cut_into_records_and_lengths_are_checked() {
    let p = &mut RustCrypto::default();
    let (mut a, mut b) = session_pair(p);
    let frame: Vec<u8> = (0..protocol::MAX_FRAME).map(|i| (i % 251) as u8).collect();
    let mut wire = vec![0u8; sealed_len(frame.len())];
    let n = a.send.seal_stream(p, &frame, &mut wire).unwrap();
    assert_eq!(n, wire.len());
    let mut back = Vec::new();
    let mut at = 0;
    let mut records = 0;
    while at < n {
        let len = record_len([wire[at], wire[at + 1]]).unwrap();
        let mut out = vec![0u8; len];
        let m = b
            .recv
            .open_record(p, &wire[at + 2..at + 2 + len], &mut out)
            .unwrap();
        back.extend_from_slice(&out[..m]);
        at += 2 + len;
        records += 1;
    }
    assert_eq!(back, frame);
    assert_eq!(records, protocol::MAX_FRAME.div_ceil(MAX_RECORD_PLAINTEXT));
    assert_eq!(sealed_len(0), RECORD_HEADER_LEN + TAG_LEN);
    assert!(record_len([15, 0]).is_err());
    assert_eq!(record_len([0xff, 0xff]), Ok(65_535));
    let mut small = [0u8; 10];
    assert_eq!(
        a.send.seal_record(p, b"too long for it", &mut small),
        Err(NoiseError::Length)
    );
    assert_eq!(VERSION, 1);
}

#[test]
fn each_cipher_has_its_own_method_and_protocol_name() {
    assert_eq!(Cipher::ChaChaPoly.protocol_name().as_bytes(), PROTOCOL_NAME);
    assert_eq!(Cipher::ChaChaPoly.auth_method(), AUTH_NOISE);
    assert_eq!(Cipher::AesGcm.auth_method(), protocol::AUTH_NOISE_AESGCM);
    for c in Cipher::ALL {
        assert_eq!(Cipher::from_auth_method(c.auth_method()), Some(c));
        let parsed: snow::params::NoiseParams = c.protocol_name().parse().unwrap();
        assert_eq!(parsed.name, c.protocol_name());
    }
    assert_eq!(Cipher::from_auth_method(protocol::AUTH_NONE), None);
    assert_eq!(Cipher::from_auth_method(3), None);
}

/// A snow initiator and responder for `cipher`, each building the prologue from the HELLO
/// `auth_method` it saw.
fn snow_pair_with(
    initiator: (Cipher, u8),
    responder: (Cipher, u8),
) -> (snow::HandshakeState, snow::HandshakeState) {
    let placeholder = [0u8; MSG1_LEN];
    let prologue_for = |method: u8| {
        prologue(&Hello {
            auth_method: method,
            auth: &placeholder,
            ..Hello::new(7)
        })
    };
    let (pi, pr) = (prologue_for(initiator.1), prologue_for(responder.1));
    let builder = |cipher: Cipher| snow::Builder::new(cipher.protocol_name().parse().unwrap());
    (
        builder(initiator.0)
            .psk(0, &PSK)
            .and_then(|b| b.prologue(&pi))
            .and_then(|b| b.build_initiator())
            .unwrap(),
        builder(responder.0)
            .psk(0, &PSK)
            .and_then(|b| b.prologue(&pr))
            .and_then(|b| b.build_responder())
            .unwrap(),
    )
}

/// AES-GCM sessions complete as ChaCha20-Poly1305 ones do; a HELLO whose method was changed on the
/// way (a downgrade to the other cipher) fails at message 1, since the method is in the prologue
/// and the cipher in the protocol name.
#[test]
fn aes_gcm_sessions_work_and_the_cipher_cannot_be_swapped_on_the_way() {
    let aes = (Cipher::AesGcm, protocol::AUTH_NOISE_AESGCM);
    let chacha = (Cipher::ChaChaPoly, AUTH_NOISE);
    let (mut i, mut r) = snow_pair_with(aes, aes);
    let mut msg1 = [0u8; MSG1_LEN];
    assert_eq!(
        i.write_message(&[1; MSG1_PAYLOAD_LEN], &mut msg1).unwrap(),
        MSG1_LEN
    );
    let mut ts = [0u8; MSG1_PAYLOAD_LEN];
    assert_eq!(r.read_message(&msg1, &mut ts).unwrap(), MSG1_PAYLOAD_LEN);
    let mut msg2 = [0u8; MSG2_LEN];
    assert_eq!(
        r.write_message(&[2; MSG2_PAYLOAD_LEN], &mut msg2).unwrap(),
        MSG2_LEN
    );
    let mut limits = [0u8; MSG2_PAYLOAD_LEN];
    i.read_message(&msg2, &mut limits).unwrap();
    assert_eq!(limits, [2; MSG2_PAYLOAD_LEN]);

    // The initiator chose AES-GCM; the responder saw method 1 (rewritten) and runs ChaCha.
    let (mut i, mut r) = snow_pair_with(aes, chacha);
    i.write_message(&[1; MSG1_PAYLOAD_LEN], &mut msg1).unwrap();
    assert!(r.read_message(&msg1, &mut ts).is_err());
    // Method rewritten but the responder still runs AES-GCM: the prologue differs.
    let (mut i, mut r) = snow_pair_with(aes, (Cipher::AesGcm, AUTH_NOISE));
    i.write_message(&[1; MSG1_PAYLOAD_LEN], &mut msg1).unwrap();
    assert!(r.read_message(&msg1, &mut ts).is_err());
}
