//! Fault tests against a real etcd of each test's own: the server is killed and restarted,
//! wiped, or frozen past the lease TTL while a registration and a watcher live through it.
//! Each asserts the final state through a fresh client and through the watcher created
//! before the fault, which must still follow changes afterwards.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, ServiceInstance};
use registry_etcd::{Config, EtcdRegistry, RegistrationState};
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
        matches!(
            owner.registration_state(&a),
            Some(RegistrationState::Registered { .. })
        )
    })
    .await;

    // The watcher from before the fault still follows: a change made after the fault shows
    // it the state after the fault (a watcher lists only after a change).
    let b = instance("svc", "b");
    fresh.register(&b).await.expect("register after the fault");
    watcher_reaches(&mut watcher, &with(std::slice::from_ref(&b)), RECOVERY).await;
    fresh.deregister(&b).await.expect("deregister");
    watcher_reaches(&mut watcher, &survivors, RECOVERY).await;

    // And the registration is kept alive afterwards, past several TTLs.
    tokio::time::sleep(TTL * 3).await;
    assert_eq!(fresh.get_service("svc").await.expect("list"), survivors);
    owner.deregister(&a).await.expect("deregister");
    let without_a: Vec<_> = survivors.iter().filter(|i| i.id != "a").cloned().collect();
    watcher_reaches(&mut watcher, &without_a, RECOVERY).await;
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
