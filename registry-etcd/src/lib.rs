//! The etcd backend of the service registry toolkit (`etcd://`).
//!
//! go-kratos compatible: an instance is the key `{namespace}/{name}/{id}` (namespace default
//! `/microservices`) holding the instance JSON, attached to a lease (TTL default 15 s) that a
//! keep-alive stream renews.
//!
//! ```text
//! etcd://127.0.0.1:2379/microservices?ttl=10s&username=u&password=p&connect_timeout=5s&timeout=5s
//! ```
//!
//! Better than kratos where kratos users get hurt:
//! - reads use the prefix `{namespace}/{name}/` with the trailing slash, so `hello` never reads
//!   `helloworld`;
//! - when a lease is lost (expired while cut off, etcd wiped, keep-alive stream broken) the
//!   registration is written again under a new lease, with jittered exponential back-off that
//!   never gives up, always with the latest instance value;
//! - a watch lists the prefix and watches from the list's revision + 1; after any failure it
//!   lists again and continues, so the final state is never missed; all local watchers of a
//!   service share one upstream watch;
//! - a value under the prefix that is not a valid instance is skipped with a warning.
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> registry_core::Result<()> {
//! use registry_core::{Discovery, Registrar, ServiceInstance, Url};
//! use registry_etcd::{Config, EtcdRegistry};
//!
//! let url = Url::parse("etcd://127.0.0.1:2379/microservices?ttl=10s").unwrap();
//! let registry = EtcdRegistry::connect(Config::from_url(&url)?).await?;
//! let me = ServiceInstance::builder("1", "helloworld").endpoint("grpc://127.0.0.1:9000").build()?;
//! registry.register(&me).await?; // kept alive until deregister or drop
//! assert_eq!(registry.get_service("helloworld").await?, vec![me]);
//! # Ok(()) }
//! ```
//!
//! Not done yet (issue 3): TLS options, several endpoints in one URL, resuming a watch from
//! its last revision (it lists again instead, which never misses the final state), and the
//! fault and interop tests.
//!
//! Built on `etcd-client`, the maintained async etcd v3 client (tonic), which needs `protoc`
//! at build time.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use registry_core::validate::{validate_id, validate_name};
use registry_core::{
    Capabilities, Checked, Discovery, Error, Publisher, Registrar, Registry, Result,
    ServiceInstance, Url, UrlOptions, WatchHub, Watcher,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The URL scheme of this backend.
pub const SCHEME: &str = "etcd";
/// The namespace kratos uses.
pub const DEFAULT_NAMESPACE: &str = "/microservices";
/// The lease TTL kratos uses.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);
/// etcd's shortest lease.
pub const MIN_TTL: Duration = Duration::from_secs(2);

/// Connects to the etcd the URL names; the facade's `connect` calls this for `etcd://`.
pub async fn connect(url: Url) -> Result<Arc<dyn Registry>> {
    let registry = EtcdRegistry::connect(Config::from_url(&url)?).await?;
    Ok(Arc::new(Checked::new(registry)))
}

/// Options of the etcd backend.
#[derive(Clone)]
#[non_exhaustive]
pub struct Config {
    /// `host:port` of each etcd endpoint.
    pub endpoints: Vec<String>,
    /// The key prefix, such as `/microservices`.
    pub namespace: String,
    /// The lease TTL of each registration.
    pub ttl: Duration,
    /// User name and password, when etcd has authentication on.
    pub credentials: Option<(String, String)>,
    /// How long to wait for a connection.
    pub connect_timeout: Duration,
    /// How long to wait for each request.
    pub request_timeout: Duration,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("endpoints", &self.endpoints)
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            endpoints: vec!["127.0.0.1:2379".into()],
            namespace: DEFAULT_NAMESPACE.into(),
            ttl: DEFAULT_TTL,
            credentials: None,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl Config {
    /// Reads `etcd://HOST:PORT/NAMESPACE?ttl=..&username=..&password=..&connect_timeout=..&timeout=..`.
    pub fn from_url(url: &Url) -> Result<Config> {
        let shown = registry_core::redact(url);
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(shown, "expected etcd://"));
        }
        let host = url.host_str().unwrap_or_default();
        if host.is_empty() {
            return Err(Error::invalid_url(shown, "no etcd host"));
        }
        let mut config = Config {
            endpoints: vec![format!("{host}:{}", url.port().unwrap_or(2379))],
            ..Config::default()
        };
        let path = url.path().trim_end_matches('/');
        if !path.is_empty() {
            config.namespace = path.to_owned();
        }
        let mut opts = UrlOptions::new(url);
        if let Some(ttl) = opts.duration("ttl")? {
            config.ttl = ttl;
        }
        if let Some(t) = opts.duration("connect_timeout")? {
            config.connect_timeout = t;
        }
        if let Some(t) = opts.duration("timeout")? {
            config.request_timeout = t;
        }
        let user = opts.string("username");
        let password = opts.string("password");
        opts.finish()?;
        if config.ttl < MIN_TTL {
            return Err(Error::invalid_url(
                shown,
                "ttl below etcd's shortest lease (2s)",
            ));
        }
        if let (Some(user), Some(password)) = (user, password) {
            config.credentials = Some((user, password));
        }
        Ok(config)
    }
}

/// Where a registration stands, readable through [`EtcdRegistry::registration_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Written and kept alive under this lease.
    Registered {
        /// The lease id.
        lease: i64,
    },
    /// The lease was lost; writing it again (attempt counts from 1).
    Reregistering {
        /// How many attempts failed so far.
        attempt: u32,
        /// The last failure.
        last_error: String,
    },
}

struct Registration {
    latest: watch::Sender<ServiceInstance>,
    state: watch::Receiver<RegistrationState>,
    task: JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Inner {
    client: Client,
    config: Config,
    hub: WatchHub,
    registrations: Mutex<HashMap<String, Registration>>,
}

/// The etcd registry. Cheap to share through `Arc`; dropping it stops every keep-alive (each
/// registration aborts its task when dropped; watchers keep their upstream until dropped; the
/// leases then expire after their TTL).
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

fn map_err(operation: &'static str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match e {
        E::InvalidArgs(m) => Error::Backend {
            backend: SCHEME,
            message: format!("{operation}: {m}"),
            temporary: false,
            source: None,
        },
        // gRPC codes 7 (permission denied) and 16 (unauthenticated).
        E::GRpcStatus(status) if matches!(status.code() as i32, 7 | 16) => {
            Error::PermissionDenied {
                message: format!("{operation}: {}", status.message()),
            }
        }
        other => Error::unavailable(format!("etcd {operation} failed"), other),
    }
}

impl EtcdRegistry {
    /// Connects to etcd.
    pub async fn connect(config: Config) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(config.connect_timeout)
            .with_timeout(config.request_timeout);
        if let Some((user, password)) = &config.credentials {
            options = options.with_user(user.clone(), password.clone());
        }
        let connecting = Client::connect(&config.endpoints, Some(options));
        let client = tokio::time::timeout(config.connect_timeout, connecting)
            .await
            .map_err(|_| Error::Timeout {
                operation: "connect",
                after: config.connect_timeout,
            })?
            .map_err(|e| map_err("connect", e))?;
        let registry = EtcdRegistry {
            inner: Arc::new(Inner {
                client,
                config,
                hub: WatchHub::new(),
                registrations: Mutex::default(),
            }),
        };
        // Fail now, not at the first call, when etcd does not answer.
        registry
            .inner
            .client
            .clone()
            .status()
            .await
            .map_err(|e| map_err("status", e))?;
        Ok(registry)
    }

    /// The state of the registration of `instance` made through this registry, if any.
    pub fn registration_state(&self, instance: &ServiceInstance) -> Option<RegistrationState> {
        let key = self.key(&instance.name, &instance.id);
        self.registrations()
            .get(&key)
            .map(|r| r.state.borrow().clone())
    }

    fn registrations(&self) -> MutexGuard<'_, HashMap<String, Registration>> {
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

/// Grants a lease and writes the instance under it.
async fn write(
    client: &Client,
    key: &str,
    instance: &ServiceInstance,
    ttl: Duration,
) -> Result<i64> {
    let mut client = client.clone();
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = client
        .lease_grant(ttl_secs, None)
        .await
        .map_err(|e| map_err("lease grant", e))?
        .id();
    put_under(client, key, instance, lease).await?;
    Ok(lease)
}

/// Writes the instance under an existing lease.
async fn put_under(
    mut client: Client,
    key: &str,
    instance: &ServiceInstance,
    lease: i64,
) -> Result<()> {
    client
        .put(
            key,
            instance.to_json(),
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| map_err("put", e))?;
    Ok(())
}

/// Exponential back-off with ±50 % jitter, capped; never gives up.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);

    fn new(max: Duration) -> Self {
        Backoff {
            next: Self::FIRST,
            max,
        }
    }

    /// The jittered delay to wait now; doubles the next one.
    fn delay(&mut self) -> Duration {
        let delay = self.next.mul_f64(rand::random_range(0.5..1.5));
        self.next = (self.next * 2).min(self.max);
        delay
    }

    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// Keeps `lease` alive until it is lost; returns why.
async fn keep_alive(client: &Client, lease: i64, ttl: Duration) -> String {
    let mut client = client.clone();
    let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
        Ok(pair) => pair,
        Err(e) => return format!("keep-alive stream: {e}"),
    };
    loop {
        if let Err(e) = keeper.keep_alive().await {
            return format!("keep-alive send: {e}");
        }
        match tokio::time::timeout(ttl, stream.message()).await {
            Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
            Ok(Ok(Some(_))) => return "lease expired".into(),
            Ok(Ok(None)) => return "keep-alive stream closed".into(),
            Ok(Err(e)) => return format!("keep-alive: {e}"),
            Err(_) => return "no keep-alive answer within the TTL".into(),
        }
        tokio::time::sleep(ttl / 3).await;
    }
}

/// The background work of one registration: keep its lease alive, and when the lease is lost
/// write the latest value under a new lease, retrying with jittered back-off forever.
async fn maintain(
    client: Client,
    key: String,
    ttl: Duration,
    mut lease: i64,
    latest: watch::Receiver<ServiceInstance>,
    state: watch::Sender<RegistrationState>,
) {
    loop {
        let why = keep_alive(&client, lease, ttl).await;
        tracing::warn!(%key, lease, %why, "etcd lease lost; registering again");
        let mut attempt = 0u32;
        let mut backoff = Backoff::new(Duration::from_secs(10));
        lease = loop {
            let instance = latest.borrow().clone();
            match write(&client, &key, &instance, ttl).await {
                Ok(lease) => {
                    tracing::info!(%key, lease, attempt, "etcd registration restored");
                    break lease;
                }
                Err(e) => {
                    attempt += 1;
                    state.send_replace(RegistrationState::Reregistering {
                        attempt,
                        last_error: e.to_string(),
                    });
                    let delay = backoff.delay();
                    tracing::warn!(%key, attempt, error = %e, retry_in = ?delay, "etcd re-registration failed");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        state.send_replace(RegistrationState::Registered { lease });
    }
}

#[async_trait]
impl Registrar for EtcdRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        instance.validate()?;
        let key = self.key(&instance.name, &instance.id);
        let ttl = self.inner.config.ttl;
        // A registration that exists: write the new value under its current lease.
        let current = {
            let registrations = self.registrations();
            registrations.get(&key).map(|r| {
                r.latest.send_replace(instance.clone());
                r.state.borrow().clone()
            })
        };
        if let Some(RegistrationState::Registered { lease }) = current {
            return put_under(self.inner.client.clone(), &key, instance, lease).await;
        }
        if current.is_some() {
            // Being re-registered: it will write the latest value.
            return Ok(());
        }
        let lease = write(&self.inner.client, &key, instance, ttl).await?;
        let (latest, latest_rx) = watch::channel(instance.clone());
        let (state_tx, state) = watch::channel(RegistrationState::Registered { lease });
        let task = tokio::spawn(maintain(
            self.inner.client.clone(),
            key.clone(),
            ttl,
            lease,
            latest_rx,
            state_tx,
        ));
        let replaced = self.registrations().insert(
            key.clone(),
            Registration {
                latest,
                state,
                task,
            },
        );
        if let Some(replaced) = replaced {
            // A concurrent first register of the same id wrote under its own lease, whose
            // keep-alive we just stopped: the last one inserted writes again under its lease.
            drop(replaced);
            put_under(self.inner.client.clone(), &key, instance, lease).await?;
        }
        Ok(())
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        validate_name(&instance.name)?;
        validate_id(&instance.id)?;
        let key = self.key(&instance.name, &instance.id);
        let registration = self.registrations().remove(&key);
        let lease = registration.as_ref().and_then(|r| match *r.state.borrow() {
            RegistrationState::Registered { lease } => Some(lease),
            RegistrationState::Reregistering { .. } => None,
        });
        drop(registration); // stops the keep-alive
        let mut client = self.inner.client.clone();
        client
            .delete(key, None)
            .await
            .map_err(|e| map_err("delete", e))?;
        if let Some(lease) = lease {
            if let Err(e) = client.lease_revoke(lease).await {
                tracing::debug!(lease, error = %e, "lease revoke after deregister failed");
            }
        }
        Ok(())
    }
}

/// Decodes the instances under a prefix, skipping (with a warning) what is not one.
fn decode(key: &[u8], value: &[u8], name: &str) -> Option<ServiceInstance> {
    match ServiceInstance::from_json(value) {
        Ok(instance) if instance.name == name => Some(instance),
        Ok(instance) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), found = %instance.name, "etcd value names another service; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "etcd value is not an instance; skipped");
            None
        }
    }
}

/// Lists the prefix: the instances by key, and the revision of the read.
async fn list(
    client: &Client,
    prefix: &str,
    name: &str,
) -> Result<(BTreeMap<Vec<u8>, ServiceInstance>, i64)> {
    let mut client = client.clone();
    let resp = client
        .get(prefix, Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| map_err("get", e))?;
    let revision = resp.header().map_or(0, |h| h.revision());
    let instances = resp
        .kvs()
        .iter()
        .filter_map(|kv| decode(kv.key(), kv.value(), name).map(|i| (kv.key().to_vec(), i)))
        .collect();
    Ok((instances, revision))
}

/// The upstream of one service's shared watch.
async fn follow(client: Client, prefix: String, name: String, publisher: Publisher) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        if let Err(e) = list_and_watch(&client, &prefix, &name, &publisher, &mut backoff).await {
            publisher.report_error(e);
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// Lists, publishes, then applies watch events from the list's revision + 1 until the watch
/// fails; the caller lists again.
async fn list_and_watch(
    client: &Client,
    prefix: &str,
    name: &str,
    publisher: &Publisher,
    backoff: &mut Backoff,
) -> Result<()> {
    let (mut instances, revision) = list(client, prefix, name).await?;
    publisher.publish(instances.values().cloned().collect());
    backoff.reset();
    let mut client = client.clone();
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let mut stream = client
        .watch(prefix, Some(options))
        .await
        .map_err(|e| map_err("watch", e))?;
    loop {
        let Some(resp) = stream.message().await.map_err(|e| map_err("watch", e))? else {
            return Err(Error::Unavailable {
                message: "etcd watch stream ended".into(),
                source: None,
            });
        };
        if resp.canceled() {
            return Err(Error::Unavailable {
                message: format!(
                    "etcd watch canceled (compacted at {}): {}",
                    resp.compact_revision(),
                    resp.cancel_reason()
                ),
                source: None,
            });
        }
        for event in resp.events() {
            let Some(kv) = event.kv() else { continue };
            match event.event_type() {
                EventType::Put => match decode(kv.key(), kv.value(), name) {
                    Some(instance) => {
                        instances.insert(kv.key().to_vec(), instance);
                    }
                    None => {
                        instances.remove(kv.key());
                    }
                },
                EventType::Delete => {
                    instances.remove(kv.key());
                }
            }
        }
        if !resp.events().is_empty() {
            publisher.publish(instances.values().cloned().collect());
        }
    }
}

#[async_trait]
impl Discovery for EtcdRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        let (instances, _) = list(&self.inner.client, &self.prefix(name), name).await?;
        let mut list: Vec<_> = instances.into_values().collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        let client = self.inner.client.clone();
        let prefix = self.prefix(name);
        let owned = name.to_owned();
        self.inner
            .hub
            .watch(name, move |publisher| {
                follow(client, prefix, owned, publisher)
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
            list_services: false,
            ttl_expiry: true,
            cross_process: true,
            expiry_slack: Duration::from_millis(1500),
            min_ttl: MIN_TTL,
        }
    }
}
