//! `App::run`, the service lifecycle, on `memory://`.

use std::time::Duration;

use registry_client::App;
use registry_core::ServiceInstance;

/// A server that ends on its own (it failed to start, say) ends the run: the instance is
/// deregistered and `run` returns instead of panicking on the finished server's handle.
#[tokio::test]
async fn a_server_that_ends_early_ends_the_run() {
    let registry = registry::connect("memory://app-early-end")
        .await
        .expect("memory registry");
    let app = App::new(registry.clone()).drain(Duration::ZERO);
    let mut stop = app.stop_signal();
    let failed = tokio::spawn(async {}); // ends at once
    let well = tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
    });
    let me = ServiceInstance::builder("early-1", "early")
        .endpoint("http://127.0.0.1:1")
        .build()
        .expect("instance");
    let run = app.run(me, vec![failed, well], std::future::pending::<()>());
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the run ends once a server ended")
        .expect("deregistered");
    let left = registry.get_service("early").await.expect("get");
    assert!(left.is_empty(), "still registered: {left:?}");
}
