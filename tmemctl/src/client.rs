//! A blocking protocol client with pipelining: send many requests, then collect replies by id.

use crate::secure::{self, Identity, Reader, Writer};
use anyhow::{anyhow, bail, Context, Result};
use protocol::{
    flags, BatchWriter, Encoding, Header, Page, PageKey, PoolKind, Reply, Request, StatsView,
    Status, HEADER_LEN, MAX_FRAME, PAGE_SIZE,
};
use std::io::{BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// One connection to an appliance, after a successful HELLO.
pub struct Client {
    reader: BufReader<Reader>,
    writer: Writer,
    out: Vec<u8>,
    scratch: Vec<u8>,
    reply: Vec<u8>,
    next_id: u64,
    /// Most entries per batch the appliance accepts.
    pub max_batch: usize,
    /// Whether the session is authenticated and encrypted.
    pub secure: bool,
}

/// A received reply frame (payload borrowed from the client's buffer).
pub struct ReplyFrame<'a> {
    /// The frame header (request id, opcode, status).
    pub header: Header,
    /// The decoded reply.
    pub reply: Reply<'a>,
}

impl Client {
    /// Connects (bounded by `timeout`) and says HELLO as `client_id`, without a key (an appliance
    /// run `--insecure`, or on loopback without keys).
    pub fn connect(addr: &str, client_id: u64, timeout: Duration) -> Result<Client> {
        Client::connect_as(addr, &Identity::insecure(client_id), timeout)
    }

    /// Connects (bounded by `timeout`) and says HELLO as `id` (authenticated when it has a key).
    pub fn connect_as(addr: &str, id: &Identity, timeout: Duration) -> Result<Client> {
        let sock = addr
            .to_socket_addrs()
            .with_context(|| format!("resolving {addr}"))?
            .next()
            .ok_or_else(|| anyhow!("{addr}: no address"))?;
        let stream = TcpStream::connect_timeout(&sock, timeout)
            .with_context(|| format!("connecting to appliance at {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let (reader, writer, greeting) = secure::hello(stream, id)?;
        Ok(Client {
            reader: BufReader::with_capacity(256 * 1024, reader),
            writer,
            out: Vec::with_capacity(MAX_FRAME),
            scratch: vec![0; MAX_FRAME],
            reply: Vec::with_capacity(MAX_FRAME),
            next_id: 1,
            max_batch: (greeting.max_batch as usize).clamp(1, protocol::MAX_BATCH),
            secure: greeting.secure,
        })
    }

    /// Queues a request (sent on [`Client::flush`]); returns its request id.
    pub fn send(&mut self, req: &Request<'_>, flags: u16) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let n = req.emit(id, flags, &mut self.scratch)?;
        self.out.extend_from_slice(&self.scratch[..n]);
        Ok(id)
    }

    /// Queues a BATCH of page requests; returns its request id.
    pub fn send_batch(
        &mut self,
        reqs: &[Request<'_>],
        entry_flags: u16,
        frame_flags: u16,
    ) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut w = BatchWriter::new(&mut self.scratch)?;
        for r in reqs {
            w.push_request(r, entry_flags)?;
        }
        let n = w.finish_request(id, frame_flags)?;
        self.out.extend_from_slice(&self.scratch[..n]);
        Ok(id)
    }

    /// Sends everything queued.
    pub fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.writer
                .write_all(&self.out)
                .context("sending to appliance")?;
            self.out.clear();
        }
        Ok(())
    }

    /// Waits for the next reply frame.
    pub fn recv(&mut self) -> Result<ReplyFrame<'_>> {
        let mut head = [0u8; HEADER_LEN];
        self.reader
            .read_exact(&mut head)
            .context("reading reply header")?;
        let header = Header::parse(&head).map_err(|e| anyhow!("bad reply header: {e}"))?;
        if !header.is_reply() {
            bail!("appliance sent a request frame");
        }
        self.reply.resize(header.payload_len as usize, 0);
        self.reader
            .read_exact(&mut self.reply)
            .context("reading reply payload")?;
        let reply = Reply::parse(header.opcode, header.status, &self.reply)
            .map_err(|e| anyhow!("bad reply payload: {e}"))?;
        Ok(ReplyFrame { header, reply })
    }

    /// Sends one request and waits for its reply.
    pub fn call(&mut self, req: &Request<'_>, flags: u16) -> Result<ReplyFrame<'_>> {
        let id = self.send(req, flags)?;
        self.flush()?;
        let frame = self.recv()?;
        if frame.header.request_id != id {
            bail!(
                "reply for request {} while waiting for {id}",
                frame.header.request_id
            );
        }
        Ok(frame)
    }

    /// Creates a pool.
    pub fn new_pool(&mut self, kind: PoolKind) -> Result<u32> {
        let req = Request::NewPool(protocol::NewPool {
            kind,
            page_size: PAGE_SIZE as u32,
        });
        match self.call(&req, 0)?.reply {
            Reply::NewPool { pool } => Ok(pool),
            other => bail!("NEW_POOL failed: {}", describe(&other)),
        }
    }

    /// Destroys a pool.
    pub fn destroy_pool(&mut self, pool: u32) -> Result<()> {
        match self.call(&Request::DestroyPool { pool }, 0)?.reply {
            Reply::Done => Ok(()),
            other => bail!("DESTROY_POOL failed: {}", describe(&other)),
        }
    }

    /// Stores one raw page (the appliance compresses it).
    pub fn put(&mut self, key: PageKey, data: &[u8; PAGE_SIZE]) -> Result<Status> {
        let page = Page {
            encoding: Encoding::Raw,
            crc: crc32c::crc32c(data),
            data,
        };
        Ok(self.call(&Request::Put { key, page }, 0)?.reply.status())
    }

    /// Fetches one page into `out`; returns `Ok(false)` if the appliance has no such page.
    pub fn get(&mut self, key: PageKey, out: &mut [u8; PAGE_SIZE]) -> Result<bool> {
        let frame = self.call(&Request::Get { key }, flags::ACCEPT_LZ4)?;
        match frame.reply {
            Reply::Page(page) => {
                decode_page(&page, out)?;
                Ok(true)
            }
            Reply::Error {
                status: Status::NotFound,
                ..
            } => Ok(false),
            other => bail!("GET failed: {}", describe(&other)),
        }
    }

    /// The appliance's counters (as many as it sent).
    pub fn stats(&mut self) -> Result<Vec<u64>> {
        match self.call(&Request::Stats, 0)?.reply {
            Reply::Stats(view) => Ok(stats_vec(&view)),
            other => bail!("STATS failed: {}", describe(&other)),
        }
    }
}

fn stats_vec(view: &StatsView<'_>) -> Vec<u64> {
    (0..view.len()).filter_map(|i| view.get_index(i)).collect()
}

/// Decodes a page from a reply and verifies its checksum: every page read back is checked.
pub fn decode_page(page: &Page<'_>, out: &mut [u8; PAGE_SIZE]) -> Result<()> {
    match page.encoding {
        Encoding::Raw => out.copy_from_slice(page.data),
        Encoding::Sealed => bail!("appliance returned a sealed page this client never stored"),
        Encoding::Fill => Page::expand_fill(page.fill_word().unwrap_or_default(), out),
        Encoding::Lz4 => match lz4_flex::block::decompress_into(page.data, out) {
            Ok(PAGE_SIZE) => {}
            _ => bail!("appliance returned a corrupt compressed page"),
        },
    }
    if crc32c::crc32c(out) != page.crc {
        bail!("page checksum mismatch in reply");
    }
    Ok(())
}

/// Human-readable reply summary for error messages.
pub fn describe(reply: &Reply<'_>) -> String {
    match reply {
        Reply::Error { status, message } if !message.is_empty() => {
            format!("{status} ({})", String::from_utf8_lossy(message))
        }
        Reply::Error { status, .. } => status.to_string(),
        other => format!("unexpected reply {other:?}"),
    }
}
