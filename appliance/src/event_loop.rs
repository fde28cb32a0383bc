//! The event-loop front end: non-blocking sockets, served in turn by one thread per core.
//!
//! Hermit 0.11 busy-polls the network inside every blocking socket call while TCP timers are near,
//! so a thread per connection means every waiting connection thread spins on a vCPU. Here each
//! loop thread drives the sans-IO [`Connection`]s it owns (the same core as the threaded front
//! end) with non-blocking reads and writes. After a pass in which no socket made progress it waits
//! in the kernel (`poll(2)`, [`readiness`](crate::readiness)) until a socket it cares about is
//! ready or the next tick is due. Where `poll` fails, it falls back to napping (backing off to
//! [`MAX_NAP`], or [`IDLE_NAP`] once idle for a second). There is one loop per core
//! (`--event-loops`): compression, checksums and sealing run in parallel, the store's lock is
//! held only to copy bytes in or out.
//!
//! It deliberately avoids mio: on Hermit 0.11, mio's accept calls `fcntl(F_SETFD)`, which fails,
//! while plain non-blocking std sockets and `poll` work. It is the default on Hermit and
//! selectable on Linux (`--io-model event-loop`), where the conformance suite runs against it as
//! well.

use crate::connection::Connection;
use crate::front::FrontEnd;
use crate::handoff::Handoff;
use crate::readiness::{Interest, Poller};
use crate::wake::Waker;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{channel, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often timeouts and idle buffers are checked.
const TICK: Duration = Duration::from_millis(500);

/// Longest wait for readiness: bounds how late a connection is accepted should the kernel not
/// report the listener ready (Hermit reports it only for the first socket of its backlog).
const MAX_WAIT: Duration = Duration::from_secs(1);

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

/// A socket and its sans-IO connection state.
struct Conn {
    stream: TcpStream,
    peer: Option<SocketAddr>,
    state: Connection,
}

impl Conn {
    /// A connection just accepted from `peer`, served by loop `me`.
    fn accepted(stream: TcpStream, peer: SocketAddr, front: &FrontEnd, me: usize) -> Conn {
        tracing::debug!(%peer, event_loop = me, "connected");
        Conn {
            stream,
            peer: Some(peer),
            state: front.connection(Some(peer), Instant::now()),
        }
    }

    /// What the loop waits for on this socket: input it can take, room for output it owes.
    fn interest(&self) -> Interest {
        Interest {
            fd: self.stream.as_raw_fd(),
            read: self.state.wants_input(),
            write: !self.state.output().is_empty(),
        }
    }
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

/// Runs `loops` event loops (one per core the machine gives us) until shut down. Loop 0, on this
/// thread, accepts; each new connection goes to the loop serving the fewest, which owns it from
/// then on.
pub(crate) fn run(listener: TcpListener, front: Arc<FrontEnd>, loops: usize) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // Closing can block on Hermit (before patch 0007 until the peer had closed its side too), and
    // a peer we drop for bad input may never do that: sockets are closed on their own thread.
    let (closer, to_close) = channel::<TcpStream>();
    std::thread::Builder::new()
        .name("closer".into())
        .spawn(move || {
            for stream in to_close {
                drop(stream);
            }
        })?;
    let shared = Arc::new(Shared {
        listener,
        front,
        loops: (0..loops.max(1))
            .map(|_| Loop::new())
            .collect::<io::Result<_>>()?,
    });
    let mut others = Vec::new();
    for me in 1..shared.loops.len() {
        let (shared, closer) = (shared.clone(), closer.clone());
        others.push(
            std::thread::Builder::new()
                .name(format!("event-loop-{me}"))
                .spawn(move || serve(me, &shared, &closer))?,
        );
    }
    tracing::info!(
        loops = shared.loops.len(),
        "serving: event loops, one per core"
    );
    serve(0, &shared, &closer);
    for loop_thread in others {
        let _ = loop_thread.join();
    }
    Ok(())
}

/// What every loop shares.
struct Shared {
    listener: TcpListener,
    front: Arc<FrontEnd>,
    loops: Vec<Loop>,
}

impl Shared {
    fn total_load(&self) -> usize {
        self.loops
            .iter()
            .map(|l| l.load.load(Ordering::Relaxed))
            .sum()
    }
}

/// The live loop serving the fewest connections (the lowest index among equals); loop 0 (the
/// acceptor) is always live.
fn least_loaded(loops: &[Loop]) -> usize {
    (0..loops.len())
        .filter(|&i| !loops[i].inbox.is_retired())
        .min_by_key(|&i| loops[i].load.load(Ordering::Relaxed))
        .unwrap_or(0)
}

/// One loop's shared part: how loaded it is, and how the acceptor hands it connections.
struct Loop {
    /// Connections it serves or was handed.
    load: AtomicUsize,
    /// Connections handed to it and not yet taken; retired when its thread ended by a panic (a
    /// bug): it must be handed nothing more, or those clients would wait forever.
    inbox: Handoff<(TcpStream, SocketAddr), Waker>,
}

impl Loop {
    fn new() -> io::Result<Loop> {
        Ok(Loop {
            load: AtomicUsize::new(0),
            inbox: Handoff::new(Waker::new()?),
        })
    }
}

/// Retires a loop whose thread unwinds: nothing more is handed to it, and what was handed but
/// not taken is closed (those clients reconnect) instead of waiting forever.
struct RetireOnPanic<'a>(&'a Loop);

impl Drop for RetireOnPanic<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            drop(self.0.inbox.retire());
        }
    }
}

/// One loop, until shut down.
fn serve(me: usize, shared: &Shared, closer: &Sender<TcpStream>) {
    let front = &shared.front;
    let this = &shared.loops[me];
    let _retire = RetireOnPanic(this);
    let mut conns: Vec<Conn> = Vec::new();
    let mut nap = MIN_NAP;
    let mut last_tick = Instant::now();
    let mut last_progress = Instant::now();
    let mut poller = Some(Poller::default());
    let mut interests = Vec::new();
    while !front.shutdown.is_stopping() {
        let mut progress = false;
        for (stream, peer) in this.inbox.take() {
            conns.push(Conn::accepted(stream, peer, front, me));
            progress = true;
        }
        if me == 0 {
            progress |= accept_all(shared, &mut conns, closer);
        }
        let served = conns.len();
        let mut i = 0;
        while i < conns.len() {
            match drive(&mut conns[i]) {
                Drive::Open(p) => {
                    progress |= p;
                    i += 1;
                }
                end => closed(conns.swap_remove(i), end, closer),
            }
        }
        let now = Instant::now();
        if now.duration_since(last_tick) >= TICK {
            last_tick = now;
            tick(&mut conns, front, now, closer);
        }
        this.load.fetch_sub(served - conns.len(), Ordering::Relaxed);
        if progress {
            nap = MIN_NAP;
            last_progress = now;
        } else if let Some(p) = poller.as_mut() {
            // Ticks only matter to connections: with none, sleep up to MAX_WAIT.
            let due = if conns.is_empty() {
                MAX_WAIT
            } else {
                TICK.saturating_sub(now.duration_since(last_tick))
            };
            interests.clear();
            let readable = |fd| Interest {
                fd,
                read: true,
                write: false,
            };
            interests.push(readable(this.inbox.waker().fd()));
            if me == 0 {
                interests.push(readable(shared.listener.as_raw_fd()));
            }
            interests.extend(conns.iter().map(Conn::interest));
            if let Err(e) = p.wait(&interests, due.min(MAX_WAIT)) {
                tracing::warn!(error = %e, "poll failed; napping between passes instead");
                poller = None;
            }
            // Re-armed only after a wait (not on every busy pass: a system call): the next pass
            // takes the inbox, and a hand-off after this line wakes the next wait at once.
            this.inbox.rearm();
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
    tracing::info!(event_loop = me, connections = conns.len(), "shutting down");
    for conn in conns {
        let _ = closer.send(conn.stream);
    }
    for (stream, _) in this.inbox.retire() {
        let _ = closer.send(stream);
    }
}

/// Accepts every pending connection, keeping those it assigns to loop 0 (the caller's) and
/// handing the others over; returns whether there was any.
fn accept_all(shared: &Shared, conns: &mut Vec<Conn>, closer: &Sender<TcpStream>) -> bool {
    let front = &shared.front;
    let mut any = false;
    loop {
        let (stream, peer) = match shared.listener.accept() {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return any,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return any;
            }
        };
        any = true;
        if shared.total_load() >= front.max_connections {
            tracing::warn!(
                limit = front.max_connections,
                "connection limit reached; closing new connection"
            );
            let _ = closer.send(stream);
            continue;
        }
        if let Err(e) = stream.set_nonblocking(true) {
            tracing::error!(error = %e, "cannot make a connection non-blocking");
            let _ = closer.send(stream);
            continue;
        }
        let _ = stream.set_nodelay(true);
        // Counted before the hand-off: the loop may serve and close it (and uncount it) at once.
        let to = least_loaded(&shared.loops);
        shared.loops[to].load.fetch_add(1, Ordering::Relaxed);
        let kept = match to {
            0 => Err((stream, peer)),
            _ => shared.loops[to]
                .inbox
                .hand((stream, peer))
                .inspect_err(|_| {
                    // That loop retired meanwhile: this one (loop 0) keeps it.
                    shared.loops[to].load.fetch_sub(1, Ordering::Relaxed);
                    shared.loops[0].load.fetch_add(1, Ordering::Relaxed);
                }),
        };
        if let Err((stream, peer)) = kept {
            conns.push(Conn::accepted(stream, peer, front, 0));
        }
    }
}

fn closed(conn: Conn, why: Drive, closer: &Sender<TcpStream>) {
    let peer = conn.peer;
    match why {
        Drive::Failed(e) => {
            tracing::warn!(?peer, client = ?conn.state.client(), error = %e, "connection closed")
        }
        _ => tracing::debug!(?peer, "disconnected"),
    }
    let _ = closer.send(conn.stream);
}

/// Drops peers stalled past the frame timeout and lets idle connections give buffers back.
fn tick(conns: &mut Vec<Conn>, front: &FrontEnd, now: Instant, closer: &Sender<TcpStream>) {
    let mut i = 0;
    while i < conns.len() {
        match conns[i].state.on_tick(now, front.frame_timeout) {
            Ok(()) => i += 1,
            Err(e) => closed(conns.swap_remove(i), Drive::Failed(e.into()), closer),
        }
    }
}

/// Writes what is owed, answers what is buffered, reads what arrived, until nothing moves or the
/// connection had its share of this pass. Reading stops while replies back up (TCP backpressure:
/// the peer must take what we owe it first).
fn drive(c: &mut Conn) -> Drive {
    let mut moved = false;
    for _ in 0..READS_PER_PASS {
        let mut step = false;
        while !c.state.output().is_empty() {
            match c.stream.write(c.state.output()) {
                // Hermit reports a full send buffer as a zero-length write.
                Ok(0) => break,
                Ok(n) => {
                    c.state.output_sent(n, Instant::now());
                    step = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Drive::Failed(e.into()),
            }
        }
        match c.state.process() {
            Ok(answered) => step |= answered,
            Err(e) => return Drive::Failed(e.into()),
        }
        if c.state.is_done() {
            return Drive::Closed;
        }
        if c.state.wants_input() {
            match c.stream.read(c.state.input_buffer()) {
                Ok(0) => {
                    return match c.state.input_closed() {
                        Ok(()) => Drive::Closed,
                        Err(e) => Drive::Failed(e.into()),
                    }
                }
                Ok(n) => {
                    c.state.input_received(n, Instant::now());
                    step = true;
                    if let Err(e) = c.state.process() {
                        return Drive::Failed(e.into());
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
    Drive::Open(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loops(loads: &[usize]) -> Vec<Loop> {
        loads
            .iter()
            .map(|&n| {
                let l = Loop::new().unwrap();
                l.load.store(n, Ordering::Relaxed);
                l
            })
            .collect()
    }

    #[test]
    fn connections_go_to_the_least_loaded_live_loop() {
        let l = loops(&[3, 1, 1, 2]);
        assert_eq!(least_loaded(&l), 1, "fewest, lowest index among equals");
        drop(l[1].inbox.retire());
        assert_eq!(least_loaded(&l), 2);
        drop(l[2].inbox.retire());
        drop(l[3].inbox.retire());
        assert_eq!(
            least_loaded(&l),
            0,
            "loop 0 takes them all when the others are gone"
        );
    }

    #[test]
    fn a_loop_that_panics_is_retired_and_its_inbox_closed() {
        let l = loops(&[0, 0]);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let (server_side, peer) = listener.accept().unwrap();
        l[1].inbox.hand((server_side, peer)).unwrap();
        std::thread::scope(|s| {
            let dead = &l[1];
            let r = s
                .spawn(move || {
                    let _retire = RetireOnPanic(dead);
                    panic!("a bug in a loop");
                })
                .join();
            assert!(r.is_err());
        });
        assert!(l[1].inbox.is_retired());
        assert!(l[1].inbox.take().is_empty());
        assert!(
            l[1].inbox
                .hand((client.try_clone().unwrap(), peer))
                .is_err(),
            "a retired loop is handed nothing"
        );
        assert_eq!(least_loaded(&l), 0);
        // The handed connection was closed, not left waiting.
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!((&client).read(&mut [0u8; 1]).unwrap(), 0);
    }
}
