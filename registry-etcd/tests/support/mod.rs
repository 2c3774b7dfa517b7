//! A private etcd for the tests that break or reconfigure their server: its own ports and
//! data directory, so it never disturbs the shared server the conformance suite uses.

#![allow(dead_code)] // each test file uses part of it

#[allow(unused_imports)] // each test file uses part of it
pub use test_support::{
    eventually, free_port, instance, lists, watcher_reaches, EtcdServer, ServerTls,
};

/// Logs of this crate, shown for failing tests.
pub fn init_logs() {
    test_support::init_logs("registry_etcd");
}
