//! Persistent recursive watches on a service's node `{root}/{name}` (ZooKeeper 3.6+): what
//! their events say, for the watch engine's source and for the holds of registrations; and
//! the one such watch the holds of a service's registrations share in a session, in place of
//! a watch request per registration.
//!
//! A session's requests are served in order, so a watch request sent after each write made
//! the next call wait behind it. The shared watch is set once per service and session, by the
//! first write of that service, sent just before the write itself; each later write notes
//! how many times its node was seen deleted before it is sent, and its hold resolves (after
//! one `exists` to make sure) when the watch sees the node deleted again. A node is taken
//! over only after it was deleted, and a session's ephemeral nodes go only with it, so
//! deletions and the session's end are all a hold has to hear of.
//!
//! The watch ends with its connection: zookeeper-client does not set persistent watches again
//! after a reconnection, and events can be lost across one (ZOOKEEPER-4698), so the holds
//! then set a new one and check their nodes. Every third of the session timeout the watch
//! also lists the session's ephemeral nodes of the service (one `getEphemerals`), and a held
//! node missing from the list has its hold check it.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use registry_core::Result;
use tokio::sync::watch;
use tokio::task::AbortHandle;
use zookeeper_client::{
    AddWatchMode, Client, Error as Z, EventType, PersistentWatcher, SessionState, StateWatcher,
    WatchedEvent,
};

use crate::error::map_err;
use crate::node::timed_raw;
use crate::session::Zk;

/// What an event of a persistent recursive watch on a service's node says.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change<'a> {
    /// The connection is up (again): nothing changed.
    Connected,
    /// The connection was lost or the session ended: events may be missing from here on.
    Lost(SessionState),
    /// An instance node (a child of the service's node) was created or its data changed.
    Written(&'a str),
    /// An instance node was deleted.
    Deleted(&'a str),
    /// The service's node itself was deleted.
    ServiceDeleted,
    /// Nothing an instance list depends on (a node deeper down, children changed).
    Other,
}

/// Reads `event` of a persistent recursive watch on `service_path`.
pub(crate) fn change<'a>(event: &'a WatchedEvent, service_path: &str) -> Change<'a> {
    let child = || {
        event
            .path
            .strip_prefix(service_path)
            .and_then(|rest| rest.strip_prefix('/'))
            .filter(|child| !child.is_empty() && !child.contains('/'))
    };
    match event.event_type {
        EventType::Session => match event.session_state {
            SessionState::SyncConnected | SessionState::ConnectedReadOnly => Change::Connected,
            state => Change::Lost(state),
        },
        EventType::NodeCreated | EventType::NodeDataChanged => {
            child().map_or(Change::Other, Change::Written)
        }
        EventType::NodeDeleted if event.path == service_path => Change::ServiceDeleted,
        EventType::NodeDeleted => child().map_or(Change::Other, Change::Deleted),
        EventType::NodeChildrenChanged => Change::Other,
    }
}

/// Sets a persistent recursive watch on `service_path`. The request is sent now, before the
/// future is polled: a request sent after it is served after it.
pub(crate) fn watch_service<'c>(
    client: &'c Client,
    service_path: &str,
) -> impl Future<Output = std::result::Result<PersistentWatcher, Z>> + Send + 'c {
    client.watch(service_path, AddWatchMode::PersistentRecursive)
}

type Services = Mutex<HashMap<String, Weak<ServiceWatch>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// The shared watches of a registry's registrations, by service: one per service while the
/// service has registrations written in the current session.
#[derive(Default)]
pub(crate) struct ServiceWatches {
    services: Arc<Services>,
    /// A session whose server has no persistent watches (before ZooKeeper 3.6): its holds
    /// watch each node with a one-shot watch.
    unsupported: AtomicI64,
}

impl ServiceWatches {
    /// Tracks node `child` of service `name` for a write in `client`'s session that is about
    /// to be sent: the node's hold will hear of every deletion of it that the server makes
    /// after the write. Sets the service's shared watch first where the session has none
    /// (the request is sent now, ahead of the write; [`Setting::finish`] awaits it).
    /// `None` where the server has no persistent watches.
    pub(crate) fn track<'c>(
        &self,
        client: &'c Client,
        service_path: &str,
        name: &str,
        child: &str,
    ) -> (Option<Tracked>, Option<Setting<'c>>) {
        let session = client.session_id().0;
        if self.unsupported.load(Ordering::Relaxed) == session {
            return (None, None);
        }
        let mut replaced = None;
        let (watch, setting) = {
            let mut services = lock(&self.services);
            match services.get(name).and_then(Weak::upgrade) {
                Some(watch) if watch.shared.session == session && !watch.shared.ended() => {
                    (watch, None)
                }
                old => {
                    // Dropped once the lock is released: it may be the last reference.
                    replaced = old;
                    let watch = Arc::new(ServiceWatch {
                        shared: Arc::new(Shared {
                            session,
                            service_path: service_path.to_owned(),
                            phase: watch::Sender::new(Phase::Setting),
                            nodes: Mutex::default(),
                        }),
                        services: Arc::downgrade(&self.services),
                        name: name.to_owned(),
                        task: Mutex::default(),
                    });
                    services.insert(name.to_owned(), Arc::downgrade(&watch));
                    // Sent under the lock: a write that finds this watch is sent after it.
                    let adding = Box::pin(watch_service(client, service_path));
                    let setting = Setting {
                        watch: watch.clone(),
                        adding,
                        finished: false,
                    };
                    (watch, Some(setting))
                }
            }
        };
        drop(replaced);
        (Some(watch.track(child)), setting)
    }

    /// Notes that `session`'s server has no persistent watches.
    fn unsupported(&self, session: i64) {
        self.unsupported.store(session, Ordering::Relaxed);
    }
}

/// The shared watch of one service in one session. Its task, that follows the events, is
/// stopped when the last registration of the service lets go of it.
pub(crate) struct ServiceWatch {
    shared: Arc<Shared>,
    services: Weak<Services>,
    name: String,
    task: Mutex<Option<AbortHandle>>,
}

impl Drop for ServiceWatch {
    fn drop(&mut self) {
        if let Some(task) = lock(&self.task).take() {
            task.abort();
        }
        if let Some(services) = self.services.upgrade() {
            let mut services = lock(&services);
            if services
                .get(&self.name)
                .is_some_and(|watch| watch.strong_count() == 0)
            {
                services.remove(&self.name);
            }
        }
    }
}

impl ServiceWatch {
    /// The tracked node `child`, and how many deletions of it were seen so far.
    fn track(self: &Arc<Self>, child: &str) -> Tracked {
        let mut nodes = lock(&self.shared.nodes);
        let node = match nodes.get(child).and_then(Weak::upgrade) {
            Some(node) => node,
            None => {
                let node = Arc::new(Node {
                    watch: self.clone(),
                    child: child.to_owned(),
                    doubts: watch::Sender::new(0),
                });
                nodes.insert(child.to_owned(), Arc::downgrade(&node));
                node
            }
        };
        drop(nodes);
        let seen = *node.doubts.borrow();
        Tracked { node, seen }
    }
}

/// Where a shared watch is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Phase {
    /// Its request is sent, not answered yet.
    Setting,
    /// Set: its events are followed.
    Set,
    /// Ended (why): the connection was lost or the session ended, or it could not be set.
    Ended(String),
    /// The server refused it (not allowed to watch the service's node): holds watch each
    /// node with a one-shot watch.
    Refused,
}

/// What a shared watch's task and its holds share.
struct Shared {
    session: i64,
    service_path: String,
    phase: watch::Sender<Phase>,
    /// The tracked nodes, by child name.
    nodes: Mutex<HashMap<String, Weak<Node>>>,
}

impl Shared {
    fn ended(&self) -> bool {
        matches!(*self.phase.borrow(), Phase::Ended(_))
    }

    fn end(&self, why: String) {
        self.phase.send_if_modified(|phase| {
            if matches!(phase, Phase::Ended(_)) {
                return false;
            }
            tracing::debug!(service = %self.service_path, %why, "the shared watch of a service's registrations ended");
            *phase = Phase::Ended(why);
            true
        });
    }

    /// The tracked nodes that `pick` picks, taken out of the lock (a node dropped while it
    /// is held takes the lock).
    fn nodes(&self, mut pick: impl FnMut(&str) -> bool) -> Vec<Arc<Node>> {
        lock(&self.nodes)
            .iter()
            .filter(|(child, _)| pick(child))
            .filter_map(|(_, node)| node.upgrade())
            .collect()
    }

    /// The holds of the nodes `pick` picks check them.
    fn doubt(&self, pick: impl FnMut(&str) -> bool) {
        for node in self.nodes(pick) {
            node.doubt();
        }
    }

    /// The hold of node `child`, where it is tracked, checks it.
    fn doubt_one(&self, child: &str) {
        let node = lock(&self.nodes).get(child).and_then(Weak::upgrade);
        if let Some(node) = node {
            node.doubt();
        }
    }
}

/// A node of ours the shared watch tracks, while a registration's lease or hold refers to it.
struct Node {
    watch: Arc<ServiceWatch>,
    child: String,
    /// How many times the node was seen deleted, or missing from the session's ephemeral
    /// nodes: its hold checks it when this grows.
    doubts: watch::Sender<u64>,
}

impl Node {
    fn doubt(&self) {
        self.doubts.send_modify(|doubts| *doubts += 1);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let mut nodes = lock(&self.watch.shared.nodes);
        if nodes
            .get(&self.child)
            .is_some_and(|node| node.strong_count() == 0)
        {
            nodes.remove(&self.child);
        }
    }
}

/// A node tracked for a hold: its node, and the deletions seen before the write (or check)
/// its hold starts from.
#[derive(Clone)]
pub(crate) struct Tracked {
    node: Arc<Node>,
    seen: u64,
}

impl fmt::Debug for Tracked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tracked")
            .field("service", &self.node.watch.shared.service_path)
            .field("child", &self.node.child)
            .field("seen", &self.seen)
            .finish()
    }
}

/// Why a hold wakes up.
pub(crate) enum Wake {
    /// The node may be gone: check it.
    Doubt,
    /// The shared watch ended: set a new one and check the node.
    Ended,
    /// The server refused the shared watch: watch the node on its own.
    Refused,
    /// The session ended.
    SessionEnded(SessionState),
}

impl Tracked {
    /// Waits until the node may be gone, the shared watch ended, or the session did.
    pub(crate) async fn wait(&self, states: &mut StateWatcher) -> Wake {
        let mut doubts = self.node.doubts.subscribe();
        let mut phase = self.node.watch.shared.phase.subscribe();
        tokio::select! {
            _ = doubts.wait_for(|doubts| *doubts > self.seen) => Wake::Doubt,
            phase = phase.wait_for(|p| matches!(p, Phase::Ended(_) | Phase::Refused)) => {
                match phase.as_deref() {
                    Ok(Phase::Refused) => Wake::Refused,
                    _ => Wake::Ended,
                }
            }
            state = terminated(states) => Wake::SessionEnded(state),
        }
    }
}

/// Resolves when the session of `states` ends.
pub(crate) async fn terminated(states: &mut StateWatcher) -> SessionState {
    // A terminal state is delivered once: `changed()` would then wait forever.
    let now = states.state();
    if now.is_terminated() {
        return now;
    }
    loop {
        let state = states.changed().await;
        if state.is_terminated() {
            return state;
        }
    }
}

/// The request setting a shared watch, sent; [`finish`](Self::finish) awaits its answer and
/// starts the watch's task. Dropped unfinished, the watch ends (its holds set a new one).
pub(crate) struct Setting<'c> {
    watch: Arc<ServiceWatch>,
    adding: Pin<Box<dyn Future<Output = std::result::Result<PersistentWatcher, Z>> + Send + 'c>>,
    finished: bool,
}

impl Drop for Setting<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.watch.shared.end("its request was dropped".into());
        }
    }
}

/// What became of a shared watch's request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// The watch is set.
    Set,
    /// The server refused to watch the service's node: holds watch their nodes on their own.
    Refused,
    /// The server has no persistent watches (ZooKeeper before 3.6): holds watch their nodes
    /// on their own. Such a server closes the connection after answering a request it does
    /// not know, and what was sent after the request is lost with it.
    Unsupported,
}

impl Setting<'_> {
    /// Awaits the answer; the error is why the watch could not be set (its holds will try
    /// again).
    pub(crate) async fn finish(mut self, zk: &Arc<Zk>, watches: &ServiceWatches) -> Result<Answer> {
        let answer = timed_raw(zk, &mut self.adding).await;
        self.finished = true;
        let shared = &self.watch.shared;
        let error = match answer {
            Ok(Ok(watcher)) => {
                let task = tokio::spawn(follow(shared.clone(), zk.clone(), watcher));
                *lock(&self.watch.task) = Some(task.abort_handle());
                shared.phase.send_if_modified(|phase| {
                    let setting = *phase == Phase::Setting;
                    if setting {
                        *phase = Phase::Set;
                    }
                    setting
                });
                return Ok(Answer::Set);
            }
            Ok(Err(Z::Unimplemented)) => {
                tracing::info!(session = %format!("{:#x}", shared.session), "the server has no persistent watches (ZooKeeper before 3.6): each registration watches its node");
                watches.unsupported(shared.session);
                shared.phase.send_replace(Phase::Refused);
                return Ok(Answer::Unsupported);
            }
            Ok(Err(e @ (Z::NoAuth | Z::AuthFailed))) => {
                tracing::info!(service = %shared.service_path, error = %e, "watching the service's node is refused: each registration watches its node");
                shared.phase.send_replace(Phase::Refused);
                return Ok(Answer::Refused);
            }
            Ok(Err(e)) => map_err("watch", e),
            Err(e) => e,
        };
        shared.end(format!("it could not be set: {error}"));
        Err(error)
    }
}

/// The task of a shared watch: follows its events, and checks the session's ephemeral nodes
/// of the service every third of the session timeout. Ends with the watch's connection.
async fn follow(shared: Arc<Shared>, zk: Arc<Zk>, mut watcher: PersistentWatcher) {
    let period = zk.config.session_timeout / 3;
    let mut check = tokio::time::Instant::now() + period;
    loop {
        tokio::select! {
            event = watcher.changed() => match change(&event, &shared.service_path) {
                Change::Deleted(child) => shared.doubt_one(child),
                Change::Lost(state) => {
                    // Nothing more is to be read from the watcher after a terminal state.
                    shared.end(format!("connection lost ({state:?})"));
                    return;
                }
                Change::Connected | Change::Written(_) | Change::ServiceDeleted | Change::Other => {}
            },
            () = tokio::time::sleep_until(check) => {
                if !check_ephemerals(&shared, &zk).await {
                    return;
                }
                check = tokio::time::Instant::now() + period;
            }
        }
    }
}

/// Lists the session's ephemeral nodes of the service; the holds of tracked nodes missing
/// from the list check them (all of them when the list fails). False when the session ended.
async fn check_ephemerals(shared: &Shared, zk: &Zk) -> bool {
    let client = match zk.current.borrow().clone() {
        Some(client) if client.session_id().0 == shared.session => client,
        _ => {
            shared.end("the session ended".into());
            return false;
        }
    };
    let prefix = format!("{}/", shared.service_path);
    match timed_raw(zk, client.list_ephemerals(&shared.service_path)).await {
        Ok(Ok(paths)) => {
            let ours: HashSet<&str> = paths
                .iter()
                .filter_map(|path| path.strip_prefix(&prefix))
                .collect();
            shared.doubt(|child| !ours.contains(child));
        }
        Ok(Err(e)) => {
            tracing::debug!(service = %shared.service_path, error = %e, "listing the session's ephemeral nodes failed; every hold checks its node");
            shared.doubt(|_| true);
        }
        Err(e) => {
            tracing::debug!(service = %shared.service_path, error = %e, "listing the session's ephemeral nodes failed; every hold checks its node");
            shared.doubt(|_| true);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_of_a_service_node() {
        let s = "/ms/svc";
        let cases = [
            (EventType::NodeCreated, "/ms/svc/a", Change::Written("a")),
            (
                EventType::NodeDataChanged,
                "/ms/svc/a",
                Change::Written("a"),
            ),
            (EventType::NodeDeleted, "/ms/svc/a", Change::Deleted("a")),
            (EventType::NodeDeleted, "/ms/svc", Change::ServiceDeleted),
            (EventType::NodeCreated, "/ms/svc", Change::Other),
            (EventType::NodeDeleted, "/ms/svc/a/b", Change::Other),
            (EventType::NodeDeleted, "/ms/svc2/a", Change::Other),
            (EventType::NodeChildrenChanged, "/ms/svc", Change::Other),
        ];
        for (event_type, path, expected) in cases {
            let event = WatchedEvent::new(event_type, path);
            assert_eq!(change(&event, s), expected, "{path}");
        }
        let lost = WatchedEvent::new_session(SessionState::Disconnected);
        assert_eq!(change(&lost, s), Change::Lost(SessionState::Disconnected));
        let connected = WatchedEvent::new_session(SessionState::SyncConnected);
        assert_eq!(change(&connected, s), Change::Connected);
    }
}
