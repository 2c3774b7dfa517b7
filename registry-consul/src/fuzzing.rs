//! Entry points for the fuzz targets in `fuzz/` (the `fuzzing` feature, off by default).
//!
//! Not a stable API; for the fuzz targets only. Each function is a thin wrapper over a
//! crate-private decoder of data read from Consul, so that the fuzz targets run the very code
//! the backend runs.

use registry_core::ServiceInstance;

use crate::format::{instances, HealthEntry};

/// Decodes a body of `GET /v1/health/service/:name` as a watch or list does: the entries
/// (an error when the body is not a JSON list of them), then the instance each describes
/// (one per id: the entry written last), skipping those that are not valid instances.
///
/// Not a stable API; for the fuzz targets only.
pub fn health(body: &[u8]) -> Result<Vec<ServiceInstance>, serde_json::Error> {
    let entries: Vec<HealthEntry> = serde_json::from_slice(body)?;
    Ok(instances(entries))
}
