//! The operations behind the commands, over a whole site: plan, then execute.
//!
//! Each takes explicit arguments and returns a report; printing is the binary's job.
//!
//! One module per command; what callers use is re-exported here by name, so callers name
//! `ops::X` and each item says where it comes from.

mod browse;
mod copy;
pub mod drill;
mod export;
mod forget;
mod freeze;
pub mod hooks;
mod images;
mod keys;
pub mod mount;
pub mod onto;
pub mod prune;
pub mod recreate;
mod restore;
mod site;
mod snapshots;
mod sources;
pub mod status;
#[cfg(test)]
pub(crate) mod testkit;
mod thaw;
mod verify;

pub use crate::format::{A_TREE_BYTES, A_TREE_FILES};
pub use browse::{cat, diff, ls, write_file, EntryInfo, Listing};
pub use copy::{copy, plan_copy, preview_copy, CopyPlan, CopyRequest};
pub use export::{export, LayerCompression};
pub use forget::{forget, plan_forget};
pub use freeze::{
    freeze, freeze_before_replace, plan_site, preview_excludes, FreezePlan, FreezeReport,
    FreezeRequest, TreeExcluded,
};
pub use keys::{change_keys, init, KeyChange, KeyReport, NewKeys};
pub use site::{drill_site, plan_site_thaw, thaw_site, SiteThawReport, ThawKind, ThawRequest};
pub use snapshots::{snapshots, SnapshotInfo};
pub use thaw::{
    excluded_by, plan_thaw, thaw, DbThawFlags, Replace, ThawPlan, ThawPlanView, ThawReport,
    ThawTree, ThawTreeReport,
};
pub use verify::verify;

pub(crate) use crate::error::prefix;

/// What a thaw does with one thing it restores (a tree, a database, a volume, a network,
/// an image). Printed by `--dry-run` and in JSON plans by its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Made new: nothing is there.
    Create,
    /// Used as it is: an existing network, or an empty volume.
    Reuse,
    /// Its contents are replaced (`--replace`).
    Replace,
    /// Removed and made again (a remote engine's volume, with `--replace`).
    Recreate,
    /// Written through a remote engine into the directory it creates.
    Write,
    /// An image the engine has.
    Present,
    /// An image loaded from the snapshot.
    Load,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Create => "create",
            Action::Reuse => "reuse",
            Action::Replace => "replace",
            Action::Recreate => "recreate",
            Action::Write => "write",
            Action::Present => "present",
            Action::Load => "load",
        }
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}
