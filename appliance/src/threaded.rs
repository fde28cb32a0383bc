//! The thread-per-connection front end (default on Linux): blocking std sockets, one thread each,
//! every core used. A thin shell: all protocol and connection rules are in [`Connection`].
//!
//! Memory per connection is bounded by the connection core; backpressure is TCP's own (a client
//! that does not read its replies blocks our write, which stops us reading its requests). Reads
//! wake every [`IDLE_TICK`] to notice shutdown, stalled peers and idleness.

use crate::connection::Connection;
use crate::front::FrontEnd;
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Stack of a connection thread: sessions keep their buffers on the heap.
const CONNECTION_STACK: usize = 256 * 1024;

/// How often a blocked read wakes up to check for shutdown, stalled frames and idleness.
const IDLE_TICK: Duration = Duration::from_secs(1);

/// Accepts and serves until shut down; waits for connection threads to end.
pub(crate) fn run(listener: TcpListener, front: Arc<FrontEnd>) -> io::Result<()> {
    let mut workers: Vec<JoinHandle<()>> = Vec::new();
    for incoming in listener.incoming() {
        if front.shutdown.is_stopping() {
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
        if workers.len() >= front.max_connections {
            tracing::warn!(
                limit = front.max_connections,
                "connection limit reached; closing new connection"
            );
            continue;
        }
        match spawn(stream, front.clone()) {
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

fn spawn(stream: TcpStream, front: Arc<FrontEnd>) -> io::Result<JoinHandle<()>> {
    let registered = front.shutdown.register(&stream)?;
    let peer = stream.peer_addr().ok();
    // Made here, not in the thread, so the connection counts as open as soon as it is accepted.
    let mut conn = front.connection(peer, Instant::now());
    std::thread::Builder::new()
        .name(format!("conn-{registered}"))
        .stack_size(CONNECTION_STACK)
        .spawn(move || {
            tracing::debug!(?peer, "connected");
            match serve(stream, &mut conn, &front) {
                Ok(()) => tracing::debug!(?peer, "disconnected"),
                Err(e) => {
                    tracing::warn!(?peer, client = ?conn.client(), error = %e, "connection closed")
                }
            }
            front.shutdown.unregister(registered);
        })
}

fn serve(mut stream: TcpStream, conn: &mut Connection, front: &FrontEnd) -> anyhow::Result<()> {
    stream.set_nodelay(true)?;
    // Not every platform supports socket timeouts; without them a stalled peer only costs a thread.
    let _ = stream.set_read_timeout(Some(IDLE_TICK.min(front.frame_timeout)));
    let _ = stream.set_write_timeout(Some(front.frame_timeout));
    loop {
        // Answer what is buffered, then write it all before reading more.
        conn.process()?;
        if conn.is_done() {
            return Ok(());
        }
        let out = conn.output();
        if !out.is_empty() {
            let n = out.len();
            stream.write_all(out)?;
            conn.output_sent(n, Instant::now());
            continue;
        }
        match stream.read(conn.input_buffer()) {
            Ok(0) => return Ok(conn.input_closed()?),
            Ok(n) => conn.input_received(n, Instant::now()),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if front.shutdown.is_stopping() {
                    return Ok(());
                }
                conn.on_tick(Instant::now(), front.frame_timeout)?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
}
