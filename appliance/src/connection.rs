//! One client connection, sans-IO: bytes from the socket in, bytes for the socket out.
//!
//! Everything a connection does apart from moving bytes lives here, once, for every front end
//! ([`crate::threaded`] and [`crate::event_loop`] are thin socket shells around it, as quinn drives
//! quinn-proto): reassembling frames ([`FrameBuffer`]), running them through the protocol state
//! machine ([`Session`]), collecting replies ([`ReplyBuffer`]), after an authenticated HELLO the
//! record layer ([`SecureChannel`]: every byte both ways sealed), and the rules that decide when a
//! connection must end (a frame cut off by the peer, a stream that cannot be decoded, a record
//! that fails to open, refused credentials, a peer that stalls), with the counters that go with
//! them. Time is an input (`now`), never read here.
//!
//! The shells call, in any order that suits their I/O model:
//! [`Connection::input_buffer`] + [`Connection::input_received`] when bytes arrived,
//! [`Connection::input_closed`] on end of stream, [`Connection::process`] to answer what is
//! buffered, [`Connection::output`] + [`Connection::output_sent`] to write replies,
//! [`Connection::is_done`] to know when to close, and [`Connection::on_tick`] every so often.

use crate::auth::Authenticator;
use crate::channel::{ChannelError, SecureChannel};
use crate::framing::{FrameBuffer, ReplyBuffer};
use crate::session::{Session, SessionError};
use crate::store::Store;
use crate::NetCounters;
use protocol::WireError;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Replies pending beyond this stop [`Connection::process`] (and reading): the peer must take what
/// it is owed first, so replies to a burst of small GETs cannot grow without bound.
pub const OUT_FLUSH: usize = 256 * 1024;

/// An idle connection gives buffers grown for large batches back after this long.
const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The byte stream cannot be decoded further (bad magic, version, length).
    #[error("unusable stream: {0}")]
    Wire(#[from] WireError),
    /// The session refused to go on (e.g. the peer sent a reply frame).
    #[error(transparent)]
    Session(#[from] SessionError),
    /// A record failed to open, or had an impossible length: the stream was tampered with.
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The peer closed its side in the middle of a frame; the partial frame is discarded.
    #[error("peer disconnected mid-frame")]
    ClosedMidFrame,
    /// The peer left a frame unfinished, or our replies unread, for too long.
    #[error("peer stalled mid-frame for {0:?}")]
    Stalled(Duration),
}

/// The record layer once a Noise HELLO succeeded, with the sealed bytes waiting to go out.
struct Secure {
    channel: SecureChannel,
    wire: ReplyBuffer,
}

/// A client connection's state: frames in, session, replies out.
pub struct Connection {
    session: Session,
    frames: FrameBuffer,
    /// Plaintext replies (sealed into `secure.wire` when the connection is secure).
    out: ReplyBuffer,
    secure: Option<Secure>,
    net: Arc<NetCounters>,
    last_progress: Instant,
}

impl Connection {
    /// A fresh connection from `peer`, counted as open until dropped.
    pub fn new(
        store: Arc<Store>,
        net: Arc<NetCounters>,
        auth: Arc<Authenticator>,
        peer: Option<SocketAddr>,
        now: Instant,
    ) -> Connection {
        net.connections.fetch_add(1, Ordering::Relaxed);
        net.connections_total.fetch_add(1, Ordering::Relaxed);
        Connection {
            session: Session::new(store, net.clone(), auth, peer),
            frames: FrameBuffer::default(),
            out: ReplyBuffer::default(),
            secure: None,
            net,
            last_progress: now,
        }
    }

    /// The client id the peer said HELLO as, once known (for logs).
    pub fn client(&self) -> Option<u64> {
        self.session.client()
    }

    /// Whether every byte since HELLO travels sealed.
    pub fn is_secure(&self) -> bool {
        self.secure.is_some()
    }

    /// Where the next bytes from the socket go (never empty while [`Connection::wants_input`]).
    pub fn input_buffer(&mut self) -> &mut [u8] {
        match &mut self.secure {
            Some(s) => s.channel.input_buffer(),
            None => self.frames.spare(),
        }
    }

    /// `n` bytes were read into [`Connection::input_buffer`].
    pub fn input_received(&mut self, n: usize, now: Instant) {
        match &mut self.secure {
            Some(s) => s.channel.input_received(n),
            None => self.frames.commit(n),
        }
        self.net.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        self.last_progress = now;
    }

    /// The peer closed its side: fine between frames, an error inside one.
    pub fn input_closed(&self) -> Result<(), ConnectionError> {
        if self.has_partial_input() {
            return Err(ConnectionError::ClosedMidFrame);
        }
        Ok(())
    }

    fn has_partial_input(&self) -> bool {
        self.frames.has_partial()
            || self
                .secure
                .as_ref()
                .is_some_and(|s| s.channel.has_partial())
    }

    /// Answers the complete frames buffered so far (opening records as needed), while fewer than
    /// [`OUT_FLUSH`] reply bytes are pending. Returns whether it answered any. An error means the
    /// connection must close.
    pub fn process(&mut self) -> Result<bool, ConnectionError> {
        let mut any = false;
        loop {
            while !self.session.refused() && self.pending_output() < OUT_FLUSH {
                let frame = match self.frames.next_frame() {
                    Ok(Some(frame)) => frame,
                    Ok(None) => break,
                    Err(e) => return Err(self.malformed(e.into())),
                };
                if let Err(e) = self.session.handle_frame(frame, &mut self.out) {
                    return Err(self.malformed(e.into()));
                }
                any = true;
                if let Some(channel) = self.session.take_channel() {
                    self.go_secure(channel);
                }
            }
            let Some(s) = &mut self.secure else {
                return Ok(any);
            };
            if !self.out.pending().is_empty() {
                s.channel.seal(self.out.pending(), &mut s.wire)?;
                self.out.clear();
            }
            // Open the next record only when no whole frame waits (bounds the frame buffer).
            let room = s.wire.pending().len() < OUT_FLUSH && !self.session.refused();
            if !room || self.frames.has_frame() || !s.channel.has_record() {
                return Ok(any);
            }
            let len = s.channel.next_plaintext_len();
            if let Err(e) = s
                .channel
                .open_next(self.frames.reserve(len))
                .map(|n| self.frames.commit(n))
            {
                if e == ChannelError::Decrypt {
                    self.net.aead_failures.fetch_add(1, Ordering::Relaxed);
                }
                return Err(self.malformed(e.into()));
            }
        }
    }

    /// From the byte after the HELLO frame on, both directions are records: replies queued so
    /// far (the HELLO reply) go out as they are, bytes already read after HELLO are ciphertext.
    fn go_secure(&mut self, mut channel: SecureChannel) {
        let mut wire = ReplyBuffer::default();
        let clear = self.out.pending();
        wire.room(clear.len())[..clear.len()].copy_from_slice(clear);
        wire.commit(clear.len());
        self.out.clear();
        channel.push_early(&self.frames.take_pending());
        self.secure = Some(Secure { channel, wire });
    }

    fn pending_output(&self) -> usize {
        self.out.pending().len() + self.secure.as_ref().map_or(0, |s| s.wire.pending().len())
    }

    /// Whether the shell should read more: our replies are not backed up, no whole record waits,
    /// and the connection is not ending.
    pub fn wants_input(&self) -> bool {
        !self.session.refused()
            && self.pending_output() < OUT_FLUSH
            && !self.secure.as_ref().is_some_and(|s| s.channel.has_record())
    }

    /// Whether the connection is over (credentials refused and the refusal sent): close it.
    pub fn is_done(&self) -> bool {
        self.session.refused() && self.output().is_empty()
    }

    /// Bytes waiting to be written.
    pub fn output(&self) -> &[u8] {
        match &self.secure {
            Some(s) => s.wire.pending(),
            None => self.out.pending(),
        }
    }

    /// The first `n` bytes of [`Connection::output`] were written.
    pub fn output_sent(&mut self, n: usize, now: Instant) {
        match &mut self.secure {
            Some(s) => s.wire.advance(n),
            None => self.out.advance(n),
        }
        self.net.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
        self.last_progress = now;
    }

    /// Periodic check: ends a connection stalled past `frame_timeout` (a partial frame or record
    /// buffered, or replies the peer does not read), and gives an idle connection's buffers back.
    pub fn on_tick(
        &mut self,
        now: Instant,
        frame_timeout: Duration,
    ) -> Result<(), ConnectionError> {
        let idle = now.saturating_duration_since(self.last_progress);
        let waiting = self.has_partial_input() || !self.output().is_empty();
        if waiting && idle >= frame_timeout {
            return Err(self.malformed(ConnectionError::Stalled(frame_timeout)));
        }
        if !waiting && idle >= SHRINK_AFTER {
            self.frames.shrink_if_idle();
            self.out.shrink_if_idle();
            if let Some(s) = &mut self.secure {
                s.channel.shrink_if_idle();
                s.wire.shrink_if_idle();
            }
        }
        Ok(())
    }

    /// Counts a connection ended for bad input.
    fn malformed(&self, e: ConnectionError) -> ConnectionError {
        self.net.malformed.fetch_add(1, Ordering::Relaxed);
        e
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.net.connections.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreConfig;
    use protocol::{Header, Hello, Request, Status, HEADER_LEN};

    fn connection() -> (Connection, Arc<NetCounters>) {
        let store = Arc::new(Store::new(StoreConfig {
            memory_limit: 8 << 20,
            client_quota: None,
            raw_threshold: crate::codec::DEFAULT_RAW_THRESHOLD,
        }));
        let net = Arc::new(NetCounters::default());
        let auth = Arc::new(Authenticator::new(crate::auth::AuthConfig::insecure()));
        (
            Connection::new(store, net.clone(), auth, None, Instant::now()),
            net,
        )
    }

    fn feed(c: &mut Connection, bytes: &[u8], now: Instant) {
        let mut fed = 0;
        while fed < bytes.len() {
            let spare = c.input_buffer();
            let n = spare.len().min(bytes.len() - fed);
            spare[..n].copy_from_slice(&bytes[fed..fed + n]);
            c.input_received(n, now);
            fed += n;
        }
    }

    fn frame(req: &Request<'_>, id: u64) -> Vec<u8> {
        let mut buf = vec![0u8; 512];
        let n = req.emit(id, 0, &mut buf).unwrap();
        buf.truncate(n);
        buf
    }

    #[test]
    fn answers_frames_and_counts_bytes_and_connections() {
        let (mut c, net) = connection();
        assert_eq!(net.connections.load(Ordering::Relaxed), 1);
        let mut bytes = frame(&Request::Hello(Hello::new(7)), 1);
        bytes.extend(frame(&Request::Stats, 2));
        let now = Instant::now();
        feed(&mut c, &bytes, now);
        assert!(c.process().unwrap());
        let out = c.output().to_vec();
        let first = Header::parse(&out).unwrap();
        assert_eq!((first.request_id, first.status), (1, Status::Ok as u16));
        let second = Header::parse(&out[first.frame_len()..]).unwrap();
        assert_eq!(second.request_id, 2);
        c.output_sent(out.len(), now);
        assert!(c.output().is_empty());
        assert_eq!(net.bytes_in.load(Ordering::Relaxed), bytes.len() as u64);
        assert_eq!(net.bytes_out.load(Ordering::Relaxed), out.len() as u64);
        assert_eq!(c.client(), Some(7));
        drop(c);
        assert_eq!(net.connections.load(Ordering::Relaxed), 0);
        assert_eq!(net.connections_total.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn end_of_stream_inside_a_frame_is_an_error_between_frames_not() {
        let (mut c, _) = connection();
        let bytes = frame(&Request::Hello(Hello::new(7)), 1);
        feed(&mut c, &bytes[..HEADER_LEN + 3], Instant::now());
        c.process().unwrap();
        assert!(matches!(
            c.input_closed(),
            Err(ConnectionError::ClosedMidFrame)
        ));
        feed(&mut c, &bytes[HEADER_LEN + 3..], Instant::now());
        c.process().unwrap();
        assert!(c.input_closed().is_ok());
    }

    #[test]
    fn garbage_and_reply_frames_end_the_connection_and_count_as_malformed() {
        let (mut c, net) = connection();
        feed(&mut c, b"GET / HTTP/1.0\r\n", Instant::now());
        assert!(matches!(c.process(), Err(ConnectionError::Wire(_))));
        assert_eq!(net.malformed.load(Ordering::Relaxed), 1);

        let (mut c, net) = connection();
        let mut bytes = frame(&Request::Stats, 1);
        bytes[6] |= protocol::flags::REPLY as u8;
        feed(&mut c, &bytes, Instant::now());
        assert!(matches!(c.process(), Err(ConnectionError::Session(_))));
        assert_eq!(net.malformed.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_stalled_partial_frame_ends_the_connection_after_the_timeout_only() {
        let (mut c, net) = connection();
        let t0 = Instant::now();
        let bytes = frame(&Request::Hello(Hello::new(7)), 1);
        feed(&mut c, &bytes[..5], t0);
        let timeout = Duration::from_secs(2);
        assert!(c.on_tick(t0 + Duration::from_millis(1999), timeout).is_ok());
        assert!(matches!(
            c.on_tick(t0 + timeout, timeout),
            Err(ConnectionError::Stalled(_))
        ));
        assert_eq!(net.malformed.load(Ordering::Relaxed), 1);
        // An idle connection (nothing partial, nothing owed) is never stalled.
        let (mut idle, _) = connection();
        assert!(idle.on_tick(t0 + 100 * timeout, timeout).is_ok());
    }

    #[test]
    fn replies_back_up_to_the_flush_limit_then_processing_waits() {
        let (mut c, _) = connection();
        let mut bytes = frame(&Request::Hello(Hello::new(7)), 1);
        // STATS replies are small; enough of them exceed OUT_FLUSH.
        let one = frame(&Request::Stats, 2);
        let reply_len = {
            let mut probe = connection().0;
            feed(&mut probe, &bytes, Instant::now());
            feed(&mut probe, &one, Instant::now());
            probe.process().unwrap();
            let out = probe.output();
            let h = Header::parse(out).unwrap();
            Header::parse(&out[h.frame_len()..]).unwrap().frame_len()
        };
        let count = OUT_FLUSH / reply_len + 10;
        for _ in 0..count {
            bytes.extend_from_slice(&one);
        }
        feed(&mut c, &bytes, Instant::now());
        assert!(c.process().unwrap());
        assert!(!c.wants_input());
        let backed_up = c.output().len();
        assert!(backed_up >= OUT_FLUSH && backed_up < OUT_FLUSH + 2 * reply_len);
        // Nothing more is answered until the peer takes its replies.
        assert!(!c.process().unwrap());
        c.output_sent(backed_up, Instant::now());
        assert!(c.process().unwrap());
        assert!(c.wants_input());
    }
}
