//! One client connection's protocol state machine, sans-IO: complete frames in, reply frames out.
//!
//! The TCP front end (host mode and Hermit alike) reads bytes into a [`crate::framing::FrameBuffer`],
//! passes each frame to [`Session::handle_frame`], and writes whatever it appended to the output.
//! Errors in one request become an error reply for that request id; only an unusable stream (bad
//! magic or version, a reply where a request belongs) ends the connection.

use crate::auth::Authenticator;
use crate::channel::SecureChannel;
use crate::codec::{self, Scratch};
use crate::framing::ReplyBuffer;
use crate::store::{Fetched, GetMode, Store};
use crate::NetCounters;
use protocol::noise::{MSG2_LEN, MSG2_PAYLOAD_LEN};
use protocol::MAX_PAGE_DATA;
use protocol::{
    flags, BatchIter, BatchWriter, Encoding, Header, HelloReply, Opcode, Page, PageKey, Reply,
    Request, StatsView, Status, WireError, HEADER_LEN, MAX_BATCH, MAX_PAYLOAD, PAGE_SIZE,
    STAT_COUNT, VERSION,
};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Why a connection must be closed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The byte stream cannot be decoded further.
    #[error("unusable stream: {0}")]
    Wire(#[from] WireError),
    /// The peer sent a reply frame.
    #[error("peer sent a reply where a request was expected")]
    UnexpectedReply,
}

/// Per-connection state.
pub struct Session {
    store: Arc<Store>,
    net: Arc<NetCounters>,
    auth: Arc<Authenticator>,
    peer: Option<SocketAddr>,
    client: Option<u64>,
    /// HELLO was refused for bad credentials: answer nothing more, close once the reply is out.
    refused: bool,
    /// An authenticated session's channel, until the connection takes it (right after HELLO).
    established: Option<SecureChannel>,
    /// Noise message 2 of our HELLO reply.
    msg2: [u8; MSG2_LEN],
    scratch: Box<Scratch>,
    page: Box<[u8; MAX_PAGE_DATA]>,
    raw: Box<[u8; PAGE_SIZE]>,
}

impl Session {
    /// A session that has not said HELLO yet; `peer` names it in log lines.
    pub fn new(
        store: Arc<Store>,
        net: Arc<NetCounters>,
        auth: Arc<Authenticator>,
        peer: Option<SocketAddr>,
    ) -> Session {
        Session {
            store,
            net,
            auth,
            peer,
            client: None,
            refused: false,
            established: None,
            msg2: [0; MSG2_LEN],
            scratch: Box::default(),
            page: Box::new([0; MAX_PAGE_DATA]),
            raw: Box::new([0; PAGE_SIZE]),
        }
    }

    /// The client id from HELLO, once known.
    pub fn client(&self) -> Option<u64> {
        self.client
    }

    /// Whether HELLO was refused for its credentials: the connection ends after the reply.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The secure channel a Noise HELLO just established: from the byte after the HELLO frame
    /// on, the stream is records (taken once, by the connection).
    pub fn take_channel(&mut self) -> Option<SecureChannel> {
        self.established.take()
    }

    /// Handles one complete frame, appending the reply frame to `out`.
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        out: &mut ReplyBuffer,
    ) -> Result<(), SessionError> {
        let header = Header::parse(frame)?;
        if header.is_reply() {
            return Err(SessionError::UnexpectedReply);
        }
        let payload = frame
            .get(HEADER_LEN..header.frame_len())
            .ok_or(WireError::Truncated)?;
        let room = out.room(reply_bound(header.opcode, payload));
        let n = self.dispatch(&header, payload, room);
        out.commit(n);
        Ok(())
    }

    fn dispatch(&mut self, h: &Header, payload: &[u8], out: &mut [u8]) -> usize {
        // Before HELLO nothing but HELLO is even decoded (unknown opcodes included).
        if self.client.is_none() && h.opcode != Opcode::Hello as u8 {
            return emit_error(h, Status::NotAuthenticated, "HELLO first", out);
        }
        let request = match Request::parse(h.opcode, payload) {
            Ok(r) => r,
            Err(e) => {
                self.net.malformed.fetch_add(1, Ordering::Relaxed);
                self.drop_page_of_failed_put(h.opcode, payload);
                return emit_error(h, e.status(), &e.to_string(), out);
            }
        };
        let refused = match (self.client, request) {
            // One identity per connection: a second HELLO cannot switch it.
            (Some(_), Request::Hello(_)) => Status::Malformed,
            (None, Request::Hello(hello)) => {
                return match self.hello(&hello) {
                    Ok(reply) => emit(h, &Reply::Hello(reply), out),
                    Err(status) => emit_error(h, status, "", out),
                };
            }
            (None, _) => Status::NotAuthenticated,
            (Some(_), Request::Batch(batch)) => {
                return self.batch(h, batch, out).unwrap_or_else(|status| {
                    emit_error(h, status, "batch reply does not fit", out)
                });
            }
            (Some(_), Request::Stats) => {
                let mut values = self.store.stats();
                self.net.fill(&mut values);
                let mut scratch = [0u8; STAT_COUNT * 8];
                return match StatsView::encode(&values, &mut scratch) {
                    Ok(view) => emit(h, &Reply::Stats(view), out),
                    Err(e) => emit_error(h, e.status(), "stats do not fit", out),
                };
            }
            (Some(client), req) => {
                let flags = h.flags;
                let reply = self.page_op(client, req, flags);
                return emit(h, &reply, out);
            }
        };
        emit_error(h, refused, "", out)
    }

    fn hello(&mut self, hello: &protocol::Hello<'_>) -> Result<HelloReply<'_>, Status> {
        let v = VERSION as u16;
        if hello.min_version > v || hello.max_version < v {
            return Err(Status::UnsupportedVersion);
        }
        let client = ClientId(hello.client_id);
        let mut limits = [0u8; MSG2_PAYLOAD_LEN];
        limits[0..2].copy_from_slice(&v.to_le_bytes());
        limits[2..4].copy_from_slice(&(MAX_BATCH as u16).to_le_bytes());
        limits[4..8].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
        let authenticated = match self.auth.hello(hello, &limits) {
            Ok(Some(established)) => {
                self.msg2 = established.msg2;
                self.established = Some(SecureChannel::new(established.transport));
                self.net.handshakes.fetch_add(1, Ordering::Relaxed);
                true
            }
            Ok(None) => false,
            Err(e) => {
                self.net.auth_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(peer = ?self.peer, %client, reason = %e, "HELLO refused");
                self.refused = true;
                return Err(Status::NotAuthenticated);
            }
        };
        self.client = Some(hello.client_id);
        let cipher = protocol::noise::Cipher::from_auth_method(hello.auth_method)
            .filter(|_| authenticated)
            .map_or("none", |c| c.name());
        tracing::info!(peer = ?self.peer, %client, authenticated, cipher, "hello");
        let mut nonce = [0u8; protocol::HELLO_NONCE_LEN];
        if let Err(e) = getrandom::fill(&mut nonce) {
            // No method depends on it; the reply goes out with zeros.
            tracing::warn!(error = %e, "no randomness for the HELLO nonce");
        }
        Ok(HelloReply {
            version: v,
            max_batch: MAX_BATCH as u16,
            max_payload: MAX_PAYLOAD as u32,
            nonce,
            auth: if authenticated { &self.msg2 } else { &[] },
        })
    }

    fn batch(&mut self, h: &Header, batch: BatchIter<'_>, out: &mut [u8]) -> Result<usize, Status> {
        let client = self.client.ok_or(Status::NotAuthenticated)?;
        let mut w = BatchWriter::new(out).map_err(|e| e.status())?;
        for entry in batch {
            let reply = match entry.request() {
                Ok(req) => self.page_op(client, req, entry.flags | (h.flags & flags::ACCEPT_LZ4)),
                Err(e) => {
                    self.net.malformed.fetch_add(1, Ordering::Relaxed);
                    self.drop_page_of_failed_put(entry.opcode, entry.body);
                    Reply::Error {
                        status: e.status(),
                        message: b"",
                    }
                }
            };
            w.push_reply(entry.opcode, &reply).map_err(|e| e.status())?;
        }
        w.finish_reply(h.request_id).map_err(|e| e.status())
    }

    /// Executes one page operation (single or batched) and returns its reply.
    fn page_op<'s>(&'s mut self, client: u64, req: Request<'_>, flags: u16) -> Reply<'s> {
        let result = match req {
            Request::NewPool(p) if !p.page_size_supported() => Err(Status::Malformed),
            Request::NewPool(p) => self
                .store
                .new_pool(client, p.kind)
                .map(|pool| Reply::NewPool { pool }),
            Request::DestroyPool { pool } => {
                self.store.destroy_pool(client, pool).map(|()| Reply::Done)
            }
            Request::Put { key, page } => {
                let threshold = self.store.config().raw_threshold;
                match codec::ingest(&page, &mut self.scratch, threshold) {
                    Ok(stored) => self
                        .store
                        .put(client, key, stored, page.crc)
                        .map(|()| Reply::Done),
                    Err(e) => {
                        // The put failed: the page it meant to replace must not be read back.
                        let _ = self.store.flush_page(client, key);
                        let counter = match e {
                            codec::CodecError::BadChecksum => &self.net.checksum_errors,
                            codec::CodecError::Corrupt => &self.net.corrupt_pages,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                        Err(e.into())
                    }
                }
            }
            Request::Get { key } => {
                let mode = GetMode {
                    and_free: flags & flags::GET_AND_FREE != 0,
                    keep: flags & flags::GET_KEEP != 0,
                };
                let accept_lz4 = flags & flags::ACCEPT_LZ4 != 0;
                return match self.store.get(client, key, mode, &mut self.page) {
                    Ok((fetched, crc)) => {
                        Self::page_reply(fetched, crc, accept_lz4, &self.page, &mut self.raw)
                    }
                    Err(status) => Reply::Error {
                        status,
                        message: b"",
                    },
                };
            }
            Request::FlushPage { key } => self.store.flush_page(client, key).map(|_| Reply::Done),
            Request::FlushObject(f) => self
                .store
                .flush_object(client, f.pool, f.object)
                .map(|pages| Reply::Flushed { pages }),
            Request::Hello(_) | Request::Stats | Request::Batch(_) => Err(Status::Malformed),
        };
        result.unwrap_or_else(|status| Reply::Error {
            status,
            message: b"",
        })
    }

    /// A PUT_PAGE that could not be decoded still names its key when the key itself is whole:
    /// the old page under it is removed, so a failed put never leaves a stale page behind.
    fn drop_page_of_failed_put(&self, opcode: u8, payload: &[u8]) {
        if let (Some(client), Some(Opcode::PutPage)) = (self.client, Opcode::from_u8(opcode)) {
            if let Ok(key) = PageKey::parse_prefix(payload) {
                let _ = self.store.flush_page(client, key);
            }
        }
    }

    fn page_reply<'s>(
        fetched: Fetched,
        crc: u32,
        accept_lz4: bool,
        page: &'s [u8; MAX_PAGE_DATA],
        raw: &'s mut [u8; PAGE_SIZE],
    ) -> Reply<'s> {
        match fetched {
            Fetched::Fill(word) => {
                let data: &'s mut [u8] = &mut raw[..8];
                data.copy_from_slice(&word.to_le_bytes());
                Reply::Page(Page {
                    encoding: Encoding::Fill,
                    crc,
                    data,
                })
            }
            Fetched::Lz4(len) if accept_lz4 => Reply::Page(Page {
                encoding: Encoding::Lz4,
                crc,
                data: &page[..len],
            }),
            Fetched::Lz4(len) => match codec::decode_lz4(&page[..len], raw) {
                Ok(()) => Reply::Page(Page {
                    encoding: Encoding::Raw,
                    crc,
                    data: &raw[..],
                }),
                Err(_) => Reply::Error {
                    status: Status::Internal,
                    message: b"stored page corrupt",
                },
            },
            Fetched::Raw => Reply::Page(Page {
                encoding: Encoding::Raw,
                crc,
                data: &page[..PAGE_SIZE],
            }),
            Fetched::Sealed(len) => Reply::Page(Page {
                encoding: Encoding::Sealed,
                crc,
                data: &page[..len],
            }),
        }
    }
}

/// A client id in log lines (hex, as operators write it in keys files).
struct ClientId(u64);

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// Upper bound of the reply to a request, so the output buffer is sized before encoding.
fn reply_bound(opcode: u8, payload: &[u8]) -> usize {
    // The largest page a reply carries: a sealed page (4,096 + its tag), not just 4 KiB.
    const ONE_PAGE: usize = protocol::PAGE_HEADER_LEN + protocol::MAX_PAGE_DATA;
    const ERROR_ROOM: usize = protocol::MAX_ERROR_MESSAGE;
    let body = match Opcode::from_u8(opcode) {
        Some(Opcode::Batch) => {
            let count = BatchIter::parse(payload).map(|b| b.len()).unwrap_or(0);
            4 + count * (protocol::BATCH_ENTRY_HEADER_LEN + ONE_PAGE)
        }
        Some(Opcode::Stats) => 4 + STAT_COUNT * 8,
        _ => ONE_PAGE,
    };
    HEADER_LEN + body.max(ERROR_ROOM)
}

fn emit(h: &Header, reply: &Reply<'_>, out: &mut [u8]) -> usize {
    reply.emit(h.opcode, h.request_id, out).unwrap_or_else(|e| {
        tracing::error!(error = %e, "reply does not fit its buffer");
        emit_error(h, Status::Internal, "reply too large", out)
    })
}

fn emit_error(h: &Header, status: Status, message: &str, out: &mut [u8]) -> usize {
    let reply = Reply::Error {
        status,
        message: message.as_bytes(),
    };
    reply.emit(h.opcode, h.request_id, out).unwrap_or(0)
}
