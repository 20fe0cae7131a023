//! Where repository objects live: a local directory or an S3-compatible bucket.
//!
//! The store knows nothing about snapshots, sites or formats: it moves named byte
//! strings. Keys are relative, `/`-separated (`blobs/sha256/ab…`). The interface is
//! synchronous on purpose: the heavy work (walking trees, tar, zstd) runs on plain
//! threads, and the S3 backend drives its async client from there with `block_on`.

#[doc(hidden)]
pub mod conformance;
mod local;
mod memory;
pub mod retry;
mod s3;

use std::io::Read;
use std::path::{Path, PathBuf};

pub use local::LocalStore;
pub use memory::MemoryStore;
pub use retry::RetryPolicy;
pub use s3::{S3Options, S3Store};

use crate::error::{Error, Result};

/// One object as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    /// When the object was last written, by the store's clock (None if unknown).
    pub modified: Option<std::time::SystemTime>,
}

pub trait Store: Send + Sync {
    /// Human-readable location, e.g. `s3://bucket/prefix` or `/srv/backups`; used in messages.
    fn location(&self) -> String;
    /// Reads a whole (small) object. A missing object is an `ErrorKind::NotFound` error.
    fn get(&self, key: &str) -> Result<Vec<u8>>;
    /// Streams an object; memory stays bounded whatever its size.
    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>>;
    /// Reads `len` bytes of an object from `start` (one ranged GET). Fewer bytes come
    /// back only where the object ends.
    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>>;
    /// The size of an object, or None when it does not exist.
    fn size(&self, key: &str) -> Result<Option<u64>>;
    /// Writes a small object in one request. Writes are atomic: readers see all or nothing.
    fn put(&self, key: &str, data: &[u8]) -> Result<()>;
    /// Writes a small blob that others need not see until this store's next `put`,
    /// `put_file` or read (the write of a record that names it comes after): a local
    /// store makes many such blobs durable with one sync. Elsewhere it is `put`.
    fn put_unsettled(&self, key: &str, data: &[u8]) -> Result<()> {
        self.put(key, data)
    }
    /// Moves a finished local file (created in [`Store::spool_dir`]) into the store, atomically.
    /// Large files go up in parts; the local file is gone afterwards.
    fn put_file(&self, key: &str, file: &Path) -> Result<()>;
    /// Lists every object under a key prefix (`blobs/`, `snapshots/site/`).
    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>>;
    /// Deletes one object. Freeze never calls it; prune and tests do.
    fn delete(&self, key: &str) -> Result<()>;
    /// Where to stage files before `put_file`; for a local store this is inside the
    /// repository, so that `put_file` is a rename.
    fn spool_dir(&self) -> Result<PathBuf>;
    /// Whether the latest attempt to reach the store failed (a store that retries
    /// tracks this; others are never failing).
    fn failing(&self) -> bool {
        false
    }
}

/// A repository address as the user writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl StoreUrl {
    pub fn parse(url: &str) -> Result<Self> {
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(
                    Error::usage(format!("repository URL {url:?} has no bucket"))
                        .with_hint("write it as s3://BUCKET/PREFIX"),
                );
            }
            let prefix = prefix.trim_matches('/').to_string();
            return Ok(StoreUrl::S3 {
                bucket: bucket.to_string(),
                prefix,
            });
        }
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(Error::usage(format!(
                    "repository URL {url:?}: file:// URLs take an absolute path"
                )));
            }
            return Ok(StoreUrl::Local(PathBuf::from(path)));
        }
        if url.contains("://") {
            return Err(Error::usage(format!(
                "repository URL {url:?} has a scheme freezer does not know"
            ))
            .with_hint("use s3://BUCKET/PREFIX, file:///PATH or a plain directory path"));
        }
        if url.is_empty() {
            return Err(Error::usage("the repository URL is empty"));
        }
        Ok(StoreUrl::Local(PathBuf::from(url)))
    }
}

/// Opens the store behind a URL. S3 settings come from `s3` (config file and `AWS_*`).
pub fn open(url: &StoreUrl, s3: &S3Options) -> Result<Box<dyn Store>> {
    Ok(match url {
        StoreUrl::Local(path) if path.exists() && !path.is_dir() => {
            return Err(Error::usage(format!(
                "the repository path {} is a file, not a directory",
                path.display()
            ))
            .with_hint("point --repo (or FREEZER_REPO, or repo in freezer.toml) at a repository directory, or at a new path for freezer init"))
        }
        StoreUrl::Local(path) => Box::new(LocalStore::new(path.clone())),
        StoreUrl::S3 { bucket, prefix } => Box::new(S3Store::new(bucket, prefix, s3)?),
    })
}

/// Names of spooled files: their owner's pid and host, for [`sweep_spool`].
const SPOOL_TAG: &str = "freezer-spool";

/// A new file in a spool directory, named after the run that owns it.
pub fn spool_file(dir: &Path) -> Result<tempfile::NamedTempFile> {
    tempfile::Builder::new()
        .prefix(&crate::sys::owned_prefix(SPOOL_TAG))
        .tempfile_in(dir)
        .map_err(|e| Error::io(format!("creating a file in {}", dir.display()), e))
}

/// The error of a write into `dir`: a full disk is named as such, with its free space
/// (not the source that was being read at the time); anything else says `what` failed.
pub fn write_error(dir: &Path, what: impl std::fmt::Display, e: std::io::Error) -> Error {
    if e.raw_os_error() != Some(libc::ENOSPC) {
        return Error::io(what, e);
    }
    let free = crate::sys::free_space(dir)
        .map(|b| format!(" ({} free)", crate::progress::bytes(b)))
        .unwrap_or_default();
    // Only the spool of an S3 repository lives in TMPDIR; a local repository's is its own.
    let hint = if dir == std::env::temp_dir() {
        "free space there, or point TMPDIR at a larger disk, and run again; nothing was recorded, and what was uploaded is reused"
    } else {
        "free space there and run again; nothing was recorded, and what was stored is reused"
    };
    Error::io(
        format!("the disk holding {} is full{free}", dir.display()),
        e,
    )
    .with_hint(hint)
}

/// Removes the spooled files of runs on this host that died (SIGKILL, power loss), which
/// could not remove them themselves.
fn sweep_spool(dir: &Path) {
    crate::sys::remove_dead_leftovers(dir, SPOOL_TAG);
}

/// Rejects keys that could step outside the repository on a local store.
pub(crate) fn check_key(key: &str) -> Result<()> {
    let bad = key.is_empty()
        || key.starts_with('/')
        || key
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        return Err(Error::integrity(format!("invalid object key {key:?}")));
    }
    Ok(())
}
