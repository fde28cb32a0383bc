//! The VGA text screen (80x25 at 0xb8000, what BIOS firmware and GRUB leave behind): the only
//! place an operator at a spare server sees why the appliance did not start.

use core::fmt;

const TEXT_BUFFER: usize = 0xb_8000;
const COLUMNS: usize = 80;
const ROWS: usize = 25;
/// White on red.
const ALERT: u8 = 0x4f;

/// Writes from the top-left corner, wrapping at the right edge; stops at the bottom.
pub struct Screen {
    at: usize,
}

impl Screen {
    /// A cleared screen.
    pub fn alert() -> Self {
        let mut screen = Screen { at: 0 };
        for _ in 0..COLUMNS * ROWS {
            screen.put(b' ');
        }
        screen.at = 0;
        screen
    }

    fn put(&mut self, byte: u8) {
        if self.at >= COLUMNS * ROWS {
            return;
        }
        let cell = (TEXT_BUFFER + 2 * self.at) as *mut u16;
        // SAFETY: the cell lies in the VGA text buffer, identity-mapped by `boot.s` (first 4 GiB);
        // a volatile store because the device, not the program, reads it. On machines without a
        // text mode (UEFI) this is unused memory-mapped I/O or RAM below 1 MiB nobody uses.
        unsafe { cell.write_volatile(u16::from(ALERT) << 8 | u16::from(byte)) };
        self.at += 1;
    }
}

impl fmt::Write for Screen {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            match byte {
                b'\n' => {
                    let pad = COLUMNS - self.at % COLUMNS;
                    for _ in 0..pad {
                        self.put(b' ');
                    }
                }
                0x20..=0x7e => self.put(byte),
                _ => self.put(b'?'),
            }
        }
        Ok(())
    }
}
