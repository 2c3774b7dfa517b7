//! An rnacos cluster of a test's own (its cluster mode): n nodes on 127.0.0.1, each with its
//! own HTTP, gRPC (HTTP + 1000, what nacos-sdk assumes) and console ports and data
//! directory, killed and deleted with the cluster ([`NacosCluster::start`]); or each node on
//! a host of a [`Net`], on rnacos' usual ports (8848, 9848, 10848) at its host's address,
//! where the network can be cut ([`NacosCluster::start_in`]).
//!
//! rnacos keeps two kinds of state, kept apart in its cluster mode:
//!
//! - its configuration, users and node list in raft (the raft peers talk over the gRPC
//!   port; `RNACOS_RAFT_NODE_ADDR` is `ADDRESS:GRPC`): node 1 initializes a cluster of
//!   its own (`RNACOS_RAFT_AUTO_INIT`), the others join it on their first start
//!   (`RNACOS_RAFT_JOIN_ADDR`, asked once: they start one after the other), and a node
//!   started again with its data keeps its place. `GET /nacos/v1/raft/metrics` on a node's
//!   HTTP port tells its id, the leader it follows and the members. rnacos reads
//!   `RNACOS_RAFT_AUTO_INIT` at every start (node 1 initializes a new cluster whenever it
//!   finds no raft log on disk), so only a node's first start carries it (and
//!   `RNACOS_RAFT_JOIN_ADDR`), as an operator passes a bootstrap flag once. A node started
//!   again may come back with a stale membership: see [`Cluster::start_again`];
//! - its ephemeral instances outside raft, Nacos' "distro" way: each node holds the
//!   connections of its own clients and sends what they register to the other nodes, which
//!   keep it under that node's name; a node nobody has heard from for 15 s (its peers ping
//!   every 3 s) is marked invalid, and its clients' instances are dropped by the others.
//!   A registration reaches the other nodes up to 500 ms after the client had its answer
//!   (they are sent in batches). A node started again serves its clients at once, but knows
//!   no instance until every other node has sent it those of its own clients (a second after
//!   it joins): [`Cluster::start_again`] returns once it has them all.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::{sleep, Instant};

use crate::cluster::{agreed_leader, Cluster, QUORUM_DEADLINE};
use crate::netns::Net;
use crate::{free_port, run_id, server_program, Ready, ServerProcess, ServerSpec};

/// How long an rnacos node goes unheard before its peers mark it invalid and drop the
/// instances of its clients (rnacos' own constant, checked every 3 s).
pub const NODE_TIMEOUT: Duration = Duration::from_secs(15);

/// How many times [`Cluster::start_again`] starts a node that came back with a stale
/// membership.
pub const RESTARTS: usize = 5;

/// What a node logs for each other node's instances it receives after it starts.
const SNAPSHOT_RECEIVED: &str = "receive snapshot from";

/// What a node's `GET /nacos/v1/raft/metrics` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftMetrics {
    /// The node's raft id (`RNACOS_RAFT_NODE_ID`).
    pub id: u64,
    /// The id of the leader it follows (or its own, when it leads); `None` while it knows
    /// of none.
    pub leader: Option<u64>,
    /// The ids of the cluster's voting members, as the node knows them.
    pub members: Vec<u64>,
}

/// Asks the node whose HTTP port is `port` for its raft metrics. `None` when it does not
/// answer.
pub fn raft_metrics(port: u16) -> Option<RaftMetrics> {
    raft_metrics_at(SocketAddr::from(([127, 0, 0, 1], port)))
}

/// Asks the node whose HTTP address is `address` for its raft metrics. `None` when it does
/// not answer.
pub fn raft_metrics_at(address: SocketAddr) -> Option<RaftMetrics> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    // HTTP/1.0: the answer is the body up to the end of the stream, never chunked.
    let request = format!("GET /nacos/v1/raft/metrics HTTP/1.0\r\nHost: {address}\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = &answer[answer.find("\r\n\r\n")?..];
    let leader = json_value(body, "current_leader")?;
    let members = json_value(body, "members")?;
    let members = members.strip_prefix('[')?;
    let members = &members[..members.find(']')?];
    Some(RaftMetrics {
        id: json_value(body, "id")?.parse().ok()?,
        leader: if leader == "null" {
            None
        } else {
            Some(leader.parse().ok()?)
        },
        members: members
            .split(',')
            .filter(|m| !m.trim().is_empty())
            .map(|m| m.trim().parse().ok())
            .collect::<Option<Vec<u64>>>()?,
    })
}

/// The text of the value of the first `"key":` in `json`, up to the next `,` or `}` (a
/// number, `null`), or the whole rest when it opens an array.
fn json_value<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pattern = format!("\"{key}\"");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    if rest.starts_with('[') {
        return Some(rest);
    }
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// How many TCP (IPv4) connections this process holds open to each of `addresses` (from
/// the process' file descriptors and `/proc/thread-self/net/tcp`: the table of the calling
/// thread's network namespace, which may not be the main thread's, see [`Net::run`]; Linux
/// only).
pub fn connections_to(addresses: &[SocketAddr]) -> Vec<usize> {
    let mut counts = vec![0; addresses.len()];
    // /proc/net/tcp writes an address as the hex of its 32-bit value in host order, then
    // the port in hex.
    let keys: Vec<Option<(String, u16)>> = addresses
        .iter()
        .map(|a| match a.ip() {
            IpAddr::V4(ip) => Some((format!("{:08X}", u32::from_ne_bytes(ip.octets())), a.port())),
            IpAddr::V6(_) => None,
        })
        .collect();
    let Ok(fds) = std::fs::read_dir("/proc/self/fd") else {
        return counts;
    };
    let sockets: std::collections::BTreeSet<String> = fds
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(
                target
                    .strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .to_owned(),
            )
        })
        .collect();
    let table = std::fs::read_to_string("/proc/thread-self/net/tcp").unwrap_or_default();
    for line in table.lines().skip(1) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid timeout inode
        let (Some(remote), Some(state), Some(inode)) =
            (fields.get(2), fields.get(3), fields.get(9))
        else {
            continue;
        };
        // 01: established.
        if *state != "01" || !sockets.contains(*inode) {
            continue;
        }
        let Some((host, port)) = remote.split_once(':') else {
            continue;
        };
        let Ok(port) = u16::from_str_radix(port, 16) else {
            continue;
        };
        if let Some(i) = keys
            .iter()
            .position(|k| k.as_ref().is_some_and(|(h, p)| h == host && *p == port))
        {
            counts[i] += 1;
        }
    }
    counts
}

/// Where a node runs: its HTTP address (gRPC on its port + 1000), its console port, and the
/// host of a [`Net`] it runs in, if any.
struct Place<'a> {
    http: SocketAddr,
    console: u16,
    host: Option<(&'a Net, usize)>,
}

/// An rnacos cluster of a test's own: `n` nodes on 127.0.0.1 (raft ids 1 to n, in the
/// order the cluster's URL names them), started one after the other, each ready once it is
/// a member and follows a leader (or leads). Dropping the cluster kills every node and
/// deletes its data.
pub struct NacosCluster {
    nodes: Vec<ServerProcess>,
    /// Each node's HTTP address (its gRPC port is the HTTP port + 1000).
    http: Vec<SocketAddr>,
    /// Whether each node runs (not killed) and answers (not paused).
    serving: Vec<bool>,
}

impl NacosCluster {
    /// Starts `n` nodes: node 0 initializes the cluster, each other joins it in turn; returns
    /// once every node is a member and they agree on a leader.
    pub async fn start(n: usize) -> NacosCluster {
        assert!(n > 0, "a cluster has one node at least");
        // rnacos serves gRPC on the HTTP port + 1000 (nacos-sdk assumes it too).
        let places: Vec<Place> = (0..n)
            .map(|_| loop {
                let port = free_port();
                if port < 60000 && std::net::TcpListener::bind(("127.0.0.1", port + 1000)).is_ok() {
                    break Place {
                        http: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port),
                        console: free_port(),
                        host: None,
                    };
                }
            })
            .collect();
        Self::start_at(places).await
    }

    /// Starts a node on each of `hosts` of `net` (node `i` on host `hosts[i]`), on rnacos'
    /// usual ports at its host's address (HTTP 8848, gRPC and raft 9848, console 10848; it
    /// listens on every address of its host and advertises its host's), one after the other
    /// as [`start`](Self::start). Call it from test code that runs in one of `net`'s hosts
    /// ([`Net::run`]): every node is reached at its host's address.
    pub async fn start_in(net: &Net, hosts: &[usize]) -> NacosCluster {
        assert!(!hosts.is_empty(), "a cluster has one node at least");
        let places = hosts
            .iter()
            .map(|&host| Place {
                http: SocketAddr::new(net.address(host), 8848),
                console: 10848,
                host: Some((net, host)),
            })
            .collect();
        Self::start_at(places).await
    }

    /// Starts a node at each of `places`, one after the other.
    async fn start_at(places: Vec<Place<'_>>) -> NacosCluster {
        let n = places.len();
        let program = server_program("nacos", "REGISTRY_RS_RNACOS_BIN", "rnacos/bin/rnacos");
        let grpc = |http: SocketAddr| SocketAddr::new(http.ip(), http.port() + 1000);
        let raft_addr = |i: usize| grpc(places[i].http).to_string();
        // Only nodes of this cluster talk to each other.
        let token = format!("registry-test-{}", run_id());
        let mut nodes = Vec::with_capacity(n);
        for (i, place) in places.iter().enumerate() {
            let id = i as u64 + 1;
            let http = place.http;
            let env = vec![
                format!("RNACOS_HTTP_PORT={}", http.port()),
                format!("RNACOS_GRPC_PORT={}", http.port() + 1000),
                format!("RNACOS_HTTP_CONSOLE_PORT={}", place.console),
                format!("RNACOS_RAFT_NODE_ID={id}"),
                format!("RNACOS_RAFT_NODE_ADDR={}", raft_addr(i)),
                format!("RNACOS_CLUSTER_TOKEN={token}"),
                // Its own level, whatever the test's RUST_LOG: `start_again` reads the log.
                "RUST_LOG=info,actix_web::middleware::logger=warn".to_owned(),
                "RNACOS_GRPC_DETECTION_TIMEOUT_SECOND=2".to_owned(),
                "RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false".to_owned(),
            ];
            // Node 0 bootstraps the cluster, the others join it through node 0: on their
            // first start only (the data directory is empty then).
            let first_start = if i == 0 {
                "RNACOS_RAFT_AUTO_INIT=true".to_owned()
            } else {
                format!("RNACOS_RAFT_JOIN_ADDR={}", raft_addr(0))
            };
            let program = program.clone();
            let spec = ServerSpec {
                program: PathBuf::from("env"),
                args: Box::new(move |data| {
                    let mut args: Vec<OsString> = env.iter().map(OsString::from).collect();
                    let empty = std::fs::read_dir(data).map_or(true, |mut d| d.next().is_none());
                    args.push(if empty {
                        first_start.clone().into()
                    } else {
                        "RNACOS_RAFT_AUTO_INIT=false".into()
                    });
                    for var in ["RNACOS_DATA_DIR=", "RNACOS_CONFIG_DB_DIR="] {
                        let mut arg = OsString::from(var);
                        arg.push(data);
                        args.push(arg);
                    }
                    args.push(program.clone().into());
                    args
                }),
                ready: Ready::Probe(Box::new(move || {
                    let ports_open = [http, grpc(http)].iter().all(|address| {
                        TcpStream::connect_timeout(address, Duration::from_millis(200)).is_ok()
                    });
                    ports_open && raft_metrics_at(http).is_some_and(|m| m.leader.is_some())
                })),
            };
            let spec = match place.host {
                Some((net, host)) => net.spec(host, spec),
                None => spec,
            };
            // A node joins through node 0, once, at its start: one after the other, each
            // once the last is a member.
            nodes.push(ServerProcess::start(spec).await);
            crate::eventually(
                QUORUM_DEADLINE,
                &format!("rnacos node {i} is a member"),
                || async move { raft_metrics_at(http).is_some_and(|m| m.members.contains(&id)) },
            )
            .await;
        }
        let cluster = NacosCluster {
            serving: vec![true; nodes.len()],
            nodes,
            http: places.iter().map(|p| p.http).collect(),
        };
        cluster.all_members().await;
        cluster
    }

    /// Waits until every node that runs knows all `len()` members.
    async fn all_members(&self) {
        let deadline = Instant::now() + QUORUM_DEADLINE;
        let n = self.len() as u64;
        loop {
            let metrics: Vec<_> = (0..self.len()).map(|i| self.metrics(i)).collect();
            if metrics
                .iter()
                .all(|m| m.as_ref().is_some_and(|m| m.members.len() as u64 == n))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the rnacos nodes did not all become members within {QUORUM_DEADLINE:?}: \
                 {metrics:?}"
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// `ADDRESS:PORT` of a node's HTTP port (its gRPC port is PORT + 1000).
    pub fn host(&self, node: usize) -> String {
        self.http[node].to_string()
    }

    /// `http://ADDRESS:PORT` of a node, for the HTTP open API.
    pub fn http(&self, node: usize) -> String {
        format!("http://{}", self.host(node))
    }

    /// A node's raft metrics, `None` when it does not answer.
    pub fn metrics(&self, node: usize) -> Option<RaftMetrics> {
        raft_metrics_at(self.http[node])
    }

    /// How many gRPC connections this process holds open to each node: the nodes a
    /// nacos-sdk client of this process is connected to (nacos-sdk picks a server at random,
    /// and another on each reconnection). Counted in the calling thread's network namespace
    /// (a host's, in [`Net::run`]).
    pub fn connections(&self) -> Vec<usize> {
        let grpc: Vec<SocketAddr> = self
            .http
            .iter()
            .map(|a| SocketAddr::new(a.ip(), a.port() + 1000))
            .collect();
        connections_to(&grpc)
    }

    /// The last lines of a node's log.
    pub fn log_tail(&self, node: usize) -> String {
        self.nodes[node].log_tail()
    }

    /// Waits until a node started again follows the leader the others follow and has
    /// received the instances of every other serving node (`received`: how many its log
    /// told of before the start).
    async fn synced(&self, member: usize, received: usize) {
        let peers = (0..self.len())
            .filter(|&i| i != member && self.serving[i])
            .count();
        let deadline = Instant::now() + QUORUM_DEADLINE;
        loop {
            let leader = self.leader().await;
            let metrics = self.metrics(member);
            let follows = metrics
                .as_ref()
                .is_some_and(|m| m.leader == Some(leader as u64 + 1));
            let synced = self.log_count(member, SNAPSHOT_RECEIVED) >= received + peers;
            if follows && synced {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "rnacos node {member} did not follow node {leader} and receive the instances \
                 of {peers} other node(s) within {QUORUM_DEADLINE:?}: {metrics:?}; log:\n{}",
                self.log_tail(member)
            );
            sleep(Duration::from_millis(100)).await;
        }
    }

    /// How many times a node's log (all its launches) says `text`.
    fn log_count(&self, node: usize, text: &str) -> usize {
        // Where `ServerProcess` writes the process' output.
        let log = self.nodes[node].dir().join("server.log");
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .matches(text)
            .count()
    }
}

#[async_trait]
impl Cluster for NacosCluster {
    fn len(&self) -> usize {
        self.nodes.len()
    }

    /// `nacos://` with every node (nacos-sdk starts with one at random and moves to the
    /// next when its connection fails), then `path_and_query` (`?namespace=public`).
    fn url(&self, path_and_query: &str) -> String {
        let hosts: Vec<String> = (0..self.len()).map(|i| self.host(i)).collect();
        format!("nacos://{}{path_and_query}", hosts.join(","))
    }

    async fn leader(&self) -> usize {
        agreed_leader(
            self.len(),
            "rnacos nodes",
            |i| self.metrics(i),
            |m| m.leader,
            |_, m, leader| m.id == *leader,
        )
        .await
    }

    fn kill(&mut self, member: usize) {
        self.nodes[member].kill();
        self.serving[member] = false;
    }

    /// Starts a killed node again with its data; returns once it follows the leader the
    /// others follow, knows every member, and has the instances of every other serving
    /// node's clients.
    ///
    /// rnacos (0.8.8) reads its raft membership from disk at start while it replays its log
    /// into the same file: now and then (about one start in five here) a node comes back
    /// with the membership of an earlier entry (`[1]`: node 1 then leads a cluster of its
    /// own until the others' next election; `[1]` or `[1, 2]` on node 3: it is no voter),
    /// and keeps it until the next change of membership. Such a node is killed and started
    /// again, up to [`RESTARTS`] times, each said on stdout.
    async fn start_again(&mut self, member: usize) {
        for attempt in 1..=RESTARTS {
            let received = self.log_count(member, SNAPSHOT_RECEIVED);
            self.nodes[member].start_again().await;
            self.serving[member] = true;
            let metrics = self.metrics(member);
            if metrics
                .as_ref()
                .is_some_and(|m| m.members.len() == self.len())
            {
                self.synced(member, received).await;
                return;
            }
            println!(
                "[cluster] rnacos node {member} came back with a membership of an earlier \
                 entry of its log ({metrics:?}, not all {} nodes): killed and started again \
                 (attempt {attempt} of {RESTARTS})",
                self.len()
            );
            self.kill(member);
        }
        panic!("rnacos node {member} came back {RESTARTS} times without every member");
    }

    fn pause(&mut self, member: usize) {
        self.nodes[member].pause();
        self.serving[member] = false;
    }

    fn resume(&mut self, member: usize) {
        self.nodes[member].resume();
        self.serving[member] = true;
    }
}

impl Drop for NacosCluster {
    /// On a failing test, shows what each node logged last (their files go with them).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, node) in self.nodes.iter().enumerate() {
                println!(
                    "[cluster] rnacos node {i} logged last:\n{}",
                    node.log_tail()
                );
            }
        }
    }
}
