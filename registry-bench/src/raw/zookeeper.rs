//! ZooKeeper through `zookeeper-client`: a registration is one `create` of an ephemeral node
//! under a parent made beforehand, an update one `set_data`, a deregistration one `delete`; a
//! list is `get_children`, then every child's `get_data` in multi-reads of [`READ_BATCH`]
//! (ZooKeeper 3.6+), [`READS_IN_FLIGHT`] at a time on the one connection, decoded with serde
//! (the fastest way this client reads many nodes); a watch is a persistent recursive watch,
//! that list, then one `get_data` per changed node. Paths and data are our backend's (`{root}/{service}/{id}` =
//! the instance JSON).

use std::sync::Arc;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use registry::ServiceInstance;
use tokio::sync::watch;
use zookeeper_client::{
    Acls, AddWatchMode, Client, CreateMode, CreateOptions, EventType, MultiReadResult,
};

use super::{publish, AbortOnDrop, Follow, Raw, RawInstance, Writer};

/// Operations per bulk `multi` request (well under `jute.maxbuffer`, 1 MiB, for our values).
const MULTI_OPS: usize = 500;
/// Bulk `multi` requests in flight at once.
const MULTI_CONCURRENCY: usize = 4;
/// `get_data` operations per multi-read while listing.
const READ_BATCH: usize = 1000;
/// Multi-reads in flight at once while listing (pipelined on the one connection).
const READS_IN_FLIGHT: usize = 4;

/// ZooKeeper's own client under our root.
pub struct ZkRaw {
    client: Client,
    server: String,
    root: String,
}

fn persistent() -> CreateOptions<'static> {
    CreateMode::Persistent.with_acls(Acls::anyone_all())
}

fn ephemeral() -> CreateOptions<'static> {
    CreateMode::Ephemeral.with_acls(Acls::anyone_all())
}

impl ZkRaw {
    /// Connects to `server` (`127.0.0.1:2181`); nodes go under `root` (`/bench-…`).
    pub async fn connect(server: &str, root: &str) -> Result<ZkRaw> {
        let client = Client::connect(server)
            .await
            .with_context(|| format!("zookeeper-client: connect to {server}"))?;
        Ok(ZkRaw {
            client,
            server: server.to_owned(),
            root: root.to_owned(),
        })
    }

    fn service_path(&self, service: &str) -> String {
        format!("{}/{service}", self.root)
    }

    fn path(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.root)
    }

    /// The children of `parent` and their data, decoded.
    async fn list(client: &Client, parent: &str) -> Result<Vec<RawInstance>> {
        let children = match client.list_children(parent).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("get_children {parent}")),
        };
        let batches: Vec<_> = children
            .chunks(READ_BATCH)
            .map(|batch| {
                let paths: Vec<String> = batch.iter().map(|c| format!("{parent}/{c}")).collect();
                async move {
                    let mut reader = client.new_multi_reader();
                    for path in &paths {
                        reader.add_get_data(path)?;
                    }
                    let results = reader
                        .commit()
                        .await
                        .with_context(|| format!("multi-read under {parent}"))?;
                    paths
                        .iter()
                        .zip(results)
                        .filter_map(|(path, result)| match result {
                            MultiReadResult::Data { data, .. } => Some(
                                serde_json::from_slice::<RawInstance>(&data)
                                    .with_context(|| format!("decode {path}")),
                            ),
                            // Gone meanwhile.
                            MultiReadResult::Error {
                                err: zookeeper_client::Error::NoNode,
                            } => None,
                            other => Some(Err(anyhow::anyhow!("get_data {path}: {other:?}"))),
                        })
                        .collect::<Result<Vec<_>>>()
                }
            })
            .collect();
        let lists: Vec<Vec<RawInstance>> = futures::stream::iter(batches)
            .buffered(READS_IN_FLIGHT)
            .try_collect()
            .await?;
        Ok(lists.into_iter().flatten().collect())
    }

    /// Deletes `path` and everything under it, in `multi` batches.
    async fn delete_tree(&self, path: &str) -> Result<()> {
        let children = match self.client.list_children(path).await {
            Ok(children) => children,
            Err(zookeeper_client::Error::NoNode) => return Ok(()),
            Err(e) => return Err(e).with_context(|| format!("get_children {path}")),
        };
        let mut leaves = Vec::new();
        for child in children {
            let child = format!("{path}/{child}");
            let grandchildren = self.client.list_children(&child).await.unwrap_or_default();
            if grandchildren.is_empty() {
                leaves.push(child);
            } else {
                Box::pin(self.delete_tree(&child)).await?;
            }
        }
        for chunk in leaves.chunks(MULTI_OPS) {
            let mut multi = self.client.new_multi_writer();
            for leaf in chunk {
                multi.add_delete(leaf, None)?;
            }
            if let Err(e) = multi.commit().await {
                // A node gone meanwhile (an ephemeral one's session ended): one by one.
                eprintln!("registry-bench: multi delete under {path}: {e}; deleting one by one");
                for leaf in chunk {
                    match self.client.delete(leaf, None).await {
                        Ok(()) | Err(zookeeper_client::Error::NoNode) => {}
                        Err(e) => return Err(e).with_context(|| format!("delete {leaf}")),
                    }
                }
            }
        }
        match self.client.delete(path, None).await {
            Ok(()) | Err(zookeeper_client::Error::NoNode) => Ok(()),
            Err(e) => Err(e).with_context(|| format!("delete {path}")),
        }
    }
}

#[async_trait]
impl Writer for ZkRaw {
    async fn prepare(&self, service: &str) -> Result<()> {
        let path = self.service_path(service);
        self.client
            .mkdir(&path, &persistent())
            .await
            .with_context(|| format!("mkdir {path}"))
    }

    async fn bulk_write(&self, service: &str, instances: &[ServiceInstance]) -> Result<()> {
        self.prepare(service).await?;
        let batches: Vec<_> =
            instances
                .chunks(MULTI_OPS)
                .map(|chunk| async move {
                    let mut multi = self.client.new_multi_writer();
                    for instance in chunk {
                        let path = self.path(service, &instance.id);
                        multi.add_create(&path, instance.to_json().as_bytes(), &persistent())?;
                    }
                    multi.commit().await.map(drop).with_context(|| {
                        format!("multi create under {}", self.service_path(service))
                    })
                })
                .collect();
        futures::stream::iter(batches)
            .buffer_unordered(MULTI_CONCURRENCY)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn put(&self, instance: &ServiceInstance) -> Result<()> {
        let path = self.path(&instance.name, &instance.id);
        let data = instance.to_json();
        match self.client.set_data(&path, data.as_bytes(), None).await {
            Ok(_) => Ok(()),
            Err(zookeeper_client::Error::NoNode) => self
                .client
                .create(&path, data.as_bytes(), &persistent())
                .await
                .map(drop)
                .with_context(|| format!("create {path}")),
            Err(e) => Err(e).with_context(|| format!("set_data {path}")),
        }
    }

    async fn bulk_delete(&self, service: &str) -> Result<()> {
        self.delete_tree(&self.service_path(service)).await
    }

    async fn cleanup(&self) -> Result<()> {
        self.delete_tree(&self.root).await
    }
}

#[async_trait]
impl Raw for ZkRaw {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        let path = self.path(&instance.name, &instance.id);
        self.client
            .create(&path, instance.to_json().as_bytes(), &ephemeral())
            .await
            .map(drop)
            .with_context(|| format!("create {path}"))
    }

    async fn update(&self, instance: &ServiceInstance) -> Result<()> {
        let path = self.path(&instance.name, &instance.id);
        self.client
            .set_data(&path, instance.to_json().as_bytes(), None)
            .await
            .map(drop)
            .with_context(|| format!("set_data {path}"))
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        let path = self.path(&instance.name, &instance.id);
        self.client
            .delete(&path, None)
            .await
            .with_context(|| format!("delete {path}"))
    }

    async fn get(&self, service: &str) -> Result<usize> {
        Ok(Self::list(&self.client, &self.service_path(service))
            .await?
            .len())
    }

    async fn watch(&self, service: &str, target: &str) -> Result<Follow> {
        let parent = self.service_path(service);
        let mut watcher = self
            .client
            .watch(&parent, AddWatchMode::PersistentRecursive)
            .await
            .with_context(|| format!("persistent recursive watch on {parent}"))?;
        let list = Self::list(&self.client, &parent).await?;
        let (tx, seen) = watch::channel(0);
        publish(
            &tx,
            target,
            list.iter().map(|i| (i.id.as_str(), i.metadata.get("seq"))),
        );
        let client = self.client.clone();
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            loop {
                let event = watcher.changed().await;
                match event.event_type {
                    EventType::NodeCreated | EventType::NodeDataChanged => {
                        let Ok((data, _)) = client.get_data(&event.path).await else {
                            continue;
                        };
                        if let Ok(instance) = serde_json::from_slice::<RawInstance>(&data) {
                            publish(
                                &tx,
                                &target,
                                [(instance.id.as_str(), instance.metadata.get("seq"))],
                            );
                        }
                    }
                    EventType::Session if event.session_state.is_terminated() => return,
                    _ => {}
                }
            }
        });
        Ok(Follow {
            first_len: list.len(),
            seen,
            _task: AbortOnDrop(task),
        })
    }

    async fn fresh(&self) -> Result<Arc<dyn Raw>> {
        Ok(Arc::new(ZkRaw::connect(&self.server, &self.root).await?))
    }
}
