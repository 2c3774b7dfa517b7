//! An rnacos cluster of a test's own (its cluster mode).
