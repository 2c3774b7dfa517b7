//! Watchers, and the hub that lets all local watchers of one service share one upstream watch.
//!
//! A backend calls [`WatchHub::watch`] with a closure that starts its upstream (an etcd watch,
//! a Consul blocking-query loop, ...). The closure is called only for the first local watcher
//! of a service; it gets a [`Publisher`] and publishes whole lists. The upstream task is
//! stopped once the last local watcher of that service is dropped or stopped.
//!
//! Lists are snapshots: a watcher that is slow to call `next()` gets the newest list, never a
//! stale one; intermediate lists published while it was busy may be merged into it.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{ready, Context, Poll};

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio_stream::wrappers::WatchStream;

use crate::{Error, Result, ServiceInstance};

#[derive(Debug, Clone, Default)]
struct Snapshot {
    /// `None` until the upstream has listed the service once.
    instances: Option<Arc<Vec<ServiceInstance>>>,
    /// Bumped each time `instances` changes.
    version: u64,
    /// The upstream's latest failure, cleared by its next successful publish.
    error: Option<Error>,
}

/// Follows one service: the first [`next`](Self::next) returns the current list (also when it
/// is empty), each later one the whole new list after a change.
///
/// A watcher is also a [`Stream`] of the same lists. When the registry reports a failure the
/// watcher keeps the last list it knows (see [`last_error`](Self::last_error)) and resumes
/// once the upstream recovers.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> registry_core::Result<()> {
/// use registry_core::{Discovery, MemoryRegistry, Registrar, ServiceInstance};
/// let registry = MemoryRegistry::new();
/// let mut watcher = registry.watch("helloworld").await?;
/// assert!(watcher.next().await?.is_empty());
/// let instance = ServiceInstance::builder("1", "helloworld")
///     .endpoint("http://127.0.0.1:8000")
///     .build()?;
/// registry.register(&instance).await?;
/// assert_eq!(watcher.next().await?, vec![instance]);
/// watcher.stop();
/// assert!(watcher.next().await.is_err());
/// # Ok(()) }
/// ```
pub struct Watcher {
    name: String,
    stream: Option<WatchStream<Snapshot>>,
    rx: Option<watch::Receiver<Snapshot>>,
    seen: Option<u64>,
    stopped: bool,
}

impl Watcher {
    fn new(name: &str, rx: watch::Receiver<Snapshot>) -> Self {
        Watcher {
            name: name.to_owned(),
            stream: Some(WatchStream::new(rx.clone())),
            rx: Some(rx),
            seen: None,
            stopped: false,
        }
    }

    /// The service this watcher follows.
    pub fn service(&self) -> &str {
        &self.name
    }

    /// Waits for the next list: the current one on the first call, then the whole new list
    /// after each change.
    ///
    /// Fails with [`Error::WatcherStopped`] at once after [`stop`](Self::stop), and with
    /// [`Error::Closed`] when the registry behind it was shut down.
    pub async fn next(&mut self) -> Result<Vec<ServiceInstance>> {
        if self.stopped {
            return Err(Error::WatcherStopped);
        }
        match StreamExt::next(self).await {
            Some(result) => result,
            None => Err(Error::Closed),
        }
    }

    /// Stops the watcher; `next()` fails from now on and the stream ends. When this was the
    /// last local watcher of its service, the shared upstream watch stops too.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.stream = None;
        self.rx = None;
    }

    /// The upstream's latest failure while it has not recovered: the registry is unreachable
    /// and the lists delivered are the last known ones. `None` while healthy.
    pub fn last_error(&self) -> Option<Error> {
        self.rx.as_ref().and_then(|rx| rx.borrow().error.clone())
    }
}

impl Stream for Watcher {
    type Item = Result<Vec<ServiceInstance>>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(stream.poll_next_unpin(cx)) {
                None => {
                    // The upstream is gone for good: report it once, then end.
                    this.stream = None;
                    this.rx = None;
                    return Poll::Ready(Some(Err(Error::Closed)));
                }
                Some(snapshot) => {
                    if let Some(list) = snapshot.instances {
                        if this.seen != Some(snapshot.version) {
                            this.seen = Some(snapshot.version);
                            return Poll::Ready(Some(Ok(list.as_ref().clone())));
                        }
                    }
                }
            }
        }
    }
}

impl fmt::Debug for Watcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watcher")
            .field("service", &self.name)
            .field("stopped", &self.stopped)
            .finish_non_exhaustive()
    }
}

/// The sending side of one service's shared watch, handed to a backend's upstream task.
#[derive(Clone)]
pub struct Publisher {
    name: Arc<str>,
    tx: Arc<watch::Sender<Snapshot>>,
}

impl Publisher {
    /// The service being watched.
    pub fn service(&self) -> &str {
        &self.name
    }

    /// Publishes the whole current list. Instances are sorted by id; a list equal to the last
    /// one published wakes nobody. Clears any reported error. Returns whether the list changed.
    pub fn publish(&self, mut instances: Vec<ServiceInstance>) -> bool {
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        self.tx.send_if_modified(|s| {
            s.error = None;
            if s.instances.as_deref() == Some(&instances) {
                return false;
            }
            s.instances = Some(Arc::new(instances));
            s.version += 1;
            true
        })
    }

    /// Records an upstream failure. Watchers keep the last list; before the first list, the
    /// pending `watch()` call fails with this error.
    pub fn report_error(&self, error: Error) {
        tracing::warn!(service = %self.name, %error, "watch upstream failed; keeping the last known list");
        self.tx.send_if_modified(|s| {
            s.error = Some(error);
            s.instances.is_none()
        });
    }

    /// The list published last, if any.
    pub fn current(&self) -> Option<Vec<ServiceInstance>> {
        self.tx.borrow().instances.as_deref().cloned()
    }

    /// Resolves when no local watcher is left.
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

impl fmt::Debug for Publisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("service", &self.name)
            .finish_non_exhaustive()
    }
}

struct Upstream {
    tx: Arc<watch::Sender<Snapshot>>,
    /// Set right after the task is spawned (outside the lock).
    task: Option<AbortHandle>,
}

type Upstreams = Mutex<HashMap<String, Upstream>>;

/// One upstream watch per service, shared by all local watchers of that service.
///
/// Cloning shares the hub. Upstream tasks run while a watcher of theirs lives, also after the
/// registry handle was dropped; [`shutdown`](Self::shutdown) stops them all at once.
#[derive(Clone, Default)]
pub struct WatchHub {
    upstreams: Arc<Upstreams>,
}

impl WatchHub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// A watcher of service `name`. When no local watcher of it exists, `start` is called with
    /// the service's [`Publisher`] and the future it returns is spawned as the upstream task;
    /// it must publish the current list, then each change, until it is dropped.
    ///
    /// Returns once the first list is known, or fails with the upstream's first error. Must
    /// be called within a Tokio runtime (the upstream is a Tokio task).
    pub async fn watch<F, Fut>(&self, name: &str, start: F) -> Result<Watcher>
    where
        F: FnOnce(Publisher) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| Error::Backend {
            backend: "watch",
            message: "a watch needs a Tokio runtime".into(),
            temporary: false,
            source: None,
        })?;
        let (mut rx, new_tx) = {
            let mut upstreams = lock(&self.upstreams);
            match upstreams.get(name) {
                Some(upstream) => (upstream.tx.subscribe(), None),
                None => {
                    let (tx, rx) = watch::channel(Snapshot::default());
                    let tx = Arc::new(tx);
                    let upstream = Upstream {
                        tx: tx.clone(),
                        task: None,
                    };
                    upstreams.insert(name.to_owned(), upstream);
                    (rx, Some(tx))
                }
            }
        };
        if let Some(tx) = new_tx {
            // Started outside the lock: `start` may use the hub itself.
            let publisher = Publisher {
                name: name.into(),
                tx: tx.clone(),
            };
            let upstream = start(publisher);
            let hub = Arc::downgrade(&self.upstreams);
            let task = runtime.spawn(drive(hub, name.to_owned(), tx.clone(), upstream));
            let mut upstreams = lock(&self.upstreams);
            match upstreams.get_mut(name) {
                Some(entry) if Arc::ptr_eq(&entry.tx, &tx) => {
                    entry.task = Some(task.abort_handle())
                }
                // Shut down meanwhile.
                _ => task.abort(),
            }
        }
        let first = rx
            .wait_for(|s| s.instances.is_some() || s.error.is_some())
            .await
            .map_err(|_| Error::Closed)?;
        if first.instances.is_none() {
            return Err(first.error.clone().unwrap_or(Error::Closed));
        }
        drop(first);
        Ok(Watcher::new(name, rx))
    }

    /// How many upstream watches are running (one per watched service).
    pub fn upstreams(&self) -> usize {
        lock(&self.upstreams).len()
    }

    /// Stops every upstream task; their watchers' `next()` then fails with [`Error::Closed`].
    pub fn shutdown(&self) {
        for (_, upstream) in lock(&self.upstreams).drain() {
            if let Some(task) = upstream.task {
                task.abort();
            }
        }
    }
}

impl fmt::Debug for WatchHub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchHub")
            .field("upstreams", &self.upstreams())
            .finish()
    }
}

fn lock(upstreams: &Upstreams) -> MutexGuard<'_, HashMap<String, Upstream>> {
    upstreams
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn drive<Fut>(
    hub: Weak<Upstreams>,
    name: String,
    tx: Arc<watch::Sender<Snapshot>>,
    upstream: Fut,
) where
    Fut: Future<Output = ()> + Send + 'static,
{
    let mut upstream = std::pin::pin!(upstream);
    loop {
        tokio::select! {
            () = &mut upstream => {
                tracing::debug!(service = %name, "watch upstream ended");
                break;
            }
            () = tx.closed() => {
                // The last local watcher went away; stop unless one subscribed meanwhile.
                let Some(hub) = hub.upgrade() else { return };
                let mut upstreams = lock(&hub);
                if tx.receiver_count() == 0 {
                    remove_if_ours(&mut upstreams, &name, &tx);
                    tracing::debug!(service = %name, "last watcher gone; upstream stopped");
                    return;
                }
            }
        }
    }
    if let Some(hub) = hub.upgrade() {
        remove_if_ours(&mut lock(&hub), &name, &tx);
    }
}

fn remove_if_ours(
    upstreams: &mut HashMap<String, Upstream>,
    name: &str,
    tx: &Arc<watch::Sender<Snapshot>>,
) {
    if upstreams.get(name).is_some_and(|u| Arc::ptr_eq(&u.tx, tx)) {
        upstreams.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    fn instance(id: &str) -> ServiceInstance {
        ServiceInstance {
            id: id.into(),
            name: "svc".into(),
            ..Default::default()
        }
    }

    async fn eventually(what: &str, check: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(tokio::time::Instant::now() < deadline, "{what}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An upstream that publishes what it is sent, counting how often it was started.
    fn upstream(
        starts: Arc<AtomicUsize>,
        mut feed: tokio::sync::mpsc::UnboundedReceiver<Vec<ServiceInstance>>,
    ) -> impl FnOnce(Publisher) -> futures::future::BoxFuture<'static, ()> {
        move |publisher| {
            starts.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                publisher.publish(vec![]);
                while let Some(list) = feed.recv().await {
                    publisher.publish(list);
                }
            })
        }
    }

    #[tokio::test]
    async fn watchers_of_one_service_share_one_upstream_until_the_last_goes() {
        let hub = WatchHub::new();
        let starts = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut first = hub
            .watch("svc", upstream(starts.clone(), rx))
            .await
            .unwrap();
        let (_unused, rx2) = tokio::sync::mpsc::unbounded_channel();
        let mut second = hub
            .watch("svc", upstream(starts.clone(), rx2))
            .await
            .unwrap();
        assert_eq!(starts.load(Ordering::SeqCst), 1, "one upstream for both");
        assert_eq!(hub.upstreams(), 1);

        assert!(first.next().await.unwrap().is_empty());
        assert!(second.next().await.unwrap().is_empty());
        tx.send(vec![instance("b"), instance("a")]).unwrap();
        let ids = |l: Vec<ServiceInstance>| l.into_iter().map(|i| i.id).collect::<Vec<_>>();
        assert_eq!(ids(first.next().await.unwrap()), ["a", "b"], "sorted by id");
        assert_eq!(ids(second.next().await.unwrap()), ["a", "b"]);

        first.stop();
        assert_eq!(hub.upstreams(), 1, "still one watcher left");
        drop(second);
        eventually("upstream stops after the last watcher", || {
            hub.upstreams() == 0
        })
        .await;
        assert!(tx.is_closed(), "the upstream future was dropped");
    }

    #[tokio::test]
    async fn an_equal_list_wakes_nobody_and_a_slow_watcher_gets_the_newest() {
        let hub = WatchHub::new();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let mut w = hub
            .watch("svc", upstream(Arc::default(), rx))
            .await
            .unwrap();
        assert!(w.next().await.unwrap().is_empty());
        tx.send(vec![]).unwrap(); // no change
        tx.send(vec![instance("a")]).unwrap();
        tx.send(vec![instance("a"), instance("b")]).unwrap();
        let deadline = Duration::from_secs(5);
        let mut last = Vec::new();
        while last.len() < 2 {
            last = tokio::time::timeout(deadline, w.next())
                .await
                .unwrap()
                .unwrap();
            assert!(
                !last.is_empty(),
                "the unchanged empty list must not be delivered again"
            );
        }
    }

    #[tokio::test]
    async fn the_first_error_fails_watch_and_later_errors_keep_the_list() {
        let hub = WatchHub::new();
        let err = hub
            .watch("svc", |publisher| async move {
                publisher.report_error(Error::Unavailable {
                    message: "down".into(),
                    source: None,
                });
                std::future::pending::<()>().await
            })
            .await
            .unwrap_err();
        assert!(err.is_temporary(), "{err}");
        eventually("a failed watch leaves no upstream", || hub.upstreams() == 0).await;

        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Vec<ServiceInstance>>();
        let mut w = hub
            .watch("svc", move |publisher| {
                let p = publisher.clone();
                let mut rx = rx;
                async move {
                    p.publish(vec![instance("a")]);
                    rx.recv().await;
                    p.report_error(Error::Closed);
                    rx.recv().await;
                    p.publish(vec![instance("a")]);
                    std::future::pending::<()>().await
                }
            })
            .await
            .unwrap();
        assert_eq!(w.next().await.unwrap().len(), 1);
        tx.send(vec![]).unwrap();
        eventually("error visible", || w.last_error().is_some()).await;
        tx.send(vec![]).unwrap();
        eventually("error cleared by the next publish", || {
            w.last_error().is_none()
        })
        .await;
    }

    #[tokio::test]
    async fn an_ended_upstream_or_a_shutdown_closes_its_watchers() {
        let hub = WatchHub::new();
        let mut w = hub
            .watch("svc", |p| async move {
                p.publish(vec![]);
            })
            .await
            .unwrap();
        assert!(w.next().await.unwrap().is_empty());
        assert!(matches!(w.next().await, Err(Error::Closed)));

        let mut w = hub
            .watch("other", |p| async move {
                p.publish(vec![]);
                std::future::pending::<()>().await
            })
            .await
            .unwrap();
        assert!(w.next().await.unwrap().is_empty());
        hub.shutdown();
        assert!(matches!(w.next().await, Err(Error::Closed)));
        assert_eq!(hub.upstreams(), 0);
    }
}
