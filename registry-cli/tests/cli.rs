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

/// A handle on `url` for a test's own registrations.
async fn handle(url: &str) -> std::sync::Arc<dyn registry::Registry> {
    registry::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e} (is the server up? scripts/backends up)"))
}

/// The id of instance `short` of `service`: ids are unique across services, as Consul's
/// agent requires (it keys services by id alone) and other tests run beside these.
fn id(service: &str, short: &str) -> String {
    format!("{short}-{service}")
}

fn member(service: &str, short: &str, version: &str) -> registry::ServiceInstance {
    registry::ServiceInstance::builder(id(service, short), service)
        .version(version)
        .metadata("zone", "a")
        .endpoint("http://127.0.0.1:18090")
        .build()
        .expect("valid")
}

/// Runs `diff` until its exit code is `code`, and returns its stdout.
async fn diff_until(args: &[&str], code: i32, what: &str) -> String {
    let deadline = Instant::now() + WITHIN;
    loop {
        let (got, stdout, stderr) = output(args).await;
        if got == code {
            return stdout;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: exit {got}, wanted {code}: {stdout}{stderr}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `diff` between etcd and Consul for one service, and between two etcd namespaces for
/// every service: what only one lists, what differs; exit 1, then 0 once they agree.
#[tokio::test]
async fn diff_tells_what_differs() {
    let run = run_id();
    let service = format!("diff{run}");
    let etcd = format!("etcd://127.0.0.1:2379/cli-diff-{run}");
    let consul = "consul://127.0.0.1:8500?deregister_after=1m".to_owned();
    let (in_etcd, in_consul) = (handle(&etcd).await, handle(&consul).await);
    for i in ["i1", "i2", "i3"] {
        in_etcd
            .register(&member(&service, i, "v1"))
            .await
            .expect("register");
    }
    in_consul
        .register(&member(&service, "i1", "v1"))
        .await
        .expect("register");
    in_consul
        .register(&member(&service, "i3", "v2"))
        .await
        .expect("register");
    in_consul
        .register(&member(&service, "i4", "v1"))
        .await
        .expect("register");

    let args = ["diff", etcd.as_str(), consul.as_str(), service.as_str()];
    let shown = diff_until(&args, 1, "the registries differ").await;
    for line in [
        format!("--- {etcd}"),
        format!("+++ {consul}"),
        format!("- {service} {}", id(&service, "i2")),
        format!("+ {service} {}", id(&service, "i4")),
        format!(
            "~ {service} {}: version \"v1\" → \"v2\"",
            id(&service, "i3")
        ),
    ] {
        assert!(shown.lines().any(|l| l == line), "{line:?} in:\n{shown}");
    }
    assert!(
        !shown.contains(&id(&service, "i1")),
        "i1 is alike in both:\n{shown}"
    );
    let (code, json, _) = output(&["--json", "diff", &etcd, &consul, &service]).await;
    assert_eq!(code, 1);
    let json: serde_json::Value = serde_json::from_str(json.trim()).expect("JSON");
    assert_eq!(json["only_a"][0]["id"], id(&service, "i2"), "{json}");
    assert_eq!(json["only_b"][0]["id"], id(&service, "i4"), "{json}");
    assert_eq!(json["changed"][0]["b"]["version"], "v2", "{json}");
    assert_eq!(json["same"], 1, "{json}");

    in_etcd
        .deregister(&member(&service, "i2", "v1"))
        .await
        .expect("deregister");
    in_consul
        .deregister(&member(&service, "i4", "v1"))
        .await
        .expect("deregister");
    in_consul
        .register(&member(&service, "i3", "v1"))
        .await
        .expect("update");
    let shown = diff_until(&args, 0, "the registries agree").await;
    assert!(shown.is_empty(), "nothing printed when they agree: {shown}");

    // Every service of two etcd namespaces.
    let other = format!("etcd://127.0.0.1:2379/cli-diff-other-{run}");
    let in_other = handle(&other).await;
    let all = ["diff", etcd.as_str(), other.as_str()];
    let shown = diff_until(&all, 1, "a namespace with instances and an empty one").await;
    assert!(
        shown.contains(&format!("- {service} {}", id(&service, "i1"))),
        "{shown}"
    );
    for i in ["i1", "i3"] {
        in_other
            .register(&member(&service, i, "v1"))
            .await
            .expect("register");
    }
    diff_until(&all, 0, "the namespaces agree").await;

    let (code, _, err) = output(&["diff", &etcd, "redis://127.0.0.1:6379"]).await;
    assert_eq!(code, 2, "a bad URL is an error, not a difference: {err}");
    for h in [in_etcd, in_consul, in_other] {
        h.close().await.expect("close");
    }
}

/// `mirror` from etcd into Consul: copies carry the mark and follow their originals; an id
/// Consul lists as its own is left alone; a mirror the other way copies nothing back; SIGTERM
/// removes every copy and nothing else.
#[tokio::test]
async fn mirror_keeps_marked_copies_until_stopped() {
    let run = run_id();
    let service = format!("mirror{run}");
    let etcd = format!("etcd://127.0.0.1:2379/cli-mirror-{run}");
    let consul = "consul://127.0.0.1:8500?deregister_after=1m".to_owned();
    let (in_etcd, in_consul) = (handle(&etcd).await, handle(&consul).await);
    let m1 = member(&service, "m1", "v1");
    let m2 = member(&service, "m2", "v1");
    in_etcd.register(&m1).await.expect("register m1");
    in_etcd.register(&m2).await.expect("register m2");
    // m2 is registered in Consul by its own service too (as a multi: URL does).
    in_consul
        .register(&m2)
        .await
        .expect("register m2 in Consul");

    let (mut mirror, mut said) = spawn_program(
        BIN,
        &["mirror", &etcd, &consul, &service, "--grace", "500ms"],
    );
    line_until(&mut said, "the mirror follows the service", |l| {
        l == format!("following {service}")
    })
    .await;
    line_until(&mut said, "m1 is copied", |l| {
        l == format!("copied {service} {}", id(&service, "m1"))
    })
    .await;
    let mut copy = m1.clone();
    copy.metadata
        .insert("registryctl-mirror".into(), etcd.clone());
    test_support::lists(
        in_consul.as_ref(),
        &service,
        &[copy.clone(), m2.clone()],
        WITHIN,
    )
    .await;

    // The copy follows its original.
    let m1_v2 = member(&service, "m1", "v2");
    in_etcd.register(&m1_v2).await.expect("update m1");
    line_until(&mut said, "m1's copy is updated", |l| {
        l == format!("updated {service} {}", id(&service, "m1"))
    })
    .await;
    let m3 = member(&service, "m3", "v1");
    in_etcd.register(&m3).await.expect("register m3");
    line_until(&mut said, "m3 is copied", |l| {
        l == format!("copied {service} {}", id(&service, "m3"))
    })
    .await;
    in_etcd.deregister(&m3).await.expect("deregister m3");
    line_until(&mut said, "m3's copy is removed", |l| {
        l.starts_with(&format!("removed {service} {}", id(&service, "m3")))
    })
    .await;
    let mut copy = m1_v2.clone();
    copy.metadata
        .insert("registryctl-mirror".into(), etcd.clone());
    test_support::lists(in_consul.as_ref(), &service, &[copy, m2.clone()], WITHIN).await;
    let shown = diff_until(
        &["diff", &etcd, &consul, &service],
        0,
        "a copy compares equal to its original",
    )
    .await;
    assert!(shown.is_empty(), "{shown}");

    // A mirror the other way copies nothing back: m1 in Consul is a copy, m2 is in etcd.
    let (mut back, mut back_said) = spawn_program(
        BIN,
        &["mirror", &consul, &etcd, &service, "--grace", "200ms"],
    );
    line_until(&mut back_said, "the reverse mirror follows", |l| {
        l == format!("following {service}")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await; // five times its grace
    terminate(&back);
    let mut back_lines = Vec::new();
    while let Ok(Ok(Some(line))) = timeout(WITHIN, back_said.next_line()).await {
        back_lines.push(line);
    }
    assert_eq!(back_lines, ["removed 0 copies"], "nothing was copied back");
    assert!(back.wait().await.expect("wait").success());

    // SIGTERM: every copy goes, the service's own registration stays.
    terminate(&mirror);
    line_until(&mut said, "the mirror removes its copies", |l| {
        l == "removed 1 copies"
    })
    .await;
    let exit = timeout(WITHIN, mirror.wait())
        .await
        .expect("the mirror exits")
        .expect("wait");
    assert!(exit.success(), "{exit:?}");
    test_support::lists(
        in_consul.as_ref(),
        &service,
        std::slice::from_ref(&m2),
        WITHIN,
    )
    .await;
    for h in [in_etcd, in_consul] {
        h.close().await.expect("close");
    }
}
