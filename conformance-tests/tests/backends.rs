//! The conformance suite against every backend that has landed: one line per backend.
//!
//! Server addresses default to the loopback ports `scripts/backends up` uses. A server that
//! cannot be reached fails its cases.

use std::time::Duration;

use conformance_tests::{conformance_suite, Target};

conformance_suite!(
    memory,
    Target::new("memory", |run| format!("memory://conformance-{run}"))
        .short_ttl(Duration::from_secs(1))
);

#[cfg(feature = "etcd")]
conformance_suite!(
    etcd,
    Target::new("etcd", |run| format!(
        "etcd://127.0.0.1:2379/conformance-{run}"
    ))
);

// Consul has no namespaces: the suite's service names carry the run id. Critical leftovers
// of crash cases are reaped after a minute.
#[cfg(feature = "consul")]
conformance_suite!(
    consul,
    Target::new("consul", |_run| {
        "consul://127.0.0.1:8500?deregister_after=1m".to_owned()
    })
);

// The session timeout is ZooKeeper's TTL; the shared server's tick is 500 ms (floor 1 s).
#[cfg(feature = "zookeeper")]
conformance_suite!(
    zookeeper,
    Target::new("zookeeper", |run| format!(
        "zk://127.0.0.1:2181/conformance-{run}"
    ))
    .ttl_param("session_timeout")
);

// Nacos' expiry is the server's: a dead owner's connection drops at once; a silent one is
// probed after the server's detection timeout (2 s on the test server, plus 3 s for the
// answer and a 2 s check period). A namespace per run keeps runs apart.
#[cfg(feature = "nacos")]
conformance_suite!(
    nacos,
    Target::new("nacos", |run| format!(
        "nacos://127.0.0.1:8848?namespace=conformance-{run}"
    ))
    .ttl_param("")
    .short_ttl(Duration::from_secs(6))
);
