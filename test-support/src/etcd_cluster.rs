//! An etcd cluster of a test's own: n members on loopback, each with its own client and peer
//! ports and data directory, killed and deleted with the cluster.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use async_trait::async_trait;

use crate::cluster::{agreed_leader, Cluster};
use crate::netns::Net;
use crate::{free_port, run_id, server_program, Ready, ServerProcess, ServerSpec};

/// What a member's `/v3/maintenance/status` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EtcdStatus {
    /// The member's id.
    pub member_id: u64,
    /// The id of the leader it follows (0: none).
    pub leader: u64,
}

/// Asks the member on `127.0.0.1:port` for its status through etcd's HTTP gateway (JSON).
/// `None` when it does not answer.
pub fn etcd_status(port: u16) -> Option<EtcdStatus> {
    etcd_status_at(([127, 0, 0, 1], port).into())
}

/// Asks the member at `address` for its status, as [`etcd_status`].
pub fn etcd_status_at(address: SocketAddr) -> Option<EtcdStatus> {
    let port = address.port();
    let host = address.ip();
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream
        .set_write_timeout(Some(Duration::from_secs(1)))
        .ok()?;
    // HTTP/1.0: the answer is the body up to the end of the stream, never chunked.
    let request = format!(
        "POST /v3/maintenance/status HTTP/1.0\r\nHost: {host}:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{}}"
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    if !answer.starts_with("HTTP/1.0 200") && !answer.starts_with("HTTP/1.1 200") {
        return None;
    }
    let body = &answer[answer.find("\r\n\r\n")?..];
    Some(EtcdStatus {
        member_id: json_number(body, "member_id")?,
        leader: json_number(body, "leader")?,
    })
}

/// The number in `"key": "123"` or `"key": 123` (the gateway writes 64-bit numbers as
/// strings), the first such key in `json`.
fn json_number(json: &str, key: &str) -> Option<u64> {
    let pattern = format!("\"{key}\"");
    let rest = &json[json.find(&pattern)? + pattern.len()..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let rest = rest.strip_prefix('"').unwrap_or(rest);
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// An etcd cluster of a test's own: `n` members, each on its own client and peer ports,
/// started together with `--initial-cluster`; each is ready once it follows a leader (or
/// leads). Dropping the cluster kills every member and deletes its data.
///
/// On loopback ([`start`](Self::start)) by default, or each member on a host of a [`Net`]
/// ([`start_in`](Self::start_in)), where the network can be cut.
pub struct EtcdCluster {
    members: Vec<ServerProcess>,
    client_addresses: Vec<SocketAddr>,
}

/// Where a member runs: its address, client and peer ports, and the host of a [`Net`] it runs
/// in, if any.
type Place<'a> = (IpAddr, u16, u16, Option<(&'a Net, usize)>);

impl EtcdCluster {
    /// Starts `n` members together on 127.0.0.1, on free ports, and waits until each
    /// follows a leader (or leads).
    pub async fn start(n: usize) -> EtcdCluster {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let places = (0..n)
            .map(|_| (loopback, free_port(), free_port(), None))
            .collect();
        Self::start_at(places).await
    }

    /// Starts a member on each of `hosts` of `net` (on etcd's usual ports, each host having
    /// addresses of its own), together, and waits until each follows a leader. Member `i` is
    /// on host `hosts[i]`. Call it from test code that runs in one of `net`'s hosts
    /// ([`Net::run`]): the members are reached at their hosts' addresses.
    pub async fn start_in(net: &Net, hosts: &[usize]) -> EtcdCluster {
        let places = hosts
            .iter()
            .map(|&host| (net.address(host), 2379, 2380, Some((net, host))))
            .collect();
        Self::start_at(places).await
    }

    /// Starts a member at each place.
    async fn start_at(places: Vec<Place<'_>>) -> EtcdCluster {
        assert!(!places.is_empty(), "a cluster has one member at least");
        let program = server_program("etcd", "REGISTRY_RS_ETCD_BIN", "etcd/usr/bin/etcd");
        let client_addresses: Vec<SocketAddr> = places
            .iter()
            .map(|(ip, client, _, _)| SocketAddr::new(*ip, *client))
            .collect();
        let peer_addresses: Vec<SocketAddr> = places
            .iter()
            .map(|(ip, _, peer, _)| SocketAddr::new(*ip, *peer))
            .collect();
        let initial_cluster = peer_addresses
            .iter()
            .enumerate()
            .map(|(i, address)| format!("m{i}=http://{address}"))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("registry-test-{}", run_id());
        // Every member waits for a quorum before it is ready: start them all at once.
        let specs: Vec<_> = places
            .iter()
            .enumerate()
            .map(|(i, (_, _, _, host))| {
                let client_url = format!("http://{}", client_addresses[i]);
                let peer_url = format!("http://{}", peer_addresses[i]);
                let initial_cluster = initial_cluster.clone();
                let token = token.clone();
                let client_address = client_addresses[i];
                let spec = ServerSpec {
                    program: program.clone(),
                    args: Box::new(move |data| {
                        let mut args: Vec<OsString> = Vec::new();
                        for (flag, value) in [
                            ("--name", format!("m{i}")),
                            ("--data-dir", data.display().to_string()),
                            ("--listen-client-urls", client_url.clone()),
                            ("--advertise-client-urls", client_url.clone()),
                            ("--listen-peer-urls", peer_url.clone()),
                            ("--initial-advertise-peer-urls", peer_url.clone()),
                            ("--initial-cluster", initial_cluster.clone()),
                            ("--initial-cluster-state", "new".into()),
                            ("--initial-cluster-token", token.clone()),
                            ("--log-level", "info".into()),
                        ] {
                            args.extend([flag.into(), value.into()]);
                        }
                        args
                    }),
                    ready: Ready::Probe(Box::new(move || {
                        etcd_status_at(client_address).is_some_and(|s| s.leader != 0)
                    })),
                };
                match host {
                    Some((net, host)) => net.spec(*host, spec),
                    None => spec,
                }
            })
            .collect();
        let members = ServerProcess::start_together(specs).await;
        EtcdCluster {
            members,
            client_addresses,
        }
    }

    /// `ADDRESS:PORT` of a member's client endpoint.
    pub fn endpoint(&self, member: usize) -> String {
        self.client_addresses[member].to_string()
    }

    /// `etcd://` with every member, `first` first and the others in order after it, then
    /// `path_and_query`. The backend's client uses the first endpoint that answers.
    pub fn url_from(&self, first: usize, path_and_query: &str) -> String {
        let n = self.members.len();
        let endpoints: Vec<String> = (0..n).map(|k| self.endpoint((first + k) % n)).collect();
        format!("etcd://{}{path_and_query}", endpoints.join(","))
    }

    /// A member's status, `None` when it does not answer.
    pub fn status(&self, member: usize) -> Option<EtcdStatus> {
        etcd_status_at(self.client_addresses[member])
    }

    /// The last lines of a member's log.
    pub fn log_tail(&self, member: usize) -> String {
        self.members[member].log_tail()
    }
}

#[async_trait]
impl Cluster for EtcdCluster {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn url(&self, path_and_query: &str) -> String {
        self.url_from(0, path_and_query)
    }

    async fn leader(&self) -> usize {
        agreed_leader(
            self.len(),
            "etcd members",
            |i| self.status(i),
            |s| (s.leader != 0).then_some(s.leader),
            |_, s, leader| s.member_id == *leader,
        )
        .await
    }

    fn kill(&mut self, member: usize) {
        self.members[member].kill();
    }

    async fn start_again(&mut self, member: usize) {
        self.members[member].start_again().await;
    }

    fn pause(&mut self, member: usize) {
        self.members[member].pause();
    }

    fn resume(&mut self, member: usize) {
        self.members[member].resume();
    }
}
