//! nacos-sdk's naming client, set up from a [`Config`].

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use nacos_sdk::api::naming::{NamingService, NamingServiceBuilder};
use nacos_sdk::api::props::ClientProps;
use registry_core::config::Credentials;
use registry_core::{Error, Result};

use crate::error::map_err;
use crate::server::ServerKind;
use crate::Config;

/// The cache directory of every registry of this process that names none: nacos-sdk writes
/// what the server pushes there from tasks of its own, which outlive a closed registry (a
/// directory removed on close made each of them fail, with warnings). It is left behind when
/// the process exits; nothing reads it back (`naming_load_cache_at_start` is off).
fn process_cache_dir() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| {
        tempfile::Builder::new()
            .prefix("registry-nacos-")
            .tempdir()
            .map(tempfile::TempDir::keep)
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| Error::Unavailable {
        message: format!("Nacos cache directory: {e}"),
        source: None,
    })
}

/// How long `connect` waits, after the naming client is up, for the probe of what the server
/// is; past it the probe goes on in the background (and the kind is unknown until it ends).
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// Builds the naming client, checks that a server answers and tells what the server is (the
/// probe runs alongside).
/// The probe's task is the caller's: aborted with the returned [`Probe`] (and when `connect`
/// fails or is dropped).
pub(crate) async fn connect(config: &Config) -> Result<(NamingService, ServerKind, Probe)> {
    let kind = ServerKind::default();
    let mut probe = Probe(kind.probe(config.servers.clone()));
    let naming = naming(config).await?;
    // A probe that ends with the naming client's set-up costs no time; one that takes longer
    // (an HTTP port that drops packets) keeps going in the background.
    let _ = tokio::time::timeout(PROBE_WAIT, &mut probe.0).await;
    Ok((naming, kind, probe))
}

/// The task telling the server kind, aborted when this is dropped.
#[derive(Debug)]
pub(crate) struct Probe(tokio::task::JoinHandle<()>);

impl Drop for Probe {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Builds the naming client and checks that a server answers.
async fn naming(config: &Config) -> Result<NamingService> {
    let cache_dir = match &config.cache_dir {
        Some(dir) => dir.clone(),
        None => process_cache_dir()?,
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
    Ok(naming)
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
