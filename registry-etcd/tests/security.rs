//! The connection options against real etcd servers of the tests' own: TLS with a client
//! certificate, user and password, and several endpoints of which one is down.

mod support;

use std::time::Duration;

use registry_core::{Discovery, Error, Registrar};
use registry_etcd::{Config, EtcdRegistry};
use support::{free_port, instance, EtcdServer, ServerTls};
use test_support::pki;

async fn round_trip(registry: &EtcdRegistry) {
    let me = instance("secure", "1");
    registry.register(&me).await.expect("register");
    assert_eq!(
        registry.get_service("secure").await.expect("list"),
        vec![me.clone()]
    );
    registry.deregister(&me).await.expect("deregister");
}

#[tokio::test]
async fn tls_with_a_client_certificate() {
    support::init_logs();
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = pki(dir.path());
    let server = EtcdServer::start_tls(ServerTls {
        ca: pki.ca.clone(),
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_cert_auth: true,
    })
    .await;

    let url = format!(
        "{}/tls?ca_file={}&cert_file={}&key_file={}&connect_timeout=3s",
        server.url(),
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );
    let registry = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect over TLS with a client certificate");
    round_trip(&registry).await;

    // Without a client certificate the server refuses us, and connect says so.
    let url = format!(
        "{}/tls?ca_file={}&connect_timeout=3s",
        server.url(),
        pki.ca.display()
    );
    let refused = EtcdRegistry::connect(Config::from_url(&url).expect("URL")).await;
    assert!(refused.is_err(), "a client without a certificate got in");

    // Plain text to a TLS server fails too.
    let plain = EtcdRegistry::connect(
        Config::from_url(&format!(
            "{}/tls?connect_timeout=2s&timeout=2s",
            server.url()
        ))
        .expect("URL"),
    )
    .await;
    assert!(plain.is_err(), "plain text reached a TLS server");

    // A CA file that is not there is a permanent, typed error.
    let url = format!("{}/tls?ca_file=/nonexistent/ca.pem", server.url());
    let err = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect_err("a missing CA file");
    assert!(
        matches!(
            err,
            Error::InvalidInput {
                field: "ca_file",
                ..
            }
        ),
        "{err}"
    );
    assert!(!err.is_temporary());
}

#[tokio::test]
async fn user_and_password() {
    support::init_logs();
    let mut server = EtcdServer::start().await;
    let mut admin = etcd_client::Client::connect([server.endpoint()], None)
        .await
        .expect("raw client");
    admin
        .user_add("root", "s3cret-pw", None)
        .await
        .expect("add root");
    admin
        .user_grant_role("root", "root")
        .await
        .expect("grant root");
    admin.auth_enable().await.expect("enable auth");

    let url = format!("etcd://root:s3cret-pw@{}/auth", server.endpoint());
    let registry = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect with user and password in the URL");
    round_trip(&registry).await;
    assert!(
        !format!("{registry:?}").contains("s3cret-pw"),
        "{registry:?}"
    );

    let url = format!(
        "{}/auth?username=root&password=s3cret-pw&ttl=2s&timeout=1s",
        server.url()
    );
    let registry = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect("connect with user and password as options");
    round_trip(&registry).await;

    // etcd forgets its auth tokens when restarted: the registration and later calls get a
    // new token by themselves.
    let kept = instance("secure", "kept");
    registry.register(&kept).await.expect("register");
    server.restart().await;
    support::lists(
        &registry,
        "secure",
        std::slice::from_ref(&kept),
        Duration::from_secs(15),
    )
    .await;
    let after = instance("secure", "after");
    support::eventually(
        Duration::from_secs(15),
        "register after the restart",
        || async { registry.register(&after).await.is_ok() },
    )
    .await;
    registry.deregister(&after).await.expect("deregister");
    registry.deregister(&kept).await.expect("deregister");

    let url = format!("{}/auth?username=root&password=wrong-pw", server.url());
    let err = EtcdRegistry::connect(Config::from_url(&url).expect("URL"))
        .await
        .expect_err("a wrong password");
    assert!(!err.to_string().contains("wrong-pw"), "{err}");
    assert!(
        !err.is_temporary(),
        "a wrong password is permanent: {err:?}"
    );

    // Without credentials nothing can be read or written.
    let anonymous = EtcdRegistry::connect(Config::from_url(&server.url()).expect("URL"))
        .await
        .expect("etcd answers its status without credentials");
    let err = anonymous
        .register(&instance("secure", "anon"))
        .await
        .expect_err("an anonymous write");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
}

#[tokio::test]
async fn several_endpoints_one_of_them_down() {
    support::init_logs();
    let server = EtcdServer::start().await;
    let down = format!("127.0.0.1:{}", free_port());
    let url = format!(
        "etcd://{down},{}/multi?connect_timeout=3s",
        server.endpoint()
    );
    let config = Config::from_url(&url).expect("URL");
    assert_eq!(config.endpoints, vec![down, server.endpoint()]);
    let registry = EtcdRegistry::connect(config)
        .await
        .expect("connect while one endpoint is down");
    round_trip(&registry).await;
    let via_facade_scheme = registry_etcd::connect(&url).await.expect("connect(url)");
    assert_eq!(via_facade_scheme.scheme(), "etcd");
}
