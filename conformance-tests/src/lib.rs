//! The conformance suite: one set of behaviour cases that every registry backend must pass
//! against a real server.
//!
//! Cases are data ([`Case`]): a name, what they need ([`Needs`]: capabilities, control of a
//! server of their own, an owner process, a way to delete a registration behind the
//! backend's back, the server's own count of watches), and an async function over a
//! [`Ctx`]. A backend is a [`Target`]; the harness ([`run`]) runs every case against every
//! target as one trial named `{backend}::{case}`, each in a Tokio runtime of its own, and
//! reports a case the backend does not claim as *ignored*, never as passed. Adding a backend
//! is one line in the list of targets:
//!
//! ```text
//! Target::new("memory", |run| format!("memory://conformance-{run}")),
//! ```
//!
//! An unreachable server fails the case: nothing is skipped because a server was missing.
//! Out-of-tree backends can run [`cases()`] with a [`Target`] of their own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::{BoxFuture, LocalBoxFuture};
use registry::{Capabilities, Registry, ServiceInstance};

pub mod cases;
pub mod hooks;
mod hostile;
pub mod warnings;

pub use test_support::ServerControl;

/// How long a change may take to show in `get_service` or a watcher, on top of a backend's
/// [`Capabilities::expiry_slack`].
pub const PROPAGATION: Duration = Duration::from_secs(10);

/// Starts a server of one case's own and returns its control and the registry URL of the
/// case on it (given the run id, as [`Target::url`]).
pub type StartServer = fn(run: String) -> BoxFuture<'static, PrivateServer>;

/// Deletes the registration of an instance behind the backend's back, with the server's raw
/// client, given the case's registry URL.
pub type DeleteOutside =
    fn(url: String, instance: ServiceInstance) -> BoxFuture<'static, Result<(), String>>;

/// Reads the server's own counts of watches and requests (given the case's registry URL):
/// its metrics, four-letter words or open API.
pub type UpstreamCount = fn(url: String) -> BoxFuture<'static, Result<ServerCounts, String>>;

/// Writes foreign and corrupt values among the instances of a service with the server's raw
/// client, given the case's registry URL and the service (`remove` false), and returns how
/// many it wrote; with `remove` true, removes what it wrote.
pub type WriteForeign =
    fn(url: String, service: String, remove: bool) -> BoxFuture<'static, Result<usize, String>>;

/// What an [`UpstreamCount`] hook reads from a server.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerCounts {
    /// The watches (subscriptions, blocking queries) the server holds now: one upstream
    /// watch of one service adds one.
    pub watches: u64,
    /// The requests the server has received so far, where `watches` alone cannot tell one
    /// shared upstream from many: a server that keeps one watch per (path or service,
    /// connection) however often a connection asks (ZooKeeper, Nacos). `None` where each
    /// watch request counts (etcd's watchers, Consul's blocking queries).
    pub requests: Option<u64>,
}

/// A server of one case's own, started by a [`StartServer`] hook.
pub struct PrivateServer {
    /// Stops, starts, restarts, wipes, pauses and resumes the server.
    pub control: Box<dyn ServerControl>,
    /// The registry URL of the case on this server (without the short TTL, which
    /// [`Ctx::short_ttl_url`] adds).
    pub url: String,
}

/// The backend under test.
#[derive(Debug, Clone)]
pub struct Target {
    /// The backend's scheme, for messages and trial names.
    pub backend: &'static str,
    /// Builds the registry URL of one run from a run id unique to it (put the id in the
    /// namespace or store name, so runs never see each other).
    pub url: fn(run: &str) -> String,
    /// The short TTL the keep-alive, crash and fault cases register with.
    pub short_ttl: Duration,
    /// The URL query key that sets the TTL (`ttl` unless the backend names it otherwise;
    /// empty for a backend whose expiry is not set by the client, such as Nacos').
    pub ttl_param: &'static str,
    /// The owner helper binary (`registry-owner` of this crate), for the owner-process cases
    /// of backends whose registrations are visible across processes.
    pub owner_bin: Option<PathBuf>,
    /// Starts a server of a case's own, for the cases that break their server.
    pub server: Option<StartServer>,
    /// Deletes a registration behind the backend's back.
    pub delete_outside: Option<DeleteOutside>,
    /// Reads the server's count of upstream watches, on a server of a case's own.
    pub upstream_count: Option<UpstreamCount>,
    /// Writes foreign values under a service's prefix.
    pub write_foreign: Option<WriteForeign>,
}

impl Target {
    /// A target with a short TTL of 2 s, the `ttl` URL option, and no hooks.
    pub fn new(backend: &'static str, url: fn(run: &str) -> String) -> Self {
        Target {
            backend,
            url,
            short_ttl: Duration::from_secs(2),
            ttl_param: "ttl",
            owner_bin: None,
            server: None,
            delete_outside: None,
            upstream_count: None,
            write_foreign: None,
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

    /// Sets the hook that starts a server of a case's own.
    pub fn server(mut self, start: StartServer) -> Self {
        self.server = Some(start);
        self
    }

    /// Sets the hook that deletes a registration behind the backend's back.
    pub fn delete_outside(mut self, delete: DeleteOutside) -> Self {
        self.delete_outside = Some(delete);
        self
    }

    /// Sets the hook that writes foreign values under a service's prefix.
    pub fn write_foreign(mut self, write: WriteForeign) -> Self {
        self.write_foreign = Some(write);
        self
    }

    /// Sets the hook that reads the server's count of upstream watches (on a server of a
    /// case's own: also set [`Target::server`]).
    pub fn upstream_count(mut self, count: UpstreamCount) -> Self {
        self.upstream_count = Some(count);
        self
    }
}

/// What a case needs of a target; a target lacking any of it reports the case ignored.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// The capabilities the case relies on.
    pub caps: fn(&Capabilities) -> bool,
    /// A server of the case's own that it can stop, wipe, pause ([`Target::server`]).
    pub server_control: bool,
    /// An owner process whose registrations the case's own handles see: a cross-process
    /// backend and [`Target::owner_bin`].
    pub owner_process: bool,
    /// A way to delete a registration behind the backend's back ([`Target::delete_outside`]).
    pub delete_outside: bool,
    /// The server's own count of upstream watches ([`Target::upstream_count`]), on a server
    /// of the case's own (so that no other case's watches are counted).
    pub upstream_count: bool,
    /// A way to write foreign values under a service's prefix ([`Target::write_foreign`]).
    pub write_foreign: bool,
}

impl Needs {
    /// Needs the capabilities `caps` claims, and nothing else.
    pub const fn caps(caps: fn(&Capabilities) -> bool) -> Needs {
        Needs {
            caps,
            server_control: false,
            owner_process: false,
            delete_outside: false,
            upstream_count: false,
            write_foreign: false,
        }
    }

    /// Needs nothing: every backend runs it.
    pub const fn nothing() -> Needs {
        Needs::caps(|_| true)
    }

    /// Also needs a server of the case's own.
    pub const fn with_server_control(mut self) -> Needs {
        self.server_control = true;
        self
    }

    /// Also needs an owner process.
    pub const fn with_owner_process(mut self) -> Needs {
        self.owner_process = true;
        self
    }

    /// Also needs the delete-from-outside hook.
    pub const fn with_delete_outside(mut self) -> Needs {
        self.delete_outside = true;
        self
    }

    /// Also needs the server's count of upstream watches, on a server of the case's own.
    pub const fn with_upstream_count(mut self) -> Needs {
        self.upstream_count = true;
        self.server_control = true;
        self
    }

    /// Also needs the hook that writes foreign values.
    pub const fn with_write_foreign(mut self) -> Needs {
        self.write_foreign = true;
        self
    }

    /// Why `target`, with `caps`, does not claim a case with these needs; `None` when it
    /// does.
    pub fn unmet(&self, target: &Target, caps: &Capabilities) -> Option<&'static str> {
        if !(self.caps)(caps) {
            Some("capabilities")
        } else if self.server_control && target.server.is_none() {
            Some("server control")
        } else if self.owner_process && !(caps.cross_process && target.owner_bin.is_some()) {
            Some("owner process")
        } else if self.delete_outside && target.delete_outside.is_none() {
            Some("delete from outside")
        } else if self.upstream_count && target.upstream_count.is_none() {
            Some("upstream count")
        } else if self.write_foreign && target.write_foreign.is_none() {
            Some("write foreign values")
        } else {
            None
        }
    }
}

/// The async function of a case.
pub type CaseFn = fn(Arc<Ctx>) -> LocalBoxFuture<'static, ()>;

/// One case of the suite.
#[derive(Clone, Copy)]
pub struct Case {
    /// Its name, the second half of the trial name `{backend}::{case}`.
    pub name: &'static str,
    /// What it needs of a target.
    pub needs: Needs,
    /// What it does.
    pub run: CaseFn,
}

impl std::fmt::Debug for Case {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Case").field("name", &self.name).finish()
    }
}

pub use cases::cases;

/// One case's connection to the backend under test.
pub struct Ctx {
    /// The backend under test.
    pub target: Target,
    /// The id of this run, part of every URL and service name it uses.
    pub run: String,
    /// The registry under test, connected to [`Ctx::url`].
    pub registry: Arc<dyn Registry>,
    /// Its capabilities.
    pub caps: Capabilities,
    url: String,
    server: Option<tokio::sync::Mutex<Box<dyn ServerControl>>>,
    registered: Mutex<Vec<ServiceInstance>>,
    /// The port pair given to each (service, id), so that instances never share an address.
    ports: Mutex<HashMap<(String, String), u16>>,
}

impl Ctx {
    /// Connects to the target's shared server with a fresh run id. Panics (fails the case)
    /// when the registry cannot be reached: a missing server is a failure, never a skip.
    pub async fn new(target: Target) -> Ctx {
        let run = run_id();
        let url = (target.url)(&run);
        Self::connect_to(target, run, url, None).await
    }

    /// Starts a server of the case's own with the target's [`Target::server`] hook and
    /// connects to it.
    pub async fn with_private_server(target: Target) -> Ctx {
        let start = target.server.unwrap_or_else(|| {
            panic!(
                "the {} target has no server hook (Target::server)",
                target.backend
            )
        });
        let run = run_id();
        let server = start(run.clone()).await;
        Self::connect_to(target, run, server.url, Some(server.control)).await
    }

    async fn connect_to(
        target: Target,
        run: String,
        url: String,
        server: Option<Box<dyn ServerControl>>,
    ) -> Ctx {
        init_logging();
        let registry = connect(target.backend, &url).await;
        let caps = registry.capabilities();
        Ctx {
            target,
            run,
            registry,
            caps,
            url,
            server: server.map(tokio::sync::Mutex::new),
            registered: Mutex::default(),
            ports: Mutex::default(),
        }
    }

    /// The registry URL of this case (on the shared server or on the case's own).
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The URL of this case with the short TTL (the URL itself when the backend takes none).
    pub fn short_ttl_url(&self) -> String {
        let url = self.url();
        if self.target.ttl_param.is_empty() {
            return url;
        }
        let sep = if url.contains('?') { '&' } else { '?' };
        let ttl = self.target.short_ttl;
        format!("{url}{sep}{}={}ms", self.target.ttl_param, ttl.as_millis())
    }

    /// A new handle on this case's registry ([`Ctx::url`]): another connection, another
    /// owner.
    pub async fn connect(&self) -> Arc<dyn Registry> {
        connect(self.target.backend, &self.url).await
    }

    /// The URL of this case with `option` (`key=value`) added to its query.
    pub fn url_with(&self, option: &str) -> String {
        let url = self.url();
        let sep = if url.contains('?') { '&' } else { '?' };
        format!("{url}{sep}{option}")
    }

    /// The case's server's own counts of watches and requests
    /// ([`Target::upstream_count`]); fails the case when they cannot be read.
    pub async fn upstream_count(&self) -> ServerCounts {
        let count = self
            .target
            .upstream_count
            .expect("the case declares Needs::with_upstream_count");
        count(self.url()).await.unwrap_or_else(|e| {
            panic!("read the {} server's watch count: {e}", self.target.backend)
        })
    }

    /// Writes foreign values among the instances of `service` ([`Target::write_foreign`]);
    /// returns how many. Fails the case when they cannot be written.
    pub async fn write_foreign(&self, service: &str) -> usize {
        let write = self
            .target
            .write_foreign
            .expect("the case declares Needs::with_write_foreign");
        write(self.url(), service.to_owned(), false)
            .await
            .unwrap_or_else(|e| panic!("write foreign values under {service}: {e}"))
    }

    /// Removes what [`Ctx::write_foreign`] wrote (a failure is logged).
    pub async fn remove_foreign(&self, service: &str) {
        if let Some(write) = self.target.write_foreign {
            if let Err(e) = write(self.url(), service.to_owned(), true).await {
                tracing::debug!(%e, %service, "cleanup: removing foreign values failed");
            }
        }
    }

    /// A new handle with the short TTL ([`Ctx::short_ttl_url`]).
    pub async fn connect_short_ttl(&self) -> Arc<dyn Registry> {
        connect(self.target.backend, &self.short_ttl_url()).await
    }

    /// The case's own server. Panics when the case runs on the shared server (its [`Needs`]
    /// lack `server_control`).
    pub async fn server(&self) -> tokio::sync::MutexGuard<'_, Box<dyn ServerControl>> {
        self.server
            .as_ref()
            .expect("the case declares Needs::with_server_control")
            .lock()
            .await
    }

    /// Deletes the registration of `instance` behind the backend's back, with the server's
    /// raw client ([`Target::delete_outside`]).
    pub async fn delete_outside(&self, instance: &ServiceInstance) {
        let delete = self
            .target
            .delete_outside
            .expect("the case declares Needs::with_delete_outside");
        delete(self.url(), instance.clone())
            .await
            .unwrap_or_else(|e| {
                panic!("delete {}/{} from outside: {e}", instance.name, instance.id)
            });
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
        list_until(self.registry.as_ref(), service, within, what, check).await
    }

    /// Deregisters everything this case registered through [`Ctx::registry`] and closes it
    /// (errors are logged, not raised; instances other handles own are theirs to remove).
    pub async fn cleanup(&self) {
        let registered =
            std::mem::take(&mut *self.registered.lock().unwrap_or_else(|p| p.into_inner()));
        for instance in registered {
            if let Err(e) = self.registry.deregister(&instance).await {
                tracing::debug!(%e, id = %instance.id, "cleanup: deregister failed");
            }
        }
        if let Err(e) = self.registry.close().await {
            tracing::debug!(%e, "cleanup: close failed");
        }
    }
}

/// Connects to `url`, failing the case with a message that names the backend.
async fn connect(backend: &str, url: &str) -> Arc<dyn Registry> {
    registry::connect(url).await.unwrap_or_else(|e| {
        panic!(
            "cannot connect to the {backend} registry at {url}: {e} (is the server up? run scripts/backends up)"
        )
    })
}

/// Polls `registry.get_service(service)` until `check` holds, failing the case with `what`
/// when `within` passes first. Returns the list that satisfied it.
pub async fn list_until(
    registry: &dyn Registry,
    service: &str,
    within: Duration,
    what: &str,
    check: impl Fn(&[ServiceInstance]) -> bool,
) -> Vec<ServiceInstance> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let list = registry
            .get_service(service)
            .await
            .unwrap_or_else(|e| panic!("{what}: get_service {service}: {e}"));
        if check(&list) {
            return list;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("{what}: not seen within {within:?}; last list: {list:#?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs one case against `target`: connects (to a server of the case's own when the case
/// needs server control), runs it, cleans up whether it passed or not, then re-raises a
/// failure.
pub async fn run_case(target: Target, case: &Case) {
    use futures::FutureExt;
    let ctx = Arc::new(if case.needs.server_control {
        Ctx::with_private_server(target).await
    } else {
        Ctx::new(target).await
    });
    let outcome = std::panic::AssertUnwindSafe((case.run)(ctx.clone()))
        .catch_unwind()
        .await;
    ctx.cleanup().await;
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// The harness: runs every case of [`cases()`] against every target, one libtest-mimic
/// trial `{backend}::{case}` each, and exits with the outcome. Command-line arguments are
/// libtest's (a filter, `--exact`, `--skip`, `--ignored`, `--list`, `--test-threads`).
///
/// A target's capabilities are read once, from a connection to its shared server, before
/// the trials run; a case they (or the target's hooks) do not claim is reported ignored. A
/// target that cannot be reached fails every case it would have run.
///
/// `owner_bin` is the `registry-owner` helper, for targets that name none of their own
/// (`env!("CARGO_BIN_EXE_registry-owner")` in this crate's tests).
pub fn run(owner_bin: Option<&str>, targets: Vec<Target>) -> ! {
    let args = libtest_mimic::Arguments::from_args();
    let cases = cases();
    let mut trials = Vec::new();
    for mut target in targets {
        if target.owner_bin.is_none() {
            target.owner_bin = owner_bin.map(PathBuf::from);
        }
        let name = |case: &Case| format!("{}::{}", target.backend, case.name);
        // Read the capabilities only of targets with a trial to run.
        let wanted = !args.list
            && cases.iter().any(|case| {
                !args.is_filtered_out(&libtest_mimic::Trial::test(name(case), || Ok(())))
            });
        let caps = if wanted { Some(probe(&target)) } else { None };
        for case in &cases {
            let ignored = match &caps {
                Some(Ok(caps)) => case.needs.unmet(&target, caps).is_some(),
                _ => false,
            };
            let (target, case) = (target.clone(), *case);
            let probe_error = match &caps {
                Some(Err(e)) => Some(e.clone()),
                _ => None,
            };
            trials.push(
                libtest_mimic::Trial::test(name(&case), move || {
                    if let Some(e) = probe_error {
                        return Err(e.into());
                    }
                    run_trial(target, case)
                })
                .with_ignored_flag(ignored),
            );
        }
    }
    libtest_mimic::run(&args, trials).exit()
}

/// Runs one trial in a Tokio runtime of its own (2 workers).
fn run_trial(target: Target, case: Case) -> Result<(), libtest_mimic::Failed> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a Tokio runtime: {e}"))?;
    runtime.block_on(run_case(target, &case));
    // Background tasks of the case's handles end with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    Ok(())
}

/// The capabilities of `target`, read through a connection to its shared server.
fn probe(target: &Target) -> Result<Capabilities, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot build a Tokio runtime: {e}"))?;
    let url = (target.url)(&run_id());
    let caps = runtime.block_on(async {
        let registry = registry::connect(&url).await.map_err(|e| {
            format!(
                "cannot connect to the {} registry at {url}: {e} (is the server up? run scripts/backends up; \
                 is the backend's feature on? the suite needs every backend: `full`)",
                target.backend
            )
        })?;
        let caps = registry.capabilities();
        drop(registry);
        Ok(caps)
    });
    runtime.shutdown_timeout(Duration::from_secs(5));
    caps
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

/// Keeps every warning for [`warnings::mentioning`]; logs go to the output only when
/// `RUST_LOG` asks for them (the harness does not capture a passing trial's output).
fn init_logging() {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let output = std::env::var_os("RUST_LOG").map(|_| {
        tracing_subscriber::fmt::layer()
            .with_test_writer()
            .with_filter(tracing_subscriber::EnvFilter::from_default_env())
    });
    let _ = tracing_subscriber::registry()
        .with(warnings::Recorder.with_filter(tracing_subscriber::filter::LevelFilter::WARN))
        .with(output)
        .try_init();
}
