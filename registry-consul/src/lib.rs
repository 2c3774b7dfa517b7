#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::validate::{validate_id, validate_name};
use registry_core::{
    Backoff, Capabilities, Checked, Discovery, Publisher, Registrar, Registry, Result,
    ServiceInstance, WatchHub, Watcher,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;

mod client;
mod config;
mod format;

pub use config::{
    Config, TlsConfig, DEFAULT_DEREGISTER_AFTER, DEFAULT_PORT, DEFAULT_TTL, MIN_DEREGISTER_AFTER,
    MIN_TTL,
};

use crate::client::Client;
use crate::format::{check_id, from_consul, to_consul};

/// The URL scheme of this backend.
pub const SCHEME: &str = "consul";

/// The least time between two blocking queries of one watch that answered at once.
const MIN_QUERY_GAP: Duration = Duration::from_millis(100);

/// Connects to the Consul agent the URL names (see [`Config::from_url`]); the facade's
/// `connect` calls this for `consul://`.
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = ConsulRegistry::connect(Config::from_url(url)?).await?;
    Ok(Arc::new(Checked::new(registry)))
}

/// Where a registration stands, readable through [`ConsulRegistry::registration_state`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Registered with the agent, its check passed on every heartbeat.
    Registered,
    /// The agent does not answer, or no longer knows the service: registering it again.
    Reregistering {
        /// How many attempts failed so far.
        attempt: u32,
        /// The last failure.
        last_error: String,
    },
}

/// A registration made through this registry: its latest value, its state, and its
/// heartbeat task, aborted when the registration is dropped.
struct Registration {
    latest: watch::Sender<ServiceInstance>,
    state: watch::Receiver<RegistrationState>,
    task: Option<JoinHandle<()>>,
}

impl Registration {
    /// Stops the heartbeat and waits until it is gone, so that nothing it had in flight
    /// lands afterwards.
    async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

struct Inner {
    client: Arc<Client>,
    config: Config,
    hub: WatchHub,
    /// Held across each register and deregister, so that the two never interleave for an id.
    registrations: tokio::sync::Mutex<HashMap<String, Registration>>,
}

/// The Consul registry. Share it through `Arc`. Dropping it stops every heartbeat at once
/// (the checks then turn critical after their TTL and leave the passing list); watchers keep
/// their poller until they are dropped.
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
        // Heartbeats stop with their registrations (the map goes with the last handle);
        // watches stop here.
        self.inner.hub.shutdown();
    }
}

impl ConsulRegistry {
    /// Connects to the agent; fails when it does not answer, or when the config is invalid
    /// (a permanent error).
    pub async fn connect(config: Config) -> Result<Self> {
        config.check().map_err(|reason| {
            registry_core::Error::invalid("consul config", format!("{config:?}"), reason)
        })?;
        let client = Client::new(&config)?;
        client.ping().await?;
        Ok(ConsulRegistry {
            inner: Arc::new(Inner {
                client: Arc::new(client),
                config,
                hub: WatchHub::new(),
                registrations: tokio::sync::Mutex::default(),
            }),
        })
    }

    /// The state of the registration of `instance` made through this registry, if any.
    pub async fn registration_state(
        &self,
        instance: &ServiceInstance,
    ) -> Option<RegistrationState> {
        self.inner
            .registrations
            .lock()
            .await
            .get(&instance.id)
            .map(|r| r.state.borrow().clone())
    }
}

/// The heartbeat of one registration: pass its check every third of the TTL; when that
/// fails (the agent is away, or restarted and forgot the service), register the latest
/// value again with jittered back-off that never gives up.
async fn heartbeat(
    client: Arc<Client>,
    config: Config,
    latest: watch::Receiver<ServiceInstance>,
    state: watch::Sender<RegistrationState>,
) {
    let interval = config.heartbeat();
    let mut latest = latest;
    let check = check_id(&latest.borrow_and_update().id);
    loop {
        tokio::time::sleep(interval).await;
        let Err(e) = client.pass(&check).await else {
            continue;
        };
        tracing::warn!(%check, error = %e, "Consul check pass failed; registering again");
        // Retries (jittered by up to half) stay within one heartbeat interval, so the service
        // is back within one interval of the agent answering again.
        let mut backoff = Backoff::new(Duration::from_millis(100), interval / 2);
        let mut attempt = 0u32;
        loop {
            let instance = latest.borrow_and_update().clone();
            let result = match to_consul(&instance, &config) {
                Ok(registration) => client.register(&registration).await,
                Err(e) => Err(e),
            };
            match result {
                // A newer value came while this one was being written: write that one.
                Ok(()) if latest.has_changed().unwrap_or(false) => continue,
                Ok(()) => {
                    tracing::info!(%check, attempt, "Consul registration restored");
                    state.send_replace(RegistrationState::Registered);
                    break;
                }
                Err(e) => {
                    attempt += 1;
                    let delay = backoff.delay();
                    tracing::warn!(%check, attempt, error = %e, retry_in = ?delay, "Consul re-registration failed");
                    state.send_replace(RegistrationState::Reregistering {
                        attempt,
                        last_error: e.to_string(),
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

#[async_trait]
impl Registrar for ConsulRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        let registration = to_consul(instance, &self.inner.config)?;
        let mut registrations = self.inner.registrations.lock().await;
        // The agent keys services by id alone: never replace another service's instance.
        if let Some(held) = self.inner.client.service_name(&instance.id).await? {
            if held != instance.name {
                return Err(registry_core::Error::Conflict {
                    message: format!(
                        "the Consul agent holds id {:?} for service {held:?}; ids are unique per agent",
                        instance.id
                    ),
                });
            }
        }
        // The heartbeat re-registers the latest value: make it this one before writing, so
        // a re-registration racing this call writes it again afterwards.
        if let Some(existing) = registrations.get(&instance.id) {
            existing.latest.send_replace(instance.clone());
        }
        self.inner.client.register(&registration).await?;
        if registrations.contains_key(&instance.id) {
            return Ok(());
        }
        let (latest, latest_rx) = watch::channel(instance.clone());
        let (state_tx, state) = watch::channel(RegistrationState::Registered);
        let task = tokio::spawn(heartbeat(
            self.inner.client.clone(),
            self.inner.config.clone(),
            latest_rx,
            state_tx,
        ));
        registrations.insert(
            instance.id.clone(),
            Registration {
                latest,
                state,
                task: Some(task),
            },
        );
        Ok(())
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        validate_name(&instance.name)?;
        validate_id(&instance.id)?;
        let mut registrations = self.inner.registrations.lock().await;
        // Only this service's instance: the agent may hold the id for another one.
        match self.inner.client.service_name(&instance.id).await? {
            Some(held) if held != instance.name => return Ok(()),
            _ => {}
        }
        if let Some(registration) = registrations.remove(&instance.id) {
            registration.stop().await;
        }
        self.inner.client.deregister(&instance.id).await
    }
}

/// The upstream of one service's shared watch: blocking queries on the passing list.
async fn follow(client: Arc<Client>, name: String, wait: Duration, publisher: Publisher) {
    let mut index = 0u64;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let started = tokio::time::Instant::now();
        match client.health(&name, Some((index, wait))).await {
            Ok((entries, new_index)) => {
                backoff.reset();
                // Consul: an index that goes backwards (the agent restarted) resets it, and
                // an index must be above zero.
                index = if new_index < index {
                    0
                } else {
                    new_index.max(1)
                };
                publisher.publish(entries.into_iter().filter_map(from_consul).collect());
                // Consul asks clients to rate-limit blocking queries: an answer that came at
                // once (a busy index, a flapping check) is followed by a short pause.
                let took = started.elapsed();
                if took < MIN_QUERY_GAP {
                    tokio::time::sleep(MIN_QUERY_GAP - took).await;
                }
            }
            Err(e) => {
                // The agent may come back with a lower index (dev mode forgets everything):
                // ask afresh, without blocking, once it answers.
                index = 0;
                publisher.report_error(e);
                tokio::time::sleep(backoff.delay()).await;
            }
        }
    }
}

#[async_trait]
impl Discovery for ConsulRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        let (entries, _) = self.inner.client.health(name, None).await?;
        let mut list: Vec<ServiceInstance> = entries.into_iter().filter_map(from_consul).collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        let client = self.inner.client.clone();
        let wait = self.inner.config.wait;
        let owned = name.to_owned();
        self.inner
            .hub
            .watch(name, move |publisher| {
                follow(client, owned, wait, publisher)
            })
            .await
    }
}

#[async_trait]
impl Registry for ConsulRegistry {
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

    /// Every service in the catalog but Consul's own.
    async fn list_services(&self) -> Result<Vec<String>> {
        let services = self.inner.client.services().await?;
        Ok(services
            .into_keys()
            .filter(|name| name != "consul")
            .collect())
    }
}
