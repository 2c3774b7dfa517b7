//! ZooKeeper's reading primitives for the core's watch engine: a persistent recursive watch
//! on `{root}/{name}`, a full list after it is set, and each node's data read again when it
//! is created or changed.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};
use registry_core::{Error, Result, ServiceInstance};
use zookeeper_client::{Client, Error as Z, MultiReadResult};

use crate::error::map_err;
use crate::node::{timed, timed_raw};
use crate::service_watch::{change, watch_service, Change};
use crate::session::Zk;

/// Decodes a node's data: `None` (said once, by the core) when it is not a valid instance
/// of `name`.
pub(crate) fn decode(path: &str, data: &[u8], name: &str) -> Option<ServiceInstance> {
    registry_core::untrusted::decode("zookeeper", name, path, data)
}

/// Reads one child: `None` when it is gone or not a valid instance.
async fn read(zk: &Zk, client: &Client, path: &str, name: &str) -> Result<Option<ServiceInstance>> {
    match timed_raw(zk, client.get_data(path)).await? {
        Ok((data, _)) => Ok(decode(path, &data, name)),
        Err(Z::NoNode) => Ok(None),
        Err(e) => Err(map_err("get", e)),
    }
}

/// The nodes asked for in the first multi-read of a list (about 20 KB of ordinary instances).
const FIRST_BATCH: usize = 100;
/// The most nodes one multi-read asks for.
const MAX_BATCH: usize = 1000;
/// How many bytes of data one multi-read aims at, from the sizes read before.
const BATCH_BYTES: usize = 1 << 20;
/// How many multi-reads a list keeps in flight on the session's connection (the client sends
/// each request as it is made).
const BATCHES_IN_FLIGHT: usize = 4;
/// How many single reads a list keeps in flight where the server has no multi-read.
const READS_IN_FLIGHT: usize = 256;

/// Lists the instances under `service_path`, by child name: the children, then their data
/// in multi-reads (ZooKeeper 3.6+) of up to [`MAX_BATCH`] nodes, a few in flight at once, or
/// in pipelined single reads where the server has no multi-read. (A read per child, one at a
/// time, took 40 s for 100,000 children; multi-reads take a fraction of a second.)
pub(crate) async fn list(
    zk: &Zk,
    client: &Client,
    service_path: &str,
    name: &str,
) -> Result<BTreeMap<String, ServiceInstance>> {
    let children = match timed_raw(zk, client.list_children(service_path)).await? {
        Ok(children) => children,
        Err(Z::NoNode) => return Ok(BTreeMap::new()),
        Err(e) => return Err(map_err("list", e)),
    };
    let mut instances = BTreeMap::new();
    match read_in_batches(zk, client, service_path, name, &children, &mut instances).await {
        Err(Z::Unimplemented) => {
            tracing::debug!(%service_path, "ZooKeeper has no multi-read; reading children one by one");
            instances.clear();
            read_pipelined(zk, client, service_path, name, children, &mut instances).await?;
        }
        result => result.map_err(|e| map_err("get", e))?,
    }
    Ok(instances)
}

/// Reads `children` of `service_path` into `instances` in multi-reads; the first error of
/// a request (or of one of its reads, other than a child gone meanwhile) ends it.
async fn read_in_batches(
    zk: &Zk,
    client: &Client,
    service_path: &str,
    name: &str,
    children: &[String],
    instances: &mut BTreeMap<String, ServiceInstance>,
) -> std::result::Result<(), Z> {
    let mut rest = children;
    let mut in_flight = VecDeque::with_capacity(BATCHES_IN_FLIGHT);
    let (mut bytes, mut nodes) = (0usize, 0usize);
    loop {
        while in_flight.len() < BATCHES_IN_FLIGHT && !rest.is_empty() {
            let size = if nodes == 0 {
                FIRST_BATCH
            } else {
                (BATCH_BYTES * nodes / bytes.max(1)).clamp(1, MAX_BATCH)
            };
            let (batch, after) = rest.split_at(size.min(rest.len()));
            rest = after;
            let paths: Vec<String> = batch
                .iter()
                .map(|child| format!("{service_path}/{child}"))
                .collect();
            let mut reader = client.new_multi_reader();
            for path in &paths {
                reader.add_get_data(path)?;
            }
            // Sent now; answered in order.
            in_flight.push_back((batch, paths, reader.commit()));
        }
        let Some((batch, paths, reading)) = in_flight.pop_front() else {
            return Ok(());
        };
        let results = match timed_raw(zk, reading).await {
            Ok(results) => results?,
            Err(_) => return Err(Z::Timeout),
        };
        if results.len() != batch.len() {
            return Err(Z::UnexpectedError(format!(
                "a multi-read of {} nodes answered {} results",
                batch.len(),
                results.len()
            )));
        }
        for ((child, path), result) in batch.iter().zip(&paths).zip(results) {
            match result {
                MultiReadResult::Data { data, .. } => {
                    bytes += data.len();
                    nodes += 1;
                    if let Some(instance) = decode(path, &data, name) {
                        instances.insert(child.clone(), instance);
                    }
                }
                MultiReadResult::Error { err: Z::NoNode } => {}
                MultiReadResult::Error { err } => return Err(err),
                _ => {
                    return Err(Z::UnexpectedError(
                        "a multi-read of data answered children".into(),
                    ))
                }
            }
        }
    }
}

/// Reads `children` of `service_path` into `instances` with single reads, a few hundred in
/// flight at once.
async fn read_pipelined(
    zk: &Zk,
    client: &Client,
    service_path: &str,
    name: &str,
    children: Vec<String>,
    instances: &mut BTreeMap<String, ServiceInstance>,
) -> Result<()> {
    let mut children = children.into_iter();
    let mut in_flight = VecDeque::with_capacity(READS_IN_FLIGHT);
    loop {
        while in_flight.len() < READS_IN_FLIGHT {
            let Some(child) = children.next() else { break };
            let path = format!("{service_path}/{child}");
            // Sent now; answered in order.
            let reading = client.get_data(&path);
            in_flight.push_back((child, path, reading));
        }
        let Some((child, path, reading)) = in_flight.pop_front() else {
            return Ok(());
        };
        match timed_raw(zk, reading).await? {
            Ok((data, _)) => {
                if let Some(instance) = decode(&path, &data, name) {
                    instances.insert(child, instance);
                }
            }
            Err(Z::NoNode) => {}
            Err(e) => return Err(map_err("get", e)),
        }
    }
}

/// ZooKeeper's reading primitives for the core's watch engine.
pub(crate) struct ZkSource {
    pub(crate) zk: Arc<Zk>,
}

impl ZkSource {
    pub(crate) fn service_path(&self, name: &str) -> String {
        format!("{}/{name}", self.zk.config.root)
    }
}

#[async_trait]
impl Source for ZkSource {
    /// ZooKeeper has no position to resume from: after a failure the engine lists again.
    type Position = ();

    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, ())> {
        let client = self.zk.client().await?;
        let instances = list(&self.zk, &client, &self.service_path(name), name).await?;
        Ok((instances.into_values().collect(), ()))
    }

    async fn follow(&self, name: &str, _from: (), updates: &Updates<()>) -> Stop {
        match follow_session(&self.zk, &self.service_path(name), name, updates).await {
            Ok(never) => match never {},
            Err(e) => Stop::Failed(e),
        }
    }
}

/// Follows the service within one connection: sets the persistent watch, lists what the
/// engine's list may have missed, then applies events. Returns when the connection drops
/// or the session ends: events can be lost across a reconnect (ZOOKEEPER-4698), and
/// zookeeper-client (0.9.3 through 0.11.2) re-sends only one-shot watches on reconnect (its
/// `resend_watches` never selects SetWatches2), so the engine sets the watch and lists again.
async fn follow_session(
    zk: &Zk,
    service_path: &str,
    name: &str,
    updates: &Updates<()>,
) -> Result<std::convert::Infallible> {
    let client = zk.client().await?;
    let mut watcher = timed(zk, "watch", watch_service(&client, service_path)).await?;
    updates.following();
    let mut instances = list(zk, &client, service_path, name).await?;
    updates.list(instances.values().cloned().collect(), ());
    loop {
        let event = watcher.changed().await;
        match change(&event, service_path) {
            Change::Connected | Change::Other => continue,
            Change::Lost(state) => {
                return Err(Error::Unavailable {
                    message: format!("ZooKeeper connection lost: {state:?}"),
                    source: None,
                })
            }
            Change::Written(child) => {
                match read(zk, &client, &event.path, name).await? {
                    Some(instance) => instances.insert(child.to_owned(), instance),
                    None => instances.remove(child),
                };
            }
            Change::Deleted(child) => {
                instances.remove(child);
            }
            Change::ServiceDeleted => instances.clear(),
        }
        updates.list(instances.values().cloned().collect(), ());
    }
}
