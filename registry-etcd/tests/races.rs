//! Registrations under concurrency, against a real etcd of the test's own: whatever the
//! interleaving, the key ends up holding the latest value, attached to the lease the
//! registration keeps alive.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, Registry, ServiceInstance};
use registry_etcd::{Config, EtcdRegistry};
use support::{instance, EtcdServer};

const TTL: Duration = Duration::from_secs(2);

async fn connect(server: &EtcdServer) -> EtcdRegistry {
    let url = format!("{}/races?ttl=2s", server.url());
    EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect")
}

fn version(i: usize) -> ServiceInstance {
    let mut v = instance("svc", "one");
    v.version = format!("v{i}");
    v
}

/// The lease the registration keeps, and the one the key is attached to.
async fn leases(server: &EtcdServer, registry: &EtcdRegistry, of: &ServiceInstance) -> (i64, i64) {
    let kept = registry.lease(of).expect("registered");
    let mut raw = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("raw client");
    let resp = raw.get("/races/svc/one", None).await.expect("raw get");
    (kept, resp.kvs().first().expect("the key exists").lease())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_registers_of_one_id_leave_one_kept_key() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let registry = connect(&server).await;
    let results = futures::future::join_all((0..8).map(|i| {
        let registry = &registry;
        async move { registry.register(&version(i)).await }
    }))
    .await;
    for result in results {
        result.expect("every concurrent register succeeds");
    }
    let (kept, attached) = leases(&server, &registry, &version(0)).await;
    assert_eq!(attached, kept, "the key is on the lease that is kept alive");
    // Past several TTLs: still there, on the same lease (no lease of a loser expired it).
    tokio::time::sleep(TTL * 3).await;
    let listed = registry.get_service("svc").await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(leases(&server, &registry, &version(0)).await, (kept, kept));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_in_a_row_end_with_the_last() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let registry = connect(&server).await;
    for i in 0..20 {
        registry.register(&version(i)).await.expect("register");
    }
    assert_eq!(
        registry.get_service("svc").await.expect("list"),
        vec![version(19)]
    );
    let (kept, attached) = leases(&server, &registry, &version(19)).await;
    assert_eq!(attached, kept);

    registry.deregister(&version(19)).await.expect("deregister");
    assert!(registry.get_service("svc").await.expect("list").is_empty());
    assert!(registry.registration("svc", "one").is_none());
}
