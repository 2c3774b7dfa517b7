//! A Consul agent of a test's own (dev mode, in memory): its own ports, so it never disturbs
//! the shared agent the conformance suite uses. It keeps Prometheus metrics (for the count of
//! blocking queries it serves).

use std::ffi::OsString;
use std::ops::{Deref, DerefMut};

use crate::{free_port, server_program, Ready, ServerProcess, ServerSpec};

/// One Consul dev agent of a test's own (kill, restart, pause through `Deref`).
pub struct ConsulAgent {
    process: ServerProcess,
    http_port: u16,
}

impl ConsulAgent {
    /// Starts a dev agent and waits until it has a leader and has synced its node.
    pub async fn start() -> ConsulAgent {
        Self::start_with(Vec::new()).await
    }

    /// Starts a dev agent serving HTTPS only (client certificates required) with ACLs on,
    /// default deny, and `token` as the master and agent token. [`url`](Self::url) then
    /// names its HTTPS port.
    pub async fn start_secure(pki: &crate::Pki, token: &str) -> ConsulAgent {
        let https_port = free_port();
        let hcl = [
            format!("ports {{ https = {https_port} }}"),
            format!("cert_file = {:?}", pki.server_cert),
            format!("key_file = {:?}", pki.server_key),
            format!("ca_file = {:?}", pki.ca),
            "verify_incoming_https = true".to_owned(),
            format!(
                "acl {{ enabled = true default_policy = \"deny\" tokens {{ master = {token:?} agent = {token:?} }} }}"
            ),
        ];
        let mut agent = Self::start_with(hcl.to_vec()).await;
        agent.http_port = https_port;
        agent
    }

    async fn start_with(hcl: Vec<String>) -> ConsulAgent {
        let http_port = if hcl.is_empty() { free_port() } else { 0 };
        let ports = [free_port(), free_port(), free_port()];
        let spec = ServerSpec {
            program: server_program("consul", "REGISTRY_RS_CONSUL_BIN", "consul/usr/bin/consul"),
            args: Box::new(move |_data| {
                let mut args: Vec<OsString> = [
                    "agent",
                    "-dev",
                    "-bind",
                    "127.0.0.1",
                    "-client",
                    "127.0.0.1",
                ]
                .map(OsString::from)
                .to_vec();
                let http = if http_port == 0 {
                    "-1".to_owned()
                } else {
                    http_port.to_string()
                };
                args.extend(["-http-port".into(), http.into()]);
                for (flag, port) in [
                    ("-server-port", ports[0]),
                    ("-serf-lan-port", ports[1]),
                    ("-serf-wan-port", ports[2]),
                ] {
                    args.extend([flag.into(), port.to_string().into()]);
                }
                args.extend(
                    [
                        "-dns-port",
                        "-1",
                        "-grpc-port",
                        "-1",
                        "-node",
                        "test",
                        "-log-level",
                        "info",
                    ]
                    .map(OsString::from),
                );
                // Metrics in Prometheus form (`/v1/agent/metrics?format=prometheus`): its
                // gauges hold their value until set again, unlike the JSON form's intervals.
                args.extend([
                    "-hcl".into(),
                    "telemetry { prometheus_retention_time = \"1h\" disable_hostname = true }"
                        .into(),
                ]);
                for line in &hcl {
                    args.extend(["-hcl".into(), line.into()]);
                }
                args
            }),
            ready: Ready::LogLine("agent: Synced node info"),
        };
        ConsulAgent {
            process: ServerProcess::start(spec).await,
            http_port,
        }
    }

    /// `http://127.0.0.1:PORT`, for raw HTTP.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `consul://127.0.0.1:PORT` with these options.
    pub fn url(&self, options: &str) -> String {
        format!("consul://127.0.0.1:{}?{options}", self.http_port)
    }
}

impl Deref for ConsulAgent {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for ConsulAgent {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

crate::server_control_through_deref!(ConsulAgent);
