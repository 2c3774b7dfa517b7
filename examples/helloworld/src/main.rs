//! The go-kratos helloworld, in Rust: a Greeter with `SayHello` served over HTTP (JSON) and
//! gRPC that registers `http://` and `grpc://` endpoints under `helloworld`, and a client that
//! resolves `discovery:///helloworld` and calls both every second.
//!
//! ```text
//! cargo run -p helloworld                                       # both, in one process, memory://
//! cargo run -p helloworld -- --registry etcd://127.0.0.1:2379 server
//! cargo run -p helloworld -- --registry etcd://127.0.0.1:2379 client
//! ```
//!
//! Only the URL changes between registries. `axum` serves the HTTP side, `tonic` the gRPC
//! side; `registry-client` gives the client its balanced channel and HTTP picker.
//!
//! The server's HTTP side also serves `GET /metrics`: the registry's metrics (registrations
//! by state, re-registrations, errors, watch staleness, watched instances; see
//! `registry_core::telemetry`) in Prometheus' text format, from `metrics-exporter-prometheus`
//! (the exporter of the `metrics` facade the core records through; only its recorder, no
//! listener of its own: axum serves the page).

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use registry::{Registry, ServiceInstance};
use registry_client::{grpc_channel, shutdown_signal, App, HttpBalancer, Options, Strategy};

/// The Greeter's gRPC code, generated from `proto/helloworld.proto` by `scripts/protogen`
/// (protox and tonic-prost-build) and checked in, so that building needs no `protoc`.
pub mod pb {
    #![allow(missing_docs, clippy::all)]
    include!("pb/helloworld.v1.rs");
}

use pb::greeter_client::GreeterClient;
use pb::greeter_server::{Greeter, GreeterServer};
use pb::{HelloReply, HelloRequest};

/// The go-kratos helloworld: server, client, or both.
#[derive(Debug, Parser)]
#[command(name = "helloworld", version)]
struct Cli {
    /// The registry URL (memory:// runs both sides in one process).
    #[arg(
        short,
        long,
        env = "REGISTRY_URL",
        default_value = "memory://",
        global = true
    )]
    registry: String,
    /// The service name.
    #[arg(long, default_value = "helloworld", global = true)]
    name: String,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the Greeter over HTTP and gRPC, registered, until SIGINT/SIGTERM.
    Server {
        /// Delay between deregistering and stopping the servers.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        drain: Duration,
        /// The instance id (default: the process id and the time). Every answer names it in
        /// an `x-served-by` header (HTTP) or response metadata entry (gRPC).
        #[arg(long)]
        id: Option<String>,
    },
    /// Call SayHello over HTTP and gRPC through discovery:///NAME.
    Client {
        /// Time between rounds of calls.
        #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
        interval: Duration,
        /// Stop after this many rounds (forever when absent).
        #[arg(long)]
        count: Option<u64>,
    },
}

/// The header (HTTP) and metadata key (gRPC) naming the instance that answered, as the
/// kratos helloworld of `interop/kratos` does too: tests tell the servers of one service
/// apart by it.
const SERVED_BY: &str = "x-served-by";

/// The Greeter of the instance `id`.
#[derive(Debug, Clone)]
struct Greet {
    id: String,
}

fn welcome(name: &str) -> String {
    format!("welcome {name}!")
}

#[tonic::async_trait]
impl Greeter for Greet {
    async fn say_hello(
        &self,
        request: tonic::Request<HelloRequest>,
    ) -> Result<tonic::Response<HelloReply>, tonic::Status> {
        let mut response = tonic::Response::new(HelloReply {
            message: welcome(&request.into_inner().name),
        });
        if let Ok(id) = self.id.parse() {
            response.metadata_mut().insert(SERVED_BY, id);
        }
        Ok(response)
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Reply {
    message: String,
}

async fn http_say_hello(
    axum::extract::State(greet): axum::extract::State<Greet>,
    axum::extract::Path(name): axum::extract::Path<String>,
) -> ([(&'static str, String); 1], axum::Json<Reply>) {
    (
        [(SERVED_BY, greet.id)],
        axum::Json(Reply {
            message: welcome(&name),
        }),
    )
}

type Failure = Box<dyn std::error::Error + Send + Sync>;

/// The Prometheus recorder's handle, rendered by `GET /metrics`.
static METRICS: std::sync::OnceLock<Option<PrometheusHandle>> = std::sync::OnceLock::new();

/// `GET /metrics`: every metric in Prometheus' text format.
async fn metrics_page() -> String {
    METRICS
        .get()
        .and_then(Option::as_ref)
        .map(PrometheusHandle::render)
        .unwrap_or_default()
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,nacos_sdk=warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            registry::telemetry::describe();
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "no metrics recorder; /metrics is empty");
            None
        }
    };
    if let Some(handle) = &metrics {
        // The exporter's histograms need an upkeep now and then; the gauges and counters here
        // do not, but a recorder left without it grows.
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(5)).await;
                handle.run_upkeep();
            }
        });
    }
    let _ = METRICS.set(metrics);
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("helloworld: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let registry = registry::connect(&cli.registry).await?;
    match cli.command {
        Some(Command::Server { drain, id }) => {
            serve(
                registry,
                cli.name.clone(),
                id,
                drain,
                std::future::pending(),
            )
            .await
        }
        Some(Command::Client { interval, count }) => {
            tokio::select! {
                called = call(registry, &cli.name, interval, count) => called,
                _ = stopping() => Ok(()),
            }
        }
        None => {
            // Both sides in one process. On SIGINT/SIGTERM the client stops first; the
            // server, told by the same signal, deregisters and stops.
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let server = tokio::spawn(serve(
                registry.clone(),
                cli.name.clone(),
                None,
                Duration::ZERO,
                async {
                    let _ = stopped.await;
                },
            ));
            let called = tokio::select! {
                called = call(registry, &cli.name, Duration::from_secs(1), None) => called,
                _ = stopping() => Ok(()),
            };
            let _ = stop.send(());
            server.await??;
            called
        }
    }
}

/// Resolves on the first SIGINT/SIGTERM; a second one ends the process at once, should the
/// graceful stop hang.
async fn stopping() {
    shutdown_signal().await;
    tokio::spawn(async {
        shutdown_signal().await;
        eprintln!("helloworld: second signal; exiting now");
        std::process::exit(130);
    });
}

/// Serves HTTP and gRPC on free loopback ports, registers them, runs until the signal.
async fn serve(
    registry: Arc<dyn Registry>,
    name: String,
    id: Option<String>,
    drain: Duration,
    until: impl Future<Output = ()>,
) -> Result<(), Failure> {
    let app = App::new(registry).drain(drain);
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let http_addr = http.local_addr()?;
    let grpc_addr = grpc.local_addr()?;

    let id = id.unwrap_or_else(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        format!("{}-{nanos:x}", std::process::id())
    });
    let greet = Greet { id: id.clone() };

    let mut stop = app.stop_signal();
    let router = axum::Router::new()
        .route("/helloworld/{name}", axum::routing::get(http_say_hello))
        .route("/metrics", axum::routing::get(metrics_page))
        .with_state(greet.clone());
    let http_server = tokio::spawn(async move {
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(e) = axum::serve(http, router)
            .with_graceful_shutdown(stopping)
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    let mut stop = app.stop_signal();
    let grpc_server = tokio::spawn(async move {
        let stopping = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(grpc);
        if let Err(e) = tonic::transport::Server::builder()
            .add_service(GreeterServer::new(greet))
            .serve_with_incoming_shutdown(incoming, stopping)
            .await
        {
            tracing::error!(error = %e, "gRPC server failed");
        }
    });

    let instance = ServiceInstance::builder(id, name.as_str())
        .version("v1")
        .endpoint(format!("http://{http_addr}"))
        .endpoint(format!("grpc://{grpc_addr}?isSecure=false"))
        .build()?;
    println!("serving {name} on http://{http_addr} and grpc://{grpc_addr}");
    app.run(instance, vec![http_server, grpc_server], until)
        .await?;
    println!("stopped");
    Ok(())
}

/// Calls SayHello over HTTP and gRPC every `interval`, printing each outcome.
async fn call(
    registry: Arc<dyn Registry>,
    name: &str,
    interval: Duration,
    count: Option<u64>,
) -> Result<(), Failure> {
    let target = format!("discovery:///{name}");
    let options = Options::default().with_first_list_timeout(Duration::from_secs(10));
    let channel = grpc_channel(registry.clone(), &target, options.clone()).await?;
    let mut greeter = GreeterClient::new(channel.channel());
    let http = HttpBalancer::new(registry, &target, options, Strategy::RoundRobin).await?;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()?;
    let mut round = 0u64;
    loop {
        match http.pick() {
            Ok(picked) => {
                let url = picked.url().join("/helloworld/go-kratos")?;
                match client.get(url).send().await {
                    Ok(response) => {
                        let served_by = response
                            .headers()
                            .get(SERVED_BY)
                            .and_then(|v| v.to_str().ok())
                            .map(str::to_owned);
                        match response.json::<Reply>().await {
                            Ok(reply) => {
                                println!("[http] SayHello {}", reply.message);
                                if let Some(id) = served_by {
                                    println!("[http] served-by {id}");
                                }
                            }
                            Err(e) => println!("[http] error: {e}"),
                        }
                    }
                    Err(e) => println!("[http] error: {e}"),
                }
            }
            Err(e) => println!("[http] error: {e}"),
        }
        // The balanced channel fails fast, as the HTTP picker does, when there is no instance.
        let call = greeter.say_hello(HelloRequest {
            name: "go-kratos".into(),
        });
        match tokio::time::timeout(Duration::from_secs(3), call).await {
            Ok(Ok(reply)) => {
                let served_by = reply
                    .metadata()
                    .get(SERVED_BY)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned);
                println!("[grpc] SayHello {}", reply.into_inner().message);
                if let Some(id) = served_by {
                    println!("[grpc] served-by {id}");
                }
            }
            Ok(Err(status)) => println!("[grpc] error: {}", status.message()),
            Err(_) => println!("[grpc] error: no answer within 3s"),
        }
        round += 1;
        if count.is_some_and(|c| round >= c) {
            return Ok(());
        }
        tokio::time::sleep(interval).await;
    }
}
