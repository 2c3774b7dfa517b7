//! Registers an instance, follows its service with a watcher, and deregisters it.
//!
//! ```sh
//! cargo run -p registry --example quickstart                 # memory://, no set-up
//! REGISTRY_URL=memory://demo?ttl=5s cargo run -p registry --example quickstart
//! ```

use registry::ServiceInstance;

#[tokio::main]
async fn main() -> registry::Result<()> {
    let registry = registry::connect_from_env().await?;
    println!("connected to a {}:// registry", registry.scheme());

    let mut watcher = registry.watch("helloworld").await?;
    println!("helloworld now: {:?}", watcher.next().await?);

    let instance = ServiceInstance::builder("helloworld-1", "helloworld")
        .version("v1.0.0")
        .metadata("zone", "local")
        .endpoint("http://127.0.0.1:8000")
        .endpoint("grpc://127.0.0.1:9000?isSecure=false")
        .build()?;
    registry.register(&instance).await?;
    for found in watcher.next().await?.iter() {
        let grpc = found.endpoint("grpc").map(|e| e.authority());
        println!(
            "registered {} {} {:?}: grpc at {}",
            found.name,
            found.id,
            found.version,
            grpc.unwrap_or_default()
        );
    }

    registry.deregister(&instance).await?;
    println!("after deregister: {:?}", watcher.next().await?);
    Ok(())
}
