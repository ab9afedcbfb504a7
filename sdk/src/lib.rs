//! Rust SDK for meshplane. For now it re-exports the generated types and
//! client stubs; the typed client lands with the SDK issue.

/// The generated `meshplane.v1` types and client stubs.
pub use meshplane_proto::v1 as proto;
