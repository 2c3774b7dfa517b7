//! The reading side of a backend: what the watch engine needs from a registry.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::engine::Channel;
use crate::{Error, Result, ServiceInstance};

/// Why a [`Source::follow`] call returned.
#[derive(Debug)]
#[non_exhaustive]
pub enum Stop {
    /// The position followed from is gone (compacted, an index that went back, a history
    /// the server lost): the engine lists the service again at once.
    Resync,
    /// Following failed (connection lost, session ended, a refused call): the engine reports
    /// the watch degraded, backs off and resumes.
    Failed(Error),
}

/// A backend's primitives for reading one service and following its changes; the core's
/// [`Watches`](super::Watches) owns the policy around them (one upstream per service, retry,
/// back-off, resume, the first-list deadline, degraded and recovered events, restart after
/// a panic).
///
/// A source keeps no list of watches and never retries: when a call fails it returns the
/// error, and the engine decides what comes next.
#[async_trait]
pub trait Source: Send + Sync + 'static {
    /// Where a list was read, to follow from: an etcd revision, a Consul index, or `()`
    /// where the server has no such thing (the engine then lists again after a failure).
    type Position: Clone + Send + Sync + fmt::Debug + 'static;

    /// The instances of service `name` as they are now (any order; foreign or corrupt
    /// entries skipped and logged), and the position of that read.
    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, Self::Position)>;

    /// Follows `name` from `from`, handing the whole list to `updates` after each change,
    /// until it fails or must list again. Calls [`Updates::following`] once the watch is
    /// established. Runs until it returns or is dropped (dropping must stop it).
    async fn follow(
        &self,
        name: &str,
        from: Self::Position,
        updates: &Updates<Self::Position>,
    ) -> Stop;

    /// After a failure: whether following can go on from `from` without missing a change
    /// (`true`), or the service must be listed again (`false`, the default).
    async fn resume(&self, name: &str, from: &Self::Position) -> Result<bool> {
        let _ = (name, from);
        Ok(false)
    }

    /// The last local watcher of `name` went away (or the registry is closing): release
    /// what [`follow`](Self::follow) left on the server (subscriptions). Bounded by the
    /// engine's deadline.
    async fn release(&self, name: &str) {
        let _ = name;
    }

    /// The longest back-off between two attempts to reach the server.
    fn retry_cap(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// The backend's name (its URL scheme), the `backend` label of the core's
    /// [metrics](crate::telemetry).
    fn backend(&self) -> &'static str {
        "unknown"
    }
}

/// Where a [`Source::follow`] call hands its lists.
pub struct Updates<P> {
    pub(super) channel: Channel,
    pub(super) position: Mutex<Option<P>>,
    pub(super) reached: AtomicBool,
}

impl<P: Clone> Updates<P> {
    /// The whole list of the service after a change, and the position it holds at. A list
    /// equal to the last one wakes no watcher.
    pub fn list(&self, instances: Vec<ServiceInstance>, position: P) {
        *self.position.lock().unwrap_or_else(|p| p.into_inner()) = Some(position);
        self.reached.store(true, Ordering::Relaxed);
        self.channel.update(Some(instances), true);
    }

    /// The watch is established (for example the server accepted it): the watch counts as
    /// healthy again and the engine's back-off starts over.
    pub fn following(&self) {
        self.reached.store(true, Ordering::Relaxed);
        self.channel.update(None, true);
    }

    /// The position followed from, as last handed over.
    pub(super) fn position(&self) -> Option<P> {
        self.position
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl<P> fmt::Debug for Updates<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Updates").finish_non_exhaustive()
    }
}
