//! A private server for the tests that break or reconfigure their server (its own ports and
//! data directory, so it never disturbs the shared server the conformance suite uses), and
//! the waiting helpers: all from `test-support`, which the conformance suite uses too.

#![allow(dead_code)] // each test file uses part of it

#[allow(unused_imports)] // each test file uses part of it
pub use test_support::{eventually, free_port, instance, lists, watcher_reaches, ConsulAgent};

/// Logs of this crate, shown for failing tests.
pub fn init_logs() {
    test_support::init_logs("registry_consul");
}
