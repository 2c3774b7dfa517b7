//! The composite registry (`multi:`): several registries as one, for moving a fleet from one
//! registry to another without downtime. Services register in every member; clients find
//! them in any.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> registry::Result<()> {
//! use registry::multi::MultiRegistry;
//! use registry::{Discovery, Registrar, Registry, RegistrationState, ServiceInstance};
//!
//! // In production: "multi:etcd://10.0.0.1:2379/microservices|consul://127.0.0.1:8500".
//! let both = MultiRegistry::connect("multi:memory://old-registry|memory://new-registry").await?;
//! let me = ServiceInstance::builder("helloworld-1", "helloworld")
//!     .endpoint("grpc://127.0.0.1:9000")
//!     .build()?;
//! both.register(&me).await?;
//!
//! // A plain client of either registry alone finds it.
//! for url in ["memory://old-registry", "memory://new-registry"] {
//!     let alone = registry::connect(url).await?;
//!     assert_eq!(alone.get_service("helloworld").await?, vec![me.clone()]);
//! }
//! // Registered once every member holds it; each member's own state is visible too.
//! let mut status = both.registration("helloworld", "helloworld-1").expect("held");
//! status.wait_for(RegistrationState::is_registered).await;
//! for member in both.members() {
//!     assert!(member.registrations[0].state.is_registered(), "{}", member.url);
//! }
//!
//! both.deregister(&me).await?;
//! assert!(both.get_service("helloworld").await?.is_empty());
//! # Ok(()) }
//! ```
//!
//! `registry::connect("multi:…")` gives the same registry as an `Arc<dyn Registry>`;
//! [`MultiRegistry::connect`] also gives [`MultiRegistry::members`].
//!
//! # The URL
//!
//! `multi:` followed by the member URLs, verbatim, separated by `|`:
//!
//! ```text
//! multi:etcd://10.0.0.1:2379,10.0.0.2:2379/microservices?ttl=10s|consul://127.0.0.1:8500?ttl=10s
//! multi:?read=first&member_timeout=1s|etcd://127.0.0.1:2379|consul://127.0.0.1:8500
//! ```
//!
//! A member URL is written exactly as it would be alone (its `?`, `&`, `,` and `/` need no
//! escaping: `|` appears in no registry URL; a `|` in a password is written `%7C`). The
//! composite's own options come first, as a query before the first member:
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `read` | `merge` | `merge`: the union of every member's instances, by id; `first`: the first member's, the others as fallback ([`ReadMode`]) |
//! | `member_timeout` | `2s` | once one member has answered, how long a call (and `connect`) waits for the others |
//! | `watch_timeout` | `10s` | how long `watch()` waits for a first list |
//!
//! A member cannot be a `multi:` URL, nor repeat another. An invalid member URL fails
//! `connect` with an error naming the member (`member 2 (consul://…): …`).
//!
//! # Connecting
//!
//! `connect` connects to every member at once and returns once every member is connected,
//! or once one is and the others have had `member_timeout` more: a member that is down, or
//! hangs, delays startup by `member_timeout` at most (nothing when it refuses connections).
//! A member not connected by then is connected in the background, tried again with back-off
//! (at least every 2 s) until it is, by a task the composite owns and stops on `close` or
//! drop. Until then:
//!
//! - [`MultiRegistry::members`] shows it not `connected`, its `last_error` the failure of
//!   its last attempt;
//! - calls do not wait for it (it answers at once as a member that is down does);
//! - what is registered through the composite meanwhile waits for it
//!   ([`MemberState::Retrying`]) and is written to it as soon as it is connected (each
//!   registration is `Lost`, naming the member, until it holds it); what is deregistered
//!   meanwhile is simply not written;
//! - every watch of the composite, those made before included, follows it from the moment
//!   it is connected.
//!
//! `connect` fails as a single backend's does when its server is unreachable: when no
//! member can be connected (every member's first attempt failed; the error is that of the
//! first member in URL order, naming it). Whatever the other members do, it fails too when
//! a member's URL is invalid (an unknown scheme or option, a backend whose feature is off)
//! or its first attempt fails for good (a permanent error, say credentials the server
//! refuses): a mistake in the URL is not left to the background. (A member whose first
//! attempt is still under way when `connect` returns is tried again with back-off whatever
//! its error.)
//!
//! # What each call does
//!
//! - **register** writes to every member, concurrently. Each member's handle keeps its
//!   registration alive and writes it again when it is lost, as it would alone (its own
//!   supervisor). The call returns once one member has taken it and every other has answered
//!   or had `member_timeout` to: a member that is down delays it by `member_timeout` at most
//!   (nothing when it refuses connections), and takes the registration once it is back: its
//!   handle writes again what it held, and what it never took is retried by the composite,
//!   with back-off, until it does. It fails only when no member took it (nothing then stays
//!   anywhere), or when a member refused it for good (a permanent error, such as a metadata
//!   key Consul does not allow): then nothing stays either, and an update leaves the
//!   previous value in every member.
//! - **deregister** removes from every member, with the same wait; a member that missed it
//!   (down) is retried until it takes it. It fails only when no member could remove it; the
//!   registration then stays, kept by every member. An instance of another owner is refused
//!   ([`Error::NotOwned`]) when any member lists it.
//! - **[`registration`](Registry::registration)**: `Registered` only when **every** member
//!   holds the registration and keeps it alive; `Lost` (naming the member and its error)
//!   while one does not, and `Registered` again within a couple of seconds of the last one
//!   taking it back. [`MultiRegistry::members`] shows each member's own state
//!   ([`MemberState`]) and last error.
//! - **get_service** asks every member at once; **watch** follows a watcher of every
//!   member. With `read=merge` the list is the union by instance id; an id that several
//!   members list is taken from the first of them in URL order (so an instance registered
//!   through the composite shows once, and a copy never hides the original of an earlier
//!   member). With `read=first` it is the list of the first member that answers (that a
//!   watch follows), the others standing in only while it does not. A member that cannot
//!   be read delays nothing beyond `member_timeout` and counts with its last known list; a
//!   watch is told the registry is unreachable ([`WatchEvent::Degraded`]) only while no
//!   member at all can be followed.
//! - **list_services** is the union of the members'.
//! - **close** deregisters everything, then closes every member.
//!
//! [`Registry::capabilities`] is what every member offers: the intersection of theirs (the
//! strictest metadata limits, the longest expiry slack and shortest TTL floor), except
//! `reports_every_outage`, which is false: an outage of one member is no outage of the
//! composite. A member's capabilities are its scheme's, known without connecting (each
//! backend crate's `capabilities()`, which its handles return; `registry_etcd::capabilities`
//! say): the composite declares the same whether or not a member could be reached when it
//! connected, and they never change after. (A composite of handles connected in code,
//! [`MultiRegistry::from_registries`], takes the handles' own.)
//!
//! # Why a module of the facade
//!
//! A composite builds its members from URLs of any scheme, which only the facade's
//! [`connect`](crate::connect) knows, and the facade's `connect` builds a composite from a
//! `multi:` URL: a crate of its own would need the facade and the facade would need it.
//! Everything else it needs is the core's: its registrations are kept by the core's
//! supervisor and its watches run on the core's engine, like any backend's.

mod config;
mod members;
mod read;
mod write;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use registry_core::registration::Registrations;
use registry_core::validate::validate_name;
use registry_core::{
    Capabilities, Checked, Discovery, Error, Registrar, RegistrationStatus, Registry, Result,
    ServiceInstance, WatchConfig, Watcher, Watches,
};

pub use config::{MultiConfig, ReadMode, DEFAULT_MEMBER_TIMEOUT, SCHEME, SEPARATOR};
pub use write::MemberState;

use members::Member;
use read::Merge;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tokio::time::Instant;
use write::{Fanout, Links};

#[cfg(doc)]
use registry_core::WatchEvent;

/// Whether `url` is a composite's (`multi:…`).
pub fn is_multi(url: &str) -> bool {
    config::strip_scheme(url).is_some()
}

/// Connects to the composite a `multi:` URL names (see the [module docs](self)), wrapped
/// like every backend in [`Checked`].
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let registry = MultiRegistry::connect(url).await?;
    Ok(Arc::new(Checked::new(registry)))
}

/// Several registries as one. See the [module docs](self).
pub struct MultiRegistry {
    members: Arc<[Arc<Member>]>,
    config: MultiConfig,
    caps: Capabilities,
    registrations: Registrations<Fanout>,
    hub: Watches<Merge>,
    links: Arc<Links>,
    connectors: Connectors,
}

/// The tasks connecting the members that were not connected when the composite was:
/// stopped with it (closed or dropped).
#[derive(Default)]
struct Connectors(Mutex<Vec<AbortHandle>>);

impl Connectors {
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        let handle = tokio::spawn(task).abort_handle();
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(handle);
    }

    fn abort(&self) {
        for task in self.0.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            task.abort();
        }
    }
}

impl Drop for Connectors {
    fn drop(&mut self) {
        self.abort();
    }
}

impl fmt::Debug for MultiRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MultiRegistry")
            .field("url", &self.config.redacted())
            .finish_non_exhaustive()
    }
}

impl Drop for MultiRegistry {
    fn drop(&mut self) {
        // The members' handles go with it: their keep-alives stop, as any backend's do.
        self.connectors.abort();
        self.links.abort();
        self.hub.shutdown();
    }
}

/// One member as [`MultiRegistry::members`] shows it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemberStatus {
    /// The member's URL, passwords and secret options redacted.
    pub url: String,
    /// Its backend's scheme.
    pub scheme: &'static str,
    /// Whether its handle is connected. A member that could not be reached when the
    /// composite connected is connected in the background, with back-off; until then its
    /// `last_error` is the last attempt's failure, and it holds none of the registrations.
    pub connected: bool,
    /// Where each registration of the composite stands on this member, sorted by service
    /// and id: those the composite holds, and those whose removal the member has not taken
    /// yet.
    pub registrations: Vec<MemberRegistration>,
    /// The last failure of a call on this member (register, deregister, read, watch), and
    /// when it happened; it stays after the member recovers.
    pub last_error: Option<(Error, SystemTime)>,
}

/// Where one registration of the composite stands on one member.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MemberRegistration {
    /// The service.
    pub name: String,
    /// The instance id.
    pub id: String,
    /// Its state on the member.
    pub state: MemberState,
}

impl MultiRegistry {
    /// Connects to the members of a `multi:` URL (see the [module docs](self) for when it
    /// fails and how long it takes).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::with_config(MultiConfig::from_url(url)?).await
    }

    /// Connects to the members of `config`, concurrently. Returns once every member is
    /// connected, or once one is and the others have had `member_timeout` more (those are
    /// connected in the background, with back-off); or once every member has been tried
    /// once. Fails when no member could be connected (every one's first attempt failed: the
    /// first failure in URL order), or when a member's URL is invalid or its first attempt
    /// failed for good (a permanent error, such as an unknown option), with its error naming
    /// the member.
    pub async fn with_config(config: MultiConfig) -> Result<Self> {
        config
            .check()
            .map_err(|reason| Error::invalid_url(config.redacted(), reason))?;
        let mut members = Vec::with_capacity(config.members.len());
        let mut caps = Vec::with_capacity(config.members.len());
        for (n, url) in config.members.iter().enumerate() {
            let shown = config::shown(url);
            let (scheme, offers) =
                crate::scheme_of(url).map_err(|error| connect_error(n + 1, &shown, error))?;
            members.push(Arc::new(Member::pending(n, shown, scheme)));
            caps.push(offers);
        }
        let members: Arc<[Arc<Member>]> = members.into();
        let connectors = Connectors::default();
        let (attempts_tx, mut attempts) = mpsc::unbounded_channel();
        for ((member, url), offers) in members.iter().zip(&config.members).zip(&caps) {
            connectors.spawn(members::connect(
                member.clone(),
                url.clone(),
                *offers,
                attempts_tx.clone(),
            ));
        }
        drop(attempts_tx);

        // Each member's first attempt, and whether it is connected.
        let mut first: Vec<Option<Error>> = vec![None; members.len()];
        let mut tried = vec![false; members.len()];
        let mut connected = vec![false; members.len()];
        let mut until: Option<Instant> = None;
        while !connected.iter().all(|c| *c) && !tried.iter().all(|t| *t) {
            let next = match until {
                None => attempts.recv().await,
                Some(at) => match tokio::time::timeout_at(at, attempts.recv()).await {
                    Ok(next) => next,
                    Err(_) => break,
                },
            };
            let Some((index, outcome)) = next else { break };
            let number = index + 1;
            match outcome {
                Ok(()) => {
                    connected[index] = true;
                    until.get_or_insert_with(|| Instant::now() + config.member_timeout);
                }
                Err(error) if !tried[index] && !error.is_temporary() => {
                    return Err(connect_error(number, &members[index].url, error));
                }
                Err(error) => {
                    first[index].get_or_insert(error);
                }
            }
            tried[index] = true;
        }
        if !connected.iter().any(|c| *c) {
            let error = first
                .iter()
                .enumerate()
                .find_map(|(n, error)| error.clone().map(|e| (n, e)))
                .map(|(n, error)| connect_error(n + 1, &members[n].url, error))
                .unwrap_or(Error::Timeout {
                    operation: "connect",
                    after: config.member_timeout,
                });
            return Err(error);
        }
        for member in members.iter().filter(|m| !m.is_connected()) {
            tracing::warn!(member = %member.url, "the composite starts without this member; it is connected in the background");
        }
        let caps = intersection(caps.into_iter());
        Ok(Self::from_members(members, caps, connectors, config))
    }

    /// A composite of handles connected already, in order, each with the URL (or any
    /// label) that [`members`](Self::members) and errors show for it: for registries
    /// connected in code, or backends of your own. `config`'s own `members` are not used.
    pub fn from_registries(
        members: Vec<(String, Arc<dyn Registry>)>,
        config: MultiConfig,
    ) -> Result<Self> {
        if members.is_empty() {
            return Err(Error::InvalidConfig {
                backend: SCHEME,
                reason: "a composite needs at least one member".into(),
            });
        }
        if config.member_timeout.is_zero() {
            return Err(Error::InvalidConfig {
                backend: SCHEME,
                reason: "member_timeout must be positive".into(),
            });
        }
        let labels: Vec<String> = members.iter().map(|(label, _)| label.clone()).collect();
        let caps = intersection(members.iter().map(|(_, registry)| registry.capabilities()));
        let members: Arc<[Arc<Member>]> = members
            .into_iter()
            .enumerate()
            .map(|(index, (url, registry))| Arc::new(Member::connected(index, url, registry)))
            .collect();
        let config = MultiConfig {
            members: labels,
            ..config
        };
        Ok(Self::from_members(
            members,
            caps,
            Connectors::default(),
            config,
        ))
    }

    fn from_members(
        members: Arc<[Arc<Member>]>,
        caps: Capabilities,
        connectors: Connectors,
        config: MultiConfig,
    ) -> Self {
        let links = Arc::new(Links::default());
        let registrations = Registrations::new(Fanout {
            members: members.clone(),
            links: links.clone(),
            member_timeout: config.member_timeout,
        });
        let hub = Watches::with_config(
            Merge {
                members: members.clone(),
                mode: config.read,
                member_timeout: config.member_timeout,
            },
            WatchConfig::clone(&config.watch),
        );
        MultiRegistry {
            members,
            config,
            caps,
            registrations,
            hub,
            links,
            connectors,
        }
    }

    /// The composite's settings (member URLs as given).
    pub fn config(&self) -> &MultiConfig {
        &self.config
    }

    /// Every member, in URL order: its URL (redacted), whether it is connected, where each
    /// registration stands on it, and the last failure seen on it.
    pub fn members(&self) -> Vec<MemberStatus> {
        self.members
            .iter()
            .map(|member| MemberStatus {
                url: member.url.clone(),
                scheme: member.scheme,
                connected: member.is_connected(),
                registrations: self
                    .links
                    .states(member.index)
                    .into_iter()
                    .map(|(name, id, state)| MemberRegistration { name, id, state })
                    .collect(),
                last_error: member.last_error(),
            })
            .collect()
    }
}

/// The error of connecting to member `number` (shown as `shown`), naming it.
fn connect_error(number: usize, shown: &str, error: Error) -> Error {
    match error {
        Error::InvalidUrl { reason, .. } => Error::invalid_url(
            shown,
            format!("member {number} of the multi: URL: {reason}"),
        ),
        other => members::named(&format!("{number} ({shown})"), other),
    }
}

/// What every one of `caps` offers.
fn intersection(caps: impl Iterator<Item = Capabilities>) -> Capabilities {
    let mut all: Option<Capabilities> = None;
    for c in caps {
        all = Some(match all {
            None => c,
            Some(a) => {
                let mut both = a;
                both.register &= c.register;
                both.watch &= c.watch;
                both.list_services &= c.list_services;
                both.ttl_expiry &= c.ttl_expiry;
                both.cross_process &= c.cross_process;
                both.expiry_slack = a.expiry_slack.max(c.expiry_slack);
                both.min_ttl = a.min_ttl.max(c.min_ttl);
                both.metadata.entries = a.metadata.entries.min(c.metadata.entries);
                both.metadata.value_bytes = a.metadata.value_bytes.min(c.metadata.value_bytes);
                both.metadata.token_keys |= c.metadata.token_keys;
                both.metadata.total_chars = a.metadata.total_chars.min(c.metadata.total_chars);
                both
            }
        });
    }
    let mut caps = all.unwrap_or_default();
    // An outage of one member is no outage of the composite.
    caps.reports_every_outage = false;
    caps
}

#[async_trait]
impl Registrar for MultiRegistry {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        self.registrations.deregister(instance).await
    }
}

#[async_trait]
impl Discovery for MultiRegistry {
    async fn get_service(&self, name: &str) -> Result<Vec<ServiceInstance>> {
        validate_name(name)?;
        read::get(
            &self.members,
            self.config.read,
            self.config.member_timeout,
            name,
        )
        .await
    }

    async fn watch(&self, name: &str) -> Result<Watcher> {
        validate_name(name)?;
        self.hub.watch(name).await
    }
}

#[async_trait]
impl Registry for MultiRegistry {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        self.registrations.status(name, id)
    }

    /// Deregisters everything from every member, ends the watches, stops connecting the
    /// members not connected yet, then closes every connected member (which removes whatever
    /// a member's handle still holds). Returns the first failure.
    async fn close(&self) -> Result<()> {
        let removed = self.registrations.close().await;
        self.hub.close().await;
        self.links.abort();
        self.connectors.abort();
        let closed = futures::future::join_all(self.members.iter().map(|m| async move {
            let Some(registry) = m.close() else {
                return Ok(());
            };
            registry.close().await.map_err(|e| {
                m.note(&e);
                m.named(e)
            })
        }))
        .await;
        removed.and(closed.into_iter().collect::<Result<Vec<()>>>().map(drop))
    }

    async fn list_services(&self) -> Result<Vec<String>> {
        read::services(&self.members, self.config.member_timeout).await
    }
}

#[cfg(test)]
mod tests;
