//! zookeeper-client's errors as the registry's [`Error`]: permanent or temporary.

use registry_core::Error;

use crate::SCHEME;

/// Maps an error of `operation`. What the server answered about the request itself (bad
/// arguments, a node missing or in the way, a version mismatch, ACLs, an unsupported call)
/// is permanent; everything else (connection loss or a broken connection, timeouts, an
/// expired or moved session, throttling) is temporary.
pub(crate) fn map_err(operation: &'static str, e: zookeeper_client::Error) -> Error {
    use zookeeper_client::Error as Z;
    match e {
        Z::NoAuth | Z::AuthFailed => Error::PermissionDenied {
            message: format!("ZooKeeper {operation}: {e}"),
        },
        Z::BadArguments(_)
        | Z::NoNode
        | Z::NodeExists
        | Z::NotEmpty
        | Z::BadVersion
        | Z::NoChildrenForEphemerals
        | Z::InvalidAcl
        | Z::QuotaExceeded
        | Z::Unimplemented
        | Z::ReconfigDisabled
        | Z::NotReadOnly => Error::Backend {
            backend: SCHEME,
            message: format!("{operation}: {e}"),
            temporary: false,
            source: None,
        },
        other => Error::unavailable(format!("ZooKeeper {operation} failed"), other),
    }
}
