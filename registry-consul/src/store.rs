//! The Consul primitives of the core's registration supervisor: an instance is an agent
//! service with a TTL check, passed every third of the TTL.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};

use crate::client::Client;
use crate::format::{check_id, to_consul};
use crate::Config;

/// Registers instances with the agent.
pub(crate) struct ConsulStore {
    pub(crate) client: Arc<Client>,
    pub(crate) config: Config,
}

#[async_trait]
impl Store for ConsulStore {
    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    /// The agent keeps the service; the check is named after the id.
    type Lease = ();

    /// One round trip for an update of what this handle wrote (`held`); a new registration
    /// first asks the agent who holds the id.
    async fn write(&self, instance: &ServiceInstance, held: Option<&()>) -> Result<()> {
        let registration = to_consul(instance, &self.config)?;
        if held.is_some() {
            // This handle wrote the id for this service, and no write of ours replaces
            // another service's instance: the agent holds it for this service (or forgot it).
            return self.client.register(&registration).await;
        }
        // The agent keys services by id alone: never replace another service's instance.
        if let Some(held) = self.client.service_name(&instance.id).await? {
            if held != instance.name {
                return Err(Error::Conflict {
                    message: format!(
                        "the Consul agent holds id {:?} for service {held:?}; ids are unique per agent",
                        instance.id
                    ),
                });
            }
        }
        self.client.register(&registration).await
    }

    /// Passes the check every third of the TTL; resolves when a pass fails: the agent is
    /// away, or forgot the service (restarted, or it was deregistered from outside).
    async fn hold(&self, instance: &ServiceInstance, _lease: &()) -> Error {
        let check = check_id(&instance.id);
        let interval = self.config.heartbeat();
        loop {
            tokio::time::sleep(interval).await;
            if let Err(e) = self.client.pass(&check).await {
                return e;
            }
        }
    }

    /// One round trip for what this handle wrote (`lease`); otherwise (a first write that
    /// failed) only when the agent holds the id for this service.
    async fn remove(&self, instance: &ServiceInstance, lease: Option<&()>) -> Result<()> {
        if lease.is_some() {
            return self.client.deregister(&instance.id).await;
        }
        // Only this service's instance: the agent may hold the id for another one.
        match self.client.service_name(&instance.id).await? {
            Some(held) if held == instance.name => self.client.deregister(&instance.id).await,
            // Gone already, or the agent holds the id for another service.
            _ => Ok(()),
        }
    }

    /// Whether the agent holds the instance, or the catalog lists it (registered through
    /// another agent).
    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        if self.client.service_name(id).await?.as_deref() == Some(name) {
            return Ok(true);
        }
        let (entries, _) = self.client.health(name, None).await?;
        Ok(entries.iter().any(|entry| entry.id() == id))
    }

    fn retry_cap(&self) -> Duration {
        self.config.heartbeat()
    }
}
