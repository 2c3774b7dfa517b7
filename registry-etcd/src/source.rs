//! etcd's reading primitives for the core's watch engine: list a service's prefix at a
//! revision, watch it from the next one, and tell whether a revision seen before can still be
//! resumed from (not compacted, and etcd did not lose its data).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use registry_core::watch::{Source, Stop, Updates};
use registry_core::{Error, Result, ServiceInstance};

use crate::client::{Listing, WatchStream};
use crate::core::Connection;
use crate::error::{is_out_of_range, map_err};
use crate::rpc::mvccpb::event::EventType;

/// Decodes the value at `key`: `None` (said once, by the core) when it is not a valid
/// instance of `name`.
pub(crate) fn decode(key: &[u8], value: &[u8], name: &str) -> Option<ServiceInstance> {
    registry_core::untrusted::decode("etcd", name, &String::from_utf8_lossy(key), value)
}

/// One key under a service's prefix, as a [`View`] knows it.
#[derive(Debug)]
struct Entry {
    /// Its `mod_revision`.
    mod_revision: i64,
    /// A hash of its value.
    hash: u64,
    /// The instance its value holds; `None` when the value is not a valid instance (skipped).
    instance: Option<ServiceInstance>,
}

/// What a watch knows of one service's prefix, exactly as it was at `revision`.
///
/// A list's keys and values are kept as read (`listed`) until following needs them: the
/// list itself hands its instances over without copying them, `get_service` never builds
/// the entries, and a watch builds them once, after its first list was handed over.
#[derive(Debug, Default)]
pub(crate) struct View {
    /// Every key under the prefix, the skipped ones included, with what its value holds.
    entries: BTreeMap<Vec<u8>, Entry>,
    /// A list not yet read into `entries`.
    listed: Option<Listing>,
    /// The store revision this view is the state of.
    revision: i64,
}

impl View {
    /// The valid instances, in key order.
    fn list(&self) -> Vec<ServiceInstance> {
        self.entries
            .values()
            .filter_map(|entry| entry.instance.clone())
            .collect()
    }

    /// Reads a list kept as read into the entries (once).
    fn ready(&mut self, name: &str) {
        let Some(listing) = self.listed.take() else {
            return;
        };
        // In key order already: the map is built in one pass.
        self.entries = listing
            .kvs
            .into_iter()
            .map(|kv| {
                let entry = Entry {
                    mod_revision: kv.mod_revision,
                    hash: value_hash(&kv.value),
                    instance: decode(&kv.key, &kv.value, name),
                };
                (kv.key, entry)
            })
            .collect();
    }

    fn put(&mut self, key: Vec<u8>, value: &[u8], mod_revision: i64, name: &str) {
        let entry = Entry {
            mod_revision,
            hash: value_hash(value),
            instance: decode(&key, value, name),
        };
        self.entries.insert(key, entry);
    }

    fn delete(&mut self, key: &[u8]) {
        self.entries.remove(key);
    }

    /// Whether `listing` holds exactly the keys of this (ready) view, at the same
    /// `mod_revision`s and with the same values.
    fn same_keys(&self, listing: &Listing) -> bool {
        self.entries.len() == listing.kvs.len()
            && self
                .entries
                .iter()
                .zip(&listing.kvs)
                .all(|((key, entry), kv)| {
                    *key == kv.key
                        && entry.mod_revision == kv.mod_revision
                        && entry.hash == value_hash(&kv.value)
                })
    }
}

fn value_hash(value: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    value.hash(&mut hasher);
    hasher.finish()
}

/// Reads the prefix, in pages at one revision.
async fn read(conn: &Connection, prefix: &str) -> Result<Listing> {
    conn.run("get", |c| async move {
        c.get_prefix(prefix.as_bytes(), 0).await
    })
    .await
}

/// Whether etcd's history still holds the view of `position` at its revision, so that a
/// watch from the next revision continues it without a gap: false when that revision was
/// compacted away, or when etcd lost its data (the revision is in the future, or its keys
/// or values differ).
async fn still_holds(
    conn: &Connection,
    prefix: &str,
    name: &str,
    position: &Position,
) -> Result<bool> {
    let revision = position.ready(name).revision;
    let (generation, client) = conn.client();
    match client.get_prefix(prefix.as_bytes(), revision).await {
        Ok(listing) => Ok(position.view().same_keys(&listing)),
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

    /// The view, its list read into its entries.
    fn ready(&self, name: &str) -> MutexGuard<'_, View> {
        let mut view = self.view();
        view.ready(name);
        view
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

    fn backend(&self) -> &'static str {
        crate::SCHEME
    }

    /// The instances decoded straight from the answer's values; the keys and values stay
    /// in the position as read, for a watch to build its view from.
    async fn list(&self, name: &str) -> Result<(Vec<ServiceInstance>, Position)> {
        let listing = read(&self.conn, &self.prefix(name)).await?;
        let list = listing
            .kvs
            .iter()
            .filter_map(|kv| decode(&kv.key, &kv.value, name))
            .collect();
        let view = View {
            revision: listing.revision,
            listed: Some(listing),
            ..View::default()
        };
        Ok((list, Position(Arc::new(Mutex::new(view)))))
    }

    async fn resume(&self, name: &str, from: &Position) -> Result<bool> {
        still_holds(&self.conn, &self.prefix(name), name, from).await
    }

    async fn follow(&self, name: &str, from: Position, updates: &Updates<Position>) -> Stop {
        let prefix = self.prefix(name);
        let (generation, client) = self.conn.client();
        let revision = from.ready(name).revision;
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
            for event in resp.events {
                let Some(kv) = event.kv else { continue };
                let mod_revision = kv.mod_revision;
                match EventType::try_from(event.r#type) {
                    Ok(EventType::Put) => view.put(kv.key, &kv.value, mod_revision, name),
                    Ok(EventType::Delete) => view.delete(&kv.key),
                    Err(_) => {
                        tracing::warn!(
                            kind = event.r#type,
                            "etcd watch event of an unknown type; skipped"
                        );
                        continue;
                    }
                }
                fragments_revision = fragments_revision.max(mod_revision);
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
mod view {
    use super::*;
    use crate::rpc::mvccpb::KeyValue;

    fn kv(key: &str, value: &[u8], mod_revision: i64) -> KeyValue {
        KeyValue {
            key: key.as_bytes().to_vec(),
            value: value.to_vec(),
            mod_revision,
            ..KeyValue::default()
        }
    }

    fn instance(id: &str) -> ServiceInstance {
        ServiceInstance::builder(id, "svc")
            .endpoint("grpc://10.0.0.1:9000?isSecure=false")
            .build()
            .expect("instance")
    }

    fn listing() -> Listing {
        Listing {
            revision: 7,
            kvs: vec![
                kv("/ms/svc/a", instance("a").to_json().as_bytes(), 5),
                kv("/ms/svc/b", b"not an instance", 6),
                kv("/ms/svc/c", instance("c").to_json().as_bytes(), 7),
            ],
        }
    }

    /// A list is kept as read until a watch needs its entries; then they hold every key,
    /// the skipped one included, and the instances in key order.
    #[test]
    fn a_listed_view_is_built_once_when_needed() {
        let position = Position(Arc::new(Mutex::new(View {
            revision: 7,
            listed: Some(listing()),
            ..View::default()
        })));
        assert!(position.view().entries.is_empty(), "not built by the list");
        let mut view = position.ready("svc");
        assert!(view.listed.is_none());
        assert_eq!(view.entries.len(), 3);
        assert_eq!(view.list(), vec![instance("a"), instance("c")]);
        assert!(
            view.same_keys(&listing()),
            "the view is the list it was built from"
        );

        // A key changed, added or gone since: not the same.
        let mut changed = listing();
        changed.kvs[1].value = b"still not an instance".to_vec();
        assert!(!view.same_keys(&changed));
        let mut fewer = listing();
        fewer.kvs.pop();
        assert!(!view.same_keys(&fewer));

        view.put(
            b"/ms/svc/b".to_vec(),
            instance("b").to_json().as_bytes(),
            8,
            "svc",
        );
        view.delete(b"/ms/svc/a");
        assert_eq!(view.list(), vec![instance("b"), instance("c")]);
        assert!(!view.same_keys(&listing()));
    }
}
