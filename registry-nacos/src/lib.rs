//! The Nacos backend of the service registry toolkit (`nacos://`).
//!
//! Not implemented yet: this crate holds its place in the workspace layout. The facade's
//! `connect("nacos://...")` answers with [`Error::Unsupported`] until it lands.

/// The URL scheme this backend will serve.
pub const SCHEME: &str = "nacos";

use std::sync::Arc;

use registry_core::{Error, Registry, Result};

/// Connects to the registry `url` names; the facade's `connect` calls this for `nacos://`.
///
/// Until this backend lands it answers [`Error::Unsupported`].
pub async fn connect(url: &str) -> Result<Arc<dyn Registry>> {
    let _ = url;
    Err(Error::Unsupported {
        backend: SCHEME,
        operation: "connect (this backend is not implemented yet)",
    })
}
