#![doc = include_str!("../README.md")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder,
    ServiceInstance as NacosInstance,
};
use nacos_sdk::api::props::ClientProps;
use registry_core::validate::{validate_id, validate_name};
use registry_core::{
    Backoff, Capabilities, Checked, Discovery, Error, Publisher, Registrar, Registry, Result,
    ServiceInstance, WatchHub, Watcher,
};
use tokio::sync::mpsc;

mod config;
mod format;

pub use config::{Config, DEFAULT_CLUSTER, DEFAULT_GROUP, DEFAULT_PORT, DEFAULT_WEIGHT};

use crate::format::{assemble, service_of, to_nacos, Services};

/// The URL scheme of this backend.
pub const SCHEME: &str = "nacos";

/// Schemes a watch follows from its start, before they appear in the service list.
const COMMON_SCHEMES: [&str; 4] = ["http", "https", "grpc", "grpcs"];
/// How often a watch looks for services of its name with other schemes.
const RESCAN: Duration = Duration::from_secs(5);

/// Connects to the Nacos servers the URL names (see [`Config::from_url`]); the facade's
/// `connect` calls this for `nacos://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = NacosRegistry::connect(Config::from_url(url)?).await?;
    Ok(Arc::new(Checked::new(registry)))
}

fn map_err(operation: &'static str, e: nacos_sdk::api::error::Error) -> Error {
    use nacos_sdk::api::error::Error as N;
    match e {
        N::ErrResult(message) if message.contains("auth") || message.contains("403") => {
            Error::PermissionDenied {
                message: format!("Nacos {operation}: {message}"),
            }
        }
        other => Error::unavailable(format!("Nacos {operation} failed"), other),
    }
}

/// The Nacos registry, on nacos-sdk's gRPC naming client. Share it through `Arc`. Dropping it
/// deregisters everything it registered (in the background) and ends its watches.
pub struct NacosRegistry {
    naming: NamingService,
    config: Config,
    hub: WatchHub,
    /// What this registry registered, by (name, id): the value last written.
    registrations: tokio::sync::Mutex<HashMap<(String, String), ServiceInstance>>,
    _cache: Option<tempfile::TempDir>,
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
        config
            .check()
            .map_err(|reason| Error::invalid("nacos config", format!("{config:?}"), reason))?;
        let (cache_dir, cache) = match &config.cache_dir {
            Some(dir) => (dir.clone(), None),
            None => {
                let dir = tempfile::Builder::new()
                    .prefix("registry-nacos-")
                    .tempdir()
                    .map_err(|e| Error::unavailable("Nacos cache directory", e))?;
                (dir.path().to_owned(), Some(dir))
            }
        };
        let mut props = ClientProps::new()
            .server_addr(config.servers.join(","))
            .namespace(config.namespace.clone())
            .app_name("registry-rs")
            // The settings here win over NACOS_CLIENT_* environment variables.
            .env_first(false)
            // Report an empty service as empty (nacos-sdk hides it by default).
            .naming_push_empty_protection(false)
            .naming_load_cache_at_start(false)
            .cache_dir(cache_dir);
        let mut builder_auth = false;
        if let Some((user, password)) = &config.credentials {
            props = props
                .auth_username(user.clone())
                .auth_password(password.clone());
            builder_auth = true;
        }
        let mut builder = NamingServiceBuilder::new(props);
        if builder_auth {
            builder = builder.enable_auth_plugin_http();
        }
        let naming = builder.build().await.map_err(|e| map_err("connect", e))?;
        // Fail now, not at the first call, when no server answers.
        naming
            .get_service_list(1, 1, Some(config.group.clone()))
            .await
            .map_err(|e| map_err("connect", e))?;
        Ok(NacosRegistry {
            naming,
            config,
            hub: WatchHub::new(),
            registrations: tokio::sync::Mutex::default(),
            _cache: cache,
        })
    }

    fn group(&self) -> Option<String> {
        Some(self.config.group.clone())
    }

    async fn register_parts(&self, parts: &[(String, NacosInstance)]) -> Result<()> {
        for (service, instance) in parts {
            self.naming
                .register_instance(service.clone(), self.group(), instance.clone())
                .await
                .map_err(|e| map_err("register", e))?;
        }
        Ok(())
    }

    async fn deregister_parts(&self, parts: &[(String, NacosInstance)]) -> Result<()> {
        for (service, instance) in parts {
            self.naming
                .deregister_instance(service.clone(), self.group(), instance.clone())
                .await
                .map_err(|e| map_err("deregister", e))?;
        }
        Ok(())
    }
}

impl Drop for NacosRegistry {
    fn drop(&mut self) {
        self.hub.shutdown();
        // nacos-sdk keeps its connection (and would re-register through it) after the naming
        // service is dropped: deregister what is ours explicitly.
        let registered: Vec<ServiceInstance> = match self.registrations.try_lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => Vec::new(),
        };
        if registered.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("NacosRegistry dropped outside a runtime: its instances stay until the process exits");
            return;
        };
        let naming = self.naming.clone();
        let config = self.config.clone();
        runtime.spawn(async move {
            for instance in registered {
                for (service, nacos) in to_nacos(&instance, &config).unwrap_or_default() {
                    if let Err(e) = naming
                        .deregister_instance(service, Some(config.group.clone()), nacos)
                        .await
                    {
                        tracing::warn!(error = %e, "Nacos deregister on drop failed");
                    }
                }
            }
        });
    }
}

#[async_trait]
impl Registrar for NacosRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        let parts = to_nacos(instance, &self.config)?;
        let key = (instance.name.clone(), instance.id.clone());
        let mut registrations = self.registrations.lock().await;
        // Endpoints of the previous value that the new one no longer has go first; the others
        // are registered again, which updates them.
        if let Some(previous) = registrations.get(&key) {
            let gone: Vec<_> = to_nacos(previous, &self.config)?
                .into_iter()
                .filter(|(service, old)| {
                    !parts
                        .iter()
                        .any(|(s, new)| s == service && new.ip == old.ip && new.port == old.port)
                })
                .collect();
            self.deregister_parts(&gone).await?;
        }
        self.register_parts(&parts).await?;
        registrations.insert(key, instance.clone());
        Ok(())
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        validate_name(&instance.name)?;
        validate_id(&instance.id)?;
        let key = (instance.name.clone(), instance.id.clone());
        let mut registrations = self.registrations.lock().await;
        let registered = registrations
            .get(&key)
            .cloned()
            .unwrap_or_else(|| instance.clone());
        // What cannot be written cannot be there: nothing to remove.
        let Ok(parts) = to_nacos(&registered, &self.config) else {
            return Ok(());
        };
        self.deregister_parts(&parts).await?;
        registrations.remove(&key);
        Ok(())
    }
}

/// The Nacos services of `name`: `{name}.{scheme}`, and `name` itself (a service registered
/// under the plain name, or a kratos user asking for `helloworld.grpc`).
async fn services_of(naming: &NamingService, group: &str, name: &str) -> Result<BTreeSet<String>> {
    let prefix = format!("{name}.");
    let mut found = BTreeSet::new();
    let mut page = 1;
    loop {
        let (names, total) = naming
            .get_service_list(page, 500, Some(group.to_owned()))
            .await
            .map_err(|e| map_err("list services", e))?;
        let fetched = names.len();
        found.extend(names.into_iter().filter(|s| {
            s == name
                || s.strip_prefix(&prefix)
                    .is_some_and(|scheme| !scheme.contains('.'))
        }));
        if fetched == 0 || (page * 500) as i64 >= i64::from(total) {
            break;
        }
        page += 1;
    }
    Ok(found)
}

async fn instances_of(
    naming: &NamingService,
    group: &str,
    service: &str,
) -> Result<Vec<NacosInstance>> {
    naming
        .select_instances(
            service.to_owned(),
            Some(group.to_owned()),
            Vec::new(),
            false,
            true,
        )
        .await
        .map_err(|e| map_err("list instances", e))
}

#[async_trait]
impl Discovery for NacosRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        let group = &self.config.group;
        let mut services = Services::new();
        for service in services_of(&self.naming, group, name).await? {
            let instances = instances_of(&self.naming, group, &service).await?;
            services.insert(service, instances);
        }
        Ok(assemble(name, &services, &BTreeMap::new())
            .into_values()
            .collect())
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        let naming = self.naming.clone();
        let group = self.config.group.clone();
        let owned = name.to_owned();
        self.hub
            .watch(name, move |publisher| {
                follow(naming, group, owned, publisher)
            })
            .await
    }
}

/// Forwards nacos-sdk's pushes to the watch task.
struct Forward(mpsc::UnboundedSender<Arc<NamingChangeEvent>>);

impl NamingEventListener for Forward {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let _ = self.0.send(event);
    }
}

/// Unsubscribes a watch's services when the watch task ends.
struct Subscriptions {
    naming: NamingService,
    group: String,
    listener: Arc<dyn NamingEventListener>,
    services: Mutex<BTreeSet<String>>,
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        let services = std::mem::take(self.services.get_mut().unwrap_or_else(|p| p.into_inner()));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let naming = self.naming.clone();
        let group = self.group.clone();
        let listener = self.listener.clone();
        runtime.spawn(async move {
            for service in services {
                let _ = naming
                    .unsubscribe(service, Some(group.clone()), Vec::new(), listener.clone())
                    .await;
            }
        });
    }
}

/// The upstream of one name's shared watch: one subscription per Nacos service of the name
/// (the common schemes from the start, others as they appear), and the whole list rebuilt
/// after each push.
async fn follow(naming: NamingService, group: String, name: String, publisher: Publisher) {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let subscriptions = Subscriptions {
        naming: naming.clone(),
        group: group.clone(),
        listener: Arc::new(Forward(tx)),
        services: Mutex::default(),
    };
    let mut services = Services::new();
    let mut shown = BTreeMap::new();
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        // Subscribe to the services of the name not followed yet, and read them once.
        let outcome: Result<()> = async {
            let mut wanted = services_of(&naming, &group, &name).await?;
            wanted.extend(COMMON_SCHEMES.iter().map(|s| service_of(&name, s)));
            let new: Vec<String> = {
                let followed = subscriptions
                    .services
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                wanted
                    .into_iter()
                    .filter(|s| !followed.contains(s))
                    .collect()
            };
            for service in new {
                naming
                    .subscribe(
                        service.clone(),
                        Some(group.clone()),
                        Vec::new(),
                        subscriptions.listener.clone(),
                    )
                    .await
                    .map_err(|e| map_err("subscribe", e))?;
                subscriptions
                    .services
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(service.clone());
                let instances = instances_of(&naming, &group, &service).await?;
                services.insert(service, instances);
            }
            Ok(())
        }
        .await;
        let wait = match outcome {
            Ok(()) => {
                backoff.reset();
                shown = assemble(&name, &services, &shown);
                publisher.publish(shown.values().cloned().collect());
                RESCAN
            }
            Err(e) => {
                publisher.report_error(e);
                backoff.delay()
            }
        };
        // Apply pushes until the next rescan.
        let rescan = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(rescan) => break,
                Some(event) = rx.recv() => {
                    let service = event
                        .service_name
                        .rsplit_once("@@")
                        .map_or(event.service_name.as_str(), |(_, s)| s)
                        .to_owned();
                    let instances = event.instances.clone().unwrap_or_default();
                    services.insert(service, instances);
                    shown = assemble(&name, &services, &shown);
                    publisher.publish(shown.values().cloned().collect());
                }
            }
        }
    }
}

#[async_trait]
impl Registry for NacosRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
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
        }
    }

    /// The names of the services in the group, `{name}.{scheme}` counted once as `name`.
    async fn list_services(&self) -> Result<Vec<String>> {
        let mut names = BTreeSet::new();
        let mut page = 1;
        loop {
            let (services, total) = self
                .naming
                .get_service_list(page, 500, self.group())
                .await
                .map_err(|e| map_err("list services", e))?;
            let fetched = services.len();
            for service in services {
                let instances = instances_of(&self.naming, &self.config.group, &service).await?;
                if instances.is_empty() {
                    continue;
                }
                let name = match service.rsplit_once('.') {
                    Some((name, _)) if validate_name(name).is_ok() => name.to_owned(),
                    _ => service,
                };
                names.insert(name);
            }
            if fetched == 0 || (page * 500) as i64 >= i64::from(total) {
                break;
            }
            page += 1;
        }
        Ok(names.into_iter().collect())
    }
}
