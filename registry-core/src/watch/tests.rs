//! The engine against a scripted source.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use tokio::sync::watch;

use super::*;

fn instance(id: &str) -> ServiceInstance {
    ServiceInstance {
        id: id.into(),
        name: "svc".into(),
        ..Default::default()
    }
}

fn ids(list: &[ServiceInstance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

#[derive(Default)]
struct Script {
    list: Mutex<Vec<ServiceInstance>>,
    changed: Mutex<Option<watch::Sender<u64>>>,
    /// Every call fails while set.
    down: AtomicBool,
    /// `list` never answers while set.
    hang: AtomicBool,
    /// `list` fails with a permanent error while set.
    refuse: AtomicBool,
    /// The next `follow` panics.
    panic: AtomicBool,
    lists: AtomicUsize,
    follows: AtomicUsize,
    /// Lists handed to the engine by `follow`.
    delivered: AtomicUsize,
    releases: AtomicUsize,
}

impl Script {
    fn notify(&self) {
        if let Some(tx) = self.changed.lock().unwrap().as_ref() {
            tx.send_modify(|v| *v += 1);
        }
    }

    fn set(&self, list: Vec<ServiceInstance>) {
        *self.list.lock().unwrap() = list;
        self.notify();
    }

    fn down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        self.notify();
    }
}

#[derive(Clone, Default)]
struct Scripted(Arc<Script>);

fn unavailable() -> Error {
    Error::Unavailable {
        message: "down".into(),
        source: None,
    }
}

#[async_trait]
impl Source for Scripted {
    type Position = u64;

    async fn list(&self, _name: &str) -> Result<(Vec<ServiceInstance>, u64)> {
        self.0.lists.fetch_add(1, Ordering::SeqCst);
        if self.0.hang.load(Ordering::SeqCst) {
            std::future::pending::<()>().await;
        }
        if self.0.refuse.load(Ordering::SeqCst) {
            return Err(Error::PermissionDenied {
                message: "no".into(),
            });
        }
        if self.0.down.load(Ordering::SeqCst) {
            return Err(unavailable());
        }
        Ok((self.0.list.lock().unwrap().clone(), 0))
    }

    async fn follow(&self, _name: &str, from: u64, updates: &Updates<u64>) -> Stop {
        self.0.follows.fetch_add(1, Ordering::SeqCst);
        if self.0.panic.swap(false, Ordering::SeqCst) {
            panic!("scripted panic");
        }
        let mut rx = {
            let mut changed = self.0.changed.lock().unwrap();
            changed
                .get_or_insert_with(|| watch::channel(0).0)
                .subscribe()
        };
        updates.following();
        let mut at = from;
        loop {
            if rx.changed().await.is_err() {
                return Stop::Failed(Error::Closed);
            }
            if self.0.down.load(Ordering::SeqCst) {
                return Stop::Failed(unavailable());
            }
            at += 1;
            let list = self.0.list.lock().unwrap().clone();
            updates.list(list, at);
            self.0.delivered.fetch_add(1, Ordering::SeqCst);
        }
    }

    async fn release(&self, _name: &str) {
        self.0.releases.fetch_add(1, Ordering::SeqCst);
    }

    fn retry_cap(&self) -> Duration {
        Duration::from_millis(200)
    }
}

async fn eventually(what: &str, check: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !check() {
        assert!(tokio::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn event(w: &mut Watcher) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(5), w.next_event())
        .await
        .expect("an event within 5 s")
        .expect("the watcher goes on")
}

/// Waits until the follow loop subscribed to changes (so that a change is not missed).
async fn following(script: &Script, follows: usize) {
    eventually("following", || {
        script.follows.load(Ordering::SeqCst) >= follows && script.changed.lock().unwrap().is_some()
    })
    .await;
}

#[tokio::test]
async fn watchers_of_one_service_share_one_upstream_and_one_snapshot() {
    let source = Scripted::default();
    let script = source.0.clone();
    let watches = Watches::new(source);
    let mut first = watches.watch("svc").await.unwrap();
    let mut second = watches.watch("svc").await.unwrap();
    assert_eq!(watches.upstreams(), 1);
    assert_eq!(
        script.lists.load(Ordering::SeqCst),
        1,
        "one upstream for both"
    );
    assert!(first.next().await.unwrap().is_empty());
    assert!(second.next().await.unwrap().is_empty());
    following(&script, 1).await;

    script.set(vec![instance("b"), instance("a")]);
    let a = first.next().await.unwrap();
    let b = second.next().await.unwrap();
    assert_eq!(ids(&a), ["a", "b"], "sorted by id");
    assert!(
        a.ptr_eq(&b),
        "both watchers hold the same snapshot, not copies"
    );

    first.stop();
    assert!(matches!(first.next().await, Err(Error::WatcherStopped)));
    assert_eq!(watches.upstreams(), 1, "one watcher left");
    drop(second);
    eventually("upstream stops after the last watcher", || {
        watches.upstreams() == 0 && script.releases.load(Ordering::SeqCst) == 1
    })
    .await;
}

#[tokio::test]
async fn an_equal_list_wakes_nobody_and_a_slow_watcher_gets_the_newest() {
    let source = Scripted::default();
    let script = source.0.clone();
    let watches = Watches::new(source);
    let mut w = watches.watch("svc").await.unwrap();
    assert!(w.next().await.unwrap().is_empty());
    following(&script, 1).await;
    // Each list handed over before the next is set, so none is merged away by the script.
    let set = |list: Vec<ServiceInstance>| {
        let script = script.clone();
        async move {
            let before = script.delivered.load(Ordering::SeqCst);
            script.set(list);
            eventually("the list handed to the engine", || {
                script.delivered.load(Ordering::SeqCst) > before
            })
            .await;
        }
    };
    set(vec![]).await;
    assert!(
        w.next().now_or_never().is_none(),
        "the unchanged empty list woke the watcher"
    );
    set(vec![instance("a")]).await;
    set(vec![instance("a"), instance("b")]).await;
    let newest = tokio::time::timeout(Duration::from_secs(5), w.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ids(&newest),
        ["a", "b"],
        "the slow watcher gets the newest list"
    );
    assert!(
        w.next().now_or_never().is_none(),
        "and nothing older after it"
    );
}

#[tokio::test]
async fn an_outage_is_one_degraded_event_then_recovered_then_the_new_list() {
    let source = Scripted::default();
    let script = source.0.clone();
    script.set(vec![instance("a")]);
    let watches = Watches::new(source);
    let mut w = watches.watch("svc").await.unwrap();
    let mut slow = watches.watch("svc").await.unwrap();
    assert!(matches!(event(&mut w).await, WatchEvent::Changed(l) if ids(&l) == ["a"]));
    assert!(matches!(event(&mut slow).await, WatchEvent::Changed(l) if ids(&l) == ["a"]));
    following(&script, 1).await;

    script.down(true);
    assert!(matches!(event(&mut w).await, WatchEvent::Degraded(e) if e.is_temporary()));
    assert!(w.last_error().is_some());
    // Retries fail meanwhile; none of them is another event.
    eventually("retried", || script.lists.load(Ordering::SeqCst) >= 3).await;
    *script.list.lock().unwrap() = vec![instance("a"), instance("b")];
    script.down(false);
    assert!(matches!(event(&mut w).await, WatchEvent::Recovered));
    assert!(matches!(event(&mut w).await, WatchEvent::Changed(l) if ids(&l) == ["a", "b"]));
    assert!(w.last_error().is_none());

    // A watcher busy during the whole outage still hears of it, then of the recovery.
    assert!(matches!(event(&mut slow).await, WatchEvent::Degraded(_)));
    assert!(matches!(event(&mut slow).await, WatchEvent::Recovered));
    assert!(matches!(event(&mut slow).await, WatchEvent::Changed(l) if ids(&l) == ["a", "b"]));
}

// A paused clock: the deadline passes only when the engine waits on it.
#[tokio::test(start_paused = true)]
async fn the_first_list_has_a_deadline_and_a_permanent_error_fails_at_once() {
    let source = Scripted::default();
    let script = source.0.clone();
    script.hang.store(true, Ordering::SeqCst);
    let config = WatchConfig::default().with_first_list_timeout(Duration::from_millis(200));
    let watches = Watches::with_config(source, config);
    let err = watches.watch("svc").await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    eventually("a failed watch leaves no upstream", || {
        watches.upstreams() == 0
    })
    .await;

    script.hang.store(false, Ordering::SeqCst);
    script.down.store(true, Ordering::SeqCst);
    let err = watches.watch("svc").await.unwrap_err();
    assert!(
        matches!(err, Error::Unavailable { .. }),
        "the latest error: {err}"
    );
    // A later `watch()` would otherwise join this upstream, and meet the refusal only on its
    // next retry, after the back-off.
    eventually("a failed watch leaves no upstream", || {
        watches.upstreams() == 0
    })
    .await;

    script.down.store(false, Ordering::SeqCst);
    script.refuse.store(true, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let err = watches.watch("svc").await.unwrap_err();
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err}");
    assert!(
        started.elapsed() < Duration::from_millis(200),
        "at once, not after the deadline"
    );
}

#[tokio::test]
async fn a_panicking_upstream_is_restarted_and_its_watchers_go_on() {
    let source = Scripted::default();
    let script = source.0.clone();
    script.panic.store(true, Ordering::SeqCst);
    let watches = Watches::new(source);
    let mut w = watches.watch("svc").await.unwrap();
    assert!(matches!(event(&mut w).await, WatchEvent::Changed(_)));
    assert!(
        matches!(event(&mut w).await, WatchEvent::Degraded(e) if e.to_string().contains("panicked"))
    );
    assert!(matches!(event(&mut w).await, WatchEvent::Recovered));
    following(&script, 2).await;
    script.set(vec![instance("a")]);
    assert!(matches!(event(&mut w).await, WatchEvent::Changed(l) if ids(&l) == ["a"]));
    // A later watch() of the service shares the restarted upstream.
    let mut later = watches.watch("svc").await.unwrap();
    assert_eq!(ids(&later.next().await.unwrap()), ["a"]);
    assert_eq!(watches.upstreams(), 1);
}

#[tokio::test]
async fn close_releases_and_ends_every_watcher_and_shutdown_ends_them_too() {
    let source = Scripted::default();
    let script = source.0.clone();
    let watches = Watches::new(source);
    let mut a = watches.watch("a").await.unwrap();
    let mut b = watches.watch("b").await.unwrap();
    a.next().await.unwrap();
    b.next().await.unwrap();
    watches.close().await;
    assert_eq!(
        script.releases.load(Ordering::SeqCst),
        2,
        "both released before close returns"
    );
    assert!(matches!(a.next().await, Err(Error::Closed)));
    assert!(matches!(b.next().await, Err(Error::Closed)));
    assert!(matches!(watches.watch("a").await, Err(Error::Closed)));

    let watches = Watches::new(Scripted::default());
    let mut c = watches.watch("c").await.unwrap();
    c.next().await.unwrap();
    watches.shutdown();
    assert!(matches!(c.next().await, Err(Error::Closed)));
    assert_eq!(watches.upstreams(), 0);
}

// The watch's metrics follow its upstream: instances listed, staleness 0 while it follows,
// growing during an outage (at each retry), back to 0 on recovery; failures counted.
#[test]
fn the_watch_metrics_follow_the_upstream() {
    use crate::telemetry::{ERRORS, WATCHED_INSTANCES, WATCH_STALENESS};
    let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let metrics = recorder.handle();
    let service = [("backend", "unknown"), ("service", "svc")];
    let errors = [
        ("backend", "unknown"),
        ("operation", "watch"),
        ("kind", "unavailable"),
    ];
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let source = Scripted::default();
            let script = source.0.clone();
            script.set(vec![instance("a"), instance("b")]);
            let watches = Watches::new(source);
            let mut w = watches.watch("svc").await.unwrap();
            assert!(matches!(event(&mut w).await, WatchEvent::Changed(_)));
            assert_eq!(
                crate::telemetry::tests::metric(&metrics, WATCHED_INSTANCES, &service),
                Some(2.0)
            );
            assert_eq!(
                crate::telemetry::tests::metric(&metrics, WATCH_STALENESS, &service),
                Some(0.0)
            );
            assert_eq!(
                crate::telemetry::tests::metric(&metrics, ERRORS, &errors),
                None
            );

            following(&script, 1).await;
            script.down(true);
            assert!(matches!(event(&mut w).await, WatchEvent::Degraded(_)));
            eventually("retried for a while", || {
                crate::telemetry::tests::metric(&metrics, WATCH_STALENESS, &service)
                    .is_some_and(|s| s >= 1.0)
            })
            .await;
            assert!(crate::telemetry::tests::metric(&metrics, ERRORS, &errors)
                .is_some_and(|n| n >= 2.0));

            script.set(vec![instance("a")]);
            script.down(false);
            assert!(matches!(event(&mut w).await, WatchEvent::Recovered));
            assert!(matches!(event(&mut w).await, WatchEvent::Changed(_)));
            assert_eq!(
                crate::telemetry::tests::metric(&metrics, WATCH_STALENESS, &service),
                Some(0.0)
            );
            assert_eq!(
                crate::telemetry::tests::metric(&metrics, WATCHED_INSTANCES, &service),
                Some(1.0)
            );
        });
    });
}
