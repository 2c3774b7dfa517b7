#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use registry_core::validate::{validate_id, validate_name};
use registry_core::{
    Capabilities, Checked, Discovery, Error, Registrar, Registry, Result, ServiceInstance,
    WatchHub, Watcher,
};

mod client;
mod config;
mod core;
mod error;
mod registration;
mod rpc;
mod watch;

pub use config::{Config, TlsConfig};
pub use registration::RegistrationState;

use crate::core::Connection;
use crate::registration::{write, Registration};

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

struct Inner {
    conn: Arc<Connection>,
    config: Config,
    hub: WatchHub,
    registrations: Mutex<HashMap<String, Arc<Registration>>>,
}

/// The etcd registry. Share it through `Arc`. Dropping it stops every keep-alive at once
/// (each registration's task is aborted; its lease then expires after its TTL) and every
/// watch (its watchers' `next()` then fails with `Error::Closed`).
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
        config
            .check()
            .map_err(|reason| Error::invalid("etcd config", format!("{config:?}"), reason))?;
        let conn = Connection::open(&config).await?;
        Ok(EtcdRegistry {
            inner: Arc::new(Inner {
                conn: Arc::new(conn),
                config,
                hub: WatchHub::new(),
                registrations: Mutex::default(),
            }),
        })
    }

    /// The state of the registration of `instance` made through this registry, if any.
    pub fn registration_state(&self, instance: &ServiceInstance) -> Option<RegistrationState> {
        let key = self.key(&instance.name, &instance.id);
        self.registrations().get(&key).map(|r| r.state())
    }

    fn registrations(&self) -> MutexGuard<'_, HashMap<String, Arc<Registration>>> {
        self.inner
            .registrations
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    fn prefix(&self, name: &str) -> String {
        format!("{}/{name}/", self.inner.config.namespace)
    }

    fn key(&self, name: &str, id: &str) -> String {
        format!("{}{id}", self.prefix(name))
    }
}

#[async_trait]
impl Registrar for EtcdRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        instance.validate()?;
        let key = self.key(&instance.name, &instance.id);
        let within = self.inner.config.request_timeout * 2;
        // A registration that exists: its task writes the new value under its lease.
        let existing = self.registrations().get(&key).cloned();
        if let Some(existing) = existing {
            return existing.update(instance, within).await;
        }
        let lease = write(&self.inner.conn, &key, instance, self.inner.config.ttl).await?;
        let started = Arc::new(Registration::start(
            self.inner.conn.clone(),
            key.clone(),
            self.inner.config.ttl,
            lease,
            instance.clone(),
        ));
        let raced = {
            let mut registrations = self.registrations();
            match registrations.get(&key) {
                Some(first) => Some(first.clone()),
                None => {
                    registrations.insert(key.clone(), started.clone());
                    None
                }
            }
        };
        if let Some(first) = raced {
            // A concurrent first register of the same id won: its task writes our value
            // under its lease; then ours, holding nothing, is stopped and revoked.
            let written = first.update(instance, within).await;
            let ours = started.stop().await;
            self.revoke(ours).await;
            return written;
        }
        Ok(())
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        validate_name(&instance.name)?;
        validate_id(&instance.id)?;
        let key = self.key(&instance.name, &instance.id);
        let registration = self.registrations().remove(&key);
        if let Some(registration) = registration {
            // Stop the task first, then revoke its lease: a write it had in flight fails.
            let lease = registration.stop().await;
            self.revoke(lease).await;
        }
        self.inner
            .conn
            .run("delete", |c| {
                let key = key.clone();
                async move { c.delete(key.as_bytes()).await }
            })
            .await?;
        Ok(())
    }
}

impl EtcdRegistry {
    /// Revokes a lease (deleting what is attached to it); failures only log: an unrevoked
    /// lease expires after its TTL.
    async fn revoke(&self, lease: i64) {
        let (_, client) = self.inner.conn.client();
        if let Err(e) = client.lease_revoke(lease).await {
            tracing::debug!(lease, error = %e, "etcd lease revoke failed");
        }
    }
}

#[async_trait]
impl Discovery for EtcdRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        let view = watch::list(&self.inner.conn, &self.prefix(name), name).await?;
        let mut list = view.list();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        let conn = self.inner.conn.clone();
        let prefix = self.prefix(name);
        let owned = name.to_owned();
        self.inner
            .hub
            .watch(name, move |publisher| {
                watch::follow(conn, prefix, owned, publisher)
            })
            .await
    }
}

#[async_trait]
impl Registry for EtcdRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            register: true,
            watch: true,
            list_services: true,
            ttl_expiry: true,
            cross_process: true,
            expiry_slack: Duration::from_millis(1500),
            min_ttl: MIN_TTL,
        }
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
        let mut names: Vec<String> = resp
            .kvs
            .iter()
            .filter_map(|kv| {
                let rest = kv.key.strip_prefix(namespace.as_bytes())?;
                let name = std::str::from_utf8(rest).ok()?.split_once('/')?.0;
                watch::decode(&kv.key, &kv.value, name).map(|i| i.name)
            })
            .collect();
        names.dedup();
        Ok(names)
    }
}
