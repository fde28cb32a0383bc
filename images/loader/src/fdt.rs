//! A minimal flattened-device-tree (DTB) writer.
//!
//! Hermit 0.11 learns the RAM layout (and the ACPI RSDP, CPU frequency) only from a device tree,
//! even on x86; with multiboot there is none, so the loader writes a small one:
//!
//! ```text
//! / { #address-cells = <2>; #size-cells = <2>; compatible = "hermit,multiboot";
//!     memory@ADDR { device_type = "memory"; reg = <ADDR SIZE>; } ...
//!     hermit,rsdp { reg = <ADDR SIZE>; } }
//! ```
//!
//! Format (devicetree spec v0.4, ch. 5): a header, an empty memory-reservation map, the structure
//! block (tokens, big-endian) and the strings block (property names). Fixed-size buffers: the tree
//! is tiny and the loader has no heap.

use core::fmt::{self, Write};

const MAGIC: u32 = 0xd00d_feed;
const VERSION: u32 = 17;
const LAST_COMPATIBLE_VERSION: u32 = 16;
const HEADER_SIZE: usize = 40;
const RESERVE_MAP_SIZE: usize = 16; // the terminating (0, 0) entry only

const BEGIN_NODE: u32 = 1;
const END_NODE: u32 = 2;
const PROP: u32 = 3;
const END: u32 = 9;

/// Append-only byte buffer; running out of room is a loader bug, so it panics.
struct Buf<const N: usize> {
    data: [u8; N],
    len: usize,
}

impl<const N: usize> Buf<N> {
    const fn new() -> Self {
        Buf {
            data: [0; N],
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.data[..self.len]
    }

    fn push(&mut self, bytes: &[u8]) {
        let end = self.len + bytes.len();
        assert!(end <= N, "device tree buffer too small");
        self.data[self.len..end].copy_from_slice(bytes);
        self.len = end;
    }

    fn push_u32(&mut self, value: u32) {
        self.push(&value.to_be_bytes());
    }

    fn align4(&mut self) {
        while self.len % 4 != 0 {
            self.push(&[0]);
        }
    }
}

impl<const N: usize> Write for Buf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

/// Builds the structure and strings blocks; [`FdtWriter::finish`] assembles the blob.
pub struct FdtWriter {
    structs: Buf<2048>,
    strings: Buf<256>,
    depth: usize,
}

impl FdtWriter {
    pub const fn new() -> Self {
        FdtWriter {
            structs: Buf::new(),
            strings: Buf::new(),
            depth: 0,
        }
    }

    /// Opens a node; the root node's name is empty.
    pub fn begin_node(&mut self, name: fmt::Arguments<'_>) {
        self.structs.push_u32(BEGIN_NODE);
        self.structs.write_fmt(name).expect("Buf never fails");
        self.structs.push(&[0]);
        self.structs.align4();
        self.depth += 1;
    }

    pub fn end_node(&mut self) {
        assert!(self.depth > 0, "unbalanced end_node");
        self.structs.push_u32(END_NODE);
        self.depth -= 1;
    }

    /// Offset of `name` in the strings block, adding it if new.
    fn name_offset(&mut self, name: &str) -> u32 {
        let mut offset = 0;
        for existing in self.strings.bytes().split(|&b| b == 0) {
            if existing == name.as_bytes() && offset < self.strings.len {
                return offset as u32;
            }
            offset += existing.len() + 1;
        }
        let offset = self.strings.len;
        self.strings.push(name.as_bytes());
        self.strings.push(&[0]);
        offset as u32
    }

    fn prop_raw(&mut self, name: &str, value: &[u8]) {
        let name = self.name_offset(name);
        self.structs.push_u32(PROP);
        self.structs.push_u32(value.len() as u32);
        self.structs.push_u32(name);
        self.structs.push(value);
        self.structs.align4();
    }

    pub fn prop_u32(&mut self, name: &str, value: u32) {
        self.prop_raw(name, &value.to_be_bytes());
    }

    /// A NUL-terminated string property.
    pub fn prop_str(&mut self, name: &str, value: &str) {
        let name = self.name_offset(name);
        self.structs.push_u32(PROP);
        self.structs.push_u32(value.len() as u32 + 1);
        self.structs.push_u32(name);
        self.structs.push(value.as_bytes());
        self.structs.push(&[0]);
        self.structs.align4();
    }

    /// `reg = <address size>` with two cells each (matching the root's `#*-cells = <2>`).
    pub fn prop_reg(&mut self, address: u64, size: u64) {
        let mut value = [0u8; 16];
        value[..8].copy_from_slice(&address.to_be_bytes());
        value[8..].copy_from_slice(&size.to_be_bytes());
        self.prop_raw("reg", &value);
    }

    /// Writes the complete blob into `out` and returns its length.
    pub fn finish(mut self, out: &mut [u8]) -> usize {
        assert_eq!(self.depth, 0, "unclosed device tree node");
        self.structs.push_u32(END);
        let off_struct = HEADER_SIZE + RESERVE_MAP_SIZE;
        let off_strings = off_struct + self.structs.len;
        let total = off_strings + self.strings.len;
        assert!(total <= out.len(), "device tree output buffer too small");
        let header = [
            MAGIC,
            total as u32,
            off_struct as u32,
            off_strings as u32,
            HEADER_SIZE as u32, // memory reservation map follows the header
            VERSION,
            LAST_COMPATIBLE_VERSION,
            0, // boot CPU id
            self.strings.len as u32,
            self.structs.len as u32,
        ];
        for (i, word) in header.iter().enumerate() {
            out[i * 4..i * 4 + 4].copy_from_slice(&word.to_be_bytes());
        }
        out[HEADER_SIZE..off_struct].fill(0);
        out[off_struct..off_strings].copy_from_slice(self.structs.bytes());
        out[off_strings..total].copy_from_slice(self.strings.bytes());
        total
    }
}
