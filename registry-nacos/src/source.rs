//! Reading a name's services and following them: one subscription per Nacos service of the
//! name, the whole list rebuilt after each push.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, ServiceInstance as NacosInstance,
};
use registry_core::{Backoff, Publisher, Result, ServiceInstance};
use tokio::sync::mpsc;

use crate::error::map_err;
use crate::format::{assemble, service_of, Services};

/// Schemes a watch follows from its start, before they appear in the service list.
const COMMON_SCHEMES: [&str; 4] = ["http", "https", "grpc", "grpcs"];
/// How often a watch looks for services of its name with other schemes.
const RESCAN: Duration = Duration::from_secs(5);

/// The instances of `name`, sorted by id.
pub(crate) async fn list(
    naming: &NamingService,
    group: &str,
    name: &str,
) -> Result<Vec<ServiceInstance>> {
    let mut services = Services::new();
    for service in services_of(naming, group, name).await? {
        let instances = instances_of(naming, group, &service).await?;
        services.insert(service, instances);
    }
    Ok(assemble(name, &services, &BTreeMap::new())
        .into_values()
        .collect())
}

/// The Nacos services of `name`: `{name}.{scheme}`, and `name` itself (a service registered
/// under the plain name, or a kratos user asking for `helloworld.grpc`).
pub(crate) async fn services_of(
    naming: &NamingService,
    group: &str,
    name: &str,
) -> Result<BTreeSet<String>> {
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

pub(crate) async fn instances_of(
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
pub(crate) async fn follow(
    naming: NamingService,
    group: String,
    name: String,
    publisher: Publisher,
) {
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
