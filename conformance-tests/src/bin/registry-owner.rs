//! The owner process of the conformance suite's crash case.
//!
//! `registry-owner URL INSTANCE_JSON` connects to `URL`, registers the instance, prints
//! `registered`, then reads commands from standard input: `deregister` deregisters it and
//! prints `deregistered`. It exits when standard input closes; the suite kills it with
//! SIGKILL to simulate a crash.

use std::process::ExitCode;

use registry::ServiceInstance;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("registry-owner: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(json)) = (args.next(), args.next()) else {
        return Err("usage: registry-owner URL INSTANCE_JSON".into());
    };
    let instance: ServiceInstance = serde_json::from_str(&json)?;
    let registry = registry::connect(&url).await?;
    registry.register(&instance).await?;
    println!("registered");

    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    while let Some(line) = lines.next_line().await? {
        if line.trim() == "deregister" {
            registry.deregister(&instance).await?;
            println!("deregistered");
        }
    }
    Ok(())
}
