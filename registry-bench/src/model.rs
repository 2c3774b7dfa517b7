//! The instances the benchmark writes: unique per run, one address each (Nacos keys an
//! instance by address), and a `seq` metadata value that each change raises.

use std::net::Ipv4Addr;

use anyhow::{Context, Result};
use registry::ServiceInstance;

/// Address spaces, so that the instances of different items never share an address.
#[derive(Debug, Clone, Copy)]
pub enum Space {
    /// Registered through our API.
    Ours = 1,
    /// Registered through the raw client.
    Raw = 2,
    /// Written in bulk by the raw client.
    Bulk = 3,
    /// The 200-registration batches.
    Batch = 4,
    /// The owner processes.
    Owner = 5,
}

/// The port of every instance's endpoint.
pub const PORT: u16 = 9000;

/// A distinct address for each (space, index), index below 2^17.
pub fn address(space: Space, index: usize) -> Ipv4Addr {
    let index = (index as u32) & 0x1_ffff;
    Ipv4Addr::from(0x0A00_0000 | ((space as u32) << 17) | index)
}

/// An instance of `service` with id `id`, one gRPC endpoint at the address of
/// (`space`, `index`), version `v1` and metadata `seq` = `seq`.
pub fn instance(
    service: &str,
    id: &str,
    space: Space,
    index: usize,
    seq: u64,
) -> Result<ServiceInstance> {
    ServiceInstance::builder(id, service)
        .version("v1")
        .metadata("seq", seq.to_string())
        .endpoint(format!("grpc://{}:{PORT}", address(space, index)))
        .build()
        .with_context(|| format!("instance {service}/{id}"))
}

/// `instance` with another `seq`.
pub fn with_seq(instance: &ServiceInstance, seq: u64) -> ServiceInstance {
    let mut changed = instance.clone();
    changed.metadata.insert("seq".to_owned(), seq.to_string());
    changed
}

/// The bulk instances of a service: `inst-000000`, `inst-000001`, ... The first is the one
/// the watch items change.
pub fn bulk(service: &str, count: usize) -> Result<Vec<ServiceInstance>> {
    (0..count)
        .map(|i| instance(service, &format!("inst-{i:06}"), Space::Bulk, i, 0))
        .collect()
}

/// The id of the instance the watch items change.
pub const TARGET: &str = "inst-000000";

/// The endpoint's host and port of an instance written by [`instance`].
pub fn host_port(instance: &ServiceInstance) -> Result<(String, u16)> {
    let endpoint = instance
        .parsed_endpoints()?
        .into_iter()
        .next()
        .context("an instance without endpoints")?;
    Ok((endpoint.host().to_owned(), endpoint.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_distinct_per_space_and_index() {
        assert_eq!(address(Space::Ours, 0), Ipv4Addr::new(10, 2, 0, 0));
        assert_ne!(address(Space::Bulk, 99_999), address(Space::Batch, 99_999));
        assert_ne!(address(Space::Bulk, 70_000), address(Space::Bulk, 4_464));
    }
}
