//! COM1 serial console (16550 UART at I/O port 0x3f8) and a `log` backend on top of it.
//!
//! QEMU's `-serial stdio` shows this output; the Hermit kernel later uses the same port (its base is
//! handed over in the boot info), so loader and kernel messages appear in one stream.

use core::fmt::{self, Write};

use crate::port::{inb, outb};

/// I/O base of the first serial port.
pub const COM1: u16 = 0x3f8;

/// The UART; a unit type because the device state lives in hardware.
pub struct Serial;

impl Serial {
    /// Programs 115200 baud, 8N1, FIFOs on, interrupts off.
    pub fn init() -> Self {
        const SETUP: [(u16, u8); 6] = [
            (1, 0x00), // interrupt enable: none
            (3, 0x80), // line control: DLAB on to set the divisor
            (0, 0x01), // divisor low: 115200 / 1
            (1, 0x00), // divisor high
            (3, 0x03), // line control: 8 data bits, no parity, 1 stop bit, DLAB off
            (2, 0xc7), // FIFO control: enable, clear, 14-byte threshold
        ];
        for (offset, value) in SETUP {
            // SAFETY: UART configuration registers of COM1; no memory is involved.
            unsafe { outb(COM1 + offset, value) };
        }
        Serial
    }

    fn write_byte(&mut self, byte: u8) {
        const LINE_STATUS: u16 = 5;
        const TX_EMPTY: u8 = 1 << 5;
        for _ in 0..100_000 {
            // SAFETY: reading the UART line status register has no side effect on memory.
            if unsafe { inb(COM1 + LINE_STATUS) } & TX_EMPTY != 0 {
                break;
            }
        }
        // SAFETY: writing the UART transmit register sends one byte.
        unsafe { outb(COM1, byte) };
    }
}

impl Write for Serial {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
        Ok(())
    }
}

/// `log` backend: one line per record, prefixed so loader lines stand out from the kernel's.
struct Logger;

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.enabled(record.metadata()) {
            // Output errors cannot be reported anywhere else; drop them.
            let _ = writeln!(Serial, "[loader][{}] {}", record.level(), record.args());
        }
    }

    fn flush(&self) {}
}

/// Initialises COM1 and routes `log` (ours and hermit-entry's) to it.
pub fn init_logger() {
    Serial::init();
    static LOGGER: Logger = Logger;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
