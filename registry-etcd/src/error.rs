//! etcd's answers as the registry's [`Error`]: permanent or temporary.

use registry_core::Error;
use tonic::{Code, Status};

use crate::client::{is_stale_token, ConnectError};
use crate::SCHEME;

/// Whether etcd answered that a revision is no longer (compacted) or not yet (its data was
/// reset) in its history.
pub(crate) fn is_out_of_range(status: &Status) -> bool {
    status.code() == Code::OutOfRange && !is_too_large(status)
}

/// Whether etcd answered that a revision was compacted away.
pub(crate) fn is_compacted(status: &Status) -> bool {
    is_out_of_range(status) && status.message().contains("compacted")
}

/// Whether an answer was refused by the client for being larger than a gRPC message may be
/// (tonic says so with `OutOfRange` too, and only in this text).
pub(crate) fn is_too_large(status: &Status) -> bool {
    status.code() == Code::OutOfRange && status.message().contains("message length too large")
}

/// Whether etcd answered a request that names a lease (a put under it, a revoke) with
/// `NotFound`: the lease expired or was revoked. etcd has no other `NotFound` for them.
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    let Error::Backend {
        source: Some(source),
        ..
    } = e
    else {
        return false;
    };
    source
        .downcast_ref::<Status>()
        .is_some_and(|status| status.code() == Code::NotFound)
}

/// Maps etcd's answer to `operation`. Answers that etcd gave about the request itself (bad
/// argument, wrong password, permission, missing lease) are permanent; everything else
/// (connection refused, timeouts, leader changes, "not capable", a member that is a learner,
/// a stale auth token, "etcdserver: request timed out") is temporary.
pub(crate) fn map_err(operation: &'static str, status: Status) -> Error {
    let code = status.code();
    let message = status.message();
    // A token that expired, or that etcd lost in a restart, is temporary: the client
    // authenticates again when etcd refuses it (as etcd's own clients do).
    let stale_token = is_stale_token(&status);
    // etcd refuses a wrong user or password with `InvalidArgument`: any refusal of the
    // authentication call itself is a permission error. A request without a token while
    // auth is on is also `InvalidArgument`; etcd's Go client tells it apart by the error's
    // description (`rpctypes.ErrUserEmpty`), its only typed form, and so does this.
    let auth = !stale_token
        && (code == Code::PermissionDenied
            || (code == Code::InvalidArgument
                && (operation == "authenticate" || message == "etcdserver: user name is empty")));
    if auth {
        Error::PermissionDenied {
            message: format!("etcd {operation}: {message}"),
        }
    } else if !stale_token
        && matches!(
            code,
            Code::InvalidArgument
                | Code::NotFound
                | Code::AlreadyExists
                | Code::OutOfRange
                | Code::Unimplemented
                | Code::Unauthenticated
        )
    {
        Error::Backend {
            backend: SCHEME,
            message: format!("{operation}: {message}"),
            temporary: false,
            source: Some(std::sync::Arc::new(status)),
        }
    } else {
        Error::unavailable(format!("etcd {operation} failed"), status)
    }
}

/// Maps a failed connection to `endpoint`.
pub(crate) fn map_connect_err(endpoint: &str, e: ConnectError) -> Error {
    match e {
        ConnectError::Config(e) => Error::invalid("etcd endpoint", endpoint, e.to_string()),
        ConnectError::Transport(e) => {
            Error::unavailable(format!("etcd endpoint {endpoint} does not answer"), e)
        }
        ConnectError::Rpc(status) => map_err("authenticate", status),
    }
}
