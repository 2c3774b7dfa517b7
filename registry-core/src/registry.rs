//! The registry traits.

use std::fmt;

use async_trait::async_trait;

use crate::{Capabilities, Error, Result, ServiceInstance, Watcher};

/// Registers and deregisters instances.
///
/// From `register` until `deregister` (or until the registry handle is dropped) keeping the
/// registration alive — leases, TTL checks, sessions, heartbeats — is the backend's job.
#[async_trait]
pub trait Registrar: Send + Sync {
    /// Registers `instance`; registering an id that exists replaces it in place.
    ///
    /// An invalid instance is refused with [`Error::InvalidInput`] and nothing is written.
    async fn register(&self, instance: &ServiceInstance) -> Result<()>;

    /// Removes `instance` (matched by name and id) and stops its keep-alive. Removing an
    /// instance that is not registered succeeds.
    async fn deregister(&self, instance: &ServiceInstance) -> Result<()>;
}

/// Finds instances and follows their changes.
#[async_trait]
pub trait Discovery: Send + Sync {
    /// The current instances of service `name`, sorted by id; empty when there are none.
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>>;

    /// Follows service `name`: the watcher's first `next()` returns the current list (also
    /// when empty), and each later `next()` the whole new list after a change.
    async fn watch(&self, name: &str) -> Result<Watcher>;
}

/// A registry backend: a [`Registrar`] and a [`Discovery`] that also describes itself.
///
/// The traits are object safe: the facade hands out `Arc<dyn Registry>`, which also coerces
/// to `Arc<dyn Registrar>` and `Arc<dyn Discovery>`.
#[async_trait]
pub trait Registry: Registrar + Discovery + fmt::Debug {
    /// The URL scheme of the backend, such as `"etcd"` or `"memory"`.
    fn scheme(&self) -> &'static str;

    /// What this backend offers.
    fn capabilities(&self) -> Capabilities;

    /// Every service name with at least one instance, sorted. Only where
    /// [`Capabilities::list_services`] holds.
    async fn list_services(&self) -> Result<Vec<String>> {
        Err(Error::Unsupported {
            backend: self.scheme(),
            operation: "list_services",
        })
    }
}
