//! HTTPS with a client certificate and an ACL token, against a real Consul agent of the
//! test's own that requires both.

mod support;

use registry_consul::{Config, ConsulRegistry};
use registry_core::{Discovery, Error, Registrar};
use support::{instance, ConsulAgent};

const TOKEN: &str = "s3cret-root-token";
const WITHIN: std::time::Duration = std::time::Duration::from_secs(10);

#[tokio::test]
async fn https_with_a_client_certificate_and_a_token() {
    support::init_logs();
    let dir = tempfile::tempdir().expect("temporary directory");
    let pki = test_support::pki(dir.path());
    let agent = ConsulAgent::start_secure(&pki, TOKEN).await;
    let tls = format!(
        "ca_file={}&cert_file={}&key_file={}&deregister_after=1m",
        pki.ca.display(),
        pki.client_cert.display(),
        pki.client_key.display()
    );

    let registry = ConsulRegistry::connect(
        Config::from_url(&agent.url(&format!("{tls}&token={TOKEN}"))).expect("URL"),
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "connect over HTTPS: {e:?}; agent log:\n{}",
            agent.log_tail()
        )
    });
    assert!(!format!("{registry:?}").contains(TOKEN));
    let me = instance("secure", "1");
    registry
        .register(&me)
        .await
        .expect("register with the token");
    support::lists(&registry, "secure", std::slice::from_ref(&me), WITHIN).await;

    // Without the token the agent refuses writes: a typed, permanent error.
    let anonymous = ConsulRegistry::connect(Config::from_url(&agent.url(&tls)).expect("URL"))
        .await
        .expect("status needs no token");
    let err = anonymous
        .register(&instance("secure", "2"))
        .await
        .expect_err("an anonymous write");
    assert!(matches!(err, Error::PermissionDenied { .. }), "{err:?}");
    assert!(!err.is_temporary());

    // Without a client certificate, or in plain text, connect fails.
    let no_cert = format!(
        "ca_file={}&token={TOKEN}&connect_timeout=2s",
        pki.ca.display()
    );
    let refused =
        ConsulRegistry::connect(Config::from_url(&agent.url(&no_cert)).expect("URL")).await;
    let err = refused.expect_err("a client without a certificate got in");
    assert!(!err.to_string().contains(TOKEN), "{err}");
    let plain = ConsulRegistry::connect(
        Config::from_url(&agent.url("connect_timeout=2s&timeout=2s")).expect("URL"),
    )
    .await;
    assert!(plain.is_err(), "plain HTTP reached an HTTPS-only agent");

    registry.deregister(&me).await.expect("deregister");
    assert!(registry
        .get_service("secure")
        .await
        .expect("list")
        .is_empty());
}
