//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by default).
//!
//! Not a stable API; for the fuzz targets only.

use registry_core::ServiceInstance;

/// Decodes the data of the node at `path` as an instance of service `name`, as a watch or
/// list does: `None` when it is not a valid instance of `name`.
///
/// `source::decode` is private to its module, so this calls what it consists of: the core's
/// decoder with this backend's name. Keep the two the same (or make `source::decode`
/// `pub(crate)` and call it here).
///
/// Not a stable API; for the fuzz targets only.
pub fn decode(path: &str, data: &[u8], name: &str) -> Option<ServiceInstance> {
    registry_core::untrusted::decode("zookeeper", name, path, data)
}
