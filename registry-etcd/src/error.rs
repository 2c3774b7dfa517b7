//! etcd-client's errors as the registry's [`Error`]: permanent or temporary.

use registry_core::Error;

use crate::SCHEME;

/// gRPC status codes etcd answers with (`google.golang.org/grpc/codes`).
mod code {
    pub const INVALID_ARGUMENT: i32 = 3;
    pub const NOT_FOUND: i32 = 5;
    pub const ALREADY_EXISTS: i32 = 6;
    pub const PERMISSION_DENIED: i32 = 7;
    pub const OUT_OF_RANGE: i32 = 11;
    pub const UNIMPLEMENTED: i32 = 12;
    pub const UNAUTHENTICATED: i32 = 16;
}

/// Whether etcd answered that a revision is no longer (compacted) or not yet (its data was
/// reset) in its history.
pub(crate) fn is_out_of_range(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == code::OUT_OF_RANGE)
}

/// Whether etcd answered that a lease does not exist (it expired or was revoked).
pub(crate) fn is_lease_not_found(e: &Error) -> bool {
    matches!(e, Error::Backend { message, temporary: false, .. } if message.contains("lease not found"))
}

/// Maps an etcd-client error of `operation`. Answers that etcd gave about the request itself
/// (bad argument, wrong password, permission, missing lease) are permanent; everything else
/// (connection refused, timeouts, leader changes, "not capable", a member that is a learner,
/// a stale auth token, "etcdserver: request timed out") is temporary.
pub(crate) fn map_err(operation: &'static str, e: etcd_client::Error) -> Error {
    use etcd_client::Error as E;
    match e {
        E::InvalidArgs(m) => permanent(format!("{operation}: {m}")),
        E::GRpcStatus(status) => {
            let code = status.code() as i32;
            let message = status.message();
            // A token that expired, or that etcd lost in a restart, is refreshed by the
            // client (auto token refresh): retrying helps.
            let stale_token =
                message.contains("invalid auth token") || message.contains("auth store is old");
            let auth = !stale_token
                && (code == code::PERMISSION_DENIED
                    || (code == code::INVALID_ARGUMENT
                        && (message.contains("authentication failed")
                            || message.contains("user name is empty"))));
            if auth {
                Error::PermissionDenied {
                    message: format!("etcd {operation}: {message}"),
                }
            } else if !stale_token
                && matches!(
                    code,
                    code::INVALID_ARGUMENT
                        | code::NOT_FOUND
                        | code::ALREADY_EXISTS
                        | code::OUT_OF_RANGE
                        | code::UNIMPLEMENTED
                        | code::UNAUTHENTICATED
                )
            {
                permanent(format!("{operation}: {message}"))
            } else {
                Error::unavailable(format!("etcd {operation} failed"), E::GRpcStatus(status))
            }
        }
        other => Error::unavailable(format!("etcd {operation} failed"), other),
    }
}

fn permanent(message: String) -> Error {
    Error::Backend {
        backend: SCHEME,
        message,
        temporary: false,
        source: None,
    }
}
