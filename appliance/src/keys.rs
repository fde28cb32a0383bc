//! Client keys: which client ids this appliance serves, and the 32-byte pre-shared key of each.
//!
//! Sources: `--keys FILE` (one `CLIENT_ID KEY_HEX` per line, `#` comments, blank lines allowed;
//! the format `tmemctl keygen` prints) and `--key CLIENT_ID:KEY_HEX` (repeatable; the Hermit
//! image's way, since the VM has no files). Client ids are decimal or `0x` hex. A bad line is an
//! error naming the line, never a partial key ring. Keys are wiped from memory when dropped and
//! never printed: `Debug` shows only the client ids.

use protocol::keyfile::{self, KeyLineError};
use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use zeroize::Zeroizing;

/// Bytes of a client key.
pub const KEY_LEN: usize = protocol::noise::KEY_LEN;

/// A client's pre-shared key, wiped on drop.
pub type ClientKey = Zeroizing<[u8; KEY_LEN]>;

/// Client id -> key.
#[derive(Clone, Default)]
pub struct KeyRing {
    keys: HashMap<u64, ClientKey>,
}

/// Why key material was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    /// Not `CLIENT_ID KEY_HEX` / `CLIENT_ID:KEY_HEX`.
    #[error("{at}: {what}")]
    Syntax {
        /// Where (file:line or the argument).
        at: String,
        /// What is wrong.
        what: KeyLineError,
    },
    /// The same client id twice.
    #[error("{at}: client id {id:#x} appears twice")]
    Duplicate {
        /// Where the second one is.
        at: String,
        /// The id.
        id: u64,
    },
}

impl KeyRing {
    /// An empty ring (no client can authenticate).
    pub fn new() -> KeyRing {
        KeyRing::default()
    }

    /// Reads a keys file.
    pub fn load(path: &Path) -> anyhow::Result<KeyRing> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| anyhow::anyhow!("cannot read keys file {}: {e}", path.display()))?,
        );
        let mut ring = KeyRing::new();
        for (n, line) in text.lines().enumerate() {
            let at = format!("{}:{}", path.display(), n + 1);
            match keyfile::parse_line(line) {
                Ok(Some((id, key))) => ring.insert_at(&at, id, key)?,
                Ok(None) => {}
                Err(e) => return Err(KeyError::Syntax { at, what: e }.into()),
            }
        }
        Ok(ring)
    }

    /// Adds `CLIENT_ID:KEY_HEX` (a `--key` argument).
    pub fn add_arg(&mut self, arg: &str) -> Result<(), KeyError> {
        let at = "--key".to_string();
        let (id, key) = arg.split_once(':').ok_or(KeyError::Syntax {
            at: at.clone(),
            what: KeyLineError::Fields,
        })?;
        match keyfile::parse_line(&format!("{} {}", id.trim(), key.trim())) {
            Ok(Some((id, key))) => self.insert_at(&at, id, key),
            Ok(None) => Err(KeyError::Syntax {
                at,
                what: KeyLineError::Fields,
            }),
            Err(what) => Err(KeyError::Syntax { at, what }),
        }
    }

    fn insert_at(&mut self, at: &str, id: u64, key: [u8; KEY_LEN]) -> Result<(), KeyError> {
        self.insert(id, key).map_err(|id| KeyError::Duplicate {
            at: at.to_string(),
            id,
        })
    }

    /// Adds a key; refuses a second key for the same id (returns the id).
    pub fn insert(&mut self, client_id: u64, key: [u8; KEY_LEN]) -> Result<(), u64> {
        if self.keys.contains_key(&client_id) {
            return Err(client_id);
        }
        self.keys.insert(client_id, Zeroizing::new(key));
        Ok(())
    }

    /// The key of `client_id`, if it has one.
    pub fn get(&self, client_id: u64) -> Option<&ClientKey> {
        self.keys.get(&client_id)
    }

    /// How many clients have keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no client has a key.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ids: Vec<_> = self.keys.keys().collect();
        ids.sort();
        f.debug_struct("KeyRing").field("client_ids", &ids).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";

    #[test]
    fn file_format_with_comments_hex_and_decimal_ids() {
        let dir = std::env::temp_dir().join(format!("tmem-keys-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("keys");
        std::fs::write(&path, format!("# clients\n\n0x2a {K}  # web\n7 {K}\n")).unwrap();
        let ring = KeyRing::load(&path).unwrap();
        assert_eq!(ring.len(), 2);
        assert_eq!(ring.get(42).unwrap()[31], 0x1f);
        assert!(ring.get(7).is_some());
        assert!(
            !format!("{ring:?}").contains("0102"),
            "Debug must not show keys"
        );

        std::fs::write(&path, format!("1 {K}\n2 abc\n")).unwrap();
        let e = KeyRing::load(&path).unwrap_err().to_string();
        assert!(e.contains("keys:2") && e.contains("64 hex"), "{e}");
        std::fs::write(&path, format!("1 {K}\n0x1 {K}\n")).unwrap();
        let e = KeyRing::load(&path).unwrap_err().to_string();
        assert!(e.contains("appears twice"), "{e}");
        std::fs::write(&path, format!("1 {K} extra\n")).unwrap();
        assert!(KeyRing::load(&path).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn key_arguments() {
        let mut ring = KeyRing::new();
        ring.add_arg(&format!("0x10:{K}")).unwrap();
        assert!(ring.get(16).is_some());
        assert!(ring.add_arg(&format!("16:{K}")).is_err());
        assert!(ring.add_arg(K).is_err());
        assert!(ring.add_arg(&format!("x:{K}")).is_err());
        assert!(ring.add_arg("3:00").is_err());
    }
}
