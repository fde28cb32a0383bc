//! The operator's `tmem.conf` (a multiboot module) turned into the Hermit command line, or, if it
//! has any error, a message on the screen and the serial port and a halt: the appliance never
//! starts with half a configuration.

use core::fmt::{self, Write};
use core::ops::Range;
use core::sync::atomic::{AtomicBool, Ordering};

use crate::phys;
use crate::screen::Screen;

/// Longest command line we build (64 keys of 80 bytes fit).
const MAX_COMMAND_LINE: usize = 8192;

/// Where the built command line lives: loader memory, which the kernel reads and never reuses.
static mut COMMAND_LINE: [u8; MAX_COMMAND_LINE] = [0; MAX_COMMAND_LINE];
/// Set when [`COMMAND_LINE`] has been handed out.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// `boot_cmdline` (kernel arguments from the boot loader's configuration) followed by what
/// `tmem.conf` at `file` says. Called at most once.
pub fn command_line(file: &Range<u64>, boot_cmdline: &str) -> &'static str {
    assert!(
        !TAKEN.swap(true, Ordering::Relaxed),
        "command line built twice"
    );
    // SAFETY: `TAKEN` makes this the only reference ever made to the buffer.
    let out: &'static mut [u8] = unsafe { &mut *(&raw mut COMMAND_LINE) };
    // SAFETY: the module is the multiboot module the boot loader placed; nothing writes to it.
    let bytes = unsafe { phys::bytes(file.start, (file.end - file.start) as usize) };
    let text = core::str::from_utf8(bytes)
        .unwrap_or_else(|_| stop(format_args!("tmem.conf: not UTF-8 text")));
    let config = boot_config::parse(text).unwrap_or_else(|e| stop(format_args!("{e}")));
    if boot_cmdline.split_whitespace().any(|w| w == "--") {
        stop(format_args!(
            "the boot command line holds appliance flags (after `--`) and tmem.conf is given too: \
             keep them in tmem.conf only"
        ));
    }
    log::info!("tmem.conf: {}", Summary(&config));
    let mut writer = SliceWriter { out, len: 0 };
    let written =
        write!(writer, "{boot_cmdline} ").and_then(|()| config.write_command_line(&mut writer));
    if written.is_err() {
        stop(format_args!(
            "tmem.conf: the settings make a command line over {MAX_COMMAND_LINE} bytes"
        ));
    }
    let SliceWriter { out, len } = writer;
    core::str::from_utf8(&out[..len])
        .expect("written from str")
        .trim_start()
}

/// The settings for logs (never the keys).
struct Summary<'c, 't>(&'c boot_config::Config<'t>);

impl fmt::Display for Summary<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.summary(f)
    }
}

/// A `fmt::Write` into a byte slice that fails when full.
struct SliceWriter<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl Write for SliceWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        self.out
            .get_mut(self.len..end)
            .ok_or(fmt::Error)?
            .copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

/// Shows why the appliance does not start, on the screen and the serial port, and halts.
pub fn stop(why: fmt::Arguments<'_>) -> ! {
    log::error!("cannot start: {why}");
    let mut screen = Screen::alert();
    let _ = write!(
        screen,
        "tmem appliance: cannot start\n\n{why}\n\n\
         Fix tmem.conf on the stick's TMEM partition (any computer can edit it),\n\
         then restart this machine. docs/deploy.md lists every setting.\n"
    );
    loop {
        // SAFETY: `hlt` only waits for the next interrupt; interrupts are off, so we stay here.
        unsafe { core::arch::asm!("hlt", options(nomem, nostack)) };
    }
}
