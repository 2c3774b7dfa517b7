//! The etcd primitives of the core's registration supervisor: an instance is a key under a
//! lease of its own, kept alive by a keep-alive stream.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};
use tokio::time::Instant;

use crate::core::Connection;
use crate::error::is_lease_not_found;
use crate::SCHEME;

/// Writes instances at `{namespace}/{name}/{id}`, each under a lease of `ttl`.
pub(crate) struct EtcdStore {
    pub(crate) conn: Arc<Connection>,
    pub(crate) namespace: String,
    pub(crate) ttl: Duration,
    /// How long a request may take (the URL's `timeout`), also a keep-alive's answer.
    pub(crate) request_timeout: Duration,
}

impl EtcdStore {
    fn key(&self, name: &str, id: &str) -> String {
        format!("{}/{name}/{id}", self.namespace)
    }

    async fn grant(&self) -> Result<i64> {
        let ttl_secs = i64::try_from(self.ttl.as_secs().max(2)).unwrap_or(i64::MAX);
        self.conn
            .run(
                "lease grant",
                |c| async move { c.lease_grant(ttl_secs).await },
            )
            .await
    }

    async fn put(&self, key: &str, value: &str, lease: i64) -> Result<()> {
        self.conn
            .run("put", |c| async move {
                c.put(key.as_bytes(), value.as_bytes(), lease).await
            })
            .await
    }

    /// The keep-alive interval: a third of the TTL.
    fn interval(&self) -> Duration {
        self.ttl / 3
    }
}

fn lost(message: impl Into<String>) -> Error {
    Error::Backend {
        backend: SCHEME,
        message: message.into(),
        temporary: true,
        source: None,
    }
}

#[async_trait]
impl Store for EtcdStore {
    /// The lease id.
    type Lease = i64;

    async fn write(&self, instance: &ServiceInstance, held: Option<&i64>) -> Result<i64> {
        let key = self.key(&instance.name, &instance.id);
        let value = instance.to_json();
        if let Some(&lease) = held {
            match self.put(&key, &value, lease).await {
                Ok(()) => return Ok(lease),
                // Expired or revoked: a new lease below.
                Err(e) if is_lease_not_found(&e) => {}
                Err(e) => return Err(e),
            }
        }
        let lease = self.grant().await?;
        if let Err(e) = self.put(&key, &value, lease).await {
            self.revoke(lease).await;
            return Err(e);
        }
        Ok(lease)
    }

    /// Renews the lease every third of the TTL and checks, after each renewal, that the key is
    /// still there (deleted from outside, it is written again).
    async fn hold(&self, instance: &ServiceInstance, &lease: &i64) -> Error {
        let key = self.key(&instance.name, &instance.id);
        let (generation, client) = self.conn.client();
        let (error, connection_failed) = async {
            let mut keeper = match client.lease_keep_alive(lease).await {
                Ok(keeper) => keeper,
                Err(e) => return (lost(format!("keep-alive stream: {e}")), true),
            };
            loop {
                let next = Instant::now() + self.interval();
                if let Err(e) = keeper.send().await {
                    return (lost(format!("keep-alive send: {e}")), true);
                }
                // A member that does not answer within a request's time hangs (or is cut off):
                // fail over while the lease still lives. Waiting up to the TTL let the lease
                // expire whenever the member in use hung, though the others had a quorum.
                let within = self.request_timeout.min(self.ttl);
                match tokio::time::timeout(within, keeper.message()).await {
                    Ok(Ok(Some(resp))) if resp.ttl > 0 => {}
                    Ok(Ok(Some(_))) => return (lost(format!("lease {lease:x} expired")), false),
                    Ok(Ok(None)) => return (lost("keep-alive stream closed"), true),
                    Ok(Err(e)) => return (lost(format!("keep-alive: {e}")), true),
                    Err(_) => return (lost("no keep-alive answer in time"), true),
                }
                match client.count(key.as_bytes()).await {
                    Ok(0) => return (lost(format!("key {key} was deleted")), false),
                    Ok(_) => {}
                    Err(e) => return (lost(format!("reading {key}: {e}")), true),
                }
                tokio::time::sleep_until(next).await;
            }
        }
        .await;
        if connection_failed {
            // Let the connection move to another endpoint before the write again.
            self.conn.failover(generation).await;
        }
        error
    }

    /// Revoking the lease deletes the key attached to it: one round trip. Only when there is
    /// no lease, or the revoke fails (the lease expired, the server did not answer), is the
    /// key deleted by name.
    async fn remove(&self, instance: &ServiceInstance, lease: Option<&i64>) -> Result<()> {
        if let Some(&lease) = lease {
            if self.revoke(lease).await {
                return Ok(());
            }
        }
        let key = self.key(&instance.name, &instance.id);
        self.conn
            .run("delete", |c| {
                let key = key.clone();
                async move { c.delete(key.as_bytes()).await }
            })
            .await
    }

    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        let key = self.key(name, id);
        let count = self
            .conn
            .run("get", |c| {
                let key = key.clone();
                async move { c.count(key.as_bytes()).await }
            })
            .await?;
        Ok(count > 0)
    }

    fn retry_cap(&self) -> Duration {
        self.interval()
    }

    fn backend(&self) -> &'static str {
        crate::SCHEME
    }
}

impl EtcdStore {
    /// Revokes a lease (deleting what is attached to it): true when the server did. Failures
    /// only log: an unrevoked lease expires after its TTL.
    async fn revoke(&self, lease: i64) -> bool {
        let (_, client) = self.conn.client();
        match client.lease_revoke(lease).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(lease, error = %e, "etcd lease revoke failed");
                false
            }
        }
    }
}
