//! `registryctl`: list services and instances, watch a service, register an instance and hold
//! it until Ctrl-C, or deregister one, in any registry named by a URL; and, for a migration
//! from one registry to another, compare two registries (`diff`) and keep copies of one's
//! instances in the other (`mirror`).
//!
//! ```text
//! registryctl --registry etcd://127.0.0.1:2379 instances helloworld
//! REGISTRY_URL=consul://127.0.0.1:8500 registryctl --json watch helloworld
//! registryctl -r zk://127.0.0.1:2181 register --name helloworld --id 1 --endpoint grpc://127.0.0.1:9000
//! registryctl diff etcd://127.0.0.1:2379/microservices consul://127.0.0.1:8500
//! registryctl mirror etcd://127.0.0.1:2379/microservices consul://127.0.0.1:8500
//! ```
//!
//! Built on `clap` (derive) for the command line, `humantime` for its durations; every
//! backend is compiled in (`full`).

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use registry::{Registry, ServiceInstance, WatchEvent};

mod diff;
mod mirror;

/// List, watch, register and deregister service instances in any registry.
#[derive(Debug, Parser)]
#[command(name = "registryctl", version)]
struct Cli {
    /// The registry URL: memory://, etcd://, consul://, zk://, nacos://
    #[arg(
        short,
        long,
        env = "REGISTRY_URL",
        default_value = "memory://",
        global = true
    )]
    registry: String,
    /// Print JSON (one document, or one line per change for `watch`) instead of tables.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List the services that have instances (where the backend can).
    Services,
    /// List a service's instances.
    Instances {
        /// The service name.
        name: String,
    },
    /// Print a service's instances, then the whole list again after each change, until Ctrl-C.
    Watch {
        /// The service name.
        name: String,
    },
    /// Register an instance and hold it until Ctrl-C (or SIGTERM), then deregister it.
    Register {
        /// The service name.
        #[arg(long)]
        name: String,
        /// The instance id.
        #[arg(long)]
        id: String,
        /// The version.
        #[arg(long, default_value = "")]
        version: String,
        /// An endpoint URL, such as grpc://127.0.0.1:9000 (repeatable).
        #[arg(long = "endpoint", required = true)]
        endpoints: Vec<String>,
        /// Metadata as key=value (repeatable).
        #[arg(long = "meta", value_parser = key_value)]
        metadata: Vec<(String, String)>,
    },
    /// Deregister an instance.
    Deregister {
        /// The service name.
        #[arg(long)]
        name: String,
        /// The instance id.
        #[arg(long)]
        id: String,
    },
    /// Compare two registries: the instances one lists and the other does not, and those
    /// both list with different values. Exit code 0 when they agree, 1 when they differ.
    Diff {
        /// The first registry's URL.
        a: String,
        /// The second registry's URL.
        b: String,
        /// Compare this service only (default: every service either names).
        service: Option<String>,
    },
    /// Keep copies of one registry's instances in another for the time of a migration,
    /// marked as copies (metadata registryctl-mirror), until Ctrl-C or SIGTERM removes them.
    Mirror {
        /// The registry copied from.
        from: String,
        /// The registry copied into.
        to: String,
        /// The services to mirror (default: every service of the source, listed again every
        /// --rescan).
        services: Vec<String>,
        /// How long an instance is listed in the source before it is copied (a service that
        /// registers in both, through a multi: URL, shows in the target first).
        #[arg(long, default_value = "3s", value_parser = duration)]
        grace: Duration,
        /// How often the source's services are listed again.
        #[arg(long, default_value = "10s", value_parser = duration)]
        rescan: Duration,
    },
}

fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?}: {e}"))
}

fn key_value(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("{text:?} is not key=value")),
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("registryctl: {e}");
            if e.is_temporary() {
                eprintln!("(a temporary failure: is the registry up and reachable?)");
            }
            ExitCode::from(if e.is_temporary() { 3 } else { 2 })
        }
    }
}

async fn run(cli: Cli) -> registry::Result<ExitCode> {
    match cli.command {
        Command::Diff { a, b, service } => {
            let (first, second) = tokio::join!(registry::connect(&a), registry::connect(&b));
            let (first, second) = (first?, second?);
            let found = diff::diff(first.as_ref(), second.as_ref(), service.as_deref()).await?;
            diff::print(&found, &shown(&a), &shown(&b), cli.json);
            return Ok(if found.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Mirror {
            from,
            to,
            services,
            grace,
            rescan,
        } => {
            let (source, target) = tokio::join!(registry::connect(&from), registry::connect(&to));
            let (source, target): (Arc<dyn Registry>, Arc<dyn Registry>) = (source?, target?);
            mirror::mirror(
                source,
                target,
                (shown(&from), shown(&to)),
                services,
                mirror::Options { grace, rescan },
                shutdown(),
            )
            .await?;
            return Ok(ExitCode::SUCCESS);
        }
        _ => {}
    }
    let registry = registry::connect(&cli.registry).await?;
    match cli.command {
        Command::Diff { .. } | Command::Mirror { .. } => {}
        Command::Services => {
            let services = registry.list_services().await?;
            if cli.json {
                println!("{}", serde_json::Value::from(services));
            } else {
                for service in services {
                    println!("{service}");
                }
            }
        }
        Command::Instances { name } => print_list(&registry.get_service(&name).await?, cli.json),
        Command::Watch { name } => {
            let mut watcher = registry.watch(&name).await?;
            loop {
                tokio::select! {
                    event = watcher.next_event() => match event? {
                        WatchEvent::Changed(list) => {
                            if !cli.json {
                                println!("-- {name}: {} instance(s)", list.len());
                            }
                            print_list(&list, cli.json);
                        }
                        // Outages go to stderr: stdout stays one list per line with --json.
                        WatchEvent::Degraded(error) => {
                            eprintln!("-- {name}: registry unreachable ({error}); the last list stands");
                        }
                        WatchEvent::Recovered => eprintln!("-- {name}: following the registry again"),
                        _ => {}
                    },
                    _ = shutdown() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
        Command::Register {
            name,
            id,
            version,
            endpoints,
            metadata,
        } => {
            let mut builder = ServiceInstance::builder(id, name).version(version);
            for endpoint in endpoints {
                builder = builder.endpoint(endpoint);
            }
            for (key, value) in metadata {
                builder = builder.metadata(key, value);
            }
            let instance = builder.build()?;
            registry.register(&instance).await?;
            println!("registered {} {}", instance.name, instance.id);
            shutdown().await;
            deregister(&*registry, &instance).await?;
            println!("deregistered {} {}", instance.name, instance.id);
        }
        Command::Deregister { name, id } => {
            let instance = ServiceInstance {
                id,
                name,
                ..ServiceInstance::default()
            };
            deregister(&*registry, &instance).await?;
            println!("deregistered {} {}", instance.name, instance.id);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A registry URL as it may be shown: passwords and secret options redacted.
fn shown(url: &str) -> String {
    if registry::multi::is_multi(url) {
        return registry::multi::MultiConfig::from_url(url)
            .map(|c| c.redacted())
            .unwrap_or_else(|_| "multi:…".into());
    }
    registry::RegistryUrl::parse(url)
        .map(|u| u.redacted().to_owned())
        .unwrap_or_else(|_| "(not shown)".into())
}

async fn deregister(registry: &dyn Registry, instance: &ServiceInstance) -> registry::Result<()> {
    registry.deregister(instance).await
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_list(list: &[ServiceInstance], json: bool) {
    if json {
        let values: Vec<serde_json::Value> = list
            .iter()
            .filter_map(|i| serde_json::from_str(&i.to_json()).ok())
            .collect();
        println!("{}", serde_json::Value::from(values));
        return;
    }
    let rows: Vec<[String; 4]> = list
        .iter()
        .map(|i| {
            let meta: BTreeMap<_, _> = i.metadata.iter().collect();
            let meta: Vec<String> = meta.iter().map(|(k, v)| format!("{k}={v}")).collect();
            [
                i.id.clone(),
                i.version.clone(),
                i.endpoints.join(" "),
                meta.join(","),
            ]
        })
        .collect();
    let header = ["ID", "VERSION", "ENDPOINTS", "METADATA"].map(str::to_owned);
    let mut widths = header.clone().map(|h| h.len());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", cells.join("  ").trim_end());
    }
}
