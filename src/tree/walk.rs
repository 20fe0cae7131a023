//! Walks a directory tree in the index's depth-first, name-sorted order, never following
//! symlinks. Memory is bounded by the directories on the current path, not the tree.

use std::ffi::OsStr;
use std::fs::{self, Metadata};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

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

pub struct Walker {
    stack: Vec<Level>,
    root: Option<PathBuf>,
    /// Entries that vanished between listing and stat (a live site changes under us).
    pub vanished: u64,
}

impl Walker {
    pub fn new(root: &Path) -> Walker {
        Walker {
            stack: Vec::new(),
            root: Some(root.to_path_buf()),
            vanished: 0,
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
