//! A private etcd server for the tests that break or reconfigure their server: its own ports
//! and data directory, so it never disturbs the shared server the conformance suite uses.
//!
//! The etcd program comes from `REGISTRY_RS_ETCD_BIN` (set by `scripts/test`, which gets it
//! from `scripts/backends bin etcd`), else from the script's cache. A missing program fails the
//! test: nothing is skipped.

#![allow(dead_code)] // each test file uses part of it

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use registry_core::{Discovery, ServiceInstance, Watcher};
use tokio::time::{sleep, timeout, Instant};

/// How long a server gets to start answering.
const START_DEADLINE: Duration = Duration::from_secs(30);

/// The etcd program to run.
pub fn etcd_bin() -> PathBuf {
    let path = match std::env::var_os("REGISTRY_RS_ETCD_BIN") {
        Some(path) => PathBuf::from(path),
        None => {
            let cache = std::env::var_os("REGISTRY_RS_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                        .join(".cache/registry-rs")
                });
            cache.join("servers/etcd/usr/bin/etcd")
        }
    };
    assert!(
        path.is_file(),
        "no etcd program at {} (run `scripts/backends bin etcd`, or set REGISTRY_RS_ETCD_BIN)",
        path.display()
    );
    path
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address").port()
}

/// TLS files for a server started with [`EtcdServer::start_tls`].
pub struct ServerTls {
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// The server's certificate and key.
    pub cert: PathBuf,
    /// The server's key.
    pub key: PathBuf,
    /// Whether clients must present a certificate signed by `ca`.
    pub client_cert_auth: bool,
}

/// One etcd process of a test's own.
pub struct EtcdServer {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    tls: Option<ServerTls>,
    child: Option<Child>,
    launches: usize,
}

impl EtcdServer {
    /// Starts a plain etcd and waits until it answers.
    pub async fn start() -> EtcdServer {
        Self::start_with(None).await
    }

    /// Starts an etcd serving TLS.
    pub async fn start_tls(tls: ServerTls) -> EtcdServer {
        Self::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<ServerTls>) -> EtcdServer {
        let mut server = EtcdServer {
            dir: tempfile::Builder::new()
                .prefix("registry-etcd-test-")
                .tempdir()
                .expect("temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            child: None,
            launches: 0,
        };
        server.launch().await;
        server
    }

    /// The directory tests may keep files in; removed with the server.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `host:port` of the client endpoint.
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.client_port)
    }

    /// `etcd://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("etcd://{}", self.endpoint())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_file(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    /// Starts the process on the same ports and data directory, and waits until it answers.
    async fn launch(&mut self) {
        assert!(self.child.is_none(), "etcd already runs");
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{}", self.client_port);
        let peer_url = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_file())
            .expect("etcd log file");
        let mut command = Command::new(etcd_bin());
        command
            .args(["--name", "fault-test", "--data-dir"])
            .arg(self.data_dir())
            .args(["--listen-client-urls", &client_url])
            .args(["--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url])
            .args(["--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("fault-test={peer_url}")])
            .args(["--log-level", "info"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log file"))
            .stderr(log);
        if let Some(tls) = &self.tls {
            command
                .arg("--cert-file")
                .arg(&tls.cert)
                .arg("--key-file")
                .arg(&tls.key)
                .arg("--trusted-ca-file")
                .arg(&tls.ca);
            if tls.client_cert_auth {
                command.arg("--client-cert-auth");
            }
        }
        self.child = Some(command.spawn().expect("start etcd"));
        self.launches += 1;
        self.wait_answering().await;
    }

    /// Waits until the client port accepts connections and etcd reports itself ready.
    async fn wait_answering(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}; log:\n{}", self.log_tail());
            }
            if self.log_says_ready() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not start within {START_DEADLINE:?}; log:\n{}",
                self.log_tail()
            );
            sleep(Duration::from_millis(50)).await;
        }
    }

    /// etcd logs this line once it serves clients; the log is appended to across launches,
    /// so count them.
    fn log_says_ready(&self) -> bool {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        log.matches("ready to serve client requests").count() >= self.launches
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_file()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Kills the process (SIGKILL) and waits for it to be gone; the data stays.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again with the data it has.
    pub async fn restart(&mut self) {
        self.kill();
        self.launch().await;
    }

    /// Kills the process, deletes its data directory and starts it again empty.
    pub async fn wipe_and_restart(&mut self) {
        self.kill();
        std::fs::remove_dir_all(self.data_dir()).expect("delete etcd's data");
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
        let pid = self.child.as_ref().expect("etcd runs").id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} {pid} failed");
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            // A paused process must be thawed to die of SIGKILL promptly on every platform.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        self.kill();
    }
}

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
            Ok(Ok(list)) if list == expected => return,
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

/// `get_service` until it equals `expected`, failing after `within`.
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

/// An instance of `name` with id `id`.
pub fn instance(name: &str, id: &str) -> ServiceInstance {
    ServiceInstance::builder(id, name)
        .version("v1")
        .metadata("zone", "a")
        .endpoint("grpc://127.0.0.1:9000")
        .build()
        .expect("a valid instance")
}

/// Logs of the code under test, shown for failing tests (`RUST_LOG` filters).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "registry_etcd=debug".into()),
        )
        .with_test_writer()
        .try_init();
}
