//! A Consul cluster of a test's own: servers and a client agent per simulated host.
