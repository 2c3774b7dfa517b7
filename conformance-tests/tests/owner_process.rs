//! The owner helper's protocol, which the crash case of every cross-process backend relies
//! on: it registers, reports it, deregisters on command, and dies on SIGKILL.

use std::path::Path;

use conformance_tests::cases::OwnerProcess;
use registry::ServiceInstance;

const BIN: &str = env!("CARGO_BIN_EXE_registry-owner");

#[tokio::test]
async fn owner_registers_deregisters_on_command_and_dies_on_kill() {
    let instance = ServiceInstance::builder("owned", "owner-protocol")
        .endpoint("grpc://127.0.0.1:9000")
        .build()
        .unwrap();
    // memory:// lives in the owner's own process: this checks the protocol, not visibility.
    let mut owner = OwnerProcess::spawn(Path::new(BIN), "memory://owner?ttl=1s", &instance).await;
    owner.deregister().await;
    owner.kill().await;
}

#[tokio::test]
async fn owner_reports_a_bad_url_and_exits() {
    let output = tokio::process::Command::new(BIN)
        .args(["nosuch://x", r#"{"id":"a","name":"b"}"#])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("unknown registry scheme"), "{stderr}");
    assert!(
        output.stdout.is_empty(),
        "nothing registered, nothing reported"
    );
}
