//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by default).
//!
//! Not a stable API; for the fuzz targets only. Each function is a thin wrapper over a
//! crate-private decoder of data read from etcd, so that the fuzz targets run the very code
//! the backend runs.

use registry_core::ServiceInstance;

/// Decodes the value etcd holds at `key` as an instance of service `name`, exactly as a
/// watch or list does: `None` when it is not a valid instance of `name`.
///
/// Not a stable API; for the fuzz targets only.
pub fn decode(key: &[u8], value: &[u8], name: &str) -> Option<ServiceInstance> {
    crate::source::decode(key, value, name)
}
