//! Service registration and discovery with one API over etcd, Consul, ZooKeeper, Nacos or an
//! in-memory registry, chosen at run time by URL: moving to another registry is a URL change.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> registry::Result<()> {
//! use registry::ServiceInstance;
//!
//! let registry = registry::connect("memory://").await?; // or etcd://127.0.0.1:2379, ...
//! let me = ServiceInstance::builder("instance-1", "helloworld")
//!     .version("v1")
//!     .endpoint("grpc://127.0.0.1:9000")
//!     .build()?;
//! registry.register(&me).await?;
//!
//! let mut watcher = registry.watch("helloworld").await?;
//! let instances = watcher.next().await?; // the current list; then one list per change
//! assert_eq!(instances, vec![me.clone()]);
//!
//! registry.deregister(&me).await?;
//! assert!(watcher.next().await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! # Backends and features
//!
//! | scheme | cargo feature | example URL |
//! |---|---|---|
//! | `memory` | always on | `memory://` (process-wide store), `memory://NAME?ttl=15s` |
//! | `etcd` | `etcd` | `etcd://127.0.0.1:2379/microservices?ttl=15s` |
//! | `consul` | `consul` | `consul://127.0.0.1:8500?ttl=10s` |
//! | `zk` | `zookeeper` | `zk://127.0.0.1:2181/microservices?session_timeout=10s` |
//! | `nacos` | `nacos` | `nacos://127.0.0.1:8848?namespace=public` |
//! | `multi` | always on | `multi:etcd://127.0.0.1:2379/microservices\|consul://127.0.0.1:8500`: several registries as one ([`multi`]) |
//!
//! `full` enables every backend. [`connect`] answers a scheme whose feature is off with
//! [`Error::FeatureDisabled`], naming the feature, and an unknown scheme with
//! [`Error::UnknownScheme`], listing the schemes compiled in.

use std::sync::Arc;

use futures::future::BoxFuture;

pub use registry_core::*;

pub mod multi;

/// The environment variable [`connect_from_env`] reads.
pub const REGISTRY_URL_ENV: &str = "REGISTRY_URL";

/// The URL [`connect_from_env`] uses when [`REGISTRY_URL_ENV`] is not set.
pub const DEFAULT_URL: &str = "memory://";

type ConnectFn = for<'a> fn(&'a str) -> BoxFuture<'a, Result<Arc<dyn Registry>>>;

struct Backend {
    scheme: &'static str,
    feature: &'static str,
    /// `None` when the backend's feature is off in this build.
    connect: Option<ConnectFn>,
    /// What every handle of the backend offers, known without connecting (the backend
    /// crate's `capabilities()`); `None` when its feature is off.
    capabilities: Option<fn() -> Capabilities>,
}

/// A backend crate's entry, with its `connect` when its feature is on.
macro_rules! backend {
    ($scheme:literal, $feature:literal, $krate:ident) => {{
        #[cfg(feature = $feature)]
        let (connect, capabilities): (Option<ConnectFn>, Option<fn() -> Capabilities>) = (
            Some(|url| Box::pin($krate::connect(url))),
            Some($krate::capabilities),
        );
        #[cfg(not(feature = $feature))]
        let (connect, capabilities): (Option<ConnectFn>, Option<fn() -> Capabilities>) =
            (None, None);
        Backend {
            scheme: $scheme,
            feature: $feature,
            connect,
            capabilities,
        }
    }};
}

/// Every scheme the toolkit knows, one line each.
fn backends() -> [Backend; 5] {
    [
        Backend {
            scheme: memory::SCHEME,
            feature: "(always on)",
            connect: Some(|url| {
                Box::pin(async move {
                    let registry = MemoryRegistry::from_url(RegistryUrl::parse(url)?.single()?)?;
                    Ok(Arc::new(Checked::new(registry)) as Arc<dyn Registry>)
                })
            }),
            capabilities: Some(memory::capabilities),
        },
        backend!("etcd", "etcd", registry_etcd),
        backend!("consul", "consul", registry_consul),
        backend!("zk", "zookeeper", registry_zookeeper),
        backend!("nacos", "nacos", registry_nacos),
    ]
}

/// The schemes this build can connect to (`multi`, the composite, included).
pub fn schemes() -> Vec<&'static str> {
    backends()
        .into_iter()
        .filter(|b| b.connect.is_some())
        .map(|b| b.scheme)
        .chain([multi::SCHEME])
        .collect()
}

/// Connects to the registry a URL names, such as `memory://` or
/// `etcd://127.0.0.1:2379/microservices?ttl=10s`. Backends with clusters take several
/// servers in the authority: `etcd://10.0.0.1:2379,10.0.0.2:2379/microservices`.
///
/// The registry returned refuses calls its backend does not support with
/// [`Error::Unsupported`] (see [`Registry::capabilities`]): every backend's `connect` wraps
/// it in [`Checked`].
///
/// A `multi:` URL names several registries as one, its members' URLs written as they are,
/// separated by `|`: `multi:etcd://127.0.0.1:2379/microservices|consul://127.0.0.1:8500`
/// (see [`multi`]).
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    if multi::is_multi(url) {
        return multi::connect(url).await;
    }
    connect_backend(url).await
}

/// [`connect`] for one backend (not a composite).
pub(crate) async fn connect_backend(url: &str) -> Result<Arc<dyn Registry>> {
    let backend = backend_of(url)?;
    match backend.connect {
        Some(connect) => connect(url).await,
        None => Err(backend.disabled()),
    }
}

/// The scheme of one backend's URL, and what every handle of that backend offers, known
/// without connecting: the errors of [`connect`] for a URL that does not parse, an unknown
/// scheme or a feature that is off.
pub(crate) fn scheme_of(url: &str) -> Result<(&'static str, Capabilities)> {
    let backend = backend_of(url)?;
    match backend.capabilities {
        Some(capabilities) => Ok((backend.scheme, capabilities())),
        None => Err(backend.disabled()),
    }
}

/// The backend of `url`'s scheme.
fn backend_of(url: &str) -> Result<Backend> {
    let parsed = RegistryUrl::parse(url)?;
    let scheme = parsed.scheme();
    backends()
        .into_iter()
        .find(|b| b.scheme == scheme)
        .ok_or_else(|| Error::UnknownScheme {
            scheme: scheme.to_owned(),
            available: schemes(),
        })
}

impl Backend {
    /// The error for a backend whose feature is off.
    fn disabled(&self) -> Error {
        Error::FeatureDisabled {
            scheme: self.scheme.to_owned(),
            feature: self.feature,
        }
    }
}

/// Connects to the registry named by the `REGISTRY_URL` environment variable, or to
/// [`DEFAULT_URL`] (`memory://`) when it is not set.
pub async fn connect_from_env() -> Result<Arc<dyn Registry>> {
    match std::env::var(REGISTRY_URL_ENV) {
        Ok(url) if !url.is_empty() => connect(&url).await,
        _ => connect(DEFAULT_URL).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_is_always_compiled_in() {
        assert!(schemes().contains(&"memory"));
        let registry = connect("memory://facade-test?ttl=5s").await.unwrap();
        assert_eq!(registry.scheme(), "memory");
    }

    #[tokio::test]
    async fn the_registry_splits_into_registrar_and_discovery_and_watches_as_a_stream() {
        use futures::StreamExt;
        let registry = connect("memory://facade-split").await.unwrap();
        let registrar: Arc<dyn Registrar> = registry.clone();
        let discovery: Arc<dyn Discovery> = registry;
        let mut stream = discovery.watch("split").await.unwrap();
        let changed = |event: Option<WatchEvent>| match event {
            Some(WatchEvent::Changed(list)) => list,
            other => panic!("expected a list, got {other:?}"),
        };
        assert!(changed(StreamExt::next(&mut stream).await).is_empty());
        let me = ServiceInstance::builder("1", "split")
            .endpoint("http://127.0.0.1:1")
            .build()
            .unwrap();
        registrar.register(&me).await.unwrap();
        assert_eq!(changed(StreamExt::next(&mut stream).await), vec![me]);
        stream.stop();
        assert!(
            StreamExt::next(&mut stream).await.is_none(),
            "a stopped watcher's stream ends"
        );
    }

    #[tokio::test]
    async fn unknown_scheme_lists_what_is_compiled_in() {
        let err = connect("redis://127.0.0.1:6379").await.unwrap_err();
        assert!(matches!(err, Error::UnknownScheme { .. }), "{err}");
        assert!(err.to_string().contains("memory"), "{err}");
    }

    #[cfg(not(feature = "etcd"))]
    #[tokio::test]
    async fn a_known_scheme_without_its_feature_names_the_feature() {
        let err = connect("etcd://127.0.0.1:2379").await.unwrap_err();
        assert!(
            matches!(
                err,
                Error::FeatureDisabled {
                    feature: "etcd",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("`etcd` feature"), "{err}");
    }

    #[tokio::test]
    async fn bad_urls_are_typed_errors_without_secrets() {
        let err = connect("memory://x?ttl=soon").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
        let err = connect("memory://x?bogus=1").await.unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
        let err = connect("not a url, password hunter2").await.unwrap_err();
        assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

/// The examples of this crate's README and of the project README, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
#[doc = include_str!("../../README.md")]
struct ReadmeDoctests;
