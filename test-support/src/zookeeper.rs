//! A ZooKeeper of a test's own (standalone, tickTime 500 ms): its own port and data
//! directory, so it never disturbs the shared server. It answers the four-letter words
//! `ruok` (readiness), and `mntr` and `wchs` (its counts, such as the watches it holds).

use std::ffi::OsString;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

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
                let classpath = format!("{}:{}", dir.display(), jar.display());
                [
                    OsString::from("-Xmx256m"),
                    "-cp".into(),
                    classpath.into(),
                    "org.apache.zookeeper.server.quorum.QuorumPeerMain".into(),
                    cfg.into(),
                ]
                .to_vec()
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
