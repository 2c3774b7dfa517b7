//! Network namespaces of a test's own, for partitions.
