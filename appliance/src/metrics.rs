//! `--metrics-listen ADDR`: the appliance's counters over plain HTTP in Prometheus text format, so
//! operators can scrape and graph it with the tools they already run. One short-lived request per
//! connection, served in turn on one thread, with timeouts: a slow scraper cannot pile up work.

use crate::store::Store;
use crate::NetCounters;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

/// Most bytes of an HTTP request we read.
const MAX_REQUEST: usize = 8 * 1024;

/// Binds `addr` and serves `/metrics` on a background thread; returns the bound address.
pub fn spawn(
    addr: impl ToSocketAddrs,
    store: Arc<Store>,
    net: Arc<NetCounters>,
) -> io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let local = listener.local_addr()?;
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                if let Err(e) = answer(stream, &store, &net) {
                    tracing::debug!(error = %e, "metrics request failed");
                }
            }
        })?;
    Ok(local)
}

fn answer(mut stream: TcpStream, store: &Store, net: &NetCounters) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(2)))?;
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < MAX_REQUEST {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let (status, body) = if line.starts_with(b"GET /metrics ") || line.starts_with(b"GET / ") {
        let mut values = store.stats();
        net.fill(&mut values);
        let mut body = String::new();
        let target = stream
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        // Writing into a String cannot fail.
        let _ = protocol::write_prometheus(&mut body, &target, values.into_iter());
        ("200 OK", body)
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    write!(
        stream,
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}
