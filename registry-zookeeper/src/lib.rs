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
use tokio::task::JoinHandle;
use zookeeper_client::Error as Z;

mod config;
mod error;
#[doc(hidden)]
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod node;
mod service_watch;
mod session;
mod source;
mod store;

pub use config::{Config, DEFAULT_PORT, DEFAULT_ROOT, DEFAULT_SESSION_TIMEOUT};

use crate::error::map_err;
use crate::node::timed_raw;
use crate::session::Zk;
use crate::source::ZkSource;
use crate::store::ZkStore;

/// The URL scheme of this backend.
pub const SCHEME: &str = "zk";

/// Connects to the ZooKeeper the URL names (see [`Config::from_url`]); the facade's `connect`
/// calls this for `zk://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = ZkRegistry::connect(Config::from_url(url)?).await?;
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
        // The server expires sessions on tick boundaries.
        expiry_slack: Duration::from_millis(1500),
        // Two ticks of the test servers (tickTime 500 ms); a server's own floor applies.
        min_ttl: Duration::from_secs(1),
        reports_every_outage: true,
        metadata: Default::default(),
    }
}

/// The ZooKeeper registry. Share it through `Arc`. Registrations are kept by the core's
/// supervisor over the ephemeral-node primitives of `store.rs`. `close()` deregisters
/// everything and ends the watches; dropping closes its session: its ephemeral nodes go at
/// once, and its watchers end.
pub struct ZkRegistry {
    zk: Arc<Zk>,
    hub: Watches<ZkSource>,
    registrations: Registrations<ZkStore>,
    supervisor: JoinHandle<()>,
}

impl fmt::Debug for ZkRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkRegistry")
            .field("config", &self.zk.config)
            .finish_non_exhaustive()
    }
}

impl Drop for ZkRegistry {
    fn drop(&mut self) {
        self.registrations.abort();
        self.supervisor.abort();
        self.hub.shutdown();
        // The last client handle goes with the tasks: the session is closed.
        self.zk.current.send_replace(None);
    }
}

impl ZkRegistry {
    /// Connects a session; fails when no server answers, or when the config is invalid (a
    /// permanent error).
    pub async fn connect(config: Config) -> Result<Self> {
        config
            .check()
            .map_err(|reason| registry_core::Error::InvalidConfig {
                backend: SCHEME,
                reason,
            })?;
        let zk = Zk::connect(config).await?;
        let hub = Watches::with_config(ZkSource { zk: zk.clone() }, zk.config.watch.clone());
        Ok(ZkRegistry {
            supervisor: tokio::spawn(session::supervise(zk.clone())),
            registrations: Registrations::new(ZkStore::new(zk.clone())),
            zk,
            hub,
        })
    }

    /// Counts `session` as an earlier session of this registry, whose nodes register may
    /// replace (as it does for the registry's own expired sessions). For tests that need a
    /// stale node of an earlier session, which a live registry only meets in rare races.
    #[doc(hidden)]
    pub fn adopt_earlier_session(&self, session: i64) {
        self.zk.adopt(session);
    }

    /// The session that owns the node of `instance`'s registration made through this
    /// registry; `None` while it is not written (or not held by this registry).
    pub fn node_session(&self, instance: &ServiceInstance) -> Option<i64> {
        self.registrations
            .lease(&instance.name, &instance.id)
            .map(|written| written.session)
    }

    /// The id of the current session, if one is established.
    pub fn session_id(&self) -> Option<i64> {
        self.zk.current.borrow().as_ref().map(|c| c.session_id().0)
    }
}

#[async_trait]
impl Registrar for ZkRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for ZkRegistry {
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
impl Registry for ZkRegistry {
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

    /// The services with at least one node under the root.
    async fn list_services(&self) -> Result<Vec<String>> {
        let client = self.zk.client().await?;
        let root = &self.zk.config.root;
        let names = match timed_raw(&self.zk, client.list_children(root)).await? {
            Ok(names) => names,
            Err(Z::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(map_err("list", e)),
        };
        let mut services = Vec::new();
        for name in names {
            let path = format!("{root}/{name}");
            match timed_raw(&self.zk, client.list_children(&path)).await? {
                Ok(children) if !children.is_empty() => services.push(name),
                Ok(_) | Err(Z::NoNode) => {}
                Err(e) => return Err(map_err("list", e)),
            }
        }
        services.sort();
        Ok(services)
    }
}
