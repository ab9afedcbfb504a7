//! Shared helpers for meshplane's integration tests.
