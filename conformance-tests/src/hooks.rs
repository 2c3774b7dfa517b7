//! The targets' hooks: a server of a case's own for each backend (from `test-support`, the
//! same servers the backends' own tests run), and deleting a registration behind the
//! backend's back with the server's raw client.
//!
//! The private servers' URLs carry short client timeouts, so that a case notices a server
//! that went away within seconds; [`crate::Ctx::short_ttl_url`] adds the short TTL.

use futures::future::BoxFuture;
use futures::FutureExt;
use registry::{ServiceInstance, Url};
use test_support::{ConsulAgent, EtcdServer, NacosServer, ZkServer};

use crate::PrivateServer;

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
/// endpoint's address) with the open API (`DELETE /nacos/v1/ns/instance`).
pub fn nacos_delete(
    url: String,
    instance: ServiceInstance,
) -> BoxFuture<'static, Result<(), String>> {
    async move {
        let (parsed, authority) = parse(&url)?;
        let namespace = parsed
            .query_pairs()
            .find(|(k, _)| k == "namespace")
            .map(|(_, v)| v.into_owned())
            .filter(|n| n != "public")
            .unwrap_or_default();
        let client = reqwest::Client::new();
        for endpoint in &instance.endpoints {
            let endpoint = Url::parse(endpoint).map_err(|e| format!("{endpoint}: {e}"))?;
            let host = endpoint.host_str().ok_or("an endpoint without a host")?;
            let port = endpoint.port().ok_or("an endpoint without a port")?;
            let service = format!("{}.{}", instance.name, endpoint.scheme());
            check(
                client
                    .delete(format!("http://{authority}/nacos/v1/ns/instance"))
                    .query(&[
                        ("serviceName", service.as_str()),
                        ("groupName", "DEFAULT_GROUP"),
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
