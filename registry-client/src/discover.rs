//! A service's endpoints as a [`tower::discover`] stream of changes, for any tower service.
//!
//! [`Discover`] follows a registry watch and yields [`Change::Insert`] for an endpoint that
//! appears or changes and [`Change::Remove`] for one that leaves, keyed by [`NodeKey`]
//! (instance id and endpoint). It is a `Stream<Item = Result<Change<NodeKey, Node>,
//! Infallible>>`, so it is a [`tower::discover::Discover`] as it is: map each [`Node`] to a
//! service (an HTTP client for its URL, a gRPC connection, ...) and hand it to a balancer.
//! [`grpc_channel`](crate::grpc_channel) is such a consumer (tonic's balanced channel); a
//! resolver for another transport is another thin adapter over the same stream.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::Stream;
use registry_core::{Discovery, Instances, ServiceInstance, WatchEvent, Watcher};

pub use tower::discover::Change;

use crate::resolver::instance_nodes;
use crate::{parse_target, ClientError, Filter, Node, Options};

/// Names one endpoint of one instance in a [`Discover`] stream: the instance id and the
/// endpoint as the instance lists it. Cheap to clone; ordered by instance id, then endpoint.
///
/// ```
/// use registry_client::NodeKey;
/// let key = NodeKey::new("a1", "grpc://10.0.0.1:9000");
/// assert_eq!(key.instance_id(), "a1");
/// assert_eq!(key.endpoint(), "grpc://10.0.0.1:9000");
/// assert_eq!(key.to_string(), "a1@grpc://10.0.0.1:9000");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeKey {
    instance_id: Arc<str>,
    endpoint: Arc<str>,
}

impl NodeKey {
    /// The key of `endpoint` (its text as the instance lists it) of instance `instance_id`.
    pub fn new(instance_id: &str, endpoint: &str) -> Self {
        NodeKey {
            instance_id: instance_id.into(),
            endpoint: endpoint.into(),
        }
    }

    /// The instance id.
    pub fn instance_id(&self) -> &str {
        &self.instance_id
    }

    /// The endpoint, as the instance lists it (such as `grpc://10.0.0.1:9000?isSecure=false`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }
}

impl fmt::Display for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.instance_id, self.endpoint)
    }
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeKey({self})")
    }
}

/// The endpoints of one scheme of a service as a stream of [`Change`]s, following the
/// registry; a [`tower::discover::Discover`] for any tower balancer.
///
/// - The first changes insert the endpoints of the current list; then each list the watch
///   delivers is compared with the one before, and only the difference is yielded:
///   [`Change::Insert`] for an endpoint that appeared, [`Change::Remove`] for one that left.
///   Within one list, insertions come before removals, so a balancer replacing one instance
///   by another is never left empty between the two.
/// - An endpoint whose [`Node`] changed (its instance's `weight` or other metadata) is
///   inserted again under the same key, with no removal first: tower's balancer (and tonic's)
///   replaces the service of a key inserted again. An endpoint that moved (another address,
///   or `isSecure` changed) has a new key: the new one is inserted, the old one removed.
/// - Only endpoints of the scheme asked for, of instances the [`Options`] filter accepts
///   (asked again only when an instance changes), count. One address listed more than once
///   (twice in one instance, or by two instances, as when a restarted instance's previous
///   registration has not expired yet) is one endpoint, under the key that listed it first
///   (by instance id, then endpoint text); it keeps that key while that instance lists it.
/// - While the registry cannot be reached ([`WatchEvent::Degraded`]) nothing is yielded: the
///   consumer keeps the last endpoints, and [`degraded`](Self::degraded) says why until the
///   watch recovers (both are logged); changes made meanwhile follow the recovery.
/// - The stream never fails (its error type is [`Infallible`]: a balancer fails on a discovery
///   error) and ends only when the registry is closed or dropped; the consumer then keeps its
///   endpoints.
///
/// Lists are shared snapshots ([`Instances`]): comparing one with the one before reads both
/// in place and builds nodes only for the instances that changed.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use futures::StreamExt;
/// use registry_client::{Change, Discover, Options};
/// use registry_core::{MemoryRegistry, Registrar, ServiceInstance};
///
/// let registry = MemoryRegistry::new();
/// let instance = ServiceInstance::builder("a1", "helloworld")
///     .endpoint("grpc://10.0.0.1:9000")
///     .build()?;
/// registry.register(&instance).await?;
/// let mut discover =
///     Discover::new(Arc::new(registry.clone()), "discovery:///helloworld", "grpc", Options::default())
///         .await?;
/// let Some(Ok(Change::Insert(key, node))) = discover.next().await else { panic!() };
/// assert_eq!(key.to_string(), "a1@grpc://10.0.0.1:9000");
/// assert_eq!(node.endpoint.authority(), "10.0.0.1:9000");
///
/// registry.deregister(&instance).await?;
/// let Some(Ok(Change::Remove(gone))) = discover.next().await else { panic!() };
/// assert_eq!(gone, key);
/// # Ok(()) }
/// ```
pub struct Discover {
    /// Kept alive as long as the stream, when it made the watch: a registry dropped ends its
    /// watches.
    _discovery: Option<Arc<dyn Discovery>>,
    watcher: Watcher,
    diff: Diff,
    /// Changes computed and not yielded yet.
    queue: VecDeque<Change<NodeKey, Node>>,
    degraded: Option<registry_core::Error>,
    ended: bool,
}

impl Discover {
    /// Follows `target` (`discovery:///NAME`) in `discovery` for the endpoints with `scheme`
    /// (`grpc`, `http`, ...) of the instances `options` accepts. Returns once the watch is
    /// set up (the first changes are those of the current list); it does not wait for a
    /// non-empty list (`options.first_list_timeout` is not used). The stream keeps
    /// `discovery` alive.
    pub async fn new(
        discovery: Arc<dyn Discovery>,
        target: &str,
        scheme: &str,
        options: Options,
    ) -> Result<Discover, ClientError> {
        let service = parse_target(target)?;
        let watcher = discovery.watch(&service).await?;
        let mut discover = Discover::from_watcher(watcher, scheme, options);
        discover._discovery = Some(discovery);
        Ok(discover)
    }

    /// Follows what `watcher` delivers, for the endpoints with `scheme` of the instances
    /// `options` accepts. Keep the registry the watcher came from alive as long as the
    /// stream: dropping it ends the stream.
    pub fn from_watcher(watcher: Watcher, scheme: &str, options: Options) -> Discover {
        Discover {
            _discovery: None,
            watcher,
            diff: Diff::new(scheme, options.filter),
            queue: VecDeque::new(),
            degraded: None,
            ended: false,
        }
    }

    /// The service followed.
    pub fn service(&self) -> &str {
        self.watcher.service()
    }

    /// The scheme of the endpoints yielded.
    pub fn scheme(&self) -> &str {
        &self.diff.scheme
    }

    /// The endpoints of the last list received, by key: what the changes yielded so far,
    /// and those still to take, add up to. While the registry cannot be reached, the last
    /// known ones.
    pub fn nodes(&self) -> impl Iterator<Item = (&NodeKey, &Node)> + '_ {
        self.diff.live.iter()
    }

    /// Why the registry cannot be followed, while the stream has seen it so (the endpoints
    /// are then the last known ones); `None` while healthy. Updated as the stream is polled.
    pub fn degraded(&self) -> Option<&registry_core::Error> {
        self.degraded.as_ref()
    }
}

impl fmt::Debug for Discover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Discover")
            .field("service", &self.service())
            .field("scheme", &self.diff.scheme)
            .field("nodes", &self.diff.live.len())
            .field("degraded", &self.degraded.is_some())
            .finish_non_exhaustive()
    }
}

impl Stream for Discover {
    type Item = Result<Change<NodeKey, Node>, Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(change) = this.queue.pop_front() {
                return Poll::Ready(Some(Ok(change)));
            }
            if this.ended {
                return Poll::Ready(None);
            }
            match ready!(Pin::new(&mut this.watcher).poll_next(cx)) {
                Some(WatchEvent::Changed(list)) => this.diff.apply(list, &mut this.queue),
                Some(WatchEvent::Degraded(error)) => {
                    tracing::info!(service = %this.watcher.service(), %error, nodes = this.diff.live.len(),
                        "registry unreachable; keeping the last endpoints");
                    this.degraded = Some(error);
                }
                Some(WatchEvent::Recovered) => {
                    tracing::info!(service = %this.watcher.service(), "registry reachable again");
                    this.degraded = None;
                }
                Some(_) => {}
                None => {
                    tracing::debug!(service = %this.watcher.service(), "discovery watch ended");
                    this.ended = true;
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.queue.len(), None)
    }
}

/// The address an endpoint is dialled at (`host:port`; the scheme is the same for all).
type Address = String;

/// The state behind the diff of one list against the one before.
struct Diff {
    scheme: String,
    filter: Option<Filter>,
    /// The list the state below describes.
    last: Instances,
    /// Every node the last list offers, by instance id (an instance's keys are distinct).
    offered: HashMap<String, Vec<(NodeKey, Node)>>,
    /// The keys offering each address.
    listed: HashMap<Address, BTreeSet<NodeKey>>,
    /// The one key of each address given to the consumer.
    owner: HashMap<Address, NodeKey>,
    /// What the consumer has, once it takes every change yielded.
    live: BTreeMap<NodeKey, Node>,
}

impl Diff {
    fn new(scheme: &str, filter: Option<Filter>) -> Self {
        Diff {
            scheme: scheme.to_owned(),
            filter,
            last: Instances::default(),
            offered: HashMap::new(),
            listed: HashMap::new(),
            owner: HashMap::new(),
            live: BTreeMap::new(),
        }
    }

    /// Moves to `list`, queueing the changes that take the consumer there.
    fn apply(&mut self, list: Instances, out: &mut VecDeque<Change<NodeKey, Node>>) {
        if list.ptr_eq(&self.last) {
            return;
        }
        let last = std::mem::replace(&mut self.last, list.clone());
        let (before, after) = (by_id(&last), by_id(&list));
        let mut dirty = BTreeSet::new();
        let (mut b, mut a) = (before.into_iter().peekable(), after.into_iter().peekable());
        loop {
            // Both in order by id: an id only before was removed, one only after is new.
            let order = match (b.peek(), a.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some(old), Some(new)) => old.id.cmp(&new.id),
            };
            match order {
                Ordering::Less => {
                    if let Some(old) = b.next() {
                        self.set_instance(&old.id, Vec::new(), &mut dirty);
                    }
                }
                Ordering::Greater => {
                    if let Some(new) = a.next() {
                        self.update(new, &mut dirty);
                    }
                }
                Ordering::Equal => {
                    if let (Some(old), Some(new)) = (b.next(), a.next()) {
                        if old != new {
                            self.update(new, &mut dirty);
                        }
                    }
                }
            }
        }
        let mut removals = Vec::new();
        for address in dirty {
            self.settle(address, out, &mut removals);
        }
        out.extend(removals);
    }

    /// Recomputes the nodes of a new or changed instance.
    fn update(&mut self, instance: &ServiceInstance, dirty: &mut BTreeSet<Address>) {
        let mut nodes: Vec<(NodeKey, Node)> = Vec::new();
        for node in instance_nodes(instance, &self.scheme, self.filter.as_ref()) {
            let key = NodeKey::new(&instance.id, node.endpoint.as_str());
            if nodes.iter().all(|(k, _)| *k != key) {
                nodes.push((key, node));
            }
        }
        self.set_instance(&instance.id, nodes, dirty);
    }

    /// Replaces the nodes instance `id` offers, noting the addresses touched.
    fn set_instance(
        &mut self,
        id: &str,
        nodes: Vec<(NodeKey, Node)>,
        dirty: &mut BTreeSet<Address>,
    ) {
        let before = if nodes.is_empty() {
            self.offered.remove(id)
        } else {
            self.offered.insert(id.to_owned(), nodes.clone())
        }
        .unwrap_or_default();
        for (key, node) in &before {
            if !nodes.iter().any(|(k, n)| k == key && n == node) {
                let address = node.endpoint.authority();
                if let Some(keys) = self.listed.get_mut(&address) {
                    keys.remove(key);
                }
                dirty.insert(address);
            }
        }
        for (key, node) in nodes {
            if !before.iter().any(|(k, n)| *k == key && *n == node) {
                let address = node.endpoint.authority();
                self.listed.entry(address.clone()).or_default().insert(key);
                dirty.insert(address);
            }
        }
    }

    /// The node `key` offers now.
    fn offered(&self, key: &NodeKey) -> Option<&Node> {
        self.offered
            .get(key.instance_id())?
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, node)| node)
    }

    /// Brings the consumer's endpoint of `address` up to date: kept by its owner while that
    /// still offers it, else taken by the first key that does, else removed.
    fn settle(
        &mut self,
        address: Address,
        inserts: &mut VecDeque<Change<NodeKey, Node>>,
        removals: &mut Vec<Change<NodeKey, Node>>,
    ) {
        let candidates = self.listed.get(&address);
        let current = self.owner.get(&address);
        let wanted = match (current, candidates) {
            (Some(owner), Some(keys)) if keys.contains(owner) => Some(owner.clone()),
            (_, Some(keys)) => keys.first().cloned(),
            (_, None) => None,
        };
        let wanted = wanted.and_then(|key| Some((self.offered(&key)?.clone(), key)));
        if candidates.is_some_and(BTreeSet::is_empty) {
            self.listed.remove(&address);
        }
        let previous = match &wanted {
            Some((node, key)) => {
                let same_owner = current == Some(key);
                if self.live.get(key) == Some(node) {
                    return;
                }
                self.live.insert(key.clone(), node.clone());
                inserts.push_back(Change::Insert(key.clone(), node.clone()));
                if same_owner {
                    return;
                }
                self.owner.insert(address, key.clone())
            }
            None => self.owner.remove(&address),
        };
        if let Some(previous) = previous {
            self.live.remove(&previous);
            removals.push(Change::Remove(previous));
        }
    }
}

/// A list's instances ordered by id, one per id: the list itself when sorted, as lists are.
fn by_id(list: &[ServiceInstance]) -> Vec<&ServiceInstance> {
    let mut refs: Vec<&ServiceInstance> = list.iter().collect();
    if !refs.is_sorted_by(|a, b| a.id < b.id) {
        refs.sort_by(|a, b| a.id.cmp(&b.id));
        refs.dedup_by(|a, b| a.id == b.id);
    }
    refs
}

#[cfg(test)]
mod tests;
