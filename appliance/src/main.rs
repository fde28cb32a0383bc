//! `appliance --listen ADDR --memory SIZE`: the tmem memory server (host mode, and the Hermit image).

use anyhow::{Context, Result};
use appliance::auth::AuthConfig;
use appliance::codec::DEFAULT_RAW_THRESHOLD;
use appliance::keys::KeyRing;
use appliance::server::{IoModel, Server, ServerConfig};
use appliance::store::{Store, StoreConfig};
use clap::Parser;
use std::net::ToSocketAddrs;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "appliance",
    version,
    about = "tmem memory server: keeps clients' pages compressed in RAM"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:7777")]
    listen: String,
    /// Memory for pages and their metadata, e.g. 256MiB, 2GiB, 1.5G; on the appliance image also
    /// `auto`: all the heap holds but the headroom connections and the network need.
    #[arg(long, default_value = "256MiB", value_parser = parse_memory)]
    memory: Memory,
    /// Most memory one client may use (same units); unlimited if absent.
    #[arg(long, value_parser = parse_size)]
    client_quota: Option<u64>,
    /// Pages whose compressed size exceeds this many bytes are stored raw.
    #[arg(long, default_value_t = DEFAULT_RAW_THRESHOLD)]
    raw_threshold: usize,
    /// Connections beyond this are refused.
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Seconds a client may take to finish sending a frame, or to read our replies.
    #[arg(long, default_value_t = 30)]
    frame_timeout: u64,
    /// Also serve counters as Prometheus text at http://ADDR/metrics.
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// How connections are served: a thread per connection, or one event loop (default: threads on
    /// Linux, event loop on Hermit).
    #[arg(long, value_enum)]
    io_model: Option<IoModel>,
    /// Event loops (with the event-loop model), each serving its share of the connections on its
    /// own thread (default: one per core).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=256))]
    event_loops: Option<u16>,
    /// Client keys: a file of `CLIENT_ID KEY_HEX` lines (`tmemctl keygen` makes them). Clients
    /// then authenticate and every byte is encrypted (docs/security.md).
    #[arg(long, value_name = "FILE")]
    keys: Option<std::path::PathBuf>,
    /// One client key, `CLIENT_ID:KEY_HEX` (repeatable; how the Hermit image gets its keys).
    #[arg(long, value_name = "ID:HEX")]
    key: Vec<String>,
    /// Also serve clients without credentials, in clear. Needed to listen on a non-loopback
    /// address without keys; never needed with keys.
    #[arg(long)]
    insecure: bool,
    /// On a start-up error, print it and halt instead of exiting (the image booted from tmem.conf
    /// passes this, so the message stays on the screen rather than the machine powering off).
    #[arg(long)]
    halt_on_error: bool,
    /// Log level: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// `--memory`: a size, or `auto`.
#[derive(Clone, Copy, Debug)]
enum Memory {
    Auto,
    Size(u64),
}

fn parse_memory(s: &str) -> Result<Memory, String> {
    match s {
        "auto" => Ok(Memory::Auto),
        _ => parse_size(s).map(Memory::Size),
    }
}

fn parse_size(s: &str) -> Result<u64, String> {
    parse_size::Config::new()
        .with_binary()
        .parse_size(s)
        .map_err(|e| format!("{e} (examples: 256MiB, 2GiB, 1.5G)"))
}

fn main() -> Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let halt_on_error = args.halt_on_error;
    let result = serve(args);
    if let (Err(e), true) = (&result, halt_on_error) {
        halt(e);
    }
    result
}

/// On the image, a listener fails first of all when the kernel found no network card it drives.
#[cfg(target_os = "hermit")]
const NO_NIC_HINT: &str = " (has this machine a network card the image drives, virtio-net or \
    Intel 82574L? docs/deploy.md)";
#[cfg(not(target_os = "hermit"))]
const NO_NIC_HINT: &str = "";

/// A line on stdout for the operator and for scripts. A reader that stopped reading (a script
/// that took the first line and closed the pipe) must not stop the server, as `println!` would.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

/// Shows a start-up error and stops here: no exit, so no power-off that would clear the screen.
fn halt(e: &anyhow::Error) -> ! {
    println!("appliance: cannot start: {e:#}");
    println!("appliance: halted; fix the settings (tmem.conf) and restart the machine");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The store limit `--memory` asks for.
fn memory_limit(memory: Memory) -> Result<usize> {
    match memory {
        Memory::Size(bytes) => usize::try_from(bytes).context("--memory too large"),
        #[cfg(target_os = "hermit")]
        Memory::Auto => Ok(appliance::store::budget_within_heap(
            usize::MAX,
            appliance::hermit_heap::kernel_heap_available(),
        )),
        #[cfg(not(target_os = "hermit"))]
        Memory::Auto => anyhow::bail!(
            "--memory auto is for the appliance image; on Linux give a size (e.g. 8GiB)"
        ),
    }
}

fn serve(args: Args) -> Result<()> {
    let memory_limit = memory_limit(args.memory)?;
    #[cfg(target_os = "hermit")]
    let memory_limit = {
        let heap = appliance::hermit_heap::kernel_heap_available();
        let budget = appliance::store::budget_within_heap(memory_limit, heap);
        if budget < memory_limit {
            tracing::warn!(
                requested = memory_limit,
                heap,
                budget,
                "--memory is more than this VM's heap can hold: store capped"
            );
            println!(
                "appliance: store capped at {} MiB (asked {} MiB; the VM's heap has {} MiB)",
                budget >> 20,
                memory_limit >> 20,
                heap >> 20
            );
        }
        budget
    };
    let store = Arc::new(Store::new(StoreConfig {
        memory_limit,
        client_quota: args.client_quota.map(|q| q as usize),
        raw_threshold: args.raw_threshold.min(protocol::PAGE_SIZE),
    }));
    let auth = auth_config(&args)?;
    let summary = format!(
        "appliance {}: store of {} MiB, {} client key(s){}",
        env!("CARGO_PKG_VERSION"),
        memory_limit >> 20,
        auth.keys.len(),
        if auth.allow_unauthenticated {
            ", clients without keys served in clear"
        } else {
            ""
        }
    );
    let config = ServerConfig {
        max_connections: args.max_connections,
        frame_timeout: Duration::from_secs(args.frame_timeout.max(1)),
        io_model: args.io_model.unwrap_or_else(IoModel::platform_default),
        event_loops: args
            .event_loops
            .map_or_else(appliance::server::cores, usize::from),
        auth,
    };
    let server = Server::bind(&args.listen, store.clone(), config)
        .with_context(|| format!("cannot listen on {}{NO_NIC_HINT}", args.listen))?;
    // Hermit's sockets report 0.0.0.0:0 for a bound listener: show what was asked for instead.
    let addr = match server.local_addr()? {
        a if a.port() == 0 => args.listen.clone(),
        a => a.to_string(),
    };
    stop_on_signals(server.shutdown_handle())?;
    tracing::info!(%addr, memory = memory_limit, "listening");
    // Plain lines on stdout too (the image's screen shows them): scripts and tests read the
    // first, whose rest is the address.
    say(format_args!("appliance listening on {addr}"));
    if let Some(m) = &args.metrics_listen {
        let bound = appliance::metrics::spawn(m, store.clone(), server.net_counters())
            .with_context(|| format!("cannot serve metrics on {m}"))?;
        tracing::info!(%bound, "serving metrics");
        say(format_args!("appliance metrics on http://{bound}/metrics"));
    }
    say(format_args!("{summary}"));
    server.run()?;
    tracing::info!("stopped");
    Ok(())
}

/// Secure by default: without keys, only a loopback address may be served (and that in clear);
/// anything else needs `--insecure`, said by name.
fn auth_config(args: &Args) -> Result<AuthConfig> {
    let mut keys = match &args.keys {
        Some(path) => KeyRing::load(path)?,
        None => KeyRing::new(),
    };
    for k in &args.key {
        keys.add_arg(k)?;
    }
    let loopback_only = args
        .listen
        .to_socket_addrs()
        .map(|mut addrs| addrs.all(|a| a.ip().is_loopback()))
        .unwrap_or(false);
    let allow_unauthenticated = if args.insecure {
        true
    } else if keys.is_empty() {
        anyhow::ensure!(
            loopback_only,
            "refusing to serve {} without client keys: give --keys FILE or --key ID:HEX \
             (`tmemctl keygen` makes them), or --insecure to serve anyone in clear",
            args.listen
        );
        true
    } else {
        false
    };
    if allow_unauthenticated {
        tracing::warn!(
            listen = %args.listen,
            "insecure: clients without keys are served, unauthenticated and in clear"
        );
    }
    tracing::info!(clients_with_keys = keys.len(), "keys loaded");
    Ok(AuthConfig {
        keys,
        allow_unauthenticated,
    })
}

#[cfg(target_os = "linux")]
fn stop_on_signals(handle: appliance::server::ShutdownHandle) -> Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                tracing::info!(signal = sig, "signal received, shutting down");
                handle.shutdown();
            }
        })?;
    Ok(())
}

/// Hermit has no signals: the appliance VM is stopped by powering it off.
#[cfg(not(target_os = "linux"))]
fn stop_on_signals(_handle: appliance::server::ShutdownHandle) -> Result<()> {
    Ok(())
}
