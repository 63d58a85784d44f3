//! outbox: a durable webhook outbox. See README.md.

pub mod api;
pub mod clock;
pub mod config;
pub mod credential;
pub mod delivery;
pub mod dns;
pub mod engine;
pub mod enqueue;
pub mod error;
pub mod headers;
pub mod http_server;
pub mod json;
pub mod memory;
pub mod metrics;
pub mod policy;
pub mod priority;
pub mod render;
pub mod secret_box;
pub mod send;
pub mod store;
pub mod systemd;
pub mod vault;

pub use error::{Error, Result};
