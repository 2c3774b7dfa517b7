//! Persistent recursive watches on a service's node `{root}/{name}` (ZooKeeper 3.6+): what
//! their events say.

use std::future::Future;

use zookeeper_client::{
    AddWatchMode, Client, Error as Z, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

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
