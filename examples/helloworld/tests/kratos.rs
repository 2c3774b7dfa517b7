//! The real go-kratos in the loop: the kratos helloworld of `interop/kratos` (kratos v2.8.3)
//! and of `interop/kratos-v3` (kratos v3.0.0), built by `scripts/kratos` and found through
//! `REGISTRY_RS_KRATOS_BIN` and `REGISTRY_RS_KRATOS_V3_BIN`, and ours, in the same registry,
//! on every backend, for each kratos version:
//!
//! - a kratos server, our client through `discovery:///NAME`: HTTP and gRPC calls succeed;
//!   when the Go server stops, our client reports that no instance is left;
//! - our server, kratos' client through `discovery:///NAME`: HTTP and gRPC calls succeed;
//!   when our server stops, kratos' client stops reaching it;
//! - one Go and one Rust server in the same service: our balanced client reaches both, and
//!   so does kratos' client.
//!
//! Each server names itself in every answer (`x-served-by`), and each client prints it.

use std::time::Duration;

use test_support::{
    exits_successfully, lines_match_all, run_id, spawn_program, terminate, OutputLines,
};
use tokio::process::Child;

const WITHIN: Duration = Duration::from_secs(30);
const RUST: &str = env!("CARGO_BIN_EXE_helloworld");

/// The kratos helloworld program named by `variable`; a test that cannot run it fails.
fn kratos(variable: &str) -> String {
    std::env::var(variable).unwrap_or_else(|_| {
        panic!("{variable} is not set: run scripts/test, or export REGISTRY_RS_KRATOS_BIN=$(scripts/kratos bin) REGISTRY_RS_KRATOS_V3_BIN=$(scripts/kratos bin v3)")
    })
}

/// Where both sides meet: the same registry, namespace and service name, in each side's URL
/// form.
struct Meeting {
    /// Our URL.
    rust: String,
    /// kratos' program's URL.
    go: String,
    name: String,
}

fn etcd() -> Meeting {
    let id = run_id();
    let url = format!("etcd://127.0.0.1:2379/kratos-{id}");
    Meeting {
        rust: url.clone(),
        go: url,
        name: format!("helloworld{id}"),
    }
}

fn consul() -> Meeting {
    Meeting {
        rust: "consul://127.0.0.1:8500?deregister_after=1m".into(),
        go: "consul://127.0.0.1:8500".into(),
        name: format!("helloworld{}", run_id()),
    }
}

fn zookeeper() -> Meeting {
    let id = run_id();
    let url = format!("zk://127.0.0.1:2181/kratos-{id}");
    Meeting {
        rust: url.clone(),
        go: url,
        name: format!("helloworld{id}"),
    }
}

/// rnacos on its usual port, or the Nacos at `REGISTRY_RS_NACOS_JAVA` (the real one, built and
/// started by `scripts/nacos-java up 18848`; not in CI).
fn nacos() -> Meeting {
    let id = run_id();
    let address =
        std::env::var("REGISTRY_RS_NACOS_JAVA").unwrap_or_else(|_| "127.0.0.1:8848".into());
    let url = format!("nacos://{address}?namespace=kratos-{id}");
    Meeting {
        rust: url.clone(),
        go: url,
        name: format!("helloworld{id}"),
    }
}

/// A server of either side, started and registered.
struct Server {
    child: Child,
    lines: OutputLines,
    /// Its endpoints, as its `serving NAME on http://A and grpc://B` line says.
    endpoints: [String; 2],
}

impl Server {
    async fn start(program: &str, url: &str, name: &str, id: &str) -> Server {
        Server::start_with(program, url, name, id, &[]).await
    }

    /// Starts a server; `extra` are more arguments of the kratos program's `server` command.
    async fn start_with(program: &str, url: &str, name: &str, id: &str, extra: &[&str]) -> Server {
        let (child, mut lines) = if program == RUST {
            spawn_program(
                program,
                &[
                    "--registry",
                    url,
                    "--name",
                    name,
                    "server",
                    "--id",
                    id,
                    "--drain",
                    "200ms",
                ],
            )
        } else {
            let mut args = vec!["server", "--registry", url, "--name", name, "--id", id];
            args.extend_from_slice(extra);
            spawn_program(program, &args)
        };
        let serving = std::sync::Mutex::new(String::new());
        lines_match_all(
            &mut lines,
            WITHIN,
            &format!("the server {id} starts"),
            &[&|l: &str| {
                let found = l.starts_with("serving");
                if found {
                    *serving.lock().expect("not poisoned") = l.to_owned();
                }
                found
            }],
        )
        .await;
        let serving = serving.into_inner().expect("not poisoned");
        let endpoint = |scheme: &str| {
            let start = serving
                .find(&format!("{scheme}://"))
                .unwrap_or_else(|| panic!("no {scheme} endpoint in {serving:?}"));
            serving[start..]
                .split_whitespace()
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        Server {
            endpoints: [endpoint("http"), endpoint("grpc")],
            child,
            lines,
        }
    }

    /// SIGTERM: it deregisters and stops, and exits successfully.
    async fn stop(mut self) {
        terminate(&self.child);
        lines_match_all(
            &mut self.lines,
            WITHIN,
            "the server stops",
            &[&|l: &str| l == "stopped"],
        )
        .await;
        exits_successfully(&mut self.child, WITHIN).await;
    }
}

/// A client of either side, calling every 200 ms.
fn client(program: &str, url: &str, name: &str) -> (Child, OutputLines) {
    if program == RUST {
        spawn_program(
            program,
            &[
                "--registry",
                url,
                "--name",
                name,
                "client",
                "--interval",
                "200ms",
            ],
        )
    } else {
        spawn_program(
            program,
            &[
                "client",
                "--registry",
                url,
                "--name",
                name,
                "--interval",
                "200ms",
            ],
        )
    }
}

async fn calls_succeed(lines: &mut OutputLines, what: &str) {
    lines_match_all(
        lines,
        WITHIN,
        what,
        &[
            &|l: &str| l == "[http] SayHello welcome go-kratos!",
            &|l: &str| l == "[grpc] SayHello welcome go-kratos!",
        ],
    )
    .await;
}

async fn served_by_each(lines: &mut OutputLines, what: &str, ids: [&str; 2]) {
    let [a, b] = ids.map(|id| {
        (
            format!("[http] served-by {id}"),
            format!("[grpc] served-by {id}"),
        )
    });
    lines_match_all(
        lines,
        WITHIN,
        what,
        &[
            &|l: &str| l == a.0,
            &|l: &str| l == a.1,
            &|l: &str| l == b.0,
            &|l: &str| l == b.1,
        ],
    )
    .await;
}

/// A kratos server, our client: what kratos wrote reads back through our API as the instance
/// kratos meant; calls succeed; when the Go server stops, our client says no instance is
/// left.
async fn kratos_server_our_client(go: String, meeting: Meeting) {
    let id = format!("go-{}", meeting.name);
    let server = Server::start_with(
        &go,
        &meeting.go,
        &meeting.name,
        &id,
        &["--version", "v1", "--metadata", "zone=a"],
    )
    .await;
    reads_back(&meeting, &id, &server.endpoints).await;
    let (_client, mut calls) = client(RUST, &meeting.rust, &meeting.name);
    calls_succeed(&mut calls, "our client calls the kratos server").await;
    server.stop().await;
    lines_match_all(
        &mut calls,
        WITHIN,
        "our client sees the kratos server gone",
        &[
            &|l: &str| l.starts_with("[http] error: no http instance"),
            &|l: &str| l.starts_with("[grpc] error: no grpc instance"),
        ],
    )
    .await;
}

/// What the kratos server `id` wrote, read through our API: its endpoints, version and
/// metadata, and (except on Nacos, where kratos keeps no instance id and writes one Nacos
/// instance per endpoint) one instance of that id.
async fn reads_back(meeting: &Meeting, id: &str, endpoints: &[String; 2]) {
    let registry = registry::connect(&meeting.rust).await.expect("connect");
    let nacos = meeting.rust.starts_with("nacos:");
    let deadline = tokio::time::Instant::now() + WITHIN;
    let list = loop {
        let list = registry
            .get_service(&meeting.name)
            .await
            .expect("get_service");
        let mut found: Vec<&str> = list
            .iter()
            .flat_map(|i| i.endpoints.iter().map(String::as_str))
            .collect();
        found.sort_unstable();
        let mut wanted: Vec<&str> = endpoints.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        if found == wanted {
            break list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "what kratos wrote reads back with its endpoints {wanted:?}: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for instance in &list {
        assert_eq!(instance.name, meeting.name, "{instance:?}");
        assert_eq!(instance.version, "v1", "{instance:?}");
        assert_eq!(
            instance.metadata.get("zone").map(String::as_str),
            Some("a"),
            "{instance:?}"
        );
    }
    if !nacos {
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].id, id);
    }
    registry.close().await.expect("close");
}

/// Our server, a kratos client: calls succeed; when our server stops, kratos' client no
/// longer reaches it.
async fn our_server_kratos_client(go: String, meeting: Meeting) {
    let id = format!("rust-{}", meeting.name);
    let server = Server::start(RUST, &meeting.rust, &meeting.name, &id).await;
    let (_client, mut calls) = client(&go, &meeting.go, &meeting.name);
    calls_succeed(&mut calls, "the kratos client calls our server").await;
    server.stop().await;
    lines_match_all(
        &mut calls,
        WITHIN,
        "the kratos client no longer reaches our server",
        &[&|l: &str| l.starts_with("[http] error:"), &|l: &str| {
            l.starts_with("[grpc] error:")
        }],
    )
    .await;
}

/// A Go and a Rust server in one service: each side's balanced client reaches both.
async fn both_servers_both_clients(go: String, meeting: Meeting) {
    // Ids are unique per agent (Consul): named after the test's service.
    let ids = [
        format!("go-{}", meeting.name),
        format!("rust-{}", meeting.name),
    ];
    let go_server = Server::start(&go, &meeting.go, &meeting.name, &ids[0]).await;
    let rust_server = Server::start(RUST, &meeting.rust, &meeting.name, &ids[1]).await;
    let (_ours, mut ours) = client(RUST, &meeting.rust, &meeting.name);
    let (_theirs, mut theirs) = client(&go, &meeting.go, &meeting.name);
    let ids = [ids[0].as_str(), ids[1].as_str()];
    served_by_each(&mut ours, "our client reaches both servers", ids).await;
    served_by_each(&mut theirs, "the kratos client reaches both servers", ids).await;
    rust_server.stop().await;
    go_server.stop().await;
}

macro_rules! scenarios {
    ($variable:literal, $backend:ident) => {
        mod $backend {
            use crate::*;

            #[tokio::test]
            async fn kratos_server_our_client() {
                super::super::kratos_server_our_client(kratos($variable), $backend()).await;
            }

            #[tokio::test]
            async fn our_server_kratos_client() {
                super::super::our_server_kratos_client(kratos($variable), $backend()).await;
            }

            #[tokio::test]
            async fn both_servers_both_clients() {
                super::super::both_servers_both_clients(kratos($variable), $backend()).await;
            }
        }
    };
}

/// kratos v2.8.3 (`interop/kratos`).
mod v2 {
    scenarios!("REGISTRY_RS_KRATOS_BIN", etcd);
    scenarios!("REGISTRY_RS_KRATOS_BIN", consul);
    scenarios!("REGISTRY_RS_KRATOS_BIN", zookeeper);
    scenarios!("REGISTRY_RS_KRATOS_BIN", nacos);
}

/// kratos v3.0.0 (`interop/kratos-v3`).
mod v3 {
    scenarios!("REGISTRY_RS_KRATOS_V3_BIN", etcd);
    scenarios!("REGISTRY_RS_KRATOS_V3_BIN", consul);
    scenarios!("REGISTRY_RS_KRATOS_V3_BIN", zookeeper);
    scenarios!("REGISTRY_RS_KRATOS_V3_BIN", nacos);
}
