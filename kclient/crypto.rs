//! The kernel's `lib/crypto` (X25519, ChaCha20-Poly1305, BLAKE2s: what WireGuard uses) behind
//! `protocol::noise::Primitives`, so the one Noise implementation in `protocol/` runs in the kernel;
//! and the sealing of pages for `encrypt_pages`. Nothing here allocates.

use kernel::ffi::c_void;

use crate::ffi;
use crate::protocol::noise::{Primitives, KEY_LEN, TAG_LEN};

/// The kernel's primitives (stateless).
pub(crate) struct KernelCrypto;

impl Primitives for KernelCrypto {
    fn generate_keypair(&mut self) -> ([u8; KEY_LEN], [u8; KEY_LEN]) {
        let (mut secret, mut public) = ([0u8; KEY_LEN], [0u8; KEY_LEN]);
        // SAFETY: both buffers are valid for writes of 32 bytes.
        unsafe { ffi::kc_x25519_keypair(secret.as_mut_ptr(), public.as_mut_ptr()) };
        (secret, public)
    }

    fn dh(&mut self, secret: &[u8; KEY_LEN], public: &[u8; KEY_LEN]) -> Option<[u8; KEY_LEN]> {
        let mut out = [0u8; KEY_LEN];
        // SAFETY: `out` is writable and `secret`, `public` readable for 32 bytes each.
        let ok = unsafe { ffi::kc_x25519(out.as_mut_ptr(), secret.as_ptr(), public.as_ptr()) };
        ok.then_some(out)
    }

    fn hash(&mut self, parts: &[&[u8]]) -> [u8; KEY_LEN] {
        // Noise hashes at most four parts at once (HMAC's pad, two inputs and a counter byte).
        const MAX: usize = 8;
        let mut ptrs = [core::ptr::null::<u8>(); MAX];
        let mut lens = [0usize; MAX];
        let n = parts.len().min(MAX);
        for (i, p) in parts.iter().take(n).enumerate() {
            ptrs[i] = p.as_ptr();
            lens[i] = p.len();
        }
        let mut out = [0u8; KEY_LEN];
        // SAFETY: `ptrs[..n]`/`lens[..n]` describe `n` readable slices; `out` is writable for 32.
        unsafe { ffi::kc_blake2s(out.as_mut_ptr(), ptrs.as_ptr(), lens.as_ptr(), n) };
        out
    }

    fn seal(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: u64,
        ad: &[u8],
        plaintext: &[u8],
        out: &mut [u8],
    ) {
        seal(key, nonce, ad, plaintext, out);
    }

    fn open(
        &mut self,
        key: &[u8; KEY_LEN],
        nonce: u64,
        ad: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> bool {
        open(key, nonce, ad, ciphertext, out)
    }
}

/// ChaCha20-Poly1305: `out` receives `plaintext.len() + TAG_LEN` bytes (nothing if it is shorter).
pub(crate) fn seal(key: &[u8; KEY_LEN], nonce: u64, ad: &[u8], plaintext: &[u8], out: &mut [u8]) {
    if out.len() < plaintext.len() + TAG_LEN {
        return;
    }
    // SAFETY: `out` is writable for `plaintext.len() + 16` bytes (checked), `plaintext` and `ad`
    // readable for their lengths, `key` for 32; the buffers do not overlap (`&mut` vs `&`).
    unsafe {
        ffi::kc_aead_seal(
            out.as_mut_ptr(),
            plaintext.as_ptr(),
            plaintext.len(),
            ad.as_ptr(),
            ad.len(),
            nonce,
            key.as_ptr(),
        )
    };
}

/// ChaCha20-Poly1305 open: `out` receives `ciphertext.len() - TAG_LEN` bytes; false if the tag
/// does not verify (or the lengths are wrong).
pub(crate) fn open(
    key: &[u8; KEY_LEN],
    nonce: u64,
    ad: &[u8],
    ciphertext: &[u8],
    out: &mut [u8],
) -> bool {
    let Some(pt_len) = ciphertext.len().checked_sub(TAG_LEN) else {
        return false;
    };
    if out.len() < pt_len {
        return false;
    }
    // SAFETY: `out` is writable for `pt_len` bytes (checked), `ciphertext`, `ad` and `key`
    // readable for their lengths; no overlap.
    unsafe {
        ffi::kc_aead_open(
            out.as_mut_ptr(),
            ciphertext.as_ptr(),
            ciphertext.len(),
            ad.as_ptr(),
            ad.len(),
            nonce,
            key.as_ptr(),
        )
    }
}

/// Fills `buf` with random bytes.
pub(crate) fn random(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { ffi::kc_random(buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
}

/// The wall clock in ns since 1970 (message 1's timestamp).
pub(crate) fn wall_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { ffi::kc_wall_ns() }
}

/// Overwrites key material (not optimised away).
pub(crate) fn wipe(buf: &mut [u8]) {
    // SAFETY: `buf` is valid for writes of its length.
    unsafe { ffi::kc_memzero(buf.as_mut_ptr().cast::<c_void>(), buf.len()) };
}

/// A key that never leaves this machine, wiped on drop: the page key of `encrypt_pages` and the
/// pre-shared key of the Noise handshake.
pub(crate) struct SecretKey([u8; KEY_LEN]);

impl SecretKey {
    /// Wraps `key` (the caller wipes its own copy).
    pub(crate) fn new(key: [u8; KEY_LEN]) -> Self {
        Self(key)
    }

    /// A fresh random key.
    pub(crate) fn random() -> Self {
        let mut k = [0u8; KEY_LEN];
        random(&mut k);
        Self(k)
    }

    /// A second copy (each copy is wiped when dropped).
    pub(crate) fn duplicate(&self) -> Self {
        Self(self.0)
    }

    pub(crate) fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        wipe(&mut self.0);
    }
}
