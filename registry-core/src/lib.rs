//! The core of the service registry toolkit: the instance model, the [`Registrar`],
//! [`Discovery`] and [`Registry`] traits, the [`Watcher`], errors, validation, capabilities,
//! and the in-memory backend ([`MemoryRegistry`], `memory://`).
//!
//! Backends (etcd, Consul, ZooKeeper, Nacos) live in crates of their own and implement
//! [`Registry`]; most programs use the `registry` facade crate, whose `connect(url)` picks a
//! backend from a URL.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> registry_core::Result<()> {
//! use std::sync::Arc;
//! use registry_core::{MemoryRegistry, Registry, ServiceInstance};
//!
//! let registry: Arc<dyn Registry> = Arc::new(MemoryRegistry::new());
//! let instance = ServiceInstance::builder("8fc08b88", "helloworld")
//!     .version("v1")
//!     .endpoint("http://127.0.0.1:8000")
//!     .endpoint("grpc://127.0.0.1:9000?isSecure=false")
//!     .build()?;
//!
//! let mut watcher = registry.watch("helloworld").await?;
//! assert!(watcher.next().await?.is_empty()); // the current list, empty for now
//!
//! registry.register(&instance).await?;
//! assert_eq!(watcher.next().await?, vec![instance.clone()]);
//! assert_eq!(registry.get_service("helloworld").await?[0].endpoint("grpc").unwrap().port(), 9000);
//!
//! registry.deregister(&instance).await?;
//! assert!(watcher.next().await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! Crates chosen: `async-trait` keeps the traits object safe (`Arc<dyn Registry>`) with async
//! methods; `tokio::sync::watch` is the snapshot channel behind every watcher (the newest list
//! wins, every watcher sees it); `url` parses endpoints and registry URLs; `humantime` reads
//! durations such as `10s` in URL options; `thiserror` derives the error enum; `rand` jitters
//! the [`Backoff`] of retry loops; `percent-encoding` decodes a user and password written
//! into a URL.

mod backoff;
mod capability;
mod checked;
pub mod config;
mod endpoint;
mod error;
mod instance;
pub mod memory;
mod options;
pub mod registration;
mod registry;
#[cfg(feature = "proptest")]
pub mod strategy;
pub mod telemetry;
pub mod untrusted;
pub mod validate;
pub mod watch;

pub use backoff::Backoff;
pub use capability::{Capabilities, MetadataLimits};
pub use checked::Checked;
pub use endpoint::Endpoint;
pub use error::{Error, Result, Source};
pub use instance::{ServiceInstance, ServiceInstanceBuilder};
pub use memory::MemoryRegistry;
pub use options::{redact, HostPort, RegistryUrl, UrlOptions};
pub use registration::{RegistrationState, RegistrationStatus};
pub use registry::{Discovery, Registrar, Registry};
pub use watch::{Instances, WatchConfig, WatchEvent, Watcher, Watches};

/// Re-exported so that backends and users name the same `Url` type.
pub use url::Url;

/// The examples of the README, compiled as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
