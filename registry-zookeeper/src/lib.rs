//! The ZooKeeper backend of the service registry toolkit (`zk://`).
//!
//! Not implemented yet: this crate holds its place in the workspace layout. The facade's
//! `connect("zk://...")` answers with [`registry_core::Error::Unsupported`] until it lands.

/// The URL scheme this backend will serve.
pub const SCHEME: &str = "zk";
