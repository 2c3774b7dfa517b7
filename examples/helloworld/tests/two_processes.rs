//! helloworld's server and client as two processes against each real backend: the same
//! binary, only the URL changes. The client's calls over HTTP and gRPC succeed; when the
//! server stops (SIGTERM: deregister, drain, stop) the client sees it gone.

use std::time::Duration;

use test_support::{
    exits_successfully, interrupt, lines_match_all, run_id, spawn_program, terminate,
};

const WITHIN: Duration = Duration::from_secs(30);
const BIN: &str = env!("CARGO_BIN_EXE_helloworld");

async fn server_and_client(url: &str) {
    let name = format!("helloworld{}", run_id());
    let (mut server, mut served) = spawn_program(
        BIN,
        &[
            "--registry",
            url,
            "--name",
            &name,
            "server",
            "--drain",
            "200ms",
        ],
    );
    lines_match_all(
        &mut served,
        WITHIN,
        "the server starts",
        &[&|l: &str| l.starts_with("serving")],
    )
    .await;
    let (mut client, mut calls) = spawn_program(
        BIN,
        &[
            "--registry",
            url,
            "--name",
            &name,
            "client",
            "--interval",
            "200ms",
        ],
    );
    lines_match_all(
        &mut calls,
        WITHIN,
        "calls succeed",
        &[
            &|l: &str| l == "[http] SayHello welcome go-kratos!",
            &|l: &str| l == "[grpc] SayHello welcome go-kratos!",
        ],
    )
    .await;

    terminate(&server);
    lines_match_all(
        &mut served,
        WITHIN,
        "the server stops",
        &[&|l: &str| l == "stopped"],
    )
    .await;
    exits_successfully(&mut server, WITHIN).await;
    lines_match_all(
        &mut calls,
        WITHIN,
        "the client sees it gone",
        &[
            &|l: &str| l.starts_with("[http] error: no http instance"),
            &|l: &str| l.starts_with("[grpc] error: no grpc instance"),
        ],
    )
    .await;

    // Ctrl-C stops the client.
    interrupt(&client);
    exits_successfully(&mut client, WITHIN).await;
}

/// The README's first command: both sides in one process; Ctrl-C stops it (the server half
/// deregisters and stops, the client half ends).
#[tokio::test]
async fn memory_in_one_process_stops_on_ctrl_c() {
    let (mut both, mut lines) = spawn_program(BIN, &[]);
    lines_match_all(
        &mut lines,
        WITHIN,
        "calls succeed",
        &[
            &|l: &str| l == "[http] SayHello welcome go-kratos!",
            &|l: &str| l == "[grpc] SayHello welcome go-kratos!",
        ],
    )
    .await;
    interrupt(&both);
    lines_match_all(
        &mut lines,
        WITHIN,
        "the server half stops",
        &[&|l: &str| l == "stopped"],
    )
    .await;
    exits_successfully(&mut both, WITHIN).await;
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
