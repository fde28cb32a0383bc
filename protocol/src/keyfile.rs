//! Client keys as text, one format everywhere: the appliance's `--keys` file, its `--key`
//! argument, `tmemctl --key-file`, and kclient's `key` parameter (hex only).
//!
//! ```text
//! # comment
//! CLIENT_ID KEY_HEX        client id decimal or 0x hex; key exactly 64 hex digits
//! ```

/// Bytes of a client key.
pub const CLIENT_KEY_LEN: usize = 32;

/// Why a line is not a key line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLineError {
    /// Not exactly two fields.
    Fields,
    /// The client id is not decimal or 0x hex.
    ClientId,
    /// The key is not exactly 64 hex digits.
    Key,
}

impl core::fmt::Display for KeyLineError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            KeyLineError::Fields => "expected `CLIENT_ID KEY_HEX`",
            KeyLineError::ClientId => "client id: decimal or 0x hex",
            KeyLineError::Key => "key: 64 hex digits",
        })
    }
}

/// A client id: decimal, or hex with `0x`.
pub fn parse_client_id(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// A key: exactly 64 hex digits (either case).
pub fn parse_key_hex(s: &str) -> Option<[u8; CLIENT_KEY_LEN]> {
    let s = s.as_bytes();
    if s.len() != 2 * CLIENT_KEY_LEN {
        return None;
    }
    let mut key = [0u8; CLIENT_KEY_LEN];
    for (byte, pair) in key.iter_mut().zip(s.chunks_exact(2)) {
        *byte = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
    }
    Some(key)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// One line of a keys file: `Ok(None)` for a blank or comment line.
pub fn parse_line(line: &str) -> Result<Option<(u64, [u8; CLIENT_KEY_LEN])>, KeyLineError> {
    let line = line.split('#').next().unwrap_or("").trim();
    if line.is_empty() {
        return Ok(None);
    }
    let mut fields = line.split_whitespace();
    let (Some(id), Some(key), None) = (fields.next(), fields.next(), fields.next()) else {
        return Err(KeyLineError::Fields);
    };
    let id = parse_client_id(id).ok_or(KeyLineError::ClientId)?;
    let key = parse_key_hex(key).ok_or(KeyLineError::Key)?;
    Ok(Some((id, key)))
}
