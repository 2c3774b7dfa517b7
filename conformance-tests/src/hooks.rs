//! The targets' hooks: a server of a case's own for each backend (from `test-support`, the
//! same servers the backends' own tests run), deleting a registration behind the backend's
//! back with the server's raw client, and reading the server's own count of watches.
//!
//! The private servers' URLs carry short client timeouts, so that a case notices a server
//! that went away within seconds; [`crate::Ctx::short_ttl_url`] adds the short TTL.

use futures::future::BoxFuture;
use futures::FutureExt;
use registry::{ServiceInstance, Url};
use test_support::{ConsulAgent, EtcdServer, NacosServer, ZkServer};

use crate::{PrivateServer, ServerCounts};

/// An etcd of the case's own; the case's namespace is `/conformance-{run}`.
pub fn etcd_server(run: String) -> BoxFuture<'static, PrivateServer> {
    async move {
        let server = EtcdServer::start().await;
        let url = format!(
            "{}/conformance-{run}?timeout=1s&connect_timeout=2s",
            server.url()
        );
        PrivateServer {
            control: Box::new(server),
            url,
        }
    }
    .boxed()
}

/// A Consul dev agent of the case's own (it keeps nothing across a restart).
pub fn consul_server(_run: String) -> BoxFuture<'static, PrivateServer> {
    async move {
        let agent = ConsulAgent::start().await;
        let url = agent.url("deregister_after=1m&timeout=1s&connect_timeout=1s&wait=5s");
        PrivateServer {
            control: Box::new(agent),
            url,
        }
    }
    .boxed()
}

/// A standalone ZooKeeper of the case's own; the case's root is `/conformance-{run}`.
pub fn zookeeper_server(run: String) -> BoxFuture<'static, PrivateServer> {
    async move {
        let server = ZkServer::start().await;
        let url = server.url(&format!("/conformance-{run}?connect_timeout=2s"));
        PrivateServer {
            control: Box::new(server),
            url,
        }
    }
    .boxed()
}

/// An rnacos of the case's own; the case's namespace is `conformance-{run}`.
pub fn nacos_server(run: String) -> BoxFuture<'static, PrivateServer> {
    async move {
        let server = NacosServer::start().await;
        let url = server.url(&format!("namespace=conformance-{run}"));
        PrivateServer {
            control: Box::new(server),
            url,
        }
    }
    .boxed()
}

fn parse(url: &str) -> Result<(Url, String), String> {
    let parsed = Url::parse(url).map_err(|e| format!("bad URL {url}: {e}"))?;
    let host = parsed.host_str().ok_or(format!("no host in {url}"))?;
    let port = parsed.port().ok_or(format!("no port in {url}"))?;
    let authority = format!("{host}:{port}");
    Ok((parsed, authority))
}

/// The path of `url` (a namespace or root), or `default` when it has none.
fn path_or(url: &Url, default: &str) -> String {
    match url.path() {
        "" | "/" => default.to_owned(),
        path => path.to_owned(),
    }
}

async fn check(response: reqwest::Result<reqwest::Response>) -> Result<String, String> {
    let response = response.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.text().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("{status}: {body}"))
    }
}

/// etcd: deletes the key `{namespace}/{service}/{id}` through etcd's JSON gateway
/// (`POST /v3/kv/deleterange`), and fails when there was no such key.
pub fn etcd_delete(
    url: String,
    instance: ServiceInstance,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        use base64::Engine;
        let (parsed, authority) = parse(&url)?;
        let namespace = path_or(&parsed, "/microservices");
        let key = format!("{namespace}/{}/{}", instance.name, instance.id);
        let body = serde_json::json!({
            "key": base64::engine::general_purpose::STANDARD.encode(&key)
        });
        let answer = check(
            reqwest::Client::new()
                .post(format!("http://{authority}/v3/kv/deleterange"))
                .json(&body)
                .send()
                .await,
        )
        .await?;
        let answer: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
        match answer["deleted"].as_str() {
            Some("1") => Ok(()),
            _ => Err(format!("no key {key} was deleted: {answer}")),
        }
    }
    .boxed()
}

/// Consul: deregisters the service `{id}` from the agent (`PUT /v1/agent/service/deregister`).
pub fn consul_delete(
    url: String,
    instance: ServiceInstance,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        let (_, authority) = parse(&url)?;
        check(
            reqwest::Client::new()
                .put(format!(
                    "http://{authority}/v1/agent/service/deregister/{}",
                    instance.id
                ))
                .send()
                .await,
        )
        .await
        .map(drop)
    }
    .boxed()
}

/// ZooKeeper: deletes the node `{root}/{service}/{id}` with zookeeper-client.
pub fn zookeeper_delete(
    url: String,
    instance: ServiceInstance,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let root = path_or(&parsed, "/microservices");
        let path = format!("{root}/{}/{}", instance.name, instance.id);
        let client = zookeeper_client::Client::connect(&authority)
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        client
            .delete(&path, None)
            .await
            .map_err(|e| format!("delete {path}: {e}"))
    }
    .boxed()
}

/// Nacos: deletes each endpoint's Nacos instance (service `{name}.{scheme}`, at the
/// endpoint's address) with the open API (`DELETE /nacos/v1/ns/instance`), and fails when
/// the server did not list it before (rnacos answers `ok` for an instance it does not have).
pub fn nacos_delete(
    url: String,
    instance: ServiceInstance,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let option = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let namespace = option("namespace")
            .filter(|n| n != "public")
            .unwrap_or_default();
        let group = option("group").unwrap_or_else(|| "DEFAULT_GROUP".to_owned());
        let client = reqwest::Client::new();
        for endpoint in &instance.endpoints {
            let endpoint = Url::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
            let host = endpoint.host_str().ok_or("an endpoint without a host")?;
            let port = endpoint.port().ok_or("an endpoint without a port")?;
            let service = format!("{}.{}", instance.name, endpoint.scheme());
            let listed = check(
                client
                    .get(format!("http://{authority}/nacos/v1/ns/instance/list"))
                    .query(&[
                        ("serviceName", service.as_str()),
                        ("groupName", group.as_str()),
                        ("namespaceId", namespace.as_str()),
                    ])
                    .send()
                    .await,
            )
            .await?;
            let listed: serde_json::Value =
                serde_json::from_str(&listed).map_err(|e| format!("{e}: {listed}"))?;
            let there = listed["hosts"].as_array().is_some_and(|hosts| {
                hosts
                    .iter()
                    .any(|h| h["ip"] == host && h["port"].as_u64() == Some(u64::from(port)))
            });
            if !there {
                return Err(format!(
                    "{service} does not list {host}:{port}: nothing to delete ({listed})"
                ));
            }
            check(
                client
                    .delete(format!("http://{authority}/nacos/v1/ns/instance"))
                    .query(&[
                        ("serviceName", service.as_str()),
                        ("groupName", group.as_str()),
                        ("clusterName", "DEFAULT"),
                        ("namespaceId", namespace.as_str()),
                        ("ip", host),
                        ("port", &port.to_string()),
                        ("ephemeral", "true"),
                    ])
                    .send()
                    .await,
            )
            .await?;
        }
        Ok(())
    }
    .boxed()
}

/// The value of the Prometheus sample `name` (without labels) in a metrics text, or `None`
/// when there is none.
fn prometheus_value(text: &str, name: &str) -> Result<Option<u64>, String> {
    let Some(value) = text
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
    else {
        return Ok(None);
    };
    let value: f64 = value
        .trim()
        .parse()
        .map_err(|e| format!("{name} {value}: {e}"))?;
    Ok(Some(value as u64))
}

/// A text of Prometheus metrics from `url`.
async fn metrics(url: String) -> Result<String, String> {
    check(reqwest::Client::new().get(url).send().await).await
}

/// etcd: the watchers its MVCC store serves now, `etcd_debugging_mvcc_watcher_total` (a
/// gauge despite its name) of `/metrics` on the client port. Every watch request creates
/// one, also for a key already watched on the same stream; lease keep-alives are not
/// watches.
pub fn etcd_watch_count(url: String) -> BoxFuture<'static, Result<ServerCounts, String>> {
    async move {
        let (_, authority) = parse(&url)?;
        let text = metrics(format!("http://{authority}/metrics")).await?;
        let name = "etcd_debugging_mvcc_watcher_total";
        let watches = prometheus_value(&text, name)?.ok_or(format!("no {name} in /metrics"))?;
        Ok(ServerCounts {
            watches,
            requests: None,
        })
    }
    .boxed()
}

/// Consul: the blocking queries the agent's server serves now, the gauge
/// `consul_rpc_queries_blocking` of `/v1/agent/metrics?format=prometheus` (test-support's
/// agents keep Prometheus metrics; the gauge shows once the first blocking query ran, 0
/// before). Every blocking request counts, also for a service already watched; one upstream
/// watch runs one at a time, and none for a moment after each answer. A dev agent soon runs
/// one of its own.
pub fn consul_blocking_queries(url: String) -> BoxFuture<'static, Result<ServerCounts, String>> {
    async move {
        let (_, authority) = parse(&url)?;
        let text = metrics(format!(
            "http://{authority}/v1/agent/metrics?format=prometheus"
        ))
        .await?;
        Ok(ServerCounts {
            watches: prometheus_value(&text, "consul_rpc_queries_blocking")?.unwrap_or(0),
            requests: None,
        })
    }
    .boxed()
}

/// The answer of a ZooKeeper server at `authority` to the four-letter word `word`.
async fn four_letter(authority: &str, word: &str) -> Result<String, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect to {authority}: {e}"))?;
    stream
        .write_all(word.as_bytes())
        .await
        .map_err(|e| format!("{word}: {e}"))?;
    let mut answer = String::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_string(&mut answer),
    )
    .await
    .map_err(|_| format!("{word}: no answer within 5 s"))?
    .map_err(|e| format!("{word}: {e}"))?;
    Ok(answer)
}

/// The number after `key` on a line of `answer` (`key` includes its separator).
fn number_after(answer: &str, key: &str, word: &str) -> Result<u64, String> {
    let value = answer
        .lines()
        .find_map(|line| line.strip_prefix(key))
        .ok_or_else(|| {
            format!("no {key:?} in {word}'s answer (is {word} whitelisted?): {answer:?}")
        })?;
    value
        .trim()
        .parse()
        .map_err(|e| format!("{word}: {key}{value:?}: {e}"))
}

/// ZooKeeper: `Total watches` of the four-letter word `wchs`, and `zk_packets_received` of
/// `mntr` (both whitelisted on test-support's servers). A persistent recursive watch counts
/// one in `wchs` (3.8; `mntr`'s `zk_watch_count` counts it twice), and so does each
/// exists-watch a registration's owner holds on its node. The server keeps one watch per
/// (path, session) however often a session asks, hence the packets (each four-letter word
/// read counts one too).
pub fn zookeeper_watch_count(url: String) -> BoxFuture<'static, Result<ServerCounts, String>> {
    async move {
        let (_, authority) = parse(&url)?;
        // "1 connections watching 1 paths\nTotal watches:1\n"
        let wchs = four_letter(&authority, "wchs").await?;
        let mntr = four_letter(&authority, "mntr").await?;
        Ok(ServerCounts {
            watches: number_after(&wchs, "Total watches:", "wchs")?,
            requests: Some(number_after(&mntr, "zk_packets_received\t", "mntr")?),
        })
    }
    .boxed()
}

/// Nacos (rnacos): the connections subscribed to any service of the case's namespace and
/// group, from the open API's subscriber list (`GET /nacos/v1/ns/service/subscribers`), and
/// the gRPC requests served (`grpc_request_total_count` of `/nacos/metrics`). The server
/// keeps one subscription per (service, connection) however often a connection subscribes,
/// hence the requests.
pub fn nacos_subscribers(url: String) -> BoxFuture<'static, Result<ServerCounts, String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let option = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let namespace = option("namespace").unwrap_or_else(|| "public".to_owned());
        let group = option("group").unwrap_or_else(|| "DEFAULT_GROUP".to_owned());
        let answer = check(
            reqwest::Client::new()
                .get(format!(
                    "http://{authority}/nacos/v1/ns/service/subscribers"
                ))
                .query(&[
                    ("namespaceId", namespace.as_str()),
                    ("groupName", group.as_str()),
                    ("pageNo", "1"),
                    ("pageSize", "100000"),
                ])
                .send()
                .await,
        )
        .await?;
        let answer: serde_json::Value =
            serde_json::from_str(&answer).map_err(|e| format!("{e}: {answer}"))?;
        let subscribers = answer["subscribers"]
            .as_array()
            .ok_or_else(|| format!("no subscriber list: {answer}"))?;
        let connections: std::collections::BTreeSet<String> = subscribers
            .iter()
            // The server matches the namespace as a substring: keep exactly ours.
            .filter(|s| s["namespaceId"] == namespace.as_str())
            .map(|s| format!("{}:{}", s["ip"], s["port"]))
            .collect();
        let text = metrics(format!("http://{authority}/nacos/metrics")).await?;
        // Present from the first gRPC request on, and the case's client made some (its
        // connect): an absent count must not pass as "no requests".
        let requests = prometheus_value(&text, "grpc_request_total_count")?
            .ok_or("no grpc_request_total_count in rnacos' /nacos/metrics")?;
        Ok(ServerCounts {
            watches: connections.len() as u64,
            requests: Some(requests),
        })
    }
    .boxed()
}

/// About 1 MiB of JSON: an instance of `service` whose metadata is beyond the core's bounds,
/// `bytes` long in all.
fn big_instance_json(service: &str, id: &str, bytes: usize) -> Vec<u8> {
    let head = serde_json::json!({"id": id, "name": service, "metadata": {"big": ""}})
        .to_string()
        .len();
    let big = "x".repeat(bytes.saturating_sub(head));
    serde_json::json!({"id": id, "name": service, "metadata": {"big": big}, "endpoints": []})
        .to_string()
        .into_bytes()
}

/// The foreign values a key-value backend (etcd, ZooKeeper) writes under a service, by the
/// last segment of their key: about 1 MiB (`big` bytes) of an instance over the bounds,
/// bytes that are not UTF-8, an instance naming another service, one with an invalid id.
fn foreign_values(service: &str, big: usize) -> Vec<(&'static str, Vec<u8>)> {
    let other = serde_json::json!({"id": "x", "name": "another-service", "endpoints": ["http://127.0.0.1:1"]});
    let bad_id = serde_json::json!({"id": "../escape", "name": service, "endpoints": ["http://127.0.0.1:1"]});
    vec![
        (
            "foreign-big",
            big_instance_json(service, "foreign-big", big),
        ),
        (
            "foreign-binary",
            vec![0xff, 0xfe, 0x00, 0x80, b'{', 0xc3, 0x28],
        ),
        ("foreign-other", other.to_string().into_bytes()),
        ("foreign-bad-id", bad_id.to_string().into_bytes()),
    ]
}

/// etcd: puts [`foreign_values`] (the big one 1 MiB) at `{namespace}/{service}/foreign-*`
/// through the JSON gateway; removes them with one range delete.
pub fn etcd_write_foreign(
    url: String,
    service: String,
    remove: bool,
) -> BoxFuture<'static, Result<usize, String>> {
    async move {
        use base64::engine::general_purpose::STANDARD;
        use base64::Engine;
        let (parsed, authority) = parse(&url)?;
        let namespace = path_or(&parsed, "/microservices");
        let prefix = format!("{namespace}/{service}/foreign-");
        let client = reqwest::Client::new();
        if remove {
            let mut end = prefix.clone().into_bytes();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            let body = serde_json::json!({"key": STANDARD.encode(&prefix), "range_end": STANDARD.encode(&end)});
            check(
                client
                    .post(format!("http://{authority}/v3/kv/deleterange"))
                    .json(&body)
                    .send()
                    .await,
            )
            .await?;
            return Ok(0);
        }
        let values = foreign_values(&service, 1024 * 1024);
        for (key, value) in &values {
            let key = format!("{namespace}/{service}/{key}");
            let body =
                serde_json::json!({"key": STANDARD.encode(&key), "value": STANDARD.encode(value)});
            check(
                client
                    .post(format!("http://{authority}/v3/kv/put"))
                    .json(&body)
                    .send()
                    .await,
            )
            .await
            .map_err(|e| format!("put {key}: {e}"))?;
        }
        Ok(values.len())
    }
    .boxed()
}

/// ZooKeeper: creates [`foreign_values`] as persistent nodes `{root}/{service}/foreign-*`
/// with zookeeper-client (the big one 1 MiB less 1 KiB: the server's `jute.maxbuffer` is
/// 1 MiB for a whole request); removes them.
pub fn zookeeper_write_foreign(
    url: String,
    service: String,
    remove: bool,
) -> BoxFuture<'static, Result<usize, String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let root = path_or(&parsed, "/microservices");
        let client = zookeeper_client::Client::connect(&authority)
            .await
            .map_err(|e| format!("connect to {authority}: {e}"))?;
        let values = foreign_values(&service, 1024 * 1024 - 1024);
        for (key, value) in &values {
            let path = format!("{root}/{service}/{key}");
            let done = if remove {
                match client.delete(&path, None).await {
                    Err(zookeeper_client::Error::NoNode) => Ok(()),
                    other => other,
                }
            } else {
                let options = zookeeper_client::CreateMode::Persistent
                    .with_acls(zookeeper_client::Acls::anyone_all());
                client.create(&path, value, &options).await.map(drop)
            };
            done.map_err(|e| format!("{path}: {e}"))?;
        }
        Ok(values.len())
    }
    .boxed()
}

/// Consul: registers two services of the name, with ids that are not valid instance ids
/// (one with about 1 MiB of tags and a tagged address that is not a URL, one with a unicode
/// id and a version tag over the bound), straight at the agent; deregisters them.
pub fn consul_write_foreign(
    url: String,
    service: String,
    remove: bool,
) -> BoxFuture<'static, Result<usize, String>> {
    async move {
        let (_, authority) = parse(&url)?;
        let client = reqwest::Client::new();
        let big_tags: Vec<String> = (0..1024)
            .map(|i| format!("{i:04}{}", "t".repeat(1020)))
            .collect();
        let foreign = [
            serde_json::json!({
                "ID": format!("foreign big {service}"), "Name": service, "Port": 1,
                "Tags": big_tags,
                "TaggedAddresses": {"grpc": {"Address": "not a url", "Port": 1}},
            }),
            serde_json::json!({
                "ID": format!("foreign-ünï-{service}"), "Name": service, "Port": 2,
                "Tags": [format!("version={}", "v".repeat(1000))],
            }),
        ];
        for service in &foreign {
            let id = service["ID"].as_str().unwrap_or_default();
            let request = if remove {
                let mut url =
                    Url::parse(&format!("http://{authority}/v1/agent/service/deregister/"))
                        .map_err(|e| e.to_string())?;
                url.path_segments_mut()
                    .map_err(|()| "not a base URL")?
                    .pop_if_empty()
                    .push(id);
                client.put(url)
            } else {
                client
                    .put(format!("http://{authority}/v1/agent/service/register"))
                    .json(service)
            };
            check(request.send().await)
                .await
                .map_err(|e| format!("{id}: {e}"))?;
        }
        Ok(foreign.len())
    }
    .boxed()
}

/// The most characters of metadata keys and values Nacos (Java) holds by default.
const NACOS_METADATA_CHARS: usize = 1024;

/// Nacos: registers two persistent instances with the open API (`POST
/// /nacos/v1/ns/instance`) in the name's `http` and `grpc` services: one with about 1 MiB of
/// metadata, one whose `endpoint` metadata is not a URL; deletes them. Nacos (Java) refuses
/// persistent ones next to ours (then ephemeral ones) and more than 1024 characters of
/// metadata (then only the second).
pub fn nacos_write_foreign(
    url: String,
    service: String,
    remove: bool,
) -> BoxFuture<'static, Result<usize, String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let option = |key: &str| {
            parsed
                .query_pairs()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.into_owned())
        };
        let namespace = option("namespace")
            .filter(|n| n != "public")
            .unwrap_or_default();
        let group = option("group").unwrap_or_else(|| "DEFAULT_GROUP".to_owned());
        let foreign = [
            (
                format!("{service}.http"),
                "10.0.0.1",
                "1",
                serde_json::json!({"kind": "http", "big": "x".repeat(1024 * 1024)}),
            ),
            (
                format!("{service}.grpc"),
                "10.0.0.2",
                "2",
                serde_json::json!({"kind": "grpc", "endpoint": "not a url"}),
            ),
        ];
        let client = reqwest::Client::new();
        let mut written = 0;
        for (nacos_service, ip, port, metadata) in &foreign {
            let metadata = metadata.to_string();
            // Nacos (Java) holds no persistent instance in a service that has ephemeral ones
            // (ours): when it refuses one, an ephemeral one (gone within 30 s without
            // heartbeats). It holds at most 1024 characters of metadata, so nothing beyond
            // the core's bounds: the big value is not written there.
            let mut sent = Err(String::new());
            for ephemeral in ["false", "true"] {
                let mut form = vec![
                    ("serviceName", nacos_service.as_str()),
                    ("groupName", group.as_str()),
                    ("namespaceId", namespace.as_str()),
                    ("clusterName", "DEFAULT"),
                    ("ip", ip),
                    ("port", port),
                    ("ephemeral", ephemeral),
                ];
                let request = if remove {
                    client
                        .delete(format!("http://{authority}/nacos/v1/ns/instance"))
                        .query(&form)
                } else {
                    form.push(("metadata", metadata.as_str()));
                    client
                        .post(format!("http://{authority}/nacos/v1/ns/instance"))
                        .form(&form)
                };
                sent = check(request.send().await).await;
                if sent.is_ok() {
                    break;
                }
            }
            match sent {
                Ok(_) => written += 1,
                Err(_) if metadata.len() > NACOS_METADATA_CHARS => {}
                Err(e) => return Err(format!("{nacos_service} {ip}:{port}: {e}")),
            }
        }
        Ok(written)
    }
    .boxed()
}
