//! BATCH frames: many page operations (or their replies) in one frame, to amortise per-frame costs.
//!
//! ```text
//! payload: count u16 | rsvd u16 | entry * count
//! entry:   opcode u8 | flags u8 | status u16 | len u32 | body[len]
//! ```
//! A request entry's body is exactly the payload its opcode has as a standalone frame, and a reply
//! entry's body is the standalone reply payload; replies come in request order. Only page operations
//! ([`Opcode::batchable`]) may be batched. The whole structure is validated on parse, so iterating
//! never fails; each entry's body is decoded (and may fail) on its own.

use crate::cursor::{Reader, Writer};
use crate::{flags, Header, Opcode, Reply, Request, Status, WireError, HEADER_LEN, MAX_BATCH};

/// Fixed bytes in front of every entry body.
pub const BATCH_ENTRY_HEADER_LEN: usize = 8;

/// One entry of a batch, body still encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchEntry<'a> {
    /// Operation of this entry.
    pub opcode: u8,
    /// Flag bits (only the low 8 travel in an entry).
    pub flags: u16,
    /// Status (replies only).
    pub status: u16,
    /// The encoded body.
    pub body: &'a [u8],
}

impl<'a> BatchEntry<'a> {
    /// Decodes the entry as a request; fails for operations that cannot be batched.
    pub fn request(&self) -> Result<Request<'a>, WireError> {
        match Opcode::from_u8(self.opcode) {
            Some(op) if op.batchable() => Request::parse(self.opcode, self.body),
            Some(_) => Err(WireError::Malformed("operation not allowed in a batch")),
            None => Err(WireError::UnknownOpcode(self.opcode)),
        }
    }

    /// Decodes the entry as a reply.
    pub fn reply(&self) -> Result<Reply<'a>, WireError> {
        match Opcode::from_u8(self.opcode) {
            Some(op) if op.batchable() => Reply::parse(self.opcode, self.status, self.body),
            _ => Err(WireError::Malformed("operation not allowed in a batch")),
        }
    }
}

/// The entries of a batch payload, validated, iterated in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchIter<'a> {
    count: u16,
    entries: &'a [u8],
}

impl<'a> BatchIter<'a> {
    /// Validates a batch payload: count within [`MAX_BATCH`], every entry complete, nothing after.
    pub fn parse(payload: &'a [u8]) -> Result<BatchIter<'a>, WireError> {
        let mut r = Reader::new(payload);
        let count = r.u16()?;
        if r.u16()? != 0 {
            return Err(WireError::Malformed("reserved batch bits set"));
        }
        if count == 0 {
            return Err(WireError::Malformed("empty batch"));
        }
        if count as usize > MAX_BATCH {
            return Err(WireError::TooLarge);
        }
        let entries = r.rest();
        let mut walk = Reader::new(entries);
        for _ in 0..count {
            walk.bytes(4)?;
            let len = walk.u32()? as usize;
            walk.bytes(len)?;
        }
        walk.finish()?;
        Ok(BatchIter { count, entries })
    }

    /// Entries not yet iterated.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether all entries were iterated.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u16(self.count)?;
        w.u16(0)?;
        w.bytes(self.entries)
    }
}

impl<'a> Iterator for BatchIter<'a> {
    type Item = BatchEntry<'a>;

    fn next(&mut self) -> Option<BatchEntry<'a>> {
        if self.count == 0 {
            return None;
        }
        let mut r = Reader::new(self.entries);
        // Cannot fail: `parse` walked exactly these entries. Stop quietly rather than panic anyway.
        let entry = (|| {
            let opcode = r.u8()?;
            let flags = r.u8()? as u16;
            let status = r.u16()?;
            let len = r.u32()? as usize;
            let body = r.bytes(len)?;
            Ok::<_, WireError>(BatchEntry {
                opcode,
                flags,
                status,
                body,
            })
        })()
        .ok();
        self.entries = r.rest();
        self.count = if entry.is_some() { self.count - 1 } else { 0 };
        entry
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.count as usize, Some(self.count as usize))
    }
}

/// Builds a BATCH frame (request or reply) in place in a caller-provided buffer.
///
/// A failed push leaves the batch as it was, so the caller can `finish` what fits and send the rest in
/// the next frame.
pub struct BatchWriter<'b> {
    buf: &'b mut [u8],
    pos: usize,
    count: u16,
}

const BATCH_PREFIX: usize = HEADER_LEN + 4;

impl<'b> BatchWriter<'b> {
    /// Starts a batch at the beginning of `buf` (room for the frame header is reserved).
    pub fn new(buf: &'b mut [u8]) -> Result<BatchWriter<'b>, WireError> {
        if buf.len() < BATCH_PREFIX {
            return Err(WireError::BufferTooSmall);
        }
        Ok(BatchWriter {
            buf,
            pos: BATCH_PREFIX,
            count: 0,
        })
    }

    /// Entries pushed so far.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn push(
        &mut self,
        opcode: u8,
        flags: u16,
        status: u16,
        body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
    ) -> Result<(), WireError> {
        if self.count as usize >= MAX_BATCH {
            return Err(WireError::TooLarge);
        }
        let limit = (HEADER_LEN + crate::MAX_PAYLOAD).min(self.buf.len());
        let room = self
            .buf
            .get_mut(self.pos..limit)
            .ok_or(WireError::BufferTooSmall)?;
        let mut w = Writer::new(room);
        w.u8(opcode)?;
        w.u8(flags as u8)?;
        w.u16(status)?;
        let len_at = w.reserve(4)?;
        body(&mut w)?;
        let body_len = (w.position() - BATCH_ENTRY_HEADER_LEN) as u32;
        w.patch(len_at, &body_len.to_le_bytes())?;
        self.pos += w.position();
        self.count += 1;
        Ok(())
    }

    /// Appends a request entry (page operations only).
    pub fn push_request(&mut self, request: &Request<'_>, flags: u16) -> Result<(), WireError> {
        if !request.opcode().batchable() {
            return Err(WireError::Malformed("operation not allowed in a batch"));
        }
        self.push(request.opcode() as u8, flags, 0, |w| request.write_body(w))
    }

    /// Appends the reply to a request entry with `opcode`.
    pub fn push_reply(&mut self, opcode: u8, reply: &Reply<'_>) -> Result<(), WireError> {
        self.push(opcode, 0, reply.status() as u16, |w| reply.write_body(w))
    }

    fn finish(self, flags: u16, request_id: u64) -> Result<usize, WireError> {
        if self.count == 0 {
            return Err(WireError::Malformed("empty batch"));
        }
        let payload_len = (self.pos - HEADER_LEN) as u32;
        let prefix = self
            .buf
            .get_mut(..BATCH_PREFIX)
            .ok_or(WireError::BufferTooSmall)?;
        let header = Header {
            opcode: Opcode::Batch as u8,
            flags,
            request_id,
            payload_len,
            status: Status::Ok as u16,
        };
        header.emit(prefix)?;
        let mut w = Writer::new(prefix.get_mut(HEADER_LEN..).unwrap_or_default());
        w.u16(self.count)?;
        w.u16(0)?;
        Ok(self.pos)
    }

    /// Completes a BATCH request frame; returns its length.
    pub fn finish_request(self, request_id: u64, flags: u16) -> Result<usize, WireError> {
        self.finish(flags & !flags::REPLY, request_id)
    }

    /// Completes a BATCH reply frame; returns its length.
    pub fn finish_reply(self, request_id: u64) -> Result<usize, WireError> {
        self.finish(flags::REPLY, request_id)
    }
}
