//! Page keys and page payloads.
//!
//! ```text
//! key (32 bytes):     pool u32 | index u32 | object id u64 u64 u64
//! page (12 + n bytes): encoding u8 | rsvd u8 | rsvd u16 | crc32c u32 | n u32 | data[n]
//! ```
//! The CRC-32C always covers the *uncompressed* 4 KiB page, so it is checked end to end: by the
//! appliance on put (after decompressing) and by the client on get (after decompressing).

use crate::cursor::{Reader, Writer};
use crate::{WireError, PAGE_SIZE};

/// Size of an encoded [`PageKey`].
pub const KEY_LEN: usize = 32;

/// Size of a page payload's fixed part, before the data.
pub const PAGE_HEADER_LEN: usize = 12;

/// Address of one page: tmem's (pool id, object id, index). For swap, the object is the swap device
/// and the index the page offset in it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PageKey {
    /// Pool id returned by NEW_POOL.
    pub pool: u32,
    /// Object id (an inode number and generation for page cache; a device id for swap).
    pub object: [u64; 3],
    /// Page index within the object.
    pub index: u32,
}

impl PageKey {
    /// Decodes the key at the start of `buf` (e.g. of a PUT_PAGE payload whose page part is
    /// malformed: the appliance still removes the old page under that key).
    pub fn parse_prefix(buf: &[u8]) -> Result<PageKey, WireError> {
        PageKey::read(&mut Reader::new(buf))
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<PageKey, WireError> {
        let pool = r.u32()?;
        let index = r.u32()?;
        let object = [r.u64()?, r.u64()?, r.u64()?];
        Ok(PageKey {
            pool,
            object,
            index,
        })
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u32(self.pool)?;
        w.u32(self.index)?;
        for part in self.object {
            w.u64(part)?;
        }
        Ok(())
    }
}

/// How a page's data is represented.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Encoding {
    /// Exactly [`PAGE_SIZE`] bytes.
    Raw = 0,
    /// An LZ4 block (no frame header) that decompresses to exactly [`PAGE_SIZE`] bytes; shorter than a
    /// page (an incompressible page is sent raw).
    Lz4 = 1,
    /// A page filled with one repeated 8-byte little-endian word (zero pages are the common case):
    /// the data is that word.
    Fill = 2,
    /// Sealed by the client (`encrypt_pages`): opaque to the appliance, which stores and returns it
    /// as is. More than [`crate::SEAL_TAG_LEN`] and at most [`crate::MAX_PAGE_DATA`] bytes; the CRC
    /// is of these bytes. The client decides what is inside (docs/security.md).
    Sealed = 3,
}

/// A page payload, borrowed from a frame (zero-copy).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Page<'a> {
    /// Representation of `data`.
    pub encoding: Encoding,
    /// CRC-32C of the uncompressed page (of `data` itself for [`Encoding::Sealed`]).
    pub crc: u32,
    /// Encoded data; its length is checked against the encoding by [`Page::parse`].
    pub data: &'a [u8],
}

impl<'a> Page<'a> {
    pub(crate) fn read(r: &mut Reader<'a>) -> Result<Page<'a>, WireError> {
        let encoding = r.u8()?;
        if r.u8()? != 0 || r.u16()? != 0 {
            return Err(WireError::Malformed("reserved page bits set"));
        }
        let crc = r.u32()?;
        let len = r.u32()? as usize;
        let encoding = match encoding {
            0 if len == PAGE_SIZE => Encoding::Raw,
            1 if len > 0 && len < PAGE_SIZE => Encoding::Lz4,
            2 if len == 8 => Encoding::Fill,
            3 if len > crate::SEAL_TAG_LEN && len <= crate::MAX_PAGE_DATA => Encoding::Sealed,
            0..=3 => {
                return Err(WireError::Malformed(
                    "page data length does not fit its encoding",
                ))
            }
            _ => return Err(WireError::Malformed("unknown page encoding")),
        };
        let data = r.bytes(len)?;
        Ok(Page {
            encoding,
            crc,
            data,
        })
    }

    /// Decodes a standalone page payload (the whole of `buf`).
    pub fn parse(buf: &'a [u8]) -> Result<Page<'a>, WireError> {
        let mut r = Reader::new(buf);
        let page = Page::read(&mut r)?;
        r.finish()?;
        Ok(page)
    }

    pub(crate) fn write(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        w.u8(self.encoding as u8)?;
        w.u8(0)?;
        w.u16(0)?;
        w.u32(self.crc)?;
        w.u32(self.data.len() as u32)?;
        w.bytes(self.data)
    }

    /// Bytes this payload takes on the wire.
    pub fn wire_len(&self) -> usize {
        PAGE_HEADER_LEN + self.data.len()
    }

    /// For a fill page: the repeated word.
    pub fn fill_word(&self) -> Option<u64> {
        match (self.encoding, self.data) {
            (Encoding::Fill, &[a, b, c, d, e, f, g, h]) => {
                Some(u64::from_le_bytes([a, b, c, d, e, f, g, h]))
            }
            _ => None,
        }
    }

    /// If `page` is one 8-byte word repeated, returns that word (the cheap zero/same-filled case).
    pub fn detect_fill(page: &[u8; PAGE_SIZE]) -> Option<u64> {
        let mut words = page.chunks_exact(8);
        let first = words.next()?;
        if words.all(|w| w == first) {
            let mut word = [0u8; 8];
            word.copy_from_slice(first);
            Some(u64::from_le_bytes(word))
        } else {
            None
        }
    }

    /// Fills `out` with the repeated `word` of a fill page.
    pub fn expand_fill(word: u64, out: &mut [u8; PAGE_SIZE]) {
        let bytes = word.to_le_bytes();
        for chunk in out.chunks_exact_mut(8) {
            chunk.copy_from_slice(&bytes);
        }
    }
}
