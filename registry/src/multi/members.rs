//! The members of a composite: each a registry handle of its own once connected, with the
//! last failure seen on it; [`connect`], which connects one member in the background until it
//! is; and [`gather`], asking every member at once without waiting long for a silent one.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use registry_core::{Backoff, Capabilities, Error, RegistrationStatus, Registry};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

/// The first pause before a member that could not be connected is tried again, doubling up
/// to [`CONNECT_RETRY_CAP`].
const CONNECT_FIRST_RETRY: Duration = Duration::from_millis(100);

/// The longest pause between two attempts to connect a member: one that comes up is
/// connected within about this much (the links' own retry cap).
pub(crate) const CONNECT_RETRY_CAP: Duration = Duration::from_secs(2);

/// A member's handle, once connected.
#[derive(Clone, Default)]
struct Slot {
    registry: Option<Arc<dyn Registry>>,
    /// The composite is closed: a handle connected from now on is dropped at once.
    closed: bool,
}

/// One member: its handle (once connected), its URL as shown, and the last failure seen on
/// it.
pub(crate) struct Member {
    /// Its place in the URL, from 0.
    pub(crate) index: usize,
    /// Its URL, secrets redacted.
    pub(crate) url: String,
    /// Its backend's scheme.
    pub(crate) scheme: &'static str,
    slot: watch::Sender<Slot>,
    last_error: Mutex<Option<(Error, SystemTime)>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("url", &self.url)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Member {
    /// A member connected already.
    pub(crate) fn connected(index: usize, url: String, registry: Arc<dyn Registry>) -> Self {
        let scheme = registry.scheme();
        let member = Member::pending(index, url, scheme);
        member
            .slot
            .send_modify(|slot| slot.registry = Some(registry));
        member
    }

    /// A member not connected yet.
    pub(crate) fn pending(index: usize, url: String, scheme: &'static str) -> Self {
        Member {
            index,
            url,
            scheme,
            slot: watch::Sender::new(Slot::default()),
            last_error: Mutex::new(None),
        }
    }

    /// Its handle; while it is not connected, a temporary error saying so (with the last
    /// failure to connect as its source), which callers treat as any member's that is down.
    pub(crate) fn registry(&self) -> Result<Arc<dyn Registry>, Error> {
        let slot = self.slot.borrow();
        match &slot.registry {
            Some(registry) => Ok(registry.clone()),
            None if slot.closed => Err(Error::Closed),
            None => {
                let last = self.last_error().map(|(error, _)| error);
                Err(Error::Unavailable {
                    message: match &last {
                        Some(error) => format!("not connected yet (last attempt: {error})"),
                        None => "not connected yet".to_owned(),
                    },
                    source: last.map(|error| Arc::new(error) as _),
                })
            }
        }
    }

    /// Its handle, if it is connected.
    pub(crate) fn handle(&self) -> Option<Arc<dyn Registry>> {
        self.slot.borrow().registry.clone()
    }

    /// The member's own state of registration `id` of `name`, if it is connected and holds
    /// it.
    pub(crate) fn registration(&self, name: &str, id: &str) -> Option<RegistrationStatus> {
        self.handle()?.registration(name, id)
    }

    /// Whether it is connected.
    pub(crate) fn is_connected(&self) -> bool {
        self.slot.borrow().registry.is_some()
    }

    /// Its handle, once connected (never, once the composite is closed without it).
    pub(crate) async fn wait_connected(&self) -> Arc<dyn Registry> {
        let mut slot = self.slot.subscribe();
        let connected = slot
            .wait_for(|slot| slot.registry.is_some())
            .await
            .ok()
            .and_then(|slot| slot.registry.clone());
        match connected {
            Some(registry) => registry,
            // The sender lives as long as the member; not reached.
            None => std::future::pending().await,
        }
    }

    /// Takes the handle just connected, unless the composite was closed meanwhile (then the
    /// handle is dropped, and false returned).
    fn set_connected(&self, registry: Arc<dyn Registry>) -> bool {
        let mut taken = false;
        self.slot.send_if_modified(|slot| {
            if slot.closed || slot.registry.is_some() {
                return false;
            }
            slot.registry = Some(registry);
            taken = true;
            true
        });
        taken
    }

    /// Marks the composite closed, so that no handle is taken from now on; its handle, if
    /// it has one.
    pub(crate) fn close(&self) -> Option<Arc<dyn Registry>> {
        let mut registry = None;
        self.slot.send_modify(|slot| {
            slot.closed = true;
            registry = slot.registry.clone();
        });
        registry
    }

    /// Remembers a failure of a call on this member. A call on a member not connected yet
    /// fails without reaching it: its last failure stays the last attempt to connect.
    pub(crate) fn note(&self, error: &Error) {
        if !self.is_connected() {
            return;
        }
        self.remember(error);
    }

    fn remember(&self, error: &Error) {
        tracing::debug!(member = %self.url, %error, "member call failed");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) =
            Some((error.clone(), SystemTime::now()));
    }

    /// The last failure seen on this member, and when.
    pub(crate) fn last_error(&self) -> Option<(Error, SystemTime)> {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `error`, naming this member where the error carries a message of its own; the other
    /// kinds (invalid input, not owned, timeouts, closed, ...) are the member's as they are.
    pub(crate) fn named(&self, error: Error) -> Error {
        named(&self.url, error)
    }
}

/// How one attempt to connect a member ended, as [`connect`] reports it.
pub(crate) type Attempt = (usize, Result<(), Error>);

/// Connects `member` from `url` until it is connected, trying again with back-off after
/// each failure, and reports every attempt on `attempts` (while anyone listens). Ends once
/// the member is connected (or the composite closed). `expected` is what the composite
/// declares of the member (its scheme's capabilities); a handle that offers otherwise is
/// logged.
pub(crate) async fn connect(
    member: Arc<Member>,
    url: String,
    expected: Capabilities,
    attempts: mpsc::UnboundedSender<Attempt>,
) {
    let mut backoff = Backoff::new(CONNECT_FIRST_RETRY, CONNECT_RETRY_CAP);
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        match crate::connect_backend(&url).await {
            Ok(registry) => {
                if registry.capabilities() != expected {
                    tracing::warn!(member = %member.url, "the member offers other capabilities than its scheme declares; the composite keeps its scheme's");
                }
                if member.set_connected(registry) {
                    tracing::info!(member = %member.url, attempt, "member connected");
                    let _ = attempts.send((member.index, Ok(())));
                }
                return;
            }
            Err(error) => {
                let delay = backoff.delay();
                if attempt == 1 {
                    tracing::warn!(member = %member.url, %error, retry_in = ?delay, "member could not be connected; trying again in the background");
                } else {
                    tracing::debug!(member = %member.url, attempt, %error, retry_in = ?delay, "member could not be connected; trying again");
                }
                member.remember(&error);
                let _ = attempts.send((member.index, Err(error)));
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// `error` of the member at `url`, naming it where the error carries a message of its own.
pub(crate) fn named(url: &str, error: Error) -> Error {
    let prefix = |message: String| format!("member {url}: {message}");
    match error {
        Error::Unavailable { message, source } => Error::Unavailable {
            message: prefix(message),
            source,
        },
        Error::InvalidConfig { backend, reason } => Error::InvalidConfig {
            backend,
            reason: prefix(reason),
        },
        Error::InvalidUrl { reason, .. } => Error::InvalidUrl {
            url: url.to_owned(),
            reason: prefix(reason),
        },
        Error::PermissionDenied { message } => Error::PermissionDenied {
            message: prefix(message),
        },
        Error::Conflict { message } => Error::Conflict {
            message: prefix(message),
        },
        Error::Backend {
            backend,
            message,
            temporary,
            source,
        } => Error::Backend {
            backend,
            message: prefix(message),
            temporary,
            source,
        },
        other => other,
    }
}

/// The answers of every member to `call`, by member: `None` for a member that had not
/// answered when the wait ended. The wait ends when every member has answered, or
/// `grace` after the first success, whichever comes first: a member that is down or hangs
/// delays the call by at most `grace` once another has answered (a member that fails
/// fast, refusing connections, delays nothing). Failures are noted on their member.
pub(crate) async fn gather<T, F, Fut>(
    members: &[Arc<Member>],
    grace: Duration,
    call: F,
) -> Vec<Option<Result<T, Error>>>
where
    F: Fn(Arc<Member>) -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let mut pending: FuturesUnordered<_> = members
        .iter()
        .map(|member| {
            let index = member.index;
            let answer = call(member.clone());
            async move { (index, answer.await) }
        })
        .collect();
    let mut answers: Vec<Option<Result<T, Error>>> = members.iter().map(|_| None).collect();
    let mut until: Option<Instant> = None;
    loop {
        let next = match until {
            None => pending.next().await,
            Some(at) => match tokio::time::timeout_at(at, pending.next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
        };
        let Some((index, answer)) = next else { break };
        match &answer {
            Ok(_) if until.is_none() => until = Some(Instant::now() + grace),
            Ok(_) => {}
            Err(e) => members[index].note(e),
        }
        answers[index] = Some(answer);
    }
    for (member, answer) in members.iter().zip(&answers) {
        if answer.is_none() {
            tracing::debug!(member = %member.url, ?grace, "member did not answer in time; not waited for");
        }
    }
    answers
}

/// The first failure among `answers`, or a timeout when no member answered at all.
pub(crate) fn first_error<T>(
    members: &[Arc<Member>],
    answers: &[Option<Result<T, Error>>],
    operation: &'static str,
    waited: Duration,
) -> Error {
    answers
        .iter()
        .zip(members)
        .find_map(|(answer, member)| match answer {
            Some(Err(e)) => Some(member.named(e.clone())),
            _ => None,
        })
        .unwrap_or(Error::Timeout {
            operation,
            after: waited,
        })
}
