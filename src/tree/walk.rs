//! Walks a directory tree in the index's depth-first, name-sorted order, never following
//! symlinks. Memory is bounded by the directories on the current path, not the tree.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::exclude::{Excluded, Matcher};
use super::index::join;
use crate::error::{Error, IoContext, Result};

pub struct Walked {
    /// Relative index path (`.` for the root).
    pub rel: Vec<u8>,
    pub abs: PathBuf,
    pub meta: Metadata,
}

struct Level {
    rel: Vec<u8>,
    abs: PathBuf,
    /// Child names, sorted descending so the next one pops off the end.
    names: Vec<Vec<u8>>,
}

pub struct Walker<'m> {
    stack: Vec<Level>,
    root: Option<PathBuf>,
    excludes: Option<&'m Matcher>,
    /// Entries that vanished between listing and stat (a live site changes under us).
    pub vanished: u64,
    /// What the excludes left out: the top-most excluded paths (a directory excluded by
    /// a marker file stands for its contents), relative and absolute.
    pub excluded: Vec<(Vec<u8>, PathBuf, Excluded)>,
}

impl<'m> Walker<'m> {
    pub fn new(root: &Path) -> Walker<'static> {
        Walker {
            stack: Vec::new(),
            root: Some(root.to_path_buf()),
            excludes: None,
            vanished: 0,
            excluded: Vec::new(),
        }
    }

    /// A walk that leaves out what `excludes` says.
    pub fn with_excludes(root: &Path, excludes: Option<&'m Matcher>) -> Walker<'m> {
        Walker {
            excludes,
            ..Walker::new(root)
        }
    }

    fn push_dir(&mut self, rel: Vec<u8>, abs: PathBuf) -> Result<()> {
        let mut names = Vec::new();
        for entry in fs::read_dir(&abs).ctx(|| format!("listing {}", abs.display()))? {
            let entry = entry.ctx(|| format!("listing {}", abs.display()))?;
            names.push(entry.file_name().as_bytes().to_vec());
        }
        names.sort_unstable_by(|a, b| b.cmp(a));
        self.stack.push(Level { rel, abs, names });
        Ok(())
    }

    pub fn next_entry(&mut self) -> Result<Option<Walked>> {
        if let Some(root) = self.root.take() {
            let meta = fs::symlink_metadata(&root).ctx(|| format!("reading {}", root.display()))?;
            if !meta.is_dir() {
                return Err(Error::usage(format!(
                    "{} is not a directory",
                    root.display()
                )));
            }
            self.push_dir(b".".to_vec(), root.clone())?;
            return Ok(Some(Walked {
                rel: b".".to_vec(),
                abs: root,
                meta,
            }));
        }
        loop {
            let Some(level) = self.stack.last_mut() else {
                return Ok(None);
            };
            let Some(name) = level.names.pop() else {
                self.stack.pop();
                continue;
            };
            let rel = join(&level.rel, &name);
            let abs = level.abs.join(OsStr::from_bytes(&name));
            let meta = match fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.vanished += 1;
                    continue;
                }
                Err(e) => return Err(Error::io(format!("reading {}", abs.display()), e)),
            };
            let verdict = self
                .excludes
                .and_then(|m| m.check(&rel, meta.is_dir().then_some(abs.as_path())));
            match verdict {
                Some(Excluded::Pattern) => {
                    self.excluded.push((rel, abs, Excluded::Pattern));
                    continue;
                }
                Some(Excluded::Marked) => {
                    // The directory stays, empty: it is not descended into.
                    self.excluded
                        .push((rel.clone(), abs.clone(), Excluded::Marked));
                    return Ok(Some(Walked { rel, abs, meta }));
                }
                None => {}
            }
            if meta.is_dir() {
                match self.push_dir(rel.clone(), abs.clone()) {
                    Ok(()) => {}
                    Err(e) if !abs.exists() => {
                        drop(e);
                        self.vanished += 1;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            return Ok(Some(Walked { rel, abs, meta }));
        }
    }
}

/// One path a freeze leaves out, with what is under it (`--dry-run`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ExcludedPath {
    /// Relative to the tree's root.
    pub path: String,
    /// `pattern`, or `marker` (a marker file excludes the directory's contents).
    pub by: &'static str,
    /// Regular files under it (1 for an excluded file) and their bytes.
    pub files: u64,
    pub bytes: u64,
}

/// What a freeze of `root` would leave out under `excludes`: walks the tree as the
/// freeze does, then counts what is below each excluded path.
pub fn excluded_paths(root: &Path, excludes: &Matcher) -> Result<Vec<ExcludedPath>> {
    let mut w = Walker::with_excludes(root, Some(excludes));
    while w.next_entry()?.is_some() {}
    Ok(w.excluded
        .into_iter()
        .map(|(rel, abs, why)| {
            let (mut files, mut bytes) = (0, 0);
            count(&abs, why == Excluded::Marked, &mut files, &mut bytes);
            ExcludedPath {
                path: String::from_utf8_lossy(&rel).into_owned(),
                by: match why {
                    Excluded::Pattern => "pattern",
                    Excluded::Marked => "marker",
                },
                files,
                bytes,
            }
        })
        .collect())
}

/// Regular files and their bytes at and below `path` (symlinks not followed); `inside`:
/// only what is in the directory.
fn count(path: &Path, inside: bool, files: &mut u64, bytes: &mut u64) {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return;
    };
    if meta.is_file() && !inside {
        *files += 1;
        *bytes += meta.len();
    } else if meta.is_dir() {
        for e in fs::read_dir(path).into_iter().flatten().flatten() {
            count(&e.path(), false, files, bytes);
        }
    }
}
