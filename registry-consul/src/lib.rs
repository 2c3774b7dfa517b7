#![doc = include_str!("../README.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Registrations;
use registry_core::validate::validate_name;
use registry_core::{
    Capabilities, Checked, Discovery, Registrar, RegistrationStatus, Registry, Result,
    ServiceInstance, Watcher, Watches,
};

mod client;
mod config;
mod error;
mod format;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod source;
mod store;

pub use config::{
    Config, DEFAULT_DEREGISTER_AFTER, DEFAULT_PORT, DEFAULT_TTL, MIN_DEREGISTER_AFTER, MIN_TTL,
};
/// TLS options (core's, shared by every backend; `domain` is not used by this backend).
pub use registry_core::config::TlsConfig;

use crate::client::Client;
use crate::source::ConsulSource;
use crate::store::ConsulStore;

/// The URL scheme of this backend.
pub const SCHEME: &str = "consul";

/// Connects to the Consul agent the URL names (see [`Config::from_url`]); the facade's
/// `connect` calls this for `consul://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = ConsulRegistry::connect(Config::from_url(url)?).await?;
    Ok(Arc::new(Checked::new(registry)))
}

/// What every handle of this backend offers ([`Registry::capabilities`] returns this),
/// known without connecting: it depends on neither the URL nor the server. The
/// composite registry (`multi:`) declares its capabilities from this for a member that is
/// not connected yet.
pub fn capabilities() -> Capabilities {
    Capabilities {
        register: true,
        watch: true,
        list_services: true,
        ttl_expiry: true,
        cross_process: true,
        expiry_slack: Duration::from_millis(1500),
        min_ttl: MIN_TTL,
        reports_every_outage: true,
        // Consul's own rules for service metadata (checked before writing).
        metadata: registry_core::MetadataLimits {
            entries: 64,
            value_bytes: 512,
            token_keys: true,
            total_chars: usize::MAX,
        },
    }
}

struct Inner {
    client: Arc<Client>,
    config: Config,
    hub: Watches<ConsulSource>,
    registrations: Registrations<ConsulStore>,
}

/// The Consul registry. Share it through `Arc`. Registrations are kept by the core's
/// supervisor over the agent primitives of `store.rs`. `close()` deregisters
/// everything and ends the watches; dropping stops every heartbeat at once (the checks then
/// turn critical after their TTL and leave the passing list) and every watch.
pub struct ConsulRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for ConsulRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConsulRegistry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ConsulRegistry {
    fn drop(&mut self) {
        // Heartbeats stop with the registrations (they go with the last handle).
        self.inner.hub.shutdown();
    }
}

impl ConsulRegistry {
    /// Connects to the agent; fails when it does not answer, or when the config is invalid
    /// (a permanent error).
    pub async fn connect(config: Config) -> Result<Self> {
        config
            .check()
            .map_err(|reason| registry_core::Error::InvalidConfig {
                backend: SCHEME,
                reason,
            })?;
        let client = Arc::new(Client::new(&config)?);
        client.ping().await?;
        let store = ConsulStore {
            client: client.clone(),
            config: config.clone(),
        };
        let hub = Watches::with_config(
            ConsulSource {
                client: client.clone(),
                wait: config.wait,
            },
            config.watch.clone(),
        );
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                client,
                config,
                hub,
                registrations: Registrations::new(store),
            }),
        })
    }
}

#[async_trait]
impl Registrar for ConsulRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.inner.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.inner.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for ConsulRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        self.inner.hub.get(name).await
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        self.inner.hub.watch(name).await
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        self.inner.registrations.status(name, id)
    }

    async fn close(&self) -> Result<()> {
        let result = self.inner.registrations.close().await;
        self.inner.hub.close().await;
        result
    }

    /// The services with at least one passing check (so at least one instance
    /// `get_service` lists), sorted; Consul's own is left out.
    async fn list_services(&self) -> Result<Vec<String>> {
        let services = self.inner.client.passing_services().await?;
        Ok(services
            .into_iter()
            .filter(|name| name != "consul")
            .collect())
    }
}
