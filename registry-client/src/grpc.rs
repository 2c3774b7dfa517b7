//! A tonic channel balanced over a service's `grpc` endpoints.

use std::collections::BTreeMap;
use std::sync::Arc;

use registry_core::Discovery;
use tokio::task::JoinHandle;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, Options, Resolver};

/// A balanced channel and the task that feeds it from the watch. Clone the channel as often
/// as needed; dropping this stops following the registry (the channel keeps its endpoints).
#[derive(Debug)]
pub struct BalancedChannel {
    channel: Channel,
    task: JoinHandle<()>,
}

impl BalancedChannel {
    /// The channel, for a tonic client (`GreeterClient::new(balanced.channel())`).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

impl Drop for BalancedChannel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A channel balanced over the `grpc` endpoints of `target` (`discovery:///NAME`), following
/// the registry: a change inserts and removes endpoints without dropping calls in flight.
/// Endpoints marked secure (`isSecure=true`) are reached over TLS with
/// [`Options::with_grpc_tls`], and skipped without it. Waits (bounded by the options) for a
/// first endpoint; a call while there is none waits for one, as tonic's balancer does.
pub async fn grpc_channel(
    discovery: Arc<dyn Discovery>,
    target: &str,
    options: Options,
) -> Result<BalancedChannel, ClientError> {
    let tls = options.grpc_tls.clone();
    let mut resolver = Resolver::new(discovery, target, "grpc", options).await?;
    let (channel, sender) = Channel::balance_channel::<String>(64);
    let task = tokio::spawn(async move {
        let mut current: BTreeMap<String, ()> = BTreeMap::new();
        loop {
            let (nodes, ended) = resolver.snapshot();
            let wanted: BTreeMap<String, (String, bool)> = nodes
                .iter()
                .filter(|n| {
                    let reachable = !n.endpoint.is_secure() || tls.is_some();
                    if !reachable {
                        tracing::warn!(endpoint = %n.endpoint.as_str(), "TLS gRPC endpoint skipped: no Options::with_grpc_tls");
                    }
                    reachable
                })
                .map(|n| {
                    let secure = n.endpoint.is_secure();
                    let scheme = if secure { "https" } else { "http" };
                    let uri = format!("{scheme}://{}", n.endpoint.authority());
                    (n.endpoint.authority(), (uri, secure))
                })
                .collect();
            for key in current
                .keys()
                .filter(|k| !wanted.contains_key(*k))
                .cloned()
                .collect::<Vec<_>>()
            {
                current.remove(&key);
                if sender.send(Change::Remove(key)).await.is_err() {
                    return;
                }
            }
            for (key, (uri, secure)) in wanted {
                if current.contains_key(&key) {
                    continue;
                }
                let endpoint = Endpoint::from_shared(uri).and_then(|e| match (&tls, secure) {
                    (Some(tls), true) => e.tls_config(tls.clone()),
                    _ => Ok(e),
                });
                match endpoint {
                    Ok(endpoint) => {
                        current.insert(key.clone(), ());
                        if sender.send(Change::Insert(key, endpoint)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => tracing::warn!(%key, error = %e, "not a gRPC endpoint; skipped"),
                }
            }
            if ended || !resolver.changed().await {
                return;
            }
        }
    });
    Ok(BalancedChannel { channel, task })
}
