//! Faults against a real Nacos-compatible server (rnacos) of the test's own: the server killed
//! and restarted; nacos-sdk's redo registers the instance again and a watcher created before
//! the fault delivers it, and a change after it.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Registrar};
use registry_nacos::{Config, NacosRegistry};
use support::{instance, lists, watcher_reaches, NacosServer};

const WITHIN: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted() {
    support::init_logs();
    let mut server = NacosServer::start().await;
    let url = server.url("namespace=public");
    let owner = NacosRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect");
    let watching = NacosRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect");
    let a = instance("svc", "a");
    owner.register(&a).await.expect("register");
    let mut watcher = watching.watch("svc").await.expect("watch");
    watcher_reaches(&mut watcher, std::slice::from_ref(&a), WITHIN).await;

    server.restart().await;

    // Seen by a client that knows nothing of it: the owner's redo registered it again.
    let fresh = NacosRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect");
    lists(&fresh, "svc", std::slice::from_ref(&a), WITHIN).await;
    let mut b = instance("svc", "b");
    b.endpoints = vec!["grpc://127.0.0.1:9100".into()];
    fresh.register(&b).await.expect("register after the fault");
    watcher_reaches(&mut watcher, &[a.clone(), b.clone()], WITHIN).await;
    owner.deregister(&a).await.expect("deregister");
    watcher_reaches(&mut watcher, std::slice::from_ref(&b), WITHIN).await;
}
