//! Watching: the [`Watcher`] a `watch()` call returns, the [`Instances`] snapshots and
//! [`WatchEvent`]s it delivers, and the engine every backend runs its watches on
//! ([`Watches`] over a backend's [`Source`]).
//!
//! All local watchers of one service share one upstream watch and one immutable list per
//! change: a watcher that is slow to call `next()` gets the newest list, never a stale one
//! (lists published while it was busy are merged into it), and no watcher copies a list.
//!
//! When the registry cannot be reached the watchers keep the last known list and each is
//! told, once per outage, with [`WatchEvent::Degraded`], then [`WatchEvent::Recovered`] once
//! the upstream follows the registry again (followed by the list, when it moved meanwhile).
//! A watcher never ends on its own: only [`Watcher::stop`], the registry's `close()` or its
//! drop end it.

use std::fmt;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use tokio::sync::watch;
use tokio_stream::wrappers::WatchStream;

use crate::{Error, Result, ServiceInstance, UrlOptions};

mod engine;
mod pace;
mod source;

use engine::Snapshot;
pub use engine::Watches;
pub use pace::Pace;
pub use source::{Source, Stop, Updates};

/// How long `watch()` waits for the first list when no `watch_timeout` is given.
pub const DEFAULT_FIRST_LIST_TIMEOUT: Duration = Duration::from_secs(10);

/// The watch engine's settings; every backend reads them from its URL.
///
/// | URL option | Default | Meaning |
/// |---|---|---|
/// | `watch_timeout` | `10s` | how long `watch()` waits for the first list before it fails |
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WatchConfig {
    /// How long `watch()` waits for a first list before failing with the upstream's latest
    /// error, or [`Error::Timeout`].
    pub first_list_timeout: Duration,
    /// How long `close()` waits for the upstreams to release their subscriptions.
    pub release_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            first_list_timeout: DEFAULT_FIRST_LIST_TIMEOUT,
            release_timeout: Duration::from_secs(5),
        }
    }
}

impl WatchConfig {
    /// Reads the engine's options (`watch_timeout`) from a URL's query; a zero timeout is
    /// refused.
    pub fn from_options(options: &mut UrlOptions) -> Result<Self> {
        let mut config = WatchConfig::default();
        if let Some(timeout) = options.duration("watch_timeout")? {
            if timeout.is_zero() {
                return Err(Error::invalid_url(
                    "watch_timeout=0",
                    "watch_timeout must be positive",
                ));
            }
            config.first_list_timeout = timeout;
        }
        Ok(config)
    }

    /// With another first-list deadline.
    pub fn with_first_list_timeout(mut self, timeout: Duration) -> Self {
        self.first_list_timeout = timeout;
        self
    }
}

/// One list of a service's instances, sorted by id: an immutable snapshot shared by every
/// watcher that receives it (cloning it is cheap). Reads as a slice of [`ServiceInstance`];
/// [`to_vec`](slice::to_vec) copies it out.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Instances(Arc<[ServiceInstance]>);

impl Instances {
    /// The instances as a slice.
    pub fn as_slice(&self) -> &[ServiceInstance] {
        &self.0
    }

    /// Whether `self` and `other` are the very same snapshot (not only equal lists).
    pub fn ptr_eq(&self, other: &Instances) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Deref for Instances {
    type Target = [ServiceInstance];

    fn deref(&self) -> &[ServiceInstance] {
        &self.0
    }
}

impl AsRef<[ServiceInstance]> for Instances {
    fn as_ref(&self) -> &[ServiceInstance] {
        &self.0
    }
}

impl From<Vec<ServiceInstance>> for Instances {
    fn from(list: Vec<ServiceInstance>) -> Self {
        Instances(list.into())
    }
}

impl From<Instances> for Vec<ServiceInstance> {
    fn from(list: Instances) -> Self {
        list.0.to_vec()
    }
}

impl<'a> IntoIterator for &'a Instances {
    type Item = &'a ServiceInstance;
    type IntoIter = std::slice::Iter<'a, ServiceInstance>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl PartialEq<Vec<ServiceInstance>> for Instances {
    fn eq(&self, other: &Vec<ServiceInstance>) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<[ServiceInstance]> for Instances {
    fn eq(&self, other: &[ServiceInstance]) -> bool {
        *self.0 == *other
    }
}

impl<const N: usize> PartialEq<[ServiceInstance; N]> for Instances {
    fn eq(&self, other: &[ServiceInstance; N]) -> bool {
        *self.0 == *other
    }
}

impl PartialEq<Instances> for Vec<ServiceInstance> {
    fn eq(&self, other: &Instances) -> bool {
        **self == *other.0
    }
}

impl fmt::Debug for Instances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

/// What a [`Watcher`] delivers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum WatchEvent {
    /// The whole list after a change; the first event of every watcher is the current list.
    Changed(Instances),
    /// The registry cannot be followed (unreachable, session lost, a refused call): the last
    /// list still stands, and the engine keeps retrying. Sent once per outage.
    Degraded(Error),
    /// The registry is followed again after [`Degraded`](Self::Degraded); a
    /// [`Changed`](Self::Changed) follows when the list moved meanwhile.
    Recovered,
}

/// Follows one service: the first [`next`](Self::next) returns the current list (also when
/// it is empty), each later one the whole new list after a change.
///
/// A watcher is also a [`Stream`] of [`WatchEvent`]s (lists, and the upstream's outages and
/// recoveries; see [`next_event`](Self::next_event)). It never ends on its own: when the
/// registry cannot be reached it keeps the last list ([`last_error`](Self::last_error)
/// says why) and goes on once the registry is back.
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
    /// For [`last_error`](Self::last_error), which needs no poll.
    rx: Option<watch::Receiver<Snapshot>>,
    /// The newest snapshot received, not yet fully delivered.
    latest: Option<Snapshot>,
    /// The version of the list delivered last.
    delivered: Option<u64>,
    /// The outages told so far (the upstream's count when last told).
    outages_told: u64,
    /// Whether `Degraded` was delivered and `Recovered` not yet.
    degraded: bool,
    stopped: bool,
}

impl Watcher {
    fn new(name: &str, rx: watch::Receiver<Snapshot>) -> Self {
        let outages_told = rx.borrow().outages;
        Watcher {
            name: name.to_owned(),
            stream: Some(WatchStream::new(rx.clone())),
            rx: Some(rx),
            latest: None,
            delivered: None,
            outages_told,
            degraded: false,
            stopped: false,
        }
    }

    /// The service this watcher follows.
    pub fn service(&self) -> &str {
        &self.name
    }

    /// Waits for the next list: the current one on the first call, then the whole new list
    /// after each change (outages are not reported here; see [`next_event`](Self::next_event)).
    ///
    /// Fails with [`Error::WatcherStopped`] at once after [`stop`](Self::stop), and with
    /// [`Error::Closed`] when the registry behind it was closed or dropped.
    pub async fn next(&mut self) -> Result<Instances> {
        loop {
            if let WatchEvent::Changed(list) = self.next_event().await? {
                return Ok(list);
            }
        }
    }

    /// Waits for the next event: a list, an outage, or a recovery.
    ///
    /// Fails with [`Error::WatcherStopped`] after [`stop`](Self::stop), and with
    /// [`Error::Closed`] when the registry behind it was closed or dropped.
    pub async fn next_event(&mut self) -> Result<WatchEvent> {
        if self.stopped {
            return Err(Error::WatcherStopped);
        }
        StreamExt::next(self).await.ok_or(Error::Closed)
    }

    /// Stops the watcher; `next()` fails from now on and the stream ends. When this was the
    /// last local watcher of its service, the shared upstream watch stops too.
    pub fn stop(&mut self) {
        self.stopped = true;
        self.stream = None;
        self.rx = None;
        self.latest = None;
    }

    /// Why the registry cannot be followed, while it cannot: the lists delivered are then
    /// the last known ones. `None` while healthy.
    pub fn last_error(&self) -> Option<Error> {
        self.rx.as_ref()?.borrow().degraded.clone()
    }

    /// The event the newest snapshot still owes this watcher, if any.
    fn pending(&mut self) -> Option<WatchEvent> {
        let s = self.latest.as_ref()?;
        let list = s.instances.as_ref()?;
        if self.delivered.is_none() {
            self.delivered = Some(s.version);
            return Some(WatchEvent::Changed(list.clone()));
        }
        match (&s.degraded, self.degraded) {
            (Some(error), false) => {
                self.degraded = true;
                self.outages_told = s.outages;
                return Some(WatchEvent::Degraded(error.clone()));
            }
            (None, true) => {
                self.degraded = false;
                return Some(WatchEvent::Recovered);
            }
            // A whole outage came and went while this watcher was busy: it still hears of it.
            (None, false) if s.outages > self.outages_told => {
                self.degraded = true;
                self.outages_told = s.outages;
                let error = s.last_error.clone().unwrap_or(Error::Unavailable {
                    message: "the registry was unreachable".into(),
                    source: None,
                });
                return Some(WatchEvent::Degraded(error));
            }
            _ => {}
        }
        if self.delivered != Some(s.version) {
            self.delivered = Some(s.version);
            return Some(WatchEvent::Changed(list.clone()));
        }
        None
    }
}

impl Stream for Watcher {
    type Item = WatchEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.pending() {
                return Poll::Ready(Some(event));
            }
            let Some(stream) = this.stream.as_mut() else {
                return Poll::Ready(None);
            };
            match ready!(stream.poll_next_unpin(cx)) {
                Some(snapshot) => this.latest = Some(snapshot),
                None => {
                    // The upstream is gone for good (the registry was closed or dropped).
                    this.stream = None;
                    this.rx = None;
                    this.latest = None;
                    return Poll::Ready(None);
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

#[cfg(test)]
mod tests;
