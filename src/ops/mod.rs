//! The operations behind the commands, over a whole site: plan, then execute.
//!
//! Each takes explicit arguments and returns a report; printing is the binary's job.
//!
//! One module per command; everything is re-exported here, so callers name `ops::X`.

mod export;
mod forget;
mod freeze;
mod snapshots;
mod thaw;
mod verify;

pub use export::*;
pub use forget::*;
pub use freeze::*;
pub use snapshots::*;
pub use thaw::*;
pub use verify::*;

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;

pub const A_TREE_FILES: &str = "dev.freezer.tree.files";
pub const A_TREE_BYTES: &str = "dev.freezer.tree.bytes";

/// One directory of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeSpec {
    pub name: String,
    pub path: PathBuf,
}

/// Puts `what` in front of an error's message, once.
pub fn prefix(mut e: Error, what: &str) -> Error {
    if !e.message.contains(what) {
        e.message = format!("{what}: {}", e.message);
    }
    e
}

pub use crate::sys::hostname;
