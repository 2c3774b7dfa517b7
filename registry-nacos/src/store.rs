//! The Nacos primitives of the core's registration supervisor: an instance is one ephemeral
//! Nacos instance per endpoint, alive while nacos-sdk's connection is.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nacos_sdk::api::naming::{NamingService, ServiceInstance as NacosInstance};
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};

use crate::client::{timed, REQUEST_TIMEOUT};
use crate::format::to_nacos;
use crate::{source, Config, SCHEME};

/// How often a registration checks that the server still lists it.
const CHECK_EVERY: Duration = Duration::from_secs(3);

/// What this registry has written, by (name, id): the value last written. Read when the
/// registry is dropped, to take it all away (nacos-sdk's connection outlives the handle).
pub(crate) type Written = Arc<Mutex<HashMap<(String, String), ServiceInstance>>>;

pub(crate) fn lock(
    written: &Written,
) -> MutexGuard<'_, HashMap<(String, String), ServiceInstance>> {
    written.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers instances through nacos-sdk's naming client.
pub(crate) struct NacosStore {
    pub(crate) naming: NamingService,
    pub(crate) config: Config,
    pub(crate) written: Written,
}

/// Registers every part of an instance.
pub(crate) async fn register_parts(
    naming: &NamingService,
    group: &str,
    parts: &[(String, NacosInstance)],
) -> Result<()> {
    each_part(naming, group, parts, true).await
}

/// Deregisters every part of an instance.
pub(crate) async fn deregister_parts(
    naming: &NamingService,
    group: &str,
    parts: &[(String, NacosInstance)],
) -> Result<()> {
    each_part(naming, group, parts, false).await
}

async fn each_part(
    naming: &NamingService,
    group: &str,
    parts: &[(String, NacosInstance)],
    register: bool,
) -> Result<()> {
    for (service, instance) in parts {
        let (service, group, instance) =
            (service.clone(), Some(group.to_owned()), instance.clone());
        if register {
            let call = naming.register_instance(service, group, instance);
            timed("register", REQUEST_TIMEOUT, call).await?;
        } else {
            let call = naming.deregister_instance(service, group, instance);
            timed("deregister", REQUEST_TIMEOUT, call).await?;
        }
    }
    Ok(())
}

#[async_trait]
impl Store for NacosStore {
    /// The value written, whose parts are what is registered.
    type Lease = ServiceInstance;

    async fn write(
        &self,
        instance: &ServiceInstance,
        held: Option<&ServiceInstance>,
    ) -> Result<ServiceInstance> {
        let parts = to_nacos(instance, &self.config)?;
        let group = &self.config.group;
        // Endpoints of the previous value that the new one no longer has go first; the others
        // are registered again, which updates them.
        if let Some(previous) = held {
            let gone: Vec<_> = to_nacos(previous, &self.config)?
                .into_iter()
                .filter(|(service, old)| {
                    !parts
                        .iter()
                        .any(|(s, new)| s == service && new.ip == old.ip && new.port == old.port)
                })
                .collect();
            deregister_parts(&self.naming, group, &gone).await?;
        }
        let key = (instance.name.clone(), instance.id.clone());
        // Recorded before the write: a handle dropped during it still takes it away.
        lock(&self.written).insert(key, instance.clone());
        register_parts(&self.naming, group, &parts).await?;
        Ok(instance.clone())
    }

    /// nacos-sdk keeps the connection and registers again after a reconnection on its own;
    /// this checks every few seconds that the server lists every part, so that an instance
    /// removed from outside, or forgotten by a server restarted before the SDK noticed, is
    /// written again, and a server that stops answering shows in the state.
    async fn hold(&self, instance: &ServiceInstance, _lease: &ServiceInstance) -> Error {
        let parts = match to_nacos(instance, &self.config) {
            Ok(parts) => parts,
            Err(e) => return e,
        };
        loop {
            tokio::time::sleep(CHECK_EVERY).await;
            for (service, part) in &parts {
                let listed = source::instances_of(&self.naming, &self.config.group, service).await;
                match listed {
                    Ok(listed) => {
                        if !listed
                            .iter()
                            .any(|l| l.ip == part.ip && l.port == part.port)
                        {
                            return Error::Backend {
                                backend: SCHEME,
                                message: format!(
                                    "{service} no longer lists {}:{}",
                                    part.ip, part.port
                                ),
                                temporary: true,
                                source: None,
                            };
                        }
                    }
                    Err(e) => return e,
                }
            }
        }
    }

    async fn remove(
        &self,
        instance: &ServiceInstance,
        lease: Option<&ServiceInstance>,
    ) -> Result<()> {
        let registered = lease.unwrap_or(instance);
        // What cannot be written cannot be there: nothing to remove.
        if let Ok(parts) = to_nacos(registered, &self.config) {
            deregister_parts(&self.naming, &self.config.group, &parts).await?;
        }
        lock(&self.written).remove(&(instance.name.clone(), instance.id.clone()));
        Ok(())
    }

    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        let (listed, _) = source::list(&self.naming, &self.config.group, name).await?;
        Ok(listed.iter().any(|instance| instance.id == id))
    }

    fn retry_cap(&self) -> Duration {
        CHECK_EVERY
    }
}
