//! memcached as the benchmark's peer: the closest off-the-shelf RAM server, spoken to with its text
//! protocol (`set` pipelined for puts, multi-key `get` for batched gets).

use crate::bench::{Backend, Op};
use crate::corpus::Corpus;
use anyhow::{bail, Context, Result};
use protocol::PAGE_SIZE;
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One connection to memcached.
pub struct MemcachedBackend {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    out: Vec<u8>,
    prefix: String,
    inflight: VecDeque<(Op, u64, usize)>,
    line: String,
    page: [u8; PAGE_SIZE],
}

impl MemcachedBackend {
    /// Connects; keys of this connection start with `prefix`.
    pub fn connect(addr: &str, prefix: &str) -> Result<MemcachedBackend> {
        let stream = TcpStream::connect(addr)
            .with_context(|| format!("connecting to memcached at {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(MemcachedBackend {
            reader: BufReader::with_capacity(256 * 1024, stream.try_clone()?),
            writer: stream,
            out: Vec::new(),
            prefix: prefix.to_string(),
            inflight: VecDeque::new(),
            line: String::new(),
            page: [0; PAGE_SIZE],
        })
    }

    fn read_line(&mut self) -> Result<&str> {
        self.line.clear();
        if self.reader.read_line(&mut self.line)? == 0 {
            bail!("memcached closed the connection");
        }
        Ok(self.line.trim_end())
    }

    /// memcached's `stats` as (name, value) pairs.
    pub fn stats(&mut self) -> Result<Vec<(String, String)>> {
        self.writer.write_all(b"stats\r\n")?;
        let mut out = Vec::new();
        for _ in 0..1000 {
            let line = self.read_line()?.to_string();
            if line == "END" {
                return Ok(out);
            }
            let mut parts = line.splitn(3, ' ');
            if let (Some("STAT"), Some(k), Some(v)) = (parts.next(), parts.next(), parts.next()) {
                out.push((k.to_string(), v.to_string()));
            }
        }
        bail!("memcached stats did not end")
    }
}

impl Backend for MemcachedBackend {
    fn submit(&mut self, op: Op, first: u64, n: usize, corpus: &Corpus) -> Result<()> {
        match op {
            Op::Put => {
                for i in first..first + n as u64 {
                    corpus.page(i, &mut self.page);
                    write!(self.out, "set {}{} 0 0 {}\r\n", self.prefix, i, PAGE_SIZE)?;
                    self.out.extend_from_slice(&self.page);
                    self.out.extend_from_slice(b"\r\n");
                }
            }
            Op::Get => {
                self.out.extend_from_slice(b"get");
                for i in first..first + n as u64 {
                    write!(self.out, " {}{}", self.prefix, i)?;
                }
                self.out.extend_from_slice(b"\r\n");
            }
        }
        self.inflight.push_back((op, first, n));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.writer.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    fn complete(&mut self, check: &mut dyn FnMut(u64, Option<&[u8; PAGE_SIZE]>)) -> Result<usize> {
        let (op, first, n) = self.inflight.pop_front().context("nothing in flight")?;
        let mut refused = 0;
        match op {
            Op::Put => {
                for _ in 0..n {
                    match self.read_line()? {
                        "STORED" => {}
                        "SERVER_ERROR out of memory storing object" => refused += 1,
                        other => bail!("memcached set: {other}"),
                    }
                }
            }
            Op::Get => {
                let mut found = vec![false; n];
                for _ in 0..=n {
                    let line = self.read_line()?.to_string();
                    if line == "END" {
                        break;
                    }
                    let mut parts = line.split(' ');
                    let (Some("VALUE"), Some(key), _, Some(len)) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        bail!("memcached get: {line}");
                    };
                    let index: u64 = key
                        .strip_prefix(&self.prefix)
                        .and_then(|k| k.parse().ok())
                        .context("bad key")?;
                    if len != PAGE_SIZE.to_string() || !(first..first + n as u64).contains(&index) {
                        bail!("memcached get: unexpected {line}");
                    }
                    self.reader.read_exact(&mut self.page)?;
                    let mut crlf = [0u8; 2];
                    self.reader.read_exact(&mut crlf)?;
                    found[(index - first) as usize] = true;
                    check(index, Some(&self.page));
                }
                for (i, f) in found.iter().enumerate() {
                    if !f {
                        check(first + i as u64, None);
                    }
                }
            }
        }
        Ok(refused)
    }

    fn cleanup(&mut self) -> Result<()> {
        Ok(())
    }
}
