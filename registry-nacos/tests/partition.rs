//! An rnacos cluster cut by a partition: 3 nodes, each on a host of a network of the test's
//! own (test-support's `Net`: a network namespace per host, the nodes on hosts 1 to 3, the
//! clients on host 0, which reaches every node), started by `NacosCluster::start_in`. The
//! clients' node is cut off from the other two nodes, not from its clients, then healed;
//! `FaultCase::check` asserts the final truth from the heal on (every instance listed exactly
//! once, within the expiry plus back-off, and still so two expiries later). See
//! `tests/cluster.rs` for how rnacos keeps ephemeral instances (each node those of its own
//! clients, copied to the others, which drop a node's copies once it has been silent for
//! 15 s, checked every 3 s).
//!
//! A test binary of its own: nacos-sdk runs its connections on a runtime of its own, one
//! per process, whose threads are started by the first client and stay in that thread's
//! network namespace. Here the first client is made in host 0's namespace (`Net::run`); in
//! a process whose first client was made outside (`tests/cluster.rs`), a client made in
//! host 0 would connect from the machine's own namespace, and reach no node.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registry, WatchEvent};
use registry_nacos::{Config, NacosRegistry};
use test_support::nacos_cluster::{NacosCluster, NODE_TIMEOUT};
use test_support::netns::Net;
use test_support::{
    describe_from, eventually, one_cluster_at_a_time, Cluster, FaultCase, WatchLog, CLUSTER_SLACK,
    INSTANCES, SERVICE,
};
use tokio::time::Instant;

/// How long the copies of a dead node's clients' instances stay listed on the other nodes:
/// rnacos' node timeout, plus its check period (3 s).
const EXPIRY: Duration = Duration::from_secs(NODE_TIMEOUT.as_secs() + 3);
/// The longest pause in the clients' retries: the registration's check (every 3 s) finds
/// the connection gone, nacos-sdk reconnects 2 s later, and 4 s after that when the first
/// attempt fails too (a node of a rolling restart still starting).
const BACKOFF: Duration = Duration::from_secs(8);
/// The options of every client.
const OPTIONS: &str = "?namespace=public";
/// The Nacos service holding [`SERVICE`]'s instances (their endpoints are gRPC).
const SERVICE_GRPC: &str = "svc.grpc";

async fn connect(url: &str) -> registry_core::Result<NacosRegistry> {
    NacosRegistry::connect(Config::from_url(url)?).await
}

/// A client connected to `node`: nacos-sdk starts on a server of the URL at random, so
/// this connects until one lands there (closing the others).
async fn connect_on(cluster: &NacosCluster, url: &str, node: usize) -> NacosRegistry {
    for _ in 0..40 {
        let before = cluster.connections();
        let client = connect(url).await.expect("connect");
        let after = cluster.connections();
        let on: Vec<usize> = (0..cluster.len())
            .filter(|&i| after[i] > before[i])
            .collect();
        if on == [node] {
            return client;
        }
        let _ = client.close().await;
    }
    panic!("no client landed on node {node} in 40 attempts");
}

/// The nodes this process holds connections to, for the messages.
fn placement(cluster: &NacosCluster) -> String {
    let connections = cluster.connections();
    (0..cluster.len())
        .filter(|&i| connections[i] > 0)
        .map(|i| format!("node {i}: {} connection(s)", connections[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many healthy instances of the Nacos service `service` a node lists (HTTP open API);
/// `None` when it does not answer.
async fn healthy_on(cluster: &NacosCluster, node: usize, service: &str) -> Option<usize> {
    let answer = reqwest::Client::new()
        .get(format!("{}/nacos/v1/ns/instance/list", cluster.http(node)))
        .query(&[
            ("serviceName", service),
            ("groupName", "DEFAULT_GROUP"),
            ("namespaceId", "public"),
            ("healthyOnly", "true"),
        ])
        .timeout(Duration::from_secs(1))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = answer.json().await.ok()?;
    Some(body["hosts"].as_array()?.len())
}

/// The case, with the owner and the watching client both on `node`; returns once every node
/// lists the instances (rnacos answers a registration before it copies it to the others).
async fn prepare(label: &str, cluster: &NacosCluster, node: usize) -> FaultCase<NacosRegistry> {
    let url = cluster.url(OPTIONS);
    let owner = connect_on(cluster, &url, node).await;
    let watching = connect_on(cluster, &url, node).await;
    let case = FaultCase::prepare(label, owner, watching, EXPIRY, BACKOFF).await;
    let registered = Instant::now();
    eventually(
        Duration::from_secs(10),
        "every node lists the instances",
        || async {
            let mut all = true;
            for node in 0..cluster.len() {
                all &= healthy_on(cluster, node, SERVICE_GRPC).await == Some(INSTANCES);
            }
            all
        },
    )
    .await;
    println!(
        "[cluster] {label}: every node listed the instances {:.2} s after the watcher did",
        registered.elapsed().as_secs_f64()
    );
    case
}

/// A watcher of [`SERVICE`] through the watching client, once it lists every instance.
async fn follow(case: &FaultCase<NacosRegistry>) -> WatchLog {
    let mut log = WatchLog::follow(case.watching().watch(SERVICE).await.expect("watch"));
    let truth = case.watching().get_service(SERVICE).await.expect("list");
    assert_eq!(truth.len(), INSTANCES, "{truth:?}");
    log.reaches(&truth, test_support::START_DEADLINE).await;
    log
}

/// The lists short of an instance the watcher delivered from `began` on.
fn short_lists(log: &WatchLog, began: Instant) -> usize {
    log.events_since(began)
        .iter()
        .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if l.len() < INSTANCES))
        .count()
}

/// The hosts of the partition case's nodes (node `i` on host `i + 1`); the clients run on
/// host 0, which reaches every node.
const NODE_HOSTS: [usize; 3] = [1, 2, 3];

/// Whether every node of `nodes` lists `count` healthy instances of the clients' service.
async fn all_list(cluster: &NacosCluster, nodes: &[usize], count: usize) -> bool {
    for &node in nodes {
        if healthy_on(cluster, node, SERVICE_GRPC).await != Some(count) {
            return false;
        }
    }
    true
}

/// The clients' node (a follower) is cut off from the other two nodes, not from the
/// clients: it keeps serving them, and keeps the owner's instances, while the other two,
/// unable to hear from it, drop their copies once it has been silent for 15 s (checked
/// every 3 s): a client of theirs sees no instance meanwhile (the registry as a whole holds
/// them on one node only). After the heal, every node lists every instance again, exactly
/// once, and `FaultCase::check` asserts it from the heal on. In a network of the test's
/// own (`Net`): the clients on host 0, the nodes on hosts 1 to 3.
#[test]
fn the_clients_node_cut_off() {
    let net = Net::create(4);
    net.run(0, || async {
        let _one = one_cluster_at_a_time().await;
        support::init_logs();
        let cluster = NacosCluster::start_in(&net, &NODE_HOSTS).await;
        let leader = cluster.leader().await;
        let node = (leader + 1) % cluster.len();
        let others: Vec<usize> = (0..cluster.len()).filter(|&i| i != node).collect();
        let all: Vec<usize> = (0..cluster.len()).collect();
        let label = "Nacos, the clients' node cut off";
        let mut case = prepare(label, &cluster, node).await;
        let log = follow(&case).await;

        let began = Instant::now();
        case.fault_begins();
        net.isolate(NODE_HOSTS[node], others.iter().map(|&i| NODE_HOSTS[i]));
        eventually(
            EXPIRY + CLUSTER_SLACK,
            "the other nodes drop the cut-off node's instances",
            || all_list(&cluster, &others, 0),
        )
        .await;
        let dropped = began.elapsed();
        // The cut-off node still lists them, for its clients.
        assert_eq!(
            healthy_on(&cluster, node, SERVICE_GRPC).await,
            Some(INSTANCES),
            "{label}: the cut-off node lists the owner's instances"
        );
        net.heal();
        case.fault_ends();
        let healed = Instant::now();
        eventually(
            EXPIRY + BACKOFF + CLUSTER_SLACK,
            "every node lists every instance again",
            || all_list(&cluster, &all, INSTANCES),
        )
        .await;
        let back = healed.elapsed();
        println!(
            "[cluster] {label}: node {node} (a follower, both clients on it) cut off from \
             nodes {others:?} (node {leader} led); they dropped its instances {:.2} s after \
             the cut, it kept them; healed {:.2} s after the cut: every node listed every \
             instance again {:.2} s after the heal",
            dropped.as_secs_f64(),
            healed.saturating_duration_since(began).as_secs_f64(),
            back.as_secs_f64()
        );
        let url = cluster.url(OPTIONS);
        case.check(|| connect(&url)).await;
        println!(
            "[cluster] {label}: the clients now on {}; a watcher of the watching client saw \
             {} list(s) short of an instance:{}",
            placement(&cluster),
            short_lists(&log, began),
            describe_from(began, &log.events_since(began))
        );
    });
}
