//! One handle holds two instances of one service and deregisters one: a client of its own
//! (another connection) lists exactly the other, which never leaves its list. On rnacos also
//! after the server restarts, when the registration's check and nacos-sdk's redo (the batch it
//! keeps) both write again: neither may bring the removed one back. (The store's own tests
//! check the redo alone, where nothing else writes again.)

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, Registry, ServiceInstance, Watcher};
use registry_nacos::{Config, NacosRegistry};
use support::{lists, watcher_reaches, NacosServer};
use tokio::time::Instant;

const WITHIN: Duration = Duration::from_secs(15);

/// nacos-sdk's redo sends what it keeps every 3 s after a reconnect, until the server takes
/// it; a removed instance it brought back would show within this (two rounds and the push).
const REDO_ROUNDS: Duration = Duration::from_secs(7);

async fn connect(url: &str) -> NacosRegistry {
    NacosRegistry::connect(Config::from_url(url).expect("URL"))
        .await
        .expect("connect")
}

/// The instance `id` of `name` at `10.0.0.{n}:9000`.
fn instance(name: &str, n: u8) -> ServiceInstance {
    ServiceInstance::builder(format!("id{n}"), name)
        .version("v1")
        .endpoint(format!("grpc://10.0.0.{n}:9000"))
        .build()
        .expect("instance")
}

/// Every list `watcher` shows for `within`, each of which must hold `b`, and none `a`.
async fn only_b_for(
    watcher: &mut Watcher,
    a: &ServiceInstance,
    b: &ServiceInstance,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while let Ok(next) = tokio::time::timeout_at(deadline, watcher.next()).await {
        let list = next.expect("the watcher failed");
        assert_eq!(
            *list,
            *std::slice::from_ref(b),
            "while only b is registered (a is {})",
            a.id
        );
    }
}

/// Registers a and b through one handle, deregisters a; a reader of its own must list b
/// alone, its watcher showing b all along.
async fn remove_one_of_two(
    url: &str,
) -> (NacosRegistry, NacosRegistry, Watcher, [ServiceInstance; 2]) {
    let service = "removal";
    let (a, b) = (instance(service, 1), instance(service, 2));
    let ours = connect(url).await;
    ours.register(&a).await.expect("register a");
    ours.register(&b).await.expect("register b");
    let reader = connect(url).await;
    let mut watcher = reader.watch(service).await.expect("watch");
    watcher_reaches(&mut watcher, &[a.clone(), b.clone()], WITHIN).await;

    ours.deregister(&a).await.expect("deregister a");
    // From the removal on, every list the reader is shown holds b (never an empty list, or
    // a and b again): b's record is never taken away on the way.
    let deadline = Instant::now() + WITHIN;
    loop {
        let next = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .expect("b alone, within 15 s");
        let list = next.expect("the watcher failed");
        assert!(list.contains(&b), "b left the list: {list:?}");
        if *list == [b.clone()] {
            break;
        }
    }
    lists(&reader, service, std::slice::from_ref(&b), WITHIN).await;
    (ours, reader, watcher, [a, b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rnacos_the_other_is_left_also_after_a_restart() {
    support::init_logs();
    let mut server = NacosServer::start().await;
    let url = server.url("namespace=public");
    let (ours, _reader, _, [a, b]) = remove_one_of_two(&url).await;

    // Empty after the restart; what is written again must be b alone.
    server.restart().await;
    let fresh = connect(&url).await;
    let mut watcher = fresh.watch("removal").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&b), WITHIN).await;
    only_b_for(&mut watcher, &a, &b, REDO_ROUNDS).await;
    assert_eq!(
        fresh.get_service("removal").await.expect("get"),
        std::slice::from_ref(&b)
    );
    drop(ours);
}

/// The real Nacos, where one runs (`scripts/nacos-java up 18848`, then
/// `REGISTRY_RS_NACOS_JAVA=127.0.0.1:18848`), in a namespace of this run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
async fn on_nacos_the_other_is_left() {
    support::init_logs();
    let address = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
    let namespace = format!("removal-{}", test_support::run_id());
    let url = format!("nacos://{address}?namespace={namespace}");
    let (ours, reader, _, _) = remove_one_of_two(&url).await;
    ours.close().await.expect("close");
    lists(&reader, "removal", &[], WITHIN).await;
}

/// Writes of one service through one handle are carried by shared batches when they come at
/// once: none may be lost on the way. 40 registrations at once, all listed; then 20 of them
/// deregistered at once while the other 20 are updated, and exactly the updated 20 listed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_of_one_service_at_once_all_land() {
    support::init_logs();
    let server = NacosServer::start().await;
    let url = server.url("namespace=public");
    let service = "at-once";
    let ours = connect(&url).await;
    let mut all: Vec<ServiceInstance> = (1..=40).map(|n| instance(service, n)).collect();
    // As lists come: by id.
    all.sort_by(|a, b| a.id.cmp(&b.id));
    futures::future::try_join_all(all.iter().map(|i| ours.register(i)))
        .await
        .expect("register 40 at once");
    let reader = connect(&url).await;
    lists(&reader, service, &all, WITHIN).await;

    let (gone, kept) = all.split_at(20);
    let updated: Vec<ServiceInstance> = kept
        .iter()
        .map(|i| {
            let mut i = i.clone();
            i.version = "v2".into();
            i
        })
        .collect();
    let removals = futures::future::try_join_all(gone.iter().map(|i| ours.deregister(i)));
    let updates = futures::future::try_join_all(updated.iter().map(|i| ours.register(i)));
    let (removed, written) = tokio::join!(removals, updates);
    removed.expect("deregister 20 at once");
    written.expect("update 20 at once");
    lists(&reader, service, &updated, WITHIN).await;
}
