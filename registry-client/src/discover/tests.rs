//! The diff behind [`Discover`], over the in-memory registry.

use std::future::poll_fn;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use registry_core::watch::{Source, Stop, Updates, Watches};
use registry_core::{MemoryRegistry, Registrar, Registry};
use tokio::sync::watch;

use super::*;

fn instance(id: &str, endpoints: &[&str], metadata: &[(&str, &str)]) -> ServiceInstance {
    let mut builder = ServiceInstance::builder(id, "svc").version("v1");
    for e in endpoints {
        builder = builder.endpoint(*e);
    }
    for (k, v) in metadata {
        builder = builder.metadata(*k, *v);
    }
    builder.build().expect("instance")
}

/// A change as text: `+id@endpoint w=weight` or `-id@endpoint`.
fn show(change: Change<NodeKey, Node>) -> String {
    match change {
        Change::Insert(key, node) => {
            assert_eq!(key.instance_id(), node.instance_id);
            assert_eq!(key.endpoint(), node.endpoint.as_str());
            let mut text = format!("+{key} w={}", node.weight);
            if let Some(zone) = node.metadata.get("zone") {
                text.push_str(&format!(" zone={zone}"));
            }
            text
        }
        Change::Remove(key) => format!("-{key}"),
    }
}

/// The next `n` changes, each within a deadline.
async fn take(discover: &mut Discover, n: usize) -> Vec<String> {
    let mut changes = Vec::new();
    for _ in 0..n {
        match tokio::time::timeout(Duration::from_secs(5), discover.next()).await {
            Ok(Some(Ok(change))) => changes.push(show(change)),
            Ok(None) => panic!("the stream ended after {changes:?}"),
            Err(_) => panic!("no change within the deadline after {changes:?}"),
        }
    }
    changes
}

/// Registers a marker instance and takes changes until its insertion: what came before it
/// is everything the earlier registry writes caused (so "nothing" is checked without a wait).
async fn until_marker(registry: &MemoryRegistry, discover: &mut Discover) -> Vec<String> {
    let marker = instance("zz-marker", &["grpc://10.9.9.9:9"], &[]);
    registry.register(&marker).await.expect("register");
    let mut before = Vec::new();
    loop {
        let change = take(discover, 1).await.remove(0);
        if change.starts_with("+zz-marker@") {
            break;
        }
        before.push(change);
    }
    registry.deregister(&marker).await.expect("deregister");
    assert_eq!(take(discover, 1).await, ["-zz-marker@grpc://10.9.9.9:9"]);
    before
}

async fn setup(store: &str, options: Options) -> (MemoryRegistry, Discover) {
    let registry = MemoryRegistry::named(store, Duration::from_secs(30));
    let discover = Discover::new(
        Arc::new(registry.clone()),
        "discovery:///svc",
        "grpc",
        options,
    )
    .await
    .expect("discover");
    (registry, discover)
}

fn live(discover: &Discover) -> Vec<String> {
    discover.nodes().map(|(k, _)| k.to_string()).collect()
}

#[tokio::test]
async fn inserts_and_removes_follow_the_registry() {
    let (registry, mut discover) = setup("discover-basic", Options::default()).await;
    assert_eq!(discover.service(), "svc");
    assert_eq!(discover.scheme(), "grpc");
    let a = instance("a", &["grpc://10.0.0.1:90", "http://10.0.0.1:80"], &[]);
    registry.register(&a).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);
    let b = instance("b", &["grpc://10.0.0.2:90"], &[("weight", "2")]);
    registry.register(&b).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+b@grpc://10.0.0.2:90 w=2"]);
    assert_eq!(
        live(&discover),
        ["a@grpc://10.0.0.1:90", "b@grpc://10.0.0.2:90"]
    );

    registry.deregister(&a).await.expect("deregister");
    assert_eq!(take(&mut discover, 1).await, ["-a@grpc://10.0.0.1:90"]);
    registry.deregister(&b).await.expect("deregister");
    assert_eq!(take(&mut discover, 1).await, ["-b@grpc://10.0.0.2:90"]);
    assert_eq!(live(&discover), Vec::<String>::new());
}

#[tokio::test]
async fn the_first_changes_are_the_current_list() {
    let registry = MemoryRegistry::named("discover-first", Duration::from_secs(30));
    registry
        .register(&instance(
            "a",
            &["grpc://10.0.0.1:90", "grpc://10.0.0.1:91"],
            &[],
        ))
        .await
        .expect("register");
    registry
        .register(&instance("b", &["http://10.0.0.2:80"], &[]))
        .await
        .expect("register");
    // Built from a watcher; the registry stays alive beside it.
    let watcher = registry.watch("svc").await.expect("watch");
    let mut discover = Discover::from_watcher(watcher, "grpc", Options::default());
    let mut first = take(&mut discover, 2).await;
    first.sort();
    assert_eq!(
        first,
        ["+a@grpc://10.0.0.1:90 w=1", "+a@grpc://10.0.0.1:91 w=1"]
    );
    assert_eq!(
        until_marker(&registry, &mut discover).await,
        Vec::<String>::new()
    );
}

/// An instance that moves to another address: the new endpoint is inserted before the old
/// one is removed, so a balancer never runs empty in between.
#[tokio::test]
async fn an_endpoint_change_inserts_then_removes() {
    let (registry, mut discover) = setup("discover-move", Options::default()).await;
    registry
        .register(&instance("a", &["grpc://10.0.0.1:90"], &[]))
        .await
        .expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);
    registry
        .register(&instance("a", &["grpc://10.0.0.2:90"], &[]))
        .await
        .expect("register");
    assert_eq!(
        take(&mut discover, 2).await,
        ["+a@grpc://10.0.0.2:90 w=1", "-a@grpc://10.0.0.1:90"]
    );
    // Same address, now secure: another key (the connection differs).
    registry
        .register(&instance("a", &["grpc://10.0.0.2:90?isSecure=true"], &[]))
        .await
        .expect("register");
    assert_eq!(
        take(&mut discover, 2).await,
        [
            "+a@grpc://10.0.0.2:90?isSecure=true w=1",
            "-a@grpc://10.0.0.2:90"
        ]
    );
}

/// A new weight or metadata re-inserts the endpoint under its key, without a removal; a
/// change elsewhere in the instance (another scheme, the same node) yields nothing.
#[tokio::test]
async fn a_weight_or_metadata_change_reinserts() {
    let (registry, mut discover) = setup("discover-weight", Options::default()).await;
    registry
        .register(&instance("a", &["grpc://10.0.0.1:90"], &[]))
        .await
        .expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);
    registry
        .register(&instance("a", &["grpc://10.0.0.1:90"], &[("weight", "5")]))
        .await
        .expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=5"]);
    registry
        .register(&instance(
            "a",
            &["grpc://10.0.0.1:90"],
            &[("weight", "5"), ("zone", "eu-1")],
        ))
        .await
        .expect("register");
    assert_eq!(
        take(&mut discover, 1).await,
        ["+a@grpc://10.0.0.1:90 w=5 zone=eu-1"]
    );
    // An http endpoint added: nothing for grpc.
    registry
        .register(&instance(
            "a",
            &["grpc://10.0.0.1:90", "http://10.0.0.1:80"],
            &[("weight", "5"), ("zone", "eu-1")],
        ))
        .await
        .expect("register");
    assert_eq!(
        until_marker(&registry, &mut discover).await,
        Vec::<String>::new()
    );
    assert_eq!(live(&discover), ["a@grpc://10.0.0.1:90"]);
}

/// One address listed twice by one instance, or by two instances (a restarted instance
/// whose old registration is still there), is one endpoint; it moves to the other instance
/// when its owner stops listing it.
#[tokio::test]
async fn duplicate_endpoints_are_one() {
    let (registry, mut discover) = setup("discover-dup", Options::default()).await;
    let a = instance("a", &["grpc://10.0.0.1:90", "grpc://10.0.0.1:90"], &[]);
    registry.register(&a).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);
    // b lists a's address (with a query that does not change it), and one of its own.
    let b = instance(
        "b",
        &["grpc://10.0.0.1:90?isSecure=false", "grpc://10.0.0.2:90"],
        &[],
    );
    registry.register(&b).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+b@grpc://10.0.0.2:90 w=1"]);
    // A change of the duplicate in b alone: a still has the address.
    let b2 = instance(
        "b",
        &["grpc://10.0.0.1:90?isSecure=false", "grpc://10.0.0.2:90"],
        &[("zone", "eu-2")],
    );
    registry.register(&b2).await.expect("register");
    assert_eq!(
        take(&mut discover, 1).await,
        ["+b@grpc://10.0.0.2:90 w=1 zone=eu-2"]
    );
    // a leaves: b takes its address over, inserted before a's is removed.
    registry.deregister(&a).await.expect("deregister");
    assert_eq!(
        take(&mut discover, 2).await,
        [
            "+b@grpc://10.0.0.1:90?isSecure=false w=1 zone=eu-2",
            "-a@grpc://10.0.0.1:90"
        ]
    );
    // a comes back, first by id: b keeps the address while it lists it.
    registry.register(&a).await.expect("register");
    assert_eq!(
        until_marker(&registry, &mut discover).await,
        Vec::<String>::new()
    );
    assert_eq!(
        live(&discover),
        [
            "b@grpc://10.0.0.1:90?isSecure=false",
            "b@grpc://10.0.0.2:90"
        ]
    );
    registry.deregister(&b).await.expect("deregister");
    let mut changes = take(&mut discover, 3).await;
    changes[1..].sort();
    assert_eq!(
        changes,
        [
            "+a@grpc://10.0.0.1:90 w=1",
            "-b@grpc://10.0.0.1:90?isSecure=false",
            "-b@grpc://10.0.0.2:90",
        ]
    );
}

/// The filter is applied to each instance that changes: one leaving it is removed.
#[tokio::test]
async fn the_filter_selects_instances() {
    let (registry, mut discover) =
        setup("discover-filter", Options::default().with_version("v2")).await;
    registry
        .register(&instance("a", &["grpc://10.0.0.1:90"], &[]))
        .await
        .expect("register");
    let b = ServiceInstance::builder("b", "svc")
        .version("v2")
        .endpoint("grpc://10.0.0.2:90")
        .build()
        .expect("instance");
    registry.register(&b).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+b@grpc://10.0.0.2:90 w=1"]);
    let b1 = instance("b", &["grpc://10.0.0.2:90"], &[]);
    registry.register(&b1).await.expect("register");
    assert_eq!(take(&mut discover, 1).await, ["-b@grpc://10.0.0.2:90"]);
}

/// The stream ends when the registry it follows is closed; the last endpoints are still
/// known.
#[tokio::test]
async fn the_stream_ends_with_the_registry() {
    let (writer, _) = setup("discover-end", Options::default()).await;
    // A clone is another handle, with watches of its own: this one is closed.
    let reader = Arc::new(MemoryRegistry::named(
        "discover-end",
        Duration::from_secs(30),
    ));
    let mut discover = Discover::new(
        reader.clone(),
        "discovery:///svc",
        "grpc",
        Options::default(),
    )
    .await
    .expect("discover");
    writer
        .register(&instance("a", &["grpc://10.0.0.1:90"], &[]))
        .await
        .expect("register");
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);
    reader.close().await.expect("close");
    let end = tokio::time::timeout(Duration::from_secs(5), discover.next())
        .await
        .expect("the stream ends");
    assert!(end.is_none(), "{end:?}");
    assert!(discover.next().await.is_none());
    assert_eq!(live(&discover), ["a@grpc://10.0.0.1:90"]);
    assert!(discover.degraded().is_none());
}

/// A source whose list and reachability the test sets.
#[derive(Clone)]
struct Flaky(Arc<watch::Sender<(Vec<ServiceInstance>, bool)>>);

fn unavailable() -> registry_core::Error {
    registry_core::Error::Unavailable {
        message: "down".into(),
        source: None,
    }
}

#[async_trait]
impl Source for Flaky {
    type Position = ();

    async fn list(&self, _name: &str) -> registry_core::Result<(Vec<ServiceInstance>, ())> {
        let (list, down) = self.0.borrow().clone();
        match down {
            true => Err(unavailable()),
            false => Ok((list, ())),
        }
    }

    async fn follow(&self, _name: &str, _from: (), updates: &Updates<()>) -> Stop {
        let mut rx = self.0.subscribe();
        updates.following();
        loop {
            {
                let state = rx.borrow_and_update();
                if state.1 {
                    return Stop::Failed(unavailable());
                }
                updates.list(state.0.clone(), ());
            }
            if rx.changed().await.is_err() {
                return Stop::Failed(registry_core::Error::Closed);
            }
        }
    }

    fn retry_cap(&self) -> Duration {
        Duration::from_millis(50)
    }
}

/// Polls `discover` until `done` holds (within a deadline); the changes yielded meanwhile.
async fn poll_until(discover: &mut Discover, done: impl Fn(&Discover) -> bool) -> Vec<String> {
    let mut changes = Vec::new();
    let wait = poll_fn(|cx| loop {
        match Pin::new(&mut *discover).poll_next(cx) {
            Poll::Ready(Some(Ok(change))) => changes.push(show(change)),
            Poll::Ready(None) => panic!("the stream ended"),
            Poll::Pending if done(discover) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    });
    tokio::time::timeout(Duration::from_secs(5), wait)
        .await
        .expect("the condition within the deadline");
    changes
}

/// While the registry cannot be reached nothing is yielded (the consumer keeps its
/// endpoints) and `degraded()` says why; the changes made meanwhile follow the recovery.
#[tokio::test]
async fn an_outage_keeps_the_endpoints() {
    let a = instance("a", &["grpc://10.0.0.1:90"], &[]);
    let state = Arc::new(watch::Sender::new((vec![a], false)));
    let watches = Watches::new(Flaky(state.clone()));
    let watcher = watches.watch("svc").await.expect("watch");
    let mut discover = Discover::from_watcher(watcher, "grpc", Options::default());
    assert_eq!(take(&mut discover, 1).await, ["+a@grpc://10.0.0.1:90 w=1"]);

    state.send_modify(|s| s.1 = true);
    let changes = poll_until(&mut discover, |d| d.degraded().is_some()).await;
    assert_eq!(changes, Vec::<String>::new());
    assert!(
        matches!(
            discover.degraded(),
            Some(registry_core::Error::Unavailable { .. })
        ),
        "{:?}",
        discover.degraded()
    );
    // The list moves while the registry is out of reach: nothing is seen of it yet.
    let b = instance("b", &["grpc://10.0.0.2:90"], &[]);
    state.send_modify(|s| s.0 = vec![b]);
    assert_eq!(live(&discover), ["a@grpc://10.0.0.1:90"]);

    state.send_modify(|s| s.1 = false);
    let changes = poll_until(&mut discover, |d| {
        d.degraded().is_none() && live(d) == ["b@grpc://10.0.0.2:90"]
    })
    .await;
    assert_eq!(
        changes,
        ["+b@grpc://10.0.0.2:90 w=1", "-a@grpc://10.0.0.1:90"]
    );
    assert_eq!(live(&discover), ["b@grpc://10.0.0.2:90"]);
}

/// The diff alone, over lists given by hand (unsorted, with a repeated id: read in order by
/// id, the first of an id kept).
#[test]
fn lists_out_of_order_are_read_by_id() {
    let mut diff = Diff::new("grpc", None);
    let mut out = VecDeque::new();
    let b = instance("b", &["grpc://10.0.0.2:90"], &[]);
    let a = instance("a", &["grpc://10.0.0.1:90"], &[]);
    let a_again = instance("a", &["grpc://10.0.0.3:90"], &[]);
    diff.apply(
        Instances::from(vec![b.clone(), a.clone(), a_again]),
        &mut out,
    );
    let mut changes: Vec<String> = out.drain(..).map(show).collect();
    changes.sort();
    assert_eq!(
        changes,
        ["+a@grpc://10.0.0.1:90 w=1", "+b@grpc://10.0.0.2:90 w=1"]
    );
    // The same snapshot again, or an equal one: nothing.
    let same = diff.last.clone();
    diff.apply(same, &mut out);
    diff.apply(Instances::from(vec![a, b]), &mut out);
    assert!(out.is_empty(), "{out:?}");
}

/// What a balancer needs: a `tower::discover::Discover` of nodes under `NodeKey`s.
#[test]
fn it_is_a_tower_discover() {
    fn discover<D>()
    where
        D: tower::discover::Discover<Key = NodeKey, Service = Node, Error = Infallible>
            + Send
            + Unpin
            + 'static,
    {
    }
    discover::<Discover>();
}

/// Random lists, one after another: the changes always take a consumer to exactly one node
/// per address listed, each the current node of a key the list has, and only keys the
/// consumer holds are removed.
#[test]
fn random_lists_converge() {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    let mut rng = StdRng::seed_from_u64(13);
    let endpoints = [
        "grpc://10.0.0.1:90",
        "grpc://10.0.0.1:90?isSecure=false",
        "grpc://10.0.0.2:90",
        "grpc://10.0.0.3:90",
        "http://10.0.0.3:80",
    ];
    let mut diff = Diff::new("grpc", None);
    let mut consumer: BTreeMap<NodeKey, Node> = BTreeMap::new();
    let mut out = VecDeque::new();
    for round in 0..500 {
        let mut list = Vec::new();
        for id in ["a", "b", "c", "d"] {
            if rng.random_bool(0.3) {
                continue;
            }
            let listed: Vec<&str> = endpoints
                .iter()
                .copied()
                .filter(|_| rng.random_bool(0.4))
                .collect();
            let weight = rng.random_range(1..3u8).to_string();
            list.push(instance(id, &listed, &[("weight", weight.as_str())]));
        }
        diff.apply(Instances::from(list.clone()), &mut out);
        for change in out.drain(..) {
            match change {
                Change::Insert(key, node) => {
                    consumer.insert(key, node);
                }
                Change::Remove(key) => {
                    assert!(consumer.remove(&key).is_some(), "round {round}: {key}");
                }
            }
        }
        assert_eq!(consumer, diff.live, "round {round}");
        let mut wanted: BTreeMap<String, Vec<(NodeKey, Node)>> = BTreeMap::new();
        for i in &list {
            for node in instance_nodes(i, "grpc", None) {
                let key = NodeKey::new(&i.id, node.endpoint.as_str());
                wanted
                    .entry(node.endpoint.authority())
                    .or_default()
                    .push((key, node));
            }
        }
        let addresses: Vec<String> = consumer.values().map(|n| n.endpoint.authority()).collect();
        assert_eq!(
            addresses.iter().collect::<BTreeSet<_>>().len(),
            addresses.len(),
            "round {round}: one node per address: {consumer:?}"
        );
        assert_eq!(
            addresses.into_iter().collect::<BTreeSet<_>>(),
            wanted.keys().cloned().collect::<BTreeSet<_>>(),
            "round {round}"
        );
        for (key, node) in &consumer {
            let offered = &wanted[&node.endpoint.authority()];
            assert!(
                offered.iter().any(|(k, n)| k == key && n == node),
                "round {round}: {key} is not current"
            );
        }
    }
}
