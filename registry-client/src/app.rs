//! A service's lifecycle, in the spirit of `kratos.New(...).Run()`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use registry_core::{Registrar, ServiceInstance};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::ClientError;

/// Runs a service: its servers are already listening (so the endpoints registered are the
/// bound addresses); the instance is registered, and on the shutdown signal (SIGINT/SIGTERM,
/// or the future given) it is deregistered first, then a drain delay lets clients move away,
/// then the servers are told to stop gracefully and awaited.
///
/// ```no_run
/// # async fn run(registry: std::sync::Arc<dyn registry_core::Registry>) -> Result<(), registry_client::ClientError> {
/// use std::time::Duration;
/// use registry_client::App;
/// use registry_core::ServiceInstance;
///
/// let app = App::new(registry).drain(Duration::from_secs(1));
/// let stop = app.stop_signal(); // servers shut down gracefully when it fires
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
/// let endpoint = format!("http://{}", listener.local_addr().expect("address"));
/// let server = tokio::spawn(async move {
///     let mut stop = stop;
///     let _ = stop.wait_for(|s| *s).await; // serve until then
/// });
/// let instance = ServiceInstance::builder("1", "helloworld").endpoint(endpoint).build()?;
/// app.run(instance, vec![server], std::future::pending::<()>()).await
/// # }
/// ```
pub struct App {
    registrar: Arc<dyn Registrar>,
    drain: Duration,
    stop: watch::Sender<bool>,
}

impl App {
    /// An app registering through `registrar`, with a drain delay of 1 s.
    pub fn new(registrar: Arc<dyn Registrar>) -> App {
        App {
            registrar,
            drain: Duration::from_secs(1),
            stop: watch::Sender::new(false),
        }
    }

    /// Sets the delay between deregistering and stopping the servers.
    pub fn drain(mut self, drain: Duration) -> App {
        self.drain = drain;
        self
    }

    /// Becomes true when the servers are to stop; give one to each server.
    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Registers `instance`, waits for SIGINT, SIGTERM or `until`, then deregisters, drains,
    /// stops the servers and awaits them. A server that ends early also ends the run.
    pub async fn run(
        self,
        instance: ServiceInstance,
        mut servers: Vec<JoinHandle<()>>,
        until: impl Future<Output = ()>,
    ) -> Result<(), ClientError> {
        self.registrar.register(&instance).await?;
        tracing::info!(service = %instance.name, id = %instance.id, endpoints = ?instance.endpoints, "registered");
        let ended = tokio::select! {
            _ = until => None,
            _ = shutdown_signal() => None,
            index = first_ended(&mut servers) => Some(index),
        };
        if let Some(index) = ended {
            tracing::warn!(index, "a server ended; stopping");
            // Its handle has completed: awaiting it again below would panic.
            drop(servers.swap_remove(index));
        }
        let deregistered = self.registrar.deregister(&instance).await;
        tracing::info!(service = %instance.name, id = %instance.id, "deregistered; draining");
        tokio::time::sleep(self.drain).await;
        self.stop.send_replace(true);
        for server in servers {
            let _ = server.await;
        }
        deregistered.map_err(ClientError::from)
    }
}

/// Resolves with the index of the first server task that ends (never, when there is none).
async fn first_ended(servers: &mut [JoinHandle<()>]) -> usize {
    std::future::poll_fn(|cx| {
        for (i, server) in servers.iter_mut().enumerate() {
            if std::pin::Pin::new(server).poll(cx).is_ready() {
                return std::task::Poll::Ready(i);
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM: the signals [`App::run`] stops on, for the parts
/// of a program that run beside it (a client loop) and must stop on them too.
///
/// ```no_run
/// # async fn work() {}
/// # async fn run() {
/// tokio::select! {
///     _ = work() => {}
///     _ = registry_client::shutdown_signal() => println!("stopping"),
/// }
/// # }
/// ```
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}
