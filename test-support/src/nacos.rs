//! An rnacos server (a Nacos-compatible server) of a test's own: its own ports and data
//! directory, so it never disturbs the shared server.

use std::ffi::OsString;
use std::net::TcpStream;
use std::ops::{Deref, DerefMut};
use std::path::PathBuf;
use std::time::Duration;

use crate::{free_port, server_program, Ready, ServerProcess, ServerSpec};

/// One rnacos server of a test's own (kill, restart, wipe, pause through `Deref`).
pub struct NacosServer {
    process: ServerProcess,
    http_port: u16,
}

impl NacosServer {
    /// Starts rnacos and waits until its HTTP and gRPC ports accept connections.
    pub async fn start() -> NacosServer {
        // rnacos serves gRPC on the HTTP port + 1000.
        let http_port = loop {
            let port = free_port();
            if port < 60000 && std::net::TcpListener::bind(("127.0.0.1", port + 1000)).is_ok() {
                break port;
            }
        };
        let console_port = free_port();
        let program = server_program("nacos", "REGISTRY_RS_RNACOS_BIN", "rnacos/bin/rnacos");
        let spec = ServerSpec {
            program: PathBuf::from("env"),
            args: Box::new(move |data| {
                let mut args: Vec<OsString> = [
                    format!("RNACOS_HTTP_PORT={http_port}"),
                    format!("RNACOS_GRPC_PORT={}", http_port + 1000),
                    format!("RNACOS_HTTP_CONSOLE_PORT={console_port}"),
                    "RNACOS_GRPC_DETECTION_TIMEOUT_SECOND=2".to_owned(),
                    "RNACOS_NAMING_INSTANCE_METADATA_PERSISTENCE_ENABLE=false".to_owned(),
                ]
                .map(OsString::from)
                .to_vec();
                let mut dir = OsString::from("RNACOS_DATA_DIR=");
                dir.push(data);
                args.push(dir);
                let mut db = OsString::from("RNACOS_CONFIG_DB_DIR=");
                db.push(data);
                args.push(db);
                args.push(program.clone().into());
                args
            }),
            ready: Ready::Probe(Box::new(move || {
                [http_port, http_port + 1000].iter().all(|port| {
                    TcpStream::connect_timeout(
                        &([127, 0, 0, 1], *port).into(),
                        Duration::from_millis(200),
                    )
                    .is_ok()
                })
            })),
        };
        NacosServer {
            process: ServerProcess::start(spec).await,
            http_port,
        }
    }

    /// `http://127.0.0.1:PORT`, for the HTTP open API.
    pub fn http(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    /// `nacos://127.0.0.1:PORT?OPTIONS`.
    pub fn url(&self, options: &str) -> String {
        format!("nacos://127.0.0.1:{}?{options}", self.http_port)
    }
}

impl Deref for NacosServer {
    type Target = ServerProcess;
    fn deref(&self) -> &ServerProcess {
        &self.process
    }
}

impl DerefMut for NacosServer {
    fn deref_mut(&mut self) -> &mut ServerProcess {
        &mut self.process
    }
}

crate::server_control_through_deref!(NacosServer);
