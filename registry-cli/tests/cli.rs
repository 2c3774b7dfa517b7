//! `registryctl` against every real backend: the same commands, only the URL changes. One
//! process holds a registration, another watches, a third lists; SIGTERM to the holder
//! deregisters it and the watcher sees the list become empty.

use std::time::Duration;

use test_support::{lines_match_all, run_id, spawn_program, terminate, OutputLines};
use tokio::process::Command;
use tokio::time::{timeout, Instant};

const WITHIN: Duration = Duration::from_secs(20);
const BIN: &str = env!("CARGO_BIN_EXE_registryctl");

/// Reads lines until one satisfies `want`, failing after the deadline.
async fn line_until(lines: &mut OutputLines, what: &str, want: impl Fn(&str) -> bool) {
    lines_match_all(lines, WITHIN, what, &[&want]).await;
}

async fn output(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("REGISTRY_URL")
        .output()
        .await
        .expect("run registryctl");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs `args` until its JSON output satisfies `want`.
async fn json_until(args: &[&str], what: &str, want: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + WITHIN;
    loop {
        let (code, stdout, stderr) = output(args).await;
        assert_eq!(code, 0, "{what}: {stderr}");
        let value: serde_json::Value = serde_json::from_str(stdout.trim()).expect("JSON output");
        if want(&value) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: last output {value}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn round_trip(url: &str) {
    let service = format!("cli{}", run_id());
    let (mut watcher, mut watched) = spawn_program(BIN, &["-r", url, "--json", "watch", &service]);
    line_until(&mut watched, "the watcher's first list", |l| l == "[]").await;

    let (mut holder, mut held) = spawn_program(
        BIN,
        &[
            "-r",
            url,
            "register",
            "--name",
            &service,
            "--id",
            "i1",
            "--version",
            "v1",
            "--endpoint",
            "http://127.0.0.1:18081",
            "--meta",
            "zone=a",
        ],
    );
    line_until(&mut held, "the holder registers", |l| {
        l == format!("registered {service} i1")
    })
    .await;
    line_until(&mut watched, "the watcher sees the instance", |l| {
        l.contains(r#""id":"i1""#) && l.contains(r#""zone":"a""#)
    })
    .await;
    json_until(
        &["-r", url, "--json", "instances", &service],
        "instances lists it",
        |v| {
            v.as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["id"] == "i1" && a[0]["version"] == "v1")
        },
    )
    .await;
    json_until(
        &["-r", url, "--json", "services"],
        "services names it",
        |v| {
            v.as_array()
                .is_some_and(|a| a.iter().any(|s| s == service.as_str()))
        },
    )
    .await;
    let (code, table, _) = output(&["-r", url, "instances", &service]).await;
    assert_eq!(code, 0);
    assert!(table.starts_with("ID"), "a table with a header: {table}");
    assert!(table.contains("http://127.0.0.1:18081"), "{table}");

    // SIGTERM: the holder deregisters and exits cleanly; the watcher sees the empty list.
    terminate(&holder);
    line_until(&mut held, "the holder deregisters", |l| {
        l.starts_with("deregistered")
    })
    .await;
    let exit = timeout(WITHIN, holder.wait())
        .await
        .expect("the holder exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    line_until(&mut watched, "the watcher sees it gone", |l| l == "[]").await;
    watcher.start_kill().expect("stop the watcher");
}

#[tokio::test]
async fn etcd() {
    round_trip(&format!("etcd://127.0.0.1:2379/cli-{}", run_id())).await;
}

#[tokio::test]
async fn consul() {
    round_trip("consul://127.0.0.1:8500?deregister_after=1m").await;
}

#[tokio::test]
async fn zookeeper() {
    round_trip(&format!("zk://127.0.0.1:2181/cli-{}", run_id())).await;
}

#[tokio::test]
async fn nacos() {
    round_trip(&format!(
        "nacos://127.0.0.1:8848?namespace=cli-{}",
        run_id()
    ))
    .await;
}

#[tokio::test]
async fn clear_errors() {
    let (code, _, err) = output(&["-r", "etcd://127.0.0.1:2379:99/x", "services"]).await;
    assert_eq!(code, 2, "a bad URL is a permanent error: {err}");
    assert!(err.contains("invalid registry URL"), "{err}");

    let (code, _, err) = output(&["-r", "redis://127.0.0.1:6379", "services"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("etcd") && err.contains("memory"),
        "lists the schemes: {err}"
    );

    let (code, _, err) =
        output(&["-r", "etcd://127.0.0.1:1/x?connect_timeout=1s", "services"]).await;
    assert_eq!(code, 3, "an unreachable registry is temporary: {err}");
    assert!(err.contains("reachable"), "{err}");

    let (code, _, err) = output(&[
        "-r",
        "memory://",
        "register",
        "--name",
        "a b",
        "--id",
        "1",
        "--endpoint",
        "http://h:1",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("invalid name"), "{err}");
}
