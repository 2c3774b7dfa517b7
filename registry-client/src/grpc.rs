//! A tonic channel balanced over a service's `grpc` endpoints.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use registry_core::Discovery;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tonic::codegen::{http, BoxFuture, Context, Poll, Service, StdError};
use tonic::transport::channel::Change as TonicChange;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};

use crate::{Change, ClientError, Discover, Node, NodeKey, Options};

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
///
/// Fed by a [`Discover`] stream: each [`Change`] of it becomes the same change of tonic's
/// balanced channel, keyed alike. A node inserted again only for a new weight or metadata is
/// left as it is (tonic's balancer uses neither). While the registry cannot be reached the
/// channel keeps its endpoints.
pub async fn grpc_channel(
    discovery: Arc<dyn Discovery>,
    target: &str,
    options: Options,
) -> Result<BalancedChannel, ClientError> {
    let tls = options.grpc_tls.clone();
    let first_list_timeout = options.first_list_timeout;
    let discover = Discover::new(discovery, target, "grpc", options).await?;
    let (channel, sender) = Channel::balance_channel::<NodeKey>(64);
    let empty = Arc::new(AtomicBool::new(true));
    let channel = FailFastChannel {
        inner: channel,
        empty: empty.clone(),
        service: discover.service().into(),
        inner_ready: false,
    };
    let (first_tx, first_rx) = oneshot::channel();
    let feed = Feed {
        sender,
        tls,
        empty,
        live: HashSet::new(),
        skipped: HashSet::new(),
        first: Some(first_tx),
    };
    let task = tokio::spawn(feed.run(discover));
    // Resolves at the first endpoint, or when the feed ended without one.
    let _ = tokio::time::timeout(first_list_timeout, first_rx).await;
    Ok(BalancedChannel { channel, task })
}

/// Feeds tonic's balanced channel from a [`Discover`] stream.
struct Feed {
    sender: mpsc::Sender<TonicChange<NodeKey, Endpoint>>,
    tls: Option<ClientTlsConfig>,
    /// The fail-fast flag of the channel: true while `live` is empty.
    empty: Arc<AtomicBool>,
    /// The keys in the channel.
    live: HashSet<NodeKey>,
    /// Secure endpoints left out for want of TLS options, each logged once while listed.
    skipped: HashSet<NodeKey>,
    /// Told at the first endpoint in the channel.
    first: Option<oneshot::Sender<()>>,
}

impl Feed {
    async fn run(mut self, mut discover: Discover) {
        while let Some(Ok(change)) = discover.next().await {
            let sent = match change {
                Change::Insert(key, node) => self.insert(key, &node).await,
                Change::Remove(key) => self.remove(key).await,
            };
            if !sent {
                return;
            }
        }
        tracing::warn!(service = %discover.service(), "discovery watch ended; the gRPC channel keeps its last endpoints");
    }

    /// Puts `node` in the channel under `key`; false when the channel is gone.
    async fn insert(&mut self, key: NodeKey, node: &Node) -> bool {
        // The endpoint text is part of the key: a key inserted again has the same address
        // and TLS, and only a new weight or metadata, which tonic's balancer does not use.
        if self.live.contains(&key) || self.skipped.contains(&key) {
            return true;
        }
        let secure = node.endpoint.is_secure();
        if secure && self.tls.is_none() {
            tracing::warn!(endpoint = %node.endpoint.as_str(), "TLS gRPC endpoint skipped: no Options::with_grpc_tls");
            self.skipped.insert(key);
            return true;
        }
        let scheme = if secure { "https" } else { "http" };
        let uri = format!("{scheme}://{}", node.endpoint.authority());
        let endpoint = Endpoint::from_shared(uri).and_then(|e| match (&self.tls, secure) {
            (Some(tls), true) => e.tls_config(tls.clone()),
            _ => Ok(e),
        });
        let endpoint = match endpoint {
            Ok(endpoint) => endpoint,
            Err(error) => {
                tracing::warn!(%key, %error, "not a gRPC endpoint; skipped");
                self.skipped.insert(key);
                return true;
            }
        };
        if self
            .sender
            .send(TonicChange::Insert(key.clone(), endpoint))
            .await
            .is_err()
        {
            return false;
        }
        self.live.insert(key);
        // Inserted first, so a call let through finds an endpoint.
        self.empty.store(false, Ordering::Release);
        if let Some(first) = self.first.take() {
            let _ = first.send(());
        }
        true
    }

    /// Takes `key` out of the channel; false when the channel is gone.
    async fn remove(&mut self, key: NodeKey) -> bool {
        self.skipped.remove(&key);
        if !self.live.remove(&key) {
            return true;
        }
        // The last endpoint leaving: new calls fail fast from now on, before it goes.
        if self.live.is_empty() {
            self.empty.store(true, Ordering::Release);
        }
        self.sender.send(TonicChange::Remove(key)).await.is_ok()
    }
}
