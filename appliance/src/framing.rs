//! Accumulates bytes from a stream and hands out complete frames (sans-IO: no sockets here).
//!
//! The buffer starts small and grows only as far as the frame being received needs, never beyond
//! [`protocol::MAX_FRAME`], because the frame length is validated from the header before the payload
//! is buffered. An idle connection therefore costs [`INITIAL_CAPACITY`] bytes.

use protocol::{frame_len, WireError, MAX_FRAME};

/// Receive buffer size of a fresh connection.
pub const INITIAL_CAPACITY: usize = 16 * 1024;

/// A stream reassembly buffer.
pub struct FrameBuffer {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Default for FrameBuffer {
    fn default() -> Self {
        FrameBuffer {
            buf: vec![0; INITIAL_CAPACITY],
            start: 0,
            end: 0,
        }
    }
}

impl FrameBuffer {
    /// Free space to read into; make sure it is not empty unless a whole frame is already buffered.
    pub fn spare(&mut self) -> &mut [u8] {
        let pending = self.end - self.start;
        let needed = match frame_len(&self.buf[self.start..self.end]) {
            Ok(None) if pending >= protocol::HEADER_LEN => {
                protocol::Header::parse(&self.buf[self.start..self.end])
                    .map(|h| h.frame_len())
                    .unwrap_or(MAX_FRAME)
            }
            _ => protocol::HEADER_LEN.max(pending + 1),
        };
        if self.start > 0 && self.start + needed > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        let want = needed.clamp(INITIAL_CAPACITY, MAX_FRAME);
        if self.buf.len() < want {
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Records that `n` bytes were written into [`FrameBuffer::spare`].
    pub fn commit(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// The next complete frame, if one is buffered. An error means the stream is unusable.
    pub fn next_frame(&mut self) -> Result<Option<&[u8]>, WireError> {
        match frame_len(&self.buf[self.start..self.end])? {
            Some(len) => {
                let frame = &self.buf[self.start..self.start + len];
                self.start += len;
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
                Ok(Some(frame))
            }
            None => Ok(None),
        }
    }

    /// Room for `n` more bytes (decrypted record contents, which need not end on a frame
    /// boundary). The caller bounds memory by adding records only while no whole frame waits.
    pub fn reserve(&mut self, n: usize) -> &mut [u8] {
        let pending = self.end - self.start;
        if self.start > 0 && self.end + n > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end = pending;
            self.start = 0;
        }
        if self.buf.len() < self.end + n {
            self.buf.resize(self.end + n, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Whether a whole frame is buffered (or the buffered bytes are already unusable).
    pub fn has_frame(&self) -> bool {
        !matches!(frame_len(&self.buf[self.start..self.end]), Ok(None))
    }

    /// Takes every buffered byte out (the stream switches to records after HELLO: what followed
    /// the HELLO frame is ciphertext).
    pub fn take_pending(&mut self) -> Vec<u8> {
        let bytes = self.buf[self.start..self.end].to_vec();
        self.start = 0;
        self.end = 0;
        bytes
    }

    /// Whether part of a frame is buffered (a peer that stops here is stalling mid-frame).
    pub fn has_partial(&self) -> bool {
        self.end > self.start
    }

    /// Gives memory back after a large frame, so idle connections stay small.
    pub fn shrink_if_idle(&mut self) {
        if self.start == self.end && self.buf.len() > INITIAL_CAPACITY {
            self.buf = vec![0; INITIAL_CAPACITY];
            self.start = 0;
            self.end = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Request, HEADER_LEN};

    fn frames() -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; MAX_FRAME];
        for id in 0..5 {
            let n = Request::Stats.emit(id, 0, &mut buf).unwrap();
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn reassembles_one_byte_at_a_time() {
        let stream = frames();
        let mut fb = FrameBuffer::default();
        let mut seen = 0;
        for &b in &stream {
            fb.spare()[0] = b;
            fb.commit(1);
            while let Some(f) = fb.next_frame().unwrap() {
                assert_eq!(f.len(), HEADER_LEN);
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
        assert!(!fb.has_partial());
    }

    #[test]
    fn rejects_garbage_early() {
        let mut fb = FrameBuffer::default();
        fb.spare()[..2].copy_from_slice(b"GE");
        fb.commit(2);
        assert!(fb.next_frame().is_err());
    }

    #[test]
    fn grows_for_a_large_frame_and_shrinks_back() {
        let mut big = vec![0u8; MAX_FRAME];
        let data = vec![1u8; protocol::PAGE_SIZE];
        let mut w = protocol::BatchWriter::new(&mut big).unwrap();
        for _ in 0..protocol::MAX_BATCH {
            let page = protocol::Page {
                encoding: protocol::Encoding::Raw,
                crc: 0,
                data: &data,
            };
            w.push_request(
                &Request::Put {
                    key: Default::default(),
                    page,
                },
                0,
            )
            .unwrap();
        }
        let n = w.finish_request(1, 0).unwrap();
        let mut fb = FrameBuffer::default();
        let mut fed = 0;
        let mut got = None;
        for _ in 0..1000 {
            let spare = fb.spare();
            assert!(!spare.is_empty());
            let k = spare.len().min(n - fed).min(10_000);
            spare[..k].copy_from_slice(&big[fed..fed + k]);
            fb.commit(k);
            fed += k;
            if let Some(f) = fb.next_frame().unwrap() {
                got = Some(f.len());
                break;
            }
        }
        assert_eq!(got, Some(n));
        fb.shrink_if_idle();
        assert_eq!(fb.buf.len(), INITIAL_CAPACITY);
    }
}

/// Outgoing replies: grows to the largest reply burst seen and is reused, so the hot path neither
/// allocates nor re-zeroes memory. Shrinks back when the connection goes idle.
#[derive(Default)]
pub struct ReplyBuffer {
    buf: Vec<u8>,
    len: usize,
}

impl ReplyBuffer {
    /// Room for at least `n` more bytes (zero-filled only when the buffer grows).
    pub fn room(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() < self.len + n {
            self.buf.resize(self.len + n, 0);
        }
        &mut self.buf[self.len..]
    }

    /// Records that `n` bytes were written into [`ReplyBuffer::room`].
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// The bytes waiting to be sent.
    pub fn pending(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Forgets what was sent, keeping the memory.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the first `n` pending bytes (a partial non-blocking write).
    pub fn advance(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Gives the memory back (idle connection).
    pub fn shrink_if_idle(&mut self) {
        if self.len == 0 {
            self.buf = Vec::new();
        }
    }
}
