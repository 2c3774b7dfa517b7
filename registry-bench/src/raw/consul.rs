//! Consul through its HTTP API with `reqwest`: a registration is one agent service register
//! with a TTL check (our backend's body), an update the same call again, a deregistration
//! one agent deregister; a list is one `GET /v1/health/service/:name?passing` decoded with
//! serde; a watch is that read, then a loop of blocking queries from its `X-Consul-Index`,
//! with no pause between them. Bulk data goes straight to the catalog, on a node of its own
//! per service, with `/v1/txn` (64 operations per transaction, Consul's limit).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use registry::ServiceInstance;
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{publish, AbortOnDrop, Follow, Raw, Writer};
use crate::model::host_port;

/// Operations per transaction (Consul's limit).
const TXN_OPS: usize = 64;
/// Transactions in flight at once (Consul allows 200 connections per client address).
const TXN_CONCURRENCY: usize = 16;
/// How long one blocking query waits for a change.
const WAIT: Duration = Duration::from_secs(60);
/// How long a plain request may take.
const TIMEOUT: Duration = Duration::from_secs(120);

/// One entry of `GET /v1/health/service/:name`, as a raw user decodes it.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    service: Service,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
#[allow(dead_code)]
struct Service {
    #[serde(rename = "ID")]
    id: String,
    service: String,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<HashMap<String, String>>,
    #[serde(default)]
    address: String,
    #[serde(default)]
    port: u16,
    #[serde(default)]
    tagged_addresses: Option<HashMap<String, Value>>,
}

/// Consul's HTTP API.
pub struct ConsulRaw {
    http: reqwest::Client,
    base: String,
    /// Everything this run writes starts with it (service names, nodes).
    run_prefix: String,
    ttl: Duration,
}

/// The service part of an agent registration (`name_key` `Name`) or a catalog entry
/// (`Service`), in our backend's shape.
fn service_body(instance: &ServiceInstance, name_key: &str) -> Result<Value> {
    let (host, port) = host_port(instance)?;
    let endpoint = instance.endpoints.first().cloned().unwrap_or_default();
    let mut body = json!({
        "ID": instance.id,
        "Tags": [format!("version={}", instance.version)],
        "Address": host,
        "Port": port,
        "Meta": instance.metadata,
        "TaggedAddresses": {"grpc": {"Address": endpoint, "Port": port}},
    });
    body[name_key] = json!(instance.name);
    Ok(body)
}

/// The node a service's bulk entries are on.
fn node_of(service: &str) -> String {
    format!("{service}-node")
}

async fn check(
    response: reqwest::Result<reqwest::Response>,
    what: &str,
) -> Result<reqwest::Response> {
    let response = response.with_context(|| what.to_owned())?;
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.text().await.unwrap_or_default();
    bail!("{what}: {status}: {}", body.trim())
}

impl ConsulRaw {
    /// The agent at `address` (`127.0.0.1:8500`); TTL checks of `ttl`; everything written
    /// starts with `run_prefix`.
    pub fn new(address: &str, run_prefix: &str, ttl: Duration) -> Result<ConsulRaw> {
        let http = reqwest::Client::builder()
            .build()
            .context("reqwest client")?;
        Ok(ConsulRaw {
            http,
            base: format!("http://{address}"),
            run_prefix: run_prefix.to_owned(),
            ttl,
        })
    }

    async fn txn(&self, ops: Vec<Value>) -> Result<()> {
        let response = self
            .http
            .put(format!("{}/v1/txn", self.base))
            .timeout(TIMEOUT)
            .json(&ops)
            .send()
            .await;
        check(response, "consul txn").await.map(drop)
    }

    /// One health read: the decoded entries and the index; a blocking query from `index`.
    async fn health(
        http: &reqwest::Client,
        base: &str,
        service: &str,
        index: Option<u64>,
    ) -> Result<(Vec<HealthEntry>, u64)> {
        let mut request = http
            .get(format!("{base}/v1/health/service/{service}"))
            .query(&[("passing", "true")]);
        request = match index {
            Some(index) => request
                .query(&[
                    ("index", index.to_string()),
                    ("wait", format!("{}s", WAIT.as_secs())),
                ])
                .timeout(WAIT * 2),
            None => request.timeout(TIMEOUT),
        };
        let response = check(request.send().await, "consul health").await?;
        let index = response
            .headers()
            .get("X-Consul-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .context("consul health answer without X-Consul-Index")?;
        let bytes = response.bytes().await.context("consul health body")?;
        let entries = serde_json::from_slice(&bytes).context("decode consul health")?;
        Ok((entries, index))
    }
}

fn ids(entries: &[HealthEntry]) -> impl Iterator<Item = (&str, Option<&String>)> {
    entries.iter().map(|e| {
        (
            e.service.id.as_str(),
            e.service.meta.as_ref().and_then(|m| m.get("seq")),
        )
    })
}

#[async_trait]
impl Writer for ConsulRaw {
    async fn prepare(&self, service: &str) -> Result<()> {
        self.txn(vec![json!({"Node": {"Verb": "set", "Node": {
            "Node": node_of(service), "Address": "127.0.0.1"}}})])
            .await
    }

    async fn bulk_write(&self, service: &str, instances: &[ServiceInstance]) -> Result<()> {
        self.prepare(service).await?;
        let node = node_of(service);
        let ops: Vec<Value> = instances
            .iter()
            .map(|i| {
                Ok(json!({"Service": {"Verb": "set", "Node": node, "Service": service_body(i, "Service")?}}))
            })
            .collect::<Result<_>>()?;
        let ops: Vec<Vec<Value>> = ops.chunks(TXN_OPS).map(<[Value]>::to_vec).collect();
        futures::stream::iter(ops)
            .map(|chunk| self.txn(chunk))
            .buffer_unordered(TXN_CONCURRENCY)
            .try_for_each(|()| async { Ok(()) })
            .await
    }

    async fn put(&self, instance: &ServiceInstance) -> Result<()> {
        let node = node_of(&instance.name);
        self.txn(vec![json!({"Service": {"Verb": "set", "Node": node,
            "Service": service_body(instance, "Service")?}})])
            .await
    }

    async fn bulk_delete(&self, service: &str) -> Result<()> {
        self.txn(vec![
            json!({"Node": {"Verb": "delete", "Node": {"Node": node_of(service)}}}),
        ])
        .await
    }

    async fn cleanup(&self) -> Result<()> {
        // Agent services of this run (ours, the raw ones, the owners'), then its nodes.
        let response = self
            .http
            .get(format!("{}/v1/agent/services", self.base))
            .timeout(TIMEOUT)
            .send()
            .await;
        let services: BTreeMap<String, Value> = check(response, "consul agent services")
            .await?
            .json()
            .await
            .context("decode consul agent services")?;
        for (id, service) in services {
            let name = service["Service"].as_str().unwrap_or_default();
            if name.starts_with(&self.run_prefix) {
                let response = self
                    .http
                    .put(format!("{}/v1/agent/service/deregister/{id}", self.base))
                    .timeout(TIMEOUT)
                    .send()
                    .await;
                check(response, "consul agent deregister").await?;
            }
        }
        let response = self
            .http
            .get(format!("{}/v1/catalog/nodes", self.base))
            .timeout(TIMEOUT)
            .send()
            .await;
        let nodes: Vec<Value> = check(response, "consul catalog nodes")
            .await?
            .json()
            .await
            .context("decode consul catalog nodes")?;
        for node in nodes {
            let name = node["Node"].as_str().unwrap_or_default();
            if name.starts_with(&self.run_prefix) {
                self.txn(vec![
                    json!({"Node": {"Verb": "delete", "Node": {"Node": name}}}),
                ])
                .await?;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Raw for ConsulRaw {
    async fn register(&self, instance: &ServiceInstance) -> Result<()> {
        let mut body = service_body(instance, "Name")?;
        body["Checks"] = json!([{
            "CheckID": format!("service:{}", instance.id),
            "TTL": format!("{}ms", self.ttl.as_millis()),
            "Status": "passing",
            "DeregisterCriticalServiceAfter": "1m",
        }]);
        let response = self
            .http
            .put(format!("{}/v1/agent/service/register", self.base))
            .timeout(TIMEOUT)
            .json(&body)
            .send()
            .await;
        check(response, "consul agent register").await.map(drop)
    }

    async fn update(&self, instance: &ServiceInstance) -> Result<()> {
        self.register(instance).await
    }

    async fn deregister(&self, instance: &ServiceInstance) -> Result<()> {
        let response = self
            .http
            .put(format!(
                "{}/v1/agent/service/deregister/{}",
                self.base, instance.id
            ))
            .timeout(TIMEOUT)
            .send()
            .await;
        check(response, "consul agent deregister").await.map(drop)
    }

    async fn get(&self, service: &str) -> Result<usize> {
        Ok(Self::health(&self.http, &self.base, service, None)
            .await?
            .0
            .len())
    }

    async fn watch(&self, service: &str, target: &str) -> Result<Follow> {
        let (entries, mut index) = Self::health(&self.http, &self.base, service, None).await?;
        let (tx, seen) = watch::channel(0);
        publish(&tx, target, ids(&entries));
        let first_len = entries.len();
        let (http, base) = (self.http.clone(), self.base.clone());
        let (service, target) = (service.to_owned(), target.to_owned());
        let task = tokio::spawn(async move {
            loop {
                let Ok((entries, new_index)) =
                    Self::health(&http, &base, &service, Some(index.max(1))).await
                else {
                    return;
                };
                index = if new_index < index { 0 } else { new_index };
                publish(&tx, &target, ids(&entries));
            }
        });
        Ok(Follow {
            first_len,
            seen,
            _task: AbortOnDrop(task),
        })
    }

    async fn fresh(&self) -> Result<Arc<dyn Raw>> {
        Ok(Arc::new(ConsulRaw::new(
            self.base.trim_start_matches("http://"),
            &self.run_prefix,
            self.ttl,
        )?))
    }
}
