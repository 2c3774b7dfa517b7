//! Client-side discovery over the in-memory registry (the balancing logic) and real gRPC
//! servers on loopback (tonic's health service): endpoints follow the registry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use registry_client::{
    grpc_channel, ClientError, FailFastChannel, HttpBalancer, Options, Resolver, Strategy,
};
use registry_core::{Discovery, MemoryRegistry, Registrar, ServiceInstance};
use tonic_health::pb::health_check_response::ServingStatus as Status;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::ServingStatus;

fn instance(id: &str, endpoints: &[&str], version: &str, weight: Option<&str>) -> ServiceInstance {
    let mut builder = ServiceInstance::builder(id, "svc").version(version);
    for e in endpoints {
        builder = builder.endpoint(*e);
    }
    if let Some(w) = weight {
        builder = builder.metadata("weight", w);
    }
    builder.build().expect("instance")
}

fn store(name: &str) -> (MemoryRegistry, Arc<dyn Discovery>) {
    let registry = MemoryRegistry::named(name, Duration::from_secs(30));
    (registry.clone(), Arc::new(registry))
}

const TARGET: &str = "discovery:///svc";

#[tokio::test]
async fn weighted_round_robin_follows_the_registry() {
    let (registry, discovery) = store("client-rr");
    registry
        .register(&instance("a", &["http://10.0.0.1:80"], "v1", None))
        .await
        .unwrap();
    registry
        .register(&instance("b", &["http://10.0.0.2:80"], "v1", None))
        .await
        .unwrap();
    registry
        .register(&instance(
            "c",
            &["http://10.0.0.3:80", "grpc://10.0.0.3:90"],
            "v1",
            Some("2"),
        ))
        .await
        .unwrap();
    let balancer = HttpBalancer::new(discovery, TARGET, Options::default(), Strategy::RoundRobin)
        .await
        .unwrap();
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        *counts
            .entry(balancer.pick().unwrap().key().to_owned())
            .or_default() += 1;
    }
    assert_eq!(counts["10.0.0.1:80"], 100);
    assert_eq!(counts["10.0.0.2:80"], 100);
    assert_eq!(counts["10.0.0.3:80"], 200, "weight 2");
    assert!(balancer
        .pick()
        .unwrap()
        .url()
        .as_str()
        .starts_with("http://10.0.0."));

    // The registry changes: the balancer follows.
    registry
        .deregister(&instance("c", &[], "v1", None))
        .await
        .unwrap();
    registry
        .deregister(&instance("a", &[], "v1", None))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while balancer.resolver().nodes().map(|n| n.len()).unwrap_or(0) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the change arrives");
    assert_eq!(balancer.pick().unwrap().key(), "10.0.0.2:80");

    // The registry says none: fail fast, with a clear error.
    registry
        .deregister(&instance("b", &[], "v1", None))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), async {
        while balancer.pick().is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the change arrives");
    let err = balancer.pick().unwrap_err();
    assert!(matches!(err, ClientError::NoInstances { .. }), "{err}");
    assert!(err.to_string().contains("no http instance of svc"), "{err}");
}

#[tokio::test]
async fn power_of_two_prefers_the_less_busy() {
    let (registry, discovery) = store("client-p2c");
    registry
        .register(&instance("a", &["http://10.0.0.1:80"], "v1", None))
        .await
        .unwrap();
    registry
        .register(&instance("b", &["http://10.0.0.2:80"], "v1", None))
        .await
        .unwrap();
    let balancer = HttpBalancer::new(discovery, TARGET, Options::default(), Strategy::PowerOfTwo)
        .await
        .unwrap();
    // Ten requests in flight on a: it wins only when both draws land on it (a quarter).
    let busy: Vec<_> = std::iter::repeat_with(|| balancer.pick().unwrap())
        .filter(|p| p.key() == "10.0.0.1:80")
        .take(10)
        .collect();
    let to_a = (0..400)
        .filter(|_| balancer.pick().unwrap().key() == "10.0.0.1:80")
        .count();
    assert!(to_a < 160, "the busy endpoint got {to_a} of 400");
    drop(busy);
}

/// Weights are read from the registry, which anyone may write to: absurd ones (1e308 twice
/// sums to infinity; NaN, negative, text) neither panic nor skew the pick beyond the cap.
#[tokio::test]
async fn hostile_weights_neither_panic_nor_dominate() {
    let (registry, discovery) = store("client-weights");
    for (id, weight) in [
        ("a", "1e308"),
        ("b", "1e308"),
        ("c", "NaN"),
        ("d", "-5"),
        ("e", "inf"),
        ("f", "heavy"),
    ] {
        let endpoint = format!("http://10.0.1.{}:80", id.as_bytes()[0]);
        registry
            .register(&instance(id, &[endpoint.as_str()], "v1", Some(weight)))
            .await
            .unwrap();
    }
    for strategy in [Strategy::PowerOfTwo, Strategy::RoundRobin] {
        let balancer = HttpBalancer::new(discovery.clone(), TARGET, Options::default(), strategy)
            .await
            .unwrap();
        let mut counts: HashMap<String, usize> = HashMap::new();
        for _ in 0..2000 {
            *counts
                .entry(balancer.pick().unwrap().key().to_owned())
                .or_default() += 1;
        }
        assert_eq!(counts.values().sum::<usize>(), 2000);
        // a and b are capped at MAX_WEIGHT, c..f weigh 1.
        let heavy = counts.get("10.0.1.97:80").copied().unwrap_or(0)
            + counts.get("10.0.1.98:80").copied().unwrap_or(0);
        assert!(heavy > 1900, "{strategy:?}: {counts:?}");
    }
    let nodes = Resolver::new(discovery, TARGET, "http", Options::default())
        .await
        .unwrap()
        .nodes()
        .unwrap();
    let mut weights: Vec<f64> = nodes.iter().map(|n| n.weight).collect();
    weights.sort_by(f64::total_cmp);
    assert_eq!(
        weights,
        [
            1.0,
            1.0,
            1.0,
            1.0,
            registry_client::MAX_WEIGHT,
            registry_client::MAX_WEIGHT
        ]
    );
}

#[tokio::test]
async fn filter_and_bounded_first_wait() {
    let (registry, discovery) = store("client-filter");
    let late = registry.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        late.register(&instance("old", &["http://10.0.0.1:80"], "v1", None))
            .await
            .unwrap();
        late.register(&instance("new", &["http://10.0.0.2:80"], "v2", None))
            .await
            .unwrap();
    });
    let options = Options::default()
        .with_version("v2")
        .with_first_list_timeout(Duration::from_secs(5));
    let resolver = Resolver::new(discovery.clone(), TARGET, "http", options)
        .await
        .unwrap();
    let nodes = resolver.nodes().expect("waited for the first instances");
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].instance_id, "new");

    // Nobody there: the wait is bounded, then calls fail fast.
    let started = tokio::time::Instant::now();
    let none = Options::default().with_first_list_timeout(Duration::from_millis(300));
    let empty = Resolver::new(discovery, "discovery:///nobody", "http", none)
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(matches!(
        empty.nodes(),
        Err(ClientError::NoInstances { .. })
    ));
}

/// A gRPC server on a free loopback port reporting `status` for the service `x`.
async fn health_server(status: ServingStatus) -> String {
    serve_health(status, None).await
}

/// A gRPC server reporting `status` for the service `x`, over TLS with `pki`'s server
/// certificate when given; returns its endpoint (`isSecure=true` with TLS).
async fn serve_health(status: ServingStatus, pki: Option<&test_support::Pki>) -> String {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("x", status).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let mut server = tonic::transport::Server::builder();
    if let Some(pki) = pki {
        let identity = tonic::transport::Identity::from_pem(
            std::fs::read(&pki.server_cert).expect("cert"),
            std::fs::read(&pki.server_key).expect("key"),
        );
        server = server
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .expect("TLS");
    }
    tokio::spawn(async move {
        let _keep = reporter;
        server
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await
            .expect("serve");
    });
    match pki {
        Some(_) => format!("grpc://{address}?isSecure=true"),
        None => format!("grpc://{address}"),
    }
}

/// Makes `calls` health checks through `client`; how many answers had each status.
async fn statuses(client: &mut HealthClient<FailFastChannel>, calls: usize) -> HashMap<i32, usize> {
    let mut seen = HashMap::new();
    for _ in 0..calls {
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            client.check(HealthCheckRequest {
                service: "x".into(),
            }),
        )
        .await
        .expect("an answer")
        .expect("a call through the balanced channel")
        .into_inner()
        .status;
        *seen.entry(status).or_insert(0) += 1;
    }
    seen
}

/// When the registry says there is no instance any more, a gRPC call fails at once with
/// `Unavailable` (as `pick()` does for HTTP) instead of waiting for an endpoint; calls work
/// again once one comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_channel_fails_fast_without_instances() {
    let (registry, discovery) = store("client-grpc-empty");
    let serving = health_server(ServingStatus::Serving).await;
    let only = instance("only", &[&serving], "v1", None);
    registry.register(&only).await.unwrap();
    let balanced = grpc_channel(discovery, TARGET, Options::default())
        .await
        .unwrap();
    let mut client = HealthClient::new(balanced.channel());
    let check = HealthCheckRequest {
        service: "x".into(),
    };
    // Each call with a deadline: a call made just as the last endpoint leaves may wait.
    let answer = |client: &mut HealthClient<FailFastChannel>| {
        let mut client = client.clone();
        let check = check.clone();
        async move { tokio::time::timeout(Duration::from_secs(2), client.check(check)).await }
    };
    answer(&mut client)
        .await
        .expect("an answer")
        .expect("served");

    registry.deregister(&only).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(answer(&mut client).await, Ok(Err(_))) {}
    })
    .await
    .expect("calls fail once the registry lists nobody");
    // From then on every call fails at once, never waits.
    for _ in 0..20 {
        let status = answer(&mut client)
            .await
            .expect("an answer at once, never a wait")
            .expect_err("no instance to call");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(
            status.message().contains("no grpc instance of svc"),
            "{status:?}"
        );
    }

    registry.register(&only).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(answer(&mut client).await, Ok(Ok(_))) {}
    })
    .await
    .expect("calls work again once an instance is back");
}

/// Endpoints registered with `isSecure=true` are balanced over TLS with the caller's
/// configuration, beside plaintext ones; without a configuration they are left out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_grpc_endpoints_are_balanced_with_the_callers_tls() {
    let dir = std::env::temp_dir().join(format!("registry-client-tls-{}", test_support::run_id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let pki = test_support::pki(&dir);
    let (registry, discovery) = store("client-grpc-tls");
    let secure = serve_health(ServingStatus::Serving, Some(&pki)).await;
    let plain = health_server(ServingStatus::NotServing).await;
    registry
        .register(&instance("s", &[&secure], "v1", None))
        .await
        .unwrap();
    registry
        .register(&instance("p", &[&plain], "v1", None))
        .await
        .unwrap();
    let ca = tonic::transport::Certificate::from_pem(std::fs::read(&pki.ca).expect("CA"));
    let options = Options::default()
        .with_grpc_tls(tonic::transport::ClientTlsConfig::new().ca_certificate(ca));
    let balanced = grpc_channel(discovery.clone(), TARGET, options)
        .await
        .unwrap();
    let mut client = HealthClient::new(balanced.channel());
    let seen = statuses(&mut client, 100).await;
    assert!(
        seen.contains_key(&(Status::Serving as i32))
            && seen.contains_key(&(Status::NotServing as i32)),
        "the TLS and the plaintext server both get calls: {seen:?}"
    );

    // Without TLS options the secure endpoint is left out: every call goes to the other.
    let plain_only = grpc_channel(discovery, TARGET, Options::default())
        .await
        .unwrap();
    let mut client = HealthClient::new(plain_only.channel());
    assert_eq!(
        statuses(&mut client, 20).await,
        HashMap::from([(Status::NotServing as i32, 20)])
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_channel_balances_and_follows_the_registry() {
    let (registry, discovery) = store("client-grpc");
    let serving = health_server(ServingStatus::Serving).await;
    let not_serving = health_server(ServingStatus::NotServing).await;
    registry
        .register(&instance("a", &[&serving], "v1", None))
        .await
        .unwrap();
    registry
        .register(&instance("b", &[&not_serving], "v1", None))
        .await
        .unwrap();
    let balanced = grpc_channel(discovery, TARGET, Options::default())
        .await
        .unwrap();
    let mut client = HealthClient::new(balanced.channel());
    let seen = statuses(&mut client, 100).await;
    assert!(
        seen.contains_key(&(Status::Serving as i32))
            && seen.contains_key(&(Status::NotServing as i32)),
        "both servers get calls: {seen:?}"
    );

    // b leaves the registry: it leaves the channel.
    registry
        .deregister(&instance("b", &[], "v1", None))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        let mut in_a_row = 0;
        while in_a_row < 50 {
            let status = client
                .check(HealthCheckRequest {
                    service: "x".into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status;
            in_a_row = if status == Status::Serving as i32 {
                in_a_row + 1
            } else {
                0
            };
        }
    })
    .await
    .expect("only the serving endpoint is left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_in_flight_survives_its_endpoint_leaving() {
    let (registry, discovery) = store("client-inflight");
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("x", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
    );
    let only = instance("a", &[&format!("grpc://{address}")], "v1", None);
    registry.register(&only).await.unwrap();
    let balanced = grpc_channel(discovery, TARGET, Options::default())
        .await
        .unwrap();
    let mut client = HealthClient::new(balanced.channel());
    // A server-streaming call, in flight from here on.
    let mut stream = client
        .watch(HealthCheckRequest {
            service: "x".into(),
        })
        .await
        .expect("watch call")
        .into_inner();
    let first = stream
        .message()
        .await
        .expect("first message")
        .expect("a status");
    assert_eq!(first.status, Status::Serving as i32);

    // The endpoint leaves the registry, and so the channel; the call goes on.
    registry.deregister(&only).await.unwrap();
    // Wait until the channel has no endpoint left: a new call then finds none (it waits).
    let mut fresh = HealthClient::new(balanced.channel());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let request = HealthCheckRequest {
            service: "x".into(),
        };
        let new_call = tokio::time::timeout(Duration::from_millis(300), fresh.check(request)).await;
        if !matches!(new_call, Ok(Ok(_))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the endpoint never left the channel"
        );
    }
    reporter
        .set_service_status("x", ServingStatus::NotServing)
        .await;
    let next = tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("the call in flight still delivers")
        .expect("no error")
        .expect("a status");
    assert_eq!(next.status, Status::NotServing as i32);
}

/// An instance that moves to another server (same id, new endpoint) takes the channel with
/// it; a new weight alone changes nothing a call can see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_channel_follows_an_instance_that_moves() {
    let (registry, discovery) = store("client-grpc-move");
    let first = health_server(ServingStatus::NotServing).await;
    let second = health_server(ServingStatus::Serving).await;
    registry
        .register(&instance("a", &[&first], "v1", None))
        .await
        .unwrap();
    let balanced = grpc_channel(discovery, TARGET, Options::default())
        .await
        .unwrap();
    let mut client = HealthClient::new(balanced.channel());
    assert_eq!(
        statuses(&mut client, 5).await,
        HashMap::from([(Status::NotServing as i32, 5)])
    );

    registry
        .register(&instance("a", &[&second], "v1", None))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while statuses(&mut client, 1)
            .await
            .contains_key(&(Status::NotServing as i32))
        {}
    })
    .await
    .expect("calls reach the new endpoint");

    registry
        .register(&instance("a", &[&second], "v1", Some("5")))
        .await
        .unwrap();
    assert_eq!(
        statuses(&mut client, 20).await,
        HashMap::from([(Status::Serving as i32, 20)])
    );
}
