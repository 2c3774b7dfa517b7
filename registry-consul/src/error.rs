//! Consul's answers as the registry's [`Error`]: permanent or temporary, from the HTTP
//! status and reqwest's error kinds.

use registry_core::Error;
use reqwest::StatusCode;

use crate::SCHEME;

/// Maps a request that got no answer: the agent is unreachable or slow (temporary).
pub(crate) fn transport(operation: &'static str, e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Unavailable {
            message: format!("Consul {operation} timed out"),
            source: Some(std::sync::Arc::new(e)),
        }
    } else {
        Error::unavailable(format!("Consul {operation} failed"), e)
    }
}

/// Consul answers 400 for a request it refuses, 403 without permission, 404 for an unknown
/// service or check, 429 and 5xx when it cannot answer now. Consul 1.8 also answers 500 for
/// an unknown service or check id; that is classified by the code (temporary) like any 500:
/// callers that need to know ask whether the id exists (`GET /v1/agent/service/:id`).
pub(crate) fn status_error(operation: &'static str, status: StatusCode, body: &str) -> Error {
    let message = format!("{operation}: {status}: {body}");
    match status {
        StatusCode::FORBIDDEN | StatusCode::UNAUTHORIZED => Error::PermissionDenied { message },
        StatusCode::TOO_MANY_REQUESTS => Error::Unavailable {
            message,
            source: None,
        },
        s => Error::Backend {
            backend: SCHEME,
            temporary: s.is_server_error(),
            message,
            source: None,
        },
    }
}
