//! The ZooKeeper session: one client at a time; when its session ends (expired, or the
//! server lost it with its data) a new one is made, with back-off that never gives up. The
//! core's supervisor then creates every registration again in it (each registration's hold
//! sees its session end).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use registry_core::{Backoff, Error, Result};
use tokio::sync::watch;
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, SessionState};

use crate::Config;

/// The session shared by a registry's calls, watches and background task.
pub(crate) struct Zk {
    pub(crate) config: Config,
    /// The client of the live session; `None` while a new one is being made.
    pub(crate) current: watch::Sender<Option<Client>>,
    /// Every session this registry had: a node owned by one of them is ours to replace.
    sessions: Mutex<HashSet<i64>>,
}

impl Zk {
    /// Connects a first session.
    pub(crate) async fn connect(config: Config) -> Result<Arc<Zk>> {
        let client = new_client(&config).await?;
        let zk = Zk {
            config,
            current: watch::Sender::new(None),
            sessions: Mutex::default(),
        };
        zk.install(client);
        Ok(Arc::new(zk))
    }

    fn sessions(&self) -> MutexGuard<'_, HashSet<i64>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn install(&self, client: Client) {
        self.sessions().insert(client.session_id().0);
        self.current.send_replace(Some(client));
    }

    /// Counts `session` as one this registry had.
    pub(crate) fn adopt(&self, session: i64) {
        self.sessions().insert(session);
    }

    /// Whether `session` is one this registry had.
    pub(crate) fn is_ours(&self, session: i64) -> bool {
        self.sessions().contains(&session)
    }

    /// The client of the live session, waiting up to the connect timeout while a new session
    /// is being made.
    pub(crate) async fn client(&self) -> Result<Client> {
        let mut current = self.current.subscribe();
        let waited = tokio::time::timeout(
            self.config.connect_timeout,
            current.wait_for(Option::is_some),
        )
        .await;
        match waited {
            Ok(Ok(client)) => client.clone().ok_or(Error::Closed),
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => Err(Error::Unavailable {
                message: "ZooKeeper session is being re-established".into(),
                source: None,
            }),
        }
    }

    /// The ACLs of what we create: the digest user's only, or open.
    pub(crate) fn acls(&self) -> Acls<'static> {
        if self.config.digest.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }

    /// Options to create an ephemeral node.
    pub(crate) fn ephemeral(&self) -> CreateOptions<'static> {
        CreateMode::Ephemeral.with_acls(self.acls())
    }

    /// Options to create a persistent parent.
    pub(crate) fn persistent(&self) -> CreateOptions<'static> {
        CreateMode::Persistent.with_acls(self.acls())
    }
}

/// Connects a new session.
async fn new_client(config: &Config) -> Result<Client> {
    let mut connector = Client::connector()
        .with_session_timeout(config.session_timeout)
        .with_connection_timeout(config.connect_timeout);
    if let Some(digest) = &config.digest {
        let secret = format!("{}:{}", digest.user, digest.password.expose());
        connector = connector.with_auth("digest", secret.as_bytes());
    }
    let cluster = config.cluster();
    // The connector retries servers on its own; bound the whole attempt.
    let connecting = connector.connect(&cluster);
    let within = config.connect_timeout.saturating_mul(2);
    match tokio::time::timeout(within, connecting).await {
        Ok(Ok(client)) => Ok(client),
        Ok(Err(e)) => Err(crate::error::map_err("connect", e)),
        Err(_) => Err(Error::Timeout {
            operation: "connect",
            after: within,
        }),
    }
}

/// The registry's background task: waits for the session to end and makes a new one.
/// Returns when the session was closed on purpose.
pub(crate) async fn supervise(zk: Arc<Zk>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let Some(client) = zk.current.borrow().clone() else {
            return;
        };
        let mut states = client.state_watcher();
        // The session may have ended already (while its registrations were being created):
        // a terminal state is delivered once, and `changed()` would then wait forever.
        let now = states.state();
        let ended = if now.is_terminated() {
            now
        } else {
            loop {
                let state = states.changed().await;
                if state.is_terminated() {
                    break state;
                }
            }
        };
        drop(client);
        if ended == SessionState::Closed {
            return;
        }
        tracing::warn!(state = ?ended, "ZooKeeper session ended; making a new one");
        zk.current.send_replace(None);
        let mut attempt = 0u32;
        let client = loop {
            match new_client(&zk.config).await {
                Ok(client) => break client,
                Err(e) => {
                    attempt += 1;
                    let delay = backoff.delay();
                    tracing::warn!(attempt, error = %e, retry_in = ?delay, "ZooKeeper reconnect failed");
                    tokio::time::sleep(delay).await;
                }
            }
        };
        backoff.reset();
        tracing::info!(session = %client.session_id(), "ZooKeeper session established");
        zk.install(client);
    }
}
