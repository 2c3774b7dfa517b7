//! Interop with go-kratos through a real Consul agent: a registration made with raw HTTP in
//! kratos' exact shape is discovered with the right endpoints and version, and ours, read back
//! raw, has kratos' shape. Also: an id the agent holds for another service is refused.

mod support;

use std::time::Duration;

use registry_consul::{Config, ConsulRegistry};
use registry_core::{Discovery, Error, Registrar, ServiceInstance};
use serde_json::{json, Value};
use support::{lists, watcher_reaches, ConsulAgent};

const WITHIN: Duration = Duration::from_secs(10);
const KRATOS_ID: &str = "8fc08b88-e37b-11ec-bb6f-88d7f62323b4";

async fn ours(agent: &ConsulAgent) -> ConsulRegistry {
    ConsulRegistry::connect(Config::from_url(&agent.url("deregister_after=1m")).expect("URL"))
        .await
        .expect("connect")
}

async fn raw_get(agent: &ConsulAgent, path: &str) -> Value {
    reqwest::get(format!("{}{path}", agent.http()))
        .await
        .expect("GET")
        .error_for_status()
        .expect("2xx")
        .json()
        .await
        .expect("JSON")
}

#[tokio::test]
async fn a_kratos_registration_is_discovered() {
    support::init_logs();
    let agent = ConsulAgent::start().await;
    let registry = ours(&agent).await;
    let mut watcher = registry.watch("helloworld").await.expect("watch");
    watcher_reaches(&mut watcher, &[], WITHIN).await;

    // What kratos' consul registrar sends for the captured instance of WIRE-FORMAT.md, less
    // the TCP check kratos v2.8.3 adds per endpoint (its addresses are not served here, so the
    // check would fail); examples/helloworld/tests/kratos.rs runs the real kratos, checks
    // included.
    let kratos = json!({
        "ID": KRATOS_ID,
        "Name": "helloworld",
        "Tags": ["version="],
        "Meta": null,
        "Address": "192.168.56.1",
        "Port": 8080,
        "TaggedAddresses": {
            "http": {"Address": "http://192.168.56.1:8080", "Port": 8080},
            "grpc": {"Address": "grpc://192.168.56.1:9000", "Port": 9000}
        },
        "Checks": [{
            "CheckID": format!("service:{KRATOS_ID}"),
            "TTL": "20s",
            "Status": "passing",
            "DeregisterCriticalServiceAfter": "600s"
        }]
    });
    reqwest::Client::new()
        .put(format!("{}/v1/agent/service/register", agent.http()))
        .json(&kratos)
        .send()
        .await
        .expect("PUT")
        .error_for_status()
        .expect("registered");

    let expected = ServiceInstance::builder(KRATOS_ID, "helloworld")
        .endpoint("http://192.168.56.1:8080")
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

    // kratos deregisters through the agent; the empty list is reported (kratos #3310).
    reqwest::Client::new()
        .put(format!(
            "{}/v1/agent/service/deregister/{KRATOS_ID}",
            agent.http()
        ))
        .send()
        .await
        .expect("PUT")
        .error_for_status()
        .expect("deregistered");
    watcher_reaches(&mut watcher, &[], WITHIN).await;
}

#[tokio::test]
async fn our_registration_has_the_kratos_shape() {
    support::init_logs();
    let agent = ConsulAgent::start().await;
    let registry = ours(&agent).await;
    let me = ServiceInstance::builder("id-1", "helloworld")
        .version("v2")
        .metadata("zone", "eu-1")
        .endpoint("grpc://127.0.0.1:9000?isSecure=false")
        .endpoint("http://127.0.0.1:8000")
        .build()
        .expect("instance");
    registry.register(&me).await.expect("register");

    let service = raw_get(&agent, "/v1/agent/service/id-1").await;
    assert_eq!(service["ID"], "id-1");
    assert_eq!(service["Service"], "helloworld");
    assert_eq!(service["Tags"], json!(["version=v2"]));
    assert_eq!(service["Meta"], json!({"zone": "eu-1"}));
    assert_eq!(service["Address"], "127.0.0.1");
    assert_eq!(service["Port"], 9000);
    assert_eq!(
        service["TaggedAddresses"]["grpc"],
        json!({"Address": "grpc://127.0.0.1:9000?isSecure=false", "Port": 9000})
    );
    assert_eq!(
        service["TaggedAddresses"]["http"],
        json!({"Address": "http://127.0.0.1:8000", "Port": 8000})
    );
    let checks = raw_get(&agent, "/v1/agent/checks").await;
    let check = &checks["service:id-1"];
    assert_eq!(check["ServiceID"], "id-1");
    assert_eq!(check["Status"], "passing");
    assert_eq!(check["Type"], "ttl");

    registry.deregister(&me).await.expect("deregister");
    let services = raw_get(&agent, "/v1/agent/services").await;
    assert!(
        services.get("id-1").is_none(),
        "deregister removes the service: {services}"
    );
}

#[tokio::test]
async fn an_id_held_by_another_service_is_refused() {
    support::init_logs();
    let agent = ConsulAgent::start().await;
    let registry = ours(&agent).await;
    let first = support::instance("first", "same-id");
    registry.register(&first).await.expect("register");
    let second = support::instance("second", "same-id");
    let err = registry.register(&second).await.expect_err("a taken id");
    assert!(matches!(err, Error::Conflict { .. }), "{err:?}");
    assert!(!err.is_temporary());
    // The agent still holds the first service's instance, untouched.
    let held = raw_get(&agent, "/v1/agent/service/same-id").await;
    assert_eq!(held["Service"], "first");
    assert_eq!(held["Tags"], json!(["version=v1"]));
    lists(&registry, "first", &[first], WITHIN).await;

    // Deregistering the id for the other service leaves it alone too.
    registry.deregister(&second).await.expect("deregister");
    let held = raw_get(&agent, "/v1/agent/service/same-id").await;
    assert_eq!(held["Service"], "first");
}
