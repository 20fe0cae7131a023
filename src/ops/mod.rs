//! The operations behind the commands, over a whole site: plan, then execute.
//!
//! Each takes explicit arguments and returns a report; printing is the binary's job.
//!
//! One module per command; everything is re-exported here, so callers name `ops::X`.

pub mod drill;
mod export;
mod forget;
mod freeze;
pub mod prune;
pub mod recreate;
mod snapshots;
mod thaw;
mod verify;

pub use export::*;
pub use forget::*;
pub use freeze::*;
pub use snapshots::*;
pub use thaw::*;
pub use verify::*;

pub use crate::format::{A_TREE_BYTES, A_TREE_FILES};

pub(crate) use crate::error::prefix;
