//! Waking an event loop that waits in `poll`: an `eventfd` in its poll set, which another thread
//! makes readable. Linux and Hermit 0.11 both have `eventfd` and poll it.

use crate::handoff::Wake;
use crate::readiness::syscall_error;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// A non-blocking eventfd: [`Wake::wake`] makes it readable, [`Wake::reset`] drains it.
pub(crate) struct Waker {
    fd: OwnedFd,
}

impl Waker {
    pub(crate) fn new() -> io::Result<Waker> {
        // SAFETY: eventfd takes no pointers; a non-negative result is a new descriptor we own.
        #[cfg(target_os = "hermit")]
        let rc = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK) };
        // SAFETY: as above.
        #[cfg(not(target_os = "hermit"))]
        let rc = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if rc < 0 {
            return Err(syscall_error(rc));
        }
        // SAFETY: `rc` is a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(rc) };
        Ok(Waker { fd })
    }

    pub(crate) fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Wake for Waker {
    /// Makes the descriptor readable (a loop polling it returns).
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live local buffer to our own descriptor. A full counter
        // (EAGAIN) means the loop is already due to wake: nothing to do.
        let _ = unsafe { libc::write(self.fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Drains it, so the next poll waits again.
    fn reset(&self) {
        let mut count = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live local buffer from our own descriptor;
        // EAGAIN (nothing to drain) is fine.
        let _ = unsafe { libc::read(self.fd.as_raw_fd(), count.as_mut_ptr().cast(), count.len()) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readiness::{Interest, Poller};
    use std::time::{Duration, Instant};

    fn ready_within(w: &Waker, timeout: Duration) -> usize {
        let interest = Interest {
            fd: w.fd(),
            read: true,
            write: false,
        };
        Poller::default().wait(&[interest], timeout).unwrap()
    }

    #[test]
    fn a_wake_from_another_thread_ends_a_wait_and_reset_rearms_it() {
        let w = std::sync::Arc::new(Waker::new().unwrap());
        assert_eq!(ready_within(&w, Duration::from_millis(20)), 0);
        let other = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.wake();
        });
        let start = Instant::now();
        assert_eq!(ready_within(&w, Duration::from_secs(10)), 1);
        assert!(start.elapsed() < Duration::from_secs(5));
        t.join().unwrap();
        w.reset();
        assert_eq!(ready_within(&w, Duration::from_millis(20)), 0);
        // Two wakes before a reset are one readiness; one reset drains both.
        w.wake();
        w.wake();
        assert_eq!(ready_within(&w, Duration::from_millis(20)), 1);
        w.reset();
        assert_eq!(ready_within(&w, Duration::from_millis(20)), 0);
    }
}
