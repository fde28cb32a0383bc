//! The record layer of an authenticated connection, sans-IO: ciphertext records in, plaintext
//! frame bytes out, and back (format in `protocol::noise` and docs/protocol.md).
//!
//! Each record is `len u16 | ciphertext[len]`, sealed with the direction's key and the next counter
//! nonce: one that fails to open (altered, injected, replayed, reordered, from another session)
//! ends the connection. Memory is bounded: at most one record (64 KiB) is buffered ahead of the
//! frame being reassembled, and the caller opens the next record only when no whole frame is
//! waiting.

use crate::framing::ReplyBuffer;
use protocol::noise::{record_len, MAX_RECORD_PLAINTEXT, RECORD_HEADER_LEN, TAG_LEN};

/// Largest record on the wire (header and ciphertext).
const MAX_RECORD: usize = RECORD_HEADER_LEN + protocol::noise::MAX_RECORD_CIPHERTEXT;
/// Receive buffer of a fresh secure connection.
const INITIAL_CAPACITY: usize = 16 * 1024;

/// Why the channel cannot go on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChannelError {
    /// A record header announced a length no record can have.
    #[error("record length out of range")]
    BadLength,
    /// A record did not open: the stream was tampered with.
    #[error("record failed authentication (altered, replayed or reordered)")]
    Decrypt,
    /// Sealing failed (a nonce would wrap).
    #[error("cannot seal record")]
    Seal,
}

/// One connection's transport keys and record buffers.
pub struct SecureChannel {
    transport: snow::TransportState,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl SecureChannel {
    /// A channel over an established transport.
    pub fn new(transport: snow::TransportState) -> SecureChannel {
        SecureChannel {
            transport,
            buf: vec![0; INITIAL_CAPACITY],
            start: 0,
            end: 0,
        }
    }

    /// Ciphertext bytes that arrived before the switch (after HELLO, in the same read).
    pub fn push_early(&mut self, bytes: &[u8]) {
        let mut fed = 0;
        while fed < bytes.len() {
            let spare = self.input_buffer();
            let n = spare.len().min(bytes.len() - fed);
            spare[..n].copy_from_slice(&bytes[fed..fed + n]);
            self.input_received(n);
            fed += n;
        }
    }

    /// Where the next ciphertext bytes go: room for the rest of the current record (never empty
    /// while no whole record is buffered).
    pub fn input_buffer(&mut self) -> &mut [u8] {
        let pending = self.end - self.start;
        let needed = match self.announced() {
            Some(len) => RECORD_HEADER_LEN + len,
            None => RECORD_HEADER_LEN.max(pending + 1),
        }
        .min(MAX_RECORD);
        if self.start > 0 && self.start + needed > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        let want = needed.clamp(INITIAL_CAPACITY, MAX_RECORD);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were written into [`SecureChannel::input_buffer`].
    pub fn input_received(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The ciphertext length the buffered record header announces, if a header is buffered.
    fn announced(&self) -> Option<usize> {
        let h = self.buf.get(self.start..self.start + RECORD_HEADER_LEN)?;
        if self.end - self.start < RECORD_HEADER_LEN {
            return None;
        }
        Some(u16::from_le_bytes([h[0], h[1]]) as usize)
    }

    /// Whether a whole record is buffered.
    pub fn has_record(&self) -> bool {
        self.announced()
            .is_some_and(|len| self.end - self.start >= RECORD_HEADER_LEN + len)
    }

    /// Whether part of a record is buffered (a peer stopping here stalls mid-record).
    pub fn has_partial(&self) -> bool {
        self.end > self.start
    }

    /// Plaintext bytes the next whole record will give (0 if none is buffered).
    pub fn next_plaintext_len(&self) -> usize {
        match self.announced() {
            Some(len) if self.has_record() => len.saturating_sub(TAG_LEN),
            _ => 0,
        }
    }

    /// Opens the next whole record into `out` (at least [`SecureChannel::next_plaintext_len`]
    /// bytes); returns the plaintext length, `Ok(0)` if no whole record is buffered.
    pub fn open_next(&mut self, out: &mut [u8]) -> Result<usize, ChannelError> {
        if !self.has_record() {
            return Ok(0);
        }
        let header = [self.buf[self.start], self.buf[self.start + 1]];
        let len = record_len(header).map_err(|_| ChannelError::BadLength)?;
        let record =
            &self.buf[self.start + RECORD_HEADER_LEN..self.start + RECORD_HEADER_LEN + len];
        let n = self
            .transport
            .read_message(record, out)
            .map_err(|_| ChannelError::Decrypt)?;
        self.start += RECORD_HEADER_LEN + len;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        Ok(n)
    }

    /// Seals `plaintext` as records appended to `wire`.
    pub fn seal(&mut self, plaintext: &[u8], wire: &mut ReplyBuffer) -> Result<(), ChannelError> {
        for chunk in plaintext.chunks(MAX_RECORD_PLAINTEXT) {
            let len = chunk.len() + TAG_LEN;
            let room = wire.room(RECORD_HEADER_LEN + len);
            room[..RECORD_HEADER_LEN].copy_from_slice(&(len as u16).to_le_bytes());
            let n = self
                .transport
                .write_message(chunk, &mut room[RECORD_HEADER_LEN..RECORD_HEADER_LEN + len])
                .map_err(|_| ChannelError::Seal)?;
            debug_assert_eq!(n, len);
            wire.commit(RECORD_HEADER_LEN + len);
        }
        Ok(())
    }

    /// Gives memory back while idle.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > INITIAL_CAPACITY {
            self.buf = vec![0; INITIAL_CAPACITY];
            self.start = 0;
            self.end = 0;
        }
    }
}
