//! The ZooKeeper primitives of the core's registration supervisor: an instance is an
//! ephemeral node of the registry's session.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use registry_core::registration::Store;
use registry_core::{Error, Result, ServiceInstance};

use crate::error::map_err;
use crate::node::{self, Written};
use crate::session::Zk;
use crate::SCHEME;

/// Creates instances as ephemeral nodes at `{root}/{name}/{id}`.
pub(crate) struct ZkStore {
    pub(crate) zk: Arc<Zk>,
}

impl ZkStore {
    fn path(&self, name: &str, id: &str) -> String {
        format!("{}/{name}/{id}", self.zk.config.root)
    }

    /// How often a held node is checked besides its watch: a third of the session timeout.
    fn interval(&self) -> Duration {
        self.zk.config.session_timeout / 3
    }

    /// Watches the node of `instance` in `session` until it is lost; see [`Store::hold`].
    async fn watch_node(&self, instance: &ServiceInstance, session: i64) -> Error {
        let path = self.path(&instance.name, &instance.id);
        loop {
            let client = match self.zk.current.borrow().clone() {
                Some(client) if client.session_id().0 == session => client,
                _ => return lost(format!("session {session:#x} ended")),
            };
            let mut states = client.state_watcher();
            if states.state().is_terminated() {
                return lost(format!("session {session:#x} ended"));
            }
            let watched = node::timed_raw(&self.zk, client.check_and_watch_stat(&path)).await;
            let watcher = match watched {
                Ok(Ok((Some(stat), watcher))) if stat.ephemeral_owner == session => watcher,
                Ok(Ok((Some(stat), _))) => {
                    return lost(format!(
                        "node {path} was taken over by session {:#x}",
                        stat.ephemeral_owner
                    ))
                }
                Ok(Ok((None, _))) => return lost(format!("node {path} was deleted")),
                Ok(Err(e)) => return map_err("watch", e),
                Err(e) => return e,
            };
            tokio::select! {
                _ = watcher.changed() => {}
                state = states.changed() => {
                    if state.is_terminated() {
                        return lost(format!("session {session:#x} ended ({state:?})"));
                    }
                }
                () = tokio::time::sleep(self.interval()) => {}
            }
        }
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
    async fn write(&self, instance: &ServiceInstance, held: Option<&Written>) -> Result<Written> {
        let client = self.zk.client().await?;
        let path = self.path(&instance.name, &instance.id);
        node::write(&self.zk, &client, &path, instance, held).await
    }

    /// Watches the node; resolves when its session ended or it is gone or taken over. It is
    /// also checked every third of the session timeout, so that a watch the client did not
    /// set again after a reconnection cannot hide a loss.
    async fn hold(&self, instance: &ServiceInstance, written: &Written) -> Error {
        let error = self.watch_node(instance, written.session).await;
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
