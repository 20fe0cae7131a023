//! freezer: freeze a site (its file trees, later its databases and containers) into an
//! OCI-shaped repository on S3-compatible storage, and thaw it onto any host.
//!
//! Data flows one way: [`cli`] → [`settings`] → [`ops`] (plan, execute) → [`tree`]
//! (walk, tar+zstd layers, index) → [`repo`] (blobs and records) → [`store`] (local
//! directory or S3). Thaw runs the same path backwards. `store` and `repo` know nothing
//! of file trees; `tree` knows nothing of S3.

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
