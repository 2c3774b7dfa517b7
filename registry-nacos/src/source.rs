//! Nacos' reading primitives for the core's watch engine: a name's services read once, then
//! one subscription per Nacos service of the name, the whole list rebuilt after each push.
//! Schemes other than the common ones are found when the engine lists (at the start and
//! after a failure), and while an instance misses pieces (a group scan after 200 ms, then
//! less and less often while scans find nothing new); there is no other scan of the group.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, ServiceInstance as NacosInstance,
};
use registry_core::{Result, ServiceInstance};
use tokio::sync::mpsc;

use crate::client::{timed, REQUEST_TIMEOUT};
use crate::format::{assemble, incomplete, service_of, Services};

/// Schemes a watch follows from its start, before they appear in the service list.
const COMMON_SCHEMES: [&str; 4] = ["http", "https", "grpc", "grpcs"];

/// The instances of `name` (any order), and the Nacos services of the name found.
///
/// One round trip of latency in the common case: the group's service list is read together
/// with the instances of the plain name and of `{name}.{scheme}` for the common schemes;
/// only a service of another scheme in the list is read after it.
pub(crate) async fn list(
    naming: &NamingService,
    group: &str,
    name: &str,
) -> Result<(Vec<ServiceInstance>, BTreeSet<String>)> {
    let guessed: Vec<String> = std::iter::once(name.to_owned())
        .chain(
            COMMON_SCHEMES
                .iter()
                .map(|scheme| format!("{name}.{scheme}")),
        )
        .collect();
    let (found, early) = tokio::join!(
        services_of(naming, group, name),
        futures::future::join_all(
            guessed
                .iter()
                .map(|service| instances_of(naming, group, service))
        ),
    );
    let found = found?;
    let mut early: HashMap<&str, Vec<NacosInstance>> = guessed
        .iter()
        .map(String::as_str)
        .zip(early)
        // A guessed service the list does not hold is not read (its answer may be an error).
        .filter(|(service, _)| found.contains(*service))
        .map(|(service, read)| read.map(|read| (service, read)))
        .collect::<Result<_>>()?;
    let mut services = Services::new();
    for service in &found {
        let instances = match early.remove(service.as_str()) {
            Some(instances) => instances,
            None => instances_of(naming, group, service).await?,
        };
        services.insert(service.clone(), instances);
    }
    let list = assemble(name, &services, &BTreeMap::new())
        .into_values()
        .collect();
    Ok((list, found))
}

/// The Nacos services of `name`: `{name}.{scheme}`, and `name` itself (a service registered
/// under the plain name, or a kratos user asking for `helloworld.grpc`).
pub(crate) async fn services_of(
    naming: &NamingService,
    group: &str,
    name: &str,
) -> Result<BTreeSet<String>> {
    let prefix = format!("{name}.");
    Ok(service_names(naming, group)
        .await?
        .into_iter()
        .filter(|s| {
            s == name
                || s.strip_prefix(&prefix)
                    .is_some_and(|scheme| !scheme.contains('.'))
        })
        .collect())
}

/// Every service name of the group, page by page.
pub(crate) async fn service_names(naming: &NamingService, group: &str) -> Result<Vec<String>> {
    let mut all = Vec::new();
    let mut page = 1;
    loop {
        let call = naming.get_service_list(page, 500, Some(group.to_owned()));
        let (names, total) = timed("list services", REQUEST_TIMEOUT, call).await?;
        let fetched = names.len();
        all.extend(names);
        if fetched == 0 || (page * 500) as i64 >= i64::from(total) {
            return Ok(all);
        }
        page += 1;
    }
}

pub(crate) async fn instances_of(
    naming: &NamingService,
    group: &str,
    service: &str,
) -> Result<Vec<NacosInstance>> {
    let call = naming.select_instances(
        service.to_owned(),
        Some(group.to_owned()),
        Vec::new(),
        false,
        true,
    );
    timed("list instances", REQUEST_TIMEOUT, call).await
}

/// Forwards nacos-sdk's pushes to the follow loop.
struct Forward(mpsc::UnboundedSender<Arc<NamingChangeEvent>>);

impl NamingEventListener for Forward {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let _ = self.0.send(event);
    }
}

/// The subscriptions one followed name holds on the server.
struct Subscription {
    listener: Arc<dyn NamingEventListener>,
    services: BTreeSet<String>,
    /// Held by the follow call that made it: a release never takes a running follow's.
    running: Arc<()>,
}

/// Nacos' reading primitives for the core's watch engine: one subscription per Nacos
/// service of a name (`{name}.{scheme}` for the common schemes and those listed, and the
/// plain `name`), the whole list rebuilt after each push, and a small probe of the server
/// (at most one per [`PROBE_EVERY`] for all watches) that tells a lost connection, which
/// nacos-sdk hides while it reconnects.
pub(crate) struct NacosSource {
    pub(crate) naming: NamingService,
    pub(crate) group: String,
    subscriptions: Mutex<HashMap<String, Subscription>>,
    /// When the server was last probed, and what it said.
    probed: tokio::sync::Mutex<Option<(Instant, Result<()>)>>,
}

/// How long a watch waits, once an instance misses pieces, before it scans the group for
/// services of the name it does not follow yet; the wait doubles after each scan that
/// finds none, up to [`SCAN_MAX`].
const SCAN_FIRST: Duration = Duration::from_millis(200);
/// The longest wait between two scans for an instance's missing pieces (one written half by
/// another client, for instance, stays incomplete).
const SCAN_MAX: Duration = Duration::from_secs(30);

/// How often a watch makes sure the server still answers.
const PROBE_EVERY: Duration = Duration::from_secs(1);
/// How long a probe may take before the server counts as unreachable (a frozen server
/// keeps the connection open and never answers).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

impl NacosSource {
    pub(crate) fn new(naming: NamingService, group: String) -> Self {
        NacosSource {
            naming,
            group,
            subscriptions: Mutex::default(),
            probed: tokio::sync::Mutex::new(None),
        }
    }

    fn subscriptions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Subscription>> {
        self.subscriptions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the server answers: one page of one service name. An answer is shared by
    /// every watch probing within [`PROBE_EVERY`]; a failure only by the watches that waited
    /// for that probe: a follow started after it probes again (it follows the connection
    /// nacos-sdk made since; the failure served again made each new follow fail at once, a
    /// burst of outages and recoveries told for one).
    async fn probe(&self) -> Result<()> {
        let asked = Instant::now();
        let mut probed = self.probed.lock().await;
        if let Some((at, result)) = probed.as_ref() {
            let shared = match result {
                Ok(()) => at.elapsed() < PROBE_EVERY,
                Err(_) => *at >= asked,
            };
            if shared {
                return result.clone();
            }
        }
        let probe = self.naming.get_service_list(1, 1, Some(self.group.clone()));
        let result = timed("probe", PROBE_TIMEOUT, probe).await.map(drop);
        *probed = Some((Instant::now(), result.clone()));
        result
    }

    /// Drops the subscriptions of `name` left by a follow that ended (a release racing with
    /// the next watch of the name leaves the new follow's alone).
    async fn unsubscribe(&self, name: &str) {
        let old = {
            let mut subscriptions = self.subscriptions();
            match subscriptions.get(name) {
                Some(s) if Arc::strong_count(&s.running) == 1 => subscriptions.remove(name),
                _ => None,
            }
        };
        let Some(old) = old else {
            return;
        };
        for service in old.services {
            let group = Some(self.group.clone());
            let call =
                self.naming
                    .unsubscribe(service.clone(), group, Vec::new(), old.listener.clone());
            if let Err(e) = timed("unsubscribe", REQUEST_TIMEOUT, call).await {
                tracing::debug!(%service, error = %e, "Nacos unsubscribe failed");
            }
        }
    }

    /// Resolves with the first failed probe.
    async fn watchdog(&self) -> registry_core::Error {
        let mut every = tokio::time::interval(PROBE_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Err(e) = self.probe().await {
                return e;
            }
        }
    }

    /// Subscribes to the name's services, lists them, then rebuilds the list after each push.
    async fn follow_pushes(
        &self,
        name: &str,
        from: Arc<BTreeSet<String>>,
        updates: &Updates<Arc<BTreeSet<String>>>,
    ) -> Stop {
        self.unsubscribe(name).await;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listener: Arc<dyn NamingEventListener> = Arc::new(Forward(tx));
        // Held while this follow runs (a release leaves its subscriptions alone meanwhile).
        let running = Arc::new(());
        let mut wanted: BTreeSet<String> = from.iter().cloned().collect();
        wanted.insert(name.to_owned());
        wanted.extend(COMMON_SCHEMES.iter().map(|s| service_of(name, s)));
        self.subscriptions().insert(
            name.to_owned(),
            Subscription {
                listener: listener.clone(),
                services: BTreeSet::new(),
                running: running.clone(),
            },
        );
        let mut services = Services::new();
        if let Err(e) = self.subscribe(name, wanted, &listener, &mut services).await {
            return Stop::Failed(e);
        }
        updates.following();
        // While an instance misses pieces, they may be in services of schemes not followed
        // yet (those never push here): the group is scanned for them after a short wait,
        // then less and less often while the scans find nothing new.
        let mut next_scan: Option<tokio::time::Instant> = None;
        let mut scan_every = SCAN_FIRST;
        let mut shown = BTreeMap::new();
        loop {
            shown = assemble(name, &services, &shown);
            updates.list(shown.values().cloned().collect(), from.clone());
            if incomplete(&services).is_empty() {
                (next_scan, scan_every) = (None, SCAN_FIRST);
            } else if next_scan.is_none() {
                next_scan = Some(tokio::time::Instant::now() + scan_every);
            }
            let event = match next_scan {
                Some(at) => match tokio::time::timeout_at(at, rx.recv()).await {
                    Ok(event) => event,
                    Err(_) => {
                        let new = match services_of(&self.naming, &self.group, name).await {
                            Ok(found) => found
                                .into_iter()
                                .filter(|s| !services.contains_key(s))
                                .collect::<Vec<_>>(),
                            Err(e) => return Stop::Failed(e),
                        };
                        scan_every = if new.is_empty() {
                            (scan_every * 2).min(SCAN_MAX)
                        } else {
                            SCAN_FIRST
                        };
                        next_scan = None;
                        if let Err(e) = self.subscribe(name, new, &listener, &mut services).await {
                            return Stop::Failed(e);
                        }
                        continue;
                    }
                },
                None => rx.recv().await,
            };
            let Some(event) = event else {
                break;
            };
            let service = event
                .service_name
                .rsplit_once("@@")
                .map_or(event.service_name.as_str(), |(_, s)| s)
                .to_owned();
            if let Some(held) = services.get_mut(&service) {
                *held = event.instances.clone().unwrap_or_default();
            }
        }
        drop(running);
        Stop::Failed(registry_core::Error::Closed)
    }

    /// Subscribes `listener` to each of `wanted` (noting it in `name`'s subscription) and
    /// reads its instances into `services`.
    async fn subscribe(
        &self,
        name: &str,
        wanted: impl IntoIterator<Item = String>,
        listener: &Arc<dyn NamingEventListener>,
        services: &mut Services,
    ) -> Result<()> {
        for service in wanted {
            let group = Some(self.group.clone());
            let call = self
                .naming
                .subscribe(service.clone(), group, Vec::new(), listener.clone());
            timed("subscribe", REQUEST_TIMEOUT, call).await?;
            if let Some(subscription) = self.subscriptions().get_mut(name) {
                subscription.services.insert(service.clone());
            }
            let instances = instances_of(&self.naming, &self.group, &service).await?;
            services.insert(service, instances);
        }
        Ok(())
    }
}

#[async_trait]
impl Source for NacosSource {
    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    /// The Nacos services of the name found by the list (a follow subscribes to them too).
    type Position = Arc<BTreeSet<String>>;

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, Self::Position)> {
        let (list, found) = list(&self.naming, &self.group, name).await?;
        Ok((list, Arc::new(found)))
    }

    async fn follow(
        &self,
        name: &str,
        from: Self::Position,
        updates: &Updates<Self::Position>,
    ) -> Stop {
        // nacos-sdk reconnects out of sight and its calls can hang on a frozen server: the
        // probe runs beside everything the follow does, subscribing included.
        tokio::select! {
            stop = self.follow_pushes(name, from, updates) => stop,
            error = self.watchdog() => Stop::Failed(error),
        }
    }

    async fn release(&self, name: &str) {
        self.unsubscribe(name).await;
    }
}
