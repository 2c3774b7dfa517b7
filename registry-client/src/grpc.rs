//! A tonic channel balanced over a service's `grpc` endpoints.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use registry_core::Discovery;
use tokio::task::JoinHandle;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service, StdError};
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

use crate::{ClientError, Options, Resolver};

/// A balanced channel and the task that feeds it from the watch. Clone the channel as often
/// as needed; dropping this stops following the registry (the channel keeps its endpoints).
#[derive(Debug)]
pub struct BalancedChannel {
    channel: FailFastChannel,
    task: JoinHandle<()>,
}

impl BalancedChannel {
    /// The channel, for a tonic client (`GreeterClient::new(balanced.channel())`). A call
    /// fails at once with `Unavailable` ("no grpc instance of NAME in the registry") while the
    /// registry lists no endpoint it can reach, as [`HttpBalancer::pick`] does.
    ///
    /// [`HttpBalancer::pick`]: crate::HttpBalancer::pick
    pub fn channel(&self) -> FailFastChannel {
        self.channel.clone()
    }

    /// The tonic channel underneath: a call while there is no endpoint waits for one.
    pub fn tonic_channel(&self) -> Channel {
        self.channel.inner.clone()
    }
}

/// A tonic channel over a service's endpoints that fails fast while the registry lists none
/// it can reach (tonic's balancer alone would make such a call wait). Calls in flight are
/// never cut short; a call made just as the last endpoint is removed can still wait for an
/// endpoint, so give calls a deadline.
#[derive(Debug, Clone)]
pub struct FailFastChannel {
    inner: Channel,
    /// True while the registry lists no reachable endpoint.
    empty: Arc<AtomicBool>,
    service: Arc<str>,
    /// Whether `inner` said it is ready (its `call` needs that).
    inner_ready: bool,
}

impl FailFastChannel {
    fn no_instances(&self) -> tonic::Status {
        tonic::Status::unavailable(
            ClientError::NoInstances {
                service: self.service.to_string(),
                scheme: "grpc".into(),
            }
            .to_string(),
        )
    }
}

impl Service<http::Request<tonic::body::Body>> for FailFastChannel {
    type Response = http::Response<tonic::body::Body>;
    type Error = StdError;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if self.empty.load(Ordering::Acquire) {
            self.inner_ready = false;
            return Poll::Ready(Ok(()));
        }
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => {
                self.inner_ready = true;
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        if !std::mem::take(&mut self.inner_ready) {
            let status = self.no_instances();
            return Box::pin(async move { Err(status.into()) });
        }
        let call = self.inner.call(request);
        Box::pin(async move { call.await.map_err(Into::into) })
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
/// first endpoint; a call while the registry lists none fails fast (see [`FailFastChannel`]).
pub async fn grpc_channel(
    discovery: Arc<dyn Discovery>,
    target: &str,
    options: Options,
) -> Result<BalancedChannel, ClientError> {
    let tls = options.grpc_tls.clone();
    let mut resolver = Resolver::new(discovery, target, "grpc", options).await?;
    let (channel, sender) = Channel::balance_channel::<String>(64);
    let empty = Arc::new(AtomicBool::new(resolver.snapshot().0.is_empty()));
    let channel = FailFastChannel {
        inner: channel,
        empty: empty.clone(),
        service: crate::parse_target(target)?.into(),
        inner_ready: false,
    };
    let task = tokio::spawn(async move {
        let mut current: BTreeMap<String, ()> = BTreeMap::new();
        // Secure endpoints skipped for want of TLS options, so that each is logged once.
        let mut skipped: BTreeSet<String> = BTreeSet::new();
        loop {
            let (nodes, ended) = resolver.snapshot();
            let wanted: BTreeMap<String, (String, bool)> = nodes
                .iter()
                .filter(|n| {
                    let reachable = !n.endpoint.is_secure() || tls.is_some();
                    if !reachable && skipped.insert(n.endpoint.as_str().to_owned()) {
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
            // The last endpoint leaving: new calls fail fast from now on, before it goes.
            if wanted.is_empty() {
                empty.store(true, Ordering::Release);
            }
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
            // Inserted first, so a call let through finds an endpoint.
            empty.store(current.is_empty(), Ordering::Release);
            if ended || !resolver.changed().await {
                return;
            }
        }
    });
    Ok(BalancedChannel { channel, task })
}
