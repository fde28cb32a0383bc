//! Who may use this appliance: the HELLO handshake (Noise_NNpsk0 with each client's pre-shared
//! key, see `protocol::noise` and docs/security.md), and the refusal of replayed handshakes.
//!
//! The appliance side runs `snow`, an independent implementation of the Noise pattern the kernel
//! client implements in `protocol::noise` (tests check the two agree byte for byte). A client id
//! with a key can only be used with that key; a client id without a key is served only when the
//! appliance was started `--insecure`.

use crate::keys::KeyRing;
use protocol::noise::{self, MSG1_LEN, MSG1_PAYLOAD_LEN, MSG2_LEN, MSG2_PAYLOAD_LEN};
use protocol::{Hello, AUTH_NONE};
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Who may connect.
#[derive(Clone, Debug, Default)]
pub struct AuthConfig {
    /// Clients that authenticate with Noise, and their keys.
    pub keys: KeyRing,
    /// Also serve clients that send no credentials (`auth_method` 0), under ids without a key.
    /// Only when asked for by name (`--insecure`), or for a loopback-only appliance.
    pub allow_unauthenticated: bool,
}

impl AuthConfig {
    /// Serves anyone, without authentication (tests on loopback, `--insecure`).
    pub fn insecure() -> AuthConfig {
        AuthConfig {
            keys: KeyRing::new(),
            allow_unauthenticated: true,
        }
    }

    /// Serves exactly the clients in `keys`, authenticated.
    pub fn with_keys(keys: KeyRing) -> AuthConfig {
        AuthConfig {
            keys,
            allow_unauthenticated: false,
        }
    }
}

/// Why a HELLO was refused (logged with the client id and peer; never with key material).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// `auth_method` 0 while this appliance requires authentication (or for a keyed id).
    #[error("client sent no credentials; this appliance requires its key")]
    CredentialsRequired,
    /// No key for this client id.
    #[error("unknown client id")]
    UnknownClient,
    /// An `auth_method` this appliance does not know, or auth of the wrong length.
    #[error("unsupported authentication")]
    Unsupported,
    /// Message 1 did not authenticate: the client does not hold the key (or the HELLO was altered).
    #[error("handshake failed: wrong key or altered HELLO")]
    WrongKey,
    /// Message 1 authenticated, but its timestamp was seen before or is too old: a replay.
    #[error("replayed handshake")]
    Replayed,
    /// The Noise library failed for another reason.
    #[error("handshake error")]
    Internal,
}

/// A completed handshake: message 2 for the HELLO reply, and the session's transport keys.
pub struct Established {
    /// Noise message 2 (HELLO reply `auth`).
    pub msg2: [u8; MSG2_LEN],
    /// Transport keys and counters for both directions.
    pub transport: snow::TransportState,
}

/// Checks HELLOs against the keys; shared by every connection.
pub struct Authenticator {
    config: AuthConfig,
    /// Per client: timestamps of recently accepted handshakes.
    replay: Mutex<HashMap<u64, ReplayWindow>>,
}

impl Authenticator {
    /// An authenticator for `config`.
    pub fn new(config: AuthConfig) -> Authenticator {
        Authenticator {
            config,
            replay: Mutex::new(HashMap::new()),
        }
    }

    /// Whether clients without credentials are served.
    pub fn allows_unauthenticated(&self) -> bool {
        self.config.allow_unauthenticated
    }

    /// Decides on a HELLO. `Ok(None)`: an unauthenticated session (insecure mode);
    /// `Ok(Some(_))`: an authenticated one, with `limits` (the reply's version, max_batch,
    /// max_payload) sealed into message 2.
    pub fn hello(
        &self,
        hello: &Hello<'_>,
        limits: &[u8; MSG2_PAYLOAD_LEN],
    ) -> Result<Option<Established>, AuthError> {
        match hello.auth_method {
            AUTH_NONE => {
                if self.config.allow_unauthenticated
                    && self.config.keys.get(hello.client_id).is_none()
                {
                    Ok(None)
                } else {
                    Err(AuthError::CredentialsRequired)
                }
            }
            method => match noise::Cipher::from_auth_method(method) {
                Some(cipher) => self.noise(hello, cipher, limits).map(Some),
                None => Err(AuthError::Unsupported),
            },
        }
    }

    fn noise(
        &self,
        hello: &Hello<'_>,
        cipher: noise::Cipher,
        limits: &[u8; MSG2_PAYLOAD_LEN],
    ) -> Result<Established, AuthError> {
        // No key, no work: an unknown id costs a map lookup, not a handshake.
        let psk = self
            .config
            .keys
            .get(hello.client_id)
            .ok_or(AuthError::UnknownClient)?;
        if hello.auth.len() != MSG1_LEN {
            return Err(AuthError::Unsupported);
        }
        let params: snow::params::NoiseParams = cipher
            .protocol_name()
            .parse()
            .map_err(|_| AuthError::Internal)?;
        let prologue = noise::prologue(hello);
        let mut hs = snow::Builder::new(params)
            .psk(0, psk)
            .and_then(|b| b.prologue(&prologue))
            .and_then(|b| b.build_responder())
            .map_err(|_| AuthError::Internal)?;
        // Only hashing and one AEAD open before this fails: a client without the key cannot make
        // us do Diffie-Hellman.
        let mut ts = [0u8; MSG1_PAYLOAD_LEN];
        match hs.read_message(hello.auth, &mut ts) {
            Ok(MSG1_PAYLOAD_LEN) => {}
            _ => return Err(AuthError::WrongKey),
        }
        if !self.fresh(hello.client_id, u64::from_le_bytes(ts)) {
            return Err(AuthError::Replayed);
        }
        let mut msg2 = [0u8; MSG2_LEN];
        match hs.write_message(limits, &mut msg2) {
            Ok(MSG2_LEN) => {}
            _ => return Err(AuthError::Internal),
        }
        let transport = hs.into_transport_mode().map_err(|_| AuthError::Internal)?;
        Ok(Established { msg2, transport })
    }

    fn fresh(&self, client_id: u64, timestamp: u64) -> bool {
        self.replay
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(client_id)
            .or_default()
            .accept(timestamp)
    }
}

/// The handshake timestamps one client used recently. A client's connections handshake
/// concurrently, so their timestamps may arrive out of order: any timestamp not seen before is
/// accepted unless it is older than [`MAX_AGE_NS`] behind the newest, or not above the floor left
/// by timestamps forgotten to bound memory.
#[derive(Default)]
struct ReplayWindow {
    recent: BTreeSet<u64>,
    floor: u64,
}

/// How far behind the newest accepted handshake another may be.
const MAX_AGE_NS: u64 = 120 * 1_000_000_000;
/// Timestamps kept per client.
const KEEP: usize = 256;

impl ReplayWindow {
    fn accept(&mut self, ts: u64) -> bool {
        let newest = self.recent.last().copied().unwrap_or(0);
        if ts <= self.floor || self.recent.contains(&ts) || ts.saturating_add(MAX_AGE_NS) < newest {
            return false;
        }
        self.recent.insert(ts);
        let newest = newest.max(ts);
        while self.recent.len() > KEEP
            || self
                .recent
                .first()
                .is_some_and(|&t| t.saturating_add(MAX_AGE_NS) < newest)
        {
            if let Some(old) = self.recent.pop_first() {
                self.floor = self.floor.max(old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replay_window_accepts_out_of_order_once_and_refuses_old() {
        let mut w = ReplayWindow::default();
        let s = 1_000_000_000u64;
        assert!(w.accept(100 * s));
        assert!(
            w.accept(99 * s),
            "concurrent handshakes may arrive out of order"
        );
        assert!(!w.accept(99 * s), "the same timestamp twice is a replay");
        assert!(!w.accept(100 * s));
        assert!(w.accept(300 * s));
        assert!(!w.accept(100 * s + 1), "older than 120 s behind the newest");
        for i in 0..(KEEP as u64 + 10) {
            assert!(w.accept(300 * s + 1 + i));
        }
        assert_eq!(w.recent.len(), KEEP);
        assert!(
            !w.accept(300 * s + 5),
            "forgotten timestamps are below the floor"
        );
    }
}
