//! Requests and replies: high-level representations that `parse` from and `emit` into frames.
//!
//! ```text
//! HELLO         min_ver u16 | max_ver u16 | auth_method u8 | rsvd u8 | auth_len u16 | client_id u64 | auth[auth_len]
//!   reply       version u16 | max_batch u16 | max_payload u32 | nonce[16] [| auth_len u16 | auth[auth_len]]
//! NEW_POOL      kind u8 (0 ephemeral, 1 persistent) | rsvd u8 | rsvd u16 | page_size u32
//!   reply       pool u32
//! DESTROY_POOL  pool u32                             reply: empty
//! PUT_PAGE      key | page                           reply: empty
//! GET_PAGE      key (flag GET_AND_FREE)              reply: page  (NOT_FOUND: empty)
//! FLUSH_PAGE    key                                  reply: empty
//! FLUSH_OBJECT  pool u32 | rsvd u32 | object 3 x u64 reply: pages_flushed u32
//! STATS         empty                                reply: see stats.rs
//! BATCH         see batch.rs
//! any error     reply: a short UTF-8 message (may be empty)
//! ```

use crate::batch::BatchIter;
use crate::cursor::{Reader, Writer};
use crate::stats::StatsView;
use crate::{
    flags, Header, Opcode, Page, PageKey, Status, WireError, HEADER_LEN, PAGE_SIZE, VERSION,
};

/// Most bytes of authentication material in HELLO.
pub const AUTH_MAX: usize = 64;

/// Bytes of the appliance's HELLO nonce (fresh random bytes; no method uses them yet).
pub const HELLO_NONCE_LEN: usize = 16;

/// `auth_method` 0: no authentication (accepted only by an appliance run with `--insecure`).
pub const AUTH_NONE: u8 = 0;
/// `auth_method` 1: Noise_NNpsk0 with the client's pre-shared key (see [`crate::noise`]); `auth` is
/// message 1, the reply's `auth` message 2, and every byte after the HELLO reply is a record.
pub const AUTH_NOISE: u8 = 1;
/// `auth_method` 2: the same handshake and record layer with AES-256-GCM in place of
/// ChaCha20-Poly1305 (`Noise_NNpsk0_25519_AESGCM_BLAKE2s`, see [`crate::noise::Cipher`]): several
/// times cheaper where the CPU has AES instructions.
pub const AUTH_NOISE_AESGCM: u8 = 2;

/// HELLO request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hello<'a> {
    /// Lowest protocol version the client speaks.
    pub min_version: u16,
    /// Highest protocol version the client speaks.
    pub max_version: u16,
    /// Stable identity of the client machine; pools and quotas are per client.
    pub client_id: u64,
    /// [`AUTH_NONE`], [`AUTH_NOISE`] or [`AUTH_NOISE_AESGCM`].
    pub auth_method: u8,
    /// Authentication material for `auth_method` (at most [`AUTH_MAX`] bytes).
    pub auth: &'a [u8],
}

impl<'a> Hello<'a> {
    /// A HELLO for this source's version, without authentication.
    pub fn new(client_id: u64) -> Hello<'static> {
        Hello {
            min_version: VERSION as u16,
            max_version: VERSION as u16,
            client_id,
            auth_method: 0,
            auth: &[],
        }
    }
}

/// HELLO reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HelloReply<'a> {
    /// The version both sides will speak.
    pub version: u16,
    /// Most entries per BATCH this appliance accepts.
    pub max_batch: u16,
    /// Largest payload this appliance accepts.
    pub max_payload: u32,
    /// Fresh random bytes (no method uses them yet; clients ignore them).
    pub nonce: [u8; HELLO_NONCE_LEN],
    /// The appliance's authentication material (Noise message 2); empty for [`AUTH_NONE`], and
    /// then not on the wire at all.
    pub auth: &'a [u8],
}

/// Pool kinds, with tmem's semantics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PoolKind {
    /// Clean page cache (cleancache): pages may be evicted any time; a get removes the page.
    Ephemeral = 0,
    /// Swap (frontswap): pages are kept until flushed; a put is refused when the appliance is full.
    Persistent = 1,
}

/// NEW_POOL request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NewPool {
    /// Ephemeral or persistent.
    pub kind: PoolKind,
    /// Must be [`PAGE_SIZE`].
    pub page_size: u32,
}

impl NewPool {
    /// Whether the requested page size is one this protocol version supports.
    pub fn page_size_supported(&self) -> bool {
        self.page_size as usize == PAGE_SIZE
    }
}

/// FLUSH_OBJECT request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlushObject {
    /// Pool id.
    pub pool: u32,
    /// Object whose pages are all removed.
    pub object: [u64; 3],
}

/// A decoded request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request<'a> {
    /// See [`Opcode::Hello`].
    Hello(Hello<'a>),
    /// See [`Opcode::NewPool`].
    NewPool(NewPool),
    /// See [`Opcode::DestroyPool`].
    DestroyPool {
        /// Pool id.
        pool: u32,
    },
    /// See [`Opcode::PutPage`].
    Put {
        /// Where.
        key: PageKey,
        /// What.
        page: Page<'a>,
    },
    /// See [`Opcode::GetPage`].
    Get {
        /// Where.
        key: PageKey,
    },
    /// See [`Opcode::FlushPage`].
    FlushPage {
        /// Where.
        key: PageKey,
    },
    /// See [`Opcode::FlushObject`].
    FlushObject(FlushObject),
    /// See [`Opcode::Stats`].
    Stats,
    /// See [`Opcode::Batch`]; entries are decoded lazily.
    Batch(BatchIter<'a>),
}

impl<'a> Request<'a> {
    /// The opcode this request travels under.
    pub fn opcode(&self) -> Opcode {
        match self {
            Request::Hello(_) => Opcode::Hello,
            Request::NewPool(_) => Opcode::NewPool,
            Request::DestroyPool { .. } => Opcode::DestroyPool,
            Request::Put { .. } => Opcode::PutPage,
            Request::Get { .. } => Opcode::GetPage,
            Request::FlushPage { .. } => Opcode::FlushPage,
            Request::FlushObject(_) => Opcode::FlushObject,
            Request::Stats => Opcode::Stats,
            Request::Batch(_) => Opcode::Batch,
        }
    }

    /// Decodes the payload of a request with the given opcode.
    pub fn parse(opcode: u8, payload: &'a [u8]) -> Result<Request<'a>, WireError> {
        let op = Opcode::from_u8(opcode).ok_or(WireError::UnknownOpcode(opcode))?;
        let mut r = Reader::new(payload);
        let req = match op {
            Opcode::Hello => {
                let min_version = r.u16()?;
                let max_version = r.u16()?;
                let auth_method = r.u8()?;
                if r.u8()? != 0 {
                    return Err(WireError::Malformed("reserved hello bits set"));
                }
                let auth_len = r.u16()? as usize;
                let client_id = r.u64()?;
                if auth_len > AUTH_MAX {
                    return Err(WireError::Malformed("authentication material too long"));
                }
                let auth = r.bytes(auth_len)?;
                if min_version > max_version {
                    return Err(WireError::Malformed("hello version range is empty"));
                }
                Request::Hello(Hello {
                    min_version,
                    max_version,
                    client_id,
                    auth_method,
                    auth,
                })
            }
            Opcode::NewPool => {
                let kind = match r.u8()? {
                    0 => PoolKind::Ephemeral,
                    1 => PoolKind::Persistent,
                    _ => return Err(WireError::Malformed("unknown pool kind")),
                };
                if r.u8()? != 0 || r.u16()? != 0 {
                    return Err(WireError::Malformed("reserved pool bits set"));
                }
                Request::NewPool(NewPool {
                    kind,
                    page_size: r.u32()?,
                })
            }
            Opcode::DestroyPool => Request::DestroyPool { pool: r.u32()? },
            Opcode::PutPage => {
                let key = PageKey::read(&mut r)?;
                Request::Put {
                    key,
                    page: Page::read(&mut r)?,
                }
            }
            Opcode::GetPage => Request::Get {
                key: PageKey::read(&mut r)?,
            },
            Opcode::FlushPage => Request::FlushPage {
                key: PageKey::read(&mut r)?,
            },
            Opcode::FlushObject => {
                let pool = r.u32()?;
                if r.u32()? != 0 {
                    return Err(WireError::Malformed("reserved flush bits set"));
                }
                Request::FlushObject(FlushObject {
                    pool,
                    object: [r.u64()?, r.u64()?, r.u64()?],
                })
            }
            Opcode::Stats => Request::Stats,
            Opcode::Batch => Request::Batch(BatchIter::parse(r.rest())?),
        };
        r.finish()?;
        Ok(req)
    }

    /// Encodes the payload (not the header) into `w`.
    pub(crate) fn write_body(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            Request::Hello(h) => {
                if h.auth.len() > AUTH_MAX {
                    return Err(WireError::Malformed("authentication material too long"));
                }
                w.u16(h.min_version)?;
                w.u16(h.max_version)?;
                w.u8(h.auth_method)?;
                w.u8(0)?;
                w.u16(h.auth.len() as u16)?;
                w.u64(h.client_id)?;
                w.bytes(h.auth)
            }
            Request::NewPool(p) => {
                w.u8(p.kind as u8)?;
                w.u8(0)?;
                w.u16(0)?;
                w.u32(p.page_size)
            }
            Request::DestroyPool { pool } => w.u32(*pool),
            Request::Put { key, page } => {
                key.write(w)?;
                page.write(w)
            }
            Request::Get { key } | Request::FlushPage { key } => key.write(w),
            Request::FlushObject(f) => {
                w.u32(f.pool)?;
                w.u32(0)?;
                for part in f.object {
                    w.u64(part)?;
                }
                Ok(())
            }
            Request::Stats => Ok(()),
            Request::Batch(batch) => batch.write(w),
        }
    }

    /// Encodes a whole request frame into `buf`; returns the frame length.
    pub fn emit(&self, request_id: u64, flags: u16, buf: &mut [u8]) -> Result<usize, WireError> {
        emit_frame(
            buf,
            self.opcode() as u8,
            flags & !flags::REPLY,
            request_id,
            0,
            |w| self.write_body(w),
        )
    }
}

/// A decoded reply.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reply<'a> {
    /// HELLO succeeded.
    Hello(HelloReply<'a>),
    /// NEW_POOL succeeded.
    NewPool {
        /// The new pool's id.
        pool: u32,
    },
    /// PUT_PAGE, FLUSH_PAGE or DESTROY_POOL succeeded.
    Done,
    /// GET_PAGE hit.
    Page(Page<'a>),
    /// FLUSH_OBJECT succeeded.
    Flushed {
        /// How many pages were removed.
        pages: u32,
    },
    /// STATS succeeded.
    Stats(StatsView<'a>),
    /// BATCH: one reply per request entry, in order.
    Batch(BatchIter<'a>),
    /// Any non-OK status (NOT_FOUND included), with an optional UTF-8 explanation.
    Error {
        /// Why.
        status: Status,
        /// Human-readable detail (may be empty).
        message: &'a [u8],
    },
}

impl<'a> Reply<'a> {
    /// The status this reply carries.
    pub fn status(&self) -> Status {
        match self {
            Reply::Error { status, .. } => *status,
            _ => Status::Ok,
        }
    }

    /// Decodes a reply to a request with `opcode`, given its header status and payload.
    pub fn parse(opcode: u8, status: u16, payload: &'a [u8]) -> Result<Reply<'a>, WireError> {
        let status = Status::from_u16(status).ok_or(WireError::Malformed("unknown status"))?;
        if status != Status::Ok {
            if payload.len() > MAX_ERROR_MESSAGE {
                return Err(WireError::Malformed("error message too long"));
            }
            return Ok(Reply::Error {
                status,
                message: payload,
            });
        }
        let op = Opcode::from_u8(opcode).ok_or(WireError::UnknownOpcode(opcode))?;
        let mut r = Reader::new(payload);
        let reply = match op {
            Opcode::Hello => {
                let version = r.u16()?;
                let max_batch = r.u16()?;
                let max_payload = r.u32()?;
                let mut nonce = [0u8; HELLO_NONCE_LEN];
                nonce.copy_from_slice(r.bytes(HELLO_NONCE_LEN)?);
                let auth = match r.rest() {
                    [] => &[][..],
                    more => {
                        let mut a = Reader::new(more);
                        let len = a.u16()? as usize;
                        if len == 0 || len > AUTH_MAX {
                            return Err(WireError::Malformed("hello reply auth length"));
                        }
                        let auth = a.bytes(len)?;
                        a.finish()?;
                        auth
                    }
                };
                Reply::Hello(HelloReply {
                    version,
                    max_batch,
                    max_payload,
                    nonce,
                    auth,
                })
            }
            Opcode::NewPool => Reply::NewPool { pool: r.u32()? },
            Opcode::DestroyPool | Opcode::PutPage | Opcode::FlushPage => Reply::Done,
            Opcode::GetPage => Reply::Page(Page::read(&mut r)?),
            Opcode::FlushObject => Reply::Flushed { pages: r.u32()? },
            Opcode::Stats => Reply::Stats(StatsView::parse(r.rest())?),
            Opcode::Batch => Reply::Batch(BatchIter::parse(r.rest())?),
        };
        r.finish()?;
        Ok(reply)
    }

    pub(crate) fn write_body(&self, w: &mut Writer<'_>) -> Result<(), WireError> {
        match self {
            Reply::Hello(h) => {
                w.u16(h.version)?;
                w.u16(h.max_batch)?;
                w.u32(h.max_payload)?;
                w.bytes(&h.nonce)?;
                if h.auth.is_empty() {
                    return Ok(());
                }
                if h.auth.len() > AUTH_MAX {
                    return Err(WireError::Malformed("authentication material too long"));
                }
                w.u16(h.auth.len() as u16)?;
                w.bytes(h.auth)
            }
            Reply::NewPool { pool } => w.u32(*pool),
            Reply::Done => Ok(()),
            Reply::Page(page) => page.write(w),
            Reply::Flushed { pages } => w.u32(*pages),
            Reply::Stats(stats) => stats.write(w),
            Reply::Batch(batch) => batch.write(w),
            Reply::Error { message, .. } => {
                let n = message.len().min(MAX_ERROR_MESSAGE);
                w.bytes(message.get(..n).unwrap_or_default())
            }
        }
    }

    /// Encodes a whole reply frame to a request (`opcode`, `request_id`) into `buf`; returns its length.
    pub fn emit(&self, opcode: u8, request_id: u64, buf: &mut [u8]) -> Result<usize, WireError> {
        emit_frame(
            buf,
            opcode,
            flags::REPLY,
            request_id,
            self.status() as u16,
            |w| self.write_body(w),
        )
    }
}

/// Longest error message a reply may carry.
pub const MAX_ERROR_MESSAGE: usize = 256;

/// Writes a payload after a header-sized gap, then the header with the final length.
fn emit_frame(
    buf: &mut [u8],
    opcode: u8,
    flags: u16,
    request_id: u64,
    status: u16,
    body: impl FnOnce(&mut Writer<'_>) -> Result<(), WireError>,
) -> Result<usize, WireError> {
    let payload_buf = buf.get_mut(HEADER_LEN..).ok_or(WireError::BufferTooSmall)?;
    let mut w = Writer::new(payload_buf);
    body(&mut w)?;
    let payload_len = w.position();
    if payload_len > crate::MAX_PAYLOAD {
        return Err(WireError::TooLarge);
    }
    let header = Header {
        opcode,
        flags,
        request_id,
        payload_len: payload_len as u32,
        status,
    };
    header.emit(buf)?;
    Ok(HEADER_LEN + payload_len)
}
