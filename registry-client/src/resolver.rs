//! The endpoints of one scheme of a service, kept current by the registry's watch.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Discovery, Endpoint, ServiceInstance};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{parse_target, ClientError, Filter, Options};

/// One endpoint a client may call.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// The instance it belongs to.
    pub instance_id: String,
    /// The endpoint.
    pub endpoint: Endpoint,
    /// Its weight: the instance's metadata `weight`, else 1; at most [`MAX_WEIGHT`].
    pub weight: f64,
    /// The instance's metadata (shared by the nodes of one instance), for a consumer that
    /// routes by it (a zone, a region).
    pub metadata: Arc<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default)]
struct Resolved {
    /// `None` until the first list.
    nodes: Option<Vec<Node>>,
    /// The watch ended: nothing more will come.
    ended: bool,
}

/// The instances of a service with an endpoint of one scheme. Dropping it stops its watch.
pub struct Resolver {
    /// Kept alive as long as the resolver: a registry dropped ends its watches.
    _discovery: Arc<dyn Discovery>,
    service: String,
    scheme: String,
    state: watch::Receiver<Resolved>,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("service", &self.service)
            .field("scheme", &self.scheme)
            .finish_non_exhaustive()
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub use registry_core::untrusted::MAX_WEIGHT;

fn nodes_of(list: &[ServiceInstance], scheme: &str, options: &Options) -> Vec<Node> {
    list.iter()
        .flat_map(|i| instance_nodes(i, scheme, options.filter.as_ref()))
        .collect()
}

/// The nodes of one instance: its endpoints of `scheme` (in the order listed; those that do
/// not parse are skipped), none when `filter` refuses the instance.
pub(crate) fn instance_nodes(
    instance: &ServiceInstance,
    scheme: &str,
    filter: Option<&Filter>,
) -> Vec<Node> {
    if !filter.is_none_or(|f| f(instance)) {
        return Vec::new();
    }
    let endpoints: Vec<Endpoint> = instance
        .endpoints
        .iter()
        .filter_map(|e| match Endpoint::parse(e) {
            Ok(endpoint) => Some(endpoint),
            Err(error) => {
                tracing::debug!(id = %instance.id, %error, "endpoint skipped");
                None
            }
        })
        .filter(|e| e.scheme() == scheme)
        .collect();
    if endpoints.is_empty() {
        return Vec::new();
    }
    let weight = registry_core::untrusted::weight(instance);
    let metadata = Arc::new(instance.metadata.clone());
    endpoints
        .into_iter()
        .map(|endpoint| Node {
            instance_id: instance.id.clone(),
            endpoint,
            weight,
            metadata: metadata.clone(),
        })
        .collect()
}

impl Resolver {
    /// Follows `target` (`discovery:///NAME`) for endpoints with `scheme`, and waits up to
    /// `options.first_list_timeout` for a first non-empty list (returning anyway after it:
    /// calls then fail fast until instances appear).
    pub async fn new(
        discovery: Arc<dyn Discovery>,
        target: &str,
        scheme: &str,
        options: Options,
    ) -> Result<Resolver, ClientError> {
        let service = parse_target(target)?;
        let mut watcher = discovery.watch(&service).await?;
        let (tx, state) = watch::channel(Resolved::default());
        let scheme_owned = scheme.to_owned();
        let name = service.clone();
        let first_list_timeout = options.first_list_timeout;
        let task = tokio::spawn(async move {
            loop {
                match watcher.next().await {
                    Ok(list) => {
                        let nodes = nodes_of(&list, &scheme_owned, &options);
                        tracing::debug!(service = %name, nodes = nodes.len(), "discovery list");
                        tx.send_replace(Resolved {
                            nodes: Some(nodes),
                            ended: false,
                        });
                    }
                    Err(e) => {
                        tracing::warn!(service = %name, error = %e, "discovery watch ended");
                        tx.send_modify(|r| r.ended = true);
                        return;
                    }
                }
            }
        });
        let resolver = Resolver {
            _discovery: discovery,
            service,
            scheme: scheme.to_owned(),
            state,
            task,
        };
        resolver.wait_for_nodes(first_list_timeout).await;
        Ok(resolver)
    }

    /// Waits up to `timeout` for a non-empty list; true when there is one.
    pub async fn wait_for_nodes(&self, timeout: Duration) -> bool {
        let mut state = self.state.clone();
        let ready = async {
            state
                .wait_for(|r| r.ended || r.nodes.as_ref().is_some_and(|n| !n.is_empty()))
                .await
                .map(|r| !r.ended)
                .unwrap_or(false)
        };
        tokio::time::timeout(timeout, ready).await.unwrap_or(false)
    }

    /// The service followed.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The current endpoints: the registry's latest list, or the last one known while the
    /// registry is unreachable (the watch keeps it, and logs the failure). Fails fast when
    /// there are none, and when the watch has ended.
    pub fn nodes(&self) -> Result<Vec<Node>, ClientError> {
        let state = self.state.borrow();
        if state.ended {
            return Err(ClientError::WatchEnded {
                service: self.service.clone(),
            });
        }
        match &state.nodes {
            Some(nodes) if !nodes.is_empty() => Ok(nodes.clone()),
            _ => Err(ClientError::NoInstances {
                service: self.service.clone(),
                scheme: self.scheme.clone(),
            }),
        }
    }
}
