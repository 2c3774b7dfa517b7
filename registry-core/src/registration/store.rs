//! What a backend implements so that the core can keep its registrations.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Error, Result, ServiceInstance};

/// The writing side of a backend: the primitives the core's registration supervisor
/// ([`Registrations`](crate::registration::Registrations)) keeps registrations with.
///
/// A `Store` does not retry, back off or remember registrations: the supervisor calls it for
/// one (service, id) at a time, in call order, and writes again whatever was lost.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// What a written instance lives by: an etcd lease, a ZooKeeper session, the value last
    /// written, or `()` when the backend needs nothing.
    type Lease: Clone + PartialEq + fmt::Debug + Send + Sync + 'static;

    /// Writes `instance` so that it lives as long as the lease returned is held. `held` is the
    /// lease of the value written before for this (service, id), when there is one: write
    /// under it when it is still good, else under a new one.
    async fn write(
        &self,
        instance: &ServiceInstance,
        held: Option<&Self::Lease>,
    ) -> Result<Self::Lease>;

    /// Keeps `lease` alive — the one keep-alive timer a backend has (etcd keep-alive, Consul
    /// TTL pass) — and resolves when `instance` is no longer registered, with why: the lease
    /// or session ended, the entry was deleted from outside, the server forgot it or stopped
    /// answering. Must be cancel safe: it is dropped when the registration is updated or
    /// removed, and when its handle is dropped.
    async fn hold(&self, instance: &ServiceInstance, lease: &Self::Lease) -> Error;

    /// Removes `instance`, written under `lease` (`None`: whatever a failed first write may
    /// have left). Called only for registrations of this handle.
    async fn remove(&self, instance: &ServiceInstance, lease: Option<&Self::Lease>) -> Result<()>;

    /// Whether the registry lists an instance `id` of service `name` (of any owner): a
    /// deregister of an instance this handle does not hold is refused when it does.
    async fn contains(&self, name: &str, id: &str) -> Result<bool>;

    /// The longest pause between two attempts to write a lost registration again: the
    /// backend's keep-alive interval, so that a registration is back within one interval of
    /// the server answering.
    fn retry_cap(&self) -> Duration {
        Duration::from_secs(5)
    }

    /// The backend's name (its URL scheme), the `backend` label of the core's
    /// [metrics](crate::telemetry).
    fn backend(&self) -> &'static str {
        "unknown"
    }
}
