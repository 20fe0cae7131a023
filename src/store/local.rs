//! A repository in a local directory: the embedded default that needs no service.
//!
//! Writes are staged in `<root>/tmp/` and renamed into place, so a reader never sees
//! a half-written object and a crash leaves only garbage in `tmp/`.

use std::fs::{self, File};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::path::{Path, PathBuf};

use super::{check_key, ObjectInfo, Store};
use crate::error::{Error, IoContext, Result};

pub struct LocalStore {
    root: PathBuf,
    /// Whether `tmp/` was swept of dead runs' files yet (once per process).
    swept: std::sync::atomic::AtomicBool,
}

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore {
            root,
            swept: Default::default(),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        check_key(key)?;
        Ok(self.root.join(key))
    }

    fn not_found(&self, key: &str) -> Error {
        Error::not_found(format!("object {key} not found in {}", self.root.display()))
    }

    fn install(&self, staged: &Path, key: &str) -> Result<()> {
        let dest = self.path(key)?;
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        fs::rename(staged, &dest)
            .ctx(|| format!("moving {} to {}", staged.display(), dest.display()))?;
        Ok(())
    }
}

impl Store for LocalStore {
    fn location(&self) -> String {
        self.root.display().to_string()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        let path = self.path(key)?;
        match fs::read(&path) {
            Err(e) if e.kind() == IoKind::NotFound => Err(self.not_found(key)),
            r => r.ctx(|| format!("reading {}", path.display())),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        let path = self.path(key)?;
        match File::open(&path) {
            Err(e) if e.kind() == IoKind::NotFound => Err(self.not_found(key)),
            r => Ok(Box::new(r.ctx(|| format!("opening {}", path.display()))?)),
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        let path = self.path(key)?;
        let mut f = match File::open(&path) {
            Err(e) if e.kind() == IoKind::NotFound => return Err(self.not_found(key)),
            r => r.ctx(|| format!("opening {}", path.display()))?,
        };
        let mut out = Vec::new();
        f.seek(SeekFrom::Start(start))
            .and_then(|_| f.take(len).read_to_end(&mut out))
            .ctx(|| format!("reading {}", path.display()))?;
        Ok(out)
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        let path = self.path(key)?;
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let spool = self.spool_dir()?;
        let mut tmp = super::spool_file(&spool)?;
        // Through the plain file: tempfile's own writer wraps errors with the path, which
        // hides the OS error that tells a full disk.
        let written = tmp
            .as_file_mut()
            .write_all(data)
            .and_then(|_| tmp.as_file().sync_all());
        match written {
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                return Err(super::disk_full(&spool, e))
            }
            w => w.ctx(|| format!("writing {}", tmp.path().display()))?,
        }
        let (_, path) = tmp
            .keep()
            .map_err(|e| Error::io("keeping a staged file", e.error))?;
        self.install(&path, key)
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        // The data must be on disk before the name that makes it visible.
        File::open(file)
            .and_then(|f| f.sync_all())
            .ctx(|| format!("syncing {}", file.display()))?;
        if fs::rename(file, self.path(key)?).is_ok() {
            return Ok(());
        }
        self.install(file, key)
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let dir = self.root.join(prefix.trim_end_matches('/'));
        let mut out = Vec::new();
        let mut stack = vec![dir];
        while let Some(dir) = stack.pop() {
            let entries = match fs::read_dir(&dir) {
                Ok(e) => e,
                Err(e) if e.kind() == IoKind::NotFound => continue,
                Err(e) => return Err(Error::io(format!("listing {}", dir.display()), e)),
            };
            for entry in entries {
                let entry = entry.ctx(|| format!("listing {}", dir.display()))?;
                let meta = entry
                    .metadata()
                    .ctx(|| format!("reading {}", entry.path().display()))?;
                if meta.is_dir() {
                    stack.push(entry.path());
                } else if let Ok(rel) = entry.path().strip_prefix(&self.root) {
                    if let Some(key) = rel.to_str() {
                        out.push(ObjectInfo {
                            key: key.to_string(),
                            size: meta.len(),
                            modified: meta.modified().ok(),
                        });
                    }
                }
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match fs::remove_file(&path) {
            Err(e) if e.kind() == IoKind::NotFound => Ok(()),
            r => r.ctx(|| format!("deleting {}", path.display())),
        }
    }

    fn spool_dir(&self) -> Result<PathBuf> {
        let dir = self.root.join("tmp");
        fs::create_dir_all(&dir).ctx(|| format!("creating {}", dir.display()))?;
        if !self.swept.swap(true, std::sync::atomic::Ordering::Relaxed) {
            super::sweep_spool(&dir);
        }
        Ok(dir)
    }
}
