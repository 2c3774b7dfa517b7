//! Following one service: a persistent recursive watch on `{root}/{name}`, a full list after
//! it is set and after every reconnect (events can be lost across one, ZOOKEEPER-4698), and
//! each node's data read again when it is created or changed.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Backoff, Error, Publisher, Result, ServiceInstance};
use zookeeper_client::{AddWatchMode, Client, Error as Z, EventType, SessionState};

use crate::error::map_err;
use crate::node::{timed, timed_raw};
use crate::session::Zk;

/// Decodes a node's data, skipping (with a warning) what is not an instance of `name`.
fn decode(path: &str, data: &[u8], name: &str) -> Option<ServiceInstance> {
    match ServiceInstance::from_json(data) {
        Ok(instance) if instance.name == name => Some(instance),
        Ok(instance) => {
            tracing::warn!(%path, found = %instance.name, "ZooKeeper node names another service; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(%path, error = %e, "ZooKeeper node is not an instance; skipped");
            None
        }
    }
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

/// The upstream of one service's shared watch.
pub(crate) async fn follow(zk: Arc<Zk>, service_path: String, name: String, publisher: Publisher) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let result = match zk.client().await {
            Ok(client) => {
                follow_session(&zk, &client, &service_path, &name, &publisher, &mut backoff).await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            publisher.report_error(e);
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// Follows the service within one session; returns when the session ends.
async fn follow_session(
    zk: &Zk,
    client: &Client,
    service_path: &str,
    name: &str,
    publisher: &Publisher,
    backoff: &mut Backoff,
) -> Result<()> {
    let mut watcher = timed(
        zk,
        "watch",
        client.watch(service_path, AddWatchMode::PersistentRecursive),
    )
    .await?;
    let mut instances = list(zk, client, service_path, name).await?;
    publisher.publish(instances.values().cloned().collect());
    backoff.reset();
    let prefix = format!("{service_path}/");
    loop {
        let event = watcher.changed().await;
        match event.event_type {
            EventType::Session => match event.session_state {
                SessionState::SyncConnected | SessionState::ConnectedReadOnly => {
                    // zookeeper-client (0.9.3 through 0.11.2) re-sends only one-shot watches
                    // on reconnect (its `resend_watches` never selects SetWatches2), so a
                    // restarted server has lost our persistent watch: add it again, then
                    // list what was missed.
                    let renewed = timed(
                        zk,
                        "watch",
                        client.watch(service_path, AddWatchMode::PersistentRecursive),
                    )
                    .await?;
                    watcher = renewed;
                    instances = list(zk, client, service_path, name).await?;
                }
                SessionState::Disconnected => continue,
                // Terminal: the watcher must not be polled again.
                state => {
                    return Err(Error::Unavailable {
                        message: format!("ZooKeeper session ended: {state:?}"),
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
                match read(zk, client, &event.path, name).await? {
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
        publisher.publish(instances.values().cloned().collect());
    }
}
