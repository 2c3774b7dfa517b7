//! ZooKeeper's own fault tests, against a real server of each test's own. The conformance
//! suite's shared fault cases (`server_restarted_with_its_data`, `server_wiped`,
//! `server_paused_past_the_ttl`, `deleted_from_outside`) assert that the registration comes
//! back, through a fresh client and a watcher from before the fault; these assert what is
//! ZooKeeper's: a quick restart keeps the session and nothing flaps; a lost session is
//! replaced and the node is held by the owner's new session; nodes of earlier sessions: ours
//! are replaced, another live session's are never touched.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Error, Registrar};
use registry_zookeeper::{Config, ZkRegistry};
use support::{instance, watcher_reaches, ZkServer};
use zookeeper_client::{Acls, Client, CreateMode};

/// Long enough for a JVM restart inside it.
const SESSION: Duration = Duration::from_secs(8);
const WITHIN: Duration = Duration::from_secs(20);

/// Connects to the test's server. The connect timeout is generous: four JVMs start at once
/// on two cores when the tests run in parallel, and a first session can take seconds.
async fn connect(server: &ZkServer, session: Duration) -> ZkRegistry {
    let url = server.url(&format!(
        "/faults?session_timeout={}ms&connect_timeout=5s",
        session.as_millis()
    ));
    ZkRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect to the test's server")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_restart_keeps_the_session_and_nothing_flaps() {
    support::init_logs();
    let mut server = ZkServer::start().await;
    let owner = connect(&server, SESSION).await;
    let watching = connect(&server, SESSION).await;
    let a = instance("svc", "a");
    owner.register(&a).await.expect("register");
    let mut watcher = watching.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;
    let session = owner.session_id();

    server.restart().await;

    let b = instance("svc", "b");
    support::eventually(WITHIN, "register after the restart", || async {
        owner.register(&b).await.is_ok()
    })
    .await;
    // Every list the watcher delivers on the way holds `a`: it never left.
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let list = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .expect("the watcher delivers [a, b]")
            .expect("the watcher works");
        assert!(
            list.contains(&a),
            "a left the list during a quick restart: {list:?}"
        );
        if list == [a.clone(), b.clone()] {
            break;
        }
    }
    assert_eq!(owner.session_id(), session, "the session survived");
    assert_eq!(owner.node_session(&a), session);
}

async fn a_new_session_holds_the_node_after(fault: impl AsyncFnOnce(&mut ZkServer)) {
    support::init_logs();
    let mut server = ZkServer::start().await;
    let session = Duration::from_secs(2);
    let owner = connect(&server, session).await;
    let a = instance("svc", "a");
    owner.register(&a).await.expect("register");
    let before = owner.session_id();

    fault(&mut server).await;

    // Held by a new session of the owner, the one its registration reports.
    support::eventually(WITHIN, "re-created in a new session", || async {
        let now = owner.session_id();
        now.is_some() && now != before && owner.node_session(&a) == now
    })
    .await;
    let raw = zookeeper_client::Client::connect(&server.address())
        .await
        .expect("raw client");
    let (_, stat) = raw.get_data("/faults/svc/a").await.expect("the node");
    assert_eq!(Some(stat.ephemeral_owner), owner.session_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_past_the_session_timeout() {
    a_new_session_holds_the_node_after(async |server: &mut ZkServer| {
        server.pause();
        // The fault itself: frozen for longer than the 2 s session.
        tokio::time::sleep(Duration::from_secs(5)).await;
        server.resume();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_with_its_data_wiped() {
    a_new_session_holds_the_node_after(async |server: &mut ZkServer| {
        server.wipe_and_restart().await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_an_earlier_session_of_ours_is_replaced_another_live_one_is_not() {
    support::init_logs();
    let server = ZkServer::start().await;
    let registry = connect(&server, SESSION).await;
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let parents = CreateMode::Persistent.with_acls(Acls::anyone_all());

    // A live session of another client holds `taken`: never touched.
    let other = Client::connect(&server.address())
        .await
        .expect("raw client");
    other.mkdir("/faults/svc", &parents).await.expect("parents");
    other
        .create("/faults/svc/taken", b"theirs", &ephemeral)
        .await
        .expect("create");
    let err = registry
        .register(&instance("svc", "taken"))
        .await
        .expect_err("a node of another live session");
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let (data, stat) = other
        .get_data("/faults/svc/taken")
        .await
        .expect("still there");
    assert_eq!(
        (data.as_slice(), stat.ephemeral_owner),
        (&b"theirs"[..], other.session_id().0)
    );

    // A node left by an earlier session of ours (still alive on the server, as right after a
    // session of ours ended) is replaced.
    let earlier = Client::connect(&server.address())
        .await
        .expect("raw client");
    earlier
        .create("/faults/svc/stale", b"old", &ephemeral)
        .await
        .expect("create");
    registry.adopt_earlier_session(earlier.session_id().0);
    let stale = instance("svc", "stale");
    registry
        .register(&stale)
        .await
        .expect("replace our stale node");
    let (_, stat) = other.get_data("/faults/svc/stale").await.expect("replaced");
    assert_eq!(Some(stat.ephemeral_owner), registry.session_id());
    assert_eq!(
        registry.get_service("svc").await.expect("list"),
        vec![stale]
    );
}
