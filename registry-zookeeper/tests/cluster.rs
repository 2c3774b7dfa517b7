//! ZooKeeper ensembles: a 3-server ensemble of each test's own (test-support's
//! `ZkEnsemble`), the registry URL naming every server. An owner registers three instances
//! with a short session timeout and another client watches them; then a server fails: the
//! leader, the server the owner is connected to, or each server in turn (a rolling
//! restart). After the fault, `FaultCase::check` asserts the final truth (through a client
//! connected after the fault and the watcher created before it: every instance listed
//! exactly once, within the session timeout plus back-off, and still so two session
//! timeouts later) and prints the time to converge.
//!
//! The client picks a server of the URL at random (zookeeper-client shuffles them), so the
//! server a client is connected to is found from the servers' side: the one whose `cons`
//! lists the client's session. The cases run one at a time (three JVMs each). The minority
//! partition (the owner's server cut off from the other two, yet alive and reachable by the
//! clients) runs in a network of its own (test-support's `Net`: a network namespace per
//! host).

mod support;

use std::time::Duration;

use registry_zookeeper::{Config, ZkRegistry};
use test_support::netns::Net;
use test_support::{eventually, one_cluster_at_a_time, Cluster, FaultCase, ZkEnsemble};

/// The session timeout of every client: the owner's instances go this long after it is cut
/// off.
const SESSION: Duration = Duration::from_secs(4);
/// The longest pause in the client's retries: a new session's back-off cap (5 s), and a
/// connection attempt (the connect timeout, 3 s).
const BACKOFF: Duration = Duration::from_secs(8);
/// The path and options of every client.
const OPTIONS: &str = "/cluster?session_timeout=4s&connect_timeout=3s";

async fn connect(url: &str) -> registry_core::Result<ZkRegistry> {
    ZkRegistry::connect(Config::from_url(url)?).await
}

async fn prepare(label: &str, url: &str) -> FaultCase<ZkRegistry> {
    let owner = connect(url).await.expect("connect the owner");
    let watching = connect(url).await.expect("connect the watching client");
    FaultCase::prepare(label, owner, watching, SESSION, BACKOFF)
        .await
        .held_by("session", ZkRegistry::node_session)
}

/// The server `client`'s session is connected to, waiting for the servers to list it.
async fn server_of(ensemble: &ZkEnsemble, client: &ZkRegistry) -> usize {
    let session = client.session_id().expect("a session");
    let mut found = None;
    eventually(
        Duration::from_secs(10),
        "a server lists the session",
        || {
            found = ensemble.member_holding(session);
            let listed = found.is_some();
            async move { listed }
        },
    )
    .await;
    found.expect("found")
}

/// The leader dies: the other two elect a new one; clients of the leader move to another
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut ensemble = ZkEnsemble::start(3).await;
    let url = ensemble.url(OPTIONS);
    let label = "ZooKeeper, the leader killed";
    let mut case = prepare(label, &url).await;
    let owner_on = server_of(&ensemble, case.owner()).await;
    let watcher_on = server_of(&ensemble, case.watching()).await;

    let leader = ensemble.leader().await;
    case.fault_begins();
    ensemble.kill(leader);
    case.fault_ends();
    let new_leader = ensemble.leader().await;
    println!(
        "[cluster] {label}: server {leader} (the leader) killed, the owner on server \
         {owner_on}, the watcher on server {watcher_on}; server {new_leader} leads now"
    );
    assert_ne!(new_leader, leader);
    case.check(|| connect(&url)).await;
}

/// The server the owner is connected to dies: the owner moves its session to another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_server_killed() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut ensemble = ZkEnsemble::start(3).await;
    let url = ensemble.url(OPTIONS);
    let label = "ZooKeeper, the owner's server killed";
    let mut case = prepare(label, &url).await;
    let watcher_on = server_of(&ensemble, case.watching()).await;

    let leader = ensemble.leader().await;
    let server = server_of(&ensemble, case.owner()).await;
    case.fault_begins();
    ensemble.kill(server);
    case.fault_ends();
    let leader_now = ensemble.leader().await;
    println!(
        "[cluster] {label}: server {server} (the owner's{}) killed, the watcher on server \
         {watcher_on}; server {leader_now} leads (server {leader} before)",
        if server == leader {
            ", the leader"
        } else {
            ", a follower"
        }
    );
    case.check(|| connect(&url)).await;
}

/// The server the owner is connected to freezes (SIGSTOP): it keeps its connections open
/// and answers nothing, as a host that hangs or drops off the network. The owner must notice
/// by itself (no answer to its pings) and move its session to another server before the
/// session times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_server_frozen() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut ensemble = ZkEnsemble::start(3).await;
    let url = ensemble.url(OPTIONS);
    let label = "ZooKeeper, the owner's server frozen";
    let mut case = prepare(label, &url).await;
    let watcher_on = server_of(&ensemble, case.watching()).await;

    let leader = ensemble.leader().await;
    let server = server_of(&ensemble, case.owner()).await;
    case.fault_begins();
    ensemble.pause(server);
    case.fault_ends();
    println!(
        "[cluster] {label}: server {server} (the owner's{}) frozen, the watcher on server \
         {watcher_on}",
        if server == leader {
            ", the leader"
        } else {
            ", a follower"
        }
    );
    case.check(|| connect(&url)).await;
    ensemble.resume(server);
}

/// Every server restarted in turn, each serving again before the next goes: the clients
/// move as their server goes, and the leadership moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut ensemble = ZkEnsemble::start(3).await;
    let url = ensemble.url(OPTIONS);
    let label = "ZooKeeper, a rolling restart";
    let mut case = prepare(label, &url).await;

    case.fault_begins();
    let mut steps = Vec::new();
    for server in 0..ensemble.len() {
        let leader = ensemble.leader().await;
        let owner_on = ensemble.member_holding(case.owner().session_id().unwrap_or(0));
        let started = tokio::time::Instant::now();
        ensemble.restart(server).await;
        steps.push(format!(
            "server {server}{}{} back after {:.2} s",
            if server == leader {
                " (the leader)"
            } else {
                ""
            },
            if owner_on == Some(server) {
                " (the owner's)"
            } else {
                ""
            },
            started.elapsed().as_secs_f64()
        ));
    }
    case.fault_ends();
    println!("[cluster] {label}: {}", steps.join("; "));
    case.check(|| connect(&url)).await;
}

/// The server the owner is connected to is cut off from the other two by a network
/// partition, yet runs and stays reachable by the clients: a minority that cannot serve. It
/// loses its quorum (a follower within `syncLimit` ticks, a leader within as long), closes
/// its clients' connections and stops serving; the owner moves its session to a server of the
/// majority before the session times out. The clients run on host 0 of a network of the
/// test's own, the servers on hosts 1 to 3.
#[test]
fn the_owners_server_cut_off() {
    let net = Net::create(4);
    let hosts = [1, 2, 3];
    net.run(0, || async {
        let _one = one_cluster_at_a_time().await;
        support::init_logs();
        let ensemble = ZkEnsemble::start_in(&net, &hosts).await;
        let url = ensemble.url(OPTIONS);
        let label = "ZooKeeper, the owner's server cut off";
        let mut case = prepare(label, &url).await;
        let watcher_on = server_of(&ensemble, case.watching()).await;

        let leader = ensemble.leader().await;
        let server = server_of(&ensemble, case.owner()).await;
        case.fault_begins();
        net.isolate(hosts[server], hosts);
        case.fault_ends();
        println!(
            "[cluster] {label}: server {server} (the owner's, {}) cut off from the other two, \
             the watcher on server {watcher_on}",
            if server == leader {
                "the leader"
            } else {
                "a follower"
            }
        );
        case.check(|| connect(&url)).await;
        net.heal();
        let leader_now = ensemble.leader().await;
        println!("[cluster] {label}: healed; server {leader_now} leads all three");
    });
}
