//! The TCP front end: one thread per connection, blocking std sockets. The same code serves in host
//! mode (Linux process) and inside the Hermit unikernel, whose std sockets sit on smoltcp.
//!
//! Memory per connection is bounded (frame buffer up to one maximal frame, replies flushed after each
//! read), and backpressure is TCP's own: a client that does not read its replies blocks our writes,
//! which stops us reading its requests. A peer that stalls mid-frame is dropped after the frame
//! timeout; a peer that is merely idle is kept.

use crate::framing::{FrameBuffer, ReplyBuffer};
use crate::session::Session;
use crate::store::Store;
use crate::NetCounters;
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
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

/// Server policies.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Connections beyond this are closed right after accept.
    pub max_connections: usize,
    /// How long a peer may take to finish a frame it started (and to accept our replies).
    pub frame_timeout: Duration,
    /// Threads or event loop.
    pub io_model: IoModel,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_connections: 4096,
            frame_timeout: Duration::from_secs(30),
            io_model: IoModel::platform_default(),
        }
    }
}

/// Stack of a connection thread: sessions keep their buffers on the heap.
const CONNECTION_STACK: usize = 256 * 1024;

/// Replies are flushed once this much is pending, even mid-read (and the event loop stops reading).
pub(crate) const OUT_FLUSH: usize = 256 * 1024;

/// How often a blocked read wakes up to check for shutdown, stalled frames and idleness.
const IDLE_TICK: Duration = Duration::from_secs(1);

pub(crate) struct Shared {
    pub(crate) stopping: AtomicBool,
    conns: Mutex<HashMap<u64, TcpStream>>,
    next_conn: AtomicU64,
    wake_addr: SocketAddr,
}

/// A bound server, ready to [`Server::run`].
pub struct Server {
    listener: TcpListener,
    store: Arc<Store>,
    net: Arc<NetCounters>,
    config: ServerConfig,
    shared: Arc<Shared>,
}

/// Stops a running server from another thread (signal handler, test).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shared>);

impl ShutdownHandle {
    /// Stops accepting, closes every connection, and makes [`Server::run`] return.
    pub fn shutdown(&self) {
        self.0.stopping.store(true, Ordering::SeqCst);
        for conn in self
            .0
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
        {
            let _ = conn.shutdown(Shutdown::Both);
        }
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.0.wake_addr, Duration::from_secs(1));
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
        let local = listener.local_addr()?;
        let wake_ip = if local.ip().is_unspecified() {
            match local {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            }
        } else {
            local.ip()
        };
        let shared = Arc::new(Shared {
            stopping: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(1),
            wake_addr: SocketAddr::new(wake_ip, local.port()),
        });
        Ok(Server {
            listener,
            store,
            net: Arc::default(),
            config,
            shared,
        })
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// A handle that stops this server.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shared.clone())
    }

    /// Connection counters (shared with sessions).
    pub fn net_counters(&self) -> Arc<NetCounters> {
        self.net.clone()
    }

    /// Accepts and serves connections until shut down.
    pub fn run(self) -> io::Result<()> {
        match self.config.io_model {
            IoModel::Threads => self.run_threads(),
            IoModel::EventLoop => crate::event_loop::EventLoop {
                listener: self.listener,
                store: self.store,
                net: self.net,
                shared: self.shared,
                max_connections: self.config.max_connections,
                frame_timeout: self.config.frame_timeout,
            }
            .run(),
        }
    }

    /// Thread per connection; waits for connection threads to end on shutdown.
    fn run_threads(self) -> io::Result<()> {
        let mut workers: Vec<JoinHandle<()>> = Vec::new();
        for incoming in self.listener.incoming() {
            if self.shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            let stream = match incoming {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            workers.retain(|w| !w.is_finished());
            if workers.len() >= self.config.max_connections {
                tracing::warn!(
                    limit = self.config.max_connections,
                    "connection limit reached; closing new connection"
                );
                continue;
            }
            match self.spawn_connection(stream) {
                Ok(w) => workers.push(w),
                Err(e) => tracing::error!(error = %e, "cannot start connection thread"),
            }
        }
        tracing::info!(connections = workers.len(), "shutting down");
        for w in workers {
            let _ = w.join();
        }
        Ok(())
    }

    fn spawn_connection(&self, stream: TcpStream) -> io::Result<JoinHandle<()>> {
        let id = self.shared.next_conn.fetch_add(1, Ordering::Relaxed);
        let peer = stream.peer_addr().ok();
        self.shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stream.try_clone()?);
        let session = Session::new(self.store.clone(), self.net.clone());
        let (net, shared, timeout) = (
            self.net.clone(),
            self.shared.clone(),
            self.config.frame_timeout,
        );
        net.connections.fetch_add(1, Ordering::Relaxed);
        net.connections_total.fetch_add(1, Ordering::Relaxed);
        std::thread::Builder::new()
            .name(format!("conn-{id}"))
            .stack_size(CONNECTION_STACK)
            .spawn(move || {
                tracing::debug!(?peer, "connected");
                match serve(stream, session, &net, &shared, timeout) {
                    Ok(()) => tracing::debug!(?peer, "disconnected"),
                    Err(e) => tracing::warn!(?peer, error = %e, "connection closed"),
                }
                shared
                    .conns
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                net.connections.fetch_sub(1, Ordering::Relaxed);
            })
    }
}

fn serve(
    mut stream: TcpStream,
    mut session: Session,
    net: &NetCounters,
    shared: &Shared,
    frame_timeout: Duration,
) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // Not every platform supports socket timeouts; without them a stalled peer only costs a thread.
    let _ = stream.set_read_timeout(Some(IDLE_TICK.min(frame_timeout)));
    let _ = stream.set_write_timeout(Some(frame_timeout));
    let mut frames = FrameBuffer::default();
    let mut out = ReplyBuffer::default();
    let mut stalled_since: Option<std::time::Instant> = None;
    loop {
        match stream.read(frames.spare()) {
            Ok(0) if frames.has_partial() => anyhow::bail!("peer disconnected mid-frame"),
            Ok(0) => return Ok(()),
            Ok(n) => {
                frames.commit(n);
                stalled_since = None;
                net.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if shared.stopping.load(Ordering::SeqCst) {
                    return Ok(());
                }
                if frames.has_partial() {
                    let since = *stalled_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() + IDLE_TICK.min(frame_timeout) >= frame_timeout {
                        net.malformed.fetch_add(1, Ordering::Relaxed);
                        anyhow::bail!("peer stalled mid-frame for {frame_timeout:?}");
                    }
                } else {
                    // Idle: give buffers grown for large batches back.
                    frames.shrink_if_idle();
                    out.shrink_if_idle();
                }
                continue;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        loop {
            let frame = match frames.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    net.malformed.fetch_add(1, Ordering::Relaxed);
                    return Err(e.into());
                }
            };
            if let Err(e) = session.handle_frame(frame, &mut out) {
                net.malformed.fetch_add(1, Ordering::Relaxed);
                return Err(e.into());
            }
            if out.pending().len() >= OUT_FLUSH {
                flush(&mut stream, &mut out, net)?;
            }
        }
        flush(&mut stream, &mut out, net)?;
    }
}

fn flush(stream: &mut TcpStream, out: &mut ReplyBuffer, net: &NetCounters) -> io::Result<()> {
    let pending = out.pending();
    if !pending.is_empty() {
        stream.write_all(pending)?;
        net.bytes_out
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
        out.clear();
    }
    Ok(())
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
