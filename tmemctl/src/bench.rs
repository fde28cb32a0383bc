//! The verifying benchmark: T connections, each keeping D requests in flight (each request carrying B
//! pages), put N pages, then get them all back and compare every byte. The same loop drives the
//! appliance and memcached, so both see the same pages, concurrency and pipelining.

use crate::client::{decode_page, describe, Client};
use crate::corpus::Corpus;
use crate::secure::Identity;
use anyhow::{bail, Context, Result};
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use protocol::{
    flags, BatchIter, Encoding, Page, PageKey, PoolKind, Reply, Request, Status, PAGE_SIZE,
};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmark shape.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Pages to put and get.
    pub pages: u64,
    /// Connections (one thread each).
    pub threads: usize,
    /// Requests in flight per connection.
    pub depth: usize,
    /// Pages per request (BATCH frames for the appliance, pipelined sets and multi-gets for memcached).
    pub batch: usize,
    /// Compress pages on the client and send LZ4 (the appliance verifies and keeps them).
    pub client_lz4: bool,
    /// Give up (and fail) after this long.
    pub max_time: Duration,
    /// Show a progress bar.
    pub progress: bool,
}

/// Which kind of operation a phase runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store pages.
    Put,
    /// Fetch and verify pages.
    Get,
}

/// A server the benchmark can drive: requests are submitted without waiting, completed in order.
pub trait Backend: Send {
    /// Queues one request for pages `first..first + n`.
    fn submit(&mut self, op: Op, first: u64, n: usize, corpus: &Corpus) -> Result<()>;
    /// Sends what was queued.
    fn flush(&mut self) -> Result<()>;
    /// Waits for the oldest outstanding request. For gets, `check` receives each page (or `None` if
    /// the server did not have it). Returns the number of pages the server refused.
    fn complete(&mut self, check: &mut dyn FnMut(u64, Option<&[u8; PAGE_SIZE]>)) -> Result<usize>;
    /// Frees what the benchmark stored (best effort).
    fn cleanup(&mut self) -> Result<()>;
}

/// Outcome of one phase.
pub struct PhaseResult {
    /// Pages completed.
    pub pages: u64,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Request latency (one sample per request).
    pub latency: Histogram<u64>,
    /// Pages the server refused (puts) or did not have (gets).
    pub errors: u64,
    /// Pages whose content differed from what was put.
    pub mismatches: u64,
}

impl PhaseResult {
    /// Pages per second.
    pub fn ops_per_sec(&self) -> f64 {
        self.pages as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Payload MiB per second (4 KiB per page).
    pub fn mib_per_sec(&self) -> f64 {
        self.ops_per_sec() * PAGE_SIZE as f64 / (1024.0 * 1024.0)
    }

    /// Latency percentile in microseconds.
    pub fn percentile_us(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
}

/// Runs one phase on all backends (one thread each) over their share of the pages.
pub fn run_phase<B: Backend + 'static>(
    op: Op,
    backends: &mut Vec<B>,
    corpus: &Arc<Corpus>,
    cfg: &BenchConfig,
) -> Result<PhaseResult> {
    let bar = if cfg.progress {
        let bar = ProgressBar::new(cfg.pages);
        bar.set_style(
            ProgressStyle::with_template(
                "{msg:>4} [{bar:40}] {pos}/{len} pages {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_message(if op == Op::Put { "put" } else { "get" });
        bar
    } else {
        ProgressBar::hidden()
    };
    let start = Instant::now();
    let deadline = start + cfg.max_time;
    let threads = backends.len() as u64;
    let handles: Vec<_> = backends
        .drain(..)
        .enumerate()
        .map(|(t, mut backend)| {
            let (corpus, cfg, bar) = (corpus.clone(), cfg.clone(), bar.clone());
            let first = cfg.pages * t as u64 / threads;
            let end = cfg.pages * (t as u64 + 1) / threads;
            std::thread::spawn(move || {
                let r = drive(op, &mut backend, &corpus, &cfg, first..end, deadline, &bar);
                (backend, r)
            })
        })
        .collect();
    let mut total = PhaseResult {
        pages: 0,
        elapsed: Duration::ZERO,
        latency: Histogram::new(3)?,
        errors: 0,
        mismatches: 0,
    };
    let mut failure = None;
    for h in handles {
        let (backend, result) = h
            .join()
            .map_err(|_| anyhow::anyhow!("benchmark thread panicked"))?;
        backends.push(backend);
        match result {
            Ok(r) => {
                total.pages += r.pages;
                total.errors += r.errors;
                total.mismatches += r.mismatches;
                total.latency.add(&r.latency)?;
            }
            Err(e) => failure = Some(e),
        }
    }
    total.elapsed = start.elapsed();
    bar.finish_and_clear();
    if let Some(e) = failure {
        return Err(e);
    }
    if total.pages < cfg.pages {
        bail!(
            "{op:?} phase timed out after {:?}: {} of {} pages",
            cfg.max_time,
            total.pages,
            cfg.pages
        );
    }
    Ok(total)
}

fn drive<B: Backend>(
    op: Op,
    backend: &mut B,
    corpus: &Corpus,
    cfg: &BenchConfig,
    range: std::ops::Range<u64>,
    deadline: Instant,
    bar: &ProgressBar,
) -> Result<PhaseResult> {
    let mut latency = Histogram::<u64>::new(3)?;
    let mut inflight: VecDeque<(Instant, usize)> = VecDeque::new();
    let (mut next, mut done, mut errors, mut mismatches) = (range.start, 0u64, 0u64, 0u64);
    let mut expected = [0u8; PAGE_SIZE];
    let start = Instant::now();
    while next < range.end || !inflight.is_empty() {
        while inflight.len() < cfg.depth && next < range.end && Instant::now() < deadline {
            let n = (cfg.batch as u64).min(range.end - next) as usize;
            backend.submit(op, next, n, corpus)?;
            inflight.push_back((Instant::now(), n));
            next += n as u64;
        }
        backend.flush()?;
        let Some((sent, n)) = inflight.pop_front() else {
            break;
        };
        let refused = backend.complete(&mut |index, got| {
            corpus.page(index, &mut expected);
            if got != Some(&expected) {
                mismatches += 1;
            }
        })?;
        errors += refused as u64;
        latency.record(sent.elapsed().as_nanos() as u64)?;
        done += n as u64;
        bar.inc(n as u64);
    }
    Ok(PhaseResult {
        pages: done,
        elapsed: start.elapsed(),
        latency,
        errors,
        mismatches,
    })
}

/// Drives a tmem appliance over the protocol.
pub struct TmemBackend {
    client: Client,
    pool: u32,
    client_lz4: bool,
    /// (request id, op, first page, pages) of outstanding requests, oldest first.
    inflight: VecDeque<(u64, Op, u64, usize)>,
    pages: Vec<[u8; PAGE_SIZE]>,
    compressed: Vec<Vec<u8>>,
}

impl TmemBackend {
    /// Connects, creates a persistent pool.
    pub fn connect(addr: &str, id: &Identity, client_lz4: bool) -> Result<TmemBackend> {
        let mut client = Client::connect_as(addr, id, Duration::from_secs(30))?;
        let pool = client.new_pool(PoolKind::Persistent)?;
        Ok(TmemBackend {
            client,
            pool,
            client_lz4,
            inflight: VecDeque::new(),
            pages: Vec::new(),
            compressed: Vec::new(),
        })
    }

    fn key(&self, index: u64) -> PageKey {
        PageKey {
            pool: self.pool,
            object: [0, 0, 0],
            index: index as u32,
        }
    }
}

/// Encodes a page the way a client that compresses would: fill word, LZ4 if smaller, else raw.
fn client_encode<'a>(page: &'a [u8; PAGE_SIZE], buf: &'a mut Vec<u8>, crc: u32) -> Page<'a> {
    if let Some(word) = Page::detect_fill(page) {
        buf.clear();
        buf.extend_from_slice(&word.to_le_bytes());
        return Page {
            encoding: Encoding::Fill,
            crc,
            data: buf,
        };
    }
    buf.resize(lz4_flex::block::get_maximum_output_size(PAGE_SIZE), 0);
    match lz4_flex::block::compress_into(page, buf) {
        Ok(n) if n < PAGE_SIZE => {
            buf.truncate(n);
            Page {
                encoding: Encoding::Lz4,
                crc,
                data: buf,
            }
        }
        _ => Page {
            encoding: Encoding::Raw,
            crc,
            data: page,
        },
    }
}

impl Backend for TmemBackend {
    fn submit(&mut self, op: Op, first: u64, n: usize, corpus: &Corpus) -> Result<()> {
        let id = match op {
            Op::Put => {
                self.pages.resize(n, [0; PAGE_SIZE]);
                self.compressed.resize(n, Vec::new());
                for (i, p) in self.pages.iter_mut().enumerate() {
                    corpus.page(first + i as u64, p);
                }
                let keys: Vec<PageKey> = (0..n).map(|i| self.key(first + i as u64)).collect();
                let reqs: Vec<Request<'_>> = self
                    .pages
                    .iter()
                    .zip(self.compressed.iter_mut())
                    .zip(keys)
                    .map(|((p, buf), key)| {
                        let crc = crc32c::crc32c(p);
                        let page = if self.client_lz4 {
                            client_encode(p, buf, crc)
                        } else {
                            Page {
                                encoding: Encoding::Raw,
                                crc,
                                data: p,
                            }
                        };
                        Request::Put { key, page }
                    })
                    .collect();
                send(&mut self.client, &reqs, 0)?
            }
            Op::Get => {
                let reqs: Vec<Request<'_>> = (0..n)
                    .map(|i| Request::Get {
                        key: self.key(first + i as u64),
                    })
                    .collect();
                send(&mut self.client, &reqs, flags::ACCEPT_LZ4)?
            }
        };
        self.inflight.push_back((id, op, first, n));
        Ok(())
    }

    fn flush(&mut self) -> Result<()> {
        self.client.flush()
    }

    fn complete(&mut self, check: &mut dyn FnMut(u64, Option<&[u8; PAGE_SIZE]>)) -> Result<usize> {
        let (id, op, first, n) = self.inflight.pop_front().context("nothing in flight")?;
        let mut page = [0u8; PAGE_SIZE];
        let frame = self.client.recv()?;
        if frame.header.request_id != id {
            bail!(
                "reply {} out of order (expected {id})",
                frame.header.request_id
            );
        }
        let mut refused = 0;
        let mut one = |index: u64, reply: Reply<'_>| -> Result<()> {
            match (op, reply) {
                (Op::Put, Reply::Done) => {}
                (
                    Op::Put,
                    Reply::Error {
                        status: Status::NoSpace | Status::QuotaExceeded,
                        ..
                    },
                ) => refused += 1,
                (Op::Get, Reply::Page(p)) => {
                    decode_page(&p, &mut page)?;
                    check(index, Some(&page));
                }
                (
                    Op::Get,
                    Reply::Error {
                        status: Status::NotFound,
                        ..
                    },
                ) => check(index, None),
                (_, other) => bail!("page {index}: {}", describe(&other)),
            }
            Ok(())
        };
        match frame.reply {
            Reply::Batch(entries) => {
                let entries: BatchIter<'_> = entries;
                if entries.len() != n {
                    bail!("batch reply has {} entries for {n} requests", entries.len());
                }
                for (i, e) in entries.enumerate() {
                    one(
                        first + i as u64,
                        e.reply()
                            .map_err(|e| anyhow::anyhow!("bad batch entry: {e}"))?,
                    )?;
                }
            }
            single => one(first, single)?,
        }
        Ok(refused)
    }

    fn cleanup(&mut self) -> Result<()> {
        self.client.destroy_pool(self.pool)
    }
}

fn send(client: &mut Client, reqs: &[Request<'_>], flags: u16) -> Result<u64> {
    match reqs {
        [one] => client.send(one, flags),
        many => client.send_batch(many, flags & !flags::ACCEPT_LZ4, flags & flags::ACCEPT_LZ4),
    }
}
