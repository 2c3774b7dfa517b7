//! The raw clients' side of every measurement: one module per registry, each doing the same
//! work as our backend with the registry's own client, the way a user of that client would.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Result;
use async_trait::async_trait;
use registry::ServiceInstance;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod consul;
pub mod etcd;
pub mod memory;
pub mod nacos;
pub mod zookeeper;

/// The latest `seq` metadata a watcher has seen on the instance it follows (0 before any).
pub type Seen = watch::Receiver<u64>;

/// A task that is aborted when this is dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A watch that has its first list, and follows one instance's `seq` in a task of its own.
#[derive(Debug)]
pub struct Follow {
    /// How many instances the first list held.
    pub first_len: usize,
    /// The `seq` of the followed instance, as the watcher last saw it.
    pub seen: Seen,
    /// The following task, held: it is aborted when the watch is dropped.
    pub _task: AbortOnDrop,
}

/// The `seq` metadata of an instance (0 when absent or not a number).
pub fn seq_of(metadata: Option<&String>) -> u64 {
    metadata.and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// An instance as a raw user decodes the go-kratos JSON (etcd and ZooKeeper values): a plain
/// serde struct, no validation.
#[derive(Debug, Deserialize)]
pub struct RawInstance {
    /// The instance id.
    pub id: String,
    /// The service name.
    #[allow(dead_code)]
    pub name: String,
    /// The version.
    #[serde(default)]
    #[allow(dead_code)]
    pub version: String,
    /// The metadata.
    #[serde(default)]
    pub metadata: HashMap<String, String>,
    /// The endpoints.
    #[serde(default)]
    #[allow(dead_code)]
    pub endpoints: Vec<String>,
}

/// Writes with the registry's own client: the bulk data of the scale items and the changes
/// the watchers wait for (one write, whichever arm is measured).
#[async_trait]
pub trait Writer: Send + Sync {
    /// Gets `service` ready to be written (a ZooKeeper parent node, a Consul node).
    async fn prepare(&self, service: &str) -> Result<()> {
        let _ = service;
        Ok(())
    }

    /// Writes `instances`, all of one service, as fast as this client can.
    async fn bulk_write(&self, service: &str, instances: &[ServiceInstance]) -> Result<()>;

    /// Writes one instance, or replaces it with a new value.
    async fn put(&self, instance: &ServiceInstance) -> Result<()>;

    /// Deletes everything written under `service`.
    async fn bulk_delete(&self, service: &str) -> Result<()>;

    /// Deletes whatever this run left (at the end, and after a failure).
    async fn cleanup(&self) -> Result<()>;
}

/// A registry's own client doing the work of our API.
#[async_trait]
pub trait Raw: Writer {
    /// Registers a new instance the way our backend does (a lease, a TTL check, an ephemeral
    /// node, an ephemeral Nacos instance).
    async fn register(&self, instance: &ServiceInstance) -> Result<()>;

    /// Writes a registered instance again with a new value.
    async fn update(&self, instance: &ServiceInstance) -> Result<()>;

    /// Removes a registered instance.
    async fn deregister(&self, instance: &ServiceInstance) -> Result<()>;

    /// Reads and decodes the instances of `service`; returns how many.
    async fn get(&self, service: &str) -> Result<usize>;

    /// Starts a watch of `service`; returns once its first list is in hand, following
    /// instance `target` from then on.
    async fn watch(&self, service: &str, target: &str) -> Result<Follow>;

    /// A new client with a connection of its own (for first-watch samples).
    async fn fresh(&self) -> Result<Arc<dyn Raw>>;
}

/// Publishes the `seq` of `target` found in `list` (by id) when it is newer.
pub fn publish<'a>(
    tx: &watch::Sender<u64>,
    target: &str,
    list: impl IntoIterator<Item = (&'a str, Option<&'a String>)>,
) {
    if let Some(seq) = list
        .into_iter()
        .find(|(id, _)| *id == target)
        .map(|(_, seq)| seq_of(seq))
    {
        tx.send_if_modified(|s| {
            let newer = seq > *s;
            if newer {
                *s = seq;
            }
            newer
        });
    }
}
