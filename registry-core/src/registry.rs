//! The registry traits.

use std::fmt;

use async_trait::async_trait;

use crate::{Capabilities, Error, RegistrationStatus, Result, ServiceInstance, Watcher};

/// Registers and deregisters instances.
///
/// From `register` until `deregister`, `close` or drop of the handle, the registration is
/// kept alive (leases, TTL checks, sessions, heartbeats) and written again whenever it is
/// lost, by the core's supervisor ([`crate::registration::Registrations`]).
#[async_trait]
pub trait Registrar: Send + Sync {
    /// Registers `instance`; registering an id that exists replaces it in place.
    ///
    /// An invalid instance is refused with [`Error::InvalidInput`] and nothing is written.
    /// Calls for one id are applied in call order. Cancel safe: a dropped call leaves either
    /// nothing or a registration this handle holds (see [`Registry::registration`]).
    async fn register(&self, instance: &ServiceInstance) -> Result<()>;

    /// Removes `instance` (matched by name and id) and stops its keep-alive.
    ///
    /// Only what this handle registered is removed: an instance the registry lists that
    /// another owner registered is left alone and the call fails with
    /// [`Error::NotOwned`]; an instance listed nowhere is already deregistered (`Ok`).
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

    /// Follows the registration of instance `id` of service `name` made through this handle;
    /// `None` when this handle holds no such registration.
    fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        let _ = (name, id);
        None
    }

    /// Deregisters everything this handle registered and waits until it is removed, then
    /// stops its watches (their watchers end with [`Error::Closed`]). Later registers fail
    /// with [`Error::Closed`]. Returns the first failure to remove.
    ///
    /// Dropping a handle without `close` stops its keep-alives at once: its registrations
    /// then leave the registry when their lease, session, check or connection runs out (at
    /// most one TTL).
    async fn close(&self) -> Result<()> {
        Ok(())
    }

    /// Every service name with at least one instance, sorted. Only where
    /// [`Capabilities::list_services`] holds.
    async fn list_services(&self) -> Result<Vec<String>> {
        Err(Error::Unsupported {
            backend: self.scheme(),
            operation: "list_services",
        })
    }
}
