//! The watch's blocking queries against a fake agent that answers every query at once
//! without its index moving (what Consul documents may happen, and what a misbehaving agent
//! or proxy does without end): every query carries `index` and `wait`, and the watch paces
//! such a storm instead of spinning.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use registry_consul::{Config, ConsulRegistry};
use registry_core::Discovery;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A fake agent: the leader for the connect ping, and an empty passing list at index 7 for
/// every health query, blocking or not, answered at once. Records the health queries.
struct FakeAgent {
    address: String,
    queries: Arc<Mutex<Vec<String>>>,
    blocking: Arc<AtomicUsize>,
}

impl FakeAgent {
    async fn start() -> FakeAgent {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address").to_string();
        let queries = Arc::new(Mutex::new(Vec::new()));
        let blocking = Arc::new(AtomicUsize::new(0));
        let (q, b) = (queries.clone(), blocking.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, q.clone(), b.clone()));
            }
        });
        FakeAgent {
            address,
            queries,
            blocking,
        }
    }
}

async fn serve(
    mut stream: TcpStream,
    queries: Arc<Mutex<Vec<String>>>,
    blocking: Arc<AtomicUsize>,
) {
    let mut buffer = Vec::new();
    loop {
        // GET requests: no body; one request ends at the blank line.
        let end = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buffer.extend_from_slice(&chunk[..n]),
            }
        };
        let request = String::from_utf8_lossy(&buffer[..end]).into_owned();
        buffer.drain(..end);
        let target = request
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        let body = if target.starts_with("/v1/status/leader") {
            "\"127.0.0.1:8300\""
        } else {
            if target.contains("index=") {
                blocking.fetch_add(1, Ordering::SeqCst);
            }
            queries.lock().expect("lock").push(target);
            "[]"
        };
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Consul-Index: 7\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

#[tokio::test]
async fn answers_at_once_without_a_change_are_paced_and_every_query_blocks() {
    let agent = FakeAgent::start().await;
    let config = Config::from_url(&format!("consul://{}?wait=30s", agent.address)).expect("URL");
    let registry = ConsulRegistry::connect(config).await.expect("connect");
    let watcher = registry.watch("storm").await.expect("watch");

    let window = Duration::from_secs(2);
    tokio::time::sleep(window).await;
    let blocking = agent.blocking.load(Ordering::SeqCst);
    // Unpaced, the watch would send thousands. Paced: a few at once, then a pause that
    // doubles from 100 ms (±50 %): fewer than a dozen in two seconds, and at least the first.
    assert!(
        (1..=12).contains(&blocking),
        "{blocking} blocking queries in {window:?}"
    );

    let queries = agent.queries.lock().expect("lock").clone();
    let (first, follow) = queries.split_first().expect("the first list");
    assert!(
        first.starts_with("/v1/health/service/storm?") && first.contains("passing=true"),
        "{first}"
    );
    for query in follow {
        assert!(
            query.contains("passing=true")
                && query.contains("index=7")
                && query.contains("wait=30000ms"),
            "a query of the watch without index and wait: {query}"
        );
    }
    drop(watcher);
}
