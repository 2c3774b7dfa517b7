//! Client-side discovery: from a registry and a `discovery:///name` target to the endpoints a
//! client calls, kept current by a watch.
//!
//! - [`Resolver`]: the instances of one service with an endpoint of one scheme (`grpc`,
//!   `http`), filtered (for example by version), following the registry's watch. It waits (a
//!   bounded time) for the first non-empty list, keeps the last known instances while the
//!   registry is unreachable (logging it), and fails fast with [`ClientError::NoInstances`]
//!   when the registry says there are none.
//! - [`HttpBalancer`]: picks an `http` endpoint per request, round-robin (weighted by the
//!   metadata `weight`) or power of two choices (fewest requests in flight); use the URL it
//!   gives with any HTTP client.
//! - [`Discover`]: the endpoints of one scheme as a stream of [`Change`]s (insert, remove),
//!   keyed by [`NodeKey`] (instance id and endpoint): a `tower::discover::Discover`, for any
//!   tower balancer; transport-neutral (see the README for a balancer over it).
//! - [`grpc_channel`]: a `tonic::transport::Channel` balanced over the `grpc` endpoints (tonic's
//!   `balance_channel`), fed by a [`Discover`] stream: a change inserts and removes endpoints
//!   without dropping calls in flight.
//!
//! ```no_run
//! # async fn run() -> Result<(), registry_client::ClientError> {
//! use std::sync::Arc;
//! use registry_client::{grpc_channel, HttpBalancer, Options, Strategy};
//! use registry_core::{Discovery, MemoryRegistry};
//!
//! let registry: Arc<dyn Discovery> = Arc::new(MemoryRegistry::new()); // or registry::connect(url)
//! let grpc = grpc_channel(registry.clone(), "discovery:///helloworld", Options::default()).await?;
//! let channel = grpc.channel(); // give it to a tonic client: GreeterClient::new(channel)
//! let http = HttpBalancer::new(registry, "discovery:///helloworld", Options::default(), Strategy::RoundRobin).await?;
//! let picked = http.pick()?; // per request
//! let url = picked.url().join("/helloworld/kratos");
//! # let _ = (channel, url); Ok(()) }
//! ```
//!
//! Built on tonic's balancing channel (tower's power-of-two-choices balancer over a dynamic
//! endpoint set) for gRPC; the HTTP picker is small and ours, so it works with any client.

/// The README's example, compiled.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

mod app;
mod balancer;
mod discover;
mod grpc;
mod resolver;

use std::time::Duration;

pub use app::{shutdown_signal, App};
pub use balancer::{HttpBalancer, Picked, Strategy};
pub use discover::{Change, Discover, NodeKey};
pub use grpc::{grpc_channel, BalancedChannel, FailFastChannel};
pub use resolver::{Node, Resolver, MAX_WEIGHT};

/// Errors of client-side discovery.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The target is not `discovery:///NAME`.
    #[error("invalid discovery target {target:?}: {reason}")]
    InvalidTarget {
        /// The target as given.
        target: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The registry lists no instance of the service with an endpoint of the scheme (after
    /// the filter).
    #[error("no {scheme} instance of {service} in the registry")]
    NoInstances {
        /// The service.
        service: String,
        /// The scheme asked for.
        scheme: String,
    },
    /// The watch behind a resolver ended; it delivers nothing more.
    #[error("the watch of {service} ended")]
    WatchEnded {
        /// The service.
        service: String,
    },
    /// The registry failed.
    #[error(transparent)]
    Registry(#[from] registry_core::Error),
}

impl ClientError {
    /// Whether retrying may succeed (instances may appear, the registry may come back).
    pub fn is_temporary(&self) -> bool {
        match self {
            ClientError::NoInstances { .. } => true,
            ClientError::Registry(e) => e.is_temporary(),
            _ => false,
        }
    }
}

/// Accepts the instances a client may call.
pub type Filter = std::sync::Arc<dyn Fn(&registry_core::ServiceInstance) -> bool + Send + Sync>;

/// How a resolver selects and waits.
#[derive(Clone)]
#[non_exhaustive]
pub struct Options {
    /// Only instances this accepts are used.
    pub filter: Option<Filter>,
    /// How long creating a resolver waits for a first non-empty list.
    pub first_list_timeout: Duration,
    /// TLS for `grpc` endpoints marked secure (`isSecure=true`) in a
    /// [`grpc_channel`]; without it they are skipped (with a warning).
    pub grpc_tls: Option<tonic::transport::ClientTlsConfig>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            filter: None,
            first_list_timeout: Duration::from_secs(10),
            grpc_tls: None,
        }
    }
}

impl std::fmt::Debug for Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("filter", &self.filter.as_ref().map(|_| "..."))
            .field("first_list_timeout", &self.first_list_timeout)
            .field("grpc_tls", &self.grpc_tls.is_some())
            .finish()
    }
}

impl Options {
    /// Uses only instances `filter` accepts.
    pub fn with_filter(
        mut self,
        filter: impl Fn(&registry_core::ServiceInstance) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.filter = Some(std::sync::Arc::new(filter));
        self
    }

    /// Balances `grpc` endpoints marked secure (`isSecure=true`) too, over TLS with this
    /// configuration (the CA to trust, a client identity, the name to expect); the server
    /// name checked is the endpoint's host unless the configuration sets one.
    pub fn with_grpc_tls(mut self, tls: tonic::transport::ClientTlsConfig) -> Self {
        self.grpc_tls = Some(tls);
        self
    }

    /// Uses only instances of this version.
    pub fn with_version(self, version: impl Into<String>) -> Self {
        let version = version.into();
        self.with_filter(move |i| i.version == version)
    }

    /// Sets how long creating a resolver waits for a first non-empty list.
    pub fn with_first_list_timeout(mut self, timeout: Duration) -> Self {
        self.first_list_timeout = timeout;
        self
    }
}

/// The service name of a `discovery:///NAME` target (an authority, as in
/// `discovery://default/NAME`, is accepted and ignored, as kratos does).
pub fn parse_target(target: &str) -> Result<String, ClientError> {
    let bad = |reason: &str| ClientError::InvalidTarget {
        target: target.to_owned(),
        reason: reason.to_owned(),
    };
    let rest = target
        .strip_prefix("discovery://")
        .ok_or_else(|| bad("expected discovery:///NAME"))?;
    let name = rest.split_once('/').map_or("", |(_, name)| name);
    registry_core::validate::validate_name(name).map_err(|e| bad(&e.to_string()))?;
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        assert_eq!(
            parse_target("discovery:///helloworld").unwrap(),
            "helloworld"
        );
        assert_eq!(
            parse_target("discovery://default/helloworld").unwrap(),
            "helloworld"
        );
        for bad in [
            "helloworld",
            "discovery://helloworld",
            "discovery:///",
            "discovery:///a/b",
            "http:///x",
        ] {
            assert!(
                matches!(parse_target(bad), Err(ClientError::InvalidTarget { .. })),
                "{bad}"
            );
        }
    }
}
