//! The event-loop front end: one thread, non-blocking sockets, readiness from `mio`.
//!
//! Hermit 0.11 busy-polls the network inside every blocking socket call while TCP timers are near,
//! so one thread per connection means every idle connection thread spins on the only vCPU (measured:
//! ~100 page operations/s). Here a single thread waits in one `poll` and drives every connection
//! through the same sans-IO core as the threaded server ([`FrameBuffer`], [`Session`],
//! [`ReplyBuffer`]). It is the default on Hermit and available on Linux (`--io-model event-loop`),
//! where the conformance suite runs against it too.

use crate::framing::{FrameBuffer, ReplyBuffer};
use crate::server::{Shared, OUT_FLUSH};
use crate::session::Session;
use crate::store::Store;
use crate::NetCounters;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const LISTENER: Token = Token(0);

/// How often the loop wakes without events to check timeouts, shutdown and idle buffers.
const TICK: Duration = Duration::from_millis(500);

struct Conn {
    stream: TcpStream,
    session: Session,
    frames: FrameBuffer,
    out: ReplyBuffer,
    last_progress: Instant,
}

/// What to do with a connection after driving it.
enum Next {
    Keep,
    Close(anyhow::Error),
    Closed,
}

pub(crate) struct EventLoop {
    pub(crate) listener: std::net::TcpListener,
    pub(crate) store: Arc<Store>,
    pub(crate) net: Arc<NetCounters>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_connections: usize,
    pub(crate) frame_timeout: Duration,
}

impl EventLoop {
    pub(crate) fn run(self) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        let mut listener = TcpListener::from_std(self.listener.try_clone()?);
        let mut poll = Poll::new()?;
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let mut events = Events::with_capacity(256);
        let mut conns: HashMap<Token, Conn> = HashMap::new();
        let mut next_token = 1usize;
        let mut last_sweep = Instant::now();
        while !self.shared.stopping.load(Ordering::SeqCst) {
            if let Err(e) = poll.poll(&mut events, Some(TICK)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(&listener, &poll, &mut conns, &mut next_token),
                    token => {
                        let Some(conn) = conns.get_mut(&token) else { continue };
                        match drive(conn, &self.net) {
                            Next::Keep => {}
                            end => self.close(&poll, &mut conns, token, end),
                        }
                    }
                }
            }
            if last_sweep.elapsed() >= TICK {
                last_sweep = Instant::now();
                self.sweep(&poll, &mut conns);
            }
        }
        tracing::info!(connections = conns.len(), "shutting down");
        Ok(())
    }

    fn accept_all(&self, listener: &TcpListener, poll: &Poll, conns: &mut HashMap<Token, Conn>, next: &mut usize) {
        loop {
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return;
                }
            };
            if conns.len() >= self.max_connections {
                tracing::warn!(limit = self.max_connections, "connection limit reached; closing new connection");
                continue;
            }
            let _ = stream.set_nodelay(true);
            *next = next.wrapping_add(1).max(1);
            let token = Token(*next);
            if let Err(e) = poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                tracing::error!(error = %e, "cannot watch connection");
                continue;
            }
            tracing::debug!(%peer, "connected");
            self.net.connections.fetch_add(1, Ordering::Relaxed);
            self.net.connections_total.fetch_add(1, Ordering::Relaxed);
            let session = Session::new(self.store.clone(), self.net.clone());
            let conn = Conn {
                stream,
                session,
                frames: FrameBuffer::default(),
                out: ReplyBuffer::default(),
                last_progress: Instant::now(),
            };
            conns.insert(token, conn);
        }
    }

    fn close(&self, poll: &Poll, conns: &mut HashMap<Token, Conn>, token: Token, why: Next) {
        if let Some(mut conn) = conns.remove(&token) {
            let _ = poll.registry().deregister(&mut conn.stream);
            let peer = conn.stream.peer_addr().ok();
            match why {
                Next::Close(e) => tracing::warn!(?peer, error = %e, "connection closed"),
                _ => tracing::debug!(?peer, "disconnected"),
            }
            self.net.connections.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Drops peers stalled mid-frame (or not reading replies) past the frame timeout, and gives idle
    /// connections' buffers back.
    fn sweep(&self, poll: &Poll, conns: &mut HashMap<Token, Conn>) {
        let stalled: Vec<Token> = conns
            .iter_mut()
            .filter_map(|(token, c)| {
                let idle = c.last_progress.elapsed();
                let waiting = c.frames.has_partial() || !c.out.pending().is_empty();
                if waiting && idle >= self.frame_timeout {
                    return Some(*token);
                }
                if !waiting && idle >= TICK {
                    c.frames.shrink_if_idle();
                    c.out.shrink_if_idle();
                }
                None
            })
            .collect();
        for token in stalled {
            self.net.malformed.fetch_add(1, Ordering::Relaxed);
            let e = anyhow::anyhow!("peer stalled mid-frame for {:?}", self.frame_timeout);
            self.close(poll, conns, token, Next::Close(e));
        }
    }
}

/// Reads, handles and writes until the socket would block, or replies back up (TCP backpressure:
/// stop reading until the peer takes what we owe it).
fn drive(c: &mut Conn, net: &NetCounters) -> Next {
    loop {
        while !c.out.pending().is_empty() {
            match c.stream.write(c.out.pending()) {
                Ok(0) => return Next::Close(anyhow::anyhow!("peer stopped accepting data")),
                Ok(n) => {
                    net.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    c.out.advance(n);
                    c.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Next::Close(e.into()),
            }
        }
        if c.out.pending().len() >= OUT_FLUSH {
            return Next::Keep;
        }
        match c.stream.read(c.frames.spare()) {
            Ok(0) if c.frames.has_partial() => return Next::Close(anyhow::anyhow!("peer disconnected mid-frame")),
            Ok(0) => return Next::Closed,
            Ok(n) => {
                c.frames.commit(n);
                c.last_progress = Instant::now();
                net.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                loop {
                    match c.frames.next_frame() {
                        Ok(Some(frame)) => {
                            if let Err(e) = c.session.handle_frame(frame, &mut c.out) {
                                net.malformed.fetch_add(1, Ordering::Relaxed);
                                return Next::Close(e.into());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            net.malformed.fetch_add(1, Ordering::Relaxed);
                            return Next::Close(e.into());
                        }
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Next::Keep;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Next::Close(e.into()),
        }
    }
}
