//! The in-memory backend (`memory://`), the embedded default.
//!
//! Registrations live in a store inside this process. `memory://` is the process-wide default
//! store; `memory://NAME` is a store of its own, shared by every handle connected to that name.
//! The option `ttl` (default 15 s) sets how long a registration outlives its owner.
//!
//! Each handle is one owner, like a client session of a real registry: a registration belongs
//! to the handle that made it, and when that handle is dropped without deregistering, its
//! registrations expire after the handle's TTL, also when no other handle is left (dropped
//! outside a Tokio runtime, they are purged at the next read instead of on a timer). Cloning
//! a handle shares the store but makes a new owner.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;
use tokio::time::Instant;
use url::Url;

use crate::registration::{self, Registrations};
use crate::validate::validate_name;
use crate::watch::{self as watching, Stop, Updates};
use crate::{
    Capabilities, Discovery, Error, Registrar, RegistrationStatus, Registry, Result,
    ServiceInstance, UrlOptions, Watcher, Watches,
};

/// The URL scheme of this backend.
pub const SCHEME: &str = "memory";

/// What every in-memory registry offers ([`Registry::capabilities`] returns this), whatever
/// its URL. The composite registry (`multi:`) declares its capabilities from this for a
/// member that is not connected yet.
pub fn capabilities() -> Capabilities {
    Capabilities {
        register: true,
        watch: true,
        list_services: true,
        ttl_expiry: true,
        cross_process: false,
        expiry_slack: Duration::from_millis(500),
        min_ttl: Duration::from_millis(1),
        reports_every_outage: true,
        metadata: Default::default(),
    }
}

/// How long a registration outlives its dropped owner when no `ttl` is given.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// The named stores. A store stays while a handle uses it or it holds a registration, so an
/// orphaned registration outlives its last handle until its TTL runs out.
static STORES: LazyLock<Mutex<HashMap<String, Arc<Store>>>> = LazyLock::new(Default::default);
static NEXT_OWNER: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
struct Entry {
    instance: ServiceInstance,
    owner: u64,
    expires_at: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    services: BTreeMap<String, BTreeMap<String, Entry>>,
}

impl State {
    /// Drops expired entries; returns whether anything was removed.
    fn purge(&mut self, now: Instant) -> bool {
        let mut removed = false;
        self.services.retain(|_, entries| {
            entries.retain(|_, e| {
                let live = e.expires_at.is_none_or(|at| at > now);
                removed |= !live;
                live
            });
            !entries.is_empty()
        });
        removed
    }
}

#[derive(Debug)]
struct Store {
    state: Mutex<State>,
    /// Bumped on every change; the watch upstreams re-list on it.
    changed: watch::Sender<u64>,
}

impl Store {
    fn new() -> Self {
        Store {
            state: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }

    fn named(name: &str) -> Arc<Store> {
        let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
        stores
            .retain(|_, store| Arc::strong_count(store) > 1 || !store.state().services.is_empty());
        stores
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Store::new()))
            .clone()
    }

    /// The state with expired entries purged (watchers are told when something expired).
    fn state(&self) -> MutexGuard<'_, State> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.purge(Instant::now()) {
            self.notify();
        }
        state
    }

    fn notify(&self) {
        self.changed.send_modify(|gen| *gen += 1);
    }

    fn list(&self, name: &str) -> Vec<ServiceInstance> {
        self.state()
            .services
            .get(name)
            .map(|entries| entries.values().map(|e| e.instance.clone()).collect())
            .unwrap_or_default()
    }
}

/// A handle on an in-memory store. See the [module docs](self).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> registry_core::Result<()> {
/// use registry_core::{Discovery, MemoryRegistry, Registrar, ServiceInstance};
/// let registry = MemoryRegistry::new();
/// let instance = ServiceInstance::builder("1", "helloworld")
///     .endpoint("grpc://127.0.0.1:9000")
///     .build()?;
/// registry.register(&instance).await?;
/// assert_eq!(registry.get_service("helloworld").await?, vec![instance]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct MemoryRegistry {
    store: Arc<Store>,
    owner: u64,
    ttl: Duration,
    registrations: Registrations<Writer>,
    /// This handle's watches (of the shared store).
    hub: Watches<Reader>,
}

/// The memory backend's primitives for the core's watch engine.
#[derive(Debug)]
struct Reader {
    store: Arc<Store>,
}

#[async_trait]
impl watching::Source for Reader {
    type Position = ();

    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, ())> {
        Ok((self.store.list(name), ()))
    }

    async fn follow(&self, name: &str, _from: (), updates: &Updates<()>) -> Stop {
        let mut changed = self.store.changed.subscribe();
        updates.following();
        // Listed once more: a change between the engine's list and the subscription counts.
        updates.list(self.store.list(name), ());
        loop {
            if changed.changed().await.is_err() {
                return Stop::Failed(Error::Closed);
            }
            updates.list(self.store.list(name), ());
        }
    }
}

/// The memory backend's primitives for the core's registration supervisor.
#[derive(Debug)]
struct Writer {
    store: Arc<Store>,
    owner: u64,
}

#[async_trait]
impl registration::Store for Writer {
    type Lease = ();

    async fn write(&self, instance: &ServiceInstance, _held: Option<&()>) -> Result<()> {
        self.store
            .state()
            .services
            .entry(instance.name.clone())
            .or_default()
            .insert(
                instance.id.clone(),
                Entry {
                    instance: instance.clone(),
                    owner: self.owner,
                    expires_at: None,
                },
            );
        self.store.notify();
        Ok(())
    }

    async fn hold(&self, instance: &ServiceInstance, _lease: &()) -> Error {
        let mut changed = self.store.changed.subscribe();
        loop {
            let there = self
                .store
                .state()
                .services
                .get(&instance.name)
                .is_some_and(|entries| entries.contains_key(&instance.id));
            if !there {
                return Error::Backend {
                    backend: SCHEME,
                    message: "the instance was removed from outside".into(),
                    temporary: true,
                    source: None,
                };
            }
            if changed.changed().await.is_err() {
                return Error::Closed;
            }
        }
    }

    async fn remove(&self, instance: &ServiceInstance, _lease: Option<&()>) -> Result<()> {
        let removed = {
            let mut state = self.store.state();
            let entries = state.services.get_mut(&instance.name);
            let removed = entries.and_then(|e| e.remove(&instance.id)).is_some();
            state.services.retain(|_, e| !e.is_empty());
            removed
        };
        if removed {
            self.store.notify();
        }
        Ok(())
    }

    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        Ok(self
            .store
            .state()
            .services
            .get(name)
            .is_some_and(|entries| entries.contains_key(id)))
    }

    fn retry_cap(&self) -> Duration {
        Duration::from_millis(500)
    }

    fn backend(&self) -> &'static str {
        "memory"
    }
}

impl MemoryRegistry {
    /// A handle on a new private store, with the default TTL.
    pub fn new() -> Self {
        Self::with_store(Arc::new(Store::new()), DEFAULT_TTL)
    }

    /// A handle on the process-wide store called `name` (`""` is the default store).
    pub fn named(name: &str, ttl: Duration) -> Self {
        Self::with_store(Store::named(name), ttl)
    }

    /// A handle from a URL: `memory://[STORE][?ttl=DURATION]`.
    pub fn from_url(url: &Url) -> Result<Self> {
        if url.scheme() != SCHEME {
            return Err(Error::invalid_url(crate::redact(url), "expected memory://"));
        }
        if !matches!(url.path(), "" | "/") {
            return Err(Error::invalid_url(
                crate::redact(url),
                "memory:// takes a store name, not a path",
            ));
        }
        let mut opts = UrlOptions::new(url);
        let ttl = opts.duration("ttl")?.unwrap_or(DEFAULT_TTL);
        opts.finish()?;
        if ttl.is_zero() {
            return Err(Error::invalid_url(
                crate::redact(url),
                "ttl must be positive",
            ));
        }
        Ok(Self::named(url.host_str().unwrap_or_default(), ttl))
    }

    fn with_store(store: Arc<Store>, ttl: Duration) -> Self {
        let owner = NEXT_OWNER.fetch_add(1, Ordering::Relaxed);
        MemoryRegistry {
            registrations: Registrations::new(Writer {
                store: store.clone(),
                owner,
            }),
            hub: Watches::new(Reader {
                store: store.clone(),
            }),
            store,
            owner,
            ttl,
        }
    }

    /// How long this handle's registrations outlive it.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl Clone for MemoryRegistry {
    /// Shares the store; the clone is a new owner with the same TTL.
    fn clone(&self) -> Self {
        Self::with_store(self.store.clone(), self.ttl)
    }
}

impl Drop for MemoryRegistry {
    fn drop(&mut self) {
        // No keep-alive may write again while the registrations are being orphaned.
        self.registrations.abort();
        self.hub.shutdown();
        // A TTL too long to add to the clock never expires.
        let Some(deadline) = Instant::now().checked_add(self.ttl) else {
            return;
        };
        let mut orphaned = false;
        {
            let mut state = self.store.state.lock().unwrap_or_else(|p| p.into_inner());
            for entry in state.services.values_mut().flat_map(|s| s.values_mut()) {
                if entry.owner == self.owner && entry.expires_at.is_none() {
                    entry.expires_at = Some(deadline);
                    orphaned = true;
                }
            }
        }
        // Reads purge lazily; inside a Tokio runtime a timer also tells watchers on time.
        if let (true, Ok(runtime)) = (orphaned, tokio::runtime::Handle::try_current()) {
            let store = Arc::downgrade(&self.store);
            runtime.spawn(async move {
                tokio::time::sleep_until(deadline).await;
                if let Some(store) = store.upgrade() {
                    drop(store.state());
                }
            });
        }
    }
}

#[async_trait]
impl Registrar for MemoryRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for MemoryRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        Ok(self.store.list(name))
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        self.hub.watch(name).await
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
        capabilities()
    }

    async fn list_services(&self) -> Result<Vec<String>> {
        Ok(self.store.state().services.keys().cloned().collect())
    }

    fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        self.registrations.status(name, id)
    }

    async fn close(&self) -> Result<()> {
        let result = self.registrations.close().await;
        self.hub.close().await;
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(id: &str) -> ServiceInstance {
        ServiceInstance::builder(id, "svc")
            .endpoint("http://127.0.0.1:8000")
            .build()
            .unwrap()
    }

    fn ids(list: impl AsRef<[ServiceInstance]>) -> Vec<String> {
        list.as_ref().iter().map(|i| i.id.clone()).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_owner_expires_after_its_ttl_and_only_its_own() {
        let observer = MemoryRegistry::named("memory-unit-owner", Duration::from_secs(5));
        let owner = observer.clone();
        owner.register(&instance("owned")).await.unwrap();
        observer.register(&instance("kept")).await.unwrap();
        let mut watcher = observer.watch("svc").await.unwrap();
        assert_eq!(ids(watcher.next().await.unwrap()), ["kept", "owned"]);

        drop(owner);
        tokio::time::advance(Duration::from_millis(4900)).await;
        assert_eq!(
            ids(observer.get_service("svc").await.unwrap()),
            ["kept", "owned"]
        );
        // The watcher hears of the expiry on time, without anyone reading.
        let list = tokio::time::timeout(Duration::from_secs(1), watcher.next())
            .await
            .expect("expiry reaches the watcher")
            .unwrap();
        assert_eq!(ids(list), ["kept"]);
    }

    #[tokio::test]
    async fn named_stores_are_shared_and_private_stores_are_not() {
        let url = Url::parse("memory://memory-unit-shared?ttl=3s").unwrap();
        let a = MemoryRegistry::from_url(&url).unwrap();
        let b = MemoryRegistry::from_url(&url).unwrap();
        assert_eq!(a.ttl(), Duration::from_secs(3));
        a.register(&instance("1")).await.unwrap();
        assert_eq!(ids(b.get_service("svc").await.unwrap()), ["1"]);
        // Only its owner deregisters it; deregistering twice is fine.
        let refused = b.deregister(&instance("1")).await.unwrap_err();
        assert!(matches!(refused, Error::NotOwned { .. }), "{refused}");
        assert_eq!(ids(b.get_service("svc").await.unwrap()), ["1"]);
        a.deregister(&instance("1")).await.unwrap();
        a.deregister(&instance("1")).await.unwrap();
        b.deregister(&instance("1")).await.unwrap();
        assert!(a.get_service("svc").await.unwrap().is_empty());

        let private = MemoryRegistry::new();
        private.register(&instance("2")).await.unwrap();
        assert!(a.get_service("svc").await.unwrap().is_empty());
        assert_eq!(private.list_services().await.unwrap(), ["svc"]);
    }

    #[tokio::test]
    async fn a_registration_removed_from_outside_is_written_again_with_its_latest_value() {
        let url = Url::parse("memory://memory-unit-restore").unwrap();
        let owner = MemoryRegistry::from_url(&url).unwrap();
        let other = MemoryRegistry::from_url(&url).unwrap();
        let mut latest = instance("1");
        owner.register(&latest).await.unwrap();
        latest.version = "v2".into();
        owner.register(&latest).await.unwrap();
        let status = owner.registration("svc", "1").expect("held");
        // Another handle takes the id over and removes it: the owner writes it back (its
        // latest value, v2, where the other handle wrote the first one).
        other.register(&instance("1")).await.unwrap();
        other.deregister(&instance("1")).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while owner.get_service("svc").await.unwrap() != vec![latest.clone()] {
            assert!(
                Instant::now() < deadline,
                "not restored with its latest value"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(status.get().is_registered(), "{:?}", status.get());
        owner.close().await.unwrap();
        assert!(other.get_service("svc").await.unwrap().is_empty());
        assert!(owner.registration("svc", "1").is_none());
        assert!(matches!(owner.register(&latest).await, Err(Error::Closed)));
    }

    #[tokio::test(start_paused = true)]
    async fn an_orphaned_registration_outlives_every_handle_until_its_ttl() {
        let url = Url::parse("memory://memory-unit-orphan?ttl=2s").unwrap();
        let owner = MemoryRegistry::from_url(&url).unwrap();
        owner.register(&instance("orphan")).await.unwrap();
        drop(owner);
        let later = MemoryRegistry::from_url(&url).unwrap();
        assert_eq!(ids(later.get_service("svc").await.unwrap()), ["orphan"]);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(later.get_service("svc").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_ttl_beyond_the_clock_never_expires_and_never_panics() {
        let registry = MemoryRegistry::named("memory-unit-forever", Duration::MAX);
        let observer = registry.clone();
        registry.register(&instance("forever")).await.unwrap();
        drop(registry);
        assert_eq!(ids(observer.get_service("svc").await.unwrap()), ["forever"]);
    }

    #[test]
    fn bad_urls_are_refused() {
        for bad in ["memory://x/path", "memory://x?ttl=0s", "memory://x?tll=1s"] {
            let url = Url::parse(bad).unwrap();
            assert!(
                matches!(
                    MemoryRegistry::from_url(&url),
                    Err(Error::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    /// Found by the `registry_url` fuzz target: these errors showed the URL as written.
    #[test]
    fn bad_urls_are_refused_without_their_secrets() {
        for bad in [
            "memory://user:hunter2secret@store/path",
            "memory://user:hunter2secret@store?ttl=0s",
            "memory://x/.1?digest=user:hunter2secret",
        ] {
            let url = Url::parse(bad).unwrap();
            let err = MemoryRegistry::from_url(&url).unwrap_err();
            assert!(matches!(err, Error::InvalidUrl { .. }), "{bad}: {err}");
            assert!(!err.to_string().contains("hunter2"), "{bad}: {err}");
        }
    }
}
