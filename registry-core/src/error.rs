//! The one error type of the registry API.

use std::sync::Arc;
use std::time::Duration;

/// A boxed source error, shareable so that [`Error`] is `Clone` (a watcher hands the same
/// upstream error to every local watcher).
pub type Source = Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used throughout the registry crates.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a registry call can fail with.
///
/// [`Error::is_temporary`] tells failures worth retrying (the registry was unreachable or slow)
/// from permanent ones (bad input, bad configuration, an operation the backend does not support).
#[non_exhaustive]
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// A service name, instance id, endpoint or metadata entry was rejected before anything
    /// was written.
    #[error("invalid {field} {value:?}: {reason}")]
    InvalidInput {
        /// Which input: `"name"`, `"id"`, `"endpoint"`, `"metadata"`.
        field: &'static str,
        /// The rejected value.
        value: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A registry URL or one of its options could not be understood.
    #[error("invalid registry URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL as given (secrets removed).
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A backend's configuration (built in code, or read from a URL) cannot work: a TTL
    /// below the server's floor, no endpoint, a TLS setting the client refuses.
    #[error("invalid {backend} configuration: {reason}")]
    InvalidConfig {
        /// The backend's scheme.
        backend: &'static str,
        /// What is wrong (secrets never included).
        reason: String,
    },

    /// A URL names a scheme that no backend knows.
    #[error("unknown registry scheme {scheme:?}; schemes compiled in: {}", available.join(", "))]
    UnknownScheme {
        /// The scheme of the URL.
        scheme: String,
        /// The schemes this build can connect to.
        available: Vec<&'static str>,
    },

    /// A URL names a known backend that this build was compiled without.
    #[error("the {scheme}:// registry needs the `{feature}` feature of the `registry` crate")]
    FeatureDisabled {
        /// The scheme of the URL.
        scheme: String,
        /// The cargo feature to enable.
        feature: &'static str,
    },

    /// The backend does not offer this operation (see [`crate::Capabilities`]).
    #[error("the {backend} registry does not support {operation}")]
    Unsupported {
        /// The backend's scheme.
        backend: &'static str,
        /// The operation that was refused.
        operation: &'static str,
    },

    /// The registry could not be reached, or dropped the connection.
    #[error("registry unavailable: {message}")]
    Unavailable {
        /// What happened.
        message: String,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Source>,
    },

    /// The registry did not answer in time.
    #[error("registry call {operation} timed out after {after:?}")]
    Timeout {
        /// What was being done.
        operation: &'static str,
        /// How long we waited.
        after: Duration,
    },

    /// The registry refused the credentials or the operation.
    #[error("permission denied: {message}")]
    PermissionDenied {
        /// The registry's explanation.
        message: String,
    },

    /// Another live owner holds what we tried to write (for example a ZooKeeper node of
    /// another session at the instance's path).
    #[error("conflict: {message}")]
    Conflict {
        /// What is held, and by whom.
        message: String,
    },

    /// `deregister` of an instance that the registry lists but this handle did not register
    /// (another process or handle owns it): nothing was changed. An owner keeps its instance
    /// registered, so removing it from outside would not last; its owner deregisters it, or
    /// it leaves when its owner dies.
    #[error(
        "instance {id:?} of service {name:?} is registered by another owner; it was left alone"
    )]
    NotOwned {
        /// The service.
        name: String,
        /// The instance id.
        id: String,
    },

    /// [`crate::Watcher::stop`] was called; the watcher delivers nothing more.
    #[error("watcher stopped")]
    WatcherStopped,

    /// The registry (or the watch's upstream) was shut down.
    #[error("registry closed")]
    Closed,

    /// Any other failure reported by a backend.
    #[error("{backend} registry error: {message}")]
    Backend {
        /// The backend's scheme.
        backend: &'static str,
        /// What happened.
        message: String,
        /// Whether retrying may succeed.
        temporary: bool,
        /// The underlying error, when there is one.
        #[source]
        source: Option<Source>,
    },
}

/// How many characters of an invalid value an [`Error::InvalidInput`] keeps.
pub const MAX_SHOWN: usize = 200;

fn shorten(value: String) -> String {
    match value.char_indices().nth(MAX_SHOWN) {
        Some((cut, _)) => format!("{}… ({} bytes)", &value[..cut], value.len()),
        None => value,
    }
}

impl Error {
    /// A short, stable name of the error's kind (`unavailable`, `timeout`,
    /// `permission_denied`, ...), the `kind` label of the
    /// [`ERRORS`](crate::telemetry::ERRORS) metric. A backend's own failures are `backend`
    /// (temporary) or `backend_permanent`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidInput { .. } => "invalid_input",
            Error::InvalidUrl { .. } => "invalid_url",
            Error::InvalidConfig { .. } => "invalid_config",
            Error::UnknownScheme { .. } => "unknown_scheme",
            Error::FeatureDisabled { .. } => "feature_disabled",
            Error::Unsupported { .. } => "unsupported",
            Error::Unavailable { .. } => "unavailable",
            Error::Timeout { .. } => "timeout",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::Conflict { .. } => "conflict",
            Error::NotOwned { .. } => "not_owned",
            Error::WatcherStopped => "watcher_stopped",
            Error::Closed => "closed",
            Error::Backend {
                temporary: true, ..
            } => "backend",
            Error::Backend { .. } => "backend_permanent",
        }
    }

    /// Whether retrying the same call later may succeed: the registry was unreachable, slow,
    /// or reported a transient failure. Bad input, configuration errors and unsupported calls
    /// are permanent.
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Unavailable { .. } | Error::Timeout { .. } => true,
            Error::Backend { temporary, .. } => *temporary,
            _ => false,
        }
    }

    /// Shorthand for [`Error::InvalidInput`]. A long value is cut to its first
    /// 200 characters (values read from a registry can be megabytes).
    pub fn invalid(
        field: &'static str,
        value: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Error::InvalidInput {
            field,
            value: shorten(value.into()),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::InvalidUrl`].
    pub fn invalid_url(url: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidUrl {
            url: url.into(),
            reason: reason.into(),
        }
    }

    /// Shorthand for [`Error::Unavailable`] with a source.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Unavailable {
            message: message.into(),
            source: Some(Arc::new(source)),
        }
    }
}
