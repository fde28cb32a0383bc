//! The TCP server: binds the listening socket and runs one of two front ends over the same
//! sans-IO connection core ([`crate::connection`]): a thread per connection
//! ([`crate::threaded`], default on Linux) or one event loop ([`crate::event_loop`], default on
//! Hermit). The same code serves in host mode (Linux process) and inside the Hermit unikernel,
//! whose std sockets sit on smoltcp.

use crate::auth::{AuthConfig, Authenticator};
use crate::front::{FrontEnd, Shutdown};
use crate::store::Store;
use crate::NetCounters;
use std::io;
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// How connections are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum IoModel {
    /// A thread per connection with blocking sockets: uses every core (default on Linux).
    Threads,
    /// One thread serving every connection with non-blocking sockets (default on Hermit, whose
    /// blocking socket calls busy-poll).
    EventLoop,
}

impl IoModel {
    /// The right default for the platform this was built for.
    pub fn platform_default() -> IoModel {
        if cfg!(target_os = "hermit") {
            IoModel::EventLoop
        } else {
            IoModel::Threads
        }
    }
}

/// The cores this process may use (1 if the platform cannot say).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Server policies.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections beyond this are closed right after accept.
    pub max_connections: usize,
    /// How long a peer may take to finish a frame it started (and to accept our replies).
    pub frame_timeout: Duration,
    /// Threads or event loop.
    pub io_model: IoModel,
    /// How many event loops ([`IoModel::EventLoop`]): by default one per core.
    pub event_loops: usize,
    /// Who may connect (keys; whether unauthenticated clients are served). The default serves
    /// nobody: give keys, or ask for [`AuthConfig::insecure`] by name.
    pub auth: AuthConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            frame_timeout: Duration::from_secs(30),
            io_model: IoModel::platform_default(),
            event_loops: cores(),
            auth: AuthConfig::default(),
        }
    }
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    store: Arc<Store>,
    net: Arc<NetCounters>,
    config: ServerConfig,
    shutdown: Arc<Shutdown>,
}

/// Stops a running server from another thread (signal handler, test).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shutdown>);

impl ShutdownHandle {
    /// Stops accepting, closes every connection, and makes [`Server::run`] return.
    pub fn shutdown(&self) {
        self.0.trigger();
    }
}

impl Server {
    /// Binds the listening socket.
    pub fn bind(
        addr: impl ToSocketAddrs,
        store: Arc<Store>,
        config: ServerConfig,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(addr)?;
        let shutdown = Arc::new(Shutdown::new(listener.local_addr()?));
        Ok(Server {
            listener,
            store,
            net: Arc::default(),
            config,
            shutdown,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops this server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown.clone())
    }

    /// Connection counters (shared with sessions).
    pub fn net_counters(&self) -> Arc<NetCounters> {
        self.net.clone()
    }

    /// Accepts and serves connections until shut down.
    pub fn run(self) -> io::Result<()> {
        let front = Arc::new(FrontEnd {
            store: self.store,
            net: self.net,
            auth: Arc::new(Authenticator::new(self.config.auth)),
            shutdown: self.shutdown,
            max_connections: self.config.max_connections,
            frame_timeout: self.config.frame_timeout,
        });
        match self.config.io_model {
            IoModel::Threads => crate::threaded::run(self.listener, front),
            IoModel::EventLoop => {
                crate::event_loop::run(self.listener, front, self.config.event_loops)
            }
        }
    }
}

/// A server running on its own thread; dropping it shuts the server down and waits for it (tests,
/// embedding).
pub struct Background {
    addr: SocketAddr,
    handle: ShutdownHandle,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl Server {
    /// Runs the server on a new thread.
    pub fn spawn(self) -> io::Result<Background> {
        let addr = self.local_addr()?;
        let handle = self.shutdown_handle();
        let thread = std::thread::Builder::new()
            .name("appliance".into())
            .spawn(move || self.run())?;
        Ok(Background {
            addr,
            handle,
            thread: Some(thread),
        })
    }
}

impl Background {
    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
