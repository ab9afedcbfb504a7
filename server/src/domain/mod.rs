//! The domain core: types, validation and pure functions. No tonic, no sqlx.

pub mod error;
pub mod names;
pub mod network;
pub mod page;
pub mod token;

pub use error::{Error, FieldViolation, Result};
