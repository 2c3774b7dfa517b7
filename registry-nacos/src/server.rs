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

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

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

/// The most of an answer the probe reads (it needs the status line; the rest is drained so
/// that the connection closes cleanly).
const MAX_ANSWER: usize = 64 * 1024;

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

    /// Starts telling the kind of `servers` (`host:port`, the HTTP address of each) on a
    /// blocking thread; the returned handle ends once it is set.
    pub(crate) fn probe(&self, servers: Vec<String>) -> tokio::task::JoinHandle<()> {
        let cell = self.0.clone();
        tokio::task::spawn_blocking(move || {
            let kind = kind_of(&servers);
            tracing::debug!(?servers, ?kind, "Nacos server kind");
            let _ = cell.set(kind);
        })
    }
}

/// The kind every server that answers agrees on; [`Kind::Unknown`] when none answers or they
/// disagree (a server that cannot be reached says nothing: a cluster with a node down is
/// still told).
pub(crate) fn kind_of(servers: &[String]) -> Kind {
    let mut told = None;
    for server in servers {
        let Some(kind) = kind_of_one(server) else {
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
fn kind_of_one(server: &str) -> Option<Kind> {
    if server.contains('/') {
        // Not the plain `host:port` this backend writes (a scheme or a path): not probed.
        return Some(Kind::Unknown);
    }
    let addresses: Vec<SocketAddr> = server.to_socket_addrs().ok()?.collect();
    let state = status(server, &addresses, NACOS_STATE)?;
    let health = status(server, &addresses, RNACOS_HEALTH)?;
    Some(match (state, health) {
        (200, 404) => Kind::Nacos,
        (404, 200) => Kind::Rnacos,
        _ => Kind::Unknown,
    })
}

/// The HTTP status of `GET path` at the first of `addresses` that accepts a connection;
/// `None` when none answers with a status line in time.
fn status(host: &str, addresses: &[SocketAddr], path: &str) -> Option<u16> {
    let deadline = Instant::now() + EXCHANGE_TIMEOUT;
    let mut stream = addresses
        .iter()
        .find_map(|a| TcpStream::connect_timeout(a, EXCHANGE_TIMEOUT).ok())?;
    let left = deadline.checked_duration_since(Instant::now())?;
    stream.set_write_timeout(Some(left)).ok()?;
    // HTTP/1.0: the server closes the connection after a whole answer, never chunked.
    let request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut answer = Vec::new();
    let mut buffer = [0u8; 4096];
    while answer.len() < MAX_ANSWER {
        let left = deadline.checked_duration_since(Instant::now())?;
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buffer[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    status_code(&answer)
}

/// The status code of an HTTP/1.x answer's status line (`HTTP/1.1 200 OK`).
fn status_code(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut words = line.split_ascii_whitespace();
    if !words.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let code = words.next()?;
    if code.len() != 3 {
        return None;
    }
    code.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines() {
        assert_eq!(
            status_code(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nbody"),
            Some(200)
        );
        assert_eq!(status_code(b"HTTP/1.0 404 Not Found\r\n"), Some(404));
        assert_eq!(status_code(b"HTTP/1.1 200"), Some(200));
        for bad in [
            &b""[..],
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/2 200\r\n",
            b"HTTP/1.1 20\r\n",
            b"HTTP/1.1 abc\r\n",
            b"\x00\x00\x18\x04",
        ] {
            assert_eq!(status_code(bad), None, "{bad:?}");
        }
    }

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
        assert_eq!(kind_of(&[closed.clone(), address]), Kind::Rnacos);
        assert_eq!(kind_of(&[closed]), Kind::Unknown);
    }

    /// The real Nacos, where one runs (`scripts/nacos-java up 18848`, then
    /// `REGISTRY_RS_NACOS_JAVA=127.0.0.1:18848`).
    #[test]
    #[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
    fn nacos_is_told() {
        let address = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
        assert_eq!(kind_of(&[address]), Kind::Nacos);
    }

    #[test]
    #[ignore = "needs the Java Nacos: REGISTRY_RS_NACOS_JAVA=host:port"]
    fn servers_that_disagree_are_unknown() {
        let java = std::env::var("REGISTRY_RS_NACOS_JAVA").expect("REGISTRY_RS_NACOS_JAVA");
        // The shared rnacos (`scripts/backends up`).
        assert_eq!(kind_of(&[java, "127.0.0.1:8848".into()]), Kind::Unknown);
    }
}
