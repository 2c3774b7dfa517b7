//! Interop with go-kratos through a real Nacos-compatible server (rnacos): an instance
//! registered through the HTTP open API in kratos' exact shape (service `name.grpc`, metadata
//! `kind`/`version`, no id) is discovered by plain name; ours, read back through the HTTP
//! API, has kratos' shape.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar, ServiceInstance};
use registry_nacos::{Config, NacosRegistry};
use support::{lists, watcher_reaches, NacosServer};

const WITHIN: Duration = Duration::from_secs(15);

async fn ours(server: &NacosServer) -> NacosRegistry {
    NacosRegistry::connect(Config::from_url(&server.url("namespace=public")).expect("URL"))
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kratos_instance_is_discovered_by_plain_name() {
    support::init_logs();
    let server = NacosServer::start().await;
    let registry = ours(&server).await;
    let mut watcher = registry.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut watcher, &[], WITHIN).await;

    // What kratos' nacos registrar writes for the gRPC endpoint of the captured instance.
    let response = reqwest::Client::new()
        .post(format!("{}/nacos/v1/ns/instance", server.http()))
        .query(&[
            ("serviceName", "helloworld.grpc"),
            ("groupName", "DEFAULT_GROUP"),
            ("ip", "192.168.56.1"),
            ("port", "9000"),
            ("weight", "100"),
            ("ephemeral", "true"),
            ("metadata", r#"{"kind":"grpc","version":""}"#),
        ])
        .send()
        .await
        .expect("POST");
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );

    let expected = ServiceInstance::builder("192.168.56.1-9000", "helloworld")
        .endpoint("grpc://192.168.56.1:9000")
        .build()
        .expect("instance");
    lists(
        &registry,
        "helloworld",
        std::slice::from_ref(&expected),
        WITHIN,
    )
    .await;
    watcher_reaches(&mut watcher, std::slice::from_ref(&expected), WITHIN).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ours_has_the_kratos_shape_per_endpoint() {
    support::init_logs();
    let server = NacosServer::start().await;
    let registry = ours(&server).await;
    let me = ServiceInstance::builder("id-1", "helloworld")
        .version("v2")
        .metadata("zone", "eu-1")
        .endpoint("http://127.0.0.1:8000")
        .endpoint("grpc://127.0.0.1:9000?isSecure=false")
        .build()
        .expect("instance");
    registry.register(&me).await.expect("register");

    for (service, port, kind) in [
        ("helloworld.http", 8000, "http"),
        ("helloworld.grpc", 9000, "grpc"),
    ] {
        let body: serde_json::Value = reqwest::get(format!(
            "{}/nacos/v1/ns/instance/list?serviceName={service}&groupName=DEFAULT_GROUP",
            server.http()
        ))
        .await
        .expect("GET")
        .json()
        .await
        .expect("JSON");
        let hosts = body["hosts"].as_array().expect("hosts");
        assert_eq!(hosts.len(), 1, "{body}");
        let host = &hosts[0];
        assert_eq!(
            (host["ip"].as_str(), host["port"].as_u64()),
            (Some("127.0.0.1"), Some(port))
        );
        assert_eq!(host["metadata"]["kind"], kind);
        assert_eq!(host["metadata"]["version"], "v2");
        assert_eq!(host["metadata"]["zone"], "eu-1");
        assert_eq!(host["metadata"]["instance_id"], "id-1");
        assert_eq!(host["weight"].as_f64(), Some(100.0));
    }
    lists(&registry, "helloworld", std::slice::from_ref(&me), WITHIN).await;
    registry.deregister(&me).await.expect("deregister");
    lists(&registry, "helloworld", &[], WITHIN).await;
}
