//! The fixed 24-byte frame header, and stream framing.
//!
//! ```text
//!  0      4   5   6       8               16      20      22      24
//!  | magic |ver|op | flags | request id    |paylen |status | rsvd  |
//!  "TMEM"   u8  u8   u16        u64          u32     u16     u16      (little-endian)
//! ```

use crate::cursor::{Reader, Writer};
use crate::{WireError, MAX_PAYLOAD, VERSION};

/// First four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"TMEM";

/// Size of the frame header.
pub const HEADER_LEN: usize = 24;

/// A decoded frame header. `opcode` stays a raw byte so that an unknown opcode can still be answered
/// with [`crate::Status::UnknownOpcode`] for the right request id.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Operation code (see [`crate::Opcode`]).
    pub opcode: u8,
    /// Flag bits (see [`crate::flags`]).
    pub flags: u16,
    /// Client-chosen id, echoed by the reply.
    pub request_id: u64,
    /// Bytes following the header.
    pub payload_len: u32,
    /// Reply status ([`crate::Status`] as u16); 0 in requests.
    pub status: u16,
}

impl Header {
    /// Decodes and validates a header from the first [`HEADER_LEN`] bytes of `buf`.
    pub fn parse(buf: &[u8]) -> Result<Header, WireError> {
        let mut r = Reader::new(buf);
        if r.bytes(4)? != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(WireError::BadVersion(version));
        }
        let opcode = r.u8()?;
        let flags = r.u16()?;
        let request_id = r.u64()?;
        let payload_len = r.u32()?;
        let status = r.u16()?;
        if r.u16()? != 0 {
            return Err(WireError::Malformed("reserved header bits set"));
        }
        if payload_len as usize > MAX_PAYLOAD {
            return Err(WireError::TooLarge);
        }
        Ok(Header {
            opcode,
            flags,
            request_id,
            payload_len,
            status,
        })
    }

    /// Encodes the header into the first [`HEADER_LEN`] bytes of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), WireError> {
        let mut w = Writer::new(buf);
        w.bytes(&MAGIC)?;
        w.u8(VERSION)?;
        w.u8(self.opcode)?;
        w.u16(self.flags)?;
        w.u64(self.request_id)?;
        w.u32(self.payload_len)?;
        w.u16(self.status)?;
        w.u16(0)
    }

    /// Whether this header belongs to a reply.
    pub fn is_reply(&self) -> bool {
        self.flags & crate::flags::REPLY != 0
    }

    /// Total frame length (header + payload).
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.payload_len as usize
    }
}

/// Stream framing: given the bytes received so far, returns the length of the first complete frame,
/// `Ok(None)` if more bytes are needed, or an error if the stream is unusable (bad magic, version or
/// length). Lengths are checked from the header alone, so a peer cannot make us buffer more than
/// [`crate::MAX_FRAME`].
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    if buf.len() < HEADER_LEN {
        // Reject garbage as early as possible, before a whole header arrived.
        let n = buf.len().min(MAGIC.len());
        if buf[..n] != MAGIC[..n] {
            return Err(WireError::BadMagic);
        }
        return Ok(None);
    }
    let header = Header::parse(buf)?;
    let len = header.frame_len();
    Ok(if buf.len() >= len { Some(len) } else { None })
}
