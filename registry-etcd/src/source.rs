//! etcd's reading primitives for the core's watch engine: list a service's prefix at a
//! revision, watch it from the next one, and tell whether a revision seen before can still be
//! resumed from (not compacted, and etcd did not lose its data).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};
use registry_core::{Error, Result, ServiceInstance};

use crate::client::WatchStream;
use crate::core::Connection;
use crate::error::{is_out_of_range, map_err};
use crate::rpc::mvccpb::event::EventType;

/// Decodes the value at `key`: `None` (said once, by the core) when it is not a valid
/// instance of `name`.
pub(crate) fn decode(key: &[u8], value: &[u8], name: &str) -> Option<ServiceInstance> {
    registry_core::untrusted::decode("etcd", name, &String::from_utf8_lossy(key), value)
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

/// Lists the prefix, in pages at one revision: the instances by key, and the revision of
/// the read.
pub(crate) async fn list(conn: &Connection, prefix: &str, name: &str) -> Result<View> {
    let listing = conn
        .run("get", |c| async move {
            c.get_prefix(prefix.as_bytes(), 0).await
        })
        .await?;
    let mut view = View {
        revision: listing.revision,
        ..View::default()
    };
    for kv in &listing.kvs {
        view.put(&kv.key, &kv.value, kv.mod_revision, name);
    }
    Ok(view)
}

/// Whether etcd's history still holds the view at `revision` (its keys' `revisions`), so that a
/// watch from the next revision continues it without a gap: false when that revision was
/// compacted away, or when etcd lost its data (the revision is in the future, or its keys or
/// values differ).
async fn still_holds(
    conn: &Connection,
    prefix: &str,
    revision: i64,
    revisions: &BTreeMap<Vec<u8>, (i64, u64)>,
) -> Result<bool> {
    let (generation, client) = conn.client();
    match client.get_prefix(prefix.as_bytes(), revision).await {
        Ok(listing) => {
            let then: BTreeMap<Vec<u8>, (i64, u64)> = listing
                .kvs
                .iter()
                .map(|kv| (kv.key.clone(), (kv.mod_revision, value_hash(&kv.value))))
                .collect();
            Ok(then == *revisions)
        }
        // "required revision has been compacted" / "required revision is a future revision".
        Err(e) if is_out_of_range(&e) => {
            tracing::info!(%prefix, revision, reason = %e, "etcd watch cannot resume; listing again");
            Ok(false)
        }
        Err(e) => {
            conn.failover(generation).await;
            Err(map_err("get", e))
        }
    }
}

/// Where a watch of one service stands: the view it keeps, shared with the engine so that a
/// resume after a failure goes on from it (the view changes in place as events come).
#[derive(Clone, Default)]
pub(crate) struct Position(Arc<Mutex<View>>);

impl Position {
    fn view(&self) -> MutexGuard<'_, View> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl fmt::Debug for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Position")
            .field(&self.view().revision)
            .finish()
    }
}

/// etcd's primitives for the core's watch engine: list a prefix at a revision, watch it from
/// the next one, and tell whether a revision can still be resumed from.
pub(crate) struct EtcdSource {
    pub(crate) conn: Arc<Connection>,
    pub(crate) namespace: String,
}

impl EtcdSource {
    pub(crate) fn prefix(&self, name: &str) -> String {
        format!("{}/{name}/", self.namespace)
    }
}

#[async_trait]
impl Source for EtcdSource {
    type Position = Position;

    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, Position)> {
        let view = list(&self.conn, &self.prefix(name), name).await?;
        Ok((view.list(), Position(Arc::new(Mutex::new(view)))))
    }

    async fn resume(&self, name: &str, from: &Position) -> Result<bool> {
        let (revision, revisions) = {
            let view = from.view();
            (view.revision, view.revisions.clone())
        };
        still_holds(&self.conn, &self.prefix(name), revision, &revisions).await
    }

    async fn follow(&self, name: &str, from: Position, updates: &Updates<Position>) -> Stop {
        let prefix = self.prefix(name);
        let (generation, client) = self.conn.client();
        let revision = from.view().revision;
        let stop = match client.watch_prefix(prefix.as_bytes(), revision + 1).await {
            Ok(mut stream) => {
                updates.following();
                apply_events(&mut stream, &from, name, updates).await
            }
            Err(e) => Stop::Failed(map_err("watch", e)),
        };
        if matches!(&stop, Stop::Failed(e) if e.is_temporary()) {
            self.conn.failover(generation).await;
        }
        stop
    }
}

/// Applies the watch's events to the view, handing the list over after each response, until
/// the watch fails or etcd cancels it.
async fn apply_events(
    stream: &mut WatchStream,
    position: &Position,
    name: &str,
    updates: &Updates<Position>,
) -> Stop {
    // The newest revision of the events of the batch being read.
    let mut fragments_revision = 0;
    loop {
        let resp = match stream.message().await {
            Ok(Some(resp)) => resp,
            Ok(None) => {
                return Stop::Failed(Error::Unavailable {
                    message: "etcd watch stream ended".into(),
                    source: None,
                })
            }
            Err(e) => return Stop::Failed(map_err("watch", e)),
        };
        if resp.canceled {
            tracing::info!(
                compacted = resp.compact_revision,
                reason = %resp.cancel_reason,
                "etcd canceled the watch"
            );
            // Compacted past our revision: list again. Any other reason (a permission
            // taken away, say) is a failure the engine backs off from.
            if resp.compact_revision > 0 {
                return Stop::Resync;
            }
            return Stop::Failed(Error::Backend {
                backend: crate::SCHEME,
                message: format!("watch canceled: {}", resp.cancel_reason),
                temporary: true,
                source: None,
            });
        }
        if resp.events.is_empty() {
            continue;
        }
        let list = {
            let mut view = position.view();
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
                fragments_revision = fragments_revision.max(kv.mod_revision);
            }
            // A revision's events all come in one response, or in fragments of one batch
            // (the last with `fragment` false): only after the whole batch is the view the
            // state at its newest revision, and handed over. (A watch that fails between
            // fragments leaves a view that no revision matches: the engine lists again.)
            if resp.fragment {
                continue;
            }
            view.revision = view.revision.max(fragments_revision);
            view.list()
        };
        updates.list(list, position.clone());
    }
}

#[cfg(test)]
mod round_trip {
    use proptest::prelude::*;
    use registry_core::strategy::{self, Drawn, Shape};

    proptest! {
        #![proptest_config(strategy::config(256))]

        /// Every valid instance comes back exactly from the value etcd holds for it.
        #[test]
        fn every_valid_instance_round_trips(
            Drawn(instance) in strategy::instance(&Shape::default()),
        ) {
            prop_assert!(instance.validate().is_ok(), "{:?}", instance.validate());
            let key = format!("/microservices/{}/{}", instance.name, instance.id);
            let value = instance.to_json();
            let back = super::decode(key.as_bytes(), value.as_bytes(), &instance.name);
            let Some(back) = back else {
                return Err(TestCaseError::fail(format!(
                    "skipped when read ({} bytes of JSON)",
                    value.len()
                )));
            };
            let difference = strategy::difference(&instance, &back);
            prop_assert!(difference.is_none(), "{:?}", difference);
        }
    }
}
