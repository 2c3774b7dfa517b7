//! The ZooKeeper primitives of the core's registration supervisor: an instance is an
//! ephemeral node of the registry's session, and the holds of a service's registrations share
//! one watch of the service (`service_watch.rs`).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};
use zookeeper_client::{Client, StateWatcher};

use crate::error::map_err;
use crate::node::{self, Written};
use crate::service_watch::{self, Answer, ServiceWatches, Tracked, Wake};
use crate::session::Zk;
use crate::SCHEME;

/// Creates instances as ephemeral nodes at `{root}/{name}/{id}`.
pub(crate) struct ZkStore {
    zk: Arc<Zk>,
    watches: ServiceWatches,
}

impl ZkStore {
    pub(crate) fn new(zk: Arc<Zk>) -> Self {
        ZkStore {
            zk,
            watches: ServiceWatches::default(),
        }
    }

    fn service_path(&self, name: &str) -> String {
        format!("{}/{name}", self.zk.config.root)
    }

    fn path(&self, name: &str, id: &str) -> String {
        format!("{}/{name}/{id}", self.zk.config.root)
    }

    /// How often a held node is checked besides its watch: a third of the session timeout.
    fn interval(&self) -> Duration {
        self.zk.config.session_timeout / 3
    }

    /// The client of `session` and a watcher of its state, while it is the current one.
    fn session(&self, session: i64) -> std::result::Result<(Client, StateWatcher), Error> {
        let client = match self.zk.current.borrow().clone() {
            Some(client) if client.session_id().0 == session => client,
            _ => return Err(lost(format!("session {session:#x} ended"))),
        };
        let states = client.state_watcher();
        if states.peek_state().is_terminated() {
            return Err(lost(format!("session {session:#x} ended")));
        }
        Ok((client, states))
    }

    /// Holds the node of `instance` in `session` through the service's shared watch until it
    /// is lost; see [`Store::hold`]. `tracked`: the node as its write left it tracked.
    async fn hold_shared(
        &self,
        instance: &ServiceInstance,
        session: i64,
        mut tracked: Tracked,
    ) -> Error {
        let path = self.path(&instance.name, &instance.id);
        loop {
            let mut states = match self.session(session) {
                Ok((_, states)) => states,
                Err(e) => return e,
            };
            match tracked.wait(&mut states).await {
                Wake::Doubt | Wake::Ended => {}
                Wake::Refused => return self.watch_node(instance, session).await,
                Wake::SessionEnded(state) => {
                    return lost(format!("session {session:#x} ended ({state:?})"))
                }
            }
            // Checked in a request sent after the watch is set again (where it ended), so
            // that a deletion after the check is seen by the watch.
            let client = match self.session(session) {
                Ok((client, _)) => client,
                Err(e) => return e,
            };
            let (again, setting) = self.watches.track(
                &client,
                &self.service_path(&instance.name),
                &instance.name,
                &instance.id,
            );
            let checking = node::timed_raw(&self.zk, client.check_stat(&path));
            let set = match setting {
                Some(setting) => setting.finish(&self.zk, &self.watches).await,
                None => Ok(Answer::Set),
            };
            if let Some(error) = checked(&path, session, checking.await) {
                return error;
            }
            if let Err(error) = set {
                return error;
            }
            match again {
                Some(again) => tracked = again,
                None => return self.watch_node(instance, session).await,
            }
        }
    }

    /// Watches the node of `instance` in `session` on its own (a one-shot watch set again after
    /// each event) until it is lost: where the server has no persistent watches, or refuses
    /// one on the service's node.
    async fn watch_node(&self, instance: &ServiceInstance, session: i64) -> Error {
        let path = self.path(&instance.name, &instance.id);
        loop {
            let (client, mut states) = match self.session(session) {
                Ok(session) => session,
                Err(e) => return e,
            };
            let watched = node::timed_raw(&self.zk, client.check_and_watch_stat(&path)).await;
            let watcher = match watched {
                Ok(Ok((stat, watcher))) => match checked(&path, session, Ok(Ok(stat))) {
                    Some(error) => return error,
                    None => watcher,
                },
                Ok(Err(e)) => return map_err("watch", e),
                Err(e) => return e,
            };
            drop(client);
            tokio::select! {
                _ = watcher.changed() => {}
                state = service_watch::terminated(&mut states) => {
                    return lost(format!("session {session:#x} ended ({state:?})"));
                }
                () = tokio::time::sleep(self.interval()) => {}
            }
        }
    }
}

/// What a check of our node at `path` in `session` found: `None` while it is ours, else why
/// it is lost (or the check failed).
fn checked(
    path: &str,
    session: i64,
    answer: Result<std::result::Result<Option<zookeeper_client::Stat>, zookeeper_client::Error>>,
) -> Option<Error> {
    match answer {
        Ok(Ok(Some(stat))) if stat.ephemeral_owner == session => None,
        Ok(Ok(Some(stat))) => Some(lost(format!(
            "node {path} was taken over by session {:#x}",
            stat.ephemeral_owner
        ))),
        Ok(Ok(None)) => Some(lost(format!("node {path} was deleted"))),
        Ok(Err(e)) => Some(map_err("exists", e)),
        Err(e) => Some(e),
    }
}

fn lost(message: String) -> Error {
    Error::Backend {
        backend: SCHEME,
        message,
        temporary: true,
        source: None,
    }
}

#[async_trait]
impl Store for ZkStore {
    /// The node as written last: the session that owns it and its version.
    type Lease = Written;

    /// One round trip in the common cases: an update of the node this session wrote last
    /// (`held`, while its hold saw no loss) sets its data; a new registration creates it,
    /// making the service's parent only when it is missing.
    ///
    /// The node is tracked by the service's shared watch before the write is sent; the first
    /// write of a service in a session sets that watch, in a request sent just before it.
    async fn write(&self, instance: &ServiceInstance, held: Option<&Written>) -> Result<Written> {
        let client = self.zk.client().await?;
        let path = self.path(&instance.name, &instance.id);
        let service_path = self.service_path(&instance.name);
        let (tracked, setting) =
            self.watches
                .track(&client, &service_path, &instance.name, &instance.id);
        let written = node::write(&self.zk, &client, &path, instance, held).await;
        let answer = match setting {
            Some(setting) => setting.finish(&self.zk, &self.watches).await,
            None => Ok(Answer::Set),
        };
        match (written, answer) {
            (Ok(written), _) => Ok(written.tracked(tracked)),
            (Err(error), Ok(Answer::Unsupported)) if error.is_temporary() => {
                // The server closed the connection after refusing the watch, and the write
                // sent after it was lost with it: written again, without the watch.
                tracing::debug!(service = %instance.name, %error, "written again after the server refused the shared watch");
                let client = self.zk.client().await?;
                node::write(&self.zk, &client, &path, instance, held).await
            }
            (Err(error), _) => Err(error),
        }
    }

    /// Resolves when the node's session ended or it is gone or taken over: the service's
    /// shared watch tells of its deletion (then one `exists` makes sure), no request is sent
    /// for it otherwise. The shared watch ends with its connection (events can be lost across
    /// a reconnection), and then the hold sets it again and checks the node; every third of
    /// the session timeout it lists the session's nodes of the service, and a node missing
    /// there is checked too. Where the server has no persistent watches (before ZooKeeper
    /// 3.6), the node is watched on its own with a one-shot watch, and checked every third of
    /// the session timeout.
    async fn hold(&self, instance: &ServiceInstance, written: &Written) -> Error {
        let error = match written.tracking() {
            Some(tracked) => {
                self.hold_shared(instance, written.session, tracked.clone())
                    .await
            }
            None => self.watch_node(instance, written.session).await,
        };
        // The next write of this registration checks who holds the path first.
        written.set_lost();
        error
    }

    async fn remove(&self, instance: &ServiceInstance, lease: Option<&Written>) -> Result<()> {
        let client = self.zk.client().await?;
        let path = self.path(&instance.name, &instance.id);
        node::delete_ours(&self.zk, &client, &path, lease).await
    }

    async fn contains(&self, name: &str, id: &str) -> Result<bool> {
        let client = self.zk.client().await?;
        let path = self.path(name, id);
        Ok(node::timed(&self.zk, "exists", client.check_stat(&path))
            .await?
            .is_some())
    }

    fn retry_cap(&self) -> Duration {
        self.interval()
    }

    fn backend(&self) -> &'static str {
        crate::SCHEME
    }
}
