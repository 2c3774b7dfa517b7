//! Many local watchers of one service: the memory they add (the process' `VmRSS` before and
//! after), and how long one change takes to reach them all.
//!
//! It runs in a process of its own (this binary as `registry-bench watchers BACKEND URL RUN
//! COUNT SAMPLES ETCD`, answering one JSON row on standard output), so that `VmRSS` grows
//! with the watchers and not into heap the earlier items freed.

use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use registry::Watcher;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tokio::sync::Notify;

use crate::items::{timed, Bench, Opts, CALL, SCALE};
use crate::model::{bulk, with_seq, TARGET};
use crate::raw::{seq_of, Writer};
use crate::stats::{Pairs, Row, Side};

/// Instances of the watched service.
const INSTANCES: usize = 100;

/// The resident set of this process, in bytes (`VmRSS` of `/proc/self/status`).
pub fn vm_rss() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("read /proc/self/status")?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS in /proc/self/status")?;
    Ok(kib * 1024)
}

/// The `seq` of the target in a watcher's list.
fn target_seq(list: &[registry::ServiceInstance]) -> u64 {
    list.binary_search_by(|x| x.id.as_str().cmp(TARGET))
        .map_or(0, |i| seq_of(list[i].metadata.get("seq")))
}

/// What one change's fan-out shares between the waiting tasks.
struct Fanout {
    left: AtomicUsize,
    last: Mutex<Option<Instant>>,
    done: Notify,
}

/// Waits in `watcher` until the target has `seq`, then counts itself done.
async fn wait_one(mut watcher: Watcher, seq: u64, fanout: Arc<Fanout>) -> Result<Watcher> {
    loop {
        let list = watcher.next().await?;
        if target_seq(&list) >= seq {
            break;
        }
    }
    if fanout.left.fetch_sub(1, Ordering::AcqRel) == 1 {
        *fanout.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
        fanout.done.notify_one();
    }
    Ok(watcher)
}

/// What the item is called in the results.
fn work(count: usize) -> String {
    format!("one change reaching {count} local watchers ({INSTANCES} instances)")
}

/// The watchers process: measures, and prints its row as one JSON line.
pub async fn run_watchers(args: &[String]) -> Result<()> {
    let [backend, url, run, count, samples, etcd] = args else {
        bail!("usage: registry-bench watchers BACKEND URL RUN COUNT SAMPLES ETCD_ENDPOINT");
    };
    let count: usize = count.parse().context("COUNT")?;
    let samples: usize = samples.parse().context("SAMPLES")?;
    let backend: &'static str = match backend.as_str() {
        "memory" => "memory",
        "etcd" => "etcd",
        other => bail!("the watchers item runs on memory and etcd, not {other}"),
    };
    let writer: Arc<dyn Writer> = match backend {
        "etcd" => Arc::new(crate::raw::etcd::EtcdRaw::connect(etcd, &format!("/{run}"), 60).await?),
        _ => Arc::new(crate::raw::memory::MemoryWriter::connect(url).await?),
    };
    let ours = registry::connect(url)
        .await
        .with_context(|| format!("connect {url}"))?;
    let bench = Bench {
        backend,
        url: url.clone(),
        ours,
        writer,
        raw: None,
        run: run.clone(),
        opts: Opts {
            watchers: count,
            fanout_samples: samples,
            ..Opts::default()
        },
        rows: Vec::new(),
    };
    let work = work(count);
    let item = format!("watchers-{count}");
    let row = bench
        .fanout_row(&work)
        .await
        .unwrap_or_else(|e| Row::failed(backend, &item, &work, &e));
    println!("{}", serde_json::to_string(&row).context("the row's JSON")?);
    let _ = bench.ours.close().await;
    Ok(())
}

impl Bench {
    /// `--watchers` local watchers of a 100-instance service from our handle, measured in
    /// a process of its own.
    pub async fn fanout(&mut self, etcd: &str) {
        let count = self.opts.watchers;
        let work = work(count);
        let row = self.fanout_child(etcd).await;
        self.record(&format!("watchers-{count}"), &work, row);
    }

    async fn fanout_child(&self, etcd: &str) -> Result<Row> {
        let exe = std::env::current_exe().context("this program's path")?;
        let child = Command::new(&exe)
            .arg("watchers")
            .args([self.backend, &self.url, &self.run])
            .arg(self.opts.watchers.to_string())
            .arg(self.opts.fanout_samples.to_string())
            .arg(etcd)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} watchers", exe.display()))?;
        let stdout = child
            .stdout
            .ok_or_else(|| anyhow!("the watchers process' stdout"))?;
        let line = tokio::time::timeout(SCALE, BufReader::new(stdout).lines().next_line())
            .await
            .map_err(|_| anyhow!("the watchers process did not answer within {SCALE:?}"))?
            .context("read the watchers process' answer")?
            .ok_or_else(|| {
                anyhow!("the watchers process ended without an answer (its error is above)")
            })?;
        serde_json::from_str(&line).with_context(|| format!("the watchers process said {line:?}"))
    }

    async fn fanout_row(&self, work: &str) -> Result<Row> {
        let service = self.service("fanout");
        let list = bulk(&service, INSTANCES)?;
        self.write_service(&service, &list).await?;
        self.until_listed(&service, INSTANCES).await?;
        let result = self.fanout_measure(&service, &list[0], work).await;
        if let Err(e) = self.writer.bulk_delete(&service).await {
            eprintln!(
                "registry-bench: {} cleanup of {service}: {e:#}",
                self.backend
            );
        }
        result
    }

    async fn fanout_measure(
        &self,
        service: &str,
        target: &registry::ServiceInstance,
        work: &str,
    ) -> Result<Row> {
        let count = self.opts.watchers;
        let before = vm_rss()?;
        let mut watchers = Vec::with_capacity(count);
        for _ in 0..count {
            let mut watcher = timed(CALL, self.ours.watch(service)).await?.1;
            // The first list, so that the next `next()` waits for a change.
            watcher.next().await?;
            watchers.push(watcher);
        }
        let after = vm_rss()?;
        let per_watcher = after.saturating_sub(before) as f64 / count.max(1) as f64;

        let mut pairs = Pairs::default();
        for seq in 1..=self.opts.fanout_samples as u64 {
            let fanout = Arc::new(Fanout {
                left: AtomicUsize::new(count),
                last: Mutex::new(None),
                done: Notify::new(),
            });
            let tasks: Vec<_> = watchers
                .drain(..)
                .map(|w| tokio::spawn(wait_one(w, seq, fanout.clone())))
                .collect();
            // Let every task park in `next()` before the change.
            tokio::time::sleep(Duration::from_millis(200)).await;
            let start = Instant::now();
            self.writer.put(&with_seq(target, seq)).await?;
            tokio::time::timeout(CALL, fanout.done.notified())
                .await
                .map_err(|_| {
                    anyhow!(
                        "{} of {count} watchers did not see change {seq} within {CALL:?}",
                        fanout.left.load(Ordering::Acquire)
                    )
                })?;
            let last = fanout
                .last
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .context("no watcher finished last")?;
            pairs.push(Side::Ours, last.saturating_duration_since(start));
            for task in tasks {
                watchers.push(task.await.context("a watcher task")??);
            }
        }
        if watchers.len() != count {
            bail!("{} watchers came back of {count}", watchers.len());
        }
        let item = format!("watchers-{count}");
        Ok(Row::measured(self.backend, &item, work, &pairs)
            .note(format!(
                "memory added: {:.0} bytes per watcher (VmRSS {:.1} → {:.1} MiB)",
                per_watcher,
                before as f64 / 1048576.0,
                after as f64 / 1048576.0
            ))
            .extra("bytes_per_watcher", per_watcher)
            .extra("vm_rss_before", before)
            .extra("vm_rss_after", after))
    }
}
