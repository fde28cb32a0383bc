//! LZ4 block compression with the kernel's own codec (`lib/lz4`): pages leave compressed, so the
//! wire (and the appliance, which keeps LZ4 pages as they come) carry the compressed size.

use kernel::ffi::c_void;
use kernel::prelude::*;

use crate::ffi;
use crate::protocol::PAGE_SIZE;

/// Compresses pages; owns the codec's work memory and the output buffer.
pub(crate) struct Compressor {
    wrkmem: KVec<u8>,
    out: KVec<u8>,
}

impl Compressor {
    pub(crate) fn new() -> Result<Self> {
        // SAFETY: no preconditions.
        let wrkmem_len = unsafe { ffi::kc_lz4_wrkmem_size() };
        Ok(Self {
            wrkmem: KVec::from_elem(0u8, wrkmem_len, GFP_KERNEL)?,
            out: KVec::from_elem(0u8, PAGE_SIZE, GFP_KERNEL)?,
        })
    }

    /// The compressed page, if it is at most `limit` bytes (otherwise sending it raw is cheaper).
    pub(crate) fn compress(&mut self, page: &[u8; PAGE_SIZE], limit: usize) -> Option<&[u8]> {
        let cap = limit.min(self.out.len());
        // SAFETY: `page` is readable for PAGE_SIZE bytes, `out` writable for `cap <= out.len()`
        // bytes and `wrkmem` holds the `kc_lz4_wrkmem_size()` bytes the codec needs; none overlap.
        let n = unsafe {
            ffi::kc_lz4_compress(
                page.as_ptr().cast::<c_void>(),
                PAGE_SIZE,
                self.out.as_mut_ptr().cast::<c_void>(),
                cap,
                self.wrkmem.as_mut_ptr().cast::<c_void>(),
            )
        };
        let n = usize::try_from(n).ok().filter(|&n| n > 0)?;
        self.out.get(..n)
    }
}

/// Decodes an LZ4 block into `out`; true only if it is well formed and is exactly one page.
pub(crate) fn decompress(src: &[u8], out: &mut [u8; PAGE_SIZE]) -> bool {
    // SAFETY: `src` is readable for its length and `out` writable for PAGE_SIZE bytes; the codec
    // (`LZ4_decompress_safe`) never reads or writes outside them, whatever `src` contains.
    let n = unsafe {
        ffi::kc_lz4_decompress(
            src.as_ptr().cast::<c_void>(),
            src.len(),
            out.as_mut_ptr().cast::<c_void>(),
            PAGE_SIZE,
        )
    };
    usize::try_from(n) == Ok(PAGE_SIZE)
}
