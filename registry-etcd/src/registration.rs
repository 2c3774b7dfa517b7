//! One registration's background work: keep its lease alive, and when the lease is lost write
//! the latest value again under a new lease, retrying forever.

use std::sync::Arc;
use std::time::Duration;

use etcd_client::PutOptions;
use registry_core::{Backoff, Result, ServiceInstance};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::core::Connection;

/// Where a registration stands, readable through
/// [`EtcdRegistry::registration_state`](crate::EtcdRegistry::registration_state).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistrationState {
    /// Written and kept alive under this lease.
    Registered {
        /// The lease id.
        lease: i64,
    },
    /// The lease was lost; writing it again.
    Reregistering {
        /// How many attempts failed so far.
        attempt: u32,
        /// The last failure.
        last_error: String,
    },
}

/// A registration made through this process: the latest value, its state, and the task that
/// keeps it. Dropping it stops the task.
pub(crate) struct Registration {
    pub(crate) latest: watch::Sender<ServiceInstance>,
    pub(crate) state: watch::Receiver<RegistrationState>,
    task: JoinHandle<()>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Registration {
    /// Starts keeping `instance`, just written under `lease`.
    pub(crate) fn start(
        conn: Arc<Connection>,
        key: String,
        ttl: Duration,
        lease: i64,
        instance: ServiceInstance,
    ) -> Registration {
        let (latest, latest_rx) = watch::channel(instance);
        let (state_tx, state) = watch::channel(RegistrationState::Registered { lease });
        let task = tokio::spawn(maintain(conn, key, ttl, lease, latest_rx, state_tx));
        Registration {
            latest,
            state,
            task,
        }
    }

    /// The lease, while registered.
    pub(crate) fn lease(&self) -> Option<i64> {
        match *self.state.borrow() {
            RegistrationState::Registered { lease } => Some(lease),
            RegistrationState::Reregistering { .. } => None,
        }
    }
}

/// Grants a lease and writes the instance under it.
pub(crate) async fn write(
    conn: &Connection,
    key: &str,
    instance: &ServiceInstance,
    ttl: Duration,
) -> Result<i64> {
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    let lease = conn
        .run("lease grant", |mut c| async move {
            c.lease_grant(ttl_secs, None).await
        })
        .await?
        .id();
    put_under(conn, key, instance, lease).await?;
    Ok(lease)
}

/// Writes the instance under an existing lease.
pub(crate) async fn put_under(
    conn: &Connection,
    key: &str,
    instance: &ServiceInstance,
    lease: i64,
) -> Result<()> {
    let value = instance.to_json();
    conn.run("put", |mut c| {
        let value = value.clone();
        async move {
            c.put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
        }
    })
    .await?;
    Ok(())
}

/// Keeps `lease` alive until it is lost; returns why. When the connection failed (rather
/// than the lease expiring), lets the connection fail over to another endpoint.
async fn keep_alive(conn: &Connection, lease: i64, ttl: Duration) -> String {
    let (generation, mut client) = conn.client();
    let (why, connection_failed) = async {
        let (mut keeper, mut stream) = match client.lease_keep_alive(lease).await {
            Ok(pair) => pair,
            Err(e) => return (format!("keep-alive stream: {e}"), true),
        };
        loop {
            if let Err(e) = keeper.keep_alive().await {
                return (format!("keep-alive send: {e}"), true);
            }
            match tokio::time::timeout(ttl, stream.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return ("lease expired".into(), false),
                Ok(Ok(None)) => return ("keep-alive stream closed".into(), true),
                Ok(Err(e)) => return (format!("keep-alive: {e}"), true),
                Err(_) => return ("no keep-alive answer within the TTL".into(), true),
            }
            tokio::time::sleep(ttl / 3).await;
        }
    }
    .await;
    if connection_failed {
        conn.failover(generation).await;
    }
    why
}

/// The background work of one registration: keep its lease alive, and when the lease is lost
/// write the latest value under a new lease, retrying with jittered back-off forever.
async fn maintain(
    conn: Arc<Connection>,
    key: String,
    ttl: Duration,
    mut lease: i64,
    latest: watch::Receiver<ServiceInstance>,
    state: watch::Sender<RegistrationState>,
) {
    loop {
        let why = keep_alive(&conn, lease, ttl).await;
        tracing::warn!(%key, lease, %why, "etcd lease lost; registering again");
        let mut attempt = 0u32;
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
        lease = loop {
            let instance = latest.borrow().clone();
            match write(&conn, &key, &instance, ttl).await {
                Ok(lease) => {
                    tracing::info!(%key, lease, attempt, "etcd registration restored");
                    break lease;
                }
                Err(e) => {
                    attempt += 1;
                    state.send_replace(RegistrationState::Reregistering {
                        attempt,
                        last_error: e.to_string(),
                    });
                    let delay = backoff.delay();
                    tracing::warn!(%key, attempt, error = %e, retry_in = ?delay, "etcd re-registration failed");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        state.send_replace(RegistrationState::Registered { lease });
    }
}
