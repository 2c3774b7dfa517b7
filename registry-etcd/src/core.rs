//! The connection to etcd: one endpoint in use at a time, failing over to the next endpoint
//! that answers when the one in use stops answering.
//!
//! A URL listing several endpoints gets a client per endpoint, pinned to one that answers, as
//! etcd's Go client does (spreading requests over every endpoint keeps sending some to one
//! that is down).

use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use registry_core::{Error, Result};
use tonic::Status;

use crate::client::{Client, ConnectOptions};
use crate::error::{map_connect_err, map_err};
use crate::Config;

struct Pinned {
    /// Index into the endpoints of the one in use.
    index: usize,
    /// Bumped at each switch, so that concurrent failures switch once.
    generation: u64,
    client: Client,
}

/// A connection to an etcd cluster.
pub(crate) struct Connection {
    endpoints: Vec<String>,
    options: ConnectOptions,
    config: Config,
    pinned: Mutex<Pinned>,
    /// Held while switching; holds when the last scan found no endpoint answering, so that
    /// failures piling up do not each scan every endpoint again.
    switching: tokio::sync::Mutex<Option<Instant>>,
}

/// How long after a scan that found no endpoint answering the next one may start.
const RESCAN_AFTER: Duration = Duration::from_secs(1);

impl Connection {
    /// Connects to the first endpoint that answers, in the order given.
    pub(crate) async fn open(config: &Config) -> Result<Connection> {
        let options = ConnectOptions {
            connect_timeout: config.connect_timeout,
            request_timeout: config.request_timeout,
            // etcd forgets tokens when idle or restarted: the client gets a new one when told so.
            credentials: config.credentials.clone(),
            tls: match &config.tls {
                Some(tls) => Some(crate::client::tls_config(tls.load()?)),
                None => None,
            },
        };
        let mut last_error = None;
        for (index, endpoint) in config.endpoints.iter().enumerate() {
            match dial(endpoint, &options, config).await {
                Ok(client) => {
                    return Ok(Connection {
                        endpoints: config.endpoints.clone(),
                        options,
                        config: config.clone(),
                        pinned: Mutex::new(Pinned {
                            index,
                            generation: 0,
                            client,
                        }),
                        switching: tokio::sync::Mutex::new(None),
                    });
                }
                Err(e) if !e.is_temporary() => return Err(e),
                Err(e) => {
                    tracing::warn!(%endpoint, error = %e, "etcd endpoint does not answer");
                    last_error = Some(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| Error::invalid("endpoints", "", "no etcd endpoint")))
    }

    fn pinned(&self) -> MutexGuard<'_, Pinned> {
        self.pinned.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The client of the endpoint in use, and its generation.
    pub(crate) fn client(&self) -> (u64, Client) {
        let pinned = self.pinned();
        (pinned.generation, pinned.client.clone())
    }

    /// Runs `op` on the endpoint in use. When it fails temporarily and another endpoint
    /// answers, switches to that endpoint and runs `op` once more there.
    pub(crate) async fn run<T, F, Fut>(&self, operation: &'static str, op: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let (generation, client) = self.client();
        match op(client).await {
            Ok(value) => Ok(value),
            Err(e) => {
                let error = map_err(operation, e);
                if error.is_temporary() && self.failover(generation).await {
                    let (_, client) = self.client();
                    return op(client).await.map_err(|e| map_err(operation, e));
                }
                Err(error)
            }
        }
    }

    /// Called after a temporary failure on the client of `generation`: switches to the next
    /// endpoint that answers. True when the client changed (now or by a concurrent caller).
    pub(crate) async fn failover(&self, generation: u64) -> bool {
        if self.endpoints.len() < 2 {
            return false;
        }
        let mut last_failed_scan = self.switching.lock().await;
        let start = {
            let pinned = self.pinned();
            if pinned.generation != generation {
                return true;
            }
            pinned.index
        };
        if last_failed_scan.is_some_and(|at| at.elapsed() < RESCAN_AFTER) {
            return false;
        }
        for step in 1..self.endpoints.len() {
            let index = (start + step) % self.endpoints.len();
            let endpoint = &self.endpoints[index];
            match dial(endpoint, &self.options, &self.config).await {
                Ok(client) => {
                    tracing::warn!(from = %self.endpoints[start], to = %endpoint, "etcd endpoint switched");
                    let mut pinned = self.pinned();
                    *pinned = Pinned {
                        index,
                        generation: generation + 1,
                        client,
                    };
                    return true;
                }
                Err(e) => tracing::debug!(%endpoint, error = %e, "etcd endpoint does not answer"),
            }
        }
        *last_failed_scan = Some(Instant::now());
        false
    }
}

/// Connects to one endpoint and checks that it answers.
async fn dial(endpoint: &str, options: &ConnectOptions, config: &Config) -> Result<Client> {
    let connecting = Client::connect(endpoint, options);
    let client = tokio::time::timeout(config.connect_timeout, connecting)
        .await
        .map_err(|_| Error::Timeout {
            operation: "connect",
            after: config.connect_timeout,
        })?
        .map_err(|e| map_connect_err(endpoint, e))?;
    let status = tokio::time::timeout(config.request_timeout, client.status())
        .await
        .map_err(|_| Error::Timeout {
            operation: "status",
            after: config.request_timeout,
        })?
        .map_err(|e| map_err("status", e))?;
    if status.is_learner {
        // A learner answers its status but refuses reads and writes.
        return Err(Error::Unavailable {
            message: format!("etcd endpoint {endpoint} is a learner"),
            source: None,
        });
    }
    Ok(client)
}
