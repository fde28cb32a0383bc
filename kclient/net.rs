//! Kernel TCP sockets: a connected IPv4 stream with blocking, whole-buffer send and receive.
//!
//! Sends and receives may run concurrently from different threads (the kernel socket locks
//! internally); callers serialise their own sends so frames do not interleave. [`TcpStream::shutdown`]
//! may be called from any thread and wakes blocked senders and receivers with an error.

use core::ptr::NonNull;

use kernel::bindings;
use kernel::error::to_result;
use kernel::ffi::c_void;
use kernel::prelude::*;

use crate::ffi;

pub(crate) use crate::logic::targets::SocketAddr;

/// A connected kernel TCP socket, released on drop.
///
/// # Invariants
///
/// `sock` is a connected socket created by `kc_tcp_connect`, released only in `Drop`.
pub(crate) struct TcpStream {
    sock: NonNull<bindings::socket>,
}

// SAFETY: kernel sockets may be used from any thread; concurrent operations lock internally.
unsafe impl Send for TcpStream {}
// SAFETY: as above.
unsafe impl Sync for TcpStream {}

impl TcpStream {
    /// Connects within `connect_timeout_ms`; later sends give up after `io_timeout_ms`.
    pub(crate) fn connect(
        addr: SocketAddr,
        connect_timeout_ms: u32,
        io_timeout_ms: u32,
    ) -> Result<Self> {
        let mut sock: *mut bindings::socket = core::ptr::null_mut();
        // SAFETY: `sock` is a valid out pointer; the helper sets it only on success.
        to_result(unsafe {
            ffi::kc_tcp_connect(
                addr.ip,
                addr.port,
                connect_timeout_ms,
                io_timeout_ms,
                &mut sock,
            )
        })?;
        let sock = NonNull::new(sock).ok_or(EINVAL)?;
        Ok(Self { sock })
    }

    /// Sends all of `buf`.
    pub(crate) fn send(&self, buf: &[u8]) -> Result {
        // SAFETY: `self.sock` is connected (invariant); `buf` is valid for reads of its length.
        to_result(unsafe {
            ffi::kc_sock_send(self.sock.as_ptr(), buf.as_ptr().cast::<c_void>(), buf.len())
        })
    }

    /// Fills all of `buf`; `ECONNRESET` if the peer closed the stream, `EAGAIN` if nothing arrived
    /// within the I/O timeout (nothing consumed: safe to retry), `ETIMEDOUT` if the peer stalled
    /// part-way (the stream is then out of sync).
    pub(crate) fn recv_exact(&self, buf: &mut [u8]) -> Result {
        // SAFETY: `self.sock` is connected (invariant); `buf` is valid for writes of its length.
        to_result(unsafe {
            ffi::kc_sock_recv(
                self.sock.as_ptr(),
                buf.as_mut_ptr().cast::<c_void>(),
                buf.len(),
            )
        })
    }

    /// Shuts both directions down; blocked and later operations fail.
    pub(crate) fn shutdown(&self) {
        // SAFETY: `self.sock` is a live socket (invariant); shutdown is safe concurrently.
        unsafe { ffi::kc_sock_shutdown(self.sock.as_ptr()) };
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        // SAFETY: last reference to a socket created by `kc_tcp_connect` (invariant).
        unsafe { ffi::kc_sock_release(self.sock.as_ptr()) };
    }
}
