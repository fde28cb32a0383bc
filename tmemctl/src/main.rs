//! `tmemctl`: look at appliances (`stats`) and measure them (`bench`).

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use protocol::noise::Cipher;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tmemctl::bench::{run_phase, Backend, BenchConfig, Op, PhaseResult, TmemBackend};
use tmemctl::client::Client;
use tmemctl::corpus::Corpus;
use tmemctl::memcached::MemcachedBackend;
use tmemctl::secure::Identity;
use tmemctl::stats;

#[derive(Parser)]
#[command(
    name = "tmemctl",
    version,
    about = "Operate and benchmark tmem appliances"
)]
struct Cli {
    /// Appliance address(es), HOST:PORT; repeat or comma-separate for several.
    #[arg(
        long,
        short,
        global = true,
        value_delimiter = ',',
        default_value = "127.0.0.1:7777"
    )]
    target: Vec<String>,
    /// Client id to say HELLO as (decimal or 0x hex). Default: a per-process observer id.
    #[arg(long, global = true, value_parser = parse_client_id)]
    client_id: Option<u64>,
    /// Keys file (the appliance's format, `CLIENT_ID KEY_HEX` lines): authenticate as
    /// `--client-id`, or as the file's only client. The key can also come from `TMEM_KEY` (hex).
    #[arg(long, global = true, value_name = "FILE")]
    key_file: Option<std::path::PathBuf>,
    /// AEAD of keyed sessions: auto is AES-256-GCM where the CPU has AES instructions,
    /// ChaCha20-Poly1305 elsewhere.
    #[arg(long, global = true, value_enum, default_value_t = CipherArg::Auto)]
    cipher: CipherArg,
    #[command(subcommand)]
    command: Command,
}

/// `--cipher` values.
#[derive(Clone, Copy, clap::ValueEnum)]
enum CipherArg {
    Auto,
    #[value(name = "aes-256-gcm")]
    AesGcm,
    #[value(name = "chacha20-poly1305")]
    ChaChaPoly,
}

impl CipherArg {
    fn cipher(self) -> Cipher {
        match self {
            CipherArg::Auto => tmemctl::secure::preferred_cipher(),
            CipherArg::AesGcm => Cipher::AesGcm,
            CipherArg::ChaChaPoly => Cipher::ChaChaPoly,
        }
    }
}

fn parse_client_id(s: &str) -> Result<u64, String> {
    protocol::keyfile::parse_client_id(s).ok_or_else(|| "decimal or 0x hex".into())
}

#[derive(Subcommand)]
enum Command {
    /// Show appliance counters.
    Stats {
        /// JSON output (one object per appliance, as a JSON array).
        #[arg(long)]
        json: bool,
        /// Prometheus text format.
        #[arg(long, conflicts_with = "json")]
        prometheus: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
    },
    /// Put N pages, get them all back, verify every byte, report throughput and latency.
    Bench(BenchArgs),
    /// On a client machine: kclient's counters (debugfs) and parameters (sysfs).
    Client {
        /// JSON output.
        #[arg(long)]
        json: bool,
        /// Refresh every N seconds until interrupted.
        #[arg(long, value_name = "SECS")]
        watch: Option<u64>,
        /// Counters file (default: kclient's debugfs file).
        #[arg(long, default_value = tmemctl::kclient_view::STATS_FILE)]
        stats_file: std::path::PathBuf,
    },
    /// Make a client key: prints the line for the appliance's --keys file and the kclient
    /// parameters (keep them secret; give each client machine its own).
    Keygen,
    /// Run the protocol conformance and robustness checks against the appliance (uses its own
    /// client id; sends deliberately broken frames; leaves nothing behind).
    Check {
        /// For an appliance with keys: the suite's test keys come from this seed (the appliance
        /// must have been given the same ones: `tmemctl check --print-suite-keys SEED`).
        #[arg(long)]
        suite_keys_seed: Option<u64>,
        /// Print the suite's `CLIENT_ID KEY_HEX` lines for `--suite-keys-seed` and exit.
        #[arg(long)]
        print_suite_keys: bool,
        /// The appliance's --frame-timeout in seconds (the stalled-peer check waits that long).
        #[arg(long, default_value_t = 30)]
        frame_timeout: u64,
        /// Idle connections to hold open during the check.
        #[arg(long, default_value_t = 200)]
        idle_connections: usize,
        /// How long one read or write may wait, in seconds (raise it for a slow VM).
        #[arg(long, default_value_t = tmemctl::conformance::DEFAULT_IO_TIMEOUT.as_secs())]
        io_timeout: u64,
    },
}

#[derive(clap::Args)]
struct BenchArgs {
    /// Pages to put and get back.
    #[arg(long, default_value_t = 100_000)]
    pages: u64,
    /// Connections, one thread each.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Requests in flight per connection.
    #[arg(long, default_value_t = 16)]
    depth: usize,
    /// Pages per request (BATCH frames; memcached: pipelined sets / multi-get).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Page contents: synthetic, process (live memory of a Python process), or a directory of files.
    #[arg(long, default_value = "synthetic")]
    corpus: String,
    /// Server protocol: a tmem appliance or memcached (for side-by-side comparison).
    #[arg(long, value_enum, default_value_t = Server::Tmem)]
    server: Server,
    /// PID of the server process, to report its resident memory per stored page.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Compress on the client and send LZ4 pages (the appliance verifies them).
    #[arg(long)]
    client_lz4: bool,
    /// Fail if the run takes longer than this.
    #[arg(long, default_value_t = 600)]
    max_seconds: u64,
    /// Keep the pages on the appliance afterwards.
    #[arg(long)]
    keep: bool,
}

#[derive(Clone, Copy, ValueEnum, PartialEq, Eq, Debug)]
enum Server {
    Tmem,
    Memcached,
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Command::Stats {
            json,
            prometheus,
            watch,
        } => run_stats(&cli.target, &identity(&cli)?, *json, *prometheus, *watch),
        Command::Bench(args) => {
            let id = identity(&cli)?;
            run_bench(&cli.target[0], args, id.key.map(|_| id))
        }
        Command::Keygen => keygen(cli.client_id),
        Command::Client {
            json,
            watch,
            stats_file,
        } => run_client_view(*json, *watch, stats_file),
        Command::Check {
            frame_timeout,
            idle_connections,
            io_timeout,
            suite_keys_seed,
            print_suite_keys,
        } => {
            let keys = suite_keys_seed.map(tmemctl::conformance::suite_keys);
            if *print_suite_keys {
                let keys = keys.context("--print-suite-keys needs --suite-keys-seed")?;
                let mut ids: Vec<_> = keys.keys().copied().collect();
                ids.sort();
                for id in ids {
                    println!("{id:#x} {}", hex::encode(keys[&id]));
                }
                return Ok(());
            }
            let opts = tmemctl::conformance::Options {
                frame_timeout: Duration::from_secs(*frame_timeout),
                idle_connections: *idle_connections,
                io_timeout: Duration::from_secs(*io_timeout),
                keys,
            };
            for t in &cli.target {
                println!("checking {t}");
                tmemctl::conformance::run_all(t, &opts, |name, r| match r {
                    Ok(()) => println!("  ok    {name}"),
                    Err(e) => println!("  FAIL  {name}: {e:#}"),
                })?;
            }
            Ok(())
        }
    }
}

fn fetch_stats(target: &str, id: &Identity) -> Result<Vec<u64>> {
    Client::connect_as(target, id, Duration::from_secs(5))?.stats()
}

/// Who to say HELLO as: `--client-id` (default an observer id) with the key from `--key-file`
/// or `TMEM_KEY`, if any.
fn identity(cli: &Cli) -> Result<Identity> {
    let from_env = std::env::var("TMEM_KEY").ok();
    let (id, key) = match (&cli.key_file, from_env) {
        (Some(path), _) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading keys file {}", path.display()))?;
            let mut found = Vec::new();
            for (n, line) in text.lines().enumerate() {
                if let Some(entry) = protocol::keyfile::parse_line(line)
                    .map_err(|e| anyhow::anyhow!("{}:{}: {e}", path.display(), n + 1))?
                {
                    found.push(entry);
                }
            }
            let entry = match cli.client_id {
                Some(id) => found
                    .into_iter()
                    .find(|(i, _)| *i == id)
                    .with_context(|| format!("{}: no key for client {id:#x}", path.display()))?,
                None if found.len() == 1 => found[0],
                None => bail!(
                    "{} has {} keys: say which client with --client-id",
                    path.display(),
                    found.len()
                ),
            };
            (entry.0, Some(entry.1))
        }
        (None, Some(hex)) => {
            let key =
                protocol::keyfile::parse_key_hex(hex.trim()).context("TMEM_KEY: 64 hex digits")?;
            let id = cli.client_id.context("TMEM_KEY needs --client-id")?;
            (id, Some(key))
        }
        (None, None) => (cli.client_id.unwrap_or_else(stats_client_id), None),
    };
    Ok(Identity {
        client_id: id,
        key,
        cipher: cli.cipher.cipher(),
    })
}

fn keygen(client_id: Option<u64>) -> Result<()> {
    let id = match client_id {
        Some(id) => id,
        None => u64::from_le_bytes(tmemctl::secure::random_key()?[..8].try_into()?) | 1,
    };
    let key = hex::encode(tmemctl::secure::random_key()?);
    println!("# appliance: add this line to its --keys file (or pass --key {id:#x}:{key})");
    println!("{id:#x} {key}");
    println!("# client: load kclient with");
    println!("#   client_id={id:#x} key={key}");
    Ok(())
}

/// Observers use their own client id, so they never see or touch another client's pools.
fn stats_client_id() -> u64 {
    0x7374_6174_7300_0000 | std::process::id() as u64
}

fn run_stats(
    targets: &[String],
    id: &Identity,
    json: bool,
    prometheus: bool,
    watch: Option<u64>,
) -> Result<()> {
    // --watch is bounded too: at most a day of refreshes.
    let rounds = if watch.is_some() { 86_400 } else { 1 };
    for round in 0..rounds {
        let mut docs = Vec::new();
        let mut failed = 0;
        if watch.is_some() {
            print!("\x1b[2J\x1b[H");
        }
        for t in targets {
            match fetch_stats(t, id) {
                Ok(v) if json => docs.push(stats::json(t, &v)),
                Ok(v) if prometheus => print!("{}", stats::prometheus(t, &v)),
                Ok(v) => print!("{}", stats::table(t, &v)),
                Err(e) => {
                    failed += 1;
                    eprintln!("{t}: {e:#}");
                }
            }
        }
        if json {
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        match watch {
            Some(secs) if round + 1 < rounds => {
                std::thread::sleep(Duration::from_secs(secs.max(1)))
            }
            _ if failed > 0 => bail!("{failed} of {} appliances did not answer", targets.len()),
            _ => {}
        }
    }
    Ok(())
}

fn run_client_view(json: bool, watch: Option<u64>, stats_file: &std::path::Path) -> Result<()> {
    use tmemctl::kclient_view::{read_params, read_stats, table, PARAMS_DIR};
    let rounds = if watch.is_some() { 86_400 } else { 1 };
    for round in 0..rounds {
        let stats = read_stats(stats_file)?;
        let params = read_params(std::path::Path::new(PARAMS_DIR));
        if json {
            let mut m = serde_json::Map::new();
            for (k, v) in &params {
                m.insert(k.clone(), serde_json::Value::from(v.as_str()));
            }
            for (k, v) in &stats.counters {
                m.insert(k.clone(), serde_json::Value::from(*v));
            }
            let apps: Vec<serde_json::Value> = stats
                .appliances
                .iter()
                .map(|fields| {
                    serde_json::Value::Object(
                        fields
                            .iter()
                            .map(|(k, v)| {
                                let val = v
                                    .parse::<u64>()
                                    .map(serde_json::Value::from)
                                    .unwrap_or_else(|_| serde_json::Value::from(v.as_str()));
                                (k.clone(), val)
                            })
                            .collect(),
                    )
                })
                .collect();
            m.insert("appliances".into(), serde_json::Value::Array(apps));
            println!("{}", serde_json::Value::Object(m));
        } else {
            if watch.is_some() {
                print!("\x1b[2J\x1b[H");
            }
            print!("{}", table(&params, &stats));
        }
        if let Some(secs) = watch.filter(|_| round + 1 < rounds) {
            std::thread::sleep(Duration::from_secs(secs.max(1)));
        }
    }
    Ok(())
}

fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn load_corpus(spec: &str, pages: u64) -> Result<Corpus> {
    let distinct = pages.clamp(1, 16_384) as usize;
    match spec {
        "synthetic" => Ok(Corpus::synthetic(distinct, 0x5eed)),
        "process" => Corpus::from_process(distinct),
        dir => Corpus::from_dir(std::path::Path::new(dir), distinct),
    }
}

/// `keyed`: the identity every connection authenticates as (each its own pool); without it each
/// connection uses its own id, unauthenticated.
fn run_bench(target: &str, a: &BenchArgs, keyed: Option<Identity>) -> Result<()> {
    if a.pages == 0 || a.threads == 0 || a.depth == 0 || a.batch == 0 {
        bail!("--pages, --threads, --depth and --batch must be at least 1");
    }
    if a.batch > protocol::MAX_BATCH {
        bail!("--batch is at most {}", protocol::MAX_BATCH);
    }
    let corpus =
        Arc::new(load_corpus(&a.corpus, a.pages).with_context(|| format!("corpus {}", a.corpus))?);
    let cfg = BenchConfig {
        pages: a.pages,
        threads: a.threads,
        depth: a.depth,
        batch: a.batch,
        client_lz4: a.client_lz4,
        max_time: Duration::from_secs(a.max_seconds),
        progress: true,
    };
    eprintln!(
        "bench: {} pages ({} distinct, corpus {}) against {:?} at {target}, {} threads x depth {} x batch {}",
        a.pages, corpus.len(), corpus.name, a.server, a.threads, a.depth, a.batch
    );
    match a.server {
        Server::Tmem => {
            let run_id = std::process::id() as u64;
            let id_for = |t: usize| {
                keyed
                    .clone()
                    .unwrap_or_else(|| Identity::insecure((run_id << 16) | t as u64))
            };
            let backends = (0..a.threads)
                .map(|t| TmemBackend::connect(target, &id_for(t), a.client_lz4))
                .collect::<Result<Vec<_>>>()?;
            let observer = id_for(0xffff);
            bench_with(backends, &corpus, &cfg, a, || {
                let v = fetch_stats(target, &observer)?;
                Ok(stats::derived(&v)
                    .into_iter()
                    .chain(stats::named(&v).into_iter().map(|(k, v)| (k, v as f64)))
                    .collect())
            })
        }
        Server::Memcached => {
            let run_id = std::process::id();
            let backends = (0..a.threads)
                .map(|t| MemcachedBackend::connect(target, &format!("b{run_id}t{t}:")))
                .collect::<Result<Vec<_>>>()?;
            let target = target.to_string();
            bench_with(backends, &corpus, &cfg, a, move || {
                let mut m = MemcachedBackend::connect(&target, "")?;
                let s = m.stats()?;
                let num = |k: &str| {
                    s.iter()
                        .find(|(n, _)| n == k)
                        .and_then(|(_, v)| v.parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let items = num("curr_items").max(1.0);
                Ok(vec![
                    ("bytes_per_page".into(), num("bytes") / items),
                    ("pages".into(), num("curr_items")),
                ])
            })
        }
    }
}

fn bench_with<B: Backend + 'static>(
    mut backends: Vec<B>,
    corpus: &Arc<Corpus>,
    cfg: &BenchConfig,
    a: &BenchArgs,
    server_stats: impl Fn() -> Result<Vec<(String, f64)>>,
) -> Result<()> {
    let rss_before = rss_bytes(a.server_pid);
    let started = Instant::now();
    let put = run_phase(Op::Put, &mut backends, corpus, cfg)?;
    let rss_after = rss_bytes(a.server_pid);
    let after_put = server_stats()?;
    let get = run_phase(Op::Get, &mut backends, corpus, cfg)?;
    let total = started.elapsed();
    if !a.keep {
        for b in &mut backends {
            b.cleanup()?;
        }
    }
    let find = |k: &str| after_put.iter().find(|(n, _)| n == k).map(|(_, v)| *v);
    report("put", &put);
    report("get", &get);
    let mut latency = put.latency.clone();
    latency.add(&get.latency)?;
    let stored = (a.pages - put.errors).max(1) as f64;
    let mut summary = vec![
        format!("server={:?}", a.server).to_lowercase(),
        format!("corpus={}", corpus.name.split(':').next().unwrap_or("?")),
        format!("pages={}", a.pages),
        format!("threads={} depth={} batch={}", a.threads, a.depth, a.batch),
        format!(
            "put_ops_s={:.0} get_ops_s={:.0}",
            put.ops_per_sec(),
            get.ops_per_sec()
        ),
        format!(
            "ops_s={:.0}",
            2.0 * a.pages as f64 / (put.elapsed + get.elapsed).as_secs_f64()
        ),
        format!(
            "mib_s={:.1}",
            2.0 * a.pages as f64 * 4096.0
                / (1 << 20) as f64
                / (put.elapsed + get.elapsed).as_secs_f64()
        ),
        format!(
            "p50_us={:.0} p99_us={:.0} p999_us={:.0}",
            latency.value_at_quantile(0.5) as f64 / 1e3,
            latency.value_at_quantile(0.99) as f64 / 1e3,
            latency.value_at_quantile(0.999) as f64 / 1e3
        ),
    ];
    for k in [
        "compression_ratio",
        "bytes_per_page",
        "allocator_efficiency",
    ] {
        if let Some(v) = find(k) {
            summary.push(format!("{k}={v:.3}"));
        }
    }
    if let (Some(before), Some(after)) = (rss_before, rss_after) {
        summary.push(format!(
            "rss_bytes_per_page={:.0}",
            after.saturating_sub(before) as f64 / stored
        ));
    }
    summary.push(format!("seconds={:.2}", total.as_secs_f64()));
    summary.push(format!(
        "refused={} mismatches={}",
        put.errors, get.mismatches
    ));
    println!("{}", summary.join(" "));
    if get.mismatches > 0 {
        bail!(
            "{} pages read back differ from what was written",
            get.mismatches
        );
    }
    Ok(())
}

fn report(name: &str, r: &PhaseResult) {
    eprintln!(
        "{name}: {} pages in {:.2}s = {:.0} pages/s, {:.1} MiB/s; latency p50 {:.0}us p99 {:.0}us p999 {:.0}us; {} refused/missing, {} mismatched",
        r.pages,
        r.elapsed.as_secs_f64(),
        r.ops_per_sec(),
        r.mib_per_sec(),
        r.percentile_us(0.5),
        r.percentile_us(0.99),
        r.percentile_us(0.999),
        r.errors,
        r.mismatches
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `--cipher` takes the names the protocol gives the ciphers (what `cargo xtask bench` passes
    /// and the appliance logs), each meaning that cipher.
    #[test]
    fn cipher_option_takes_the_protocol_names() {
        for c in Cipher::ALL {
            let arg = CipherArg::from_str(c.name(), false).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(arg.cipher(), c);
        }
        assert!(CipherArg::from_str("aes-128-gcm", false).is_err());
    }
}
