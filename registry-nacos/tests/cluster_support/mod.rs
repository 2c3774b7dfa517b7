//! What the rnacos cluster cases share (`tests/cluster.rs`, and `tests/partition.rs`, a test
//! binary of its own): the clients' options and timings, putting a client on a chosen node,
//! asking a node what it lists, and the fault case with every node listing its instances.

#![allow(dead_code)] // each test file uses part of it

use std::time::Duration;

use registry_core::{Discovery, Registry, WatchEvent};
use registry_nacos::{Config, NacosRegistry};
use test_support::nacos_cluster::{NacosCluster, NODE_TIMEOUT};
use test_support::{eventually, Cluster, FaultCase, WatchLog, INSTANCES, SERVICE};
use tokio::time::Instant;

/// How long the copies of a dead node's clients' instances stay listed on the other nodes:
/// rnacos' node timeout, plus its check period (3 s).
pub const EXPIRY: Duration = Duration::from_secs(NODE_TIMEOUT.as_secs() + 3);
/// The longest pause in the clients' retries: the registration's check (every 3 s) finds
/// the connection gone, nacos-sdk reconnects 2 s later, and 4 s after that when the first
/// attempt fails too (a node of a rolling restart still starting).
pub const BACKOFF: Duration = Duration::from_secs(8);
/// The options of every client.
pub const OPTIONS: &str = "?namespace=public";
/// The Nacos service holding [`SERVICE`]'s instances (their endpoints are gRPC).
pub const SERVICE_GRPC: &str = "svc.grpc";

pub async fn connect(url: &str) -> registry_core::Result<NacosRegistry> {
    NacosRegistry::connect(Config::from_url(url)?).await
}

/// A client connected to `node`: nacos-sdk starts on a server of the URL at random, so
/// this connects until one lands there (closing the others).
pub async fn connect_on(cluster: &NacosCluster, url: &str, node: usize) -> NacosRegistry {
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
pub fn placement(cluster: &NacosCluster) -> String {
    let connections = cluster.connections();
    (0..cluster.len())
        .filter(|&i| connections[i] > 0)
        .map(|i| format!("node {i}: {} connection(s)", connections[i]))
        .collect::<Vec<_>>()
        .join(", ")
}

/// How many healthy instances of the Nacos service `service` a node lists (HTTP open API);
/// `None` when it does not answer.
pub async fn healthy_on(cluster: &NacosCluster, node: usize, service: &str) -> Option<usize> {
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
pub async fn prepare(label: &str, cluster: &NacosCluster, node: usize) -> FaultCase<NacosRegistry> {
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
pub async fn follow(case: &FaultCase<NacosRegistry>) -> WatchLog {
    let mut log = WatchLog::follow(case.watching().watch(SERVICE).await.expect("watch"));
    let truth = case.watching().get_service(SERVICE).await.expect("list");
    assert_eq!(truth.len(), INSTANCES, "{truth:?}");
    log.reaches(&truth, test_support::START_DEADLINE).await;
    log
}

/// The lists short of an instance the watcher delivered from `began` on.
pub fn short_lists(log: &WatchLog, began: Instant) -> usize {
    log.events_since(began)
        .iter()
        .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if l.len() < INSTANCES))
        .count()
}
