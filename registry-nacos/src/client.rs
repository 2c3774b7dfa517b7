//! nacos-sdk's naming client, set up from a [`Config`].

use std::future::Future;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder};
use nacos_sdk::api::props::ClientProps;
use registry_core::config::Credentials;
use registry_core::{Error, Result};

use crate::error::map_err;
use crate::Config;

/// Builds the naming client and checks that a server answers. Returns the client and the
/// temporary cache directory it uses (deleted when dropped), unless the config names one.
pub(crate) async fn connect(config: &Config) -> Result<(NamingService, Option<tempfile::TempDir>)> {
    let (cache_dir, cache) = match &config.cache_dir {
        Some(dir) => (dir.clone(), None),
        None => {
            let dir = tempfile::Builder::new()
                .prefix("registry-nacos-")
                .tempdir()
                .map_err(|e| Error::unavailable("Nacos cache directory", e))?;
            (dir.path().to_owned(), Some(dir))
        }
    };
    let mut props = ClientProps::new()
        .server_addr(config.servers.join(","))
        .namespace(config.namespace.clone())
        .app_name("registry-rs")
        // The settings here win over NACOS_CLIENT_* environment variables.
        .env_first(false)
        // Report an empty service as empty (nacos-sdk hides it by default).
        .naming_push_empty_protection(false)
        .naming_load_cache_at_start(false)
        .cache_dir(cache_dir);
    let mut builder_auth = false;
    if let Some(Credentials { user, password }) = &config.credentials {
        props = props
            .auth_username(user.clone())
            .auth_password(password.expose().to_owned());
        builder_auth = true;
    }
    let mut builder = NamingServiceBuilder::new(props);
    if builder_auth {
        builder = builder.enable_auth_plugin_http();
    }
    let naming = timed("connect", REQUEST_TIMEOUT, builder.build()).await?;
    // Fail now, not at the first call, when no server answers.
    let probe = naming.get_service_list(1, 1, Some(config.group.clone()));
    timed("connect", REQUEST_TIMEOUT, probe).await?;
    Ok((naming, cache))
}

/// How long one nacos-sdk request may take: nacos-sdk sets no deadline of its own, and a
/// frozen server keeps the connection open without ever answering.
pub(crate) const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One nacos-sdk request, bounded by `timeout`, its error mapped by its codes.
pub(crate) async fn timed<T>(
    operation: &'static str,
    timeout: Duration,
    call: impl Future<Output = nacos_sdk::api::error::Result<T>>,
) -> Result<T> {
    match tokio::time::timeout(timeout, call).await {
        Ok(answer) => answer.map_err(|e| map_err(operation, e)),
        Err(_) => Err(Error::Timeout {
            operation,
            after: timeout,
        }),
    }
}
