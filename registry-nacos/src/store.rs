//! The Nacos primitives of the core's registration supervisor: an instance is one ephemeral
//! Nacos instance per endpoint, alive while nacos-sdk's connection is.
//!
//! Nacos 2.x keeps ONE publish record per Nacos service and client connection: a second
//! `registerInstance` of the same service replaces the first, `batchRegisterInstance`
//! replaces the record with its whole list, and `deregisterInstance` removes the record. So
//! the store keeps, per Nacos service, every part this handle has there ([`Parts`]), and each
//! write or removal of one instance updates that set and sends the whole set with
//! `batch_register_instance`, one send at a time per service (the core writes different ids
//! concurrently: two batches built at once would lose one instance); writes that wait meanwhile
//! are carried by the next send together. nacos-sdk's redo keeps that last batch per
//! service and sends it again after a reconnect, so a reconnect restores the whole set.
//!
//! rnacos (the test server) does not keep one record: its batch registers or updates each
//! instance of the list and removes none, and its `deregisterInstance` removes one address.
//! So a part dropped from a set that keeps others is sent by what the server is
//! ([`ServerKind`], told once per connection):
//! - Nacos: the set left, one batch (it replaces the record; a deregister would remove it).
//! - rnacos: the deregister of the part and the batch of the set left, at once: on rnacos
//!   they commute (one removes that address, the other removes nothing), so it costs one
//!   round trip. The batch is not left out: nacos-sdk's redo would send the batch it keeps,
//!   with the dropped part, again after a reconnect.
//! - Not known: the one sequence right on both, the deregister first (on Nacos this removes
//!   the whole record for a moment), then the set left: two round trips.
//!
//! A set that becomes empty is sent as an empty batch along with the deregister of its last
//! parts, on any server: nacos-sdk's redo keeps a batch under its own key, which
//! `deregister_instance` does not clear, and would register the last set again after a
//! reconnect; the empty batch replaces it (Nacos accepts it; rnacos refuses it, and the redo
//! then sends it once more and stops).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use nacos_sdk::api::naming::{NamingService, ServiceInstance as NacosInstance};
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};

use crate::check::{Checks, CHECK_EVERY};
use crate::client::{timed, REQUEST_TIMEOUT};
use crate::format::to_nacos;
use crate::server::{Kind, ServerKind};
use crate::{source, Config};

/// What this handle has in one Nacos service: by (instance id, ip, port), the part and the
/// order it was written in (two ids at one address are one Nacos instance: the last wins).
type Set = BTreeMap<(String, String, i32), (u64, NacosInstance)>;

/// One Nacos service of this handle: the parts the calls so far left there, and what the
/// server was last brought to.
///
/// Writes of different ids to one service are coalesced: each records its change in `wanted`
/// and then waits for `sent`; whoever holds `sent` sends the whole set as it is then, so a
/// write whose change a set sent meanwhile carried returns without a call of its own. 32
/// registrations of one service at once cost two or three batches, not 32 in a row.
#[derive(Default)]
struct Service {
    /// The parts as the calls so far left them, and how many changes made them so.
    wanted: Mutex<(Set, u64)>,
    /// Held while a set is sent: the set the server was last brought to (with, after a send
    /// that failed or was cut short, whatever that send may have written), and the count of
    /// changes it holds.
    sent: tokio::sync::Mutex<(Set, u64)>,
}

impl Service {
    fn wanted(&self) -> MutexGuard<'_, (Set, u64)> {
        self.wanted.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every Nacos service this handle has written to (see [`Service`]). Shared with the task that
/// deregisters what is left once the registry is dropped (nacos-sdk's connection outlives the
/// handle).
#[derive(Default, Clone)]
pub(crate) struct Parts {
    services: Arc<Mutex<HashMap<String, Arc<Service>>>>,
    written: Arc<std::sync::atomic::AtomicU64>,
}

impl Parts {
    fn services(&self) -> MutexGuard<'_, HashMap<String, Arc<Service>>> {
        self.services.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn of(&self, service: &str) -> Arc<Service> {
        self.services()
            .entry(service.to_owned())
            .or_default()
            .clone()
    }

    /// Sets, in `services`, the parts of instance `id` to `parts` (none: removes them), and
    /// brings the server to each changed set, one service at a time; returns once a set
    /// holding this change was sent.
    async fn put(
        &self,
        naming: &NamingService,
        kind: &ServerKind,
        group: &str,
        id: &str,
        services: &BTreeSet<String>,
        parts: &[(String, NacosInstance)],
    ) -> Result<()> {
        for service in services {
            let slot = self.of(service);
            // Recorded before the write: a handle dropped during it still takes it away.
            let change = {
                let mut wanted = slot.wanted();
                let (set, changes) = &mut *wanted;
                set.retain(|(part_id, _, _), _| part_id != id);
                for (_, part) in parts.iter().filter(|(s, _)| s == service) {
                    let order = self
                        .written
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let key = (id.to_owned(), part.ip.clone(), part.port);
                    set.insert(key, (order, part.clone()));
                }
                *changes += 1;
                *changes
            };
            let mut sent = slot.sent.lock().await;
            if sent.1 >= change {
                // A set sent while this waited held the change.
                continue;
            }
            let (after, changes) = slot.wanted().clone();
            let before = sent.0.clone();
            // Whatever the send's outcome (failed, cut short), `after` may be on the server
            // from here on (nacos-sdk's redo keeps a batch it failed to send): a later
            // removal must take it away.
            sent.0.extend(after.clone());
            send(naming, kind.get(), group, service, &before, &after).await?;
            *sent = (after, changes);
        }
        Ok(())
    }

    /// Takes every part away (the registry was dropped).
    pub(crate) async fn clear(&self, naming: &NamingService, kind: &ServerKind, group: &str) {
        let services: Vec<_> = self.services().drain().collect();
        for (service, slot) in services {
            let sent = slot.sent.lock().await;
            // Whatever may be on the server: the set sent last, and what a send cut short
            // may have written.
            let mut before = sent.0.clone();
            before.extend(std::mem::take(&mut slot.wanted().0));
            if let Err(e) = send(naming, kind.get(), group, &service, &before, &Set::new()).await {
                tracing::warn!(%service, error = %e, "Nacos deregister after drop failed");
            }
        }
    }
}

/// The Nacos instances of a set, one per address (the one written last).
fn batch(set: &Set) -> Vec<NacosInstance> {
    let mut by_address: BTreeMap<(&str, i32), &(u64, NacosInstance)> = BTreeMap::new();
    for ((_, ip, port), entry) in set {
        let slot = by_address.entry((ip.as_str(), *port)).or_insert(entry);
        if entry.0 > slot.0 {
            *slot = entry;
        }
    }
    by_address.into_values().map(|(_, n)| n.clone()).collect()
}

/// Brings the server (of `kind`) from `before` to `after` for this handle's record of
/// `service`.
async fn send(
    naming: &NamingService,
    kind: Kind,
    group: &str,
    service: &str,
    before: &Set,
    after: &Set,
) -> Result<()> {
    let kept: BTreeSet<(&str, i32)> = after.keys().map(|(_, ip, p)| (ip.as_str(), *p)).collect();
    let mut dropped: Vec<&NacosInstance> = Vec::new();
    for ((_, ip, port), (_, part)) in before {
        if !kept.contains(&(ip.as_str(), *port))
            && !dropped.iter().any(|d| &d.ip == ip && d.port == *port)
        {
            dropped.push(part);
        }
    }
    let group = Some(group.to_owned());
    let instances = batch(after);
    if instances.is_empty() && dropped.is_empty() {
        return Ok(());
    }
    // Each removes one address on rnacos, the whole record on Nacos: in any order.
    let deregister = futures::future::try_join_all(dropped.iter().map(|&part| {
        let call = naming.deregister_instance(service.to_owned(), group.clone(), part.clone());
        timed("deregister", REQUEST_TIMEOUT, call)
    }));
    let empty = instances.is_empty();
    let operation = if empty { "deregister" } else { "register" };
    let call = naming.batch_register_instance(service.to_owned(), group, instances);
    let register = timed(operation, REQUEST_TIMEOUT, call);
    if empty {
        // Replaces the redo's last batch (see the module's notes); rnacos refuses it. Sent
        // with the deregister, not before it: both leave no record on Nacos, in either order.
        let (_, deregistered) = tokio::join!(register, deregister);
        return deregistered.map(drop);
    }
    match kind {
        _ if dropped.is_empty() => register.await,
        Kind::Nacos => register.await,
        Kind::Rnacos => {
            let (deregistered, registered) = tokio::join!(deregister, register);
            deregistered.and(registered)
        }
        Kind::Unknown => {
            deregister.await?;
            register.await
        }
    }
}

/// The Nacos services of `parts`.
fn services_of(parts: &[(String, NacosInstance)]) -> BTreeSet<String> {
    parts.iter().map(|(service, _)| service.clone()).collect()
}

/// Registers instances through nacos-sdk's naming client.
pub(crate) struct NacosStore {
    pub(crate) naming: NamingService,
    /// What the server is, for the removal of one part of several.
    pub(crate) kind: ServerKind,
    pub(crate) config: Config,
    pub(crate) parts: Parts,
    /// The checks that the registrations are still listed, one per service.
    pub(crate) checks: Checks,
}

impl NacosStore {
    /// Sets the parts of instance `id` in `services` to `parts` (none: removes them there).
    async fn put(
        &self,
        id: &str,
        services: &BTreeSet<String>,
        parts: &[(String, NacosInstance)],
    ) -> Result<()> {
        let (naming, kind, group) = (&self.naming, &self.kind, &self.config.group);
        self.parts
            .put(naming, kind, group, id, services, parts)
            .await
    }
}

#[async_trait]
impl Store for NacosStore {
    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    /// The value written, whose parts are what is registered.
    type Lease = ServiceInstance;

    async fn write(
        &self,
        instance: &ServiceInstance,
        held: Option<&ServiceInstance>,
    ) -> Result<ServiceInstance> {
        let parts = to_nacos(instance, &self.config)?;
        let mut services = services_of(&parts);
        // The services of the previous value lose what the new one no longer has there.
        if let Some(Ok(previous)) = held.map(|held| to_nacos(held, &self.config)) {
            services.extend(services_of(&previous));
        }
        self.put(&instance.id, &services, &parts).await?;
        Ok(instance.clone())
    }

    /// nacos-sdk keeps the connection and registers again after a reconnection on its own;
    /// this waits on the service's shared check ([`Checks`]), which lists the service every
    /// few seconds, so that an instance removed from outside, or forgotten by a server
    /// restarted before the SDK noticed, is written again, and a server that stops answering
    /// shows in the state.
    async fn hold(&self, instance: &ServiceInstance, _lease: &ServiceInstance) -> Error {
        let parts: Vec<(String, String, i32)> = match to_nacos(instance, &self.config) {
            Ok(parts) => parts
                .into_iter()
                .map(|(service, part)| (service, part.ip, part.port))
                .collect(),
            Err(e) => return e,
        };
        self.checks
            .until_lost(&self.naming, &self.config.group, &parts)
            .await
    }

    async fn remove(
        &self,
        instance: &ServiceInstance,
        lease: Option<&ServiceInstance>,
    ) -> Result<()> {
        let mut services = BTreeSet::new();
        for value in [Some(instance), lease].into_iter().flatten() {
            // What cannot be written cannot be there: nothing to remove.
            if let Ok(parts) = to_nacos(value, &self.config) {
                services.extend(services_of(&parts));
            }
        }
        self.put(&instance.id, &services, &[]).await
    }

    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        let (listed, _) = source::list(&self.naming, &self.config.group, name).await?;
        Ok(listed.iter().any(|instance| instance.id == id))
    }

    fn retry_cap(&self) -> Duration {
        CHECK_EVERY
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::Kind;

    /// The part at `10.0.0.{n}:9000` of instance `id{n}` of `name`.
    fn instance(name: &str, n: u8) -> ServiceInstance {
        ServiceInstance::builder(format!("id{n}"), name)
            .endpoint(format!("grpc://10.0.0.{n}:9000"))
            .build()
            .expect("instance")
    }

    /// The ids a client of its own lists in `name`.
    async fn ids(reader: &NamingService, config: &Config, name: &str) -> Vec<String> {
        match source::list(reader, &config.group, name).await {
            Ok((listed, _)) => listed.into_iter().map(|i| i.id).collect(),
            Err(_) => Vec::new(),
        }
    }

    const WITHIN: Duration = Duration::from_secs(10);

    /// Through a store (no supervisor around it) that takes `kind`'s sequence on the server at
    /// `address`: one handle writes two instances of one service and removes one; a client
    /// of its own (another connection) must list exactly the other. Returns the store.
    async fn removal_leaves_the_other(address: &str, kind: Kind) -> NacosStore {
        let config = Config::new([address])
            .with_namespace(format!("store-{kind:?}-{}", test_support::run_id()));
        let (naming, _, _probe) = crate::client::connect(&config).await.expect("connect");
        let store = NacosStore {
            naming,
            kind: ServerKind::known(kind),
            config: config.clone(),
            parts: Parts::default(),
            checks: Checks::default(),
        };
        let (a, b) = (instance("removal", 1), instance("removal", 2));
        store.write(&a, None).await.expect("write a");
        store.write(&b, None).await.expect("write b");
        let (reader, _, _probe) = crate::client::connect(&config).await.expect("connect");
        test_support::eventually(WITHIN, "a and b listed", || async {
            ids(&reader, &config, "removal").await == ["id1", "id2"]
        })
        .await;
        store.remove(&a, Some(&a)).await.expect("remove a");
        test_support::eventually(WITHIN, "b alone listed", || async {
            ids(&reader, &config, "removal").await == ["id2"]
        })
        .await;
        store
    }

    /// rnacos' sequence (the deregister with the batch of the rest) and the one for a server
    /// not told apart (the deregister, then the batch), on rnacos.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_rnacos_both_its_sequence_and_the_unknown_one_leave_the_other() {
        let server = test_support::NacosServer::start().await;
        let address = server.http().trim_start_matches("http://").to_owned();
        for kind in [Kind::Rnacos, Kind::Unknown] {
            removal_leaves_the_other(&address, kind).await;
        }
    }

    /// After a restart, what nacos-sdk's redo writes again (nothing else does: no supervisor
    /// here) is the set left: b alone, with no a. A deregister alone would leave the redo's
    /// batch of a and b, which rnacos would take again.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_rnacos_the_redo_after_a_restart_writes_the_set_left() {
        let mut server = test_support::NacosServer::start().await;
        let address = server.http().trim_start_matches("http://").to_owned();
        for kind in [Kind::Rnacos, Kind::Unknown] {
            let store = removal_leaves_the_other(&address, kind).await;
            server.restart().await;
            let (reader, _, _probe) = crate::client::connect(&store.config)
                .await
                .expect("connect");
            let deadline = std::time::Instant::now() + Duration::from_secs(20);
            let first = loop {
                let listed = ids(&reader, &store.config, "removal").await;
                if !listed.is_empty() {
                    break listed;
                }
                assert!(
                    std::time::Instant::now() < deadline,
                    "{kind:?}: nothing written again within 20 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            assert_eq!(first, ["id2"], "{kind:?}: what the redo wrote again");
        }
    }

    /// Nacos' sequence (the batch of the rest) and the unknown one, on the real Nacos.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
    async fn on_nacos_both_its_sequence_and_the_unknown_one_leave_the_other() {
        let address = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
        for kind in [Kind::Nacos, Kind::Unknown] {
            removal_leaves_the_other(&address, kind).await;
        }
    }

    /// A batch that failed (the server frozen past the request timeout) is kept by
    /// nacos-sdk's redo and may reach the server once it answers again: the removal that
    /// follows a failed first write must take the instance away, not find nothing to remove.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_removal_after_a_failed_write_takes_it_away() {
        let server = test_support::NacosServer::start().await;
        let address = server.http().trim_start_matches("http://").to_owned();
        let config =
            Config::new([address]).with_namespace(format!("failed-{}", test_support::run_id()));
        let (naming, kind, _probe) = crate::client::connect(&config).await.expect("connect");
        let store = NacosStore {
            naming,
            kind,
            config: config.clone(),
            parts: Parts::default(),
            checks: Checks::default(),
        };
        let a = instance("failed", 1);
        server.pause();
        let written = store.write(&a, None).await;
        server.resume();
        assert!(written.is_err(), "a write to a frozen server fails");
        store.remove(&a, None).await.expect("remove");

        let (reader, _, _reader_probe) = crate::client::connect(&config).await.expect("connect");
        test_support::eventually(WITHIN, "nothing listed", || async {
            ids(&reader, &config, "failed").await.is_empty()
        })
        .await;
        // nacos-sdk's redo sends what it keeps every 3 s: two rounds.
        let until = tokio::time::Instant::now() + Duration::from_secs(7);
        while tokio::time::Instant::now() < until {
            assert_eq!(ids(&reader, &config, "failed").await, Vec::<String>::new());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}
