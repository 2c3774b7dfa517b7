//! Which server a handle talks to, the real (Java) Nacos or rnacos, told apart once per
//! connection, off the hot path: the removal of one of several instances of a service takes
//! one call on either when the server is known, two in a row when it is not (see `store.rs`).
//!
//! The two keep a client's instances differently, and nothing in nacos-sdk's API tells them
//! apart (the gRPC server check answers no version). Their HTTP APIs, at the address nacos-sdk
//! is given (its login plugin posts to the same `http://host:port/nacos/...`), do, by status
//! code alone: Nacos serves `GET /nacos/v1/console/server/state` (its version and modes, no
//! authentication needed) and answers 404 under `/rnacos/`; rnacos answers 404 to the first
//! and serves `/rnacos/health` (its health check, or its console page behind the same path).
//! A server answering anything else, none answering, a server list that disagrees: the kind
//! stays unknown, and the removal takes the sequence right on both.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// The server kinds whose handling of a client's instances the store relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The real Nacos 2.x (Java): one publish record per service and client connection; a
    /// batch replaces it whole, a deregister removes it whole.
    Nacos,
    /// rnacos: one record per address; a batch registers or updates each instance it lists
    /// and removes none, a deregister removes one address.
    Rnacos,
    /// Not told (yet, or at all): only what is right on both may be sent.
    Unknown,
}

/// The kind of the servers of one handle, set once by the probe [`ServerKind::probe`] starts;
/// [`Kind::Unknown`] until then.
#[derive(Debug, Clone, Default)]
pub(crate) struct ServerKind(Arc<OnceLock<Kind>>);

/// How long one HTTP exchange of the probe may take, connecting included.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(2);

/// Nacos' server state, which rnacos does not serve.
const NACOS_STATE: &str = "/nacos/v1/console/server/state";

/// rnacos' health check, under a path Nacos does not serve.
const RNACOS_HEALTH: &str = "/rnacos/health";

impl ServerKind {
    /// A kind already told (for the tests of each kind's sequence).
    #[cfg(test)]
    pub(crate) fn known(kind: Kind) -> Self {
        ServerKind(Arc::new(OnceLock::from(kind)))
    }

    /// What is known now.
    pub(crate) fn get(&self) -> Kind {
        self.0.get().copied().unwrap_or(Kind::Unknown)
    }

    /// Starts telling the kind of `servers` (`host:port`, the HTTP address of each) in a task
    /// of its own, bounded by the exchanges' timeouts; the returned handle ends once the kind
    /// is set (the registry aborts it when it is closed or dropped first).
    pub(crate) fn probe(&self, servers: Vec<String>) -> tokio::task::JoinHandle<()> {
        let cell = self.0.clone();
        tokio::spawn(async move {
            let kind = kind_of(&servers).await;
            tracing::debug!(?servers, ?kind, "Nacos server kind");
            let _ = cell.set(kind);
        })
    }
}

/// The kind every server that answers agrees on; [`Kind::Unknown`] when none answers or they
/// disagree (a server that cannot be reached says nothing: a cluster with a node down is
/// still told).
pub(crate) async fn kind_of(servers: &[String]) -> Kind {
    // reqwest: already built for nacos-sdk's HTTP login; plain HTTP, no proxy from the
    // environment (the servers are the ones nacos-sdk connects to directly).
    let http = match reqwest::Client::builder()
        .timeout(EXCHANGE_TIMEOUT)
        .no_proxy()
        .build()
    {
        Ok(http) => http,
        Err(e) => {
            tracing::debug!(error = %e, "no HTTP client for the Nacos server probe");
            return Kind::Unknown;
        }
    };
    let mut told = None;
    for server in servers {
        let Some(kind) = kind_of_one(&http, server).await else {
            continue;
        };
        match told {
            None => told = Some(kind),
            Some(other) if other != kind => return Kind::Unknown,
            Some(_) => {}
        }
    }
    told.unwrap_or(Kind::Unknown)
}

/// The kind of one server; `None` when it cannot be reached.
async fn kind_of_one(http: &reqwest::Client, server: &str) -> Option<Kind> {
    if server.contains('/') {
        // Not the plain `host:port` this backend writes (a scheme or a path): not probed.
        return Some(Kind::Unknown);
    }
    let state = status(http, server, NACOS_STATE).await?;
    let health = status(http, server, RNACOS_HEALTH).await?;
    Some(match (state, health) {
        (200, 404) => Kind::Nacos,
        (404, 200) => Kind::Rnacos,
        _ => Kind::Unknown,
    })
}

/// The HTTP status of `GET http://{server}{path}`; `None` when no answer comes in time.
async fn status(http: &reqwest::Client, server: &str, path: &str) -> Option<u16> {
    match http.get(format!("http://{server}{path}")).send().await {
        Ok(answer) => Some(answer.status().as_u16()),
        Err(e) => {
            tracing::debug!(%server, %path, error = %e, "Nacos server probe: no answer");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn rnacos_is_told() {
        let server = test_support::NacosServer::start().await;
        let address = server.http().trim_start_matches("http://").to_owned();
        let kind = ServerKind::default();
        assert_eq!(kind.get(), Kind::Unknown);
        kind.probe(vec![address.clone()]).await.expect("probe");
        assert_eq!(kind.get(), Kind::Rnacos);
        // A server that cannot be reached says nothing; one that answers still tells.
        let closed = format!("127.0.0.1:{}", test_support::free_port());
        assert_eq!(kind_of(&[closed.clone(), address]).await, Kind::Rnacos);
        assert_eq!(kind_of(&[closed]).await, Kind::Unknown);
    }

    /// The real Nacos, where one runs (`scripts/nacos-java up 18848`, then
    /// `REGISTRY_RS_NACOS_JAVA=127.0.0.1:18848`).
    #[tokio::test]
    #[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
    async fn nacos_is_told() {
        let address = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
        assert_eq!(kind_of(&[address]).await, Kind::Nacos);
    }

    #[tokio::test]
    #[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
    async fn servers_that_disagree_are_unknown() {
        let java = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
        // The shared rnacos (`scripts/backends up`).
        assert_eq!(
            kind_of(&[java, "127.0.0.1:8848".into()]).await,
            Kind::Unknown
        );
    }
}
