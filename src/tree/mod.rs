//! File trees: the base of every snapshot mode (a container volume is a file tree).
//!
//! A frozen tree is one OCI image: its layers are tar+zstd changesets (the first a full
//! copy, later ones only what changed, with whiteouts for deletions), its config is a
//! plain OCI image config, and a freezer tree index ([`index`]) sits beside them.
//! Stock OCI tools can apply the layers in order; freezer uses the index to restore
//! exactly and to freeze only what changed.

pub mod exclude;
pub mod frames;
pub mod freeze;
pub mod index;
pub mod pages;
pub mod sqlite;
pub mod thaw;
pub mod walk;

pub use freeze::{freeze_tree, FreezeStats, PrevTree};
pub use thaw::{thaw_tree, ThawStats};

/// One directory of a site: the name it is stored under and where it is.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TreeSpec {
    pub name: String,
    pub path: std::path::PathBuf,
    /// What the freeze leaves out of it.
    #[serde(skip_serializing_if = "exclude::Excludes::is_empty")]
    pub excludes: exclude::Excludes,
    /// Its SQLite databases are copied as files even while the site runs (the container
    /// label `dev.freezer.sqlite=false`; see [`sqlite`]).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub sqlite_as_files: bool,
}

impl TreeSpec {
    /// The whole directory at `path`, stored as `name`, nothing left out.
    pub fn new(name: impl Into<String>, path: impl Into<std::path::PathBuf>) -> TreeSpec {
        TreeSpec {
            name: name.into(),
            path: path.into(),
            excludes: Default::default(),
            sqlite_as_files: false,
        }
    }
}
