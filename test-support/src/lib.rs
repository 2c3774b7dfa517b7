//! Helpers for the backends' own tests (fault, interop and option tests), which need a
//! registry server of their own rather than the shared one the conformance suite uses:
//!
//! - [`ServerProcess`]: one server process on free ports with its own data directory, that a
//!   test can kill, restart, wipe, freeze (SIGSTOP) and thaw;
//! - [`server_program`]: where `scripts/backends bin SERVER` installed a server's program;
//! - [`eventually`], [`watcher_reaches`], [`lists`]: waiting on a condition with a deadline,
//!   never sleeping and hoping;
//! - [`pki`]: a CA with server and client certificates (rcgen), for TLS tests;
//! - [`ServerControl`]: what a fault test does to a server (stop, start, restart, wipe, pause,
//!   resume), implemented by every server below;
//! - [`EtcdServer`], [`ConsulAgent`], [`ZkServer`], [`NacosServer`]: a server of a test's own
//!   for each backend, used by the backends' own tests and by the conformance suite's fault
//!   cases alike;
//! - [`EtcdCluster`], [`ZkEnsemble`]: clusters of a test's own (3 members on loopback), each
//!   a [`Cluster`] (kill a member, start it again, restart it, find the leader), and
//!   [`FaultCase`]: the registrations and the watcher a cluster fault case checks after the
//!   fault, printing the time to converge.
//!
//! A missing server program fails the test: nothing is skipped.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::future::Future;
use std::net::TcpListener;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use registry_core::{Discovery, ServiceInstance, Watcher};
use tokio::time::{sleep, timeout, Instant};

mod cluster;
mod consul;
pub mod consul_cluster;
mod etcd_cluster;
mod nacos;
pub mod nacos_cluster;
pub mod netns;
mod zookeeper;

pub use cluster::{
    describe, describe_from, one_cluster_at_a_time, Cluster, FaultCase, Seen, WatchLog, CHANGES,
    CLUSTER_SLACK, INSTANCES, QUORUM_DEADLINE, SERVICE,
};
pub use consul::ConsulAgent;
pub use etcd_cluster::{etcd_status, etcd_status_at, EtcdCluster, EtcdStatus};
pub use nacos::NacosServer;
pub use zookeeper::{
    four_letter_word, four_letter_word_at, zk_mode, zk_mode_at, ZkEnsemble, ZkServer,
};

/// How long a server gets to start answering.
pub const START_DEADLINE: Duration = Duration::from_secs(60);

/// The program of `server` (`etcd`, `consul`, ...): from the environment variable `env` (set by
/// `scripts/test` from `scripts/backends bin SERVER`), else from the script's cache at
/// `relative` under `servers/`. Panics, failing the test, when it is not there.
pub fn server_program(server: &str, env: &str, relative: &str) -> PathBuf {
    let path = match std::env::var_os(env) {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("REGISTRY_RS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/registry-rs")
                });
            cache.join("servers").join(relative)
        }
    };
    assert!(
        path.is_file(),
        "no {server} program at {} (run `scripts/backends bin {server}`, or set {env})",
        path.display()
    );
    path
}

/// A port nobody listens on right now, and not handed out before by this process (so that
/// two servers of one test binary never get the same one).
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    loop {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        let port = listener.local_addr().expect("local address").port();
        if GIVEN.lock().unwrap_or_else(|p| p.into_inner()).insert(port) {
            return port;
        }
    }
}

/// Builds a server's arguments from its data directory.
pub type ArgsFn = Box<dyn Fn(&Path) -> Vec<OsString> + Send + Sync>;

/// How to tell that a server serves clients.
pub enum Ready {
    /// It logs this text (stdout or stderr) once ready.
    LogLine(&'static str),
    /// This probe answers true.
    Probe(Box<dyn Fn() -> bool + Send + Sync>),
}

/// How to run one server: its program, its arguments (given the data directory), and how to
/// tell that it is ready.
pub struct ServerSpec {
    /// The program.
    pub program: PathBuf,
    /// Its arguments, given its data directory.
    pub args: ArgsFn,
    /// When it is ready.
    pub ready: Ready,
}

/// One server process of a test's own. Dropping it kills the process and deletes its files.
pub struct ServerProcess {
    spec: ServerSpec,
    dir: tempfile::TempDir,
    child: Option<Child>,
    launches: usize,
}

impl ServerProcess {
    /// Starts the server and waits until it logs its ready line.
    pub async fn start(spec: ServerSpec) -> ServerProcess {
        let mut server = ServerProcess {
            spec,
            dir: tempfile::Builder::new()
                .prefix("registry-test-server-")
                .tempdir()
                .expect("temporary directory"),
            child: None,
            launches: 0,
        };
        server.launch().await;
        server
    }

    /// Starts every spec at once and waits until all are ready: the members of a cluster,
    /// each of which waits for a quorum before it is ready.
    pub async fn start_together(specs: Vec<ServerSpec>) -> Vec<ServerProcess> {
        let starting: Vec<_> = specs
            .into_iter()
            .map(|spec| tokio::spawn(ServerProcess::start(spec)))
            .collect();
        let mut members = Vec::with_capacity(starting.len());
        for started in starting {
            match started.await {
                Ok(member) => members.push(member),
                Err(e) => std::panic::resume_unwind(e.into_panic()),
            }
        }
        members
    }

    /// A directory for the test's own files, deleted with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The server's data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    async fn launch(&mut self) {
        assert!(self.child.is_none(), "the server already runs");
        std::fs::create_dir_all(self.data_dir()).expect("data directory");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("log file");
        let child = Command::new(&self.spec.program)
            .args((self.spec.args)(&self.data_dir()))
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.spec.program.display()));
        self.child = Some(child);
        self.launches += 1;
        self.wait_ready().await;
    }

    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the server exited with {status}; log:\n{}", self.log_tail());
            }
            let ready = match &self.spec.ready {
                // The log is appended to across launches: count the ready lines.
                Ready::LogLine(line) => {
                    let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
                    log.matches(line).count() >= self.launches
                }
                Ready::Probe(probe) => probe(),
            };
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the server did not start within {START_DEADLINE:?}; log:\n{}",
                self.log_tail()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines of the server's log.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    /// Kills the process (SIGKILL) and waits for it to be gone; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the killed process again with the data it has (nothing when it runs).
    pub async fn start_again(&mut self) {
        if self.child.is_none() {
            self.launch().await;
        }
    }

    /// Kills the process and starts it again with the data it has.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Kills the process, deletes its data directory and starts it again empty.
    pub async fn wipe_and_restart(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("delete the server's data");
        self.launch().await;
    }

    /// Freezes the process (SIGSTOP): it keeps its sockets but answers nothing.
    pub fn pause(&self) {
        self.signal("STOP");
    }

    /// Thaws a paused process (SIGCONT).
    pub fn resume(&self) {
        self.signal("CONT");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.as_ref().expect("the server runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

/// What a fault test does to a server of its own. Every method returns once the server is in
/// the new state: started means answering clients.
#[async_trait]
pub trait ServerControl: Send + Sync {
    /// Kills the server (SIGKILL); its data stays.
    async fn stop(&mut self);
    /// Starts a stopped server again with the data it has.
    async fn start(&mut self);
    /// Kills the server and starts it again with the data it has.
    async fn restart(&mut self);
    /// Kills the server, deletes its data and starts it again empty.
    async fn wipe(&mut self);
    /// Freezes the server (SIGSTOP): it keeps its sockets but answers nothing.
    async fn pause(&mut self);
    /// Thaws a paused server (SIGCONT).
    async fn resume(&mut self);
}

#[async_trait]
impl ServerControl for ServerProcess {
    async fn stop(&mut self) {
        self.kill();
    }
    async fn start(&mut self) {
        self.start_again().await;
    }
    async fn restart(&mut self) {
        ServerProcess::restart(self).await;
    }
    async fn wipe(&mut self) {
        self.wipe_and_restart().await;
    }
    async fn pause(&mut self) {
        ServerProcess::pause(self);
    }
    async fn resume(&mut self) {
        ServerProcess::resume(self);
    }
}

/// Implements [`ServerControl`] for a server type that derefs to its [`ServerProcess`].
macro_rules! server_control_through_deref {
    ($server:ty) => {
        #[async_trait::async_trait]
        impl $crate::ServerControl for $server {
            async fn stop(&mut self) {
                $crate::ServerControl::stop(&mut **self).await;
            }
            async fn start(&mut self) {
                $crate::ServerControl::start(&mut **self).await;
            }
            async fn restart(&mut self) {
                $crate::ServerControl::restart(&mut **self).await;
            }
            async fn wipe(&mut self) {
                $crate::ServerControl::wipe(&mut **self).await;
            }
            async fn pause(&mut self) {
                $crate::ServerControl::pause(&mut **self).await;
            }
            async fn resume(&mut self) {
                $crate::ServerControl::resume(&mut **self).await;
            }
        }
    };
}
pub(crate) use server_control_through_deref;

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // Thaw a paused process so that it dies of SIGKILL at once.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, written as PEM files.
pub struct Pki {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The server certificate (for 127.0.0.1 and localhost).
    pub server_cert: PathBuf,
    /// The server's key.
    pub server_key: PathBuf,
    /// A client certificate signed by the CA.
    pub client_cert: PathBuf,
    /// The client's key.
    pub client_key: PathBuf,
}

/// Writes into `dir` a fresh CA, a server certificate for `127.0.0.1`/`localhost` and a
/// client certificate, all signed by it (PEM files).
pub fn pki(dir: &Path) -> Pki {
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).expect("write PEM");
        path
    };
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");

    let server_key = KeyPair::generate().expect("key");
    let mut server = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
        .expect("params");
    server.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let server = server
        .signed_by(&server_key, &ca, &ca_key)
        .expect("server cert");

    let client_key = KeyPair::generate().expect("key");
    let mut client =
        CertificateParams::new(vec!["registry-test-client".to_owned()]).expect("params");
    client.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client
        .signed_by(&client_key, &ca, &ca_key)
        .expect("client cert");

    Pki {
        ca: write("ca.pem", ca.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server-key.pem", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client-key.pem", client_key.serialize_pem()),
    }
}

// ---------------------------------------------------------------- programs under test

/// An id unique to this test run, for service names and namespaces.
pub fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}{nanos:x}", std::process::id())
}

/// The lines a program prints on stdout.
pub type OutputLines = tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>;

/// Starts `program` with `args` (no `REGISTRY_URL` from the environment, logs at `warn`), its
/// stdout readable line by line; it is killed when the child is dropped.
pub fn spawn_program(program: &str, args: &[&str]) -> (tokio::process::Child, OutputLines) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env_remove("REGISTRY_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    (child, tokio::io::BufReader::new(stdout).lines())
}

/// Reads lines until each of `wanted` has matched one, failing with `what` (and the last
/// lines read) after `within`.
pub async fn lines_match_all(
    lines: &mut OutputLines,
    within: Duration,
    what: &str,
    wanted: &[&dyn Fn(&str) -> bool],
) {
    let deadline = Instant::now() + within;
    let mut seen = vec![false; wanted.len()];
    let mut last = Vec::new();
    while seen.iter().any(|s| !s) {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            lines.next_line(),
        )
        .await
        {
            Ok(Ok(Some(line))) => {
                for (i, want) in wanted.iter().enumerate() {
                    seen[i] |= want(&line);
                }
                last.push(line);
                if last.len() > 6 {
                    last.remove(0);
                }
            }
            other => panic!("{what}: {other:?}; last lines: {last:?}"),
        }
    }
}

/// Waits up to `within` for `child` to exit, and asserts that it exited successfully.
pub async fn exits_successfully(child: &mut tokio::process::Child, within: Duration) {
    let exit = timeout(within, child.wait())
        .await
        .expect("it exits after the signal")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
}

/// Sends SIGTERM to `child`.
pub fn terminate(child: &tokio::process::Child) {
    send_signal(child, "TERM");
}

/// Sends SIGINT (what Ctrl-C sends) to a running child.
pub fn interrupt(child: &tokio::process::Child) {
    send_signal(child, "INT");
}

fn send_signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the process runs").to_string();
    let status = Command::new("kill")
        .args([format!("-{signal}").as_str(), &pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid} failed");
}

// ---------------------------------------------------------------- etcd

/// TLS files for a server started with [`EtcdServer::start_tls`].
pub struct ServerTls {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server's certificate.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// Whether clients must present a certificate signed by `ca`.
    pub client_cert_auth: bool,
}

/// One etcd process of a test's own (kill, restart, wipe, pause through `Deref`).
pub struct EtcdServer {
    process: ServerProcess,
    client_port: u16,
}

impl EtcdServer {
    /// Starts a plain etcd and waits until it serves clients.
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Starts an etcd serving TLS.
    pub async fn start_tls(tls: ServerTls) -> EtcdServer {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ServerTls>) -> EtcdServer {
        let client_port = free_port();
        let peer_port = free_port();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let spec = ServerSpec {
            program: server_program("etcd", "REGISTRY_RS_ETCD_BIN", "etcd/usr/bin/etcd"),
            args: Box::new(move |data| {
                let mut args: Vec<OsString> = vec!["--name".into(), "test".into()];
                args.extend(["--data-dir".into(), data.as_os_str().to_owned()]);
                for (flag, value) in [
                    ("--listen-client-urls", &client_url),
                    ("--advertise-client-urls", &client_url),
                    ("--listen-peer-urls", &peer_url),
                    ("--initial-advertise-peer-urls", &peer_url),
                    ("--initial-cluster", &format!("test={peer_url}")),
                    ("--log-level", &"info".to_owned()),
                ] {
                    args.extend([flag.into(), value.into()]);
                }
                if let Some(tls) = &tls {
                    args.extend(["--cert-file".into(), tls.cert.clone().into()]);
                    args.extend(["--key-file".into(), tls.key.clone().into()]);
                    args.extend(["--trusted-ca-file".into(), tls.ca.clone().into()]);
                    if tls.client_cert_auth {
                        args.push("--client-cert-auth".into());
                    }
                }
                args
            }),
            ready: Ready::LogLine("ready to serve client requests"),
        };
        EtcdServer {
            process: ServerProcess::start(spec).await,
            client_port,
        }
    }

    /// `host:port` of the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }
}

impl Deref for EtcdServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for EtcdServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

server_control_through_deref!(EtcdServer);

/// Runs `check` until it returns true, failing the test with `what` after `within`.
pub async fn eventually<F, Fut>(within: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "not within {within:?}: {what}");
        sleep(Duration::from_millis(50)).await;
    }
}

/// Reads lists from `watcher` until one equals `expected`, failing after `within`.
pub async fn watcher_reaches(
    watcher: &mut Watcher,
    expected: &[ServiceInstance],
    within: Duration,
) {
    let deadline = Instant::now() + within;
    let mut last = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match timeout(left, watcher.next()).await {
            Ok(Ok(list)) if *list == *expected => return,
            Ok(Ok(list)) => last = Some(list),
            Ok(Err(e)) => panic!("the watcher failed: {e}"),
            Err(_) => panic!(
                "the watcher did not reach {:?} within {within:?}; last list: {:?}",
                ids(expected),
                last.as_deref().map(ids)
            ),
        }
    }
}

/// Calls `get_service` until it equals `expected`, failing after `within`.
pub async fn lists(
    discovery: &dyn Discovery,
    name: &str,
    expected: &[ServiceInstance],
    within: Duration,
) {
    let what = format!("get_service({name}) == {:?}", ids(expected));
    eventually(within, &what, || async {
        matches!(discovery.get_service(name).await, Ok(list) if list == expected)
    })
    .await;
}

fn ids(list: &[ServiceInstance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

/// An instance of `name` with id `id`, version `v1`, one metadata entry and a gRPC endpoint.
pub fn instance(name: &str, id: &str) -> ServiceInstance {
    ServiceInstance::builder(id, name)
        .version("v1")
        .metadata("zone", "a")
        .endpoint("grpc://127.0.0.1:9000")
        .build()
        .expect("a valid instance")
}

/// Shows the logs of the code under test for failing tests (`RUST_LOG` filters; default:
/// debug for `crate_filter`).
pub fn init_logs(crate_filter: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| format!("{crate_filter}=debug").into()),
        )
        .with_test_writer()
        .try_init();
}
