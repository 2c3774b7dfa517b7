//! ZooKeeper's reading primitives for the core's watch engine: a persistent recursive watch
//! on `{root}/{name}`, a full list after it is set, and each node's data read again when it
//! is created or changed.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};
use registry_core::{Error, Result, ServiceInstance};
use zookeeper_client::{AddWatchMode, Client, Error as Z, EventType, SessionState};

use crate::error::map_err;
use crate::node::{timed, timed_raw};
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

/// Lists the instances under `service_path`, by child name.
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
    for child in children {
        let path = format!("{service_path}/{child}");
        if let Some(instance) = read(zk, client, &path, name).await? {
            instances.insert(child, instance);
        }
    }
    Ok(instances)
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
    let mut watcher = timed(
        zk,
        "watch",
        client.watch(service_path, AddWatchMode::PersistentRecursive),
    )
    .await?;
    updates.following();
    let mut instances = list(zk, &client, service_path, name).await?;
    updates.list(instances.values().cloned().collect(), ());
    let prefix = format!("{service_path}/");
    loop {
        let event = watcher.changed().await;
        match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => continue,
                state => {
                    return Err(Error::Unavailable {
                        message: format!("ZooKeeper connection lost: {state:?}"),
                        source: None,
                    })
                }
            },
            EventType::NodeCreated | EventType::NodeDataChanged => {
                let Some(child) = event
                    .path
                    .strip_prefix(&prefix)
                    .filter(|c| !c.contains('/'))
                else {
                    continue;
                };
                match read(zk, &client, &event.path, name).await? {
                    Some(instance) => instances.insert(child.to_owned(), instance),
                    None => instances.remove(child),
                };
            }
            EventType::NodeDeleted => {
                if event.path == service_path {
                    instances.clear();
                } else if let Some(child) = event.path.strip_prefix(&prefix) {
                    instances.remove(child);
                }
            }
            EventType::NodeChildrenChanged => continue,
        }
        updates.list(instances.values().cloned().collect(), ());
    }
}

#[cfg(test)]
mod round_trip {
    use proptest::prelude::*;
    use registry_core::strategy::{self, Drawn, Shape};

    proptest! {
        #![proptest_config(strategy::config(256))]

        /// Every valid instance comes back exactly from the data of its ZooKeeper node.
        #[test]
        fn every_valid_instance_round_trips(
            Drawn(instance) in strategy::instance(&Shape::default()),
        ) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            let path = format!("/microservices/{}/{}", instance.name, instance.id);
            let data = instance.to_json();
            let back = super::decode(&path, data.as_bytes(), &instance.name);
            let Some(back) = back else {
                return Err(TestCaseError::fail(format!(
                    "skipped when read ({} bytes of JSON)",
                    data.len()
                )));
            };
            let difference = strategy::difference(&instance, &back);
            prop_assert!(difference.is_none(), "{:?}", difference);
        }
    }
}
