//! The measurements of one backend (`Bench`): the per-call items and the 200-registration
//! batches, and what the other items share: A/B pairing (ours first on even samples, raw
//! first on odd ones), timing, and following a watcher's view of one instance.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use futures::{StreamExt, TryStreamExt};
use registry::{Registry, ServiceInstance, Watcher};
use tokio::sync::watch;

use crate::model::{bulk, instance, with_seq, Space};
use crate::raw::{publish, AbortOnDrop, Follow, Raw, Seen, Writer};
use crate::stats::{human_ms, Pairs, Row, Side};

/// How long one call may take before the sample fails.
pub const CALL: Duration = Duration::from_secs(30);
/// How long one call on a big service may take.
pub const SCALE: Duration = Duration::from_secs(600);
/// How long one change in a big service may take to reach a watcher.
pub const BIG_CHANGE: Duration = Duration::from_secs(120);
/// How long a write may take to show in a list.
pub const PROPAGATION: Duration = Duration::from_secs(60);

/// What to run, and how much of it.
#[derive(Debug, Clone, Default)]
pub struct Opts {
    /// Samples per arm of the per-call items.
    pub samples: usize,
    /// Samples per arm of the scale items.
    pub scale_samples: usize,
    /// Instance counts of the scale items.
    pub scale_counts: Vec<usize>,
    /// Local watchers of the fan-out item.
    pub watchers: usize,
    /// Changes fanned out to the local watchers.
    pub fanout_samples: usize,
    /// Batches of 200 registrations per arm.
    pub batch_samples: usize,
    /// Owners killed per backend.
    pub owner_samples: usize,
    /// The TTL (or session timeout) the owner processes register with.
    pub ttl: Duration,
    /// The longest a bulk set-up may be projected to take before it is skipped.
    pub setup_budget: Duration,
    /// The item groups to run.
    pub items: Vec<String>,
}

/// One backend under measurement.
pub struct Bench {
    /// `etcd`, `consul`, `zookeeper`, `nacos` or `memory`.
    pub backend: &'static str,
    /// Our URL of it.
    pub url: String,
    /// Our handle.
    pub ours: Arc<dyn Registry>,
    /// The raw client's writes.
    pub writer: Arc<dyn Writer>,
    /// The raw client, where there is one.
    pub raw: Option<Arc<dyn Raw>>,
    /// The prefix of every name this run writes (`bench-…`).
    pub run: String,
    /// What to run.
    pub opts: Opts,
    /// The results so far.
    pub rows: Vec<Row>,
}

/// Runs `fut` within `limit`; returns how long it took and its output.
pub async fn timed<T, E>(
    limit: Duration,
    fut: impl Future<Output = std::result::Result<T, E>>,
) -> Result<(Duration, T)>
where
    E: Into<anyhow::Error>,
{
    let start = Instant::now();
    let out = tokio::time::timeout(limit, fut)
        .await
        .map_err(|_| anyhow!("no answer within {limit:?}"))?
        .map_err(Into::into)?;
    Ok((start.elapsed(), out))
}

/// Waits until a watcher has seen `seq`.
pub async fn reach(seen: &mut Seen, seq: u64, limit: Duration) -> Result<()> {
    tokio::time::timeout(limit, seen.wait_for(|s| *s >= seq))
        .await
        .map_err(|_| anyhow!("the watcher did not see change {seq} within {limit:?}"))?
        .map_err(|_| anyhow!("the watcher stopped"))?;
    Ok(())
}

/// Follows `target`'s `seq` through one of our watchers, in a task of its own.
pub fn follow_ours(mut watcher: Watcher, target: &str) -> Follow {
    let (tx, seen) = watch::channel(0);
    let target = target.to_owned();
    let task = tokio::spawn(async move {
        while let Ok(list) = watcher.next().await {
            if let Ok(i) = list.binary_search_by(|x| x.id.as_str().cmp(&target)) {
                publish(
                    &tx,
                    &target,
                    [(list[i].id.as_str(), list[i].metadata.get("seq"))],
                );
            }
        }
    });
    Follow {
        first_len: 0,
        seen,
        _task: AbortOnDrop(task),
    }
}

/// The arms of sample `i`: ours first on even samples, raw first on odd ones.
pub fn sides(i: usize, has_raw: bool) -> &'static [Side] {
    match (has_raw, i % 2) {
        (false, _) => &[Side::Ours],
        (true, 0) => &[Side::Ours, Side::Raw],
        (true, _) => &[Side::Raw, Side::Ours],
    }
}

/// Runs `op(side, i)` for `samples` A/B pairs; each returns its own timing. An arm that
/// fails stops there (its error is kept in the pairs) and the other goes on, so that a
/// failure of ours still leaves the raw figures; only when every arm failed is it an error.
pub async fn paired<F, Fut>(samples: usize, has_raw: bool, mut op: F) -> Result<Pairs>
where
    F: FnMut(Side, usize) -> Fut,
    Fut: Future<Output = Result<Duration>>,
{
    let mut pairs = Pairs::default();
    let arms = if has_raw { 2 } else { 1 };
    for i in 0..samples {
        for &side in sides(i, has_raw) {
            if pairs.failed.iter().any(|(s, _)| *s == side) {
                continue;
            }
            match op(side, i).await {
                Ok(took) => pairs.push(side, took),
                Err(e) => pairs.failed.push((side, format!("sample {i}: {e:#}"))),
            }
        }
        if pairs.failed.len() == arms {
            break;
        }
    }
    if pairs.failed.len() == arms {
        let all: Vec<String> = pairs
            .failed
            .iter()
            .map(|(side, e)| format!("{side} arm: {e}"))
            .collect();
        bail!("{}", all.join("; "));
    }
    Ok(pairs)
}

pub fn no_raw() -> anyhow::Error {
    anyhow!("no raw client")
}

impl Bench {
    /// A name of this run for `item`.
    pub fn service(&self, item: &str) -> String {
        format!("{}-{item}", self.run)
    }

    /// Whether item group `group` is to run.
    pub fn wants(&self, group: &str) -> bool {
        self.opts.items.iter().any(|i| i == group || i == "all")
    }

    /// Keeps a row, and says it on standard error at once.
    pub fn push(&mut self, row: Row) {
        let ours = row.ours.as_ref().map(|s| human_ms(s.p50_ms));
        let raw = row.raw.as_ref().map(|s| human_ms(s.p50_ms));
        let status = match (&row.error, ours) {
            (Some(e), _) => format!("FAILED: {e}"),
            (None, None) => row.note.clone(),
            (None, Some(ours)) => format!(
                "ours p50 {ours}, raw p50 {}, ratio {}",
                raw.unwrap_or_else(|| "—".into()),
                row.paired_ratio_p50
                    .map_or_else(|| "—".into(), |r| format!("{r:.2}"))
            ),
        };
        eprintln!("registry-bench: {} {}: {status}", row.backend, row.work);
        self.rows.push(row);
    }

    /// Keeps the row of a measurement, or of its failure.
    pub fn record(&mut self, item: &str, work: &str, result: Result<Row>) {
        let row = result.unwrap_or_else(|e| Row::failed(self.backend, item, work, &e));
        self.push(row);
    }

    /// Writes `list` of `service` with the raw client: the first (the one the watch items
    /// change) with `put`, the rest in bulk. Returns how long it took.
    pub async fn write_service(&self, service: &str, list: &[ServiceInstance]) -> Result<Duration> {
        let start = Instant::now();
        self.writer.prepare(service).await?;
        if let Some((first, rest)) = list.split_first() {
            self.writer.put(first).await?;
            if !rest.is_empty() {
                self.writer.bulk_write(service, rest).await?;
            }
        }
        Ok(start.elapsed())
    }

    /// Waits until our `get_service` lists `n` instances of `service`.
    pub async fn until_listed(&self, service: &str, n: usize) -> Result<()> {
        let start = Instant::now();
        loop {
            let listed = timed(SCALE, self.ours.get_service(service)).await?.1.len();
            if listed == n {
                return Ok(());
            }
            if start.elapsed() > PROPAGATION {
                bail!("get_service lists {listed} instances of {service}, not {n}, after {PROPAGATION:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Register, update and deregister (new ids each sample), get of a 10-instance service,
    /// and a change reaching a watcher of it.
    pub async fn base(&mut self) {
        let (n, has_raw) = (self.opts.samples, self.raw.is_some());
        let service = self.service("reg");
        let instances = |prefix: &str, space: Space| -> Result<Vec<ServiceInstance>> {
            (0..n)
                .map(|i| instance(&service, &format!("{}-{prefix}{i}", self.run), space, i, 0))
                .collect()
        };
        let (ours_list, raw_list) = match (instances("o", Space::Ours), instances("r", Space::Raw))
        {
            (Ok(o), Ok(r)) => (o, r),
            (Err(e), _) | (_, Err(e)) => {
                self.record("register", "register a new id", Err(e));
                return;
            }
        };
        if let Some(raw) = &self.raw {
            if let Err(e) = raw.prepare(&service).await {
                self.record("register", "register a new id", Err(e));
                return;
            }
        }
        let (ours, raw) = (self.ours.clone(), self.raw.clone());
        let (ours, raw) = (&ours, raw.as_deref());
        let (o, r) = (&ours_list, &raw_list);

        let register = paired(n, has_raw, |side, i| async move {
            match side {
                Side::Ours => Ok(timed(CALL, ours.register(&o[i])).await?.0),
                Side::Raw => Ok(timed(CALL, raw.ok_or_else(no_raw)?.register(&r[i]))
                    .await?
                    .0),
            }
        })
        .await;
        let registered = register.is_ok();
        let work = "register a new id";
        let row = register.map(|p| Row::measured(self.backend, "register", work, &p));
        self.record("register", work, row);

        let work = "update (register again, changed metadata)";
        let update = if registered {
            paired(n, has_raw, |side, i| async move {
                match side {
                    Side::Ours => Ok(timed(CALL, ours.register(&with_seq(&o[i], 1))).await?.0),
                    Side::Raw => {
                        let raw = raw.ok_or_else(no_raw)?;
                        Ok(timed(CALL, raw.update(&with_seq(&r[i], 1))).await?.0)
                    }
                }
            })
            .await
            .map(|p| Row::measured(self.backend, "update", work, &p))
        } else {
            Err(anyhow!("not run: register failed"))
        };
        self.record("update", work, update);

        let work = "deregister";
        let deregister = if registered {
            paired(n, has_raw, |side, i| async move {
                match side {
                    Side::Ours => Ok(timed(CALL, ours.deregister(&o[i])).await?.0),
                    Side::Raw => Ok(timed(CALL, raw.ok_or_else(no_raw)?.deregister(&r[i]))
                        .await?
                        .0),
                }
            })
            .await
            .map(|p| Row::measured(self.backend, "deregister", work, &p))
        } else {
            Err(anyhow!("not run: register failed"))
        };
        self.record("deregister", work, deregister);

        self.small_service().await;
    }

    /// get of a 10-instance service, and a change reaching a watcher of it.
    async fn small_service(&mut self) {
        let service = self.service("get10");
        let (get_work, watch_work) = (
            "get of a 10-instance service",
            "change → watcher sees it (10 instances)",
        );
        let setup = async {
            let list = bulk(&service, 10)?;
            self.write_service(&service, &list).await?;
            self.until_listed(&service, 10).await?;
            Ok::<_, anyhow::Error>(list)
        }
        .await;
        let list = match setup {
            Ok(list) => list,
            Err(e) => {
                let e = e.context("writing the 10-instance service");
                self.record("get-10", get_work, Err(anyhow!("{e:#}")));
                self.record("watch-change", watch_work, Err(e));
                return;
            }
        };
        let get = self.get_pairs(&service, 10, self.opts.samples).await;
        let row = get.map(|p| Row::measured(self.backend, "get-10", get_work, &p));
        self.record("get-10", get_work, row);

        let change = self
            .change_pairs(&service, &list[0], self.opts.samples, CALL)
            .await;
        let row = change.map(|p| Row::measured(self.backend, "watch-change", watch_work, &p));
        self.record("watch-change", watch_work, row);
        if let Err(e) = self.writer.bulk_delete(&service).await {
            eprintln!(
                "registry-bench: {} cleanup of {service}: {e:#}",
                self.backend
            );
        }
    }

    /// A/B pairs of `get_service` against the raw get + decode, each checked to list `n`.
    pub async fn get_pairs(&self, service: &str, n: usize, samples: usize) -> Result<Pairs> {
        let (ours, raw) = (&self.ours, self.raw.as_deref());
        paired(samples, raw.is_some(), |side, _| async move {
            let (took, listed) = match side {
                Side::Ours => {
                    let (took, list) = timed(SCALE, ours.get_service(service)).await?;
                    (took, list.len())
                }
                Side::Raw => timed(SCALE, raw.ok_or_else(no_raw)?.get(service)).await?,
            };
            if listed != n {
                bail!("listed {listed} instances, not {n}");
            }
            Ok(took)
        })
        .await
    }

    /// A/B pairs of a change to `target` (written with the raw client, one write per arm)
    /// until our watcher, or the raw one, sees it. Both watchers follow all along; after
    /// each timed arm the other one catches up, untimed. As in [`paired`], a failing arm
    /// stops and the other goes on.
    pub async fn change_pairs(
        &self,
        service: &str,
        target: &ServiceInstance,
        samples: usize,
        limit: Duration,
    ) -> Result<Pairs> {
        let mut pairs = Pairs::default();
        let mut ours = match timed(SCALE, self.ours.watch(service)).await {
            Ok((_, watcher)) => Some(follow_ours(watcher, &target.id)),
            Err(e) => {
                pairs.failed.push((Side::Ours, format!("watch: {e:#}")));
                None
            }
        };
        let mut raw = match &self.raw {
            Some(raw) => match timed(SCALE, raw.watch(service, &target.id)).await {
                Ok((_, follow)) => Some(follow),
                Err(e) => {
                    pairs.failed.push((Side::Raw, format!("watch: {e:#}")));
                    None
                }
            },
            None => None,
        };
        let arms = if self.raw.is_some() { 2 } else { 1 };
        let mut seq = 0;
        for i in 0..samples {
            if pairs.failed.len() == arms {
                break;
            }
            for &side in sides(i, self.raw.is_some()) {
                let (mine, other) = match side {
                    Side::Ours => (ours.as_mut(), raw.as_mut()),
                    Side::Raw => (raw.as_mut(), ours.as_mut()),
                };
                let Some(mine) = mine else { continue };
                seq += 1;
                let change = with_seq(target, seq);
                let start = Instant::now();
                let seen = async {
                    timed(limit, self.writer.put(&change))
                        .await
                        .with_context(|| format!("write change {seq}"))?;
                    reach(&mut mine.seen, seq, limit).await
                }
                .await;
                let took = start.elapsed();
                match seen {
                    Ok(()) => pairs.push(side, took),
                    Err(e) => {
                        pairs.failed.push((side, format!("sample {i}: {e:#}")));
                        match side {
                            Side::Ours => ours = None,
                            Side::Raw => raw = None,
                        }
                        continue;
                    }
                }
                if let Some(other) = other {
                    if let Err(e) = reach(&mut other.seen, seq, limit).await {
                        let other_side = match side {
                            Side::Ours => Side::Raw,
                            Side::Raw => Side::Ours,
                        };
                        pairs
                            .failed
                            .push((other_side, format!("catching up, sample {i}: {e:#}")));
                        match other_side {
                            Side::Ours => ours = None,
                            Side::Raw => raw = None,
                        }
                    }
                }
            }
        }
        if pairs.failed.len() == arms {
            let all: Vec<String> = pairs
                .failed
                .iter()
                .map(|(side, e)| format!("{side} arm: {e}"))
                .collect();
            bail!("{}", all.join("; "));
        }
        Ok(pairs)
    }

    /// 200 registrations from one handle, 32 at a time (then deregistered, untimed).
    pub async fn batch(&mut self) {
        let work = "200 registrations from one handle, 32 at a time";
        let result = self.batch_pairs().await;
        let row = result.map(|p| Row::measured(self.backend, "register-200x32", work, &p));
        self.record("register-200x32", work, row);
    }

    async fn batch_pairs(&self) -> Result<Pairs> {
        let service = self.service("batch");
        if let Some(raw) = &self.raw {
            raw.prepare(&service).await?;
        }
        let (ours, raw) = (&self.ours, self.raw.as_deref());
        let (service, run) = (&service, &self.run);
        paired(
            self.opts.batch_samples,
            raw.is_some(),
            |side, s| async move {
                let arm = usize::from(side == Side::Raw);
                let list: Vec<ServiceInstance> = (0..200)
                    .map(|i| {
                        let id = format!("{run}-b{s}{side}{i}");
                        instance(service, &id, Space::Batch, (s * 2 + arm) * 200 + i, 0)
                    })
                    .collect::<Result<_>>()?;
                let took = match side {
                    Side::Ours => {
                        let all = futures::stream::iter(&list)
                            .map(|i| ours.register(i))
                            .buffer_unordered(32)
                            .try_for_each(|()| async { Ok(()) });
                        let took = timed(SCALE, all).await?.0;
                        futures::stream::iter(&list)
                            .map(|i| ours.deregister(i))
                            .buffer_unordered(32)
                            .try_for_each(|()| async { Ok(()) })
                            .await
                            .context("deregister the batch")?;
                        took
                    }
                    Side::Raw => {
                        let raw = raw.ok_or_else(no_raw)?;
                        let all = futures::stream::iter(&list)
                            .map(|i| raw.register(i))
                            .buffer_unordered(32)
                            .try_for_each(|()| async { Ok(()) });
                        let took = timed(SCALE, all).await?.0;
                        futures::stream::iter(&list)
                            .map(|i| raw.deregister(i))
                            .buffer_unordered(32)
                            .try_for_each(|()| async { Ok(()) })
                            .await
                            .context("deregister the batch")?;
                        took
                    }
                };
                Ok(took)
            },
        )
        .await
    }
}
