//! Generates the Greeter's gRPC code (needs `protoc`, as etcd-client does).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    tonic_prost_build::compile_protos("proto/helloworld.proto")?;
    Ok(())
}
