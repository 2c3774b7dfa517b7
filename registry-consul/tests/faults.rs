//! Consul's own fault test, against a real agent of the test's own. The conformance suite's
//! shared fault cases assert that a registration comes back after the agent restarts, is
//! wiped, frozen, or loses it from outside (through a fresh client and a watcher from before
//! the fault); this asserts what is Consul's: the agent killed and restarted in dev mode
//! forgets everything, a watcher says the agent is away meanwhile, and the owner registers
//! its instance again within one heartbeat interval of the agent answering.

mod support;

use std::time::{Duration, Instant};

use registry_consul::{Config, ConsulRegistry};
use registry_core::Registry;
use registry_core::{Discovery, Registrar};
use support::{instance, lists, watcher_reaches, ConsulAgent};

/// The check TTL of the registration living through the fault; heartbeats every second.
const TTL: Duration = Duration::from_secs(3);
const HEARTBEAT: Duration = Duration::from_secs(1);
/// On top of the heartbeat: the agent's first answers and the health view.
const SLACK: Duration = Duration::from_millis(1500);
const WITHIN: Duration = Duration::from_secs(15);

async fn connect(agent: &ConsulAgent) -> ConsulRegistry {
    let url = agent.url(&format!(
        "ttl={}s&deregister_after=1m&timeout=1s&connect_timeout=1s&wait=5s",
        TTL.as_secs()
    ));
    ConsulRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect to the test's agent")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_forgetting_everything_gets_it_back_within_a_heartbeat() {
    support::init_logs();
    let mut agent = ConsulAgent::start().await;
    let owner = connect(&agent).await;
    let watching = connect(&agent).await;
    let a = instance("svc", "a");
    owner.register(&a).await.expect("register");
    let mut watcher = watching.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;

    agent.kill();
    // While the agent is away, the watcher keeps its last list and says why.
    support::eventually(WITHIN, "the watcher reports the agent away", || async {
        watcher.last_error().is_some()
    })
    .await;
    agent.restart().await;
    let answering = Instant::now();

    let fresh = connect(&agent).await;
    lists(&fresh, "svc", std::slice::from_ref(&a), HEARTBEAT + SLACK).await;
    assert!(
        answering.elapsed() < HEARTBEAT + SLACK,
        "registered again {:?} after the agent answered",
        answering.elapsed()
    );
    assert!(owner
        .registration(&a.name, &a.id)
        .is_some_and(|s| s.get().is_registered()));
    owner.deregister(&a).await.expect("deregister");
    watcher_reaches(&mut watcher, &[], WITHIN).await;
}
