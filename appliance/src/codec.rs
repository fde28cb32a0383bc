//! Page codec: turns a page as it arrives into the form the store keeps, and back.
//!
//! Everything from the network is distrusted: LZ4 data is decoded with lz4_flex's checked decoder,
//! must produce exactly one page, and every page's CRC-32C is verified against its uncompressed bytes
//! before it is stored. Zero/same-filled pages are kept as one word; pages that do not compress below
//! the raw threshold are kept raw (compressing them would cost CPU on every get for little gain).

use protocol::{Encoding, Page, Status, PAGE_SIZE};

/// Pages whose LZ4 form is larger than this are stored raw by default (saves < 12.5 %).
pub const DEFAULT_RAW_THRESHOLD: usize = PAGE_SIZE - PAGE_SIZE / 8;

/// CRC-32C, hardware accelerated where the CPU has it. Always equal to [`protocol::crc32c`].
pub fn checksum(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

/// Per-connection work buffers, so the hot path allocates nothing.
pub struct Scratch {
    raw: [u8; PAGE_SIZE],
    compressed: Vec<u8>,
    table: lz4_flex::block::CompressTable,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            raw: [0; PAGE_SIZE],
            compressed: vec![0; lz4_flex::block::get_maximum_output_size(PAGE_SIZE)],
            table: lz4_flex::block::CompressTable::small(),
        }
    }
}

/// What the store keeps for one page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stored<'a> {
    /// The page is this word repeated.
    Fill(u64),
    /// An LZ4 block of one page.
    Lz4(&'a [u8]),
    /// The page itself.
    Raw(&'a [u8]),
    /// A page the client sealed: opaque bytes, kept and returned as they came.
    Sealed(&'a [u8]),
}

impl Stored<'_> {
    /// Bytes of page data to keep (0 for fill pages).
    pub fn data(&self) -> &[u8] {
        match self {
            Stored::Fill(_) => &[],
            Stored::Lz4(d) | Stored::Raw(d) | Stored::Sealed(d) => d,
        }
    }
}

/// Why a page was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CodecError {
    /// The checksum does not match the page contents.
    #[error("page checksum mismatch")]
    BadChecksum,
    /// The LZ4 data does not decode to exactly one page.
    #[error("compressed page does not decode to {PAGE_SIZE} bytes")]
    Corrupt,
}

impl From<CodecError> for Status {
    fn from(e: CodecError) -> Status {
        match e {
            CodecError::BadChecksum => Status::BadChecksum,
            CodecError::Corrupt => Status::CorruptPayload,
        }
    }
}

/// Validates `page` and picks its stored form; returns it with the page's CRC.
pub fn ingest<'a>(
    page: &Page<'a>,
    scratch: &'a mut Scratch,
    raw_threshold: usize,
) -> Result<Stored<'a>, CodecError> {
    let raw: &[u8; PAGE_SIZE] = match page.encoding {
        Encoding::Sealed => {
            // Opaque to us: only the transfer can be checked.
            if checksum(page.data) != page.crc {
                return Err(CodecError::BadChecksum);
            }
            return Ok(Stored::Sealed(page.data));
        }
        Encoding::Raw => page.data.try_into().map_err(|_| CodecError::Corrupt)?,
        Encoding::Lz4 => {
            decode_lz4(page.data, &mut scratch.raw)?;
            &scratch.raw
        }
        Encoding::Fill => {
            let word = page.fill_word().ok_or(CodecError::Corrupt)?;
            Page::expand_fill(word, &mut scratch.raw);
            &scratch.raw
        }
    };
    if checksum(raw) != page.crc {
        return Err(CodecError::BadChecksum);
    }
    if let Some(word) = Page::detect_fill(raw) {
        return Ok(Stored::Fill(word));
    }
    if page.encoding == Encoding::Lz4 {
        // The client already compressed it with the same algorithm: recompressing would not help.
        return Ok(if page.data.len() <= raw_threshold {
            Stored::Lz4(page.data)
        } else {
            Stored::Raw(&scratch.raw)
        });
    }
    let n =
        lz4_flex::block::compress_into_with_table(raw, &mut scratch.compressed, &mut scratch.table)
            .map_err(|_| CodecError::Corrupt)?;
    if n <= raw_threshold {
        Ok(Stored::Lz4(&scratch.compressed[..n]))
    } else {
        Ok(Stored::Raw(raw))
    }
}

/// Decodes one LZ4 page with the checked decoder; anything but exactly one page is corrupt.
pub fn decode_lz4(data: &[u8], out: &mut [u8; PAGE_SIZE]) -> Result<(), CodecError> {
    match lz4_flex::block::decompress_into(data, out) {
        Ok(PAGE_SIZE) => Ok(()),
        _ => Err(CodecError::Corrupt),
    }
}

/// Expands a stored page into `out` (used for clients that do not accept LZ4 and for verification).
/// Sealed pages cannot be expanded here (only their client can open them).
pub fn expand(stored: Stored<'_>, out: &mut [u8; PAGE_SIZE]) -> Result<(), CodecError> {
    match stored {
        Stored::Sealed(_) => return Err(CodecError::Corrupt),
        Stored::Fill(word) => Page::expand_fill(word, out),
        Stored::Lz4(data) => decode_lz4(data, out)?,
        Stored::Raw(data) => {
            let page: &[u8; PAGE_SIZE] = data.try_into().map_err(|_| CodecError::Corrupt)?;
            out.copy_from_slice(page);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn raw_page(data: &[u8]) -> Page<'_> {
        Page {
            encoding: Encoding::Raw,
            crc: checksum(data),
            data,
        }
    }

    fn text_page() -> Vec<u8> {
        let text = b"The quick brown fox jumps over the lazy dog. ";
        text.iter().cycle().take(PAGE_SIZE).copied().collect()
    }

    #[test]
    fn hardware_crc_matches_protocol_crc() {
        let page = text_page();
        assert_eq!(checksum(&page), protocol::crc32c(&page));
        assert_eq!(checksum(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn compressible_page_is_stored_lz4_and_expands_back() {
        let page = text_page();
        let mut s = Scratch::default();
        let stored = ingest(&raw_page(&page), &mut s, DEFAULT_RAW_THRESHOLD).unwrap();
        let Stored::Lz4(data) = stored else {
            panic!("expected lz4, got {stored:?}")
        };
        assert!(data.len() < 200);
        let data = data.to_vec();
        let mut out = [0u8; PAGE_SIZE];
        expand(Stored::Lz4(&data), &mut out).unwrap();
        assert_eq!(&out[..], &page[..]);
    }

    #[test]
    fn zero_and_same_filled_pages_become_a_word() {
        let mut s = Scratch::default();
        let zero = vec![0u8; PAGE_SIZE];
        assert_eq!(
            ingest(&raw_page(&zero), &mut s, DEFAULT_RAW_THRESHOLD).unwrap(),
            Stored::Fill(0)
        );
        let same: Vec<u8> = [1u8, 2, 3, 4, 5, 6, 7, 8]
            .iter()
            .cycle()
            .take(PAGE_SIZE)
            .copied()
            .collect();
        assert_eq!(
            ingest(&raw_page(&same), &mut s, DEFAULT_RAW_THRESHOLD).unwrap(),
            Stored::Fill(0x0807_0605_0403_0201)
        );
    }

    #[test]
    fn incompressible_page_is_stored_raw() {
        let mut x = 0x1234_5678_9abc_def0u64;
        let page: Vec<u8> = (0..PAGE_SIZE)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let mut s = Scratch::default();
        assert_eq!(
            ingest(&raw_page(&page), &mut s, DEFAULT_RAW_THRESHOLD).unwrap(),
            Stored::Raw(&page[..])
        );
    }

    #[test]
    fn bad_checksum_and_corrupt_lz4_are_rejected() {
        let page = text_page();
        let mut s = Scratch::default();
        let wrong = Page {
            crc: checksum(&page) ^ 1,
            ..raw_page(&page)
        };
        assert_eq!(
            ingest(&wrong, &mut s, DEFAULT_RAW_THRESHOLD),
            Err(CodecError::BadChecksum)
        );
        let compressed = lz4_flex::block::compress(&page);
        let mut broken = compressed.clone();
        broken.truncate(broken.len() / 2);
        let lz = Page {
            encoding: Encoding::Lz4,
            crc: checksum(&page),
            data: &broken,
        };
        assert_eq!(
            ingest(&lz, &mut s, DEFAULT_RAW_THRESHOLD),
            Err(CodecError::Corrupt)
        );
        let good = Page {
            encoding: Encoding::Lz4,
            crc: checksum(&page),
            data: &compressed,
        };
        assert!(matches!(
            ingest(&good, &mut s, DEFAULT_RAW_THRESHOLD),
            Ok(Stored::Lz4(_))
        ));
    }

    #[test]
    fn lz4_input_above_the_threshold_is_kept_raw() {
        let page = text_page();
        let compressed = lz4_flex::block::compress(&page);
        let lz = Page {
            encoding: Encoding::Lz4,
            crc: checksum(&page),
            data: &compressed,
        };
        let mut s = Scratch::default();
        assert_eq!(ingest(&lz, &mut s, 0).unwrap(), Stored::Raw(&page[..]));
        let mut s = Scratch::default();
        assert_eq!(
            ingest(&lz, &mut s, DEFAULT_RAW_THRESHOLD).unwrap(),
            Stored::Lz4(&compressed[..])
        );
    }

    proptest! {
        #[test]
        fn garbage_lz4_never_panics(data in proptest::collection::vec(any::<u8>(), 1..PAGE_SIZE)) {
            let mut s = Scratch::default();
            let page = Page { encoding: Encoding::Lz4, crc: 0, data: &data };
            let _ = ingest(&page, &mut s, DEFAULT_RAW_THRESHOLD);
        }

        #[test]
        fn every_page_round_trips(seed: u64, runs in 1usize..64) {
            // Mixed content: runs of repeated bytes and noise, so all three stored forms occur.
            let mut x = seed | 1;
            let mut page = Vec::with_capacity(PAGE_SIZE);
            while page.len() < PAGE_SIZE {
                x ^= x << 13; x ^= x >> 7; x ^= x << 17;
                let len = (x as usize % (PAGE_SIZE / runs)).max(1);
                if x & 1 == 0 { page.extend(std::iter::repeat_n(x as u8, len)); }
                else { page.extend((0..len).map(|i| (x >> (i % 56)) as u8)); }
            }
            page.truncate(PAGE_SIZE);
            let mut s = Scratch::default();
            let stored = ingest(&raw_page(&page), &mut s, DEFAULT_RAW_THRESHOLD).unwrap();
            let mut out = [0u8; PAGE_SIZE];
            expand(stored, &mut out).unwrap();
            prop_assert_eq!(&out[..], &page[..]);
        }
    }
}
