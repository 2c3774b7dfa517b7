//! etcd's own fault tests, against a real etcd of each test's own: the server is killed and
//! restarted, wiped, or frozen past the lease TTL. The conformance suite's shared fault cases
//! assert that the registration comes back (through a fresh client and a watcher from before
//! the fault); these assert what is etcd's: a dead owner's key whose lease outlives the test
//! (a "ghost") leaves a watcher from before a wipe, so the watch lists again rather than
//! resuming; the key is attached to the lease its registration keeps alive (a new one after a
//! wipe or an expiry), and that lease is kept alive afterwards, not written again and again.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, Registry, ServiceInstance};
use registry_etcd::{Config, EtcdRegistry};
use support::{instance, lists, watcher_reaches, EtcdServer};

/// The lease TTL of the registration living through the fault.
const TTL: Duration = Duration::from_secs(2);
/// How long the final state may take to show once etcd answers again: the re-registration
/// back-off and the watch's reconnection both retry within this.
const RECOVERY: Duration = Duration::from_secs(15);

enum Fault {
    KillAndRestart,
    WipeAndRestart,
    PausePastTtl,
}

async fn connect(server: &EtcdServer) -> EtcdRegistry {
    let url = format!(
        "{}/faults?ttl={}s&timeout=1s&connect_timeout=2s",
        server.url(),
        TTL.as_secs()
    );
    EtcdRegistry::connect(Config::from_url(&url).expect("a valid URL"))
        .await
        .expect("connect to the test's etcd")
}

async fn survives(fault: Fault) {
    support::init_logs();
    let mut server = EtcdServer::start().await;
    let owner = connect(&server).await;
    let watching = connect(&server).await;
    let a = instance("svc", "a");
    owner.register(&a).await.expect("register");
    // A registration whose owner is gone but whose lease (60 s) outlives the test: only a
    // wipe removes it, and a watcher that resumed instead of listing again would keep it.
    let ghost = instance("svc", "ghost");
    {
        let url = format!("{}/faults?ttl=60s", server.url());
        let ghost_owner = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
            .await
            .expect("connect");
        ghost_owner.register(&ghost).await.expect("register");
    }
    let mut watcher = watching.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, &[a.clone(), ghost.clone()], RECOVERY).await;
    let wiped = matches!(fault, Fault::WipeAndRestart);
    let survivors = if wiped {
        vec![a.clone()]
    } else {
        vec![a.clone(), ghost.clone()]
    };
    let with = |extra: &[ServiceInstance]| {
        let mut list = survivors.clone();
        list.extend_from_slice(extra);
        list.sort_by(|x, y| x.id.cmp(&y.id));
        list
    };

    let lease_before = registered_lease(&owner, &a);

    match fault {
        Fault::KillAndRestart => server.restart().await,
        Fault::WipeAndRestart => server.wipe_and_restart().await,
        Fault::PausePastTtl => {
            server.pause();
            // The fault itself: etcd frozen for longer than the lease lives.
            tokio::time::sleep(TTL * 2 + Duration::from_millis(500)).await;
            server.resume();
        }
    }

    // The registration is back (or never left), seen by a client that knows nothing of it.
    let fresh = connect(&server).await;
    lists(&fresh, "svc", &survivors, RECOVERY).await;
    support::eventually(RECOVERY, "the registration reports Registered", || async {
        owner
            .registration(&a.name, &a.id)
            .is_some_and(|s| s.get().is_registered())
    })
    .await;
    let lease = registered_lease(&owner, &a);
    if !matches!(fault, Fault::KillAndRestart) {
        assert_ne!(
            lease, lease_before,
            "the old lease is gone: a new one holds the key"
        );
    }
    // The key is attached to the lease the registration keeps alive, not to a dead one.
    assert_eq!(raw_lease(&server, "/faults/svc/a").await, lease);

    // The watcher from before the fault still follows: a change made after the fault shows
    // it the state after the fault (a watcher lists only after a change).
    let b = instance("svc", "b");
    fresh.register(&b).await.expect("register after the fault");
    watcher_reaches(&mut watcher, &with(std::slice::from_ref(&b)), RECOVERY).await;
    fresh.deregister(&b).await.expect("deregister");
    watcher_reaches(&mut watcher, &survivors, RECOVERY).await;

    // And the registration is kept alive afterwards, past several TTLs, by keep-alives of the
    // same lease (not by writing it again and again).
    let lease = registered_lease(&owner, &a);
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(fresh.get_service("svc").await.expect("list"), survivors);
    assert_eq!(registered_lease(&owner, &a), lease);
    assert_eq!(raw_lease(&server, "/faults/svc/a").await, lease);
    owner.deregister(&a).await.expect("deregister");
    let without_a: Vec<_> = survivors.iter().filter(|i| i.id != "a").cloned().collect();
    watcher_reaches(&mut watcher, &without_a, RECOVERY).await;
}

fn registered_lease(owner: &EtcdRegistry, instance: &ServiceInstance) -> i64 {
    owner.lease(instance).expect("registered")
}

/// The lease the key is attached to, read with the raw client.
async fn raw_lease(server: &EtcdServer, key: &str) -> i64 {
    let mut raw = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("raw client");
    let resp = raw.get(key, None).await.expect("raw get");
    resp.kvs().first().expect("the key exists").lease()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_killed_and_restarted_with_its_data() {
    survives(Fault::KillAndRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restarted_with_its_data_wiped() {
    survives(Fault::WipeAndRestart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_paused_past_the_ttl() {
    survives(Fault::PausePastTtl).await;
}
