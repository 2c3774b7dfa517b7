//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by default).
//!
//! Not a stable API; for the fuzz targets only.

use registry_core::ServiceInstance;

/// Decodes the data of the node at `path` as an instance of service `name`, as a watch or
/// list does: `None` when it is not a valid instance of `name`.
///
/// Not a stable API; for the fuzz targets only.
pub fn decode(path: &str, data: &[u8], name: &str) -> Option<ServiceInstance> {
    crate::source::decode(path, data, name)
}
