//! Rust SDK for meshplane, a control plane for WireGuard overlay networks.
//!
//! One [`Client`] holds the connection, the admin token, a per-call deadline
//! and a retry policy, and hands out a typed handle per service:
//! [`networks`](Client::networks), [`nodes`](Client::nodes),
//! [`gateways`](Client::gateways), [`ext_clients`](Client::ext_clients),
//! [`dns`](Client::dns), [`enrollment_keys`](Client::enrollment_keys) and
//! [`events`](Client::events). Messages are the generated types of
//! `meshplane-proto`, re-exported as [`proto`]; there is no second copy of
//! them. Errors keep the gRPC code and the server's field violations
//! ([`Error`]). Reads are retried with jittered exponential backoff when the
//! server is UNAVAILABLE; writes never are ([`RetryPolicy`]).
//!
//! The [`agent`] module is what a node's agent needs: registration and its
//! config as a stream of whole configs that survives server restarts.
//!
//! ```no_run
//! # async fn demo() -> meshplane_sdk::Result<()> {
//! use meshplane_sdk::{Client, Code, proto::Network};
//!
//! let client = Client::builder("http://127.0.0.1:50051")
//!     .token("mpa_...")
//!     .connect()
//!     .await?;
//! let bad = Network {
//!     name: "lab".into(),
//!     address_range: "10.0.0.1/24".into(),
//!     ..Default::default()
//! };
//! match client.networks().create(bad).await {
//!     Err(e) if e.code() == Code::InvalidArgument => {
//!         // "network.address_range": "10.0.0.1/24 has host bits set; ..."
//!         for v in e.field_violations() {
//!             eprintln!("{}: {}", v.field, v.description);
//!         }
//!     }
//!     other => drop(other?),
//! }
//! # Ok(()) }
//! ```
//!
//! TLS (`https://` endpoints, [`TlsConfig`]) needs the `tls` cargo feature.
#![deny(missing_docs)]

pub mod agent;
mod client;
mod error;
mod retry;
mod services;

pub use client::{Client, ClientBuilder, Secret, TlsConfig};
pub use error::{Error, ErrorKind, FieldViolation, ResourceInfo, Result, code_name};
pub use retry::{Backoff, RetryPolicy};
pub use services::{
    Dns, EnrollmentKeys, EventStream, Events, ExtClients, Gateways, Networks, Nodes, Policies,
};
/// The gRPC status code of an [`Error`].
pub use tonic::Code;

/// The generated `meshplane.v1` types (and client stubs), shared with the
/// server and the CLI.
pub use meshplane_proto::v1 as proto;

/// How streamed config updates are applied (what
/// [`agent::AgentClient::watch_config`] does for you).
pub use meshplane_proto::delta;

/// The encoded `FileDescriptorSet` of the `meshplane.v1` protos (with their
/// imports), for dynamic use such as rendering messages as proto3 JSON.
pub const FILE_DESCRIPTOR_SET: &[u8] = meshplane_proto::FILE_DESCRIPTOR_SET;
