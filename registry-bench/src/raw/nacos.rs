//! Nacos through `nacos-sdk`'s `NamingService`: a registration is one `register_instance` of
//! the ephemeral Nacos instance our backend writes for a one-endpoint instance (service
//! `{name}.grpc`, its address, the metadata plus `kind`, `version`, `instance_id`, ...), an
//! update the same call again, a deregistration one `deregister_instance`; a list is one
//! `select_instances` (healthy, not subscribed: a server read); a watch is `select_instances`
//! with a subscription, then a listener. Bulk data goes with `batch_register_instance`, in
//! batches of [`BATCH`] on connections of their own (a batch replaces what its connection
//! registered in the service before), held by a child process (`registry-bench nacos-bulk
//! SERVER NAMESPACE CACHE_DIR`, the instances as one JSON line on its standard input): nacos-sdk
//! cannot close a connection, rnacos refuses an empty batch, and one deregistration per
//! instance would take minutes, so the bulk is deleted by killing that process (Nacos drops
//! a closed connection's ephemeral instances), and its clients add no work to the measuring
//! process.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use nacos_sdk::api::naming::{
    NamingChangeEvent, NamingEventListener, NamingService, NamingServiceBuilder,
    ServiceInstance as NacosInstance,
};
use nacos_sdk::api::props::ClientProps;
use registry::ServiceInstance;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, watch};

use super::{publish, AbortOnDrop, Follow, Raw, Writer};
use crate::model::host_port;

/// Instances per bulk batch (one gRPC message each).
pub const BATCH: usize = 2_000;
/// Bulk connections registering at once.
const BULK_CONCURRENCY: usize = 4;
/// How long one nacos-sdk call may take (it sets no deadline of its own).
const TIMEOUT: Duration = Duration::from_secs(120);
const GROUP: &str = "DEFAULT_GROUP";

/// nacos-sdk's naming client in our namespace.
pub struct NacosRaw {
    naming: NamingService,
    server: String,
    namespace: String,
    cache_dir: PathBuf,
    /// The processes holding each service's bulk instances.
    bulk: Mutex<HashMap<String, Vec<Child>>>,
}

async fn timed<T>(
    what: &str,
    call: impl std::future::Future<Output = nacos_sdk::api::error::Result<T>>,
) -> Result<T> {
    tokio::time::timeout(TIMEOUT, call)
        .await
        .with_context(|| format!("nacos {what}: no answer within {TIMEOUT:?}"))?
        .with_context(|| format!("nacos {what}"))
}

/// A new naming client (a gRPC connection of its own), with a cache directory of its own
/// under `cache_dir` (nacos-sdk's cache writes race when clients share one).
async fn connect(server: &str, namespace: &str, cache_dir: &Path) -> Result<NamingService> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let cache_dir = cache_dir.join(NEXT.fetch_add(1, Ordering::Relaxed).to_string());
    std::fs::create_dir_all(&cache_dir)
        .with_context(|| format!("create {}", cache_dir.display()))?;
    let props = ClientProps::new()
        .server_addr(server)
        .namespace(namespace)
        .app_name("registry-bench")
        .env_first(false)
        .naming_push_empty_protection(false)
        .naming_load_cache_at_start(false)
        .cache_dir(cache_dir);
    timed("connect", NamingServiceBuilder::new(props).build()).await
}

/// FNV-1a of a text, as our backend digests an instance's JSON.
fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016x}")
}

/// The Nacos service and instance our backend writes for a one-endpoint `grpc` instance.
fn to_nacos(instance: &ServiceInstance) -> Result<(String, NacosInstance)> {
    let (ip, port) = host_port(instance)?;
    let mut metadata: HashMap<String, String> = instance.metadata.clone().into_iter().collect();
    let pieces = [
        ("kind", "grpc".to_owned()),
        ("version", instance.version.clone()),
        ("instance_id", instance.id.clone()),
        (
            "endpoint",
            instance.endpoints.first().cloned().unwrap_or_default(),
        ),
        ("endpoint_index", "0".to_owned()),
        ("endpoint_count", "1".to_owned()),
        ("instance_digest", digest(&instance.to_json())),
    ];
    for (key, value) in pieces {
        metadata.insert(key.to_owned(), value);
    }
    let nacos = NacosInstance {
        ip,
        port: i32::from(port),
        weight: 100.0,
        cluster_name: Some("DEFAULT".to_owned()),
        ephemeral: true,
        healthy: true,
        enabled: true,
        metadata,
        ..NacosInstance::default()
    };
    Ok((format!("{}.grpc", instance.name), nacos))
}

fn ids(list: &[NacosInstance]) -> impl Iterator<Item = (&str, Option<&String>)> {
    list.iter().filter_map(|i| {
        let id = i.metadata.get("instance_id")?;
        Some((id.as_str(), i.metadata.get("seq")))
    })
}

/// Forwards nacos-sdk's pushes to a task.
struct Forward(mpsc::UnboundedSender<Arc<NamingChangeEvent>>);

impl NamingEventListener for Forward {
    fn event(&self, event: Arc<NamingChangeEvent>) {
        let _ = self.0.send(event);
    }
}

impl NacosRaw {
    /// Connects to `server` (`127.0.0.1:8848`) in `namespace`, caching under `cache_dir`.
    pub async fn connect(server: &str, namespace: &str, cache_dir: &Path) -> Result<NacosRaw> {
        Ok(NacosRaw {
            naming: connect(server, namespace, cache_dir).await?,
            server: server.to_owned(),
            namespace: namespace.to_owned(),
            cache_dir: cache_dir.to_owned(),
            bulk: Mutex::new(HashMap::new()),
        })
    }

    fn bulk(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<Child>>> {
        self.bulk.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Writer for NacosRaw {
    async fn bulk_write(&self, _service: &str, instances: &[ServiceInstance]) -> Result<()> {
        let Some(first) = instances.first() else {
            return Ok(());
        };
        let exe = std::env::current_exe().context("this program's path")?;
        let mut child = Command::new(&exe)
            .args(["nacos-bulk", &self.server, &self.namespace])
            .arg(&self.cache_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("spawn {} nacos-bulk", exe.display()))?;
        let mut line = serde_json::to_vec(instances).context("the bulk instances' JSON")?;
        line.push(b'\n');
        let stdin = child.stdin.as_mut().context("the bulk process' stdin")?;
        stdin
            .write_all(&line)
            .await
            .context("write to the bulk process")?;
        stdin.flush().await.context("write to the bulk process")?;
        let stdout = child.stdout.take().context("the bulk process' stdout")?;
        let answer = tokio::time::timeout(TIMEOUT * 5, BufReader::new(stdout).lines().next_line())
            .await
            .context("the bulk process did not answer in time")?
            .context("read the bulk process' answer")?;
        if answer.as_deref() != Some("registered") {
            let _ = child.kill().await;
            anyhow::bail!(
                "the bulk process said {answer:?}, not \"registered\" (its error is above)"
            );
        }
        self.bulk()
            .entry(first.name.clone())
            .or_default()
            .push(child);
        Ok(())
    }

    async fn put(&self, instance: &ServiceInstance) -> Result<()> {
        let (service, nacos) = to_nacos(instance)?;
        let call = self
            .naming
            .register_instance(service, Some(GROUP.to_owned()), nacos);
        timed("register", call).await
    }

    async fn bulk_delete(&self, service: &str) -> Result<()> {
        let children = self.bulk().remove(service).unwrap_or_default();
        for mut child in children {
            child.kill().await.context("kill the bulk process")?;
        }
        Ok(())
    }

    async fn cleanup(&self) -> Result<()> {
        let services: Vec<String> = self.bulk().keys().cloned().collect();
        for service in services {
            self.bulk_delete(&service).await?;
        }
        Ok(())
    }
}

/// The bulk process: reads the instances (one JSON line) from standard input, registers
/// them in batches of [`BATCH`] on connections of its own (nacos-sdk caching under
/// `cache_dir`, which the parent deletes), says `registered`, and holds them until standard
/// input closes or it is killed.
pub async fn run_bulk(server: &str, namespace: &str, cache_dir: &Path) -> Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let line = lines
        .next_line()
        .await?
        .context("no instances on standard input")?;
    let instances: Vec<ServiceInstance> =
        serde_json::from_str(&line).context("the instances' JSON")?;
    let mut batches = Vec::new();
    for chunk in instances.chunks(BATCH) {
        let (service, _) = to_nacos(&chunk[0])?;
        let batch: Vec<NacosInstance> = chunk
            .iter()
            .map(|i| to_nacos(i).map(|(_, n)| n))
            .collect::<Result<_>>()?;
        batches.push((service, batch));
    }
    let cache_dir = &cache_dir.join(format!("bulk-{}", std::process::id()));
    let _connections: Vec<NamingService> = futures::stream::iter(batches)
        .map(|(service, batch)| async move {
            let naming = connect(server, namespace, cache_dir).await?;
            let call = naming.batch_register_instance(service, Some(GROUP.to_owned()), batch);
            timed("batch register", call).await?;
            Ok::<_, anyhow::Error>(naming)
        })
        .buffer_unordered(BULK_CONCURRENCY)
        .try_collect()
        .await?;
    println!("registered");
    while lines.next_line().await?.is_some() {}
    Ok(())
}

#[async_trait]
impl Raw for NacosRaw {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        self.put(instance).await
    }

    async fn update(&self, instance: &ServiceInstance) -> Result<()> {
        self.put(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        let (service, nacos) = to_nacos(instance)?;
        let call = self
            .naming
            .deregister_instance(service, Some(GROUP.to_owned()), nacos);
        timed("deregister", call).await
    }

    async fn get(&self, service: &str) -> Result<usize> {
        let call = self.naming.select_instances(
            format!("{service}.grpc"),
            Some(GROUP.to_owned()),
            Vec::new(),
            false,
            true,
        );
        Ok(timed("select_instances", call).await?.len())
    }

    async fn watch(&self, service: &str, target: &str) -> Result<Follow> {
        let nacos_service = format!("{service}.grpc");
        let call = self.naming.select_instances(
            nacos_service.clone(),
            Some(GROUP.to_owned()),
            Vec::new(),
            true,
            true,
        );
        let list = timed("select_instances (subscribed)", call).await?;
        let (tx, seen) = watch::channel(0);
        publish(&tx, target, ids(&list));
        let (events, mut rx) = mpsc::unbounded_channel();
        let call = self.naming.subscribe(
            nacos_service,
            Some(GROUP.to_owned()),
            Vec::new(),
            Arc::new(Forward(events)),
        );
        timed("subscribe", call).await?;
        let target = target.to_owned();
        let task = tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                if let Some(list) = &event.instances {
                    publish(&tx, &target, ids(list));
                }
            }
        });
        Ok(Follow {
            first_len: list.len(),
            seen,
            _task: AbortOnDrop(task),
        })
    }

    async fn fresh(&self) -> Result<Arc<dyn Raw>> {
        Ok(Arc::new(
            NacosRaw::connect(&self.server, &self.namespace, &self.cache_dir).await?,
        ))
    }
}
