//! The scale items: get of each `--scale-counts` count; at the largest, the first watch
//! list and one change reaching the watcher. Bulk data is written with the raw client and
//! deleted afterwards.

use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

use crate::items::{no_raw, paired, timed, Bench, BIG_CHANGE, PROPAGATION, SCALE};
use crate::model::{bulk, TARGET};
use crate::stats::{Pairs, Row, Side};

/// `n` with thousands separators.
pub fn count(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

impl Bench {
    /// The scale items: get of each count; at the largest, the first watch list and one
    /// change reaching the watcher. Bulk data is written with the raw client and deleted.
    pub async fn scale(&mut self) {
        let mut counts = self.opts.scale_counts.clone();
        counts.sort_unstable();
        counts.dedup();
        let Some(&largest) = counts.last() else {
            return;
        };
        let mut rate: Option<f64> = None;
        for n in counts {
            let service = self.service(&format!("scale{n}"));
            let get_work = format!("get of a {}-instance service", count(n));
            let first_work = format!("first watch list of a {}-instance service", count(n));
            let change_work = format!(
                "one change in a {}-instance service reaching the watcher",
                count(n)
            );
            let mut works = vec![(format!("get-{n}"), get_work.clone())];
            if n == largest && self.wants("scale-watch") {
                works.push((format!("first-watch-{n}"), first_work.clone()));
                works.push((format!("change-{n}"), change_work.clone()));
            }
            if let Some(rate) = rate {
                let projected = n as f64 / rate;
                if projected > self.opts.setup_budget.as_secs_f64() {
                    let why = format!(
                        "writing {} instances would take about {projected:.0} s at the rate of the previous count ({rate:.0}/s), over the set-up budget of {} s (--setup-budget)",
                        count(n),
                        self.opts.setup_budget.as_secs()
                    );
                    for (item, work) in works {
                        self.push(Row::skipped(self.backend, &item, &work, why.clone()));
                    }
                    continue;
                }
            }
            let list = match bulk(&service, n) {
                Ok(list) => list,
                Err(e) => {
                    self.record(&format!("get-{n}"), &get_work, Err(e));
                    continue;
                }
            };
            eprintln!(
                "registry-bench: {} writing {} instances…",
                self.backend,
                count(n)
            );
            let setup = match self.write_service(&service, &list).await {
                Ok(took) => took,
                Err(e) => {
                    let e = e.context(format!("writing {} instances", count(n)));
                    for (item, work) in works {
                        self.record(&item, &work, Err(anyhow!("{e:#}")));
                    }
                    let _ = self.writer.bulk_delete(&service).await;
                    continue;
                }
            };
            rate = Some(n as f64 / setup.as_secs_f64().max(1e-3));
            let written = format!("set-up: written in {:.1} s", setup.as_secs_f64());
            let settled = self.settle(&service, n).await;
            let note = match &settled {
                Ok(()) => written.clone(),
                Err(e) => format!("{written}; before measuring: {e:#}"),
            };
            // Counts above 10,000 take half the samples (at least 3): one read of 100,000
            // instances takes seconds on some backends.
            let samples = if n > 10_000 {
                (self.opts.scale_samples / 2).max(3)
            } else {
                self.opts.scale_samples
            };
            let get = self.get_pairs(&service, n, samples).await;
            let row = get.map(|p| {
                Row::measured(self.backend, &format!("get-{n}"), &get_work, &p)
                    .note(note.clone())
                    .extra("setup_s", setup.as_secs_f64())
            });
            self.record(&format!("get-{n}"), &get_work, row);
            if n == largest && self.wants("scale-watch") {
                let first = self.first_watch_pairs(&service, n, samples).await;
                let item = format!("first-watch-{n}");
                let row = first.map(|p| Row::measured(self.backend, &item, &first_work, &p));
                self.record(&item, &first_work, row);
                let change = self
                    .change_pairs(&service, &list[0], samples, BIG_CHANGE)
                    .await;
                let item = format!("change-{n}");
                let row = change.map(|p| Row::measured(self.backend, &item, &change_work, &p));
                self.record(&item, &change_work, row);
            }
            eprintln!(
                "registry-bench: {} deleting {} instances…",
                self.backend,
                count(n)
            );
            if let Err(e) = self.writer.bulk_delete(&service).await {
                eprintln!(
                    "registry-bench: {} cleanup of {service}: {e:#}",
                    self.backend
                );
            }
        }
    }

    /// Waits until the raw client lists all `n` instances (the server applied the bulk).
    async fn settle(&self, service: &str, n: usize) -> Result<()> {
        let Some(raw) = &self.raw else {
            return Ok(());
        };
        let start = Instant::now();
        loop {
            let listed = timed(SCALE, raw.get(service))
                .await
                .context("the raw client's list")?
                .1;
            if listed == n {
                return Ok(());
            }
            if start.elapsed() > PROPAGATION {
                bail!("the raw client lists {listed} of {n} after {PROPAGATION:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A/B pairs of a first watch list, on a new handle (ours) or a new client (raw) each
    /// time, so that nothing is cached; connecting is not timed.
    async fn first_watch_pairs(&self, service: &str, n: usize, samples: usize) -> Result<Pairs> {
        let (url, raw) = (&self.url, self.raw.as_deref());
        paired(samples, raw.is_some(), |side, _| async move {
            match side {
                Side::Ours => {
                    let handle = registry::connect(url)
                        .await
                        .with_context(|| format!("connect {url}"))?;
                    let (took, mut watcher) = timed(SCALE, handle.watch(service)).await?;
                    let listed = watcher.next().await?.len();
                    drop(watcher);
                    let _ = handle.close().await;
                    if listed != n {
                        bail!("the first list held {listed} instances, not {n}");
                    }
                    Ok(took)
                }
                Side::Raw => {
                    let client = raw.ok_or_else(no_raw)?.fresh().await?;
                    let (took, follow) = timed(SCALE, client.watch(service, TARGET)).await?;
                    if follow.first_len != n {
                        bail!(
                            "the first list held {} instances, not {n}",
                            follow.first_len
                        );
                    }
                    Ok(took)
                }
            }
        })
        .await
    }
}
