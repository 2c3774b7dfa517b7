//! Against a real etcd of the test's own: while the registry is unreachable the resolver keeps
//! the last known instances (and the balancer keeps picking them); once the registry is back
//! and says there are none, calls fail fast.

use std::sync::Arc;
use std::time::Duration;

use registry_client::{ClientError, HttpBalancer, Options, Strategy};
use registry_core::{Discovery, ServiceInstance};
use test_support::{eventually, EtcdServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_known_instances_while_the_registry_is_away() {
    let mut server = EtcdServer::start().await;
    let url = format!(
        "{}/client?ttl=30s&timeout=1s&connect_timeout=1s",
        server.url()
    );
    let owner = registry::connect(&url).await.expect("connect");
    let me = ServiceInstance::builder("a", "svc")
        .endpoint("http://10.0.0.1:80")
        .build()
        .expect("instance");
    owner.register(&me).await.expect("register");

    let discovery: Arc<dyn Discovery> = registry::connect(&url).await.expect("connect");
    let balancer = HttpBalancer::new(
        discovery,
        "discovery:///svc",
        Options::default(),
        Strategy::RoundRobin,
    )
    .await
    .expect("balancer");
    assert_eq!(balancer.pick().expect("a pick").key(), "10.0.0.1:80");

    server.kill();
    // The registry is gone for a while: picks keep the last known instance.
    for _ in 0..20 {
        assert_eq!(
            balancer.pick().expect("the last known instance").key(),
            "10.0.0.1:80"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    server.restart().await;
    eventually(
        Duration::from_secs(20),
        "deregister once etcd is back",
        || async { owner.deregister(&me).await.is_ok() },
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "calls fail fast once the registry says none",
        || async { matches!(balancer.pick(), Err(ClientError::NoInstances { .. })) },
    )
    .await;
}
