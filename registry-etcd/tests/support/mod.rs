//! A private etcd for the tests that break or reconfigure their server: its own ports and
//! data directory, so it never disturbs the shared server the conformance suite uses.

#![allow(dead_code)] // each test file uses part of it

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;

#[allow(unused_imports)] // each test file uses part of it
pub use test_support::{eventually, free_port, instance, lists, watcher_reaches};
use test_support::{server_program, Ready, ServerProcess, ServerSpec};

/// Logs of this crate, shown for failing tests.
pub fn init_logs() {
    test_support::init_logs("registry_etcd");
}

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
