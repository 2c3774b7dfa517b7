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

mod cluster_support;
mod support;

use cluster_support::*;
use test_support::nacos_cluster::NacosCluster;
use test_support::netns::Net;
use test_support::{
    describe_from, eventually, one_cluster_at_a_time, Cluster, CLUSTER_SLACK, INSTANCES,
};
use tokio::time::Instant;

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
