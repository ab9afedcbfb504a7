//! The domain core: types, validation and pure functions. No tonic, no sqlx.

pub mod config;
pub mod crypto;
pub mod dns;
pub mod enrollment;
pub mod error;
pub mod event;
pub mod ext_client;
pub mod failover;
pub mod firewall;
pub mod gateway;
pub mod host;
pub mod ipam;
pub mod names;
pub mod network;
pub mod node;
pub mod page;
pub mod policy;
#[cfg(test)]
pub(crate) mod proptests;
pub mod route;
pub mod rules;
pub mod sync;
pub mod token;
pub mod wgquick;

pub use error::{Error, FieldViolation, Result};

/// The current time at the precision the store keeps (microseconds), so what
/// a write returns equals what a later read returns.
pub fn now() -> chrono::DateTime<chrono::Utc> {
    let t = chrono::Utc::now();
    chrono::DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}
