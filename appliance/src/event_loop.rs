//! The single-threaded front end: non-blocking sockets, served in turn by one thread.
//!
//! Hermit 0.11 busy-polls the network inside every blocking socket call while TCP timers are near,
//! so a thread per connection means every waiting connection thread spins on the only vCPU. Here one
//! thread drives every connection through the same sans-IO core as the threaded server
//! ([`FrameBuffer`], [`Session`], [`ReplyBuffer`]) with non-blocking reads and writes, and sleeps
//! briefly (backing off to [`MAX_NAP`], or [`IDLE_NAP`] once idle for a second) only after a pass in
//! which no socket made progress.
//!
//! It deliberately avoids readiness APIs: on Hermit 0.11, mio's accept calls `fcntl(F_SETFD)`, which
//! fails, and readiness after the first frame was not reported, while plain non-blocking std sockets
//! work. It is the default on Hermit (few connections, one vCPU) and selectable on Linux
//! (`--io-model event-loop`), where the conformance suite runs against it as well.

use crate::framing::{FrameBuffer, ReplyBuffer};
use crate::server::{Shared, OUT_FLUSH};
use crate::session::Session;
use crate::store::Store;
use crate::NetCounters;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often timeouts and idle buffers are checked.
const TICK: Duration = Duration::from_millis(500);

/// Longest sleep while traffic is recent (bounds the latency a pause adds to the next request).
const MAX_NAP: Duration = Duration::from_millis(2);

/// Longest sleep once nothing moved for [`IDLE_AFTER`]: waking every 2 ms keeps a TCG vCPU busy.
const IDLE_NAP: Duration = Duration::from_millis(20);

/// How long without progress before the loop naps longer.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// First sleep after an idle pass.
const MIN_NAP: Duration = Duration::from_micros(50);

/// Reads per connection per pass: a busy connection must not starve the others.
const READS_PER_PASS: usize = 4;

struct Conn {
    stream: TcpStream,
    session: Session,
    frames: FrameBuffer,
    out: ReplyBuffer,
    last_progress: Instant,
}

/// Outcome of driving one connection.
enum Drive {
    /// Still open; whether any byte moved.
    Open(bool),
    /// Closed by the peer, cleanly.
    Closed,
    /// Closed by us, for this reason.
    Failed(anyhow::Error),
}

pub(crate) struct EventLoop {
    pub(crate) listener: TcpListener,
    pub(crate) store: Arc<Store>,
    pub(crate) net: Arc<NetCounters>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) max_connections: usize,
    pub(crate) frame_timeout: Duration,
}

impl EventLoop {
    pub(crate) fn run(self) -> io::Result<()> {
        self.listener.set_nonblocking(true)?;
        // Hermit's close blocks until the peer has closed its side too; a peer we drop for bad input
        // may never do that. Sockets are therefore closed on their own thread, never in the loop.
        let (closer, to_close) = channel::<TcpStream>();
        std::thread::Builder::new()
            .name("closer".into())
            .spawn(move || {
                for stream in to_close {
                    drop(stream);
                }
            })?;
        let mut conns: Vec<Conn> = Vec::new();
        let mut nap = MIN_NAP;
        let mut last_sweep = Instant::now();
        let mut last_progress = Instant::now();
        while !self.shared.stopping.load(Ordering::SeqCst) {
            let mut progress = self.accept_all(&mut conns);
            let mut i = 0;
            while i < conns.len() {
                match drive(&mut conns[i], &self.net) {
                    Drive::Open(p) => {
                        progress |= p;
                        i += 1;
                    }
                    end => {
                        let conn = conns.swap_remove(i);
                        self.closed(conn, end, &closer);
                    }
                }
            }
            if last_sweep.elapsed() >= TICK {
                last_sweep = Instant::now();
                self.sweep(&mut conns, &closer);
            }
            if progress {
                nap = MIN_NAP;
                last_progress = Instant::now();
            } else {
                std::thread::sleep(nap);
                let cap = if last_progress.elapsed() >= IDLE_AFTER {
                    IDLE_NAP
                } else {
                    MAX_NAP
                };
                nap = (nap * 2).min(cap);
            }
        }
        tracing::info!(connections = conns.len(), "shutting down");
        for conn in conns {
            let _ = closer.send(conn.stream);
        }
        Ok(())
    }

    /// Accepts every pending connection; returns whether there was any.
    fn accept_all(&self, conns: &mut Vec<Conn>) -> bool {
        let mut any = false;
        loop {
            let (stream, peer) = match self.listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    return any;
                }
            };
            any = true;
            if conns.len() >= self.max_connections {
                tracing::warn!(
                    limit = self.max_connections,
                    "connection limit reached; closing new connection"
                );
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::error!(error = %e, "cannot make a connection non-blocking");
                continue;
            }
            let _ = stream.set_nodelay(true);
            tracing::debug!(%peer, "connected");
            self.net.connections.fetch_add(1, Ordering::Relaxed);
            self.net.connections_total.fetch_add(1, Ordering::Relaxed);
            conns.push(Conn {
                stream,
                session: Session::new(self.store.clone(), self.net.clone()),
                frames: FrameBuffer::default(),
                out: ReplyBuffer::default(),
                last_progress: Instant::now(),
            });
        }
    }

    fn closed(&self, conn: Conn, why: Drive, closer: &Sender<TcpStream>) {
        let peer = conn.stream.peer_addr().ok();
        match why {
            Drive::Failed(e) => tracing::warn!(?peer, error = %e, "connection closed"),
            _ => tracing::debug!(?peer, "disconnected"),
        }
        self.net.connections.fetch_sub(1, Ordering::Relaxed);
        let _ = closer.send(conn.stream);
    }

    /// Drops peers stalled mid-frame (or not reading replies) past the frame timeout, and gives idle
    /// connections' buffers back.
    fn sweep(&self, conns: &mut Vec<Conn>, closer: &Sender<TcpStream>) {
        let mut i = 0;
        while i < conns.len() {
            let c = &mut conns[i];
            let idle = c.last_progress.elapsed();
            let waiting = c.frames.has_partial() || !c.out.pending().is_empty();
            if waiting && idle >= self.frame_timeout {
                self.net.malformed.fetch_add(1, Ordering::Relaxed);
                let conn = conns.swap_remove(i);
                let e = anyhow::anyhow!("peer stalled mid-frame for {:?}", self.frame_timeout);
                self.closed(conn, Drive::Failed(e), closer);
                continue;
            }
            if !waiting && idle >= TICK {
                c.frames.shrink_if_idle();
                c.out.shrink_if_idle();
            }
            i += 1;
        }
    }
}

/// Writes what is owed, then reads and handles what arrived, until neither moves or the connection
/// had its share of this pass. Stops reading while replies back up (TCP backpressure: the peer must
/// take what we owe it first).
fn drive(c: &mut Conn, net: &NetCounters) -> Drive {
    let mut moved = false;
    for _ in 0..READS_PER_PASS {
        let mut step = false;
        while !c.out.pending().is_empty() {
            match c.stream.write(c.out.pending()) {
                // Hermit reports a full send buffer as a zero-length write.
                Ok(0) => break,
                Ok(n) => {
                    net.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                    c.out.advance(n);
                    step = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Drive::Failed(e.into()),
            }
        }
        if c.out.pending().len() < OUT_FLUSH {
            match c.stream.read(c.frames.spare()) {
                Ok(0) if c.frames.has_partial() => {
                    return Drive::Failed(anyhow::anyhow!("peer disconnected mid-frame"));
                }
                Ok(0) => return Drive::Closed,
                Ok(n) => {
                    c.frames.commit(n);
                    net.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    step = true;
                    loop {
                        match c.frames.next_frame() {
                            Ok(Some(frame)) => {
                                if let Err(e) = c.session.handle_frame(frame, &mut c.out) {
                                    net.malformed.fetch_add(1, Ordering::Relaxed);
                                    return Drive::Failed(e.into());
                                }
                            }
                            Ok(None) => break,
                            Err(e) => {
                                net.malformed.fetch_add(1, Ordering::Relaxed);
                                return Drive::Failed(e.into());
                            }
                        }
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Drive::Failed(e.into()),
            }
        }
        if !step {
            break;
        }
        moved = true;
    }
    if moved {
        c.last_progress = Instant::now();
    }
    Drive::Open(moved)
}
