//! The composite over in-memory members: what does not need a server. The real servers,
//! and a member killed and restarted, are in `tests/multi.rs`.

use std::time::Duration;

use super::*;
use crate::{MetadataLimits, RegistrationState};

fn instance(id: &str, name: &str, version: &str) -> ServiceInstance {
    ServiceInstance::builder(id, name)
        .version(version)
        .endpoint("http://127.0.0.1:8000")
        .build()
        .expect("valid")
}

/// Two in-memory stores of this test's own, their URLs, and the composite of both.
async fn pair(test: &str, options: &str) -> (String, String, MultiRegistry) {
    let a = format!("memory://multi-{test}-a");
    let b = format!("memory://multi-{test}-b");
    let both = MultiRegistry::connect(&format!("multi:{options}{a}|{b}"))
        .await
        .expect("connect");
    (a, b, both)
}

#[tokio::test]
async fn a_registration_goes_to_every_member_and_leaves_every_member() {
    let (a, b, both) = pair("both", "").await;
    let me = instance("1", "svc", "v1");
    both.register(&me).await.unwrap();
    for url in [&a, &b] {
        let alone = crate::connect(url).await.unwrap();
        assert_eq!(
            alone.get_service("svc").await.unwrap(),
            std::slice::from_ref(&me),
            "{url}"
        );
    }
    let mut status = both.registration("svc", "1").expect("held");
    status.wait_for(RegistrationState::is_registered).await;
    let members = both.members();
    assert_eq!(members.len(), 2);
    for (member, url) in members.iter().zip([&a, &b]) {
        assert_eq!(&member.url, url);
        assert_eq!(member.scheme, "memory");
        assert_eq!(member.registrations.len(), 1, "{member:?}");
        assert!(member.registrations[0].state.is_registered(), "{member:?}");
        assert!(member.last_error.is_none(), "{member:?}");
    }

    both.deregister(&me).await.unwrap();
    assert!(both.registration("svc", "1").is_none());
    for url in [&a, &b] {
        let alone = crate::connect(url).await.unwrap();
        assert!(alone.get_service("svc").await.unwrap().is_empty(), "{url}");
    }
    assert!(
        both.members().iter().all(|m| m.registrations.is_empty()),
        "the links of a removed registration end"
    );
}

#[tokio::test]
async fn merge_is_a_union_by_id_where_the_first_member_wins_and_first_reads_one_member() {
    let a = "memory://multi-merge-a";
    let b = "memory://multi-merge-b";
    let (alone_a, alone_b) = (
        crate::connect(a).await.unwrap(),
        crate::connect(b).await.unwrap(),
    );
    alone_a
        .register(&instance("x", "svc", "from-a"))
        .await
        .unwrap();
    alone_b
        .register(&instance("x", "svc", "from-b"))
        .await
        .unwrap();
    alone_b
        .register(&instance("y", "svc", "from-b"))
        .await
        .unwrap();

    let shown = |list: &[ServiceInstance]| -> Vec<(String, String)> {
        list.iter()
            .map(|i| (i.id.clone(), i.version.clone()))
            .collect()
    };
    let merged = crate::connect(&format!("multi:{a}|{b}")).await.unwrap();
    let expected = [("x".into(), "from-a".into()), ("y".into(), "from-b".into())];
    assert_eq!(shown(&merged.get_service("svc").await.unwrap()), expected);
    let mut watcher = merged.watch("svc").await.unwrap();
    assert_eq!(shown(&watcher.next().await.unwrap()), expected);

    // The other order: b's x wins.
    let reversed = crate::connect(&format!("multi:{b}|{a}")).await.unwrap();
    assert_eq!(
        shown(&reversed.get_service("svc").await.unwrap()),
        [("x".into(), "from-b".into()), ("y".into(), "from-b".into())]
    );

    // read=first: a's list alone.
    let first = crate::connect(&format!("multi:?read=first|{a}|{b}"))
        .await
        .unwrap();
    assert_eq!(
        shown(&first.get_service("svc").await.unwrap()),
        [("x".to_owned(), "from-a".to_owned())]
    );
    let mut watcher = first.watch("svc").await.unwrap();
    assert_eq!(
        shown(&watcher.next().await.unwrap()),
        [("x".to_owned(), "from-a".to_owned())]
    );

    assert_eq!(merged.list_services().await.unwrap(), ["svc"]);
}

#[tokio::test]
async fn a_watch_follows_every_member() {
    let (a, b, both) = pair("watch", "").await;
    let mut watcher = both.watch("svc").await.unwrap();
    assert!(watcher.next().await.unwrap().is_empty());
    let alone_b = crate::connect(&b).await.unwrap();
    let only_b = instance("b1", "svc", "v1");
    alone_b.register(&only_b).await.unwrap();
    assert_eq!(watcher.next().await.unwrap(), vec![only_b.clone()]);

    let mine = instance("a1", "svc", "v1");
    both.register(&mine).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .expect("both listed in time")
            .unwrap();
        if list == [mine.clone(), only_b.clone()] {
            break;
        }
    }
    alone_b.deregister(&only_b).await.unwrap();
    let alone_a = crate::connect(&a).await.unwrap();
    assert_eq!(
        alone_a.get_service("svc").await.unwrap(),
        std::slice::from_ref(&mine)
    );
    loop {
        let list = tokio::time::timeout_at(deadline, watcher.next())
            .await
            .expect("b1 gone in time")
            .unwrap();
        if list == vec![mine.clone()] {
            break;
        }
    }
}

#[tokio::test]
async fn another_owners_instance_is_refused_and_close_removes_everything() {
    let (a, b, both) = pair("owner", "").await;
    let theirs = instance("theirs", "svc", "v1");
    let alone_a = crate::connect(&a).await.unwrap();
    alone_a.register(&theirs).await.unwrap();
    let refused = both.deregister(&theirs).await;
    assert!(
        matches!(refused, Err(Error::NotOwned { .. })),
        "{refused:?}"
    );
    assert_eq!(
        alone_a.get_service("svc").await.unwrap(),
        std::slice::from_ref(&theirs)
    );

    let mine = instance("mine", "svc", "v1");
    both.register(&mine).await.unwrap();
    both.close().await.unwrap();
    assert!(matches!(both.register(&mine).await, Err(Error::Closed)));
    assert_eq!(
        alone_a.get_service("svc").await.unwrap(),
        std::slice::from_ref(&theirs)
    );
    let alone_b = crate::connect(&b).await.unwrap();
    assert!(alone_b.get_service("svc").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_update_reaches_every_member() {
    let (a, b, both) = pair("update", "").await;
    let v1 = instance("1", "svc", "v1");
    let v2 = instance("1", "svc", "v2");
    both.register(&v1).await.unwrap();
    both.register(&v2).await.unwrap();
    for url in [&a, &b] {
        let alone = crate::connect(url).await.unwrap();
        assert_eq!(
            alone.get_service("svc").await.unwrap(),
            std::slice::from_ref(&v2),
            "{url}"
        );
    }
}

#[tokio::test]
async fn the_facade_connects_a_composite_and_member_errors_name_the_member() {
    let both = crate::connect("multi:memory://multi-facade-a|memory://multi-facade-b")
        .await
        .unwrap();
    assert_eq!(both.scheme(), "multi");
    assert!(crate::schemes().contains(&"multi"));

    let err =
        crate::connect("multi:memory://multi-err-a|memory://multi-err-b?bogus=1&password=hunter2")
            .await
            .unwrap_err();
    assert!(matches!(err, Error::InvalidUrl { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("member 2") && text.contains("bogus"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "{text}");

    let err = crate::connect("multi:memory://multi-err-a|redis://127.0.0.1:6379")
        .await
        .unwrap_err();
    assert!(matches!(err, Error::UnknownScheme { .. }), "{err}");

    let err = crate::connect("multi:memory://multi-err-a|memory://multi-err-a")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("repeats member 1"), "{err}");
}

#[test]
fn capabilities_are_what_every_member_offers() {
    let etcd_like = Capabilities {
        register: true,
        watch: true,
        list_services: true,
        ttl_expiry: true,
        cross_process: true,
        expiry_slack: Duration::from_millis(1500),
        min_ttl: Duration::from_secs(2),
        reports_every_outage: true,
        metadata: MetadataLimits::default(),
    };
    let consul_like = Capabilities {
        list_services: false,
        expiry_slack: Duration::from_secs(3),
        min_ttl: Duration::from_secs(1),
        metadata: MetadataLimits {
            entries: 64,
            value_bytes: 512,
            token_keys: true,
            total_chars: usize::MAX,
        },
        ..etcd_like
    };
    let both = intersection([etcd_like, consul_like].into_iter());
    assert!(both.register && both.watch && both.ttl_expiry && both.cross_process);
    assert!(!both.list_services);
    assert!(
        !both.reports_every_outage,
        "an outage of one member is none of the composite"
    );
    assert_eq!(both.expiry_slack, Duration::from_secs(3));
    assert_eq!(both.min_ttl, Duration::from_secs(2));
    assert_eq!(both.metadata, consul_like.metadata);
}

#[tokio::test]
async fn registries_connected_in_code_make_a_composite() {
    let a: Arc<dyn Registry> = Arc::new(crate::MemoryRegistry::new());
    let b = crate::connect("memory://multi-api-b").await.unwrap();
    let both = MultiRegistry::from_registries(
        vec![
            ("in-process".into(), a.clone()),
            ("memory://multi-api-b".into(), b.clone()),
        ],
        MultiConfig::new(Vec::<String>::new()).with_read(ReadMode::Merge),
    )
    .unwrap();
    let me = instance("1", "api", "v1");
    both.register(&me).await.unwrap();
    assert_eq!(
        a.get_service("api").await.unwrap(),
        std::slice::from_ref(&me)
    );
    assert_eq!(
        b.get_service("api").await.unwrap(),
        std::slice::from_ref(&me)
    );
    assert_eq!(both.members()[0].url, "in-process");
    assert!(MultiRegistry::from_registries(Vec::new(), MultiConfig::new(["x"])).is_err());
}

#[tokio::test]
async fn capabilities_come_from_the_members_schemes() {
    let both = MultiRegistry::connect("multi:memory://multi-caps-a|memory://multi-caps-b")
        .await
        .unwrap();
    let alone = crate::connect("memory://multi-caps-a").await.unwrap();
    assert_eq!(alone.capabilities(), crate::memory::capabilities());
    let expected = Capabilities {
        reports_every_outage: false,
        ..crate::memory::capabilities()
    };
    assert_eq!(both.capabilities(), expected);
}

/// A member that cannot be reached (nothing listens on port 1) does not fail `connect`: it
/// is tried again by a task of the composite's, which dropping or closing the composite
/// stops.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn a_member_not_connected_is_tried_by_a_task_that_drop_and_close_stop() {
    let runtime = tokio::runtime::Handle::current().metrics();
    let before = runtime.num_alive_tasks();
    let url =
        "multi:?member_timeout=200ms|memory://multi-lazy|etcd://127.0.0.1:1/x?connect_timeout=1s";
    let both = MultiRegistry::connect(url)
        .await
        .expect("one member is enough");
    let members = both.members();
    assert!(members[0].connected, "{members:?}");
    assert!(!members[1].connected, "{members:?}");
    assert_eq!(members[1].scheme, "etcd");
    let (error, _) = members[1].last_error.clone().expect("the failure is shown");
    assert!(error.is_temporary(), "{error}");
    let me = instance("1", "lazy", "v1");
    both.register(&me)
        .await
        .expect("registered in the memory member");
    let on_etcd = both.members()[1].registrations.clone();
    assert!(
        matches!(&on_etcd[..], [r] if matches!(r.state, MemberState::Retrying { .. })),
        "{on_etcd:?}"
    );
    both.deregister(&me).await.expect("deregister");
    assert!(
        runtime.num_alive_tasks() > before,
        "the member is still tried"
    );
    drop(both);
    settled(&runtime, before, "after drop").await;

    let both = MultiRegistry::connect(url)
        .await
        .expect("one member is enough");
    assert!(runtime.num_alive_tasks() > before, "the member is tried");
    both.close().await.expect("close");
    settled(&runtime, before, "after close").await;
    drop(both);
}

/// Waits until `before` tasks are alive on the runtime again, failing after 10 s.
#[cfg(feature = "etcd")]
async fn settled(runtime: &tokio::runtime::RuntimeMetrics, before: usize, what: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while runtime.num_alive_tasks() != before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {} tasks alive, {before} before",
            runtime.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
