//! The conformance suite: one set of behaviour cases that every registry backend must pass
//! against a real server.
//!
//! The cases are plain public async functions in [`cases`], each taking a [`Ctx`]: a
//! connection to the backend under test with a namespace and service names of its own, so
//! runs never collide, and a cleanup that runs even when a case fails. A backend is added to
//! the suite with one line:
//!
//! ```text
//! conformance_tests::conformance_suite!(
//!     memory,
//!     Target::new("memory", |run| format!("memory://conformance-{run}"))
//! );
//! ```
//!
//! which expands to one `#[tokio::test]` per case. An unreachable server fails the case; a
//! case the backend's [`registry::Capabilities`] do not claim passes trivially only where the
//! capability is off, never because a server was missing.
//!
//! Out-of-tree backends can call [`cases`] themselves with a [`Target`] of their own.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::{Capabilities, Registry, ServiceInstance};

pub mod cases;

/// How long a change may take to show in `get_service` or a watcher, on top of a backend's
/// [`Capabilities::expiry_slack`].
pub const PROPAGATION: Duration = Duration::from_secs(10);

/// The backend under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend's scheme, for messages.
    pub backend: &'static str,
    /// Builds the registry URL of one run from a run id unique to it (put the id in the
    /// namespace or store name, so runs never see each other).
    pub url: fn(run: &str) -> String,
    /// The short TTL the keep-alive and crash cases register with.
    pub short_ttl: Duration,
    /// The URL query key that sets the TTL (`ttl` unless the backend names it otherwise;
    /// empty for a backend whose expiry is not set by the client, such as Nacos').
    pub ttl_param: &'static str,
    /// The owner helper binary (`registry-owner` of this crate), for the crash case of
    /// backends whose registrations are visible across processes.
    pub owner_bin: Option<PathBuf>,
}

impl Target {
    /// A target with a short TTL of 2 s and the `ttl` URL option.
    pub fn new(backend: &'static str, url: fn(run: &str) -> String) -> Self {
        Target {
            backend,
            url,
            short_ttl: Duration::from_secs(2),
            ttl_param: "ttl",
            owner_bin: None,
        }
    }

    /// Sets the short TTL.
    pub fn short_ttl(mut self, ttl: Duration) -> Self {
        self.short_ttl = ttl;
        self
    }

    /// Sets the URL query key that sets the TTL.
    pub fn ttl_param(mut self, key: &'static str) -> Self {
        self.ttl_param = key;
        self
    }

    /// Sets the owner helper binary.
    pub fn owner_bin(mut self, path: impl Into<PathBuf>) -> Self {
        self.owner_bin = Some(path.into());
        self
    }
}

/// One case's connection to the backend under test.
pub struct Ctx {
    /// The backend under test.
    pub target: Target,
    /// The id of this run, part of every URL and service name it uses.
    pub run: String,
    /// The registry under test.
    pub registry: Arc<dyn Registry>,
    /// Its capabilities.
    pub caps: Capabilities,
    registered: Mutex<Vec<ServiceInstance>>,
    /// The port pair given to each (service, id), so that instances never share an address.
    ports: Mutex<std::collections::HashMap<(String, String), u16>>,
}

impl Ctx {
    /// Connects to the target with a fresh run id. Panics (fails the case) when the registry
    /// cannot be reached: a missing server is a failure, never a skip.
    pub async fn new(target: Target) -> Ctx {
        init_logging();
        let run = run_id();
        let url = (target.url)(&run);
        let registry = registry::connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "cannot connect to the {} registry at {url}: {e} (is the server up? run scripts/backends up)",
                target.backend
            )
        });
        let caps = registry.capabilities();
        Ctx {
            target,
            run,
            registry,
            caps,
            registered: Mutex::default(),
            ports: Mutex::default(),
        }
    }

    /// The URL of this run.
    pub fn url(&self) -> String {
        (self.target.url)(&self.run)
    }

    /// The URL of this run with the short TTL (the URL itself when the backend takes none).
    pub fn short_ttl_url(&self) -> String {
        let url = self.url();
        if self.target.ttl_param.is_empty() {
            return url;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        let ttl = self.target.short_ttl;
        format!("{url}{sep}{}={}ms", self.target.ttl_param, ttl.as_millis())
    }

    /// A service name unique to this run that starts like `base` does after the run prefix:
    /// `c{run}-{base}`, so `service("hello")` is a prefix of `service("helloworld")`.
    pub fn service(&self, base: &str) -> String {
        format!("c{}-{base}", self.run)
    }

    /// A valid instance of `service` with an HTTP and a gRPC endpoint, whose id is `id`
    /// followed by the service name: instance ids are unique across services, as in kratos
    /// (UUIDs) and as Consul requires (its agent keys services by id alone).
    ///
    /// Each (service, id) gets ports of its own, the same on every call: distinct instances
    /// never share an address, as registries that key instances by address (Nacos) require.
    pub fn instance(&self, service: &str, id: &str) -> ServiceInstance {
        let port = {
            let mut ports = self.ports.lock().unwrap_or_else(|p| p.into_inner());
            let next = 20000 + 2 * ports.len() as u16;
            *ports
                .entry((service.to_owned(), id.to_owned()))
                .or_insert(next)
        };
        ServiceInstance {
            id: format!("{id}.{service}"),
            name: service.to_owned(),
            version: "v1.0.0".to_owned(),
            metadata: [("case".to_owned(), "conformance".to_owned())].into(),
            endpoints: vec![
                format!("http://127.0.0.1:{port}"),
                format!("grpc://127.0.0.1:{}?isSecure=false", port + 1),
            ],
        }
    }

    /// Registers through the registry under test, and remembers the instance for cleanup.
    pub async fn register(&self, instance: &ServiceInstance) {
        self.remember(instance);
        self.registry
            .register(instance)
            .await
            .unwrap_or_else(|e| panic!("register {}/{}: {e}", instance.name, instance.id));
    }

    /// Deregisters through the registry under test.
    pub async fn deregister(&self, instance: &ServiceInstance) {
        self.registry
            .deregister(instance)
            .await
            .unwrap_or_else(|e| panic!("deregister {}/{}: {e}", instance.name, instance.id));
    }

    /// Remembers an instance registered by other means, for cleanup.
    pub fn remember(&self, instance: &ServiceInstance) {
        self.registered
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(instance.clone());
    }

    /// `get_service`, failing the case on error.
    pub async fn list(&self, service: &str) -> Vec<ServiceInstance> {
        self.registry
            .get_service(service)
            .await
            .unwrap_or_else(|e| panic!("get_service {service}: {e}"))
    }

    /// The deadline for a change to show: [`PROPAGATION`] plus the backend's slack.
    pub fn deadline(&self) -> Duration {
        PROPAGATION + self.caps.expiry_slack
    }

    /// Polls `get_service(service)` until `check` holds, failing the case with `what` when
    /// `within` passes first. Returns the list that satisfied it.
    pub async fn list_until(
        &self,
        service: &str,
        within: Duration,
        what: &str,
        check: impl Fn(&[ServiceInstance]) -> bool,
    ) -> Vec<ServiceInstance> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let list = self.list(service).await;
            if check(&list) {
                return list;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!("{what}: not seen within {within:?}; last list: {list:#?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Deregisters everything this case registered (errors are logged, not raised).
    pub async fn cleanup(&self) {
        let registered =
            std::mem::take(&mut *self.registered.lock().unwrap_or_else(|p| p.into_inner()));
        for instance in registered {
            if let Err(e) = self.registry.deregister(&instance).await {
                tracing::warn!(%e, id = %instance.id, "cleanup: deregister failed");
            }
        }
    }
}

/// Runs one case: connects, runs it, cleans up whether it passed or not, then re-raises a
/// failure. The [`conformance_suite!`] macro calls this.
pub async fn run_case<F, Fut>(target: Target, case: F)
where
    F: FnOnce(Arc<Ctx>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let ctx = Arc::new(Ctx::new(target).await);
    let outcome = std::panic::AssertUnwindSafe(case(ctx.clone()))
        .catch_unwind()
        .await;
    ctx.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

fn run_id() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    let mixed = nanos
        ^ std::process::id().rotate_left(16)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9);
    format!("{mixed:08x}")
}

fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .try_init();
}

/// Expands to a module `$name` with one `#[tokio::test]` per case of [`cases`], run against
/// `$target` (a [`Target`] expression).
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $target:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            $crate::__conformance_cases!(
                $target;
                register_round_trip,
                services_stay_apart,
                deregister_removes,
                reregister_replaces,
                unknown_service_is_empty,
                watch_starts_with_current_list,
                watch_sees_every_change,
                two_watchers_see_every_change,
                watcher_of_other_service_sees_nothing,
                watch_stop,
                keep_alive,
                crash_expiry,
                paused_owner_leaves_and_returns,
                graceful_deregister_is_prompt,
                concurrent_fifty,
                bad_input_is_refused
            );
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_cases {
    ($target:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let mut target: $crate::Target = $target;
                if target.owner_bin.is_none() {
                    target.owner_bin = option_env!("CARGO_BIN_EXE_registry-owner").map(Into::into);
                }
                $crate::run_case(target, $crate::cases::$case).await;
            }
        )*
    };
}
