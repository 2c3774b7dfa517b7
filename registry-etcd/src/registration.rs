//! One registration's background work: keep its lease alive, and when the lease is lost write
//! the latest value again under a new lease, retrying forever.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_core::{Backoff, Error, Result, ServiceInstance};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::core::Connection;
use crate::error::is_lease_not_found;

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

/// What the registration task last did with the values it was given.
#[derive(Debug, Clone)]
enum Ack {
    /// The value of this version (and every earlier one) is in etcd.
    Written(u64),
    /// Writing the value of this version failed; the task retries.
    Failed(u64, Error),
}

impl Ack {
    fn version(&self) -> u64 {
        match self {
            Ack::Written(v) | Ack::Failed(v, _) => *v,
        }
    }
}

/// A registration made through this process. Its task is the only writer of its key after
/// the first write: it keeps the lease alive, writes each new value under it, and when the
/// lease is lost writes the latest value under a new one. Dropping the last handle aborts it.
pub(crate) struct Registration {
    latest: watch::Sender<(u64, ServiceInstance)>,
    acks: watch::Receiver<Ack>,
    state: watch::Receiver<RegistrationState>,
    /// The lease granted last (before its put), so that deregister can revoke it.
    lease: Arc<AtomicI64>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            task.abort();
        }
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
        let (latest, latest_rx) = watch::channel((0, instance));
        let (acks_tx, acks) = watch::channel(Ack::Written(0));
        let (state_tx, state) = watch::channel(RegistrationState::Registered { lease });
        let cell = Arc::new(AtomicI64::new(lease));
        let task = tokio::spawn(maintain(Task {
            conn,
            key,
            ttl,
            latest: latest_rx,
            acks: acks_tx,
            state: state_tx,
            lease: cell.clone(),
        }));
        Registration {
            latest,
            acks,
            state,
            lease: cell,
            task: Mutex::new(Some(task)),
        }
    }

    /// Where it stands.
    pub(crate) fn state(&self) -> RegistrationState {
        self.state.borrow().clone()
    }

    /// Hands a new value to the task and waits until it is written (or fails, or `within`
    /// passes: the task keeps trying in the background either way).
    pub(crate) async fn update(&self, instance: &ServiceInstance, within: Duration) -> Result<()> {
        let mut version = 0;
        self.latest.send_modify(|(v, value)| {
            *v += 1;
            version = *v;
            *value = instance.clone();
        });
        let mut acks = self.acks.clone();
        let waited = tokio::time::timeout(within, acks.wait_for(|a| a.version() >= version)).await;
        match waited {
            Ok(Ok(ack)) => match &*ack {
                Ack::Written(_) => Ok(()),
                Ack::Failed(_, e) => Err(e.clone()),
            },
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Timeout {
                operation: "register (it is written once etcd answers)",
                after: within,
            }),
        }
    }

    /// Stops the task and waits until it is gone; returns the lease it granted last.
    pub(crate) async fn stop(&self) -> i64 {
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        self.lease.load(Ordering::SeqCst)
    }
}

/// Grants a lease of `ttl`.
pub(crate) async fn grant(conn: &Connection, ttl: Duration) -> Result<i64> {
    let ttl_secs = i64::try_from(ttl.as_secs().max(2)).unwrap_or(i64::MAX);
    conn.run(
        "lease grant",
        |c| async move { c.lease_grant(ttl_secs).await },
    )
    .await
}

/// Grants a lease and writes the instance under it.
pub(crate) async fn write(
    conn: &Connection,
    key: &str,
    instance: &ServiceInstance,
    ttl: Duration,
) -> Result<i64> {
    let lease = grant(conn, ttl).await?;
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
    conn.run("put", |c| {
        let value = value.clone();
        async move { c.put(key.as_bytes(), value.as_bytes(), lease).await }
    })
    .await
}

/// What the registration task works with.
struct Task {
    conn: Arc<Connection>,
    key: String,
    ttl: Duration,
    latest: watch::Receiver<(u64, ServiceInstance)>,
    acks: watch::Sender<Ack>,
    state: watch::Sender<RegistrationState>,
    lease: Arc<AtomicI64>,
}

/// The background work of one registration: hold the lease, and when it is lost write the
/// latest value under a new lease, retrying with jittered back-off forever. A lease lost soon
/// after it was granted backs off too, so the loop never spins.
async fn maintain(mut task: Task) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let lease = task.lease.load(Ordering::SeqCst);
        let held_since = Instant::now();
        let why = hold(&mut task, lease).await;
        tracing::warn!(key = %task.key, lease, %why, "etcd lease lost; registering again");
        task.state.send_replace(RegistrationState::Reregistering {
            attempt: 0,
            last_error: why,
        });
        if held_since.elapsed() < task.ttl {
            tokio::time::sleep(backoff.delay()).await;
        } else {
            backoff.reset();
        }
        let mut attempt = 0u32;
        let lease = loop {
            let (version, instance) = task.latest.borrow_and_update().clone();
            match regrant(&task, &instance).await {
                Ok(lease) => {
                    task.acks.send_replace(Ack::Written(version));
                    tracing::info!(key = %task.key, lease, attempt, "etcd registration restored");
                    break lease;
                }
                Err(e) => {
                    attempt += 1;
                    task.acks.send_replace(Ack::Failed(version, e.clone()));
                    task.state.send_replace(RegistrationState::Reregistering {
                        attempt,
                        last_error: e.to_string(),
                    });
                    let delay = backoff.delay();
                    tracing::warn!(key = %task.key, attempt, error = %e, retry_in = ?delay, "etcd re-registration failed");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        task.state
            .send_replace(RegistrationState::Registered { lease });
    }
}

/// Grants a new lease (recorded before the put, for deregister) and writes under it.
async fn regrant(task: &Task, instance: &ServiceInstance) -> Result<i64> {
    let lease = grant(&task.conn, task.ttl).await?;
    task.lease.store(lease, Ordering::SeqCst);
    put_under(&task.conn, &task.key, instance, lease).await?;
    Ok(lease)
}

/// Keeps `lease` alive and writes each new value under it, until the lease is lost; returns
/// why. When the connection failed (rather than the lease expiring), lets the connection fail
/// over to another endpoint.
async fn hold(task: &mut Task, lease: i64) -> String {
    let (generation, client) = task.conn.client();
    let ttl = task.ttl;
    let (why, connection_failed) = async {
        let mut keeper = match client.lease_keep_alive(lease).await {
            Ok(keeper) => keeper,
            Err(e) => return (format!("keep-alive stream: {e}"), true),
        };
        // A value handed over while the lease was being re-granted is written first.
        let mut pending = task.latest.has_changed().unwrap_or(false);
        loop {
            if let Err(e) = keeper.send().await {
                return (format!("keep-alive send: {e}"), true);
            }
            match tokio::time::timeout(ttl, keeper.message()).await {
                Ok(Ok(Some(resp))) if resp.ttl > 0 => {}
                Ok(Ok(Some(_))) => return ("lease expired".into(), false),
                Ok(Ok(None)) => return ("keep-alive stream closed".into(), true),
                Ok(Err(e)) => return (format!("keep-alive: {e}"), true),
                Err(_) => return ("no keep-alive answer within the TTL".into(), true),
            }
            let next_renewal = Instant::now() + ttl / 3;
            loop {
                if pending {
                    let (version, instance) = task.latest.borrow_and_update().clone();
                    match put_under(&task.conn, &task.key, &instance, lease).await {
                        Ok(()) => {
                            task.acks.send_replace(Ack::Written(version));
                            pending = false;
                        }
                        Err(e) if is_lease_not_found(&e) => {
                            return ("lease expired".into(), false);
                        }
                        Err(e) => {
                            // Retried after the next renewal.
                            task.acks.send_replace(Ack::Failed(version, e));
                            tokio::time::sleep_until(next_renewal).await;
                            break;
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep_until(next_renewal) => break,
                    changed = task.latest.changed() => match changed {
                        Ok(()) => pending = true,
                        // Every handle is gone: the task is being dropped.
                        Err(_) => std::future::pending::<()>().await,
                    },
                }
            }
        }
    }
    .await;
    if connection_failed {
        task.conn.failover(generation).await;
    }
    why
}
