//! Consul clusters: 3 servers and a client agent per simulated host, of each test's own
//! (test-support's `ConsulCluster`). As in production, a service registers with its own
//! host's agent, which syncs it to the servers' catalog; the watching client reads through
//! another host's agent. An owner on host 0 registers three instances with a short TTL and a
//! client on host 1 watches them; then a server fails (the leader, or each server in turn),
//! or the owner's own agent dies. After a server fault, `FaultCase::check` asserts the final
//! truth (through a client connected after the fault and the watcher created before it:
//! every instance listed exactly once, within the TTL plus back-off, and still so two TTLs
//! later) and prints the time to converge; these cases also assert that no instance ever
//! left the passing view (the servers' faults are hidden from the owner: it passes its
//! checks with its own agent).
//!
//! The agent-per-host model: when the owner's agent dies, the servers mark its node failed
//! (serf's failure detection, a few seconds), which takes its services out of the passing
//! view; when it comes back with its data, the owner (still running) registers its instances
//! again. Or the service is moved to another host (registered through that host's agent):
//! each instance is listed once, at its new address, and when the dead agent comes back with
//! its data, its old registrations do not come back as passing duplicates.
//!
//! Partitions, in a network of the test's own (test-support's `Net`: a network namespace per
//! host; the servers on hosts 1 to 3, the owner's agent on host 4, the watching client's on
//! host 5, the test's clients on host 0, reaching the agents at their hosts' addresses): the
//! owner's host cut off from every other (its node is marked failed, its instances leave the
//! passing view, and come back once healed, each once), and the leader cut off from the
//! other two servers (a minority of one; the agents reach the majority, which elects a
//! leader: nothing leaves the passing view).
//!
//! The cases run one at a time (3 servers and 2 or 3 client agents each).

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use registry_consul::{Config, ConsulRegistry};
use registry_core::{Discovery, Registrar, Registry, ServiceInstance, WatchEvent};
use test_support::consul_cluster::ConsulCluster;
use test_support::netns::Net;
use test_support::{
    describe_from, eventually, instance, lists, one_cluster_at_a_time, Cluster, FaultCase,
    WatchLog, CLUSTER_SLACK, INSTANCES, QUORUM_DEADLINE, SERVICE, START_DEADLINE,
};
use tokio::time::{sleep, Instant};

/// The owner's check TTL (passed every second).
const TTL: Duration = Duration::from_secs(3);
/// The longest pause in the client's retries: the watch engine's cap (5 s, jittered up to
/// 7.5 s; the registration's is a heartbeat, 1 s), and a request that fails (the timeout,
/// 1 s, and a connection, 1 s).
const BACKOFF: Duration = Duration::from_secs(9);
/// How long the servers take to mark a dead agent's node failed (serf's failure detection
/// with Consul's default gossip settings: 5.2 to 6.9 s measured here, 5 or 6 agents).
const NODE_FAILURE: Duration = Duration::from_secs(10);
/// The options of every client.
const OPTIONS: &str = "ttl=3s&deregister_after=1m&timeout=1s&connect_timeout=1s&wait=10s";
/// The servers of every cluster.
const SERVERS: usize = 3;
/// The hosts: the owner's, the watching client's, and where the service moves.
const OWNERS: usize = 0;
const WATCHING: usize = 1;
const MOVED_TO: usize = 2;
/// In a network of the test's own: the servers' hosts, and the client agents' (the owner's,
/// then the watching client's); the test's clients run on host 0.
const SERVER_HOSTS: [usize; SERVERS] = [1, 2, 3];
const AGENT_HOSTS: [usize; 2] = [4, 5];

/// Starts a cluster of [`SERVERS`] servers and `agents` client agents, and prints how long
/// it took to be ready.
async fn start(label: &str, agents: usize) -> ConsulCluster {
    let started = Instant::now();
    let cluster = ConsulCluster::start(SERVERS, agents).await;
    println!(
        "[cluster] {label}: {SERVERS} servers and {agents} client agents ready (a leader, every \
         agent synced) after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    cluster
}

/// Starts a cluster in `net`: the servers on [`SERVER_HOSTS`], the client agents on
/// [`AGENT_HOSTS`]; prints how long it took to be ready, and returns when it was.
async fn start_in(label: &str, net: &Net) -> (ConsulCluster, Instant) {
    let started = Instant::now();
    let cluster = ConsulCluster::start_in(net, &SERVER_HOSTS, &AGENT_HOSTS).await;
    println!(
        "[cluster] {label}: {SERVERS} servers (hosts {SERVER_HOSTS:?}) and client agents on \
         hosts {AGENT_HOSTS:?} ready (a leader, every agent synced) after {:.2} s",
        started.elapsed().as_secs_f64()
    );
    (cluster, Instant::now())
}

/// How long after learning of its servers an agent may still run its first full
/// anti-entropy sync: Consul runs it at a random moment within 3 s (`serverUpIntv`), and the
/// next one a minute or two later. A partition that catches a sync in flight can freeze the
/// agent's local state (see [`the_leader_cut_off_from_the_other_servers`]).
const ANTI_ENTROPY_SETTLES: Duration = Duration::from_millis(3500);

/// Waits until [`ANTI_ENTROPY_SETTLES`] after `ready`, when the cluster was ready (its
/// agents had learnt of their servers before).
async fn settle(ready: Instant) {
    tokio::time::sleep_until(ready + ANTI_ENTROPY_SETTLES).await;
}

async fn connect(url: &str) -> registry_core::Result<ConsulRegistry> {
    ConsulRegistry::connect(Config::from_url(url)?).await
}

/// The owner on host 0, the watching client on host 1, and a second watcher of the service
/// through the watching client, which [`never_short`] reads after the fault, with the
/// instances the case registered.
async fn prepare(
    label: &str,
    cluster: &ConsulCluster,
) -> (FaultCase<ConsulRegistry>, WatchLog, Vec<ServiceInstance>) {
    let owner = connect(&cluster.agent_url(OWNERS, OPTIONS))
        .await
        .expect("connect the owner");
    let watching = connect(&cluster.agent_url(WATCHING, OPTIONS))
        .await
        .expect("connect the watching client");
    let case = FaultCase::prepare(label, owner, watching, TTL, BACKOFF).await;
    // The case's watcher lists its instances: so does the service now.
    let truth = case.watching().get_service(SERVICE).await.expect("list");
    assert_eq!(truth.len(), INSTANCES);
    let mut whole = WatchLog::follow(case.watching().watch(SERVICE).await.expect("watch"));
    whole.reaches(&truth, START_DEADLINE).await;
    (case, whole, truth)
}

/// Asserts that every list `whole` delivered from `began` on, up to the first holding another
/// instance (the check's probe, after which the check deregisters everything), held every
/// instance of `truth`: no registration left the passing view, not even for a while.
fn never_short(label: &str, whole: &WatchLog, truth: &[ServiceInstance], began: Instant) {
    let during: Vec<_> = whole
        .events_since(began)
        .into_iter()
        .take_while(|(_, event)| {
            !matches!(event, WatchEvent::Changed(list) if list.iter().any(|i| !truth.contains(i)))
        })
        .collect();
    let short = during.iter().any(|(_, event)| {
        matches!(event, WatchEvent::Changed(list) if !truth.iter().all(|i| list.contains(i)))
    });
    assert!(
        !short,
        "{label}: an instance left the passing view during the fault; the watcher saw: {}",
        describe_from(began, &during)
    );
    println!("[cluster] {label}: no instance left the passing view");
}

/// The leader dies; the owner (host 0) and the watching client (host 1) keep their agents,
/// whose requests to the servers fail until the other two elect a new leader. The owner
/// passes its checks with its own agent all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let label = "Consul, the leader killed";
    let mut cluster = start(label, 2).await;
    let url = cluster.agent_url(WATCHING, OPTIONS);
    let (mut case, whole, truth) = prepare(label, &cluster).await;

    let leader = cluster.leader().await;
    case.fault_begins();
    let began = Instant::now();
    cluster.kill(leader);
    case.fault_ends();
    let new_leader = cluster.leader().await;
    println!(
        "[cluster] {label}: server {leader} (the leader) killed, the owner on host {OWNERS}, \
         the watcher on host {WATCHING}; server {new_leader} leads after {:.2} s",
        began.elapsed().as_secs_f64()
    );
    assert_ne!(new_leader, leader);
    case.check(|| connect(&url)).await;
    never_short(label, &whole, &truth, began);
}

/// Every server restarted in turn, each back in the cluster (knowing a leader) before the
/// next goes: the leadership moves, the agents change server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let label = "Consul, a rolling restart of the servers";
    let mut cluster = start(label, 2).await;
    let url = cluster.agent_url(WATCHING, OPTIONS);
    let (mut case, whole, truth) = prepare(label, &cluster).await;

    case.fault_begins();
    let began = Instant::now();
    let mut steps = Vec::new();
    for server in 0..cluster.len() {
        let leader = cluster.leader().await;
        let started = Instant::now();
        cluster.restart(server).await;
        steps.push(format!(
            "server {server}{} back after {:.2} s",
            if server == leader {
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
    never_short(label, &whole, &truth, began);
}

/// The owner's own agent dies and comes back with its data, after the servers marked its
/// node failed; the owner (its host lives) keeps running. Its instances leave the passing
/// view with the node; when the agent is back, it holds them again, their checks critical
/// (their TTL ran out while it was away), and the owner registers them again (its pass
/// failed) within a heartbeat of the agent answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_agent_restarted() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let label = "Consul, the owner's agent restarted";
    let mut cluster = start(label, 2).await;
    let url = cluster.agent_url(WATCHING, OPTIONS);
    let (mut case, whole, _) = prepare(label, &cluster).await;

    case.fault_begins();
    let began = Instant::now();
    cluster.kill_agent(OWNERS);
    let node = cluster.agent_node(OWNERS);
    let http = cluster.agent_http(WATCHING);
    eventually(
        NODE_FAILURE + CLUSTER_SLACK,
        "the servers mark the dead agent's node failed",
        || node_alive(&http, &node, false),
    )
    .await;
    let failed = began.elapsed();
    // Its instances left the passing view with the node.
    let mut emptied = whole;
    emptied.reaches(&[], TTL).await;
    let restarted = Instant::now();
    cluster.start_agent_again(OWNERS).await;
    case.fault_ends();
    println!(
        "[cluster] {label}: host {OWNERS}'s agent killed; its node marked failed after \
         {:.2} s, its instances out of the passing view; started again (synced) after {:.2} s",
        failed.as_secs_f64(),
        restarted.elapsed().as_secs_f64()
    );
    case.check(|| connect(&url)).await;
}

/// Whether the catalog, read through the agent at `http`, holds `node` with its
/// `serfHealth` check in the state `alive` asks (`passing` or `critical`).
async fn node_alive(http: &str, node: &str, alive: bool) -> bool {
    let want = if alive { "passing" } else { "critical" };
    let Ok(checks) = get_json(&format!("{http}/v1/health/node/{node}")).await else {
        return false;
    };
    checks.as_array().is_some_and(|checks| {
        checks
            .iter()
            .any(|c| c["CheckID"] == "serfHealth" && c["Status"] == want)
    })
}

async fn get_json(url: &str) -> reqwest::Result<serde_json::Value> {
    reqwest::Client::new()
        .get(url)
        .timeout(Duration::from_secs(2))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await
}

/// `(node, id, every check passing)` of each entry of [`SERVICE`] in the catalog, passing or
/// not, read through the agent at `http`.
async fn catalog(http: &str) -> Vec<(String, String, bool)> {
    let entries = get_json(&format!("{http}/v1/health/service/{SERVICE}"))
        .await
        .expect("read the catalog");
    let mut found: Vec<(String, String, bool)> = entries
        .as_array()
        .expect("a list of entries")
        .iter()
        .map(|e| {
            let passing = e["Checks"]
                .as_array()
                .is_some_and(|c| c.iter().all(|c| c["Status"] == "passing"));
            (
                e["Node"]["Node"].as_str().unwrap_or_default().to_owned(),
                e["Service"]["ID"].as_str().unwrap_or_default().to_owned(),
                passing,
            )
        })
        .collect();
    found.sort();
    found
}

/// The instances of the service on host `host` (127.0.0.x stands for host x), each on a
/// port of its own.
fn on_host(host: usize) -> Vec<ServiceInstance> {
    (1..=INSTANCES)
        .map(|i| {
            let mut instance = instance(SERVICE, &format!("i{i}"));
            instance.endpoints = vec![format!("grpc://127.0.0.{}:{}", host + 1, 9000 + i)];
            instance
        })
        .collect()
}

/// The agent-per-host model: the owner's host loses its agent, and the service moves to
/// another host (an orchestrator reschedules it: the old copy is gone, a new owner
/// registers the same instances, at the new host's address, through that host's agent).
/// The watcher created before the fault (host 1) must come to list each instance exactly
/// once, at its new address, and never list one id twice: the dead agent's copies still pass
/// until the servers mark its node failed (the backend reads one instance per id, the
/// registration written last). When that agent is started again with its data, it holds its
/// old registrations again: they come back into the catalog (as they were when it died,
/// passing, until its first sync makes them critical: their TTL ran out long ago), and must
/// not come back as passing duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_owners_agent_killed_and_the_service_moved() {
    let _one = one_cluster_at_a_time().await;
    support::init_logs();
    let label = "Consul, the owner's agent killed, the service moved";
    let mut cluster = start(label, 3).await;
    let before: Vec<ServiceInstance> = on_host(OWNERS);
    let after: Vec<ServiceInstance> = on_host(MOVED_TO);
    let owner = connect(&cluster.agent_url(OWNERS, OPTIONS))
        .await
        .expect("connect the owner");
    for instance in &before {
        owner.register(instance).await.expect("register");
    }
    let watching = connect(&cluster.agent_url(WATCHING, OPTIONS))
        .await
        .expect("connect the watching client");
    let mut log = WatchLog::follow(watching.watch(SERVICE).await.expect("watch"));
    log.reaches(&before, START_DEADLINE).await;
    let http = cluster.agent_http(WATCHING);
    let node = cluster.agent_node(OWNERS);

    // The fault: the owner's agent dies; the owner goes with its host (or is stopped by the
    // orchestrator), and a new one on host 2 registers the instances.
    let began = Instant::now();
    cluster.kill_agent(OWNERS);
    drop(owner);
    let new_owner = connect(&cluster.agent_url(MOVED_TO, OPTIONS))
        .await
        .expect("connect the new owner");
    for instance in &after {
        new_owner.register(instance).await.expect("register");
    }
    let moved_at = Instant::now();
    let within = TTL + BACKOFF + CLUSTER_SLACK;
    let converged = log.reaches(&after, within).await;
    let converged_after = converged.saturating_duration_since(began);
    eventually(
        NODE_FAILURE + CLUSTER_SLACK,
        "the servers mark the dead agent's node failed",
        || node_alive(&http, &node, false),
    )
    .await;
    let failed = began.elapsed();
    let fresh = connect(&cluster.agent_url(WATCHING, OPTIONS))
        .await
        .expect("connect a fresh client");
    lists(&fresh, SERVICE, &after, within).await;
    // Never one id twice, not even while the dead agent's node still passed.
    no_duplicates(label, &log, began);

    // The dead agent comes back with its data: its old registrations come back into the
    // catalog, never into the passing view.
    let restarting = Instant::now();
    cluster.start_agent_again(OWNERS).await;
    let synced = restarting.elapsed();
    let old_ones = catalog(&http).await;
    let on_old_host: Vec<_> = old_ones.iter().filter(|(n, _, _)| *n == node).collect();
    assert_eq!(
        on_old_host.len(),
        INSTANCES,
        "{label}: the restarted agent holds its old registrations again: {old_ones:?}"
    );
    assert!(
        on_old_host.iter().all(|(_, _, passing)| !passing),
        "{label}: the old registrations are critical once the agent synced: {old_ones:?}"
    );
    // It stays so: every list the watcher delivers is the moved truth.
    sleep(TTL * 2).await;
    let since_restart = log.events_since(restarting);
    let left: Vec<_> = since_restart
        .iter()
        .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if **l != *after))
        .collect();
    assert!(
        left.is_empty(),
        "{label}: the watcher left the moved list after the dead agent came back: {}",
        describe_from(began, &log.events_since(began))
    );
    assert!(log.seen().at(&after), "{label}: {:?}", log.seen());
    assert_eq!(
        fresh.get_service(SERVICE).await.expect("list"),
        after,
        "{label}: a fresh client's list after the dead agent came back"
    );
    for instance in &after {
        assert!(
            new_owner
                .registration(&instance.name, &instance.id)
                .is_some_and(|s| s.get().is_registered()),
            "{label}: the new owner holds {}",
            instance.id
        );
    }
    println!(
        "[cluster] {label}: host {OWNERS}'s agent killed, the service moved to host \
         {MOVED_TO} {:.2} s later; the watcher on host {WATCHING} listed each instance once, \
         at its new address, {:.2} s after the kill ({:.2} s after the move); the servers \
         marked the dead agent's node failed after {:.2} s; no list held an id twice; the dead \
         agent, started again with its data, synced after \
         {:.2} s, its old registrations back in the catalog critical, none in the passing view",
        moved_at.saturating_duration_since(began).as_secs_f64(),
        converged_after.as_secs_f64(),
        converged.saturating_duration_since(moved_at).as_secs_f64(),
        failed.as_secs_f64(),
        synced.as_secs_f64(),
    );
    println!(
        "[cluster] {label}: the watcher from before the fault saw (from the kill):{}",
        describe_from(began, &log.events_since(began))
    );

    // The watcher still follows changes.
    let probe = instance(SERVICE, "probe");
    let mut with_probe = after.clone();
    with_probe.push(probe.clone());
    with_probe.sort_by(|a, b| a.id.cmp(&b.id));
    fresh.register(&probe).await.expect("register the probe");
    log.reaches(&with_probe, within).await;
    fresh
        .deregister(&probe)
        .await
        .expect("deregister the probe");
    log.reaches(&after, within).await;
    let _ = fresh.close().await;
    let _ = new_owner.close().await;
}

/// How many distinct ids a list holds.
fn distinct(list: &[ServiceInstance]) -> usize {
    list.iter()
        .map(|i| i.id.as_str())
        .collect::<BTreeSet<_>>()
        .len()
}

/// The owner's host is cut off from every other host by a network partition, but for the
/// owner itself, which keeps talking to its own agent (modelled by the test's clients, on
/// host 0, still reaching it). For the others the host is gone: the servers mark its node
/// failed (serf's failure detection), and the watchers of other hosts drop its instances,
/// without ever listing one twice; its agent keeps the owner's registrations, their checks
/// passed by the owner all along. The cut lasts until the node is marked failed and the
/// watcher created before it (on host 5) has dropped the instances; once healed, the agent
/// rejoins (the servers and it still gossip to each other's dead nodes for 30 s, so the
/// rejoin takes a gossip round, not serf's 30 s reconnect interval), its node passes again,
/// and its instances come back, each once: `FaultCase::check` from the heal.
///
/// The cut comes once the agents' first full anti-entropy sync is over
/// ([`ANTI_ENTROPY_SETTLES`]): a sync caught by the cut would hold the agent's local state
/// until the heal (see [`the_leader_cut_off_from_the_other_servers`]).
#[test]
fn the_owners_host_cut_off() {
    let net = Net::create(6);
    net.run(0, || async {
        let _one = one_cluster_at_a_time().await;
        support::init_logs();
        let label = "Consul, the owner's host cut off";
        let (cluster, ready) = start_in(label, &net).await;
        let url = cluster.agent_url(WATCHING, OPTIONS);
        let (mut case, mut whole, truth) = prepare(label, &cluster).await;
        let node = cluster.agent_node(OWNERS);
        let http = cluster.agent_http(WATCHING);
        let owners_http = cluster.agent_http(OWNERS);
        let host = AGENT_HOSTS[OWNERS];
        settle(ready).await;

        case.fault_begins();
        let began = Instant::now();
        // Every host but the owner's own (host 0, where the owner runs).
        net.isolate(host, 1..net.hosts());
        eventually(
            NODE_FAILURE + CLUSTER_SLACK,
            "the servers mark the cut-off node failed",
            || node_alive(&http, &node, false),
        )
        .await;
        let failed = began.elapsed();
        // Its instances left the passing view with the node.
        let emptied = whole.reaches(&[], CLUSTER_SLACK).await;
        // The owner's agent still holds them, passing, and the owner reports them
        // registered.
        let held = agent_checks(&owners_http).await;
        for instance in &truth {
            let check = format!("service:{}", instance.id);
            assert_eq!(
                held.iter()
                    .find(|(id, _)| *id == check)
                    .map(|(_, s)| s.as_str()),
                Some("passing"),
                "{label}: the owner's agent holds {} passing while cut off: {held:?}",
                instance.id
            );
            assert!(
                case.owner()
                    .registration(&instance.name, &instance.id)
                    .is_some_and(|s| s.get().is_registered()),
                "{label}: the owner holds {} while cut off",
                instance.id
            );
        }
        net.heal();
        case.fault_ends();
        let healed = Instant::now();
        eventually(
            NODE_FAILURE + CLUSTER_SLACK,
            "the healed node passes again",
            || node_alive(&http, &node, true),
        )
        .await;
        let alive = healed.elapsed();
        let back = whole
            .reaches(&truth, TTL + BACKOFF + CLUSTER_SLACK)
            .await
            .saturating_duration_since(healed);
        println!(
            "[cluster] {label}: host {host} (the owner's agent) cut off from every host but \
             the owner's; its node marked failed after {:.2} s, its instances out of the \
             passing view {:.2} s after the cut, held passing by its agent; healed {:.2} s \
             after the cut: the node passes again after {:.2} s, the watcher on host {} \
             lists every instance again {:.2} s after the heal",
            failed.as_secs_f64(),
            emptied.saturating_duration_since(began).as_secs_f64(),
            healed.saturating_duration_since(began).as_secs_f64(),
            alive.as_secs_f64(),
            AGENT_HOSTS[WATCHING],
            back.as_secs_f64(),
        );
        case.check(|| connect(&url)).await;
        no_duplicates(label, &whole, began);
    });
}

/// The leader is cut off from the other two servers by a network partition: a minority of
/// one, which still runs and which the agents still reach. It steps down within its leader
/// lease (0.5 s with `raft_multiplier` 1) and can serve nothing; the other two elect a
/// leader (2.5 to 3.5 s measured), and the agents take their requests to them (one sent to
/// the cut-off server fails after `rpc_hold_timeout`, 7 s, and the agent moves on). The
/// owner passes its checks with its own agent and nothing else, which the servers' serf
/// still sees alive (probed through the agents): no instance ever leaves the passing view,
/// and `FaultCase::check` counts from the cut itself, the partition lasting through it. Then
/// the partition heals and the three agree on a leader again.
///
/// A hazard this case steers clear of, as an agent in steady state does most of the time: a
/// write an agent sends to the catalog (its anti-entropy sync: after a local change, every
/// minute or two, and within 3 s of learning of a server) that reaches a server of the
/// majority before the election is forwarded to the cut-off leader, and waits on a
/// connection the partition silenced until yamux's keepalive breaks it (a ping every 30 s,
/// 10 s to answer: 38 s measured here). Consul 1.8's agent holds its local state meanwhile
/// (hashicorp/consul#8504): its own API, registrations and check passes included, hangs, and
/// checks with a TTL shorter than the hang go critical until it ends (Consul 1.11.9, 1.12.1
/// and 1.13 bound an agent's calls to the servers, by `rpc_hold_timeout`, later
/// `rpc_client_timeout`). So the cut comes once the agents' first full sync is over
/// ([`ANTI_ENTROPY_SETTLES`]), and the check's first write (a registration through the
/// watching client's agent) once the majority has its leader. Convergence still takes 8 to
/// 14 s from the cut (measured): the watching client's agent talks to one server at a time.
/// When that is a server of the majority, the watchers' blocking queries it had forwarded to
/// the old leader hang until their client-side timeout (the wait, Consul's jitter and a
/// second: 11.6 s); when it is the cut-off server itself, it holds a call for
/// `rpc_hold_timeout` (7 s) waiting for a leader before it fails, and the agent moves to
/// another server.
#[test]
fn the_leader_cut_off_from_the_other_servers() {
    let net = Net::create(6);
    net.run(0, || async {
        let _one = one_cluster_at_a_time().await;
        support::init_logs();
        let label = "Consul, the leader cut off from the other servers";
        let (cluster, ready) = start_in(label, &net).await;
        let url = cluster.agent_url(WATCHING, OPTIONS);
        let (mut case, whole, truth) = prepare(label, &cluster).await;
        settle(ready).await;

        let leader = cluster.leader().await;
        let majority: Vec<usize> = (0..SERVERS).filter(|&s| s != leader).collect();
        case.fault_begins();
        let began = Instant::now();
        net.isolate(SERVER_HOSTS[leader], SERVER_HOSTS);
        case.fault_ends();
        let mut new_leader = None;
        eventually(
            QUORUM_DEADLINE,
            "the other two servers elect a leader among themselves",
            || {
                let known: Vec<Option<usize>> = majority
                    .iter()
                    .map(|&s| cluster.leader_known_by(s))
                    .collect();
                new_leader =
                    known[0].filter(|l| *l != leader && known.iter().all(|k| *k == known[0]));
                let elected = new_leader.is_some();
                async move { elected }
            },
        )
        .await;
        println!(
            "[cluster] {label}: server {leader} (the leader, host {}) cut off from the other \
             two; server {} leads the majority after {:.2} s",
            SERVER_HOSTS[leader],
            new_leader.map_or_else(|| "?".to_owned(), |l| l.to_string()),
            began.elapsed().as_secs_f64()
        );
        case.check(|| connect(&url)).await;
        never_short(label, &whole, &truth, began);
        no_duplicates(label, &whole, began);
        net.heal();
        let healed = Instant::now();
        let leader_now = cluster.leader().await;
        println!(
            "[cluster] {label}: healed; server {leader_now} leads all three after {:.2} s",
            healed.elapsed().as_secs_f64()
        );
    });
}

/// `CheckID` → `Status` of every check the agent at `http` holds itself.
async fn agent_checks(http: &str) -> Vec<(String, String)> {
    let checks = get_json(&format!("{http}/v1/agent/checks"))
        .await
        .expect("read the agent's checks");
    let mut found: Vec<(String, String)> = checks
        .as_object()
        .expect("checks by id")
        .iter()
        .map(|(id, c)| {
            (
                id.clone(),
                c["Status"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    found.sort();
    found
}

/// Asserts that no list `log` delivered from `began` on held an id twice.
fn no_duplicates(label: &str, log: &WatchLog, began: Instant) {
    let events = log.events_since(began);
    let duplicates = events
        .iter()
        .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if distinct(l) < l.len()))
        .count();
    assert_eq!(
        duplicates,
        0,
        "{label}: the watcher listed an id twice: {}",
        describe_from(began, &events)
    );
}
