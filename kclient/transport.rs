//! One connection's byte stream: the HELLO handshake (authenticated with Noise when the client has
//! a key, see `protocol::noise` and docs/security.md), then frames, sealed as records when the
//! session is authenticated. The receive side ([`FrameReader`]) hands out whole, length-checked
//! frames; the send side ([`Sealer`]) turns frames into what goes on the wire.
//!
//! Every buffer is allocated when the connection is created, not when it reconnects: a swap device
//! reconnects when memory is shortest, so the handshake allocates nothing.

use kernel::prelude::*;

use crate::crypto::{self, KernelCrypto, SecretKey};
use crate::net::TcpStream;
use crate::protocol::noise::{
    self, CipherState, Handshake, MAX_RECORD_CIPHERTEXT, MAX_RECORD_PLAINTEXT, MSG1_LEN,
    MSG1_PAYLOAD_LEN, MSG2_PAYLOAD_LEN, RECORD_HEADER_LEN, TAG_LEN,
};
use crate::protocol::{
    Header, Hello, Reply, Request, Status, AUTH_NOISE, HEADER_LEN, MAX_FRAME, MAX_PAYLOAD,
};
use crate::stats::{self, STATS};

/// Request id of control operations (`logic::wire_id::CONTROL`).
const CONTROL_ID: u64 = u64::MAX;

/// Error codes the 6.12 `kernel::error::code` module does not name.
pub(crate) fn errno(code: u32) -> Error {
    Error::from_errno(-(code as i32))
}
pub(crate) fn eproto() -> Error {
    errno(kernel::bindings::EPROTO)
}
pub(crate) fn econnrefused() -> Error {
    errno(kernel::bindings::ECONNREFUSED)
}

/// The receive side of a connection.
pub(crate) struct FrameReader {
    /// Plain sessions: the payload of the current frame. Secure ones: decrypted stream bytes.
    buf: VVec<u8>,
    start: usize,
    end: usize,
    /// Secure sessions: one record's ciphertext.
    record: VVec<u8>,
    recv: Option<CipherState>,
}

impl FrameReader {
    /// Buffers for the largest frame and, after it, one record's plaintext.
    pub(crate) fn new() -> Result<Self> {
        Ok(Self {
            buf: VVec::from_elem(0u8, MAX_FRAME + MAX_RECORD_PLAINTEXT, GFP_KERNEL)?,
            start: 0,
            end: 0,
            record: VVec::from_elem(0u8, MAX_RECORD_CIPHERTEXT, GFP_KERNEL)?,
            recv: None,
        })
    }

    /// Starts a new session (plain, or with the receive keys of a handshake).
    pub(crate) fn reset(&mut self, recv: Option<CipherState>) {
        self.start = 0;
        self.end = 0;
        self.recv = recv;
    }

    /// The next frame: its header (checked: a reply, payload at most `limit(&header)`) and
    /// payload. `EAGAIN` when nothing arrived within the socket's timeout (nothing consumed).
    pub(crate) fn next(
        &mut self,
        stream: &TcpStream,
        limit: impl Fn(&Header) -> usize,
    ) -> Result<(Header, &[u8])> {
        if self.recv.is_none() {
            let mut head = [0u8; HEADER_LEN];
            stream.recv_exact(&mut head)?;
            let h = check(&head, &limit)?;
            let len = h.payload_len as usize;
            let body = self.buf.get_mut(..len).ok_or(eproto())?;
            stream.recv_exact(body)?;
            stats::add(&STATS.bytes_received, (HEADER_LEN + len) as u64);
            return Ok((h, &self.buf[..len]));
        }
        self.fill(stream, HEADER_LEN)?;
        let h = check(&self.buf[self.start..self.start + HEADER_LEN], &limit)?;
        let len = HEADER_LEN + h.payload_len as usize;
        self.fill(stream, len)?;
        let at = self.start;
        self.start += len;
        Ok((h, &self.buf[at + HEADER_LEN..at + len]))
    }

    /// Opens records until `n` plaintext bytes are buffered.
    fn fill(&mut self, stream: &TcpStream, n: usize) -> Result {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        let mut first = true;
        while self.end - self.start < n {
            if self.start > 0 && self.start + n + MAX_RECORD_PLAINTEXT > self.buf.len() {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            let mut header = [0u8; RECORD_HEADER_LEN];
            match stream.recv_exact(&mut header) {
                // Idle between frames: the caller may retry. Inside a frame the stream stalled.
                Err(e) if e == EAGAIN && !(first && self.end == self.start) => {
                    return Err(errno(kernel::bindings::ETIMEDOUT))
                }
                r => r?,
            }
            first = false;
            let len = noise::record_len(header).map_err(|_| eproto())?;
            let ct = self.record.get_mut(..len).ok_or(eproto())?;
            stream.recv_exact(ct)?;
            let cs = self.recv.as_mut().ok_or(eproto())?;
            let out = self.buf.get_mut(self.end..).ok_or(eproto())?;
            match cs.open_record(&mut KernelCrypto, ct, out) {
                Ok(m) => self.end += m,
                Err(_) => {
                    stats::inc(&STATS.aead_failures);
                    return Err(errno(kernel::bindings::EBADMSG));
                }
            }
            stats::add(&STATS.bytes_received, (RECORD_HEADER_LEN + len) as u64);
        }
        Ok(())
    }
}

/// Parses a frame header and checks it against the protocol and the caller's limit.
fn check(head: &[u8], limit: &impl Fn(&Header) -> usize) -> Result<Header> {
    let Ok(h) = Header::parse(head) else {
        stats::inc(&STATS.protocol_errors);
        return Err(eproto());
    };
    if !h.is_reply() || h.payload_len as usize > limit(&h).min(MAX_PAYLOAD) {
        stats::inc(&STATS.protocol_errors);
        return Err(eproto());
    }
    Ok(h)
}

/// The send side: seals frames into records when the session is secure.
pub(crate) struct Sealer {
    wire: VVec<u8>,
    send: Option<CipherState>,
}

impl Sealer {
    /// A buffer for the sealed form of `cap` plaintext bytes.
    pub(crate) fn new(cap: usize) -> Result<Self> {
        Ok(Self {
            wire: VVec::from_elem(0u8, noise::sealed_len(cap), GFP_KERNEL)?,
            send: None,
        })
    }

    /// Starts a new session.
    pub(crate) fn reset(&mut self, send: Option<CipherState>) {
        self.send = send;
    }

    /// Sends `frames` (whole frames, back to back), sealed if the session is secure.
    pub(crate) fn send(&mut self, stream: &TcpStream, frames: &[u8]) -> Result {
        let bytes = match self.send.as_mut() {
            None => frames,
            Some(cs) => {
                let n = cs
                    .seal_stream(&mut KernelCrypto, frames, &mut self.wire)
                    .map_err(|_| EINVAL)?;
                self.wire.get(..n).ok_or(EINVAL)?
            }
        };
        stream.send(bytes)?;
        stats::add(&STATS.bytes_sent, bytes.len() as u64);
        Ok(())
    }
}

/// What the appliance said in HELLO.
pub(crate) struct Greeting {
    pub(crate) max_batch: u16,
}

/// Says HELLO on a fresh `stream` as `client_id`, with `key` when given (Noise), and sets up the
/// session in `reader` and `sealer`. `scratch` holds one frame.
pub(crate) fn hello(
    stream: &TcpStream,
    client_id: u64,
    key: Option<&SecretKey>,
    reader: &mut FrameReader,
    sealer: &mut Sealer,
    scratch: &mut [u8],
) -> Result<Greeting> {
    reader.reset(None);
    sealer.reset(None);
    let Some(key) = key else {
        let n = Request::Hello(Hello::new(client_id))
            .emit(CONTROL_ID, 0, scratch)
            .map_err(|_| EINVAL)?;
        sealer.send(stream, scratch.get(..n).ok_or(EINVAL)?)?;
        let (h, body) = reader.next(stream, |_| MAX_PAYLOAD)?;
        return match Reply::parse(h.opcode, h.status, body) {
            Ok(Reply::Hello(r)) if r.auth.is_empty() => Ok(Greeting {
                max_batch: r.max_batch,
            }),
            Ok(other) => Err(refused(other.status())),
            Err(_) => Err(eproto()),
        };
    };
    let p = &mut KernelCrypto;
    let mut msg1 = [0u8; MSG1_LEN];
    let prologue = noise::prologue(&Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(client_id)
    });
    let mut hs = Handshake::new(p, &prologue, key.bytes());
    hs.write_message_1(p, &crypto::wall_ns().to_le_bytes(), &mut msg1)
        .map_err(|_| EINVAL)?;
    let n = Request::Hello(Hello {
        auth_method: AUTH_NOISE,
        auth: &msg1,
        ..Hello::new(client_id)
    })
    .emit(CONTROL_ID, 0, scratch)
    .map_err(|_| EINVAL)?;
    sealer.send(stream, scratch.get(..n).ok_or(EINVAL)?)?;
    let (h, body) = reader.next(stream, |_| MAX_PAYLOAD)?;
    let reply = match Reply::parse(h.opcode, h.status, body) {
        Ok(Reply::Hello(r)) => r,
        Ok(other) => return Err(refused(other.status())),
        Err(_) => return Err(eproto()),
    };
    let mut limits = [0u8; MSG2_PAYLOAD_LEN];
    let Ok(transport) = hs.read_message_2(p, reply.auth, &mut limits) else {
        stats::inc(&STATS.auth_failures);
        pr_err!("the appliance does not hold this client's key (handshake message 2 failed)\n");
        return Err(econnrefused());
    };
    // The limits in clear must be the authenticated ones.
    let version = u16::from_le_bytes([limits[0], limits[1]]);
    let max_batch = u16::from_le_bytes([limits[2], limits[3]]);
    let max_payload = u32::from_le_bytes([limits[4], limits[5], limits[6], limits[7]]);
    if (version, max_batch, max_payload) != (reply.version, reply.max_batch, reply.max_payload) {
        stats::inc(&STATS.auth_failures);
        return Err(eproto());
    }
    stats::inc(&STATS.handshakes);
    sealer.reset(Some(transport.send));
    reader.reset(Some(transport.recv));
    Ok(Greeting { max_batch })
}

fn refused(status: Status) -> Error {
    if status == Status::NotAuthenticated {
        stats::inc(&STATS.auth_failures);
        pr_err!(
            "HELLO refused: not authenticated (unknown client id or wrong key on the appliance)\n"
        );
    } else {
        pr_err!("HELLO refused: {}\n", status.name());
    }
    econnrefused()
}

/// Checks that `MSG1_PAYLOAD_LEN` is the timestamp this client sends.
const _: () = assert!(MSG1_PAYLOAD_LEN == 8 && TAG_LEN == 16);
