//! What a registration and a list cost on the wire, counted by a proxy between the registry
//! and a ZooKeeper server of the test's own: a new registration is one `create` (its parents
//! are made only when the create says they are missing), an update of a node the session
//! holds is one `setData`, and a list reads its children's data in a few multi-reads, not one
//! read per child; and the ownership rules hold on the short path too: a node another session
//! put in place of ours is left alone. The holds of a service's registrations share one watch
//! of the service: they send no request of their own until a node of theirs is deleted, and
//! then only that node's hold checks it and writes it again; the watch goes with the
//! service's last registration, and is set again after a reconnection (each node checked
//! once). Where the server has no persistent watches (the proxy answers as ZooKeeper before
//! 3.6 does), each registration watches its node on its own.

mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_core::{Discovery, Error, Registrar, RegistrationState, Registry, ServiceInstance};
use registry_zookeeper::{Config, ZkRegistry};
use support::{lists, ZkServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zookeeper_client::{Acls, Client, CreateMode, Stat};

const WITHIN: Duration = Duration::from_secs(20);

/// ZooKeeper's op codes of the writes and reads a registration may send.
const CREATE: i32 = 1;
const DELETE: i32 = 2;
const EXISTS: i32 = 3;
const GET_DATA: i32 = 4;
const SET_DATA: i32 = 5;
const PING: i32 = 11;
const MULTI: i32 = 14;
const CREATE2: i32 = 15;
const REMOVE_WATCHES: i32 = 18;
const MULTI_READ: i32 = 22;
const GET_EPHEMERALS: i32 = 103;
const ADD_WATCH: i32 = 106;

/// The op codes of the requests that went through the proxy, in order (pings, the
/// connect request and watch bookkeeping included; tests pick what they count).
type Seen = Arc<Mutex<Vec<i32>>>;

/// A TCP proxy to `server` that records the op code of every request a client sends.
async fn proxy(server: String) -> (String, Seen) {
    proxy_with(server, false).await
}

/// The same; with `old_server`, it answers a persistent watch request (`addWatch`) as a
/// server before ZooKeeper 3.6 answers a request it does not know (its
/// `UnimplementedRequestProcessor`): once the server answered the requests sent before it,
/// the error `Unimplemented`, and the connection closed; what the client sent after it is
/// lost. The session lives on: the client connects again.
async fn proxy_with(server: String, old_server: bool) -> (String, Seen) {
    let (address, seen, _) = start_proxy(server, old_server).await;
    (address, seen)
}

/// The connections of a proxy: aborting them cuts the clients off (they connect again).
type Connections = Arc<Mutex<Vec<tokio::task::AbortHandle>>>;

/// Cuts every connection through the proxy.
fn cut(connections: &Connections) {
    for connection in connections.lock().expect("lock").drain(..) {
        connection.abort();
    }
}

async fn start_proxy(server: String, old_server: bool) -> (String, Seen, Connections) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("address").to_string();
    let seen = Seen::default();
    let record = seen.clone();
    let connections = Connections::default();
    let tasks = connections.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(upstream) = TcpStream::connect(&server).await else {
                continue;
            };
            let (mut client_read, client_write) = client.into_split();
            let (mut server_read, mut server_write) = upstream.into_split();
            let client_write = Arc::new(tokio::sync::Mutex::new(client_write));
            // Answers (not notifications) the server sent, connect response included.
            let (answered_tx, mut answered) = tokio::sync::watch::channel(0usize);
            let record = record.clone();
            let to_client = client_write.clone();
            let answers = tokio::spawn(async move {
                // Frames: a 4-byte length, then the answer; every one after the connect
                // response starts with xid (-1: a notification).
                let mut first = true;
                while let Some((length, frame)) = read_frame(&mut server_read).await {
                    let mut client = to_client.lock().await;
                    if client.write_all(&length).await.is_err()
                        || client.write_all(&frame).await.is_err()
                    {
                        return;
                    }
                    if first || frame.get(..4) != Some(&(-1i32).to_be_bytes()[..]) {
                        answered_tx.send_modify(|n| *n += 1);
                    }
                    first = false;
                }
            });
            let requests = tokio::spawn(async move {
                // Frames: a 4-byte length, then the request; the first is the connect request
                // (no header), every later one starts with xid and op code.
                let mut sent = 0usize;
                while let Some((length, frame)) = read_frame(&mut client_read).await {
                    if sent > 0 && frame.len() >= 8 {
                        let op = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
                        record.lock().expect("lock").push(op);
                        if old_server && op == ADD_WATCH {
                            let _ = answered.wait_for(|n| *n >= sent).await;
                            let mut reply = 16i32.to_be_bytes().to_vec();
                            reply.extend_from_slice(&frame[..4]); // xid
                            reply.extend_from_slice(&0i64.to_be_bytes()); // zxid
                            reply.extend_from_slice(&(-6i32).to_be_bytes()); // Unimplemented
                            let mut client = client_write.lock().await;
                            let _ = client.write_all(&reply).await;
                            let _ = client.shutdown().await;
                            return;
                        }
                    }
                    sent += 1;
                    if server_write.write_all(&length).await.is_err()
                        || server_write.write_all(&frame).await.is_err()
                    {
                        return;
                    }
                }
            });
            let mut tasks = tasks.lock().expect("lock");
            tasks.push(answers.abort_handle());
            tasks.push(requests.abort_handle());
        }
    });
    (address, seen, connections)
}

/// Reads one length-prefixed frame: its length bytes and the frame.
async fn read_frame(from: &mut (impl AsyncReadExt + Unpin)) -> Option<([u8; 4], Vec<u8>)> {
    let mut length = [0u8; 4];
    from.read_exact(&mut length).await.ok()?;
    let mut frame = vec![0u8; u32::from_be_bytes(length) as usize];
    from.read_exact(&mut frame).await.ok()?;
    Some((length, frame))
}

/// The writes and data reads among the requests recorded since `from`.
fn writes_since(seen: &Seen, from: usize) -> Vec<&'static str> {
    seen.lock().expect("lock")[from..]
        .iter()
        .filter_map(|op| match *op {
            CREATE | CREATE2 => Some("create"),
            DELETE => Some("delete"),
            GET_DATA => Some("getData"),
            SET_DATA => Some("setData"),
            MULTI => Some("multi"),
            MULTI_READ => Some("multiRead"),
            _ => None,
        })
        .collect()
}

/// Every request recorded since `from` but pings, by name (the op code where it has none).
fn requests_since(seen: &Seen, from: usize) -> Vec<String> {
    seen.lock().expect("lock")[from..]
        .iter()
        .filter(|op| **op != PING)
        .map(|op| match *op {
            CREATE | CREATE2 => "create".into(),
            DELETE => "delete".into(),
            EXISTS => "exists".into(),
            GET_DATA => "getData".into(),
            SET_DATA => "setData".into(),
            REMOVE_WATCHES => "removeWatches".into(),
            GET_EPHEMERALS => "getEphemerals".into(),
            ADD_WATCH => "addWatch".into(),
            other => other.to_string(),
        })
        .collect()
}

fn recorded(seen: &Seen) -> usize {
    seen.lock().expect("lock").len()
}

fn instance(id: &str, version: &str) -> ServiceInstance {
    ServiceInstance::builder(id, "svc")
        .version(version)
        .endpoint("http://127.0.0.1:8080")
        .build()
        .expect("instance")
}

async fn connect(address: &str) -> ZkRegistry {
    connect_with(address, "10s").await
}

async fn connect_with(address: &str, session_timeout: &str) -> ZkRegistry {
    let url = format!("zk://{address}/trips?session_timeout={session_timeout}&connect_timeout=2s");
    ZkRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect")
}

/// Deletes a's node with `raw` and waits until the registry's `session` writes it again (a
/// new node); b's node must then be the very node it was (`before_b`), never rewritten.
async fn a_deleted_is_written_again_and_b_left(raw: &Client, session: i64, before_b: &Stat) {
    let (_, before_a) = raw.get_data("/trips/svc/a").await.expect("a's node");
    raw.delete("/trips/svc/a", None).await.expect("delete a");
    support::eventually(WITHIN, "a's node written again", || async {
        matches!(
            raw.check_stat("/trips/svc/a").await,
            Ok(Some(stat)) if stat.ephemeral_owner == session && stat.czxid > before_a.czxid
        )
    })
    .await;
    let (_, after_b) = raw.get_data("/trips/svc/b").await.expect("b's node");
    assert_eq!(
        (after_b.czxid, after_b.mzxid),
        (before_b.czxid, before_b.mzxid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registration_is_one_create_and_an_update_one_set_data() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen) = proxy(server.address()).await;
    let registry = connect(&address).await;

    // The first instance of a service: its create finds no parent, which is made then.
    let a = instance("a", "v1");
    let from = recorded(&seen);
    registry.register(&a).await.expect("register a");
    let writes = writes_since(&seen, from);
    assert_eq!(writes.first(), Some(&"create"), "{writes:?}");
    assert_eq!(writes.last(), Some(&"create"), "{writes:?}");

    // A new id under the existing parent: one create, nothing else written or read.
    let b = instance("b", "v1");
    let from = recorded(&seen);
    registry.register(&b).await.expect("register b");
    assert_eq!(writes_since(&seen, from), ["create"]);

    // Updates of a node this session holds: one setData each.
    for version in ["v2", "v3"] {
        let from = recorded(&seen);
        registry
            .register(&instance("b", version))
            .await
            .expect("update b");
        assert_eq!(
            writes_since(&seen, from),
            ["setData"],
            "update to {version}"
        );
    }
    lists(&registry, "svc", &[a.clone(), instance("b", "v3")], WITHIN).await;

    // Deregistered, then registered again: a create again (nothing held to set).
    registry.deregister(&a).await.expect("deregister a");
    let from = recorded(&seen);
    registry.register(&a).await.expect("register a again");
    assert_eq!(writes_since(&seen, from), ["create"]);
    registry.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_put_in_place_of_ours_is_left_alone_by_the_next_write() {
    support::init_logs();
    let server = ZkServer::start().await;
    let registry = connect(&server.address()).await;
    let ours = instance("x", "v1");
    registry.register(&ours).await.expect("register");
    let mut status = registry.registration("svc", "x").expect("held");

    // Another client deletes our node and creates its own in one transaction: a node at the
    // same path and at the same version as ours.
    let other = Client::connect(&server.address())
        .await
        .expect("raw client");
    let ephemeral = CreateMode::Ephemeral.with_acls(Acls::anyone_all());
    let mut replace = other.new_multi_writer();
    replace.add_delete("/trips/svc/x", None).expect("delete op");
    replace
        .add_create("/trips/svc/x", b"theirs", &ephemeral)
        .expect("create op");
    replace.commit().await.expect("replace our node");

    // The registration is lost, and writing it again is refused: the node is theirs.
    let state = tokio::time::timeout(
        WITHIN,
        status.wait_for(|s| matches!(s, RegistrationState::Lost { attempt, .. } if *attempt >= 1)),
    )
    .await
    .expect("lost, and a write refused")
    .expect("still held");
    assert!(
        matches!(
            &state,
            RegistrationState::Lost {
                error: Error::Conflict { .. },
                ..
            }
        ),
        "{state:?}"
    );
    // An update through the registry is refused too.
    let err = registry
        .register(&instance("x", "v2"))
        .await
        .expect_err("their node");
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    let (data, stat) = other.get_data("/trips/svc/x").await.expect("theirs");
    assert_eq!(
        (data.as_slice(), stat.ephemeral_owner, stat.version),
        (&b"theirs"[..], other.session_id().0, 0)
    );
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_reads_its_children_in_a_few_multi_reads() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen) = proxy(server.address()).await;
    let registry = connect(&address).await;

    // 250 instances written straight to the server (pipelined creates).
    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    let persistent = CreateMode::Persistent.with_acls(Acls::anyone_all());
    raw.mkdir("/trips/many", &persistent).await.expect("parent");
    let expected: Vec<ServiceInstance> = (0..250)
        .map(|i| {
            ServiceInstance::builder(format!("i{i:03}"), "many")
                .endpoint(format!("http://10.0.0.{}:8080", i % 250 + 1))
                .build()
                .expect("instance")
        })
        .collect();
    let nodes: Vec<(String, Vec<u8>)> = expected
        .iter()
        .map(|i| (format!("/trips/many/{}", i.id), i.to_json().into_bytes()))
        .collect();
    let creating: Vec<_> = nodes
        .iter()
        .map(|(path, data)| raw.create(path, data, &persistent))
        .collect();
    for create in creating {
        create.await.expect("create");
    }

    let from = recorded(&seen);
    let listed = registry.get_service("many").await.expect("get_service");
    assert!(listed == expected, "every instance listed");
    let reads = writes_since(&seen, from);
    assert!(!reads.contains(&"getData"), "no read per child: {reads:?}");
    let multi_reads = reads.iter().filter(|r| **r == "multiRead").count();
    assert!((1..=3).contains(&multi_reads), "{reads:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holds_of_a_service_send_no_request_of_their_own() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen) = proxy(server.address()).await;
    // Held nodes are checked every third of the session timeout: here every 2/3 s.
    let registry = connect_with(&address, "2s").await;
    let tasks = tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks();

    // The first registration of the service sets the service's watch, once.
    let first = recorded(&seen);
    registry
        .register(&instance("a", "v1"))
        .await
        .expect("register a");
    let from = recorded(&seen);
    let set = requests_since(&seen, first);
    assert_eq!(set.first().map(String::as_str), Some("addWatch"), "{set:?}");
    assert_eq!(
        set.iter().filter(|r| *r == "addWatch").count(),
        1,
        "{set:?}"
    );

    // New ids, updates and deregistrations: their writes, and nothing else, through two
    // periodic checks (one getEphemerals each for the whole service).
    let ids = ["b", "c", "d", "e"];
    for id in ids {
        registry
            .register(&instance(id, "v1"))
            .await
            .expect("register");
    }
    for id in ids {
        registry
            .register(&instance(id, "v2"))
            .await
            .expect("update");
    }
    support::eventually(WITHIN, "two periodic checks of the held nodes", || {
        let checks = requests_since(&seen, from)
            .iter()
            .filter(|r| *r == "getEphemerals")
            .count();
        async move { checks >= 2 }
    })
    .await;
    for id in ids {
        registry
            .deregister(&instance(id, "v2"))
            .await
            .expect("deregister");
    }
    let sent: Vec<String> = requests_since(&seen, from)
        .into_iter()
        .filter(|r| r != "getEphemerals")
        .collect();
    let expected: Vec<&str> = [["create"; 4], ["setData"; 4], ["delete"; 4]].concat();
    assert_eq!(sent, expected);

    // The service's last registration goes: its watch goes with it (removed from the
    // server), and no task of it is left.
    let last = recorded(&seen);
    registry
        .deregister(&instance("a", "v1"))
        .await
        .expect("deregister a");
    support::eventually(WITHIN, "the service's watch removed", || {
        let removed = requests_since(&seen, last).contains(&"removeWatches".to_owned());
        async move { removed }
    })
    .await;
    support::eventually(WITHIN, "no task left of the registrations", || {
        let alive = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        async move { alive == tasks }
    })
    .await;
    registry.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_deleted_from_outside_is_written_again_and_no_other() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen) = proxy(server.address()).await;
    let registry = connect(&address).await;
    let (a, b) = (instance("a", "v1"), instance("b", "v1"));
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");
    let session = registry.session_id().expect("a session");
    let mut status_b = registry.registration("svc", "b").expect("b held");
    // Seen from here on: a change of b's state after this is a change.
    status_b
        .wait_for(RegistrationState::is_registered)
        .await
        .expect("b registered");

    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    let (_, before_b) = raw.get_data("/trips/svc/b").await.expect("b's node");
    // The raw client's calls do not go through the proxy: only the registry's are recorded.
    let from = recorded(&seen);
    a_deleted_is_written_again_and_b_left(&raw, session, &before_b).await;
    lists(&registry, "svc", &[a.clone(), b.clone()], WITHIN).await;
    let written = writes_since(&seen, from);
    assert_eq!(
        written.iter().filter(|w| **w == "create").count(),
        1,
        "{written:?}"
    );
    assert!(
        !written.iter().any(|w| ["setData", "delete"].contains(w)),
        "{written:?}"
    );

    // b's node and registration were left alone: the same node, never seen lost.
    let (_, after_b) = raw.get_data("/trips/svc/b").await.expect("b's node");
    assert_eq!(
        (after_b.czxid, after_b.mzxid, after_b.ephemeral_owner),
        (before_b.czxid, before_b.mzxid, session)
    );
    assert!(
        tokio::time::timeout(Duration::ZERO, status_b.changed())
            .await
            .is_err(),
        "b's registration changed state: {:?}",
        status_b.get()
    );
    assert!(status_b.get().is_registered());
    registry.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_persistent_watches_each_registration_watches_its_node() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen) = proxy_with(server.address(), true).await;
    let registry = connect(&address).await;

    // The first write is lost with the connection the server closes after refusing the
    // watch, and is written again; then the session asks no more.
    let (a, b) = (instance("a", "v1"), instance("b", "v1"));
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");
    registry
        .register(&instance("b", "v2"))
        .await
        .expect("update b");
    let session = registry.session_id().expect("a session");
    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    for id in ["a", "b"] {
        let stat = raw.check_stat(&format!("/trips/svc/{id}")).await;
        assert!(
            matches!(&stat, Ok(Some(stat)) if stat.ephemeral_owner == session),
            "{id}: {stat:?}"
        );
    }
    let (data, before_b) = raw.get_data("/trips/svc/b").await.expect("b's node");
    assert_eq!(data, instance("b", "v2").to_json().into_bytes());
    let asked = requests_since(&seen, 0);
    assert_eq!(
        asked.iter().filter(|r| *r == "addWatch").count(),
        1,
        "{asked:?}"
    );

    // Each registration watches its node on its own: a node deleted from outside is
    // written again, and its neighbour is left alone.
    a_deleted_is_written_again_and_b_left(&raw, session, &before_b).await;
    let asked = requests_since(&seen, 0);
    assert_eq!(
        asked.iter().filter(|r| *r == "addWatch").count(),
        1,
        "{asked:?}"
    );
    drop(registry);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_reconnection_the_watch_is_set_again_and_each_node_checked() {
    support::init_logs();
    let server = ZkServer::start().await;
    let (address, seen, connections) = start_proxy(server.address(), false).await;
    let registry = connect(&address).await;
    let (a, b) = (instance("a", "v1"), instance("b", "v1"));
    registry.register(&a).await.expect("register a");
    registry.register(&b).await.expect("register b");
    let session = registry.session_id().expect("a session");

    // The connection is cut; the client connects again in the same session. Its persistent
    // watches are not set again by the client, and events may have been lost: the service's
    // watch is set again, and each registration checks its node.
    let from = recorded(&seen);
    cut(&connections);
    support::eventually(WITHIN, "the watch set again and both nodes checked", || {
        let sent = requests_since(&seen, from);
        let set = sent.iter().filter(|r| *r == "addWatch").count();
        let checked = sent.iter().filter(|r| *r == "exists").count();
        async move { set == 1 && checked == 2 }
    })
    .await;
    assert_eq!(registry.session_id(), Some(session), "the same session");

    // The watch set again sees a deletion from outside: that node is written again.
    let raw = Client::connect(&server.address())
        .await
        .expect("raw client");
    let (_, before_b) = raw.get_data("/trips/svc/b").await.expect("b's node");
    a_deleted_is_written_again_and_b_left(&raw, session, &before_b).await;
    registry.close().await.expect("close");
}
