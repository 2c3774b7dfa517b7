#![doc = include_str!("../README.md")]

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Registrations;
use registry_core::validate::validate_name;
use registry_core::{
    Capabilities, Checked, Discovery, Error, Registrar, RegistrationStatus, Registry, Result,
    ServiceInstance, Watcher, Watches,
};

mod client;
mod config;
mod core;
mod error;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod rpc;
mod source;
mod store;

pub use config::Config;
/// TLS options (core's, shared by every backend).
pub use registry_core::config::TlsConfig;

use crate::core::Connection;
use crate::source::EtcdSource;
use crate::store::EtcdStore;

/// The URL scheme of this backend.
pub const SCHEME: &str = "etcd";
/// The namespace kratos uses.
pub const DEFAULT_NAMESPACE: &str = "/microservices";
/// The lease TTL kratos uses.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// etcd's shortest lease.
pub const MIN_TTL: Duration = Duration::from_secs(2);
/// etcd's client port, used when a URL gives none.
pub const DEFAULT_PORT: u16 = 2379;

/// Connects to the etcd the URL names (see [`Config::from_url`]); the facade's `connect`
/// calls this for `etcd://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = EtcdRegistry::connect(Config::from_url(url)?).await?;
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
        metadata: Default::default(),
    }
}

struct Inner {
    conn: Arc<Connection>,
    config: Config,
    hub: Watches<EtcdSource>,
    registrations: Registrations<EtcdStore>,
}

/// The etcd registry. Share it through `Arc`. Registrations are kept by the core's
/// supervisor ([`Registrations`]) over the lease primitives of `store.rs`.
/// `close()` deregisters everything and ends the watches; dropping stops every keep-alive at
/// once (each lease then expires after its TTL) and every watch (its watchers' `next()` then
/// fails with `Error::Closed`).
pub struct EtcdRegistry {
    inner: Arc<Inner>,
}

impl fmt::Debug for EtcdRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdRegistry")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl Drop for EtcdRegistry {
    fn drop(&mut self) {
        self.inner.hub.shutdown();
    }
}

impl EtcdRegistry {
    /// Connects to the first of the config's endpoints that answers; fails when none does,
    /// or when the config is invalid (a permanent error).
    pub async fn connect(config: Config) -> Result<Self> {
        config.check().map_err(|reason| Error::InvalidConfig {
            backend: SCHEME,
            reason,
        })?;
        let conn = Arc::new(Connection::open(&config).await?);
        let store = EtcdStore {
            conn: conn.clone(),
            namespace: config.namespace.clone(),
            ttl: config.ttl,
            request_timeout: config.request_timeout,
        };
        let hub = Watches::with_config(
            EtcdSource {
                conn: conn.clone(),
                namespace: config.namespace.clone(),
            },
            config.watch.clone(),
        );
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                conn,
                config,
                hub,
                registrations: Registrations::new(store),
            }),
        })
    }

    /// The lease the registration of `instance` made through this registry is kept under
    /// now; `None` while it is not written (or not held by this registry).
    pub fn lease(&self, instance: &ServiceInstance) -> Option<i64> {
        self.inner.registrations.lease(&instance.name, &instance.id)
    }
}

#[async_trait]
impl Registrar for EtcdRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.inner.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.inner.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for EtcdRegistry {
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
impl Registry for EtcdRegistry {
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

    /// The services with at least one valid instance under the namespace.
    async fn list_services(&self) -> Result<Vec<String>> {
        let namespace = format!("{}/", self.inner.config.namespace);
        let resp = self
            .inner
            .conn
            .run("get", |c| {
                let namespace = namespace.clone();
                async move { c.get_prefix(namespace.as_bytes(), 0).await }
            })
            .await?;
        // Keys sort `a-b/` before `a/`: a set gives the names in order.
        let names: std::collections::BTreeSet<String> = resp
            .kvs
            .iter()
            .filter_map(|kv| {
                let rest = kv.key.strip_prefix(namespace.as_bytes())?;
                let name = std::str::from_utf8(rest).ok()?.split_once('/')?.0;
                source::decode(&kv.key, &kv.value, name).map(|i| i.name)
            })
            .collect();
        Ok(names.into_iter().collect())
    }
}
