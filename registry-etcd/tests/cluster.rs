//! etcd clusters: a 3-member cluster of each test's own (test-support's `EtcdCluster`), the
//! registry URL naming every member. An owner registers three instances with a short TTL and
//! another client watches them; then a member fails: the leader, the member the clients use,
//! or each member in turn (a rolling restart). After the fault, `FaultCase::check` asserts
//! the final truth (through a client connected after the fault and the watcher created
//! before it: every instance listed exactly once, within the TTL plus back-off, and still so
//! two TTLs later) and prints the time to converge.
//!
//! The cases run one at a time (three etcd processes each). The minority partition (the
//! clients' member cut off from the other two, yet alive and reachable by the clients) runs
//! in a network of its own (test-support's `Net`: a network namespace per host).

mod support;

use std::time::Duration;

use registry_etcd::{Config, EtcdRegistry};
use test_support::netns::Net;
use test_support::{one_cluster_at_a_time, Cluster, EtcdCluster, FaultCase};

/// The owner's lease TTL.
const TTL: Duration = Duration::from_secs(3);
/// The longest pause in the client's retries: the watch engine's cap (5 s; the
/// registration's is a third of the TTL), and a failover (a request timing out, 1 s, then a
/// dial, 2 s).
const BACKOFF: Duration = Duration::from_secs(8);
/// The path and options of every client.
const OPTIONS: &str = "/cluster?ttl=3s&timeout=1s&connect_timeout=2s";

async fn connect(url: &str) -> registry_core::Result<EtcdRegistry> {
    EtcdRegistry::connect(Config::from_url(url)?).await
}

async fn prepare(label: &str, url: &str) -> FaultCase<EtcdRegistry> {
    let owner = connect(url).await.expect("connect the owner");
    let watching = connect(url).await.expect("connect the watching client");
    FaultCase::prepare(label, owner, watching, TTL, BACKOFF)
        .await
        .held_by("lease", EtcdRegistry::lease)
}

/// The leader dies; the clients' member (a follower, first in their URL) lives on: the
/// remaining two elect a new leader, and the clients need not change member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut cluster = EtcdCluster::start(3).await;
    let follower = (cluster.leader().await + 1) % cluster.len();
    let url = cluster.url_from(follower, OPTIONS);
    let label = "etcd, the leader killed";
    let mut case = prepare(label, &url).await;

    let leader = cluster.leader().await;
    case.fault_begins();
    cluster.kill(leader);
    case.fault_ends();
    let new_leader = cluster.leader().await;
    println!(
        "[cluster] {label}: member {leader} (the leader) killed, the clients on member \
         {follower}; member {new_leader} leads now"
    );
    assert_ne!(new_leader, leader);
    case.check(|| connect(&url)).await;
}

/// The member the clients use (first in their URL, a follower) dies: the clients fail over
/// to the next member; the leader stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_member_killed() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.leader().await;
    let member = (leader + 1) % cluster.len();
    let url = cluster.url_from(member, OPTIONS);
    let label = "etcd, the clients' member killed";
    let mut case = prepare(label, &url).await;

    case.fault_begins();
    cluster.kill(member);
    case.fault_ends();
    let leader_now = cluster.leader().await;
    println!(
        "[cluster] {label}: member {member} (a follower, first in the clients' URL) killed; \
         member {leader_now} leads (member {leader} before)"
    );
    // The fresh client's URL starts with the dead member too: it connects to the next.
    case.check(|| connect(&url)).await;
}

/// Every member restarted in turn, each back in the cluster before the next goes: the
/// clients (on member 0 first) change member as their member goes, and the leader moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut cluster = EtcdCluster::start(3).await;
    let url = cluster.url(OPTIONS);
    let label = "etcd, a rolling restart";
    let mut case = prepare(label, &url).await;

    case.fault_begins();
    let mut steps = Vec::new();
    for member in 0..cluster.len() {
        let leader = cluster.leader().await;
        let started = tokio::time::Instant::now();
        cluster.restart(member).await;
        steps.push(format!(
            "member {member}{} back after {:.2} s",
            if member == leader {
                " (the leader)"
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

/// The member the clients use (first in their URL, a follower) freezes (SIGSTOP): it keeps
/// its connections open and answers nothing, as a host that hangs or drops off the network.
/// The clients must notice by themselves and fail over; the other two keep the quorum.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_clients_member_frozen() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let mut cluster = EtcdCluster::start(3).await;
    let leader = cluster.leader().await;
    let member = (leader + 1) % cluster.len();
    let url = cluster.url_from(member, OPTIONS);
    let label = "etcd, the clients' member frozen";
    let mut case = prepare(label, &url).await;

    case.fault_begins();
    cluster.pause(member);
    case.fault_ends();
    println!(
        "[cluster] {label}: member {member} (a follower, first in the clients' URL) frozen; \
         member {leader} leads"
    );
    case.check(|| connect(&url)).await;
    cluster.resume(member);
}

/// The member the clients use (first in their URL, a follower) is cut off from the other two
/// by a network partition, yet runs and stays reachable by the clients: a minority that
/// cannot serve. The member notices that it lost its leader, refuses the clients' calls and
/// ends their watches and keep-alives (they ask for a member with a leader), and the clients
/// move to a member of the majority. The clients run on host 0 of a network of the test's
/// own, the members on hosts 1 to 3.
#[test]
fn the_clients_member_cut_off() {
    let net = Net::create(4);
    let hosts = [1, 2, 3];
    net.run(0, || async {
        let _one = one_cluster_at_a_time().await;
        support::init_logs();
        let cluster = EtcdCluster::start_in(&net, &hosts).await;
        let leader = cluster.leader().await;
        let member = (leader + 1) % cluster.len();
        let url = cluster.url_from(member, OPTIONS);
        let label = "etcd, the clients' member cut off";
        let mut case = prepare(label, &url).await;

        case.fault_begins();
        net.isolate(hosts[member], hosts);
        case.fault_ends();
        println!(
            "[cluster] {label}: member {member} (a follower, first in the clients' URL) cut off \
             from the other two; member {leader} leads the majority"
        );
        case.check(|| connect(&url)).await;
        net.heal();
        let leader_now = cluster.leader().await;
        println!("[cluster] {label}: healed; member {leader_now} leads all three");
    });
}
