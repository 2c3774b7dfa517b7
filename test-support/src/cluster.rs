//! Clusters of a test's own, and the shape of a cluster fault case.
//!
//! - [`Cluster`]: what a cluster fault test does to its members (kill one, start it again,
//!   restart it, find the leader), implemented by [`EtcdCluster`](crate::EtcdCluster) and
//!   [`ZkEnsemble`](crate::ZkEnsemble);
//! - [`one_cluster_at_a_time`]: the clusters of one test binary run one after the other (a
//!   3-member cluster is 3 servers; several at once on a small machine make elections and
//!   session timeouts fire for want of CPU, not because of the fault under test);
//! - [`WatchLog`]: a watcher followed by a task of its own, which records every list,
//!   outage and recovery with the time it came, so a test sees what the watcher went through
//!   during a fault and when it came back to the true list;
//! - [`FaultCase`]: an owner holding three registrations and a watcher created before the
//!   fault; after the fault, [`FaultCase::check`] asserts the final truth and prints the time
//!   to converge.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::{Registry, ServiceInstance, WatchEvent, Watcher};
use tokio::sync::{watch, MutexGuard};
use tokio::time::{sleep, timeout, Instant};

use crate::lists;

/// How long a cluster may take to elect a leader, and a member to rejoin it.
pub const QUORUM_DEADLINE: Duration = Duration::from_secs(30);

/// Polls every member's view until those that answer agree on one leader, and the leader
/// answers too; returns its index. `view(i)`: member `i`'s view (`None`: it does not answer,
/// dead or frozen); `leader`: the leader a view names (`None`: none); `is(i, view, leader)`:
/// whether member `i`, with that view, is that leader. Fails the test after
/// [`QUORUM_DEADLINE`], naming `what` and every view.
pub async fn agreed_leader<V: std::fmt::Debug, L: PartialEq>(
    members: usize,
    what: &str,
    view: impl Fn(usize) -> Option<V>,
    leader: impl Fn(&V) -> Option<L>,
    is: impl Fn(usize, &V, &L) -> bool,
) -> usize {
    let deadline = Instant::now() + QUORUM_DEADLINE;
    loop {
        let views: Vec<Option<V>> = (0..members).map(&view).collect();
        let mut answering = views.iter().flatten();
        if let Some(named) = answering.next().and_then(&leader) {
            let agreed = answering.all(|v| leader(v).as_ref() == Some(&named));
            let at = views
                .iter()
                .enumerate()
                .position(|(i, v)| v.as_ref().is_some_and(|v| is(i, v, &named)));
            if let (true, Some(at)) = (agreed, at) {
                return at;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the {what} did not agree on a leader within {QUORUM_DEADLINE:?}: {views:?}"
        );
        sleep(Duration::from_millis(100)).await;
    }
}

/// What a cluster fault test does to the members of a cluster of its own, numbered
/// `0..len()` in the order the cluster's URL names them.
#[async_trait]
pub trait Cluster: Send + Sync {
    /// How many members.
    fn len(&self) -> usize;
    /// Whether the cluster has no members (never: clusters have one at least).
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The registry URL naming every member, then `path_and_query` (`/ns?ttl=3s`).
    fn url(&self, path_and_query: &str) -> String;
    /// The member that leads now, once the members that run agree on one (fails the test
    /// after [`QUORUM_DEADLINE`]).
    async fn leader(&self) -> usize;
    /// Kills a member (SIGKILL) and waits until it is gone; its data stays.
    fn kill(&mut self, member: usize);
    /// Starts a killed member again with its data and waits until it serves in the cluster
    /// again (it follows a leader, or leads).
    async fn start_again(&mut self, member: usize);
    /// Freezes a member (SIGSTOP): it keeps its sockets but answers nobody, clients nor
    /// peers, as a host that hangs or drops off the network without closing anything.
    fn pause(&mut self, member: usize);
    /// Thaws a member frozen by [`pause`](Self::pause) (SIGCONT).
    fn resume(&mut self, member: usize);
    /// Kills a member and starts it again with its data, as [`start_again`](Self::start_again).
    async fn restart(&mut self, member: usize) {
        self.kill(member);
        self.start_again(member).await;
    }
}

static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held by a cluster test while it runs: the cluster tests of one test binary run one after
/// the other. Take it before starting the cluster; a test that holds it must not wait for
/// it again.
pub async fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    ONE_CLUSTER.lock().await
}

/// What a [`WatchLog`] has seen so far.
#[derive(Debug, Clone)]
pub struct Seen {
    /// The last list delivered.
    pub list: Vec<ServiceInstance>,
    /// Whether the watcher told of an outage and not yet of the recovery.
    pub degraded: bool,
    /// The error the watcher failed with (a watcher never ends on its own).
    pub failed: Option<String>,
    /// When the current state (the list, and whether degraded) began.
    pub since: Instant,
    /// Every event, with the time it came.
    pub events: Vec<(Instant, WatchEvent)>,
}

impl Seen {
    /// Whether the watcher follows the registry and its last list is `expected`.
    pub fn at(&self, expected: &[ServiceInstance]) -> bool {
        self.failed.is_none() && !self.degraded && self.list == expected
    }
}

/// A watcher read by a task of its own, which records everything it delivers. Dropping the
/// log stops the task and the watcher.
pub struct WatchLog {
    seen: watch::Receiver<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl WatchLog {
    /// Follows `watcher` from now on (its first list is recorded like any other).
    pub fn follow(mut watcher: Watcher) -> WatchLog {
        let (tx, seen) = watch::channel(Seen {
            list: Vec::new(),
            degraded: false,
            failed: None,
            since: Instant::now(),
            events: Vec::new(),
        });
        let task = tokio::spawn(async move {
            loop {
                let event = watcher.next_event().await;
                let now = Instant::now();
                let mut ended = false;
                tx.send_modify(|seen| match event {
                    Ok(event) => {
                        let before = (seen.list.clone(), seen.degraded);
                        match &event {
                            WatchEvent::Changed(list) => seen.list = list.to_vec(),
                            WatchEvent::Degraded(_) => seen.degraded = true,
                            WatchEvent::Recovered => seen.degraded = false,
                            _ => {}
                        }
                        if (seen.list.clone(), seen.degraded) != before {
                            seen.since = now;
                        }
                        seen.events.push((now, event));
                    }
                    Err(e) => {
                        seen.failed = Some(e.to_string());
                        seen.since = now;
                        ended = true;
                    }
                });
                if ended {
                    return;
                }
            }
        });
        WatchLog { seen, task }
    }

    /// What the watcher has delivered so far.
    pub fn seen(&self) -> Seen {
        self.seen.borrow().clone()
    }

    /// Waits until the watcher follows the registry and its last list is `expected`, and
    /// returns when that state began (it may have begun before this call). Fails the test
    /// after `within`, or when the watcher failed.
    pub async fn reaches(&mut self, expected: &[ServiceInstance], within: Duration) -> Instant {
        let reached = timeout(
            within,
            self.seen
                .wait_for(|seen| seen.failed.is_some() || seen.at(expected)),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        let seen = self.seen();
        if let Some(error) = &seen.failed {
            panic!(
                "the watcher failed: {error}; it saw: {}",
                describe(&seen.events)
            );
        }
        assert!(
            reached,
            "the watcher did not reach {:?} (and follow) within {within:?}: last list {:?}, \
             degraded {}; it saw: {}",
            ids(expected),
            ids(&seen.list),
            seen.degraded,
            describe(&seen.events)
        );
        seen.since
    }

    /// The events that came at or after `from`.
    pub fn events_since(&self, from: Instant) -> Vec<(Instant, WatchEvent)> {
        self.seen
            .borrow()
            .events
            .iter()
            .filter(|(at, _)| *at >= from)
            .cloned()
            .collect()
    }
}

impl Drop for WatchLog {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ids(list: &[ServiceInstance]) -> Vec<&str> {
    list.iter().map(|i| i.id.as_str()).collect()
}

/// The events of a watcher, one short line each (times from the first).
pub fn describe(events: &[(Instant, WatchEvent)]) -> String {
    match events.first() {
        Some((start, _)) => describe_from(*start, events),
        None => "nothing".into(),
    }
}

/// The events of a watcher, one short line each, with their times from `start`.
pub fn describe_from(start: Instant, events: &[(Instant, WatchEvent)]) -> String {
    if events.is_empty() {
        return "nothing".into();
    }
    events
        .iter()
        .map(|(at, event)| {
            let what = match event {
                WatchEvent::Changed(list) => format!("list {:?}", ids(list)),
                WatchEvent::Degraded(e) => format!("degraded ({e})"),
                WatchEvent::Recovered => "recovered".into(),
                other => format!("{other:?}"),
            };
            format!(
                "\n  +{:.2}s {what}",
                at.saturating_duration_since(start).as_secs_f64()
            )
        })
        .collect()
}

/// How much longer than its TTL and back-off a cluster fault case gives a registry to
/// converge: the members' own recovery (an election, a JVM start) on a loaded machine.
pub const CLUSTER_SLACK: Duration = Duration::from_secs(10);

/// How many registrations a [`FaultCase`] holds through the fault.
pub const INSTANCES: usize = 3;

/// [`crate::instance`]`(service, id)` with its endpoint at port 9000 + `n`: each instance of
/// a fault case at an address of its own, as registries that key instances by address
/// (Nacos: by ip and port within a service) need to keep them apart.
fn instance(service: &str, id: &str, n: u16) -> ServiceInstance {
    let mut instance = crate::instance(service, id);
    instance.endpoints = vec![format!("grpc://127.0.0.1:{}", 9000 + n)];
    instance
}

/// One cluster fault case: an owner holding [`INSTANCES`] registrations of [`SERVICE`] and
/// a watcher of it (through another client) created before the fault, and a second watcher
/// through that client, of [`CHANGES`], where a change is made after the fault. The test
/// does the fault between [`fault_begins`](Self::fault_begins) and
/// [`fault_ends`](Self::fault_ends), then [`check`](Self::check)s the outcome.
pub struct FaultCase<R> {
    label: String,
    owner: R,
    watching: R,
    log: WatchLog,
    changes: WatchLog,
    truth: Vec<ServiceInstance>,
    expiry: Duration,
    backoff: Duration,
    began: Option<Instant>,
    ended: Option<Instant>,
    holder: Option<Holder<R>>,
}

/// What holds the owner's registrations in the registry (an etcd lease, a ZooKeeper
/// session): its name, how to read it from the owner, and what it was before the fault.
struct Holder<R> {
    what: &'static str,
    read: fn(&R, &ServiceInstance) -> Option<i64>,
    before: Vec<Option<i64>>,
}

/// The service a [`FaultCase`] registers.
pub const SERVICE: &str = "svc";

/// The service a [`FaultCase`] changes after the fault, to time when changes reach the
/// watching client again.
pub const CHANGES: &str = "svc-changes";

impl<R: Registry + 'static> FaultCase<R> {
    /// Registers the instances with `owner`, and starts a watcher through `watching` that
    /// lists them. `expiry` is the owner's TTL (or session timeout): how long the registry
    /// keeps an instance whose owner is cut off; `backoff` the longest pause between the
    /// client's retries (re-registration, re-watch, reconnection). The label prefixes
    /// what [`check`](Self::check) prints.
    pub async fn prepare(
        label: &str,
        owner: R,
        watching: R,
        expiry: Duration,
        backoff: Duration,
    ) -> FaultCase<R> {
        let truth: Vec<ServiceInstance> = (1..=INSTANCES)
            .map(|i| instance(SERVICE, &format!("i{i}"), i as u16))
            .collect();
        for instance in &truth {
            owner.register(instance).await.expect("register");
        }
        let watcher = watching.watch(SERVICE).await.expect("watch");
        let mut log = WatchLog::follow(watcher);
        log.reaches(&truth, crate::START_DEADLINE).await;
        let mut changes = WatchLog::follow(watching.watch(CHANGES).await.expect("watch"));
        changes.reaches(&[], crate::START_DEADLINE).await;
        FaultCase {
            label: label.to_owned(),
            owner,
            watching,
            log,
            changes,
            truth,
            expiry,
            backoff,
            began: None,
            ended: None,
            holder: None,
        }
    }

    /// Records what holds each registration now (`what`: `"lease"`, `"session"`; `read`
    /// reads it from the owner), so that [`check`](Self::check) asserts that none lapsed
    /// during the fault: left the registry and was written again under a new one.
    pub fn held_by(
        mut self,
        what: &'static str,
        read: fn(&R, &ServiceInstance) -> Option<i64>,
    ) -> Self {
        let before = self.truth.iter().map(|i| read(&self.owner, i)).collect();
        self.holder = Some(Holder { what, read, before });
        self
    }

    /// How many registrations lapsed during the fault (their holder changed), once the
    /// owner reports them all registered.
    fn lapsed(&self) -> Option<(&'static str, usize)> {
        let holder = self.holder.as_ref()?;
        let lapsed = self
            .truth
            .iter()
            .zip(&holder.before)
            .filter(|(i, before)| (holder.read)(&self.owner, i) != **before)
            .count();
        Some((holder.what, lapsed))
    }

    /// The owner of the registrations.
    pub fn owner(&self) -> &R {
        &self.owner
    }

    /// The client of the watcher.
    pub fn watching(&self) -> &R {
        &self.watching
    }

    /// Marks the start of the fault (just before the first blow).
    pub fn fault_begins(&mut self) {
        self.began = Some(Instant::now());
    }

    /// Marks the end of the fault (the last blow dealt, or the last member back).
    pub fn fault_ends(&mut self) {
        self.ended = Some(Instant::now());
    }

    /// Asserts the final truth after the fault, and prints the time to converge:
    ///
    /// - a change made after the fault (through a client connected after it: `connect`,
    ///   retried until it connects) reaches the watching client within the expiry plus
    ///   back-off (plus [`CLUSTER_SLACK`]) of the fault's end; a watching client whose server
    ///   hangs may not know yet that it follows nothing;
    /// - the watcher created before the fault lists every instance, and so does the fresh
    ///   client, exactly once each, and the owner reports every registration `Registered`;
    /// - with [`held_by`](Self::held_by), no registration lapsed: each is held by what held
    ///   it before the fault (one member lost is a fault a cluster is there to hide);
    /// - it stays so for twice the expiry: every list the watcher delivers meanwhile is the
    ///   true one (a lease or session the fault left behind would expire within this);
    /// - the watcher's last change of state, into following the registry with the true list
    ///   (its convergence: it may learn of the fault's outage late, and tell of it and of the
    ///   recovery without a list changing), came within the same bound;
    /// - the watcher still follows: a change of its service shows in it, and so does its
    ///   undoing.
    pub async fn check<F, Fut>(mut self, connect: F)
    where
        F: Fn() -> Fut,
        Fut: Future<Output = registry_core::Result<R>>,
    {
        let began = self.began.expect("fault_begins() was called");
        let ended = self.ended.expect("fault_ends() was called");
        let within = self.expiry + self.backoff + CLUSTER_SLACK;
        let deadline = ended + within;
        let left = || deadline.saturating_duration_since(Instant::now());
        let label = self.label.clone();
        let secs = |at: Instant| at.saturating_duration_since(ended).as_secs_f64();

        // A fresh client makes a change, and lists the truth; the change reaches the
        // watching client.
        let fresh = loop {
            match connect().await {
                Ok(fresh) => break fresh,
                Err(e) => {
                    assert!(
                        Instant::now() < deadline,
                        "{label}: no fresh client within {within:?} of the fault's end: {e}"
                    );
                    sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let change = instance(CHANGES, "after-the-fault", 0);
        crate::eventually(left(), "the fresh client registers", || async {
            fresh.register(&change).await.is_ok()
        })
        .await;
        let changed = Instant::now();
        lists(&fresh, SERVICE, &self.truth, left()).await;
        let fresh_listed = Instant::now();
        let change_seen = self
            .changes
            .reaches(std::slice::from_ref(&change), left())
            .await;
        // The watcher from before the fault lists the truth.
        self.log.reaches(&self.truth, left()).await;
        let listed = fresh.get_service(SERVICE).await.expect("list");
        let distinct: std::collections::BTreeSet<&str> = ids(&listed).into_iter().collect();
        assert_eq!(
            distinct.len(),
            listed.len(),
            "{label}: duplicates: {:?}",
            ids(&listed)
        );

        // The owner holds every registration, by what held it before.
        let owner = &self.owner;
        let truth = &self.truth;
        crate::eventually(
            left(),
            "the owner reports every registration Registered",
            || {
                let all = truth.iter().all(|i| {
                    owner
                        .registration(&i.name, &i.id)
                        .is_some_and(|s| s.get().is_registered())
                });
                async move { all }
            },
        )
        .await;
        let lapsed = self.lapsed();
        if let Some((what, n)) = lapsed {
            assert_eq!(
                n,
                0,
                "{label}: {n} of {INSTANCES} registrations lapsed: each is held by a new \
                 {what} (they left the registry for a while and were written again); the \
                 watcher saw: {}",
                describe_from(began, &self.log.events_since(began))
            );
        }

        // It stays so.
        let hold = self.expiry * 2;
        let from = Instant::now();
        sleep(hold).await;
        let moved: Vec<_> = self
            .log
            .events_since(from)
            .into_iter()
            .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if **l != *self.truth))
            .collect();
        assert!(
            moved.is_empty(),
            "{label}: the watcher left the true list within {hold:?} after listing it: {}",
            describe_from(began, &self.log.events_since(began))
        );
        assert_eq!(
            fresh.get_service(SERVICE).await.expect("list"),
            self.truth,
            "{label}: the fresh client's list {hold:?} after it listed every instance"
        );

        // The watcher's convergence: its last change of state, into following the truth.
        let converged = self.log.reaches(&self.truth, left()).await.max(began);
        let during = self.log.events_since(began);
        assert!(
            converged <= deadline,
            "{label}: the watcher converged {:.2} s after the fault's end, later than \
             {within:?}: {}",
            secs(converged),
            describe_from(began, &during)
        );
        let outages = during
            .iter()
            .filter(|(_, e)| matches!(e, WatchEvent::Degraded(_)))
            .count();
        let short = during
            .iter()
            .filter(|(_, e)| matches!(e, WatchEvent::Changed(l) if l.len() < INSTANCES))
            .count();
        println!(
            "[cluster] {label}: converged after {:.2} s (from the fault's end; {:.2} s from \
             its start, the fault lasting {:.2} s): the watcher told {outages} outage(s) and \
             delivered {short} list(s) short of an instance; a change made {:.2} s after the \
             fault's end reached the watching client after {:.2} s; a fresh client listed \
             every instance after {:.2} s; {}",
            secs(converged),
            converged.saturating_duration_since(began).as_secs_f64(),
            ended.duration_since(began).as_secs_f64(),
            secs(changed),
            secs(change_seen.max(changed)),
            secs(fresh_listed),
            match lapsed {
                Some((what, _)) => format!("no registration lapsed (the same {what}s)"),
                None => "lapses not checked".into(),
            }
        );
        if !during.is_empty() {
            println!(
                "[cluster] {label}: the watcher from before the fault saw (from the fault's \
                 start):{}",
                describe_from(began, &during)
            );
        }

        // The watcher from before the fault still follows changes.
        let probe = instance(SERVICE, "probe", INSTANCES as u16 + 1);
        let mut with_probe = self.truth.clone();
        with_probe.push(probe.clone());
        fresh.register(&probe).await.expect("register the probe");
        self.log.reaches(&with_probe, within).await;
        fresh
            .deregister(&probe)
            .await
            .expect("deregister the probe");
        self.log.reaches(&self.truth, within).await;
        let _ = fresh.close().await;
        let _ = self.owner.close().await;
    }
}
