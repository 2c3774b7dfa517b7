//! A Consul cluster of a test's own: servers and a client agent per simulated host.
//!
//! Production Consul is 3 (or 5) servers plus a client agent on every host, and a service
//! registers with its own host's agent, which keeps its registrations and syncs them to the
//! servers' catalog. [`ConsulCluster`] starts that: `n` servers (`-server
//! -bootstrap-expect=n`, not dev mode: each keeps its raft log and catalog in a data
//! directory of its own) and client agents (the hosts), joining the servers with
//! `-retry-join`; on 127.0.0.1, every one on free ports of its own
//! ([`ConsulCluster::start`]), or each on a host of a [`Net`], on Consul's usual ports at its
//! host's address, where the network can be cut ([`ConsulCluster::start_in`]). The servers
//! are its [`Cluster`] members (find the leader, kill one, start it again, freeze it); the
//! client agents are killed and started again, with their data (their registrations), by
//! [`ConsulCluster::kill_agent`] and [`ConsulCluster::start_agent_again`].
//!
//! Made to start fast (measured on a 2-core machine: a leader after about 1.5 s, every
//! client agent synced after about 3.5 s): raft timing at its quickest
//! (`performance { raft_multiplier = 1 }`, elections within about a second), a join retried
//! every second (not every 30 s), no update check. Failure detection (gossip) keeps
//! Consul's defaults: a killed agent's node turns critical some 5–8 s after its death.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{agreed_leader, Cluster};
use crate::netns::Net;
use crate::{free_port, server_program, Ready, ServerProcess, ServerSpec};

/// The address and ports of one Consul agent, server or client: it binds, advertises and
/// serves its HTTP API on that address.
#[derive(Debug, Clone, Copy)]
struct Ports {
    ip: IpAddr,
    /// Server RPC (raft and the agents' requests; a client agent does not listen on it).
    server: u16,
    serf_lan: u16,
    serf_wan: u16,
    http: u16,
}

impl Ports {
    /// Free ports on 127.0.0.1.
    fn free() -> Ports {
        Ports {
            ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server: free_port(),
            serf_lan: free_port(),
            serf_wan: free_port(),
            http: free_port(),
        }
    }

    /// Consul's usual ports at `ip` (a host of a [`Net`] has its address to itself).
    fn usual(ip: IpAddr) -> Ports {
        Ports {
            ip,
            server: 8300,
            serf_lan: 8301,
            serf_wan: 8302,
            http: 8500,
        }
    }

    fn http(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.http)
    }

    fn server(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.server)
    }

    fn serf_lan(&self) -> SocketAddr {
        SocketAddr::new(self.ip, self.serf_lan)
    }
}

/// Where an agent runs: its address and ports, its node name, and the host of a [`Net`] it
/// runs in, if any.
struct Place<'a> {
    ports: Ports,
    node: String,
    host: Option<(&'a Net, usize)>,
}

/// The settings every agent of the cluster runs with: raft at its quickest (elections and
/// leader leases within about a second, Consul's recommendation for production, where the
/// default of 5 is for small development machines), and no call to HashiCorp's update check.
const SETTINGS: [&str; 2] = [
    "performance { raft_multiplier = 1 }",
    "disable_update_check = true",
];

/// A Consul cluster of a test's own: servers and client agents, each with a data directory
/// of its own. Servers are ready once they know a leader; a client agent once the catalog
/// holds its node alive with its checks as the agent has them (it has synced). Dropping the
/// cluster kills every agent and deletes its data.
pub struct ConsulCluster {
    servers: Vec<ServerProcess>,
    server_ports: Vec<Ports>,
    agents: Vec<ServerProcess>,
    agent_ports: Vec<Ports>,
    agent_nodes: Vec<String>,
}

impl ConsulCluster {
    /// Starts `servers` servers (3 or 5 in production) and `agents` client agents on
    /// 127.0.0.1, each on free ports, all at once, and waits until every server knows a
    /// leader and every client agent has synced its node. The servers' nodes are named
    /// `server-0`, ...; the client agents' `host-0`, ...
    pub async fn start(servers: usize, agents: usize) -> ConsulCluster {
        let servers = (0..servers)
            .map(|i| Place {
                ports: Ports::free(),
                node: format!("server-{i}"),
                host: None,
            })
            .collect();
        let agents = (0..agents)
            .map(|i| Place {
                ports: Ports::free(),
                node: format!("host-{i}"),
                host: None,
            })
            .collect();
        Self::start_at(servers, agents).await
    }

    /// Starts a server on each of `server_hosts` of `net` and a client agent on each of
    /// `agent_hosts`, on Consul's usual ports at their hosts' addresses (they bind, advertise,
    /// join and serve HTTP there), all at once, and waits as [`start`](Self::start). Server
    /// `i` is on host `server_hosts[i]`, named `server-i`; client agent `j` on host
    /// `agent_hosts[j]`, named `host-K` after that host. Call it from test code that runs in
    /// one of `net`'s hosts ([`Net::run`]): every agent is reached at its host's address.
    pub async fn start_in(
        net: &Net,
        server_hosts: &[usize],
        agent_hosts: &[usize],
    ) -> ConsulCluster {
        let servers = server_hosts
            .iter()
            .enumerate()
            .map(|(i, &host)| Place {
                ports: Ports::usual(net.address(host)),
                node: format!("server-{i}"),
                host: Some((net, host)),
            })
            .collect();
        let agents = agent_hosts
            .iter()
            .map(|&host| Place {
                ports: Ports::usual(net.address(host)),
                node: format!("host-{host}"),
                host: Some((net, host)),
            })
            .collect();
        Self::start_at(servers, agents).await
    }

    /// Starts a server at each of `servers` and a client agent at each of `agents`.
    async fn start_at(servers: Vec<Place<'_>>, agents: Vec<Place<'_>>) -> ConsulCluster {
        assert!(!servers.is_empty(), "a cluster has one server at least");
        let program = server_program("consul", "REGISTRY_RS_CONSUL_BIN", "consul/usr/bin/consul");
        let n = servers.len();
        let joins: Vec<String> = servers
            .iter()
            .map(|p| p.ports.serf_lan().to_string())
            .collect();
        let mut specs = Vec::with_capacity(servers.len() + agents.len());
        for (i, place) in servers.iter().enumerate() {
            // Every server but itself.
            let others: Vec<String> = joins
                .iter()
                .enumerate()
                .filter(|(k, _)| *k != i)
                .map(|(_, join)| join.clone())
                .collect();
            let http = place.ports.http();
            specs.push(place.spec(
                program.clone(),
                others,
                Some(n),
                Ready::Probe(Box::new(move || leader_of(http).is_some())),
            ));
        }
        for place in &agents {
            let http = place.ports.http();
            let node = place.node.clone();
            specs.push(place.spec(
                program.clone(),
                joins.clone(),
                None,
                Ready::Probe(Box::new(move || agent_synced(http, &node))),
            ));
        }
        // A server waits for the others (bootstrap-expect), a client agent for a leader:
        // start them all at once.
        let mut started = ServerProcess::start_together(specs).await;
        let agent_processes = started.split_off(n);
        ConsulCluster {
            servers: started,
            server_ports: servers.iter().map(|p| p.ports).collect(),
            agents: agent_processes,
            agent_ports: agents.iter().map(|p| p.ports).collect(),
            agent_nodes: agents.into_iter().map(|p| p.node).collect(),
        }
    }

    /// How many client agents (hosts).
    pub fn agents(&self) -> usize {
        self.agents.len()
    }

    /// The node name of a client agent (`host-N`).
    pub fn agent_node(&self, agent: usize) -> String {
        self.agent_nodes[agent].clone()
    }

    /// `http://ADDRESS:PORT` of a client agent's HTTP API.
    pub fn agent_http(&self, agent: usize) -> String {
        format!("http://{}", self.agent_ports[agent].http())
    }

    /// `consul://ADDRESS:PORT?options` of a client agent: how a service on that host
    /// reaches Consul.
    pub fn agent_url(&self, agent: usize, options: &str) -> String {
        format!("consul://{}?{options}", self.agent_ports[agent].http())
    }

    /// `consul://ADDRESS:PORT?options` of a server's own HTTP API (a server is an agent
    /// too; services usually go through their host's client agent).
    pub fn server_url(&self, server: usize, options: &str) -> String {
        format!("consul://{}?{options}", self.server_ports[server].http())
    }

    /// Kills a client agent (SIGKILL), as its host dies, and waits until it is gone; its
    /// data (its registrations and their checks' state) stays.
    pub fn kill_agent(&mut self, agent: usize) {
        self.agents[agent].kill();
    }

    /// Starts a killed client agent again with its data, and waits until it has synced its
    /// node (the catalog holds it alive, with its checks as the agent has them).
    pub async fn start_agent_again(&mut self, agent: usize) {
        self.agents[agent].start_again().await;
    }

    /// Whether the catalog holds a client agent's node alive, with its checks as the agent
    /// has them (`false` when the agent does not answer).
    pub fn agent_synced(&self, agent: usize) -> bool {
        agent_synced(self.agent_ports[agent].http(), &self.agent_nodes[agent])
    }

    /// The server that leads in the view of `server` (it answers and knows a leader), which
    /// may differ from the others' during a partition.
    pub fn leader_known_by(&self, server: usize) -> Option<usize> {
        leader_of(self.server_ports[server].http()).and_then(|at| self.server_on(at))
    }

    /// The last lines of a server's log.
    pub fn server_log_tail(&self, server: usize) -> String {
        self.servers[server].log_tail()
    }

    /// The last lines of a client agent's log.
    pub fn agent_log_tail(&self, agent: usize) -> String {
        self.agents[agent].log_tail()
    }

    /// The server whose RPC address is `address`.
    fn server_on(&self, address: SocketAddr) -> Option<usize> {
        self.server_ports.iter().position(|p| p.server() == address)
    }
}

impl Place<'_> {
    /// How to run this agent: a server when `bootstrap_expect` is given, else a client
    /// agent; joining `join` (serf LAN addresses), retried every second; in its host's
    /// namespace when it has one.
    fn spec(
        &self,
        program: PathBuf,
        join: Vec<String>,
        bootstrap_expect: Option<usize>,
        ready: Ready,
    ) -> ServerSpec {
        let ports = self.ports;
        let node = self.node.clone();
        let spec = ServerSpec {
            program,
            args: Box::new(move |data| {
                let mut args: Vec<OsString> = vec!["agent".into()];
                if let Some(n) = bootstrap_expect {
                    args.extend(["-server".into(), format!("-bootstrap-expect={n}").into()]);
                }
                args.extend(["-node".into(), node.clone().into()]);
                args.extend(["-data-dir".into(), data.as_os_str().to_owned()]);
                for (flag, value) in [
                    // Bound to one address, an agent advertises it too.
                    ("-bind", ports.ip.to_string()),
                    ("-client", ports.ip.to_string()),
                    ("-server-port", ports.server.to_string()),
                    ("-serf-lan-port", ports.serf_lan.to_string()),
                    ("-serf-wan-port", ports.serf_wan.to_string()),
                    ("-http-port", ports.http.to_string()),
                    ("-dns-port", "-1".to_owned()),
                    ("-grpc-port", "-1".to_owned()),
                    ("-retry-interval", "1s".to_owned()),
                    ("-log-level", "info".to_owned()),
                ] {
                    args.extend([flag.into(), value.into()]);
                }
                for address in &join {
                    args.extend(["-retry-join".into(), address.into()]);
                }
                for hcl in SETTINGS {
                    args.extend(["-hcl".into(), hcl.into()]);
                }
                args
            }),
            ready,
        };
        match self.host {
            Some((net, host)) => net.spec(host, spec),
            None => spec,
        }
    }
}

/// The body of `GET path` on the agent whose HTTP API is at `address`, when it answers 200
/// within a second or two.
fn http_get(address: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    // HTTP/1.0: the answer is the body up to the end of the stream, never chunked.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = answer.find("\r\n\r\n")? + 4;
    Some(answer[body..].to_owned())
}

/// What the agent at `http` says of the leader (`GET /v1/status/leader`:
/// `"ADDRESS:PORT"`, or `""` without one): `Some(Some(address))`, the leader's server RPC
/// address; `Some(None)`, it knows none; `None`, it does not answer.
fn leader_known(http: SocketAddr) -> Option<Option<SocketAddr>> {
    let body = http_get(http, "/v1/status/leader")?;
    Some(body.trim().trim_matches('"').parse().ok())
}

/// The server RPC address of the leader the agent at `http` knows, if it answers and knows
/// one.
fn leader_of(http: SocketAddr) -> Option<SocketAddr> {
    leader_known(http).flatten()
}

/// `CheckID` → `Status` of every check in a Consul JSON answer (its health checks' fields
/// come in the order `Node`, `CheckID`, `Name`, `Status`; quotes inside values are escaped).
fn check_statuses(json: &str) -> Vec<(String, String)> {
    const ID: &str = "\"CheckID\":\"";
    const STATUS: &str = "\"Status\":\"";
    let mut checks = Vec::new();
    let mut rest = json;
    while let Some(at) = rest.find(ID) {
        rest = &rest[at + ID.len()..];
        let Some(end) = rest.find('"') else { break };
        let id = rest[..end].to_owned();
        let Some(at) = rest.find(STATUS) else { break };
        rest = &rest[at + STATUS.len()..];
        let Some(end) = rest.find('"') else { break };
        checks.push((id, rest[..end].to_owned()));
        rest = &rest[end..];
    }
    checks.sort();
    checks.dedup();
    checks
}

/// Whether the catalog (read through the agent at `http`) holds `node` alive (`serfHealth`
/// passing) with exactly the agent's own checks in the agent's own states: the agent has
/// synced. A restarted agent is not, until its first full sync: until then the catalog
/// still shows its checks as they were when it died.
fn agent_synced(http: SocketAddr, node: &str) -> bool {
    let Some(local) = http_get(http, "/v1/agent/checks") else {
        return false;
    };
    let Some(catalog) = http_get(http, &format!("/v1/health/node/{node}")) else {
        return false;
    };
    let mut catalog = check_statuses(&catalog);
    let Some(serf) = catalog.iter().position(|(id, _)| id == "serfHealth") else {
        return false;
    };
    if catalog.remove(serf).1 != "passing" {
        return false;
    }
    catalog == check_statuses(&local)
}

#[async_trait]
impl Cluster for ConsulCluster {
    /// The servers (the client agents are not members: they hold no raft state).
    fn len(&self) -> usize {
        self.servers.len()
    }

    /// `consul://` of the first client agent (of the first server without client agents),
    /// then `path_and_query`: Consul's URL names one agent, the one on the service's host.
    fn url(&self, path_and_query: &str) -> String {
        let http = self
            .agent_ports
            .first()
            .unwrap_or(&self.server_ports[0])
            .http();
        format!("consul://{http}{path_and_query}")
    }

    async fn leader(&self) -> usize {
        let what = format!(
            "Consul servers (server RPC addresses {:?})",
            self.server_ports
                .iter()
                .map(|p| p.server())
                .collect::<Vec<_>>()
        );
        // Each server's view: the leader it names (`None` inside: none). The leader must
        // answer too and name itself (the others may name a dead leader for a moment after
        // it died).
        agreed_leader(
            self.server_ports.len(),
            &what,
            |i| leader_known(self.server_ports[i].http()),
            |named| *named,
            |i, named, leader| named == &Some(*leader) && self.server_on(*leader) == Some(i),
        )
        .await
    }

    fn kill(&mut self, member: usize) {
        self.servers[member].kill();
    }

    async fn start_again(&mut self, member: usize) {
        self.servers[member].start_again().await;
    }

    fn pause(&mut self, member: usize) {
        self.servers[member].pause();
    }

    fn resume(&mut self, member: usize) {
        self.servers[member].resume();
    }
}

#[cfg(test)]
mod tests {
    use super::check_statuses;

    #[test]
    fn check_statuses_reads_consul_checks() {
        let catalog = r#"[{"Node":"host-0","CheckID":"serfHealth","Name":"Serf Health Status","Status":"passing","Notes":"","Output":"Agent alive and reachable"},{"Node":"host-0","CheckID":"service:i1","Name":"Service 'svc' check","Status":"critical","Notes":"","Output":"TTL expired"}]"#;
        assert_eq!(
            check_statuses(catalog),
            [
                ("serfHealth".to_owned(), "passing".to_owned()),
                ("service:i1".to_owned(), "critical".to_owned())
            ]
        );
        let local = r#"{"service:i1":{"Node":"host-0","CheckID":"service:i1","Name":"Service 'svc' check","Status":"passing"}}"#;
        assert_eq!(
            check_statuses(local),
            [("service:i1".to_owned(), "passing".to_owned())]
        );
        assert!(check_statuses("{}").is_empty());
    }
}
