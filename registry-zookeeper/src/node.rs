//! Creating and deleting our ephemeral nodes without stealing anyone else's.

use registry_core::{Error, Result, ServiceInstance};
use zookeeper_client::{Client, Error as Z};

use crate::error::map_err;
use crate::session::Zk;

/// Creates (or updates) the ephemeral node of `instance` at `path` in `client`'s session;
/// returns that session. A node already there is updated when this session owns it, replaced
/// when an earlier session of this registry owns it, and left alone (a conflict) otherwise.
pub(crate) async fn create(
    zk: &Zk,
    client: &Client,
    path: &str,
    instance: &ServiceInstance,
) -> Result<i64> {
    let session = client.session_id().0;
    let data = instance.to_json().into_bytes();
    let parent = path.rsplit_once('/').map_or("", |(parent, _)| parent);
    timed(zk, "mkdir", client.mkdir(parent, &zk.persistent())).await?;
    // A few rounds: the node may come and go between our calls.
    for _ in 0..5 {
        match timed_raw(zk, client.create(path, &data, &zk.ephemeral())).await {
            Ok(Ok(_)) => return Ok(session),
            Ok(Err(Z::NodeExists)) => {}
            Ok(Err(e)) => return Err(map_err("create", e)),
            Err(e) => return Err(e),
        }
        let stat = match timed_raw(zk, client.get_data(path)).await? {
            Ok((_, stat)) => stat,
            Err(Z::NoNode) => continue,
            Err(e) => return Err(map_err("get", e)),
        };
        let owner = stat.ephemeral_owner;
        if owner == session {
            match timed_raw(zk, client.set_data(path, &data, Some(stat.version))).await? {
                Ok(_) => return Ok(session),
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
            let holder = if owner == 0 {
                "a persistent node".to_owned()
            } else {
                format!("session {owner:#x} of another client")
            };
            return Err(Error::Conflict {
                message: format!("ZooKeeper node {path} is held by {holder}; it is left alone"),
            });
        }
    }
    Err(Error::Unavailable {
        message: format!("ZooKeeper node {path} kept changing"),
        source: None,
    })
}

/// Deletes the node at `path` when `client`'s session, or an earlier one of ours, owns it.
pub(crate) async fn delete_ours(zk: &Zk, client: &Client, path: &str) -> Result<()> {
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
