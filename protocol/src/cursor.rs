//! Bounds-checked little-endian reading and writing over byte slices.
//!
//! Every decoder in this crate goes through [`Reader`], so no input can make it index out of bounds
//! or panic: running off the end is an ordinary [`WireError::Truncated`].

use crate::WireError;

/// Reads little-endian fields from the front of a slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if n > self.buf.len() {
            return Err(WireError::Truncated);
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], WireError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N)?);
        Ok(out)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.array::<1>()?[0])
    }

    pub(crate) fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    pub(crate) fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    pub(crate) fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        core::mem::take(&mut self.buf)
    }

    /// Fails unless the whole input was consumed: trailing garbage is a malformed frame, not padding.
    pub(crate) fn finish(&self) -> Result<(), WireError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(WireError::Malformed("trailing bytes"))
        }
    }
}

/// Writes little-endian fields into a caller-provided buffer (the caller decides sizes).
pub(crate) struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    pub(crate) fn new(buf: &'a mut [u8]) -> Self {
        Writer { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn bytes(&mut self, data: &[u8]) -> Result<(), WireError> {
        let end = self
            .pos
            .checked_add(data.len())
            .ok_or(WireError::BufferTooSmall)?;
        let dst = self
            .buf
            .get_mut(self.pos..end)
            .ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(data);
        self.pos = end;
        Ok(())
    }

    pub(crate) fn u8(&mut self, v: u8) -> Result<(), WireError> {
        self.bytes(&[v])
    }

    pub(crate) fn u16(&mut self, v: u16) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u32(&mut self, v: u32) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    pub(crate) fn u64(&mut self, v: u64) -> Result<(), WireError> {
        self.bytes(&v.to_le_bytes())
    }

    /// Reserves `n` bytes to be filled later (e.g. a count known only at the end); returns their offset.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<usize, WireError> {
        let at = self.pos;
        let end = at.checked_add(n).ok_or(WireError::BufferTooSmall)?;
        if end > self.buf.len() {
            return Err(WireError::BufferTooSmall);
        }
        self.pos = end;
        Ok(at)
    }

    /// Overwrites bytes at an offset returned by [`Writer::reserve`].
    pub(crate) fn patch(&mut self, at: usize, data: &[u8]) -> Result<(), WireError> {
        let end = at
            .checked_add(data.len())
            .ok_or(WireError::BufferTooSmall)?;
        let dst = self.buf.get_mut(at..end).ok_or(WireError::BufferTooSmall)?;
        dst.copy_from_slice(data);
        Ok(())
    }
}
