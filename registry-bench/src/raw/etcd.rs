//! etcd through `etcd-client`: a registration is a lease grant and a put with it, an update a
//! put with the same lease, a deregistration the lease's revoke (which deletes the key); a
//! list is one range read of the prefix decoded with serde; a watch is that read and a
//! prefix watch from the next revision. Keys and values are our backend's
//! (`{namespace}/{service}/{id}` = the instance JSON).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, Context, Result};
use async_trait::async_trait;
use etcd_client::{Client, EventType, GetOptions, PutOptions, Txn, TxnOp, WatchOptions};
use futures::{StreamExt, TryStreamExt};
use registry::ServiceInstance;
use tokio::sync::watch;

use super::{publish, AbortOnDrop, Follow, Raw, RawInstance, Writer};

/// Operations per bulk transaction (etcd's `--max-txn-ops` default).
const TXN_OPS: usize = 128;
/// Bulk transactions in flight at once.
const TXN_CONCURRENCY: usize = 8;
/// The decoding limit of the raw reads: raised from tonic's 4 MiB, as a raw user listing a
/// big prefix in one request must.
const MAX_DECODE: usize = 1 << 30;

/// etcd's own client on the keys of our namespace.
pub struct EtcdRaw {
    client: Client,
    endpoint: String,
    namespace: String,
    ttl: i64,
    leases: Mutex<HashMap<String, i64>>,
}

impl EtcdRaw {
    /// Connects to `endpoint` (`127.0.0.1:2379`); keys go under `namespace` (`/bench-…`),
    /// leases last `ttl` seconds.
    pub async fn connect(endpoint: &str, namespace: &str, ttl: i64) -> Result<EtcdRaw> {
        let client = Client::connect([endpoint], None)
            .await
            .with_context(|| format!("etcd-client: connect to {endpoint}"))?;
        Ok(EtcdRaw {
            client,
            endpoint: endpoint.to_owned(),
            namespace: namespace.to_owned(),
            ttl,
            leases: Mutex::new(HashMap::new()),
        })
    }

    fn key(&self, service: &str, id: &str) -> String {
        format!("{}/{service}/{id}", self.namespace)
    }

    fn prefix(&self, service: &str) -> String {
        format!("{}/{service}/", self.namespace)
    }

    fn leases(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The prefix read in one request, decoded; and its revision.
    async fn list(&self, service: &str) -> Result<(i64, Vec<RawInstance>)> {
        let prefix = self.prefix(service);
        let mut kv = self
            .client
            .kv_client()
            .max_decoding_message_size(MAX_DECODE);
        let mut resp = kv
            .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| format!("etcd get {prefix}"))?;
        let revision = resp.header().map_or(0, |h| h.revision());
        let list = resp
            .take_kvs()
            .iter()
            .map(|kv| serde_json::from_slice::<RawInstance>(kv.value()))
            .collect::<Result<Vec<_>, _>>()
            .with_context(|| format!("decode a value under {prefix}"))?;
        Ok((revision, list))
    }
}

#[async_trait]
impl Writer for EtcdRaw {
    async fn bulk_write(&self, service: &str, instances: &[ServiceInstance]) -> Result<()> {
        // Futures collected first: a stream mapping borrowed items is not `Send` enough for
        // async-trait.
        let txns: Vec<_> = instances
            .chunks(TXN_OPS)
            .map(|chunk| {
                let ops: Vec<TxnOp> = chunk
                    .iter()
                    .map(|i| TxnOp::put(self.key(service, &i.id), i.to_json(), None))
                    .collect();
                let mut client = self.client.clone();
                async move { client.txn(Txn::new().and_then(ops)).await }
            })
            .collect();
        futures::stream::iter(txns)
            .buffer_unordered(TXN_CONCURRENCY)
            .try_for_each(|_| async { Ok(()) })
            .await
            .context("etcd bulk txn")
    }

    async fn put(&self, instance: &ServiceInstance) -> Result<()> {
        let key = self.key(&instance.name, &instance.id);
        self.client
            .clone()
            .put(key.clone(), instance.to_json(), None)
            .await
            .with_context(|| format!("etcd put {key}"))?;
        Ok(())
    }

    async fn bulk_delete(&self, service: &str) -> Result<()> {
        let prefix = self.prefix(service);
        self.client
            .clone()
            .delete(
                prefix.clone(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .with_context(|| format!("etcd delete {prefix}"))?;
        Ok(())
    }

    async fn cleanup(&self) -> Result<()> {
        let prefix = format!("{}/", self.namespace);
        self.client
            .clone()
            .delete(
                prefix.clone(),
                Some(etcd_client::DeleteOptions::new().with_prefix()),
            )
            .await
            .with_context(|| format!("etcd delete {prefix}"))?;
        Ok(())
    }
}

#[async_trait]
impl Raw for EtcdRaw {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        let mut client = self.client.clone();
        let lease = client
            .lease_grant(self.ttl, None)
            .await
            .context("etcd lease grant")?
            .id();
        let key = self.key(&instance.name, &instance.id);
        client
            .put(
                key.clone(),
                instance.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .with_context(|| format!("etcd put {key}"))?;
        self.leases().insert(key, lease);
        Ok(())
    }

    async fn update(&self, instance: &ServiceInstance) -> Result<()> {
        let key = self.key(&instance.name, &instance.id);
        let lease = self
            .leases()
            .get(&key)
            .copied()
            .ok_or_else(|| anyhow!("{key} was not registered"))?;
        self.client
            .clone()
            .put(
                key.clone(),
                instance.to_json(),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .with_context(|| format!("etcd put {key}"))?;
        Ok(())
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        let key = self.key(&instance.name, &instance.id);
        let lease = self
            .leases()
            .remove(&key)
            .ok_or_else(|| anyhow!("{key} was not registered"))?;
        self.client
            .clone()
            .lease_revoke(lease)
            .await
            .with_context(|| format!("etcd lease revoke of {key}"))?;
        Ok(())
    }

    async fn get(&self, service: &str) -> Result<usize> {
        Ok(self.list(service).await?.1.len())
    }

    async fn watch(&self, service: &str, target: &str) -> Result<Follow> {
        let (revision, list) = self.list(service).await?;
        let (tx, seen) = watch::channel(0);
        publish(
            &tx,
            target,
            list.iter().map(|i| (i.id.as_str(), i.metadata.get("seq"))),
        );
        let prefix = self.prefix(service);
        let mut stream = self
            .client
            .clone()
            .watch(
                prefix.clone(),
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision + 1),
                ),
            )
            .await
            .with_context(|| format!("etcd watch {prefix}"))?;
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Ok(Some(resp)) = stream.message().await {
                for event in resp.events() {
                    if event.event_type() != EventType::Put {
                        continue;
                    }
                    let Some(kv) = event.kv() else { continue };
                    if let Ok(instance) = serde_json::from_slice::<RawInstance>(kv.value()) {
                        publish(
                            &tx,
                            &target,
                            [(instance.id.as_str(), instance.metadata.get("seq"))],
                        );
                    }
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
        Ok(Arc::new(
            EtcdRaw::connect(&self.endpoint, &self.namespace, self.ttl).await?,
        ))
    }
}
