//! zookeeper-client's errors as the registry's [`Error`]: permanent or temporary.

use registry_core::Error;

use crate::SCHEME;

/// Maps an error of `operation`. Connection loss, timeouts, an expired or moved session and
/// throttling are temporary; the rest (bad arguments, missing permission, a node in the way)
/// are permanent.
pub(crate) fn map_err(operation: &'static str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Z;
    match e {
        Z::NoAuth | Z::AuthFailed => Error::PermissionDenied {
            message: format!("ZooKeeper {operation}: {e}"),
        },
        Z::ConnectionLoss
        | Z::Timeout
        | Z::SessionExpired
        | Z::SessionMoved
        | Z::Throttled
        | Z::ClientClosed
        | Z::NoHosts => Error::unavailable(format!("ZooKeeper {operation} failed"), e),
        other => Error::Backend {
            backend: SCHEME,
            message: format!("{operation}: {other}"),
            temporary: false,
            source: None,
        },
    }
}
