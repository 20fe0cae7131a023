//! freezer: freeze a site (its file trees, databases and containers) into an OCI-shaped
//! repository on S3-compatible storage, and thaw it onto any host.
//!
//! Data flows one way, in layers; a module uses only the layers below it (checked by
//! `src/layers.rs`, listed in README's "Code layout"):
//!
//! - [`cli`]: arguments → a request → one library call → what is printed;
//! - [`settings`], [`monitor`]: what the user asked for, resolved; pings and metrics;
//! - [`ops`]: plan, then execute (freeze, thaw incl. recreating a Docker site, drill,
//!   verify, export, forget, prune, keys);
//! - [`tree`], [`db`], [`docker`], [`lock`], [`retention`]: sources and formats;
//! - [`repo`], [`crypto`], [`interrupt`]: blobs and records, sealing, signal cleanup;
//! - [`store`], [`format`]: where objects live; the OCI documents and snapshot parts;
//! - [`error`], [`sys`], [`progress`], [`fault`]: errors, the host, progress and the
//!   cancel token, test-only fault points.
//!
//! Thaw runs the same path backwards. `store` and `repo` know nothing of file trees;
//! `tree` knows nothing of S3.

pub mod cli;
pub mod crypto;
pub mod db;
pub mod docker;
pub mod error;
pub mod fault;
pub mod format;
pub mod interrupt;
pub mod lock;
pub mod monitor;
pub mod ops;
pub mod progress;
pub mod repo;
pub mod retention;
pub mod settings;
pub mod store;
#[doc(hidden)]
pub mod sys;
pub mod tree;

pub use error::{Error, ErrorKind, Result};

#[cfg(test)]
mod layers;
