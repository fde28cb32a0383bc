//! `cargo xtask bench`: the appliance side by side with memcached on loopback, same pages, same
//! client, same concurrency, alternating runs, each against a freshly started server; medians and
//! ratios are written to `docs/benchmarks.md` (between the `host-bench` markers).

use anyhow::{bail, Context, Result};
use protocol::noise::Cipher;
use qemu_tests::{free_port, key_values, ChildGuard};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::host::{cargo, run, step};
use crate::medians::median_of;
use crate::testing::ensure_host_prerequisites;
use crate::{artefacts, docs_section};

#[derive(clap::Args)]
pub struct BenchArgs {
    /// Pages per run.
    #[arg(long, default_value_t = 200_000)]
    pages: u64,
    /// Rounds per scenario (medians are reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Do not rewrite docs/benchmarks.md, only print.
    #[arg(long)]
    no_docs: bool,
    /// Run the swap benchmark instead (client VM: kclient vs NBD, zram, disk, all-in-RAM).
    #[arg(long)]
    swap: bool,
    #[command(flatten)]
    swap_args: crate::swapbench::SwapBenchArgs,
    /// Run the cache device benchmark instead (client VM: ext4 on a throttled disk, through
    /// /dev/kcache0, and all in the page cache).
    #[arg(long)]
    cache: bool,
    #[command(flatten)]
    cache_args: crate::cachebench::CacheBenchArgs,
}

/// A server process (killed when dropped) and where it listens.
struct ServerProcess {
    child: ChildGuard,
    addr: String,
}

/// The client id of the keyed runs (`tmem+noise`); its key is made per run.
const BENCH_CLIENT: u64 = 0xbe4c;

/// An appliance on loopback; with `key`, serving only [`BENCH_CLIENT`] with that key (every
/// session authenticated and encrypted).
fn start_appliance(memory: &str, key: Option<&str>) -> Result<ServerProcess> {
    let bin = artefacts::workspace_binary("appliance")?;
    let mut cmd = Command::new(bin);
    cmd.args([
        "--listen",
        "127.0.0.1:0",
        "--memory",
        memory,
        "--log-level",
        "warn",
    ]);
    if let Some(key) = key {
        cmd.args(["--key", &format!("{BENCH_CLIENT:#x}:{key}")]);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the appliance")?;
    let mut child = ChildGuard::new(child);
    let mut line = String::new();
    BufReader::new(child.stdout.take().context("stdout")?).read_line(&mut line)?;
    let addr = line
        .trim()
        .strip_prefix("appliance listening on ")
        .context("no listening line")?
        .to_string();
    Ok(ServerProcess { child, addr })
}

fn start_memcached(memory_mib: u64) -> Result<ServerProcess> {
    let port = free_port();
    let child = Command::new("memcached")
        .args([
            "-u",
            "root",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "0",
            "-t",
            "2",
            "-c",
            "4096",
        ])
        .args(["-m", &memory_mib.to_string()])
        .spawn()
        .context("starting memcached")?;
    let child = ChildGuard::new(child);
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(&addr).is_err() {
        if Instant::now() > deadline {
            bail!("memcached did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(ServerProcess { child, addr })
}

/// One `tmemctl bench` run (keyed sessions sealed with `cipher`, a `tmemctl --cipher` value);
/// returns its `key=value` summary.
fn tmemctl_bench(
    server: &ServerProcess,
    kind: &str,
    key: Option<(&str, &str)>,
    corpus: &str,
    batch: usize,
    pages: u64,
) -> Result<BTreeMap<String, String>> {
    let bin = artefacts::workspace_binary("tmemctl")?;
    let mut cmd = Command::new(bin);
    if let Some((key, cipher)) = key {
        // The key goes in the environment, not on a command line others can read.
        cmd.env("TMEM_KEY", key)
            .args(["--client-id", &format!("{BENCH_CLIENT:#x}")])
            .args(["--cipher", cipher]);
    }
    let out = cmd
        .args([
            "--target",
            &server.addr,
            "bench",
            "--server",
            kind,
            "--corpus",
            corpus,
        ])
        .args([
            "--pages",
            &pages.to_string(),
            "--threads",
            "2",
            "--depth",
            "16",
        ])
        .args([
            "--batch",
            &batch.to_string(),
            "--server-pid",
            &server.child.id().to_string(),
        ])
        .args(["--max-seconds", "300"])
        .stderr(Stdio::inherit())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("tmemctl bench against {kind} failed: {stdout}");
    }
    Ok(key_values(stdout.lines().last().unwrap_or_default()))
}

/// The keyed kinds of run, one per cipher.
const CHACHA: &str = "tmem+noise chacha";
const AESGCM: &str = "tmem+noise aesgcm";

struct Scenario {
    corpus: &'static str,
    batch: usize,
    tmem: Vec<BTreeMap<String, String>>,
    /// tmem with keys: authenticated sessions sealed with ChaCha20-Poly1305.
    chacha: Vec<BTreeMap<String, String>>,
    /// The same sealed with AES-256-GCM.
    aesgcm: Vec<BTreeMap<String, String>>,
    memcached: Vec<BTreeMap<String, String>>,
}

pub fn bench(args: &BenchArgs) -> Result<()> {
    if args.cache {
        return crate::cachebench::run_bench(&args.cache_args, args.no_docs);
    }
    if args.swap {
        let mut swap = args.swap_args.clone();
        swap.no_docs |= args.no_docs;
        return crate::swapbench::run(&swap);
    }
    ensure_host_prerequisites()?;
    step("building release binaries");
    run(cargo().args(["build", "--release", "-p", "appliance", "-p", "tmemctl"]))?;
    let mut scenarios = Vec::new();
    for corpus in ["synthetic", "process"] {
        for batch in [1, 16] {
            let mut s = Scenario {
                corpus,
                batch,
                tmem: Vec::new(),
                chacha: Vec::new(),
                aesgcm: Vec::new(),
                memcached: Vec::new(),
            };
            for round in 0..args.rounds {
                step(&format!(
                    "{corpus} corpus, batch {batch}, round {}/{}",
                    round + 1,
                    args.rounds
                ));
                // Alternate which server goes first, so drift on a shared machine hits both alike.
                let mut order = [CHACHA, "tmem", "memcached", AESGCM];
                if round % 2 == 1 {
                    order.reverse();
                }
                for kind in order {
                    // `tmemctl --cipher` takes the names the protocol gives the ciphers.
                    let cipher = match kind {
                        CHACHA => Some(Cipher::ChaChaPoly.name()),
                        AESGCM => Some(Cipher::AesGcm.name()),
                        _ => None,
                    };
                    let key = cipher.map(|_| {
                        let k = tmemctl::secure::random_key().expect("random key");
                        k.iter().map(|b| format!("{b:02x}")).collect::<String>()
                    });
                    let server = match kind {
                        "memcached" => start_memcached(4096)?,
                        _ => start_appliance("4GiB", key.as_deref())?,
                    };
                    let server_kind = if kind == "memcached" {
                        "memcached"
                    } else {
                        "tmem"
                    };
                    let r = tmemctl_bench(
                        &server,
                        server_kind,
                        key.as_deref().zip(cipher),
                        corpus,
                        batch,
                        args.pages,
                    )?;
                    match kind {
                        "tmem" => s.tmem.push(r),
                        CHACHA => s.chacha.push(r),
                        AESGCM => s.aesgcm.push(r),
                        _ => s.memcached.push(r),
                    }
                }
            }
            scenarios.push(s);
        }
    }
    let table = render(&scenarios, args);
    println!("{table}");
    if !args.no_docs {
        docs_section::write("host-bench", &table)?;
        step("results written to docs/benchmarks.md");
    }
    Ok(())
}

fn render(scenarios: &[Scenario], args: &BenchArgs) -> String {
    let m = median_of;
    let mut t = String::new();
    t.push_str(&format!(
        "Command: `cargo xtask bench` ({} pages per run, 2 connections x depth 16, {} rounds, medians; \
         each run against a freshly started server, order alternating). Machine: 2 cores, loopback; \
         client and server share the cores.\n\n",
        args.pages, args.rounds
    ));
    t.push_str("| corpus | batch | tmem ops/s | memcached ops/s | ops/s ratio | tmem p99 us | memcached p99 us | p99 ratio (mc/tmem) | tmem bytes/page (RSS) | memcached bytes/page (RSS) | pages per GiB ratio | compression ratio | allocator efficiency | tmem+noise ChaCha20-Poly1305 ops/s | its cost (plain/keyed ops/s) | tmem+noise AES-256-GCM ops/s | its cost (plain/keyed ops/s) |\n");
    t.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for s in scenarios {
        let (to, mo) = (m(&s.tmem, "ops_s"), m(&s.memcached, "ops_s"));
        let (tp, mp) = (m(&s.tmem, "p99_us"), m(&s.memcached, "p99_us"));
        let (tr, mr) = (
            m(&s.tmem, "rss_bytes_per_page"),
            m(&s.memcached, "rss_bytes_per_page"),
        );
        t.push_str(&format!(
            "| {} | {} | {:.0} | {:.0} | **{:.2}x** | {:.0} | {:.0} | {:.2}x | {:.0} | {:.0} | **{:.2}x** | {:.2} | {:.3} | {:.0} | **{:.2}x** | {:.0} | **{:.2}x** |\n",
            s.corpus, s.batch, to, mo, to / mo, tp, mp, mp / tp, tr, mr, mr / tr,
            m(&s.tmem, "compression_ratio"), m(&s.tmem, "allocator_efficiency"),
            m(&s.chacha, "ops_s"), to / m(&s.chacha, "ops_s"),
            m(&s.aesgcm, "ops_s"), to / m(&s.aesgcm, "ops_s"),
        ));
    }
    t.push_str("\nops/s counts puts and gets (each page once each way, every byte verified). Bytes per page is the \
                server's resident memory growth during the put phase divided by pages stored. Allocator \
                efficiency = sum of compressed page sizes / slab bytes in use. tmem+noise: the same appliance \
                with a client key, so every session is authenticated (Noise_NNpsk0) and every frame \
                sealed both ways, with ChaCha20-Poly1305 or AES-256-GCM (`tmemctl --cipher`; AES-256-GCM \
                is what `auto` picks on a CPU with AES instructions); each cost column is plain ops/s \
                over keyed ops/s (target at most 1.3x).\n");
    t
}
