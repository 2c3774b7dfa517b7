//! Interop with go-kratos through a real ZooKeeper: a node created with the raw client in the
//! exact kratos shape is discovered; ours, read back raw, has kratos' path and JSON. Also:
//! what is not an instance is skipped, and data changes are seen by watchers.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, ServiceInstance};
use registry_zookeeper::{Config, ZkRegistry};
use serde_json::json;
use support::{lists, watcher_reaches, ZkServer};
use zookeeper_client::{Acls, Client, CreateMode};

const WITHIN: Duration = Duration::from_secs(10);
const KRATOS_VALUE: &str = r#"{"id":"8fc08b88-e37b-11ec-bb6f-88d7f62323b4","name":"helloworld","version":"","metadata":null,"endpoints":["http://192.168.56.1:8080","grpc://192.168.56.1:9000"]}"#;
const KRATOS_PATH: &str = "/microservices/helloworld/8fc08b88-e37b-11ec-bb6f-88d7f62323b4";

async fn ours(server: &ZkServer) -> ZkRegistry {
    ZkRegistry::connect(Config::from_url(&server.url("")).expect("URL"))
        .await
        .expect("connect")
}

async fn raw(server: &ZkServer) -> Client {
    Client::connect(&server.address())
        .await
        .expect("raw client")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kratos_node_is_discovered() {
    support::init_logs();
    let server = ZkServer::start().await;
    let registry = ours(&server).await;
    let mut watcher = registry.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut watcher, &[], WITHIN).await;

    // kratos: persistent empty parents, an ephemeral node holding the JSON.
    let raw = raw(&server).await;
    raw.mkdir(
        "/microservices/helloworld",
        &CreateMode::Persistent.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("parents");
    raw.create(
        KRATOS_PATH,
        KRATOS_VALUE.as_bytes(),
        &CreateMode::Ephemeral.with_acls(Acls::anyone_all()),
    )
    .await
    .expect("create the kratos node");

    let expected = ServiceInstance::builder("8fc08b88-e37b-11ec-bb6f-88d7f62323b4", "helloworld")
        .endpoint("http://192.168.56.1:8080")
        .endpoint("grpc://192.168.56.1:9000")
        .build()
        .expect("instance");
    lists(
        &registry,
        "helloworld",
        std::slice::from_ref(&expected),
        WITHIN,
    )
    .await;
    watcher_reaches(&mut watcher, std::slice::from_ref(&expected), WITHIN).await;

    // Its owner goes (kratos' session closes): the watcher sees the list become empty.
    drop(raw);
    watcher_reaches(&mut watcher, &[], WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_node_has_the_kratos_path_and_shape() {
    support::init_logs();
    let server = ZkServer::start().await;
    let registry = ours(&server).await;
    let me = ServiceInstance::builder("id-1", "helloworld")
        .version("v2")
        .metadata("zone", "eu-1")
        .endpoint("grpc://127.0.0.1:9000?isSecure=false")
        .build()
        .expect("instance");
    registry.register(&me).await.expect("register");

    let raw = raw(&server).await;
    let (data, stat) = raw
        .get_data("/microservices/helloworld/id-1")
        .await
        .expect("the kratos path");
    assert_eq!(
        Some(stat.ephemeral_owner),
        registry.session_id(),
        "ephemeral, ours"
    );
    let value: serde_json::Value = serde_json::from_slice(&data).expect("JSON");
    assert_eq!(
        value,
        json!({"id": "id-1", "name": "helloworld", "version": "v2", "metadata": {"zone": "eu-1"},
               "endpoints": ["grpc://127.0.0.1:9000?isSecure=false"]})
    );
    let (_, parent) = raw
        .get_data("/microservices/helloworld")
        .await
        .expect("parent");
    assert_eq!(parent.ephemeral_owner, 0, "parents are persistent");

    registry.deregister(&me).await.expect("deregister");
    assert!(raw
        .check_stat("/microservices/helloworld/id-1")
        .await
        .expect("stat")
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_changes_are_seen_and_foreign_nodes_skipped() {
    support::init_logs();
    let server = ZkServer::start().await;
    let registry = ours(&server).await;
    let watching = ours(&server).await;
    let mut me = support::instance("svc", "a");
    registry.register(&me).await.expect("register");
    let mut watcher = watching.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&me), WITHIN).await;

    // Re-registering with new metadata changes the node's data: the watcher sees it.
    me.metadata.insert("zone".into(), "b".into());
    registry.register(&me).await.expect("re-register");
    watcher_reaches(&mut watcher, std::slice::from_ref(&me), WITHIN).await;

    // Someone else's garbage under the service is skipped; a later change still arrives.
    let raw = raw(&server).await;
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    raw.create("/microservices/svc/garbage", b"not json", &open)
        .await
        .expect("create");
    raw.create(
        "/microservices/svc/other",
        br#"{"id":"other","name":"elsewhere","endpoints":[]}"#,
        &open,
    )
    .await
    .expect("create");
    let b = support::instance("svc", "b");
    registry.register(&b).await.expect("register");
    watcher_reaches(&mut watcher, &[me.clone(), b.clone()], WITHIN).await;
    lists(&registry, "svc", &[me.clone(), b.clone()], WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn digest_protects_what_we_create() {
    support::init_logs();
    let server = ZkServer::start().await;
    let url = server.url("/secure?digest=alice:s3cret-pw");
    let registry = ZkRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect with a digest");
    assert!(!format!("{registry:?}").contains("s3cret-pw"));
    let me = support::instance("svc", "a");
    registry.register(&me).await.expect("register");

    // The same user reads it; anyone else is refused, with a typed, permanent error.
    let same = ZkRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect");
    assert_eq!(
        same.get_service("svc").await.expect("list"),
        vec![me.clone()]
    );
    let anonymous = ZkRegistry::connect(Config::from_url(&server.url("/secure")).expect("URL"))
        .await
        .expect("connect");
    let err = anonymous
        .get_service("svc")
        .await
        .expect_err("read without the digest");
    assert!(
        matches!(err, registry_core::Error::PermissionDenied { .. }),
        "{err:?}"
    );
    let raw = raw(&server).await;
    assert!(matches!(
        raw.get_data("/secure/svc/a").await,
        Err(zookeeper_client::Error::NoAuth)
    ));
}
