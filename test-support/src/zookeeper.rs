//! A ZooKeeper of a test's own (standalone, tickTime 500 ms): its own port and data
//! directory, so it never disturbs the shared server. It answers the four-letter words
//! `ruok` (readiness), and `mntr` and `wchs` (its counts, such as the watches it holds).
//! And an ensemble of a test's own ([`ZkEnsemble`]), whose servers also answer `srvr` (their
//! role) and `cons` (their connections, with each one's session).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::netns::Net;
use crate::{free_port, Ready, ServerProcess, ServerSpec};

/// ZooKeeper's jar: `REGISTRY_RS_ZK_JAR` (set by `scripts/test` from
/// `scripts/backends bin zookeeper`), else Debian's.
fn zk_jar() -> PathBuf {
    let jar = std::env::var_os("REGISTRY_RS_ZK_JAR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/share/java/zookeeper.jar"));
    assert!(
        jar.is_file(),
        "no ZooKeeper at {} (run `scripts/backends bin zookeeper`)",
        jar.display()
    );
    jar
}

/// Whether the server on `port` answers `ruok` with `imok`.
fn answers(port: u16) -> bool {
    let Ok(mut stream) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(200))
    else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut answer = String::new();
    stream.write_all(b"ruok").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer == "imok"
}

/// One ZooKeeper server of a test's own (kill, restart, wipe, pause through `Deref`).
pub struct ZkServer {
    process: ServerProcess,
    port: u16,
}

impl ZkServer {
    /// Starts a standalone server and waits until it answers.
    pub async fn start() -> ZkServer {
        let port = free_port();
        let jar = zk_jar();
        let spec = ServerSpec {
            program: PathBuf::from("java"),
            args: Box::new(move |data| {
                let dir = data.parent().expect("a parent directory");
                let cfg = dir.join("zoo.cfg");
                let text = format!(
                    "tickTime=500\nminSessionTimeout=1000\nmaxSessionTimeout=60000\n\
                     dataDir={}\nclientPort={port}\nclientPortAddress=127.0.0.1\n\
                     admin.enableServer=false\n4lw.commands.whitelist=ruok,mntr,wchs\n",
                    data.display()
                );
                std::fs::write(&cfg, text).expect("write zoo.cfg");
                java_args(dir, &jar, &cfg)
            }),
            ready: Ready::Probe(Box::new(move || answers(port))),
        };
        ZkServer {
            process: ServerProcess::start(spec).await,
            port,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `zk://127.0.0.1:PORT/ROOT?OPTIONS`.
    pub fn url(&self, root_and_options: &str) -> String {
        format!("zk://{}{root_and_options}", self.address())
    }
}

impl Deref for ZkServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for ZkServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

crate::server_control_through_deref!(ZkServer);

/// What a server answers to the four-letter word `word` (it must be in the whitelist of its
/// `zoo.cfg`), `None` when it does not answer.
pub fn four_letter_word(port: u16, word: &str) -> Option<String> {
    four_letter_word_at(([127, 0, 0, 1], port).into(), word)
}

/// What the server at `address` answers to `word`, as [`four_letter_word`].
pub fn four_letter_word_at(address: SocketAddr, word: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&address, Duration::from_millis(300)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    stream.write_all(word.as_bytes()).ok()?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer).ok()?;
    Some(answer)
}

/// The role `srvr` reports: `leader`, `follower`, `standalone`; `None` while the server does
/// not serve (no quorum) or does not answer.
pub fn zk_mode(port: u16) -> Option<String> {
    zk_mode_at(([127, 0, 0, 1], port).into())
}

/// The role the server at `address` reports, as [`zk_mode`].
pub fn zk_mode_at(address: SocketAddr) -> Option<String> {
    let answer = four_letter_word_at(address, "srvr")?;
    answer
        .lines()
        .find_map(|line| line.strip_prefix("Mode: "))
        .map(|mode| mode.trim().to_owned())
}

/// A ZooKeeper ensemble of a test's own: `n` servers (tickTime 500 ms), each with its own
/// client, quorum and election ports, `zoo.cfg` and `myid`; each is ready once it serves as
/// leader or follower. They answer the four-letter words `ruok`, `srvr`, `cons`, `mntr` and
/// `wchs`. Dropping the ensemble kills every server and deletes its data.
///
/// On 127.0.0.1 ([`start`](Self::start)), or each server on a host of a [`Net`]
/// ([`start_in`](Self::start_in)), where the network can be cut.
pub struct ZkEnsemble {
    members: Vec<ServerProcess>,
    client_addresses: Vec<SocketAddr>,
}

/// Where a server of an ensemble runs: its address, client, quorum and election ports, and
/// the host of a [`Net`] it runs in, if any.
type Place<'a> = (IpAddr, [u16; 3], Option<(&'a Net, usize)>);

impl ZkEnsemble {
    /// Starts `n` servers together on 127.0.0.1, on free ports, and waits until each serves
    /// (as leader or follower).
    pub async fn start(n: usize) -> ZkEnsemble {
        let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let places = (0..n)
            .map(|_| (loopback, [free_port(), free_port(), free_port()], None))
            .collect();
        Self::start_at(places).await
    }

    /// Starts a server on each of `hosts` of `net` (on ZooKeeper's usual ports), together,
    /// and waits until each serves. Server `i` is on host `hosts[i]`. Call it from test code
    /// that runs in one of `net`'s hosts ([`Net::run`]).
    pub async fn start_in(net: &Net, hosts: &[usize]) -> ZkEnsemble {
        let places = hosts
            .iter()
            .map(|&host| (net.address(host), [2181, 2888, 3888], Some((net, host))))
            .collect();
        Self::start_at(places).await
    }

    async fn start_at(places: Vec<Place<'_>>) -> ZkEnsemble {
        assert!(!places.is_empty(), "an ensemble has one server at least");
        let jar = zk_jar();
        let client_addresses: Vec<SocketAddr> = places
            .iter()
            .map(|(ip, [client, _, _], _)| SocketAddr::new(*ip, *client))
            .collect();
        let servers: String = places
            .iter()
            .enumerate()
            .map(|(i, (ip, [_, quorum, election], _))| {
                format!("server.{}={ip}:{quorum}:{election}\n", i + 1)
            })
            .collect();
        // A server waits for a quorum before it serves: start them all at once.
        let specs: Vec<_> = places
            .iter()
            .enumerate()
            .map(|(i, (ip, [port, _, _], host))| {
                let (ip, port) = (*ip, *port);
                let address = client_addresses[i];
                let jar = jar.clone();
                let servers = servers.clone();
                let spec = ServerSpec {
                    program: PathBuf::from("java"),
                    args: Box::new(move |data| {
                        let dir = data.parent().expect("a parent directory");
                        std::fs::write(data.join("myid"), format!("{}\n", i + 1))
                            .expect("write myid");
                        let cfg = dir.join("zoo.cfg");
                        let text = format!(
                            "tickTime=500\ninitLimit=10\nsyncLimit=5\n\
                             minSessionTimeout=1000\nmaxSessionTimeout=60000\n\
                             dataDir={}\nclientPort={port}\nclientPortAddress={ip}\n\
                             admin.enableServer=false\n\
                             4lw.commands.whitelist=ruok,srvr,cons,mntr,wchs\n{servers}",
                            data.display()
                        );
                        std::fs::write(&cfg, text).expect("write zoo.cfg");
                        java_args(dir, &jar, &cfg)
                    }),
                    ready: Ready::Probe(Box::new(move || {
                        zk_mode_at(address).is_some_and(|m| m == "leader" || m == "follower")
                    })),
                };
                match host {
                    Some((net, host)) => net.spec(*host, spec),
                    None => spec,
                }
            })
            .collect();
        let members = ServerProcess::start_together(specs).await;
        ZkEnsemble {
            members,
            client_addresses,
        }
    }

    /// `ADDRESS:PORT` of a server's client port.
    pub fn address(&self, member: usize) -> String {
        self.client_addresses[member].to_string()
    }

    /// The role of a server now (`leader`, `follower`), `None` when it does not serve.
    pub fn mode(&self, member: usize) -> Option<String> {
        zk_mode_at(self.client_addresses[member])
    }

    /// The server a client's session (its id) is connected to now, by the servers' `cons`.
    pub fn member_holding(&self, session: i64) -> Option<usize> {
        let sid = format!("sid=0x{session:x},");
        (0..self.members.len()).find(|&i| {
            four_letter_word_at(self.client_addresses[i], "cons")
                .is_some_and(|cons| cons.contains(&sid))
        })
    }

    /// The last lines of a server's log.
    pub fn log_tail(&self, member: usize) -> String {
        self.members[member].log_tail()
    }
}

#[async_trait::async_trait]
impl crate::Cluster for ZkEnsemble {
    fn len(&self) -> usize {
        self.members.len()
    }

    fn url(&self, path_and_query: &str) -> String {
        let servers: Vec<String> = (0..self.members.len()).map(|i| self.address(i)).collect();
        format!("zk://{}{path_and_query}", servers.join(","))
    }

    async fn leader(&self) -> usize {
        let deadline = tokio::time::Instant::now() + crate::cluster::QUORUM_DEADLINE;
        loop {
            let modes: Vec<Option<String>> =
                (0..self.members.len()).map(|i| self.mode(i)).collect();
            let leaders: Vec<usize> = (0..modes.len())
                .filter(|&i| modes[i].as_deref() == Some("leader"))
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the ZooKeeper servers did not have one leader within {:?}: {modes:?}",
                crate::cluster::QUORUM_DEADLINE
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
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

/// The JVM command of a ZooKeeper server: its directory (for the log configuration) and the
/// jar on the classpath, and its config file.
fn java_args(dir: &Path, jar: &Path, cfg: &Path) -> Vec<OsString> {
    vec![
        OsString::from("-Xmx256m"),
        "-cp".into(),
        format!("{}:{}", dir.display(), jar.display()).into(),
        "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
        cfg.into(),
    ]
}
