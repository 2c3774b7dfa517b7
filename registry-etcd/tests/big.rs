//! A service bigger than one answer the etcd client decodes (16 MiB): its values, written with
//! the raw etcd client, exceed 16 MiB in total, and it is listed whole — in pages at one
//! revision, a first page too large being asked again smaller — by `get_service` and by a
//! watcher's first list, and then followed.

mod support;

use std::time::Duration;

use etcd_client::{Client, Txn, TxnOp};
use registry_core::{Discovery, ServiceInstance};
use registry_etcd::{Config, EtcdRegistry};
use support::{watcher_reaches, EtcdServer};

const WITHIN: Duration = Duration::from_secs(30);
const INSTANCES: usize = 1100;
/// About 16 KiB of metadata per instance: 1,100 of them make about 18 MB of values.
const BLOB: usize = 16 * 1024;
/// Puts per transaction: about 1 MB, under etcd's 1.5 MiB request limit.
const PER_TXN: usize = 60;

fn instance(i: usize) -> ServiceInstance {
    ServiceInstance::builder(format!("i{i:04}"), "big")
        .version("v1")
        .metadata("blob", format!("{i:05}").repeat(BLOB / 5))
        .endpoint(format!("http://10.0.{}.{}:8080", i / 250, i % 250 + 1))
        .build()
        .expect("instance")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_bigger_than_a_grpc_message_is_listed_and_watched() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let mut raw = Client::connect([server.endpoint()], None)
        .await
        .expect("raw etcd client");
    let expected: Vec<ServiceInstance> = (0..INSTANCES).map(instance).collect();
    let mut total = 0;
    for chunk in expected.chunks(PER_TXN) {
        let puts: Vec<TxnOp> = chunk
            .iter()
            .map(|i| {
                let value = i.to_json();
                total += value.len();
                TxnOp::put(format!("/microservices/big/{}", i.id), value, None)
            })
            .collect();
        raw.txn(Txn::new().and_then(puts)).await.expect("txn");
    }
    assert!(total > 16 * 1024 * 1024, "{total} bytes of values");

    let registry = EtcdRegistry::connect(Config::from_url(&server.url()).expect("URL"))
        .await
        .expect("connect");
    let listed = registry.get_service("big").await.expect("get_service");
    assert_eq!(listed.len(), INSTANCES);
    assert!(
        listed == expected,
        "get_service lists every instance as written"
    );

    let mut watcher = registry.watch("big").await.expect("watch");
    let first = watcher.next().await.expect("first list");
    assert_eq!(first.len(), INSTANCES);
    assert!(
        first.as_slice() == expected.as_slice(),
        "the first list is the whole service"
    );

    // Followed from there: a transaction deleting a hundred of them is one change.
    let deletes: Vec<TxnOp> = expected[..100]
        .iter()
        .map(|i| TxnOp::delete(format!("/microservices/big/{}", i.id), None))
        .collect();
    raw.txn(Txn::new().and_then(deletes)).await.expect("txn");
    watcher_reaches(&mut watcher, &expected[100..], WITHIN).await;
}
