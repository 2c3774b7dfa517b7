//! Creating, updating and deleting our ephemeral nodes without stealing anyone else's.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use registry_core::{Error, Result, ServiceInstance};
use zookeeper_client::{Client, Error as Z, Stat};

use crate::error::map_err;
use crate::service_watch::Tracked;
use crate::session::Zk;

/// The node of a registration as this registry wrote it last: the lease the core's
/// supervisor keeps for it.
#[derive(Debug, Clone)]
pub(crate) struct Written {
    /// The session that owns the node.
    pub(crate) session: i64,
    /// The node's data version after that write; `None` where the server did not say
    /// (ZooKeeper 3.4 answers a create without the node's stat).
    version: Option<i32>,
    /// Set once the registration's hold saw the node lost (deleted, taken over, its session
    /// ended): the next write then checks who owns the path before writing.
    lost: Arc<AtomicBool>,
    /// The node as the service's shared watch tracks it for the hold; `None` where the
    /// server has no persistent watches.
    tracked: Option<Tracked>,
}

impl Written {
    fn new(session: i64, stat: &Stat) -> Self {
        Written {
            session,
            version: (!stat.is_invalid() && stat.version >= 0).then_some(stat.version),
            lost: Arc::default(),
            tracked: None,
        }
    }

    /// The same, tracked by the service's shared watch as `tracked`.
    pub(crate) fn tracked(self, tracked: Option<Tracked>) -> Self {
        Written { tracked, ..self }
    }

    /// How the service's shared watch tracks the node.
    pub(crate) fn tracking(&self) -> Option<&Tracked> {
        self.tracked.as_ref()
    }

    /// The registration's hold saw the node lost.
    pub(crate) fn set_lost(&self) {
        self.lost.store(true, Ordering::Relaxed);
    }

    /// The version of our node that `session` may update in place: the one written last, while
    /// no loss was seen since.
    fn updatable(&self, session: i64) -> Option<i32> {
        if self.session != session || self.lost.load(Ordering::Relaxed) {
            return None;
        }
        self.version
    }
}

impl PartialEq for Written {
    fn eq(&self, other: &Self) -> bool {
        (self.session, self.version) == (other.session, other.version)
    }
}

/// Writes the ephemeral node of `instance` at `path` in `client`'s session, in one round trip
/// in the common cases: an update of the node this session wrote last (`held`) is a `setData`
/// of its version; anything else is a `create`, with the parents made only when it is missing
/// them. A node already there is updated when this session owns it, replaced when an earlier
/// session of this registry owns it, and left alone (a conflict) otherwise.
pub(crate) async fn write(
    zk: &Zk,
    client: &Client,
    path: &str,
    instance: &ServiceInstance,
    held: Option<&Written>,
) -> Result<Written> {
    let session = client.session_id().0;
    let data = instance.to_json().into_bytes();
    if let Some(version) = held.and_then(|held| held.updatable(session)) {
        // Only the version we wrote is set: a node changed or replaced since is not.
        match timed_raw(zk, client.set_data(path, &data, Some(version))).await? {
            Ok(stat) if stat.ephemeral_owner == session => return Ok(Written::new(session, &stat)),
            Ok(stat) => {
                // A race only: our node was deleted from outside, another session created
                // one in its place at the same version, and this update came before the
                // registration's hold saw the loss. ZooKeeper has no write conditioned on
                // the owner, so it cannot be ruled out beforehand: it is reported as a
                // conflict, and nothing more is written to that node.
                tracing::error!(%path, owner = %format!("{:#x}", stat.ephemeral_owner), "an update reached a node another session created in place of ours");
                return Err(held_by(path, stat.ephemeral_owner));
            }
            // Gone, or changed from outside: the create path looks at who holds it.
            Err(Z::NoNode | Z::BadVersion) => {}
            Err(e) => return Err(map_err("set", e)),
        }
    }
    create(zk, client, path, &data, session).await
}

/// A conflict: the node at `path` is held by `owner` (0: a persistent node), not by us.
fn held_by(path: &str, owner: i64) -> Error {
    let holder = if owner == 0 {
        "a persistent node".to_owned()
    } else {
        format!("session {owner:#x} of another client")
    };
    Error::Conflict {
        message: format!("ZooKeeper node {path} is held by {holder}; it is left alone"),
    }
}

/// Creates the node at `path` with `data` in `session`, making its parents only when the
/// create says they are missing; a node already there is dealt with as [`write`] says.
async fn create(
    zk: &Zk,
    client: &Client,
    path: &str,
    data: &[u8],
    session: i64,
) -> Result<Written> {
    let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    // A few rounds: the node and its parent may come and go between our calls.
    for _ in 0..5 {
        match timed_raw(zk, client.create(path, data, &zk.ephemeral())).await? {
            Ok((stat, _)) => return Ok(Written::new(session, &stat)),
            Err(Z::NodeExists) => {}
            Err(Z::NoNode) => {
                timed(zk, "mkdir", client.mkdir(parent, &zk.persistent())).await?;
                continue;
            }
            Err(e) => return Err(map_err("create", e)),
        }
        let stat = match timed(zk, "exists", client.check_stat(path)).await? {
            Some(stat) => stat,
            None => continue,
        };
        let owner = stat.ephemeral_owner;
        if owner == session {
            match timed_raw(zk, client.set_data(path, data, Some(stat.version))).await? {
                Ok(stat) => return Ok(Written::new(session, &stat)),
                Err(Z::BadVersion | Z::NoNode) => continue,
                Err(e) => return Err(map_err("set", e)),
            }
        } else if owner != 0 && zk.is_ours(owner) {
            tracing::info!(%path, owner = %format!("{owner:#x}"), "replacing our node of an earlier session");
            match timed_raw(zk, client.delete(path, Some(stat.version))).await? {
                Ok(()) | Err(Z::NoNode | Z::BadVersion) => continue,
                Err(e) => return Err(map_err("delete", e)),
            }
        } else {
            return Err(held_by(path, owner));
        }
    }
    Err(Error::Unavailable {
        message: format!("ZooKeeper node {path} kept changing"),
        source: None,
    })
}

/// Deletes the node at `path` when `client`'s session, or an earlier one of ours, owns it.
/// The node this session wrote last (`written`, while no loss was seen since) is deleted at
/// its version in one round trip; anything else is read first to see who owns it.
pub(crate) async fn delete_ours(
    zk: &Zk,
    client: &Client,
    path: &str,
    written: Option<&Written>,
) -> Result<()> {
    let session = client.session_id().0;
    if let Some(version) = written.and_then(|written| written.updatable(session)) {
        // Only the version we wrote is deleted: a node changed or replaced since is not.
        match timed_raw(zk, client.delete(path, Some(version))).await? {
            Ok(()) | Err(Z::NoNode) => return Ok(()),
            // Changed from outside since: the loop below looks at who holds it.
            Err(Z::BadVersion) => {}
            Err(e) => return Err(map_err("delete", e)),
        }
    }
    loop {
        let stat = match timed_raw(zk, client.get_data(path)).await? {
            Ok((_, stat)) => stat,
            Err(Z::NoNode) => return Ok(()),
            Err(e) => return Err(map_err("get", e)),
        };
        if !zk.is_ours(stat.ephemeral_owner) {
            tracing::debug!(%path, "deregister leaves a node it does not own");
            return Ok(());
        }
        match timed_raw(zk, client.delete(path, Some(stat.version))).await? {
            Ok(()) | Err(Z::NoNode) => return Ok(()),
            Err(Z::BadVersion) => continue,
            Err(e) => return Err(map_err("delete", e)),
        }
    }
}

/// Runs a request with the connect timeout, mapping both failures.
pub(crate) async fn timed<T>(
    zk: &Zk,
    operation: &'static str,
    request: impl std::future::Future<Output = std::result::Result<T, zookeeper_client::Error>>,
) -> Result<T> {
    timed_raw(zk, request)
        .await?
        .map_err(|e| map_err(operation, e))
}

/// Runs a request with the connect timeout; the outer error is the timeout.
pub(crate) async fn timed_raw<T>(
    zk: &Zk,
    request: impl std::future::Future<Output = std::result::Result<T, zookeeper_client::Error>>,
) -> Result<std::result::Result<T, zookeeper_client::Error>> {
    let after = zk.config.connect_timeout;
    tokio::time::timeout(after, request)
        .await
        .map_err(|_| Error::Timeout {
            operation: "ZooKeeper request",
            after,
        })
}
