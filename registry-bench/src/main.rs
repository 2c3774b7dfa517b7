//! `registry-bench`: registry-rs measured against each registry's own client, side by side,
//! in one run.
//!
//! Every measurement does the same work twice, once through our API (`registry::connect(url)`
//! and the `Registry`/`Watcher` calls) and once through the registry's raw client, A/B
//! interleaved (ours first on even samples, raw first on odd ones), and reports for each arm
//! p50 and p99, and the median of the paired ratios ours/raw. Nothing is asserted: it prints
//! a table on standard output (Markdown) and, with `--json FILE`, every figure as JSON.
//!
//! # What it measures
//!
//! For every backend (etcd, Consul, ZooKeeper, Nacos; `memory://` without a raw arm):
//!
//! - register a new id; update it (register again with changed metadata); deregister it;
//! - get of a 10-instance service (the raw arm reads and decodes the same data);
//! - change → watcher sees it: one instance of that service is written with the raw client
//!   (the same write in both arms), timed until our watcher, or the raw client's watch, shows
//!   it; both watchers follow throughout;
//! - 200 registrations from one handle, 32 at a time;
//! - scale (`--scale-counts`, data written in bulk with the raw client, deleted afterwards):
//!   get of each count; at the largest count, the first watch list (a new handle or client
//!   per sample, connecting untimed) and one change reaching the watcher;
//! - on `memory://` and etcd: `--watchers` local watchers of a 100-instance service, the
//!   memory they add (`VmRSS` before and after) and the time for one change to reach all;
//! - a killed owner: this binary run again as an owner process (`registry-bench owner URL
//!   JSON`), killed with SIGKILL, timed until `get_service` no longer lists its instance,
//!   against the TTL it registered with (`--ttl`).
//!
//! The raw arms, and what each does, are described at the top of each file in `src/raw/`.
//!
//! The binary also runs as three child processes of its own: `owner` (the killed owner),
//! `watchers` (the local watchers, in a process of their own so that `VmRSS` grows with
//! them and not into heap earlier items freed) and `nacos-bulk` (it holds Nacos' bulk
//! instances: nacos-sdk cannot close a connection, so they are deleted by ending it).
//!
//! # Running it
//!
//! ```sh
//! scripts/backends up
//! cargo run --release -p registry-bench -- --json bench.json          # the full run
//! cargo run --release -p registry-bench -- --quick --strict           # the CI smoke run
//! cargo run --release -p registry-bench -- --backends etcd --items scale-get --scale-counts 10000
//! ```
//!
//! Names are unique per run (`bench-<hex>`: etcd namespace, ZooKeeper root, Nacos namespace,
//! Consul service and node names), so runs never see each other; what a run writes is
//! deleted at its end. Our URLs raise the request timeouts (`timeout=60s`, ZooKeeper's
//! `connect_timeout=60s`) and `watch_timeout` (120 s), so that big services measure speed,
//! not a default deadline.
//!
//! # Dependencies, and why
//!
//! - `registry` (all backends): what is measured.
//! - `etcd-client`: etcd's most used Rust client, the one the etcd backend's tests check
//!   against (it needs `protoc` to build, as those tests do).
//! - `reqwest`: Consul has no official Rust client; its HTTP API is what every client calls,
//!   and reqwest is what the Consul backend and the suite's hooks already use.
//! - `zookeeper-client`: the ZooKeeper client our backend uses, called directly.
//! - `nacos-sdk`: Nacos' official Rust client, the one our backend wraps, called directly.
//! - `tokio`, `futures`, `async-trait`: the runtime and the raw clients' common trait.
//! - `serde`, `serde_json`: the raw arms decode what they read the way a raw user would,
//!   and the JSON output.
//! - `clap`: the flags (already in the workspace, for `registryctl`).
//! - `anyhow`: errors with context in a binary; no network result is unwrapped.
//! - `tempfile`: nacos-sdk's cache directory.
//! - `tracing-subscriber`: the backends' warnings (`RUST_LOG`, default `warn`, nacos-sdk's
//!   own retries left out).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use clap::Parser;
use serde_json::json;

mod fanout;
mod items;
mod model;
mod owner;
mod raw;
mod scale;
mod stats;

use items::{Bench, Opts};
use raw::{Raw, Writer};
use stats::Row;

/// The item groups, in the order they run.
const ITEMS: [&str; 6] = [
    "base",
    "batch",
    "scale-get",
    "scale-watch",
    "watchers",
    "owner",
];

/// registry-rs against each registry's own client, side by side (see the crate docs).
#[derive(Debug, Parser)]
#[command(name = "registry-bench")]
struct Args {
    /// The backends to measure, comma-separated: etcd, consul, zookeeper, nacos, memory.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "etcd,consul,zookeeper,nacos,memory"
    )]
    backends: Vec<String>,
    /// The item groups to run, comma-separated: base, batch, scale-get, scale-watch,
    /// watchers, owner (or all).
    #[arg(long, value_delimiter = ',', default_value = "all")]
    items: Vec<String>,
    /// Samples per arm of the per-call items [default: 200; --quick: 5].
    #[arg(long)]
    samples: Option<usize>,
    /// Samples per arm of the scale items and of the 200-registration batches; counts
    /// above 10,000 take half as many, at least 3 [default: 10; --quick: 2].
    #[arg(long)]
    scale_samples: Option<usize>,
    /// Instance counts of the scale items [default: 10000,100000; --quick: 100].
    #[arg(long, value_delimiter = ',')]
    scale_counts: Option<Vec<usize>>,
    /// Local watchers of the fan-out item [default: 10000; --quick: 100].
    #[arg(long)]
    watchers: Option<usize>,
    /// The TTL (ZooKeeper: session timeout) of the killed owners, in seconds [default: 5;
    /// --quick: 2].
    #[arg(long)]
    ttl: Option<u64>,
    /// Skip a scale count whose bulk set-up is projected (from the previous count's rate)
    /// to take longer than this, in seconds.
    #[arg(long, default_value_t = 300)]
    setup_budget: u64,
    /// Tiny counts, for the CI smoke run.
    #[arg(long)]
    quick: bool,
    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Exit with status 1 when a measurement failed (skipped ones do not count), after
    /// printing everything: for the CI smoke run.
    #[arg(long)]
    strict: bool,
    /// etcd's client address.
    #[arg(long, default_value = "127.0.0.1:2379")]
    etcd: String,
    /// Consul's HTTP address.
    #[arg(long, default_value = "127.0.0.1:8500")]
    consul: String,
    /// ZooKeeper's client address.
    #[arg(long, default_value = "127.0.0.1:2181")]
    zookeeper: String,
    /// Nacos' HTTP address (gRPC is port + 1000).
    #[arg(long, default_value = "127.0.0.1:8848")]
    nacos: String,
}

impl Args {
    fn opts(&self) -> Result<Opts> {
        let q = self.quick;
        let items: Vec<String> = self.items.iter().map(|i| i.trim().to_owned()).collect();
        for item in &items {
            if item != "all" && !ITEMS.contains(&item.as_str()) {
                bail!(
                    "unknown item group {item:?} (known: {}, all)",
                    ITEMS.join(", ")
                );
            }
        }
        let pick = |given: Option<usize>, quick: usize, full: usize| {
            given.unwrap_or(if q { quick } else { full })
        };
        let scale_samples = pick(self.scale_samples, 2, 10);
        Ok(Opts {
            samples: pick(self.samples, 5, 200),
            scale_samples,
            scale_counts: self.scale_counts.clone().unwrap_or_else(|| {
                if q {
                    vec![100]
                } else {
                    vec![10_000, 100_000]
                }
            }),
            watchers: pick(self.watchers, 100, 10_000),
            fanout_samples: if q { 2 } else { 10 },
            batch_samples: scale_samples,
            owner_samples: if q { 1 } else { 3 },
            ttl: Duration::from_secs(self.ttl.unwrap_or(if q { 2 } else { 5 })),
            setup_budget: Duration::from_secs(self.setup_budget),
            items,
        })
    }
}

fn main() -> ExitCode {
    // The child modes: an owner process, Nacos' bulk holder, the watchers item.
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let (mode, child_args) = match argv.split_first() {
        Some((mode, rest)) => (Some(mode.as_str()), rest),
        None => (None, &[][..]),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("registry-bench: tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // nacos-sdk warns about its own retries (disk cache writes, reconnects).
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,nacos_sdk=off")),
        )
        .init();
    let result =
        match (mode, child_args) {
            (Some("owner"), [url, json]) => runtime.block_on(owner::run_owner(url, json)),
            (Some("owner"), _) => Err(anyhow::anyhow!(
                "usage: registry-bench owner URL INSTANCE_JSON"
            )),
            (Some("nacos-bulk"), [server, namespace, cache]) => runtime.block_on(
                raw::nacos::run_bulk(server, namespace, std::path::Path::new(cache)),
            ),
            (Some("nacos-bulk"), _) => Err(anyhow::anyhow!(
                "usage: registry-bench nacos-bulk SERVER NAMESPACE CACHE_DIR < INSTANCES_JSON_LINE"
            )),
            (Some("watchers"), args) => runtime.block_on(fanout::run_watchers(args)),
            _ => runtime.block_on(run(Args::parse())),
        };
    // nacos-sdk's tasks never end on their own: do not wait for them.
    runtime.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `bench-<hex>`, unique per run.
fn run_name() -> String {
    let millis = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let mixed = (millis ^ (u64::from(std::process::id()) << 40)) & 0xffff_ffff_ffff;
    format!("bench-{mixed:x}")
}

/// Our URL of `backend`, its raw client (or `memory://`'s second handle).
async fn connect(
    backend: &str,
    args: &Args,
    run: &str,
    cache: &std::path::Path,
) -> Result<(String, Arc<dyn Writer>, Option<Arc<dyn Raw>>)> {
    const RAW_TTL: i64 = 60;
    let (url, raw): (String, Arc<dyn Raw>) = match backend {
        "etcd" => (
            format!("etcd://{}/{run}?timeout=60s&watch_timeout=120s", args.etcd),
            Arc::new(raw::etcd::EtcdRaw::connect(&args.etcd, &format!("/{run}"), RAW_TTL).await?),
        ),
        "consul" => (
            format!("consul://{}?timeout=60s&watch_timeout=120s", args.consul),
            Arc::new(raw::consul::ConsulRaw::new(
                &args.consul,
                run,
                Duration::from_secs(RAW_TTL as u64),
            )?),
        ),
        "zookeeper" => (
            format!(
                "zk://{}/{run}?connect_timeout=60s&watch_timeout=120s",
                args.zookeeper
            ),
            Arc::new(raw::zookeeper::ZkRaw::connect(&args.zookeeper, &format!("/{run}")).await?),
        ),
        "nacos" => (
            format!("nacos://{}?namespace={run}&watch_timeout=120s", args.nacos),
            Arc::new(raw::nacos::NacosRaw::connect(&args.nacos, run, cache).await?),
        ),
        "memory" => {
            let url = format!("memory://{run}");
            let writer = raw::memory::MemoryWriter::connect(&url).await?;
            return Ok((url, Arc::new(writer), None));
        }
        other => bail!("unknown backend {other:?} (known: etcd, consul, zookeeper, nacos, memory)"),
    };
    let writer: Arc<dyn Writer> = raw.clone();
    Ok((url, writer, Some(raw)))
}

/// Every item of one backend; then what it wrote is deleted.
async fn bench_backend(
    backend: &'static str,
    args: &Args,
    opts: &Opts,
    run: &str,
    cache: &std::path::Path,
) -> Vec<Row> {
    let (url, writer, raw) = match connect(backend, args, run, cache).await {
        Ok(connected) => connected,
        Err(e) => {
            return vec![Row::failed(
                backend,
                "connect",
                "connect the raw client",
                &e,
            )]
        }
    };
    let ours = match registry::connect(&url).await {
        Ok(ours) => ours,
        Err(e) => {
            let e = anyhow::Error::new(e).context(format!("connect {url}"));
            return vec![Row::failed(backend, "connect", "registry::connect", &e)];
        }
    };
    let mut bench = Bench {
        backend,
        url,
        ours,
        writer,
        raw,
        run: run.to_owned(),
        opts: opts.clone(),
        rows: Vec::new(),
    };
    if bench.wants("base") {
        bench.base().await;
    }
    if bench.wants("batch") {
        bench.batch().await;
    }
    if bench.raw.is_some() && (bench.wants("scale-get") || bench.wants("scale-watch")) {
        bench.scale().await;
    }
    if matches!(backend, "memory" | "etcd") && bench.wants("watchers") {
        bench.fanout(&args.etcd).await;
    }
    if bench.wants("owner") {
        bench.owner_killed().await;
    }
    if let Err(e) = bench.ours.close().await {
        eprintln!("registry-bench: {backend}: close: {e}");
    }
    if let Err(e) = bench.writer.cleanup().await {
        eprintln!("registry-bench: {backend}: cleanup: {e:#}");
    }
    bench.rows
}

/// The load average (1, 5 and 15 minutes) of `/proc/loadavg`: the machine may be shared.
fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The machine, for the record.
fn machine() -> serde_json::Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned());
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .map(|v| v.trim().to_owned());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .ok();
    json!({
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).ok(),
        "memory": memory,
        "kernel": kernel,
    })
}

async fn run(args: Args) -> Result<()> {
    let opts = args.opts()?;
    let run = run_name();
    let cache = tempfile::Builder::new()
        .prefix("registry-bench-nacos-")
        .tempdir()
        .context("nacos-sdk cache directory")?;
    let load_before = load();
    eprintln!("registry-bench: run {run}, load average {load_before}, {opts:?}");
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut took = serde_json::Map::new();
    for backend in &args.backends {
        let backend: &'static str = match backend.trim() {
            "etcd" => "etcd",
            "consul" => "consul",
            "zookeeper" | "zk" => "zookeeper",
            "nacos" => "nacos",
            "memory" => "memory",
            other => {
                bail!("unknown backend {other:?} (known: etcd, consul, zookeeper, nacos, memory)")
            }
        };
        let start = Instant::now();
        eprintln!("registry-bench: {backend}…");
        rows.extend(bench_backend(backend, &args, &opts, &run, cache.path()).await);
        took.insert(backend.to_owned(), json!(start.elapsed().as_secs_f64()));
    }
    let total = started.elapsed();
    let load_after = load();
    println!("{}", stats::table(&rows));
    println!(
        "run {run}: {:.1} s ({}), {}; load average {load_before} before, {load_after} after",
        total.as_secs_f64(),
        took.iter()
            .map(|(b, s)| format!("{b} {:.1} s", s.as_f64().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join(", "),
        if args.quick { "--quick" } else { "full counts" }
    );
    if let Some(path) = &args.json {
        let report = json!({
            "run": run,
            "quick": args.quick,
            "options": format!("{opts:?}"),
            "machine": machine(),
            "load_average_before": load_before,
            "load_average_after": load_after,
            "seconds": total.as_secs_f64(),
            "seconds_per_backend": took,
            "rows": rows,
        });
        let text = serde_json::to_string_pretty(&report).context("JSON")?;
        std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
        eprintln!("registry-bench: wrote {}", path.display());
    }
    let failed: Vec<String> = rows
        .iter()
        .filter(|r| r.error.is_some())
        .map(|r| format!("{} {}", r.backend, r.item))
        .collect();
    if args.strict && !failed.is_empty() {
        bail!(
            "{} measurements failed: {}",
            failed.len(),
            failed.join(", ")
        );
    }
    Ok(())
}
