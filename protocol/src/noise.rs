//! Authenticated sessions: the Noise protocol `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s` (Noise
//! specification, revision 34: §5 processing rules, §9 pre-shared keys), and the record layer
//! that carries the frame stream after it.
//!
//! The pattern, with a 32-byte key shared by one client and the appliances it uses:
//!
//! ```text
//! NNpsk0:
//!   -> psk, e      (HELLO auth: 32-byte ephemeral key, sealed payload = timestamp u64)
//!   <- e, ee       (HELLO reply auth: 32-byte ephemeral key, sealed payload = appliance limits)
//! ```
//!
//! The prologue binds the HELLO's plaintext fields (versions, method, client id), so a client id
//! can be used only with its key and nothing in HELLO can be altered on the way. Both ephemeral
//! keys give forward secrecy; the pre-shared key gives mutual authentication (message 1 proves the
//! client holds it, message 2 the appliance). Afterwards each direction has its own key and a
//! counter nonce, so an injected, replayed, reordered or altered record fails to open.
//!
//! This module holds the state machines only; the primitives (X25519, ChaCha20-Poly1305,
//! BLAKE2s) come from the platform through [`Primitives`]: the kernel's `lib/crypto` in kclient
//! (what WireGuard uses), RustCrypto in host tests. The appliance and `tmemctl` use the `snow`
//! crate; tests check that this implementation and `snow` agree byte for byte.
//! Nothing here allocates, so a kernel client can run a handshake when memory is short.

use crate::message::{Hello, AUTH_NOISE, AUTH_NOISE_AESGCM};

/// The Noise protocol name (hashed into the initial handshake state) of [`Cipher::ChaChaPoly`],
/// the one this module's own implementation speaks.
pub const PROTOCOL_NAME: &[u8] = b"Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// The AEAD of a session, chosen by the client in HELLO's `auth_method`. Everything else (pattern,
/// X25519, BLAKE2s, message layout, record layer) is the same. The method is in the prologue and
/// the cipher in the protocol name, so an attacker who changes it only breaks the handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cipher {
    /// ChaCha20-Poly1305: fast everywhere in software ([`AUTH_NOISE`]).
    ChaChaPoly,
    /// AES-256-GCM: several times faster on CPUs with AES and carry-less multiply instructions
    /// ([`AUTH_NOISE_AESGCM`]).
    AesGcm,
}

impl Cipher {
    /// Both ciphers, the default first.
    pub const ALL: [Cipher; 2] = [Cipher::ChaChaPoly, Cipher::AesGcm];

    /// The HELLO `auth_method` that selects this cipher.
    pub const fn auth_method(self) -> u8 {
        match self {
            Cipher::ChaChaPoly => AUTH_NOISE,
            Cipher::AesGcm => AUTH_NOISE_AESGCM,
        }
    }

    /// The cipher an `auth_method` selects, if it is a Noise method.
    pub const fn from_auth_method(method: u8) -> Option<Cipher> {
        match method {
            AUTH_NOISE => Some(Cipher::ChaChaPoly),
            AUTH_NOISE_AESGCM => Some(Cipher::AesGcm),
            _ => None,
        }
    }

    /// The Noise protocol name, as Noise libraries parse it.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s",
            Cipher::AesGcm => "Noise_NNpsk0_25519_AESGCM_BLAKE2s",
        }
    }

    /// The short name operators see (logs, `tmemctl --cipher`).
    pub const fn name(self) -> &'static str {
        match self {
            Cipher::ChaChaPoly => "chacha20-poly1305",
            Cipher::AesGcm => "aes-256-gcm",
        }
    }
}
/// Length of a pre-shared key, an X25519 key, a BLAKE2s hash and a ChaCha20-Poly1305 key.
pub const KEY_LEN: usize = 32;
/// Bytes of a ChaCha20-Poly1305 tag.
pub const TAG_LEN: usize = 16;
/// Sealed payload of message 1: the client's wall clock (ns since 1970) as u64, so the appliance
/// can refuse a replayed message 1 (as WireGuard's initiation carries a timestamp).
pub const MSG1_PAYLOAD_LEN: usize = 8;
/// Sealed payload of message 2: version u16, max_batch u16, max_payload u32 (the HELLO reply's
/// limits, authenticated).
pub const MSG2_PAYLOAD_LEN: usize = 8;
/// Length of message 1 (HELLO `auth` with `auth_method` = [`crate::AUTH_NOISE`]).
pub const MSG1_LEN: usize = KEY_LEN + MSG1_PAYLOAD_LEN + TAG_LEN;
/// Length of message 2 (HELLO reply `auth`).
pub const MSG2_LEN: usize = KEY_LEN + MSG2_PAYLOAD_LEN + TAG_LEN;
/// Prefix of the prologue; followed by the first 16 bytes of the HELLO payload.
pub const PROLOGUE_LABEL: &[u8] = b"tmem/1 HELLO";
/// Length of the prologue.
pub const PROLOGUE_LEN: usize = PROLOGUE_LABEL.len() + 16;

/// Bytes before each record: the ciphertext length (u16 little-endian, 16..=65535).
pub const RECORD_HEADER_LEN: usize = 2;
/// Largest record ciphertext (Noise's message limit).
pub const MAX_RECORD_CIPHERTEXT: usize = 65_535;
/// Largest plaintext one record carries.
pub const MAX_RECORD_PLAINTEXT: usize = MAX_RECORD_CIPHERTEXT - TAG_LEN;

/// BLAKE2s block size, for HMAC.
const BLOCK_LEN: usize = 64;

/// What went wrong in a handshake or record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoiseError {
    /// A message or buffer has the wrong length.
    Length,
    /// A tag did not verify: wrong key, altered, replayed or reordered bytes.
    Decrypt,
    /// The Diffie-Hellman result was all zeros (a low-order public key).
    BadKey,
    /// A counter would wrap (after 2^64 - 1 records; never in practice).
    Exhausted,
}

impl core::fmt::Display for NoiseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            NoiseError::Length => "wrong length",
            NoiseError::Decrypt => "authentication failed",
            NoiseError::BadKey => "invalid public key",
            NoiseError::Exhausted => "nonce exhausted",
        })
    }
}

/// The cryptographic primitives, supplied by the platform.
pub trait Primitives {
    /// A fresh random X25519 key pair `(secret, public)`.
    fn generate_keypair(&mut self) -> ([u8; KEY_LEN], [u8; KEY_LEN]);
    /// X25519(`secret`, `public`); `None` if the result is all zeros.
    fn dh(&mut self, secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]>;
    /// BLAKE2s-256 of the concatenation of `parts`.
    fn hash(&mut self, parts: &[&[u8]]) -> [u8; KEY_LEN];
    /// ChaCha20-Poly1305 with the 96-bit nonce `0^32 || le64(nonce)`: writes `plaintext.len() +
    /// TAG_LEN` bytes of ciphertext and tag to `out` (which has exactly that length).
    fn seal(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: u64,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    );
    /// Verifies and decrypts `ciphertext` (tag included) into `out` (`ciphertext.len() - TAG_LEN`
    /// bytes); false if the tag does not verify (then `out` must not be used).
    fn open(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: u64,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> bool;
}

/// HMAC-BLAKE2s (RFC 2104), as Noise's HKDF uses it.
fn hmac(p: &mut impl Primitives, key: &[u8; KEY_LEN], data: &[&[u8]]) -> [u8; KEY_LEN] {
    let mut ipad = [0x36u8; BLOCK_LEN];
    let mut opad = [0x5cu8; BLOCK_LEN];
    for (i, k) in key.iter().enumerate() {
        ipad[i] ^= k;
        opad[i] ^= k;
    }
    let mut parts: [&[u8]; 4] = [&ipad, &[], &[], &[]];
    let n = data.len().min(3);
    parts[1..=n].copy_from_slice(&data[..n]);
    let inner = p.hash(&parts[..=n]);
    let out = p.hash(&[&opad, &inner]);
    wipe(&mut ipad);
    wipe(&mut opad);
    out
}

/// Noise's HKDF with two outputs.
fn hkdf2(
    p: &mut impl Primitives,
    ck: &[u8; KEY_LEN],
    ikm: &[u8],
) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut temp = hmac(p, ck, &[ikm]);
    let o1 = hmac(p, &temp, &[&[1]]);
    let o2 = hmac(p, &temp, &[&o1, &[2]]);
    wipe(&mut temp);
    (o1, o2)
}

/// Noise's HKDF with three outputs.
fn hkdf3(
    p: &mut impl Primitives,
    ck: &[u8; KEY_LEN],
    ikm: &[u8],
) -> ([u8; KEY_LEN], [u8; KEY_LEN], [u8; KEY_LEN]) {
    let mut temp = hmac(p, ck, &[ikm]);
    let o1 = hmac(p, &temp, &[&[1]]);
    let o2 = hmac(p, &temp, &[&o1, &[2]]);
    let o3 = hmac(p, &temp, &[&o2, &[3]]);
    wipe(&mut temp);
    (o1, o2, o3)
}

/// Overwrites key material; `black_box` keeps the compiler from dropping the stores.
fn wipe(bytes: &mut [u8]) {
    bytes.fill(0);
    core::hint::black_box(bytes);
}

/// One direction of a session: a key and the next nonce (Noise's CipherState).
pub struct CipherState {
    key: [u8; KEY_LEN],
    nonce: u64,
}

impl CipherState {
    fn new(key: [u8; KEY_LEN]) -> CipherState {
        CipherState { key, nonce: 0 }
    }

    /// The nonce the next record will use (how many records this direction carried).
    pub fn nonce(&self) -> u64 {
        self.nonce
    }

    fn next_nonce(&mut self) -> Result<u64, NoiseError> {
        let n = self.nonce;
        // 2^64 - 1 is reserved by Noise.
        if n == u64::MAX {
            return Err(NoiseError::Exhausted);
        }
        self.nonce += 1;
        Ok(n)
    }

    /// Seals `plaintext` (at most [`MAX_RECORD_PLAINTEXT`] bytes) as one record (header and
    /// ciphertext) into `out`; returns the record's length.
    pub fn seal_record(
        &mut self,
        p: &mut impl Primitives,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        let ct_len = plaintext.len() + TAG_LEN;
        if plaintext.len() > MAX_RECORD_PLAINTEXT || out.len() < RECORD_HEADER_LEN + ct_len {
            return Err(NoiseError::Length);
        }
        let n = self.next_nonce()?;
        out[..RECORD_HEADER_LEN].copy_from_slice(&(ct_len as u16).to_le_bytes());
        p.seal(
            &self.key,
            n,
            &[],
            plaintext,
            &mut out[RECORD_HEADER_LEN..][..ct_len],
        );
        Ok(RECORD_HEADER_LEN + ct_len)
    }

    /// Seals a whole byte stream chunk as consecutive records into `out`; returns bytes written.
    /// `out` must hold [`sealed_len`]`(plaintext.len())` bytes.
    pub fn seal_stream(
        &mut self,
        p: &mut impl Primitives,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        if out.len() < sealed_len(plaintext.len()) {
            return Err(NoiseError::Length);
        }
        let mut written = 0;
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            written += self.seal_record(p, chunk, &mut out[written..])?;
        }
        Ok(written)
    }

    /// Opens one record's ciphertext (after its header, see [`record_len`]) into `out`
    /// (`ciphertext.len() - TAG_LEN` bytes); returns the plaintext length. Any failure means the
    /// stream was tampered with: the connection must be closed.
    pub fn open_record(
        &mut self,
        p: &mut impl Primitives,
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, NoiseError> {
        if ciphertext.len() < TAG_LEN || ciphertext.len() > MAX_RECORD_CIPHERTEXT {
            return Err(NoiseError::Length);
        }
        let pt_len = ciphertext.len() - TAG_LEN;
        let out = out.get_mut(..pt_len).ok_or(NoiseError::Length)?;
        let n = self.next_nonce()?;
        if !p.open(&self.key, n, &[], ciphertext, out) {
            return Err(NoiseError::Decrypt);
        }
        Ok(pt_len)
    }
}

impl Drop for CipherState {
    fn drop(&mut self) {
        wipe(&mut self.key);
    }
}

/// Bytes `n` plaintext bytes take as records.
pub fn sealed_len(n: usize) -> usize {
    n + n.div_ceil(MAX_RECORD_PLAINTEXT).max(1) * (RECORD_HEADER_LEN + TAG_LEN)
}

/// The ciphertext length announced by a record header; an error for a length no record can have
/// (the stream is then unusable).
pub fn record_len(header: [u8; RECORD_HEADER_LEN]) -> Result<usize, NoiseError> {
    let len = u16::from_le_bytes(header) as usize;
    if len < TAG_LEN {
        return Err(NoiseError::Length);
    }
    Ok(len)
}

/// Both directions of an established session.
pub struct Transport {
    /// What we send with.
    pub send: CipherState,
    /// What we receive with.
    pub recv: CipherState,
}

/// The prologue both sides hash first: [`PROLOGUE_LABEL`] and the HELLO payload's first 16 bytes
/// (min and max version, method, reserved, auth length, client id).
pub fn prologue(hello: &Hello<'_>) -> [u8; PROLOGUE_LEN] {
    let mut out = [0u8; PROLOGUE_LEN];
    let (label, fields) = out.split_at_mut(PROLOGUE_LABEL.len());
    label.copy_from_slice(PROLOGUE_LABEL);
    fields[0..2].copy_from_slice(&hello.min_version.to_le_bytes());
    fields[2..4].copy_from_slice(&hello.max_version.to_le_bytes());
    fields[4] = hello.auth_method;
    fields[5] = 0;
    fields[6..8].copy_from_slice(&(hello.auth.len() as u16).to_le_bytes());
    fields[8..16].copy_from_slice(&hello.client_id.to_le_bytes());
    out
}

/// A handshake in progress (Noise's SymmetricState plus our ephemeral key).
pub struct Handshake {
    ck: [u8; KEY_LEN],
    h: [u8; KEY_LEN],
    k: Option<[u8; KEY_LEN]>,
    n: u64,
    e_secret: [u8; KEY_LEN],
    re: [u8; KEY_LEN],
}

impl Handshake {
    /// Starts a handshake (either role) for `prologue` with the pre-shared key `psk`, and runs
    /// the `psk` token that begins message 1.
    pub fn new(p: &mut impl Primitives, prologue: &[u8], psk: &[u8; KEY_LEN]) -> Handshake {
        // The name is longer than a hash: h = HASH(name).
        let h = p.hash(&[PROTOCOL_NAME]);
        let mut hs = Handshake {
            ck: h,
            h,
            k: None,
            n: 0,
            e_secret: [0; KEY_LEN],
            re: [0; KEY_LEN],
        };
        hs.mix_hash(p, prologue);
        // psk: MixKeyAndHash(psk).
        let (ck, temp_h, temp_k) = hkdf3(p, &hs.ck, psk);
        hs.ck = ck;
        hs.mix_hash(p, &temp_h);
        hs.set_key(temp_k);
        hs
    }

    fn mix_hash(&mut self, p: &mut impl Primitives, data: &[u8]) {
        self.h = p.hash(&[&self.h, data]);
    }

    fn mix_key(&mut self, p: &mut impl Primitives, ikm: &[u8]) {
        let (ck, temp_k) = hkdf2(p, &self.ck, ikm);
        self.ck = ck;
        self.set_key(temp_k);
    }

    fn set_key(&mut self, k: [u8; KEY_LEN]) {
        self.k = Some(k);
        self.n = 0;
    }

    /// `e` token: our ephemeral public key goes out (and into the hash and, psk mode, the key).
    fn write_e(&mut self, p: &mut impl Primitives, out: &mut [u8]) {
        let (secret, public) = p.generate_keypair();
        self.e_secret = secret;
        out[..KEY_LEN].copy_from_slice(&public);
        self.mix_hash(p, &public);
        self.mix_key(p, &public);
    }

    /// `e` token, receiving side.
    fn read_e(&mut self, p: &mut impl Primitives, msg: &[u8]) {
        self.re.copy_from_slice(&msg[..KEY_LEN]);
        let re = self.re;
        self.mix_hash(p, &re);
        self.mix_key(p, &re);
    }

    /// `ee` token.
    fn ee(&mut self, p: &mut impl Primitives) -> Result<(), NoiseError> {
        let mut shared = p.dh(&self.e_secret, &self.re).ok_or(NoiseError::BadKey)?;
        self.mix_key(p, &shared);
        wipe(&mut shared);
        Ok(())
    }

    fn encrypt_and_hash(&mut self, p: &mut impl Primitives, payload: &[u8], out: &mut [u8]) {
        let key = self.k.unwrap_or([0; KEY_LEN]);
        let h = self.h;
        p.seal(&key, self.n, &h, payload, out);
        self.n += 1;
        self.mix_hash(p, out);
    }

    fn decrypt_and_hash(
        &mut self,
        p: &mut impl Primitives,
        ciphertext: &[u8],
        payload: &mut [u8],
    ) -> Result<(), NoiseError> {
        let key = self.k.unwrap_or([0; KEY_LEN]);
        let h = self.h;
        if !p.open(&key, self.n, &h, ciphertext, payload) {
            return Err(NoiseError::Decrypt);
        }
        self.n += 1;
        self.mix_hash(p, ciphertext);
        Ok(())
    }

    /// Initiator: writes message 1 (`e`, sealed `payload`) into `out` (exactly
    /// `KEY_LEN + payload.len() + TAG_LEN` bytes).
    pub fn write_message_1(
        &mut self,
        p: &mut impl Primitives,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<(), NoiseError> {
        if out.len() != KEY_LEN + payload.len() + TAG_LEN {
            return Err(NoiseError::Length);
        }
        let (e, sealed) = out.split_at_mut(KEY_LEN);
        self.write_e(p, e);
        self.encrypt_and_hash(p, payload, sealed);
        Ok(())
    }

    /// Responder: reads message 1 and opens its payload into `payload` (`msg.len() - KEY_LEN -
    /// TAG_LEN` bytes). Fails if the sender does not hold the pre-shared key.
    pub fn read_message_1(
        &mut self,
        p: &mut impl Primitives,
        msg: &[u8],
        payload: &mut [u8],
    ) -> Result<(), NoiseError> {
        if msg.len() < KEY_LEN + TAG_LEN || payload.len() != msg.len() - KEY_LEN - TAG_LEN {
            return Err(NoiseError::Length);
        }
        self.read_e(p, msg);
        self.decrypt_and_hash(p, &msg[KEY_LEN..], payload)
    }

    /// Responder: writes message 2 (`e`, `ee`, sealed `payload`) and finishes the handshake.
    pub fn write_message_2(
        mut self,
        p: &mut impl Primitives,
        payload: &[u8],
        out: &mut [u8],
    ) -> Result<Transport, NoiseError> {
        if out.len() != KEY_LEN + payload.len() + TAG_LEN {
            return Err(NoiseError::Length);
        }
        let (e, sealed) = out.split_at_mut(KEY_LEN);
        self.write_e(p, e);
        self.ee(p)?;
        self.encrypt_and_hash(p, payload, sealed);
        let (to_responder, to_initiator) = self.split(p);
        Ok(Transport {
            send: to_initiator,
            recv: to_responder,
        })
    }

    /// Initiator: reads message 2, opens its payload into `payload`, finishes the handshake.
    /// Fails if the responder does not hold the pre-shared key.
    pub fn read_message_2(
        mut self,
        p: &mut impl Primitives,
        msg: &[u8],
        payload: &mut [u8],
    ) -> Result<Transport, NoiseError> {
        if msg.len() < KEY_LEN + TAG_LEN || payload.len() != msg.len() - KEY_LEN - TAG_LEN {
            return Err(NoiseError::Length);
        }
        self.read_e(p, msg);
        self.ee(p)?;
        self.decrypt_and_hash(p, &msg[KEY_LEN..], payload)?;
        let (to_responder, to_initiator) = self.split(p);
        Ok(Transport {
            send: to_responder,
            recv: to_initiator,
        })
    }

    /// The handshake hash (for tests and channel binding).
    pub fn hash(&self) -> [u8; KEY_LEN] {
        self.h
    }

    fn split(&mut self, p: &mut impl Primitives) -> (CipherState, CipherState) {
        let (k1, k2) = hkdf2(p, &self.ck, &[]);
        (CipherState::new(k1), CipherState::new(k2))
    }
}

impl Drop for Handshake {
    fn drop(&mut self) {
        wipe(&mut self.ck);
        wipe(&mut self.e_secret);
        if let Some(k) = self.k.as_mut() {
            wipe(k);
        }
    }
}
