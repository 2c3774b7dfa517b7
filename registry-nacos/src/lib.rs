#![doc = include_str!("../README.md")]

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use nacos_sdk::api::naming::NamingService;
use registry_core::registration::Registrations;
use registry_core::validate::validate_name;
use registry_core::{
    Capabilities, Checked, Discovery, Error, MetadataLimits, Registrar, RegistrationStatus,
    Registry, Result, ServiceInstance, Watcher, Watches,
};
use tokio::sync::oneshot;

mod check;
mod client;
mod config;
mod error;
mod format;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod server;
mod source;
mod store;

pub use config::{Config, DEFAULT_CLUSTER, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_WEIGHT};

use crate::check::Checks;
use crate::server::ServerKind;
use crate::source::{instances_of, NacosSource};
use crate::store::{NacosStore, Parts};

/// The URL scheme of this backend.
pub const SCHEME: &str = "nacos";

/// Connects to the Nacos servers the URL names (see [`Config::from_url`]); the facade's
/// `connect` calls this for `nacos://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = NacosRegistry::connect(Config::from_url(url)?).await?;
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
        // A dead owner's connection drops and the server removes its instances.
        ttl_expiry: true,
        cross_process: true,
        // Pushes come 0.5-1 s late; a dropped connection is noticed within about a
        // second, a silent one after the server's detection timeout.
        expiry_slack: Duration::from_secs(3),
        min_ttl: Duration::from_secs(1),
        // nacos-sdk reconnects out of sight: a restart quicker than the watch's probe
        // (one second) is not told; the pushes after it keep the lists true.
        reports_every_outage: false,
        // Nacos' bound on one instance's metadata (checked before writing).
        metadata: MetadataLimits {
            total_chars: format::MAX_METADATA_CHARS,
            ..MetadataLimits::default()
        },
    }
}

/// The Nacos registry, on nacos-sdk's gRPC naming client. Share it through `Arc`.
///
/// Registrations are kept by the core's supervisor over the primitives of `store.rs`.
/// `close()` deregisters everything and ends the watches. Dropping it stops the checks and
/// ends the watches; since nacos-sdk keeps its connection (and registers again through it)
/// after the handle is gone, a task started with the registry — not from `Drop` — then
/// deregisters what is left. Outside a running runtime that task cannot run: the instances
/// leave when the process exits (the server drops a closed connection's instances at once).
pub struct NacosRegistry {
    naming: NamingService,
    config: Config,
    hub: Watches<NacosSource>,
    registrations: Registrations<NacosStore>,
    /// Dropped with the registry: wakes the task that deregisters what is left.
    _dropped: oneshot::Sender<()>,
    /// The task telling the server kind, when it outlived `connect`: aborted with the registry.
    _probe: client::Probe,
}

impl fmt::Debug for NacosRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NacosRegistry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl NacosRegistry {
    /// Connects to the servers; fails when none answers, or when the config is invalid (a
    /// permanent error).
    pub async fn connect(config: Config) -> Result<Self> {
        config.check().map_err(|reason| Error::InvalidConfig {
            backend: SCHEME,
            reason,
        })?;
        let (naming, kind, probe) = client::connect(&config).await?;
        let parts = Parts::default();
        let (dropped, on_drop) = oneshot::channel();
        tokio::spawn(leave_on_drop(
            naming.clone(),
            kind.clone(),
            config.group.clone(),
            parts.clone(),
            on_drop,
        ));
        let hub = Watches::with_config(
            NacosSource::new(naming.clone(), config.group.clone()),
            config.watch.clone(),
        );
        Ok(NacosRegistry {
            registrations: Registrations::new(NacosStore {
                naming: naming.clone(),
                kind,
                config: config.clone(),
                parts,
                checks: Checks::default(),
            }),
            naming,
            config,
            hub,
            _dropped: dropped,
            _probe: probe,
        })
    }
}

impl Drop for NacosRegistry {
    fn drop(&mut self) {
        self.registrations.abort();
        self.hub.shutdown();
    }
}

/// Started with the registry: once it is dropped, deregisters what it still has written.
async fn leave_on_drop(
    naming: NamingService,
    kind: ServerKind,
    group: String,
    parts: Parts,
    dropped: oneshot::Receiver<()>,
) {
    let _ = dropped.await;
    parts.clear(&naming, &kind, &group).await;
}

#[async_trait]
impl Registrar for NacosRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for NacosRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        self.hub.get(name).await
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        self.hub.watch(name).await
    }
}

#[async_trait]
impl Registry for NacosRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        self.registrations.status(name, id)
    }

    async fn close(&self) -> Result<()> {
        let result = self.registrations.close().await;
        self.hub.close().await;
        result
    }

    /// The names of the services in the group, `{name}.{scheme}` counted once as `name`.
    async fn list_services(&self) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        for service in source::service_names(&self.naming, &self.config.group).await? {
            let instances = instances_of(&self.naming, &self.config.group, &service).await?;
            if instances.is_empty() {
                continue;
            }
            // `{name}.{scheme}` counts as `name` when its instances say they are of that
            // scheme; a plain service with dots in its name stays whole.
            let name = match service.rsplit_once('.') {
                Some((name, scheme))
                    if validate_name(name).is_ok()
                        && instances.iter().any(|i| format::is_of_scheme(i, scheme)) =>
                {
                    name.to_owned()
                }
                _ => service,
            };
            names.insert(name);
        }
        Ok(names.into_iter().collect())
    }
}
