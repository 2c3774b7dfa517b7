//! The watch engine: one upstream task per watched service, running list → follow → resume
//! → back-off over a [`Source`], and publishing shared snapshots to every local watcher.

use std::collections::HashMap;
use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::source::{Source, Stop, Updates};
use super::{Instances, WatchConfig, Watcher};
use crate::telemetry::WatchGauges;
use crate::{Backoff, Error, Result, ServiceInstance};

/// What every watcher of one service sees: the newest list and the upstream's health.
#[derive(Debug, Clone, Default)]
pub(super) struct Snapshot {
    /// `None` until the upstream listed the service once.
    pub(super) instances: Option<Instances>,
    /// Bumped each time `instances` changes.
    pub(super) version: u64,
    /// Set while the upstream cannot follow the registry.
    pub(super) degraded: Option<Error>,
    /// How many times the upstream became degraded.
    pub(super) outages: u64,
    /// The failure of the latest outage, kept after recovery.
    pub(super) last_error: Option<Error>,
    /// When the current outage began (the upstream last heard from the registry then).
    degraded_since: Option<Instant>,
}

/// The sending side of one service's snapshots, and the service's watch metrics.
#[derive(Clone)]
pub(crate) struct Channel(Arc<watch::Sender<Snapshot>>, WatchGauges);

impl Channel {
    fn new(gauges: WatchGauges) -> Self {
        gauges.staleness.set(0.0);
        Channel(Arc::new(watch::channel(Snapshot::default()).0), gauges)
    }

    /// Publishes a whole list (sorted by id here) and, with `healthy`, ends an outage, in one
    /// step: a watcher never sees one without the other. An unchanged list wakes nobody.
    pub(crate) fn update(&self, list: Option<Vec<ServiceInstance>>, healthy: bool) {
        let list = list.map(|mut list| {
            list.sort_by(|a, b| a.id.cmp(&b.id));
            list
        });
        let gauges = &self.1;
        self.0.send_if_modified(|s| {
            let mut changed = false;
            if healthy && s.degraded.take().is_some() {
                s.degraded_since = None;
                gauges.staleness.set(0.0);
                changed = true;
            }
            if let Some(list) = list {
                if s.instances.as_deref() != Some(list.as_slice()) {
                    gauges.instances.set(list.len() as f64);
                    s.instances = Some(Instances::from(list));
                    s.version += 1;
                    changed = true;
                }
            }
            changed
        });
    }

    /// Marks the watch degraded: watchers keep the last list and are told once per outage.
    fn degrade(&self, name: &str, error: Error) {
        let gauges = &self.1;
        crate::telemetry::error(gauges.backend, "watch", &error);
        self.0.send_if_modified(|s| {
            let first = s.degraded.is_none();
            if first {
                tracing::warn!(service = %name, %error, "watch degraded: registry unreachable; serving the last known list");
                s.outages += 1;
            } else {
                tracing::debug!(service = %name, %error, "watch still degraded");
            }
            let since = *s.degraded_since.get_or_insert_with(Instant::now);
            gauges.staleness.set(since.elapsed().as_secs_f64());
            s.degraded = Some(error.clone());
            s.last_error = Some(error);
            // A first failure wakes watchers, and `watch()` calls waiting for a first list.
            first || s.instances.is_none()
        });
    }

    fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.0.subscribe()
    }

    fn same(&self, other: &Channel) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

struct Upstream {
    channel: Channel,
    /// Set right after the task is spawned (outside the lock).
    task: Option<JoinHandle<()>>,
}

struct Shared<S> {
    source: Arc<S>,
    config: WatchConfig,
    upstreams: Mutex<HashMap<String, Upstream>>,
    /// Set by `close` and `shutdown`: every upstream task stops.
    closing: watch::Sender<bool>,
}

impl<S> Shared<S> {
    fn upstreams(&self) -> MutexGuard<'_, HashMap<String, Upstream>> {
        self.upstreams.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Forgets `name`'s upstream if it is still the one of `channel` (a newer one may have
/// taken its place).
fn remove_if_ours(upstreams: &mut HashMap<String, Upstream>, name: &str, channel: &Channel) {
    if upstreams.get(name).is_some_and(|u| u.channel.same(channel)) {
        upstreams.remove(name);
    }
}

/// The core's watch engine over a backend's [`Source`]: every backend's `watch()` is
/// `self.watches.watch(name)`.
///
/// - One upstream task per service, shared by all local watchers of it, stopped (and its
///   server-side subscriptions released) when the last one goes.
/// - The upstream lists, follows, and after a failure resumes from its position (or lists
///   again), backing off (100 ms doubling, jittered, up to [`Source::retry_cap`]) forever.
/// - Watchers share one immutable snapshot per change; failures reach them as
///   [`WatchEvent::Degraded`](super::WatchEvent) and [`WatchEvent::Recovered`](super::WatchEvent).
/// - An upstream that panics is logged, reported as an outage and restarted; one that ended is
///   replaced by the next `watch()`.
/// - `watch()` waits for the first list at most [`WatchConfig::first_list_timeout`].
pub struct Watches<S: Source> {
    shared: Arc<Shared<S>>,
}

impl<S: Source> Watches<S> {
    /// An engine over `source` with the default [`WatchConfig`].
    pub fn new(source: S) -> Self {
        Self::with_config(source, WatchConfig::default())
    }

    /// An engine over `source`.
    pub fn with_config(source: S, config: WatchConfig) -> Self {
        Watches {
            shared: Arc::new(Shared {
                source: Arc::new(source),
                config,
                upstreams: Mutex::default(),
                closing: watch::channel(false).0,
            }),
        }
    }

    /// The source underneath.
    pub fn source(&self) -> &S {
        &self.shared.source
    }

    /// A watcher of service `name` (validated by the caller), sharing the service's upstream
    /// or starting it. Returns once the first list is known; fails at once with a permanent
    /// error of the upstream, and after [`WatchConfig::first_list_timeout`] with the latest
    /// temporary one (or [`Error::Timeout`]). Must be called within a Tokio runtime.
    pub async fn watch(&self, name: &str) -> Result<Watcher> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Backend {
            backend: "watch",
            message: "a watch needs a Tokio runtime".into(),
            temporary: false,
            source: None,
        })?;
        if *self.shared.closing.borrow() {
            return Err(Error::Closed);
        }
        let (mut rx, start) = {
            let mut upstreams = self.shared.upstreams();
            match upstreams.get(name) {
                // An upstream task that ended (it cannot, short of an abort) is replaced.
                Some(u) if !u.task.as_ref().is_some_and(JoinHandle::is_finished) => {
                    (u.channel.subscribe(), None)
                }
                _ => {
                    let gauges = WatchGauges::new(self.shared.source.backend(), name);
                    let channel = Channel::new(gauges);
                    let rx = channel.subscribe();
                    let upstream = Upstream {
                        channel: channel.clone(),
                        task: None,
                    };
                    upstreams.insert(name.to_owned(), upstream);
                    (rx, Some(channel))
                }
            }
        };
        if let Some(channel) = start {
            let task = runtime.spawn(drive(
                self.shared.source.clone(),
                Arc::downgrade(&self.shared),
                self.shared.closing.subscribe(),
                name.to_owned(),
                channel.clone(),
            ));
            let mut upstreams = self.shared.upstreams();
            match upstreams.get_mut(name) {
                Some(entry) if entry.channel.same(&channel) => entry.task = Some(task),
                // Shut down meanwhile.
                _ => task.abort(),
            }
        }
        let deadline = self.shared.config.first_list_timeout;
        let first = tokio::time::timeout(
            deadline,
            rx.wait_for(|s| {
                s.instances.is_some() || s.degraded.as_ref().is_some_and(|e| !e.is_temporary())
            }),
        )
        .await
        .map(|r| {
            r.map(|s| {
                s.instances
                    .is_some()
                    .then_some(())
                    .ok_or(s.degraded.clone())
            })
        });
        match first {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => return Err(error.unwrap_or(Error::Closed)),
            Ok(Err(_)) => return Err(Error::Closed),
            Err(_) => {
                let error = rx.borrow().degraded.clone();
                tracing::warn!(service = %name, ?deadline, "no first list within the watch deadline");
                return Err(error.unwrap_or(Error::Timeout {
                    operation: "watch (first list)",
                    after: deadline,
                }));
            }
        }
        Ok(Watcher::new(name, rx))
    }

    /// The current instances of `name` read once from the source (no watch), sorted by id:
    /// every backend's `get_service`.
    pub async fn get(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        let (mut list, _) = self.shared.source.list(name).await?;
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    /// How many upstream watches are running (one per watched service).
    pub fn upstreams(&self) -> usize {
        self.shared.upstreams().len()
    }

    /// Stops every upstream and waits (at most [`WatchConfig::release_timeout`] for all)
    /// until each released its server-side subscriptions; their watchers then end with
    /// [`Error::Closed`], and later `watch()` calls fail with it.
    pub async fn close(&self) {
        self.shared.closing.send_replace(true);
        let tasks: Vec<JoinHandle<()>> = self
            .shared
            .upstreams()
            .drain()
            .filter_map(|(_, u)| u.task)
            .collect();
        let all = futures::future::join_all(tasks);
        if tokio::time::timeout(self.shared.config.release_timeout, all)
            .await
            .is_err()
        {
            tracing::warn!("watch upstreams did not stop in time");
        }
    }

    /// Stops every upstream task at once, without releasing anything (for `Drop`: the
    /// connection goes with the handle). Their watchers end with [`Error::Closed`].
    pub fn shutdown(&self) {
        self.shared.closing.send_replace(true);
        for (_, upstream) in self.shared.upstreams().drain() {
            if let Some(task) = upstream.task {
                task.abort();
            }
        }
    }
}

impl<S: Source> Drop for Watches<S> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl<S: Source> fmt::Debug for Watches<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watches")
            .field("upstreams", &self.upstreams())
            .finish_non_exhaustive()
    }
}

/// One service's upstream task: runs the engine until the last watcher goes or the
/// registry closes, then releases the source's subscriptions.
async fn drive<S: Source>(
    source: Arc<S>,
    hub: Weak<Shared<S>>,
    mut closing: watch::Receiver<bool>,
    name: String,
    channel: Channel,
) {
    let release_timeout = hub
        .upgrade()
        .map_or(Duration::from_secs(1), |h| h.config.release_timeout);
    {
        let mut run = std::pin::pin!(run(&*source, &name, &channel));
        loop {
            tokio::select! {
                // `run` never returns; were it to, the upstream ends like a stopped one.
                () = &mut run => break,
                _ = closing.wait_for(|closing| *closing) => break,
                () = channel.0.closed() => {
                    // The last local watcher went away; stop unless one subscribed meanwhile.
                    let Some(hub) = hub.upgrade() else { break };
                    let mut upstreams = hub.upstreams();
                    if channel.0.receiver_count() == 0 {
                        remove_if_ours(&mut upstreams, &name, &channel);
                        tracing::debug!(service = %name, "last watcher gone; upstream stopped");
                        break;
                    }
                }
            }
        }
    }
    if let Some(hub) = hub.upgrade() {
        remove_if_ours(&mut hub.upstreams(), &name, &channel);
    }
    drop(channel);
    if tokio::time::timeout(release_timeout, source.release(&name))
        .await
        .is_err()
    {
        tracing::warn!(service = %name, "releasing the watch's subscriptions timed out");
    }
}

/// The engine proper; never returns.
async fn run<S: Source>(source: &S, name: &str, channel: &Channel) {
    let mut backoff = Backoff::new(Duration::from_millis(100), source.retry_cap());
    let mut position: Option<S::Position> = None;
    loop {
        let round = AssertUnwindSafe(round(source, name, channel, &mut position))
            .catch_unwind()
            .await;
        match round {
            Ok((Stop::Resync, reached)) => {
                tracing::debug!(service = %name, "watch position gone; listing again");
                position = None;
                if reached {
                    backoff.reset();
                    continue;
                }
            }
            Ok((Stop::Failed(error), reached)) => {
                if reached {
                    backoff.reset();
                }
                channel.degrade(name, error);
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(service = %name, panic = %message, "watch upstream panicked; restarting it");
                position = None;
                channel.degrade(
                    name,
                    Error::Backend {
                        backend: "watch",
                        message: format!("the upstream panicked ({message}); restarted"),
                        temporary: true,
                        source: None,
                    },
                );
            }
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// One attempt: resume from `position` or list, then follow until it stops. Returns why,
/// and whether the registry was reached (for the back-off).
async fn round<S: Source>(
    source: &S,
    name: &str,
    channel: &Channel,
    position: &mut Option<S::Position>,
) -> (Stop, bool) {
    if let Some(from) = position.as_ref() {
        match source.resume(name, from).await {
            Ok(true) => {}
            Ok(false) => *position = None,
            Err(e) => return (Stop::Failed(e), false),
        }
    }
    let mut reached = false;
    let from = match position.clone() {
        Some(from) => from,
        None => match source.list(name).await {
            Ok((list, at)) => {
                channel.update(Some(list), true);
                reached = true;
                *position = Some(at.clone());
                at
            }
            Err(e) => return (Stop::Failed(e), false),
        },
    };
    let updates = Updates {
        channel: channel.clone(),
        position: Mutex::new(Some(from.clone())),
        reached: AtomicBool::new(false),
    };
    let stop = source.follow(name, from, &updates).await;
    if let Some(at) = updates.position() {
        *position = Some(at);
    }
    (stop, reached || updates.reached.load(Ordering::Relaxed))
}
