//! helloworld's server and client as two processes against each real backend: the same
//! binary, only the URL changes. The client's calls over HTTP and gRPC succeed; when the
//! server stops (SIGTERM: deregister, drain, stop) the client sees it gone.

use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::time::{timeout, Instant};

const WITHIN: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_helloworld");

fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{}{nanos:x}", std::process::id())
}

fn spawn(args: &[&str]) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("REGISTRY_URL")
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run helloworld");
    let stdout = child.stdout.take().expect("piped stdout");
    (child, BufReader::new(stdout).lines())
}

/// Reads lines until every one of `wanted` has been seen.
async fn see_all(
    lines: &mut Lines<BufReader<ChildStdout>>,
    what: &str,
    wanted: &[&dyn Fn(&str) -> bool],
) {
    let deadline = Instant::now() + WITHIN;
    let mut seen = vec![false; wanted.len()];
    let mut last = Vec::new();
    while seen.iter().any(|s| !s) {
        match timeout(
            deadline.saturating_duration_since(Instant::now()),
            lines.next_line(),
        )
        .await
        {
            Ok(Ok(Some(line))) => {
                for (i, want) in wanted.iter().enumerate() {
                    seen[i] |= want(&line);
                }
                last.push(line);
                if last.len() > 6 {
                    last.remove(0);
                }
            }
            other => panic!("{what}: {other:?}; last lines: {last:?}"),
        }
    }
}

async fn server_and_client(url: &str) {
    let name = format!("helloworld{}", run_id());
    let (mut server, mut served) = spawn(&[
        "--registry",
        url,
        "--name",
        &name,
        "server",
        "--drain",
        "200ms",
    ]);
    see_all(
        &mut served,
        "the server starts",
        &[&|l: &str| l.starts_with("serving")],
    )
    .await;
    let (_client, mut calls) = spawn(&[
        "--registry",
        url,
        "--name",
        &name,
        "client",
        "--interval",
        "200ms",
    ]);
    see_all(
        &mut calls,
        "calls succeed",
        &[
            &|l: &str| l == "[http] SayHello welcome go-kratos!",
            &|l: &str| l == "[grpc] SayHello welcome go-kratos!",
        ],
    )
    .await;

    let pid = server.id().expect("the server runs").to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(status.success());
    see_all(
        &mut served,
        "the server stops",
        &[&|l: &str| l == "stopped"],
    )
    .await;
    let exit = timeout(WITHIN, server.wait())
        .await
        .expect("the server exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    see_all(
        &mut calls,
        "the client sees it gone",
        &[
            &|l: &str| l.starts_with("[http] error: no http instance"),
            &|l: &str| l.starts_with("[grpc] error: no grpc instance"),
        ],
    )
    .await;
}

#[tokio::test]
async fn memory_in_one_process() {
    let (_both, mut lines) = spawn(&[]);
    see_all(
        &mut lines,
        "calls succeed",
        &[
            &|l: &str| l == "[http] SayHello welcome go-kratos!",
            &|l: &str| l == "[grpc] SayHello welcome go-kratos!",
        ],
    )
    .await;
}

#[tokio::test]
async fn etcd() {
    server_and_client(&format!("etcd://127.0.0.1:2379/helloworld-{}", run_id())).await;
}

#[tokio::test]
async fn consul() {
    server_and_client("consul://127.0.0.1:8500?deregister_after=1m").await;
}

#[tokio::test]
async fn zookeeper() {
    server_and_client(&format!("zk://127.0.0.1:2181/helloworld-{}", run_id())).await;
}

#[tokio::test]
async fn nacos() {
    server_and_client(&format!(
        "nacos://127.0.0.1:8848?namespace=helloworld-{}",
        run_id()
    ))
    .await;
}
