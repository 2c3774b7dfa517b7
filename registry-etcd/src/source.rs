//! Reading a service's prefix and following it: list, then watch from the list's revision + 1;
//! after a failure resume from the last revision seen, or list again when etcd no longer has
//! that revision (compacted, or its data was reset).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Backoff, Error, Publisher, Result, ServiceInstance};

use crate::client::WatchStream;
use crate::core::Connection;
use crate::error::{is_out_of_range, map_err};
use crate::rpc::mvccpb::event::EventType;

/// Decodes the instances under a prefix, skipping (with a warning) what is not one.
pub(crate) fn decode(key: &[u8], value: &[u8], name: &str) -> Option<ServiceInstance> {
    match ServiceInstance::from_json(value) {
        Ok(instance) if instance.name == name => Some(instance),
        Ok(instance) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), found = %instance.name, "etcd value names another service; skipped");
            None
        }
        Err(e) => {
            tracing::warn!(key = %String::from_utf8_lossy(key), error = %e, "etcd value is not an instance; skipped");
            None
        }
    }
}

/// What a watch knows of one service's prefix, exactly as it was at `revision`.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// The valid instances, by key.
    instances: BTreeMap<Vec<u8>, ServiceInstance>,
    /// The `mod_revision` and a hash of the value of every key under the prefix, the
    /// skipped ones included.
    revisions: BTreeMap<Vec<u8>, (i64, u64)>,
    /// The store revision this view is the state of.
    revision: i64,
}

impl View {
    pub(crate) fn list(&self) -> Vec<ServiceInstance> {
        self.instances.values().cloned().collect()
    }

    fn put(&mut self, key: &[u8], value: &[u8], mod_revision: i64, name: &str) {
        self.revisions
            .insert(key.to_vec(), (mod_revision, value_hash(value)));
        match decode(key, value, name) {
            Some(instance) => self.instances.insert(key.to_vec(), instance),
            None => self.instances.remove(key),
        };
    }

    fn delete(&mut self, key: &[u8]) {
        self.revisions.remove(key);
        self.instances.remove(key);
    }
}

fn value_hash(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Lists the prefix: the instances by key, and the revision of the read.
pub(crate) async fn list(conn: &Connection, prefix: &str, name: &str) -> Result<View> {
    let resp = conn
        .run("get", |c| async move {
            c.get_prefix(prefix.as_bytes(), 0).await
        })
        .await?;
    let mut view = View {
        revision: resp.header.as_ref().map_or(0, |h| h.revision),
        ..View::default()
    };
    for kv in &resp.kvs {
        view.put(&kv.key, &kv.value, kv.mod_revision, name);
    }
    Ok(view)
}

/// Whether etcd's history still holds `view` at its revision, so that a watch from the next
/// revision continues it without a gap: false when that revision was compacted away, or when
/// etcd lost its data (the revision is in the future, or its keys or values differ).
async fn still_holds(conn: &Connection, prefix: &str, view: &View) -> Result<bool> {
    let (generation, client) = conn.client();
    match client.get_prefix(prefix.as_bytes(), view.revision).await {
        Ok(resp) => {
            let then: BTreeMap<Vec<u8>, (i64, u64)> = resp
                .kvs
                .iter()
                .map(|kv| (kv.key.clone(), (kv.mod_revision, value_hash(&kv.value))))
                .collect();
            Ok(then == view.revisions)
        }
        // "required revision has been compacted" / "required revision is a future revision".
        Err(e) if is_out_of_range(&e) => {
            tracing::info!(%prefix, revision = view.revision, reason = %e, "etcd watch cannot resume; listing again");
            Ok(false)
        }
        Err(e) => {
            conn.failover(generation).await;
            Err(map_err("get", e))
        }
    }
}

/// The upstream of one service's shared watch: list once, then follow events; after a
/// failure resume from the last revision seen, or list again when etcd no longer has it.
pub(crate) async fn follow(
    conn: Arc<Connection>,
    prefix: String,
    name: String,
    publisher: Publisher,
) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut view = None;
    loop {
        if let Err(e) =
            follow_once(&conn, &prefix, &name, &publisher, &mut view, &mut backoff).await
        {
            tracing::debug!(%prefix, error = %e, "etcd watch interrupted");
            publisher.report_error(e);
        }
        tokio::time::sleep(backoff.delay()).await;
    }
}

/// One connection's worth of [`follow`]: returns when the watch fails, keeping in `view`
/// what was seen so far.
async fn follow_once(
    conn: &Connection,
    prefix: &str,
    name: &str,
    publisher: &Publisher,
    view: &mut Option<View>,
    backoff: &mut Backoff,
) -> Result<()> {
    if let Some(seen) = view.as_ref() {
        if !still_holds(conn, prefix, seen).await? {
            *view = None;
        }
    }
    if view.is_none() {
        let fresh = list(conn, prefix, name).await?;
        publisher.publish(fresh.list());
        *view = Some(fresh);
    }
    let Some(view) = view.as_mut() else {
        return Ok(());
    };
    let (generation, client) = conn.client();
    let watching = async {
        let mut stream = client
            .watch_prefix(prefix.as_bytes(), view.revision + 1)
            .await
            .map_err(|e| map_err("watch", e))?;
        backoff.reset();
        apply_events(&mut stream, view, name, publisher).await
    };
    let result = watching.await;
    if matches!(&result, Err(e) if e.is_temporary()) {
        conn.failover(generation).await;
    }
    result
}

/// Applies the watch's events to `view`, publishing after each response, until it fails.
async fn apply_events(
    stream: &mut WatchStream,
    view: &mut View,
    name: &str,
    publisher: &Publisher,
) -> Result<()> {
    loop {
        let Some(resp) = stream.message().await.map_err(|e| map_err("watch", e))? else {
            return Err(Error::Unavailable {
                message: "etcd watch stream ended".into(),
                source: None,
            });
        };
        if resp.canceled {
            // Compacted past our revision, most likely: the next round checks and lists.
            return Err(Error::Backend {
                backend: crate::SCHEME,
                message: format!(
                    "watch canceled (compacted at {}): {}",
                    resp.compact_revision, resp.cancel_reason
                ),
                temporary: false,
                source: None,
            });
        }
        for event in &resp.events {
            let Some(kv) = &event.kv else { continue };
            match EventType::try_from(event.r#type) {
                Ok(EventType::Put) => view.put(&kv.key, &kv.value, kv.mod_revision, name),
                Ok(EventType::Delete) => view.delete(&kv.key),
                Err(_) => {
                    tracing::warn!(
                        kind = event.r#type,
                        "etcd watch event of an unknown type; skipped"
                    );
                    continue;
                }
            }
            // A revision's events all come in one response: after it, the view is the state
            // at the newest event's revision.
            view.revision = view.revision.max(kv.mod_revision);
        }
        if !resp.events.is_empty() {
            publisher.publish(view.list());
        }
    }
}
