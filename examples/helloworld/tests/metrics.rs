//! helloworld's `/metrics` against a registry server of the test's own (each backend), through
//! a fault: the metrics an operator reads move as the registry goes away and comes back, with
//! the same names on every backend. helloworld runs both sides
//! in one process (it registers, and its client watches the service); the test scrapes the
//! Prometheus page its HTTP side serves.
//!
//! - Healthy: one registration `registered`, the watch lists one instance, staleness 0.
//! - The server killed: the registration is `lost`, errors are counted, the watch's staleness
//!   grows.
//! - The server back: `registered` again, one re-registration (at least) counted, staleness 0.

use std::time::Duration;

use test_support::{
    run_id, spawn_program, terminate, ConsulAgent, EtcdServer, NacosServer, ServerControl, ZkServer,
};

const BIN: &str = env!("CARGO_BIN_EXE_helloworld");
const WITHIN: Duration = Duration::from_secs(30);

/// The value of the sample of `name` whose labels include every `labels` pair, in a page of
/// Prometheus' text format.
fn sample(page: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    page.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let rest = series.strip_prefix(name)?;
            // `name{...}`, not a longer name starting with it.
            let inside = rest.strip_prefix('{')?.strip_suffix('}')?;
            labels
                .iter()
                .all(|(k, v)| inside.split(',').any(|pair| pair == format!("{k}=\"{v}\"")))
                .then(|| value.parse().ok())?
        })
        .next()
}

async fn scrape(http: &reqwest::Client, url: &str) -> String {
    match http.get(url).send().await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    }
}

/// Waits until the page satisfies `check`, failing with the page after `WITHIN`.
async fn until(http: &reqwest::Client, url: &str, what: &str, check: impl Fn(&str) -> bool) {
    let mut last = String::new();
    let deadline = tokio::time::Instant::now() + WITHIN;
    loop {
        let page = scrape(http, url).await;
        if check(&page) {
            return;
        }
        last = if page.is_empty() { last } else { page };
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {WITHIN:?}; the last page:\n{}",
            last.lines()
                .filter(|l| l.starts_with("registry_"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs helloworld against `url` (a server of the test's own, `server`) and checks its
/// metrics, labelled `backend`, through the server's death and return.
async fn metrics_move(backend: &str, url: &str, server: &mut dyn ServerControl) {
    let name = format!("metrics{}", run_id());
    let (helloworld, mut lines) = spawn_program(BIN, &["--registry", url, "--name", &name]);
    let address = tokio::time::timeout(WITHIN, async {
        loop {
            match lines.next_line().await {
                // "serving NAME on http://ADDR and grpc://ADDR"
                Ok(Some(line)) => {
                    if let Some(address) = line
                        .split_whitespace()
                        .find_map(|w| w.strip_prefix("http://"))
                    {
                        break address.to_owned();
                    }
                }
                _ => panic!("helloworld ended before it served"),
            }
        }
    })
    .await
    .expect("helloworld serves");
    let page_url = format!("http://{address}/metrics");
    // Keep reading its output, so that it never blocks on a full pipe.
    let drain = tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(2))
        .build()
        .expect("an HTTP client");
    let label = [("backend", backend)];
    let state = |s| [("backend", backend), ("state", s)];
    let service = [("backend", backend), ("service", name.as_str())];
    let errors = |page: &str| -> f64 {
        let backend = format!("backend=\"{backend}\"");
        page.lines()
            .filter(|l| l.starts_with("registry_errors_total{") && l.contains(&backend))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    };

    until(&http, &page_url, "healthy", |page| {
        sample(page, "registry_registrations", &state("registered")) == Some(1.0)
            && sample(page, "registry_watched_instances", &service) == Some(1.0)
            && sample(page, "registry_watch_staleness_seconds", &service) == Some(0.0)
    })
    .await;
    let page = scrape(&http, &page_url).await;
    let errors_before = errors(&page);
    let reregistrations_before =
        sample(&page, "registry_reregistrations_total", &label).unwrap_or(0.0);

    server.stop().await;
    until(&http, &page_url, "the server gone", |page| {
        sample(page, "registry_registrations", &state("lost")) == Some(1.0)
            && sample(page, "registry_registrations", &state("registered")) == Some(0.0)
            && errors(page) > errors_before
            && sample(page, "registry_watch_staleness_seconds", &service).is_some_and(|s| s > 0.0)
    })
    .await;

    server.start().await;
    until(&http, &page_url, "the server back", |page| {
        sample(page, "registry_registrations", &state("registered")) == Some(1.0)
            && sample(page, "registry_registrations", &state("lost")) == Some(0.0)
            && sample(page, "registry_reregistrations_total", &label)
                .is_some_and(|n| n > reregistrations_before)
            && sample(page, "registry_watch_staleness_seconds", &service) == Some(0.0)
            && sample(page, "registry_watched_instances", &service) == Some(1.0)
    })
    .await;

    terminate(&helloworld);
    drain.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd() {
    let mut server = EtcdServer::start().await;
    let url = format!("{}/metrics-test?ttl=2s&timeout=1s", server.url());
    metrics_move("etcd", &url, &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consul() {
    let mut server = ConsulAgent::start().await;
    let url = server.url("ttl=2s&timeout=1s");
    metrics_move("consul", &url, &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zookeeper() {
    let mut server = ZkServer::start().await;
    let url = server.url("/metrics-test?session_timeout=2s");
    metrics_move("zk", &url, &mut server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nacos() {
    let mut server = NacosServer::start().await;
    let url = server.url("");
    metrics_move("nacos", &url, &mut server).await;
}
