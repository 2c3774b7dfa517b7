//! The composite registry (`multi:`) against real etcd and Consul servers: a service
//! registered through it is found by a plain client of each registry alone; a member that
//! refuses an instance leaves nothing in the other; one member killed and restarted
//! (servers of the test's own): the other keeps serving, calls made meanwhile return
//! promptly, and the killed one gets its registrations back; and one member down (or
//! hanging) when the composite connects: connect returns promptly, and the member is
//! connected in the background once it is up, takes what was registered meanwhile and is
//! followed by the watches made before.
//!
//! Run with `cargo test -p registry --features etcd,consul --test multi` (`scripts/test` runs
//! it with every feature). The first test uses the shared servers of `scripts/backends up`.

use std::sync::Arc;
use std::time::Duration;

use registry::multi::{MemberState, MultiRegistry};
use registry::{
    Discovery, Error, Registrar, RegistrationState, Registry, ServiceInstance, Watcher,
};
use test_support::{
    eventually, init_logs, instance, lists, run_id, watcher_reaches, ConsulAgent, EtcdServer,
};
use tokio::time::Instant;

/// How long a change may take to show.
const WITHIN: Duration = Duration::from_secs(20);

/// The composite's member timeout in these tests.
const MEMBER_TIMEOUT: Duration = Duration::from_secs(1);

/// The members' TTL in the fault tests.
const TTL: Duration = Duration::from_secs(3);

/// How much longer than the member timeout a call may take while a member is down.
const PROMPT_SLACK: Duration = Duration::from_secs(2);

async fn connect(url: &str) -> Arc<dyn Registry> {
    registry::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e} (is the server up? scripts/backends up)"))
}

fn ids(list: &[ServiceInstance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

/// A service registered through the composite of the shared etcd and Consul is found by a
/// plain client of each alone (a list and a watch), and leaves both on deregister.
#[tokio::test]
async fn registered_through_the_composite_found_by_each_registry_alone() {
    init_logs("registry");
    let run = run_id();
    let etcd = format!("etcd://127.0.0.1:2379/multi-{run}");
    let consul = "consul://127.0.0.1:8500?deregister_after=1m".to_owned();
    let both = MultiRegistry::connect(&format!("multi:{etcd}|{consul}"))
        .await
        .expect("connect the composite");
    let service = format!("multi{run}");
    let mut watchers: Vec<(String, Arc<dyn Registry>, Watcher)> = Vec::new();
    for url in [&etcd, &consul] {
        let alone = connect(url).await;
        let mut watcher = alone.watch(&service).await.expect("watch");
        watcher_reaches(&mut watcher, &[], WITHIN).await;
        watchers.push((url.clone(), alone, watcher));
    }

    let me = instance(&service, &format!("i1-{run}"));
    both.register(&me).await.expect("register");
    for (url, alone, watcher) in &mut watchers {
        lists(alone.as_ref(), &service, std::slice::from_ref(&me), WITHIN).await;
        watcher_reaches(watcher, std::slice::from_ref(&me), WITHIN).await;
        eprintln!("{url} alone lists it");
    }
    assert_eq!(
        both.get_service(&service).await.expect("get"),
        std::slice::from_ref(&me)
    );
    let mut status = both.registration(&service, &me.id).expect("held");
    tokio::time::timeout(WITHIN, status.wait_for(RegistrationState::is_registered))
        .await
        .expect("Registered in time");
    for member in both.members() {
        assert!(
            member.registrations.iter().all(|r| r.state.is_registered()),
            "{member:?}"
        );
    }

    // Consul refuses a metadata key with a dot; etcd takes it. The composite refuses it,
    // and neither keeps anything of it.
    let mut dotted = instance(&service, &format!("i2-{run}"));
    dotted.metadata.insert("a.b".into(), "c".into());
    let refused = both.register(&dotted).await;
    assert!(
        matches!(&refused, Err(e @ Error::InvalidInput { .. }) if !e.is_temporary()),
        "{refused:?}"
    );
    assert!(both.registration(&service, &dotted.id).is_none());
    // An update that one member refuses leaves the previous value in both.
    let mut update = me.clone();
    update.metadata.insert("x.y".into(), "z".into());
    assert!(
        both.register(&update).await.is_err(),
        "the update is refused"
    );
    for (_, alone, _) in &watchers {
        assert_eq!(
            alone.get_service(&service).await.expect("get"),
            std::slice::from_ref(&me),
            "nothing of the refused writes stays"
        );
    }

    both.deregister(&me).await.expect("deregister");
    for (_, alone, watcher) in &mut watchers {
        watcher_reaches(watcher, &[], WITHIN).await;
        lists(alone.as_ref(), &service, &[], WITHIN).await;
    }
    both.close().await.expect("close");
}

/// Which member a fault case kills.
#[derive(Debug, Clone, Copy)]
enum Killed {
    Etcd,
    Consul,
}

/// One member killed and restarted: registers and deregisters through the composite return
/// promptly while it is down, the other member keeps serving (a plain client of it and the
/// composite list what was registered meanwhile), the composite's state says which member
/// lacks what, and once the killed member is back it holds exactly the composite's
/// registrations again.
async fn member_killed_and_restarted(killed: Killed) {
    init_logs("registry");
    let mut etcd_server = EtcdServer::start().await;
    let mut consul_agent = ConsulAgent::start().await;
    let etcd = format!(
        "{}/multi?timeout=1s&connect_timeout=1s&ttl=3s",
        etcd_server.url()
    );
    let consul = consul_agent.url("deregister_after=1m&timeout=1s&connect_timeout=1s&ttl=3s");
    let both = MultiRegistry::connect(&format!(
        "multi:?member_timeout={}ms|{etcd}|{consul}",
        MEMBER_TIMEOUT.as_millis()
    ))
    .await
    .expect("connect the composite");
    let (killed_url, live_url, killed_index) = match killed {
        Killed::Etcd => (&etcd, &consul, 0),
        Killed::Consul => (&consul, &etcd, 1),
    };
    let live = connect(live_url).await;

    let service = "helloworld";
    let a = instance(service, "a");
    both.register(&a).await.expect("register a");
    let mut watcher = both.watch(service).await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;

    match killed {
        Killed::Etcd => etcd_server.kill(),
        Killed::Consul => consul_agent.kill(),
    }
    let down_at = Instant::now();
    eprintln!("{killed:?} killed");

    // A register while the member is down returns promptly, and the live member lists it.
    let b = instance(service, "b");
    let started = Instant::now();
    both.register(&b)
        .await
        .expect("register b with a member down");
    let took = started.elapsed();
    eprintln!("register with {killed:?} down took {took:?}");
    assert!(
        took < MEMBER_TIMEOUT + PROMPT_SLACK,
        "a register waits for a dead member no longer than the member timeout: {took:?}"
    );
    let ab = [a.clone(), b.clone()];
    lists(live.as_ref(), service, &ab, WITHIN).await;
    lists(&both, service, &ab, WITHIN).await;
    watcher_reaches(&mut watcher, &ab, WITHIN).await;

    // So does a deregister, of an instance the dead member never got.
    let c = instance(service, "c");
    both.register(&c)
        .await
        .expect("register c with a member down");
    let started = Instant::now();
    both.deregister(&c)
        .await
        .expect("deregister c with a member down");
    let took = started.elapsed();
    eprintln!("deregister with {killed:?} down took {took:?}");
    assert!(took < MEMBER_TIMEOUT + PROMPT_SLACK, "{took:?}");
    lists(live.as_ref(), service, &ab, WITHIN).await;

    // The composite says the registration is not in every member, and which one lacks it.
    let mut status = both.registration(service, &b.id).expect("b is held");
    let lost = tokio::time::timeout(WITHIN, status.wait_for(RegistrationState::is_lost))
        .await
        .expect("b is Lost while a member lacks it")
        .expect("still held");
    eprintln!("b's state with {killed:?} down: {lost:?}");
    let member = &both.members()[killed_index];
    assert!(member.last_error.is_some(), "{member:?}");
    let b_there = member
        .registrations
        .iter()
        .find(|r| r.id == b.id)
        .expect("b on the killed member");
    assert!(
        matches!(b_there.state, MemberState::Retrying { .. }),
        "b never reached the killed member: {b_there:?}"
    );

    // Down for two TTLs: the live member, and the composite, serve a and b all along.
    while down_at.elapsed() < TTL * 2 {
        let from_live = live
            .get_service(service)
            .await
            .expect("the live member answers");
        assert_eq!(ids(&from_live), ["a", "b"], "the live member keeps serving");
        let from_both = both
            .get_service(service)
            .await
            .expect("the composite answers");
        assert_eq!(ids(&from_both), ["a", "b"], "the composite keeps serving");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    match killed {
        Killed::Etcd => etcd_server.start_again().await,
        Killed::Consul => consul_agent.start_again().await,
    }
    let up_at = Instant::now();
    eprintln!("{killed:?} back after {:?}", down_at.elapsed());

    // The killed member holds exactly the composite's registrations again: a (its handle
    // wrote it again, or kept it), b (the composite's retry), and not c.
    let alone = connect(killed_url).await;
    lists(alone.as_ref(), service, &ab, WITHIN).await;
    eprintln!(
        "{killed:?} lists a and b again {:?} after it was back",
        up_at.elapsed()
    );
    for id in [&a.id, &b.id] {
        let mut status = both.registration(service, id).expect("held");
        tokio::time::timeout(WITHIN, status.wait_for(RegistrationState::is_registered))
            .await
            .expect("Registered again in time")
            .expect("still held");
    }
    eprintln!(
        "the composite reports a and b Registered {:?} after {killed:?} was back",
        up_at.elapsed()
    );
    eventually(WITHIN, "every member holds a and b", || async {
        both.members().iter().all(|m| {
            m.registrations.len() == 2 && m.registrations.iter().all(|r| r.state.is_registered())
        })
    })
    .await;
    assert_eq!(
        ids(&both.get_service(service).await.expect("get")),
        ["a", "b"]
    );
    // The watcher from before the fault still follows both.
    let d = instance(service, "d");
    both.register(&d).await.expect("register d");
    let abd = [a.clone(), b.clone(), d.clone()];
    watcher_reaches(&mut watcher, &abd, WITHIN).await;
    lists(alone.as_ref(), service, &abd, WITHIN).await;

    both.close().await.expect("close");
    lists(alone.as_ref(), service, &[], WITHIN).await;
    lists(live.as_ref(), service, &[], WITHIN).await;
}

#[tokio::test]
async fn consul_killed_and_restarted() {
    member_killed_and_restarted(Killed::Consul).await;
}

#[tokio::test]
async fn etcd_killed_and_restarted() {
    member_killed_and_restarted(Killed::Etcd).await;
}

/// With both members down, a register fails (a temporary error) within the members' own
/// timeouts and leaves nothing held; a watch keeps its last list and is told, then recovers.
#[tokio::test]
async fn every_member_down() {
    init_logs("registry");
    let mut etcd_server = EtcdServer::start().await;
    let mut consul_agent = ConsulAgent::start().await;
    let etcd = format!(
        "{}/multi?timeout=1s&connect_timeout=1s&ttl=3s",
        etcd_server.url()
    );
    let consul = consul_agent.url("deregister_after=1m&timeout=1s&connect_timeout=1s&ttl=3s");
    let both = registry::connect(&format!("multi:?member_timeout=1s|{etcd}|{consul}"))
        .await
        .expect("connect the composite");
    let a = instance("svc", "a");
    both.register(&a).await.expect("register a");
    let mut watcher = both.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;

    etcd_server.kill();
    consul_agent.kill();
    // A composite cannot connect with no member reachable (as a single backend cannot with
    // its server down): promptly, a temporary error naming a member.
    let started = Instant::now();
    let refused = MultiRegistry::connect(&format!("multi:?member_timeout=1s|{etcd}|{consul}"))
        .await
        .map(drop);
    eprintln!(
        "connect with both down: {refused:?} after {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&refused, Err(e) if e.is_temporary() && e.to_string().contains("member 1")),
        "{refused:?}"
    );
    assert!(started.elapsed() < WITHIN, "{:?}", started.elapsed());
    let degraded = tokio::time::timeout(WITHIN, async {
        loop {
            match watcher.next_event().await.expect("the watcher goes on") {
                registry::WatchEvent::Degraded(error) => return error,
                registry::WatchEvent::Changed(list) => {
                    assert_eq!(*list, *std::slice::from_ref(&a), "the last list stands")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("told that no member can be followed");
    eprintln!("both down: the watcher was told {degraded}");
    let b = instance("svc", "b");
    let refused = tokio::time::timeout(WITHIN, both.register(&b))
        .await
        .expect("a register with every member down returns");
    assert!(
        matches!(&refused, Err(e) if e.is_temporary()),
        "{refused:?}"
    );
    assert!(both.registration("svc", "b").is_none(), "nothing held");

    etcd_server.start_again().await;
    consul_agent.start_again().await;
    tokio::time::timeout(WITHIN, async {
        loop {
            match watcher.next_event().await.expect("the watcher goes on") {
                registry::WatchEvent::Recovered => return,
                registry::WatchEvent::Changed(list) => {
                    assert_eq!(*list, *std::slice::from_ref(&a), "the list stands")
                }
                _ => {}
            }
        }
    })
    .await
    .expect("the watcher recovers once the members are back");
    both.register(&b)
        .await
        .expect("register b once the members are back");
    lists(both.as_ref(), "svc", &[a.clone(), b.clone()], WITHIN).await;
    both.close().await.expect("close");
}

/// A member that is down when the composite connects (the service restarts while one
/// registry is away): connect returns promptly, registers go to the live member, and once
/// the other is up the composite connects it in the background, writes it what was
/// registered meanwhile, and its watches follow it too.
async fn member_down_at_connect(down: Killed) {
    init_logs("registry");
    let mut etcd_server = EtcdServer::start().await;
    let mut consul_agent = ConsulAgent::start().await;
    let etcd = format!(
        "{}/multi?timeout=1s&connect_timeout=1s&ttl=3s",
        etcd_server.url()
    );
    let consul = consul_agent.url("deregister_after=1m&timeout=1s&connect_timeout=1s&ttl=3s");
    let url = format!(
        "multi:?member_timeout={}ms|{etcd}|{consul}",
        MEMBER_TIMEOUT.as_millis()
    );
    // What the composite declares with both members up.
    let declared = MultiRegistry::connect(&url)
        .await
        .expect("connect with both members up")
        .capabilities();
    let (down_url, live_url, down_index, live_index) = match down {
        Killed::Etcd => (&etcd, &consul, 0, 1),
        Killed::Consul => (&consul, &etcd, 1, 0),
    };
    match down {
        Killed::Etcd => etcd_server.kill(),
        Killed::Consul => consul_agent.kill(),
    }

    let started = Instant::now();
    let both = MultiRegistry::connect(&url)
        .await
        .expect("connect with a member down");
    let took = started.elapsed();
    eprintln!("connect with {down:?} down took {took:?}");
    assert!(
        took < MEMBER_TIMEOUT + PROMPT_SLACK,
        "connect waits for a dead member no longer than the member timeout: {took:?}"
    );
    assert_eq!(
        both.capabilities(),
        declared,
        "the capabilities do not depend on which members are up"
    );
    let members = both.members();
    assert!(members[live_index].connected, "{members:?}");
    assert!(!members[down_index].connected, "{members:?}");
    let (error, _) = members[down_index]
        .last_error
        .clone()
        .expect("the member's failure to connect is shown");
    assert!(error.is_temporary(), "{error}");
    eprintln!("{down:?} at connect: {error}");

    // Registered through the live member, promptly; its plain client lists it.
    let service = "helloworld";
    let a = instance(service, "a");
    let started = Instant::now();
    both.register(&a)
        .await
        .expect("register with a member not connected");
    let took = started.elapsed();
    eprintln!("register with {down:?} not connected took {took:?}");
    assert!(took < MEMBER_TIMEOUT + PROMPT_SLACK, "{took:?}");
    let live = connect(live_url).await;
    lists(live.as_ref(), service, std::slice::from_ref(&a), WITHIN).await;
    let mut watcher = both.watch(service).await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;
    let on_down = both.members()[down_index].registrations.clone();
    assert!(
        matches!(&on_down[..], [r] if r.id == a.id && matches!(r.state, MemberState::Retrying { .. })),
        "a waits for the member to connect: {on_down:?}"
    );
    let mut status = both.registration(service, &a.id).expect("a is held");
    tokio::time::timeout(WITHIN, status.wait_for(RegistrationState::is_lost))
        .await
        .expect("a is Lost (not Registered) while a member lacks it")
        .expect("still held");

    // Times from here count the server's own start-up.
    let up_at = Instant::now();
    match down {
        Killed::Etcd => etcd_server.start_again().await,
        Killed::Consul => consul_agent.start_again().await,
    }
    eprintln!("{down:?} serves {:?} after it was started", up_at.elapsed());

    // The member is connected in the background and takes what was registered meanwhile.
    let alone = connect(down_url).await;
    lists(alone.as_ref(), service, std::slice::from_ref(&a), WITHIN).await;
    eprintln!(
        "{down:?} lists a {:?} after it was started",
        up_at.elapsed()
    );
    let mut status = both.registration(service, &a.id).expect("a is held");
    tokio::time::timeout(WITHIN, status.wait_for(RegistrationState::is_registered))
        .await
        .expect("Registered once every member holds it")
        .expect("still held");
    eprintln!(
        "a Registered in both {:?} after {down:?} was started",
        up_at.elapsed()
    );
    let members = both.members();
    assert!(members[down_index].connected, "{members:?}");
    assert!(
        members[down_index]
            .registrations
            .iter()
            .all(|r| r.state.is_registered()),
        "{members:?}"
    );
    assert_eq!(
        both.capabilities(),
        declared,
        "nor on a member connecting later"
    );

    // The watcher made before the member was connected follows it too: an instance
    // registered in that member alone shows.
    let b = instance(service, "b");
    alone
        .register(&b)
        .await
        .expect("register b in the member alone");
    watcher_reaches(&mut watcher, &[a.clone(), b.clone()], WITHIN).await;
    eprintln!(
        "the composite's watcher sees b (in {down:?} alone) {:?} after {down:?} was started",
        up_at.elapsed()
    );

    both.close().await.expect("close");
    lists(alone.as_ref(), service, std::slice::from_ref(&b), WITHIN).await;
    lists(live.as_ref(), service, &[], WITHIN).await;
    alone.deregister(&b).await.expect("deregister b");
}

#[tokio::test]
async fn consul_down_at_connect() {
    member_down_at_connect(Killed::Consul).await;
}

#[tokio::test]
async fn etcd_down_at_connect() {
    member_down_at_connect(Killed::Etcd).await;
}

/// A member that hangs (its server paused: connections accepted, nothing answered) holds up
/// connect by the member timeout at most, even where its own connect timeout is longer; it
/// is connected once it answers again.
#[tokio::test]
async fn a_hanging_member_holds_up_connect_by_the_member_timeout_at_most() {
    init_logs("registry");
    let etcd_server = EtcdServer::start().await;
    // etcd's own connect timeout (5 s by default) is longer than the member timeout.
    let etcd = format!("{}/multi-hang", etcd_server.url());
    let memory = "memory://multi-hang";
    let url = format!(
        "multi:?member_timeout={}ms|{memory}|{etcd}",
        MEMBER_TIMEOUT.as_millis()
    );
    etcd_server.pause();
    let started = Instant::now();
    let both = MultiRegistry::connect(&url).await;
    let took = started.elapsed();
    etcd_server.resume();
    let both = both.expect("connect with a member hanging");
    eprintln!("connect with etcd hanging took {took:?}");
    assert!(took < MEMBER_TIMEOUT + PROMPT_SLACK, "{took:?}");
    assert!(!both.members()[1].connected, "{:?}", both.members());
    let me = instance("svc", "hang-1");
    both.register(&me).await.expect("register");
    let alone = connect(&etcd).await;
    lists(alone.as_ref(), "svc", std::slice::from_ref(&me), WITHIN).await;
    assert!(both.members()[1].connected);
    both.close().await.expect("close");
    lists(alone.as_ref(), "svc", &[], WITHIN).await;
}
