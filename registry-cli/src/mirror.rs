//! `registryctl mirror URL_FROM URL_TO [SERVICE...]`: keeps a copy of every instance of the
//! source registry in the target, for the time of a migration, and removes them all on stop.
//!
//! The rules:
//! - A copy is the source's instance, same id and values, plus the metadata entry
//!   [`MIRROR_KEY`]` = <source URL, redacted>`: it is never taken for a service's own
//!   registration. A marked instance is never copied (no copy of a copy, so a mirror the other
//!   way never copies one back), and `registryctl diff` compares a copy equal to its original.
//! - A copy is made once the instance has been listed in the source for `--grace` (3 s), and
//!   only where the target lists no instance of that id of its own (unmarked): a service that
//!   registers in both (through a `multi:` URL) is seen there first and never copied, and a
//!   copy whose service then registers in the target itself is removed, its own
//!   registration left alone.
//!   Where the service's registration replaced the copy in the same place (an etcd key, a
//!   Consul agent's service id), removing the copy leaves the service's alone on etcd (only
//!   the copy's lease is revoked); on one Consul agent shared by both it takes the service's
//!   entry away until the service's next heartbeat writes it back (seconds). ZooKeeper refuses
//!   the service's own write while the copy holds the node: services whose instance ids
//!   survive a restart move to a ZooKeeper target in one step, not through a mirror.
//! - A copy follows its original: updated when it changes, removed when it leaves the source.
//!   The copies are this process's registrations (kept alive by it, like any): on Ctrl-C or
//!   SIGTERM they are deregistered, and after a crash they expire with their TTL.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry::{Backoff, Registry, ServiceInstance, Watcher};
use tokio::task::JoinSet;
use tokio::time::Instant;

/// The metadata key that marks a mirror's copy; its value names the source (URL redacted).
pub const MIRROR_KEY: &str = "registryctl-mirror";

/// How long before a copy that could not be written or removed is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The longest mark value kept (Consul allows 512 bytes).
const MAX_MARK: usize = 200;

/// How the mirror runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// How long an instance is listed in the source before it is copied.
    pub grace: Duration,
    /// How often the source's services are listed again (when none is named).
    pub rescan: Duration,
}

struct Shared {
    from: Arc<dyn Registry>,
    to: Arc<dyn Registry>,
    from_url: String,
    to_url: String,
    mark: String,
    grace: Duration,
    /// Every copy held now: (service, id).
    held: Mutex<BTreeSet<(String, String)>>,
}

impl Shared {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<(String, String)>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Mirrors `services` of `from` into `to` (every service of `from`, listed again every
/// `rescan`, when `services` is empty) until `stop` resolves; then deregisters every copy
/// and closes `to`. Returns how many copies it removed at the end.
pub async fn mirror(
    from: Arc<dyn Registry>,
    to: Arc<dyn Registry>,
    urls: (String, String),
    services: Vec<String>,
    options: Options,
    stop: impl Future<Output = ()>,
) -> registry::Result<usize> {
    let (from_url, to_url) = urls;
    let mut mark = from_url.clone();
    if mark.len() > MAX_MARK {
        let mut cut = MAX_MARK;
        while !mark.is_char_boundary(cut) {
            cut -= 1;
        }
        mark.truncate(cut);
    }
    let shared = Arc::new(Shared {
        from,
        to,
        from_url,
        to_url,
        mark,
        grace: options.grace,
        held: Mutex::default(),
    });
    eprintln!(
        "mirroring {} into {} (copies marked {MIRROR_KEY}); Ctrl-C or SIGTERM removes them",
        shared.from_url, shared.to_url
    );
    let named = !services.is_empty();
    let mut started: HashSet<String> = HashSet::new();
    let mut tasks = JoinSet::new();
    for service in services {
        if started.insert(service.clone()) {
            tasks.spawn(follow(shared.clone(), service));
        }
    }
    let mut rescan = tokio::time::interval(options.rescan);
    let mut stop = std::pin::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = rescan.tick(), if !named => match shared.from.list_services().await {
                Ok(names) => {
                    for service in names {
                        if started.insert(service.clone()) {
                            tasks.spawn(follow(shared.clone(), service));
                        }
                    }
                }
                Err(e) => eprintln!("mirror: listing the services of {}: {e}", shared.from_url),
            },
            Some(ended) = tasks.join_next() => {
                if let Err(e) = ended {
                    eprintln!("mirror: a service's task failed: {e}");
                }
            }
        }
    }
    tasks.shutdown().await;
    let copies = shared.held().len();
    eprintln!("stopping: removing {copies} copies from {}", shared.to_url);
    shared.to.close().await?;
    println!("removed {copies} copies");
    Ok(copies)
}

/// A watcher of `service` in `registry`, retried with back-off until it can be made.
async fn watch(registry: &dyn Registry, url: &str, service: &str) -> Watcher {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
    loop {
        match registry.watch(service).await {
            Ok(watcher) => return watcher,
            Err(e) => {
                let delay = backoff.delay();
                eprintln!("mirror: watch {service} in {url}: {e}; again in {delay:?}");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// What the mirror knows of one service.
#[derive(Default)]
struct Service {
    /// The source's list.
    source: Vec<ServiceInstance>,
    /// The target's list.
    target: Vec<ServiceInstance>,
    /// When each of the source's instances was first listed.
    first_seen: HashMap<String, Instant>,
    /// The copies written, by id.
    copies: HashMap<String, ServiceInstance>,
    /// Copies the target refused for good, by id (not tried again until they change).
    refused: HashMap<String, ServiceInstance>,
    /// When to look again (a copy waiting out its grace, or a failure to retry).
    wake: Option<Instant>,
}

/// Follows one service in both registries and keeps its copies, until the receiver closes.
async fn follow(shared: Arc<Shared>, service: String) {
    let mut source = watch(shared.from.as_ref(), &shared.from_url, &service).await;
    let mut target = watch(shared.to.as_ref(), &shared.to_url, &service).await;
    println!("following {service}");
    let mut state = Service::default();
    loop {
        tokio::select! {
            list = source.next() => match list {
                Ok(list) => state.source = list.to_vec(),
                Err(_) => return,
            },
            list = target.next() => match list {
                Ok(list) => state.target = list.to_vec(),
                Err(_) => return,
            },
            () = until(state.wake) => {}
        }
        state.reconcile(&shared, &service).await;
    }
}

async fn until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn earliest(a: Option<Instant>, b: Instant) -> Option<Instant> {
    Some(a.map_or(b, |a| a.min(b)))
}

impl Service {
    /// Writes the copies the source calls for and removes the others.
    async fn reconcile(&mut self, shared: &Shared, service: &str) {
        let now = Instant::now();
        let mut wake = None;
        let originals: Vec<&ServiceInstance> = self
            .source
            .iter()
            .filter(|i| !i.metadata.contains_key(MIRROR_KEY))
            .collect();
        self.first_seen
            .retain(|id, _| originals.iter().any(|i| &i.id == id));
        self.refused
            .retain(|id, _| originals.iter().any(|i| &i.id == id));
        // The target's own registrations (not copies) of this service.
        let own: HashSet<&str> = self
            .target
            .iter()
            .filter(|i| !i.metadata.contains_key(MIRROR_KEY))
            .map(|i| i.id.as_str())
            .collect();
        let mut wanted: HashMap<String, ServiceInstance> = HashMap::new();
        for original in originals {
            let seen = *self.first_seen.entry(original.id.clone()).or_insert(now);
            if own.contains(original.id.as_str()) {
                continue;
            }
            let ready = seen + shared.grace;
            if ready > now {
                wake = earliest(wake, ready);
                continue;
            }
            let mut copy = original.clone();
            copy.metadata.insert(MIRROR_KEY.into(), shared.mark.clone());
            wanted.insert(original.id.clone(), copy);
        }

        let unwanted: Vec<String> = self
            .copies
            .keys()
            .filter(|id| !wanted.contains_key(*id))
            .cloned()
            .collect();
        for id in unwanted {
            let Some(copy) = self.copies.get(&id).cloned() else {
                continue;
            };
            match shared.to.deregister(&copy).await {
                Ok(()) => {
                    self.copies.remove(&id);
                    shared.held().remove(&(service.to_owned(), id.clone()));
                    let why = if own.contains(id.as_str()) {
                        "the service registered it in the target itself"
                    } else {
                        "gone from the source"
                    };
                    println!("removed {service} {id} ({why})");
                }
                Err(e) => {
                    eprintln!(
                        "mirror: removing the copy of {service} {id}: {e}; again in {RETRY:?}"
                    );
                    wake = earliest(wake, now + RETRY);
                }
            }
        }

        for (id, copy) in wanted {
            if self.copies.get(&id) == Some(&copy) || self.refused.get(&id) == Some(&copy) {
                continue;
            }
            let update = self.copies.contains_key(&id);
            match shared.to.register(&copy).await {
                Ok(()) => {
                    println!(
                        "{} {service} {id}",
                        if update { "updated" } else { "copied" }
                    );
                    shared.held().insert((service.to_owned(), id.clone()));
                    self.refused.remove(&id);
                    self.copies.insert(id, copy);
                }
                Err(e) if e.is_temporary() => {
                    eprintln!("mirror: copying {service} {id}: {e}; again in {RETRY:?}");
                    wake = earliest(wake, now + RETRY);
                }
                Err(e) => {
                    eprintln!(
                        "mirror: {service} {id} cannot be copied into {}: {e}",
                        shared.to_url
                    );
                    self.refused.insert(id, copy);
                }
            }
        }
        self.wake = wake;
    }
}
