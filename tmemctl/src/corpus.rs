//! Page corpora for benchmarks: what the pages look like decides compression, so besides synthetic
//! data we read real memory out of a live process, or pages of files from a directory.

use anyhow::{bail, Context, Result};
use protocol::PAGE_SIZE;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A fixed set of pages; page `i` of a run of any length is `pages[i % len]`.
pub struct Corpus {
    /// Name for reports.
    pub name: String,
    pages: Vec<[u8; PAGE_SIZE]>,
}

impl Corpus {
    /// Number of distinct pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// Whether the corpus is empty (never, once built).
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Page for benchmark index `i`, made distinct per index where the source repeats: the index is
    /// written into the first 8 bytes of non-fill pages so a misplaced page is caught by verification.
    pub fn page(&self, i: u64, out: &mut [u8; PAGE_SIZE]) {
        let src = &self.pages[(i % self.pages.len() as u64) as usize];
        out.copy_from_slice(src);
        if protocol::Page::detect_fill(src).is_none() {
            out[..8].copy_from_slice(&i.to_le_bytes());
        }
    }

    /// Deterministic mix: 10 % zero, 5 % same-filled, 15 % random (incompressible), 70 % structured
    /// records with varying redundancy.
    pub fn synthetic(count: usize, seed: u64) -> Corpus {
        let mut rng = XorShift(seed | 1);
        let pages = (0..count.max(1))
            .map(|_| {
                let mut p = [0u8; PAGE_SIZE];
                match rng.next_u64() % 100 {
                    0..=9 => {}
                    10..=14 => Self::fill_word(&mut p, rng.next_u64()),
                    15..=29 => p
                        .chunks_exact_mut(8)
                        .for_each(|c| c.copy_from_slice(&rng.next_u64().to_le_bytes())),
                    _ => Self::records(&mut p, &mut rng),
                }
                p
            })
            .collect();
        Corpus {
            name: "synthetic".into(),
            pages,
        }
    }

    fn fill_word(p: &mut [u8; PAGE_SIZE], w: u64) {
        p.chunks_exact_mut(8)
            .for_each(|c| c.copy_from_slice(&w.to_le_bytes()));
    }

    /// Struct-like records: small counters, pointers with common high bits, short strings.
    fn records(p: &mut [u8; PAGE_SIZE], rng: &mut XorShift) {
        let words = [
            "alpha", "beta", "gamma", "delta", "kernel", "page", "swap", "cache", "node",
        ];
        let base = 0x7f00_0000_0000u64 + (rng.next_u64() & 0xffff_f000);
        let noise = (rng.next_u64() % 24) as u32;
        for rec in p.chunks_exact_mut(32) {
            let r = rng.next_u64();
            rec[..8].copy_from_slice(&(base + (r & 0xfff0)).to_le_bytes());
            rec[8..12].copy_from_slice(&((r >> 20) as u32 % 1000).to_le_bytes());
            let w = words[(r >> 40) as usize % words.len()].as_bytes();
            rec[12..12 + w.len()].copy_from_slice(w);
            if (r >> 50) as u32 % 32 < noise {
                rec[24..32].copy_from_slice(&rng.next_u64().to_le_bytes());
            }
        }
    }

    /// Every file under `dir`, cut into pages (the last page of a file zero-padded), up to `max` pages.
    pub fn from_dir(dir: &Path, max: usize) -> Result<Corpus> {
        let mut pages = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let entries =
                std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?;
            for entry in entries.flatten() {
                if pages.len() >= max {
                    break;
                }
                let path = entry.path();
                let Ok(ft) = entry.file_type() else { continue };
                if ft.is_dir() {
                    stack.push(path);
                } else if ft.is_file() {
                    let Ok(mut f) = std::fs::File::open(&path) else {
                        continue;
                    };
                    loop {
                        let mut p = [0u8; PAGE_SIZE];
                        let n = read_full(&mut f, &mut p)?;
                        if n == 0 || pages.len() >= max {
                            break;
                        }
                        pages.push(p);
                    }
                }
            }
        }
        if pages.is_empty() {
            bail!("{}: no file data to use as pages", dir.display());
        }
        Ok(Corpus {
            name: format!("dir:{}", dir.display()),
            pages,
        })
    }

    /// Resident memory of a freshly started Python process that builds a typical heap (dicts,
    /// strings, lists, JSON text, some random bytes). Only pages present in RAM are taken (per
    /// /proc/PID/pagemap), as those are what swap would see.
    pub fn from_process(max: usize) -> Result<Corpus> {
        let mut child = ProcessGuard(
            Command::new("python3")
                .arg("-c")
                .arg(PYTHON_WORKLOAD)
                .stdout(Stdio::piped())
                .stdin(Stdio::piped())
                .spawn()
                .context("starting python3 for the process corpus (is python3 installed?)")?,
        );
        let stdout = child.0.stdout.take().context("python stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        if line.trim() != "ready" {
            bail!("corpus process did not start: {line:?}");
        }
        let pages = read_process_pages(child.0.id(), max)?;
        if pages.is_empty() {
            bail!("no resident pages found in corpus process");
        }
        Ok(Corpus {
            name: "process:python3".into(),
            pages,
        })
    }
}

/// Kills the corpus process however we leave.
struct ProcessGuard(Child);

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const PYTHON_WORKLOAD: &str = r#"
import json, os, random, sys
random.seed(7)
words = open('/usr/share/dict/words').read().split() if os.path.exists('/usr/share/dict/words') else [
    'swap', 'page', 'memory', 'kernel', 'cache', 'remote', 'appliance', 'compress', 'node', 'python']
users = [{'id': i, 'name': random.choice(words) + str(i), 'score': random.random() * 100,
          'tags': [random.choice(words) for _ in range(random.randint(1, 6))]} for i in range(150000)]
index = {u['name']: u for u in users}
text = json.dumps(users[:20000])
numbers = list(range(1000000))
floats = [random.gauss(0, 1) for _ in range(200000)]
blobs = [os.urandom(256) for _ in range(4000)]
print('ready', flush=True)
sys.stdin.read()
"#;

fn read_process_pages(pid: u32, max: usize) -> Result<Vec<[u8; PAGE_SIZE]>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))?;
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).with_context(|| {
        format!("opening /proc/{pid}/mem (needs the same user, ptrace allowed)")
    })?;
    let mut pagemap = std::fs::File::open(format!("/proc/{pid}/pagemap"))?;
    let mut pages = Vec::new();
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        // Writable private memory: heap, anonymous mappings, stacks, data segments — what swaps.
        if !perms.starts_with("rw") || !perms.ends_with('p') {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        else {
            continue;
        };
        let mut addr = start;
        while addr < end && pages.len() < max {
            let mut entry = [0u8; 8];
            pagemap.seek(SeekFrom::Start(addr / PAGE_SIZE as u64 * 8))?;
            if pagemap.read_exact(&mut entry).is_ok() && u64::from_le_bytes(entry) >> 63 == 1 {
                let mut p = [0u8; PAGE_SIZE];
                if mem.seek(SeekFrom::Start(addr)).is_ok()
                    && read_full(&mut mem, &mut p).unwrap_or(0) == PAGE_SIZE
                {
                    pages.push(p);
                }
            }
            addr += PAGE_SIZE as u64;
        }
    }
    Ok(pages)
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(n)
}

/// Small deterministic PRNG (xorshift64), so corpora are reproducible from a seed.
pub struct XorShift(pub u64);

impl XorShift {
    /// Next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}
