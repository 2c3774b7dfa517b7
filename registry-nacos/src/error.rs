//! nacos-sdk's errors as the registry's [`Error`]: permanent or temporary, from codes.

use nacos_sdk::api::error::Error as N;
use registry_core::Error;
use tonic::Code;

use crate::SCHEME;

/// The Nacos `error_code` of a refused request. nacos-sdk hands a server's refusal over as
/// `ErrResponse` with the code, or (for most naming calls) as `ErrResult` with the codes
/// written into its text in one fixed shape, `... error_code=N, ...`, which is read here.
fn error_code(e: &N) -> Option<i32> {
    match e {
        N::ErrResponse(_, _, error_code, _) => Some(*error_code),
        N::ErrResult(text) => {
            let rest = text.split("error_code=").nth(1)?;
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        }
        _ => None,
    }
}

/// Maps nacos-sdk's failure of `operation`. The server's 401 and 403 are a permission
/// refusal, its other 4xx codes and the SDK's parameter and format errors are permanent;
/// transport failures, gRPC statuses other than a refusal, and server-side (5xx) errors are
/// temporary.
pub(crate) fn map_err(operation: &'static str, e: N) -> Error {
    let message = format!("Nacos {operation}: {e}");
    let permanent = |e: N| Error::Backend {
        backend: SCHEME,
        message: message.clone(),
        temporary: false,
        source: Some(std::sync::Arc::new(e)),
    };
    match (error_code(&e), &e) {
        (Some(401 | 403), _) => Error::PermissionDenied { message },
        (Some(400..=499), _) => permanent(e),
        (_, N::TonicGrpcStatus(status))
            if matches!(
                status.code(),
                Code::PermissionDenied | Code::Unauthenticated
            ) =>
        {
            Error::PermissionDenied { message }
        }
        (_, N::TonicGrpcStatus(status))
            if matches!(
                status.code(),
                Code::InvalidArgument | Code::Unimplemented | Code::FailedPrecondition
            ) =>
        {
            permanent(e)
        }
        (_, N::InvalidParam(..) | N::Serialization(_) | N::WrongServerAddress(_)) => permanent(e),
        (_, N::ClientShutdown(_)) => Error::Closed,
        _ => Error::unavailable(message, e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_permanent_and_outages_temporary() {
        let refused = N::ErrResult(
            "handle InstanceRequest failed: result_code=500, error_code=400, message=bad".into(),
        );
        assert!(!map_err("register", refused).is_temporary());
        let denied = N::ErrResponse(None, 500, 403, Some("no".into()));
        assert!(matches!(
            map_err("register", denied),
            Error::PermissionDenied { .. }
        ));
        let server = N::ErrResult(
            "handle InstanceRequest failed: result_code=500, error_code=500, message=x".into(),
        );
        assert!(map_err("register", server).is_temporary());
        assert!(map_err("register", N::NoAvailableServer).is_temporary());
        assert!(map_err("register", N::ClientUnhealthy("down".into())).is_temporary());
        assert!(!map_err("register", N::InvalidParam("ip".into(), "empty".into())).is_temporary());
    }
}
