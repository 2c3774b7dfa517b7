//! Interop with go-kratos through a real etcd: values written with the raw etcd client in the
//! exact kratos shape are discovered, and our registrations read back raw have kratos' key and
//! JSON shape. Also: what is under our prefix but is not an instance never breaks a reader.

mod support;

use std::time::Duration;

use etcd_client::{Client, GetOptions, PutOptions};
use registry_core::{Discovery, Registrar, ServiceInstance};
use registry_etcd::{Config, EtcdRegistry};
use serde_json::json;
use support::{lists, watcher_reaches, EtcdServer};

const WITHIN: Duration = Duration::from_secs(10);

/// The value captured from a kratos service (WIRE-FORMAT.md), byte for byte.
const KRATOS_VALUE: &str = r#"{"id":"8fc08b88-e37b-11ec-bb6f-88d7f62323b4","name":"helloworld","version":"","metadata":null,"endpoints":["http://192.168.56.1:8080","grpc://192.168.56.1:9000"]}"#;
const KRATOS_KEY: &str = "/microservices/helloworld/8fc08b88-e37b-11ec-bb6f-88d7f62323b4";

async fn raw(server: &EtcdServer) -> Client {
    Client::connect([server.endpoint()], None)
        .await
        .expect("raw etcd client")
}

/// Our registry with kratos' defaults: namespace `/microservices`.
async fn ours(server: &EtcdServer) -> EtcdRegistry {
    EtcdRegistry::connect(Config::from_url(&server.url()).expect("URL"))
        .await
        .expect("connect")
}

#[tokio::test]
async fn a_kratos_registration_is_discovered() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let mut raw = raw(&server).await;
    let registry = ours(&server).await;
    let mut watcher = registry.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut watcher, &[], WITHIN).await;

    let lease = raw.lease_grant(30, None).await.expect("lease").id();
    raw.put(
        KRATOS_KEY,
        KRATOS_VALUE,
        Some(PutOptions::new().with_lease(lease)),
    )
    .await
    .expect("put the kratos value");

    let expected = ServiceInstance::builder("8fc08b88-e37b-11ec-bb6f-88d7f62323b4", "helloworld")
        .endpoint("http://192.168.56.1:8080")
        .endpoint("grpc://192.168.56.1:9000")
        .build()
        .expect("instance");
    let found = registry
        .get_service("helloworld")
        .await
        .expect("get_service");
    assert_eq!(found, vec![expected.clone()]);
    assert_eq!(found[0].version, "");
    assert!(found[0].metadata.is_empty());
    assert_eq!(
        found[0].endpoint("grpc").expect("grpc endpoint").port(),
        9000
    );
    watcher_reaches(&mut watcher, std::slice::from_ref(&expected), WITHIN).await;

    // kratos deregisters by deleting the key.
    raw.delete(KRATOS_KEY, None).await.expect("delete");
    watcher_reaches(&mut watcher, &[], WITHIN).await;
}

#[tokio::test]
async fn our_registration_has_the_kratos_key_and_shape() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let mut raw = raw(&server).await;
    let registry = ours(&server).await;
    let me = ServiceInstance::builder("id-1", "helloworld")
        .version("v2")
        .metadata("zone", "eu-1")
        .endpoint("http://127.0.0.1:8000?isSecure=false")
        .endpoint("grpc://127.0.0.1:9000?isSecure=false")
        .build()
        .expect("instance");
    registry.register(&me).await.expect("register");

    let resp = raw
        .get("/microservices/helloworld/id-1", None)
        .await
        .expect("raw get");
    let kv = resp.kvs().first().expect("the kratos key exists");
    assert_ne!(kv.lease(), 0, "the key is attached to a lease");
    let value: serde_json::Value = serde_json::from_slice(kv.value()).expect("JSON");
    assert_eq!(
        value,
        json!({
            "id": "id-1",
            "name": "helloworld",
            "version": "v2",
            "metadata": {"zone": "eu-1"},
            "endpoints": ["http://127.0.0.1:8000?isSecure=false", "grpc://127.0.0.1:9000?isSecure=false"],
        })
    );
    let ttl = raw
        .lease_time_to_live(kv.lease(), None)
        .await
        .expect("lease TTL");
    assert_eq!(ttl.granted_ttl(), 15, "kratos' default TTL");

    registry.deregister(&me).await.expect("deregister");
    let resp = raw
        .get(
            "/microservices/helloworld/",
            Some(GetOptions::new().with_prefix()),
        )
        .await
        .expect("raw get");
    assert!(resp.kvs().is_empty(), "deregister deletes the key");
}

#[tokio::test]
async fn foreign_values_under_the_prefix_are_skipped() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let mut raw = raw(&server).await;
    let registry = ours(&server).await;
    let me = support::instance("helloworld", "good");
    registry.register(&me).await.expect("register");
    let mut watcher = registry.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&me), WITHIN).await;

    // Not JSON, an instance of another service, a JSON without endpoints' required fields,
    // and a service whose name merely starts like ours.
    raw.put("/microservices/helloworld/garbage", "not json", None)
        .await
        .expect("put");
    raw.put(
        "/microservices/helloworld/other",
        r#"{"id":"other","name":"someone-else","version":"","metadata":null,"endpoints":[]}"#,
        None,
    )
    .await
    .expect("put");
    raw.put("/microservices/helloworld/empty", "{}", None)
        .await
        .expect("put");
    let lookalike = support::instance("helloworld2", "x");
    raw.put("/microservices/helloworld2/x", lookalike.to_json(), None)
        .await
        .expect("put");

    // The watcher keeps going: a valid change after the garbage arrives.
    let second = support::instance("helloworld", "second");
    registry.register(&second).await.expect("register");
    watcher_reaches(&mut watcher, &[me.clone(), second.clone()], WITHIN).await;
    lists(
        &registry,
        "helloworld",
        &[me.clone(), second.clone()],
        WITHIN,
    )
    .await;

    // A watcher of another client, which lists while the garbage is there, starts fine too.
    let other = ours(&server).await;
    let mut late = other.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut late, &[me.clone(), second.clone()], WITHIN).await;
    registry.deregister(&second).await.expect("deregister");
    watcher_reaches(&mut late, std::slice::from_ref(&me), WITHIN).await;
}
