//! outbox: a durable webhook outbox. See README.md.

pub mod clock;
pub mod delivery;
pub mod error;
pub mod policy;
pub mod secret_box;
pub mod store;

pub use error::{Error, Result};
