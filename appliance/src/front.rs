//! What the socket front ends ([`crate::threaded`], [`crate::event_loop`]) share: the store and
//! counters every [`Connection`] is built from, the connection policies, and the stop signal.

use crate::auth::Authenticator;
use crate::connection::Connection;
use crate::store::Store;
use crate::NetCounters;
use std::collections::HashMap;
use std::net::{Shutdown as Direction, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Everything a front end needs to serve connections.
pub(crate) struct FrontEnd {
    pub(crate) store: Arc<Store>,
    pub(crate) net: Arc<NetCounters>,
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) shutdown: Arc<Shutdown>,
    /// Connections beyond this are closed right after accept.
    pub(crate) max_connections: usize,
    /// How long a peer may take to finish a frame it started (and to take our replies).
    pub(crate) frame_timeout: Duration,
}

impl FrontEnd {
    /// The sans-IO state of a connection just accepted from `peer`.
    pub(crate) fn connection(&self, peer: Option<SocketAddr>, now: Instant) -> Connection {
        Connection::new(
            self.store.clone(),
            self.net.clone(),
            self.auth.clone(),
            peer,
            now,
        )
    }
}

/// The stop signal: a flag every loop checks, plus what wakes the loops that block.
pub(crate) struct Shutdown {
    stopping: AtomicBool,
    /// Blocking connections (thread per connection) to shut down so their reads return.
    streams: Mutex<HashMap<u64, TcpStream>>,
    next_stream: AtomicU64,
    /// Our own listening address: connecting to it wakes a blocking accept.
    wake_addr: SocketAddr,
}

impl Shutdown {
    /// A signal for a server listening on `local`.
    pub(crate) fn new(local: SocketAddr) -> Shutdown {
        let wake_ip = if local.ip().is_unspecified() {
            match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            }
        } else {
            local.ip()
        };
        Shutdown {
            stopping: AtomicBool::new(false),
            streams: Mutex::new(HashMap::new()),
            next_stream: AtomicU64::new(1),
            wake_addr: SocketAddr::new(wake_ip, local.port()),
        }
    }

    pub(crate) fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Stops the server: sets the flag, shuts registered streams down, wakes the accept loop.
    pub(crate) fn trigger(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        for stream in self.lock_streams().values() {
            let _ = stream.shutdown(Direction::Both);
        }
        let _ = TcpStream::connect_timeout(&self.wake_addr, Duration::from_secs(1));
    }

    /// Registers a clone of a blocking stream so [`Shutdown::trigger`] can wake its reader; the
    /// returned id unregisters it.
    pub(crate) fn register(&self, stream: &TcpStream) -> std::io::Result<u64> {
        let id = self.next_stream.fetch_add(1, Ordering::Relaxed);
        self.lock_streams().insert(id, stream.try_clone()?);
        Ok(id)
    }

    pub(crate) fn unregister(&self, id: u64) {
        self.lock_streams().remove(&id);
    }

    fn lock_streams(&self) -> std::sync::MutexGuard<'_, HashMap<u64, TcpStream>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }
}
