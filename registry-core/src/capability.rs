//! What a backend can do, declared once by each backend.

use std::time::Duration;

/// What a backend offers. Each backend fills this in; [`crate::Checked`] refuses calls the
/// backend did not declare with [`crate::Error::Unsupported`], and the conformance suite runs
/// only the cases a backend claims.
///
/// Build one from [`Default`] (everything off) and set the fields that hold:
///
/// ```
/// use std::time::Duration;
/// use registry_core::Capabilities;
/// let caps = Capabilities {
///     register: true,
///     watch: true,
///     ttl_expiry: true,
///     expiry_slack: Duration::from_secs(1),
///     ..Default::default()
/// };
/// assert!(!caps.list_services);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `register` and `deregister` are available.
    pub register: bool,
    /// `watch` is available.
    pub watch: bool,
    /// `list_services` (every service name in the registry's namespace) is available.
    pub list_services: bool,
    /// An instance whose owner dies without deregistering is removed by the registry once its
    /// TTL (lease, session, health check) runs out.
    pub ttl_expiry: bool,
    /// Registrations are visible to other processes (false for `memory://`).
    pub cross_process: bool,
    /// How long after the TTL an expired instance may still be listed: the backend's
    /// documented slack on top of the TTL.
    pub expiry_slack: Duration,
    /// The shortest TTL the backend (or its server) accepts.
    pub min_ttl: Duration,
    /// A watcher is told ([`crate::WatchEvent::Degraded`]) of every outage of the server,
    /// however brief (a restart). Where false, the client library reconnects out of sight,
    /// and only an outage longer than the backend's probe is told; the lists stay true either
    /// way.
    pub reports_every_outage: bool,
    /// What the backend's server can hold of an instance's metadata, where it holds less
    /// than the core's bounds ([`crate::validate`]). Within these limits every value
    /// round-trips exactly; beyond them `register` fails with a permanent
    /// [`crate::Error::InvalidInput`] and writes nothing.
    pub metadata: MetadataLimits,
}

/// Limits a server puts on an instance's metadata, on top of the core's bounds
/// ([`crate::validate`]); [`Default`] is the core's bounds alone.
///
/// ```
/// use registry_core::{validate, MetadataLimits};
/// let core = MetadataLimits::default();
/// assert_eq!(core.value_bytes, validate::MAX_METADATA_BYTES);
/// assert!(!core.token_keys);
/// assert_eq!(core.total_chars, usize::MAX);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetadataLimits {
    /// The most entries.
    pub entries: usize,
    /// The longest value, in bytes.
    pub value_bytes: usize,
    /// Keys are limited to ASCII letters, digits, `_` and `-` (Consul's rule), so a key with
    /// any other character (unicode, `.`) is refused.
    pub token_keys: bool,
    /// The most characters (UTF-16 code units) of all keys and values together, counting the
    /// keys the backend adds itself (Nacos: 1024 per endpoint), so an instance's own metadata
    /// has somewhat less room; `usize::MAX` where only the bounds above apply.
    pub total_chars: usize,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        MetadataLimits {
            entries: crate::validate::MAX_METADATA_ENTRIES,
            value_bytes: crate::validate::MAX_METADATA_BYTES,
            token_keys: false,
            total_chars: usize::MAX,
        }
    }
}
