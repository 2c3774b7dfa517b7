//! The members of a composite: each a registry handle of its own, with the last failure seen
//! on it; and [`gather`], asking every member at once without waiting long for a silent one.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use futures::stream::{FuturesUnordered, StreamExt};
use registry_core::{Error, Registry};
use tokio::time::Instant;

/// One member: its handle, its URL as shown, and the last failure seen on it.
pub(crate) struct Member {
    /// Its place in the URL, from 0.
    pub(crate) index: usize,
    /// Its URL, secrets redacted.
    pub(crate) url: String,
    pub(crate) registry: Arc<dyn Registry>,
    last_error: Mutex<Option<(Error, SystemTime)>>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Member")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Member {
    pub(crate) fn new(index: usize, url: String, registry: Arc<dyn Registry>) -> Self {
        Member {
            index,
            url,
            registry,
            last_error: Mutex::new(None),
        }
    }

    /// Remembers a failure of a call on this member.
    pub(crate) fn note(&self, error: &Error) {
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
