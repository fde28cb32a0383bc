//! Waiting in the kernel until a socket is ready, with `poll(2)`: Linux's, and Hermit's
//! `sys_poll` (which the `libc` crate binds as `poll` there).
//!
//! The event loop used to nap between passes instead (2 ms while busy, 20 ms idle), which added up
//! to a nap to every round trip and kept an idle Hermit vCPU waking 50-500 times a second.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// One socket and what the loop is waiting for on it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Interest {
    pub fd: RawFd,
    /// Bytes to read (or a connection to accept).
    pub read: bool,
    /// Room to write what is owed.
    pub write: bool,
}

/// Reused `pollfd` array (no allocation per wait once it has grown).
#[derive(Default)]
pub(crate) struct Poller {
    fds: Vec<libc::pollfd>,
}

impl Poller {
    /// Blocks until one of `interests` is ready or `timeout` passes; returns how many are ready.
    /// Interests with nothing wanted are skipped: Hermit reports a socket with no requested
    /// events as hung up at once, which would turn the wait into a spin.
    pub fn wait(&mut self, interests: &[Interest], timeout: Duration) -> io::Result<usize> {
        self.fds.clear();
        self.fds.extend(
            interests
                .iter()
                .filter(|i| i.read || i.write)
                .map(|i| libc::pollfd {
                    fd: i.fd,
                    events: if i.read { libc::POLLIN } else { 0 }
                        | if i.write { libc::POLLOUT } else { 0 },
                    revents: 0,
                }),
        );
        let millis = i32::try_from(timeout.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: `fds` is a live, initialised array of `len` pollfd structs that poll only reads
        // and writes within, for the duration of the call.
        let rc = unsafe {
            libc::poll(
                self.fds.as_mut_ptr(),
                self.fds.len() as libc::nfds_t,
                millis,
            )
        };
        match usize::try_from(rc) {
            Ok(ready) => Ok(ready),
            Err(_) => Err(syscall_error(rc)),
        }
    }
}

/// The error of a libc call that returned `rc` < 0 (here and in [`crate::wake`]).
#[cfg(target_os = "hermit")]
pub(crate) fn syscall_error(rc: i32) -> io::Error {
    // Hermit's system calls return the negated error number.
    io::Error::from_raw_os_error(-rc)
}

/// The error of a libc call that returned `rc` < 0 (here and in [`crate::wake`]).
#[cfg(not(target_os = "hermit"))]
pub(crate) fn syscall_error(_rc: i32) -> io::Error {
    io::Error::last_os_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;
    use std::time::Instant;

    fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        (client, server)
    }

    /// Waits on `socket` alone, for input if `read`, else for nothing at all.
    fn wait_on(socket: &TcpStream, read: bool, timeout: Duration) -> usize {
        let interest = Interest {
            fd: socket.as_raw_fd(),
            read,
            write: false,
        };
        Poller::default().wait(&[interest], timeout).unwrap()
    }

    #[test]
    fn a_quiet_socket_waits_out_the_timeout() {
        let (_client, server) = pair();
        let start = Instant::now();
        assert_eq!(wait_on(&server, true, Duration::from_millis(50)), 0);
        assert!(start.elapsed() >= Duration::from_millis(40));
    }

    #[test]
    fn bytes_arriving_end_the_wait() {
        let (mut client, server) = pair();
        client.write_all(b"x").unwrap();
        assert_eq!(wait_on(&server, true, Duration::from_secs(10)), 1);
    }

    #[test]
    fn a_socket_with_nothing_wanted_is_not_waited_on() {
        let (mut client, server) = pair();
        client.write_all(b"x").unwrap();
        assert_eq!(
            wait_on(&server, false, Duration::from_millis(20)),
            0,
            "readable, but nobody asked"
        );
    }
}
