//! `noise::Primitives` from RustCrypto crates, for host tests (the kernel client supplies its own
//! from `lib/crypto`). Ephemeral keys are random unless a test queues fixed ones.

use blake2::{Blake2s256, Digest};
use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce, Tag};
use protocol::noise::{Primitives, KEY_LEN, TAG_LEN};
use x25519_dalek::{PublicKey, StaticSecret};

#[derive(Default)]
pub struct RustCrypto {
    /// Secrets handed out by `generate_keypair` before random ones (deterministic vectors).
    pub fixed: Vec<[u8; KEY_LEN]>,
}

fn nonce(n: u64) -> Nonce {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_le_bytes());
    bytes.into()
}

impl Primitives for RustCrypto {
    fn generate_keypair(&mut self) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        let secret = if self.fixed.is_empty() {
            let mut s = [0u8; KEY_LEN];
            getrandom::fill(&mut s).unwrap();
            s
        } else {
            self.fixed.remove(0)
        };
        let public = PublicKey::from(&StaticSecret::from(secret));
        (secret, public.to_bytes())
    }

    fn dh(&mut self, secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        let out = StaticSecret::from(*secret)
            .diffie_hellman(&PublicKey::from(*public))
            .to_bytes();
        (out != [0; KEY_LEN]).then_some(out)
    }

    fn hash(&mut self, parts: &[&[u8]]) -> [u8; KEY_LEN] {
        let mut h = Blake2s256::new();
        for p in parts {
            h.update(p);
        }
        h.finalize().into()
    }

    fn seal(&mut self, key: &[u8; KEY_LEN], n: u64, ad: &[u8], plaintext: &[u8], out: &mut [u8]) {
        let (ct, tag) = out.split_at_mut(plaintext.len());
        ct.copy_from_slice(plaintext);
        let t = ChaCha20Poly1305::new(key.into())
            .encrypt_in_place_detached(&nonce(n), ad, ct)
            .unwrap();
        tag.copy_from_slice(&t);
    }

    fn open(&mut self, key: &[u8; KEY_LEN], n: u64, ad: &[u8], ct: &[u8], out: &mut [u8]) -> bool {
        let Some(body_len) = ct.len().checked_sub(TAG_LEN) else {
            return false;
        };
        let (body, tag) = ct.split_at(body_len);
        out[..body_len].copy_from_slice(body);
        ChaCha20Poly1305::new(key.into())
            .decrypt_in_place_detached(&nonce(n), ad, &mut out[..body_len], Tag::from_slice(tag))
            .is_ok()
    }
}
