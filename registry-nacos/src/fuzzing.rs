//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by default).
//!
//! Not a stable API; for the fuzz targets only. Each function is a thin wrapper over a
//! crate-private decoder of data read from Nacos, so that the fuzz targets run the very code
//! the backend runs.

use std::collections::BTreeMap;

use registry_core::ServiceInstance;

/// nacos-sdk's instance, as the backend reads it from Nacos.
pub use nacos_sdk::api::naming::ServiceInstance as NacosInstance;

/// Rebuilds the instances of service `name` from what the Nacos services of that name hold
/// (`services`: Nacos service name, such as `helloworld.grpc`, to its instances), with
/// `previous` the last complete value of each id, as a watch does. By instance id.
///
/// Not a stable API; for the fuzz targets only.
pub fn assemble(
    name: &str,
    services: &BTreeMap<String, Vec<NacosInstance>>,
    previous: &BTreeMap<String, ServiceInstance>,
) -> BTreeMap<String, ServiceInstance> {
    crate::format::assemble(name, services, previous)
}
