//! A repository in a local directory: the embedded default that needs no service.
//!
//! Writes are staged in `<root>/tmp/` and renamed into place, so a reader never sees
//! a half-written object and a crash leaves only garbage in `tmp/`.
//!
//! A name is given only to data that is on disk. Small blobs written with
//! [`Store::put_unsettled`] (a database dump's chunks: hundreds a night) are not synced
//! one by one: they wait in `tmp/` and go into place together after one `syncfs`
//! ([`LocalStore::sync_blobs`]), before anything else is written (a snapshot record names
//! them) and before anything is read or listed. A crash before that loses only unnamed
//! files, which the next run uploads again.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{ErrorKind as IoKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use super::{check_key, ObjectInfo, Store};
use crate::error::{Error, IoContext, Result};

pub struct LocalStore {
    root: PathBuf,
    /// Whether `tmp/` was swept of dead runs' files yet (once per process).
    swept: std::sync::atomic::AtomicBool,
    /// Blobs written to `tmp/` but neither synced nor named yet.
    unsynced: Mutex<Unsynced>,
}

#[derive(Default)]
struct Unsynced {
    /// key → (staged file, size)
    files: HashMap<String, (PathBuf, u64)>,
    bytes: u64,
}

/// Unsynced blobs are synced and named once they add up to this many bytes or files,
/// which bounds what a crash can make the next run upload again.
const UNSYNCED_BYTES: u64 = 512 << 20;
const UNSYNCED_FILES: usize = 4096;

impl LocalStore {
    pub fn new(root: PathBuf) -> Self {
        LocalStore {
            root,
            swept: Default::default(),
            unsynced: Default::default(),
        }
    }

    /// Puts the blobs waiting in `tmp/` on disk (one `syncfs` for all of them: a sync of
    /// each cost a journal commit apiece, up to a tenth of a database freeze), then gives
    /// them their names, then syncs those.
    pub fn sync_blobs(&self) -> Result<()> {
        // Held until the names are synced: another thread's `put` (a record naming these
        // blobs) waits here rather than finding the list empty and going ahead.
        let mut u = self.unsynced.lock().unwrap();
        if u.files.is_empty() {
            return Ok(());
        }
        let Unsynced { files, .. } = std::mem::take(&mut *u);
        let sync = |what: &str| {
            crate::sys::sync_filesystem(&self.root).map_err(|e| {
                super::write_error(&self.root, format!("{what} in {}", self.root.display()), e)
            })
        };
        sync("syncing new blobs")?;
        for (key, (staged, _)) in &files {
            self.install(staged, key)?;
        }
        sync("syncing the names of new blobs")
    }

    /// Stages `data` and names it `key`, synced; or (`deferred`) leaves it staged,
    /// unsynced, for [`LocalStore::sync_blobs`].
    fn write(&self, key: &str, data: &[u8], deferred: bool) -> Result<()> {
        check_key(key)?;
        let spool = self.spool_dir()?;
        let mut tmp = super::spool_file(&spool)?;
        // Through the plain file: tempfile's own writer wraps errors with the path, which
        // hides the OS error that tells a full disk.
        let written = tmp.as_file_mut().write_all(data).and_then(|_| {
            if deferred {
                Ok(())
            } else {
                tmp.as_file().sync_all()
            }
        });
        written.map_err(|e| {
            super::write_error(&spool, format!("writing {}", tmp.path().display()), e)
        })?;
        let (_, path) = tmp
            .keep()
            .map_err(|e| Error::io("keeping a staged file", e.error))?;
        if !deferred {
            return self.install(&path, key);
        }
        let mut u = self.unsynced.lock().unwrap();
        u.bytes += data.len() as u64;
        if let Some((older, _)) = u.files.insert(key.to_string(), (path, data.len() as u64)) {
            // The same blob written twice at once: one copy is enough.
            let _ = fs::remove_file(older);
        }
        let full = u.bytes >= UNSYNCED_BYTES || u.files.len() >= UNSYNCED_FILES;
        drop(u);
        if full {
            self.sync_blobs()?;
        }
        Ok(())
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
        self.sync_blobs()?;
        let path = self.path(key)?;
        match fs::read(&path) {
            Err(e) if e.kind() == IoKind::NotFound => Err(self.not_found(key)),
            r => r.ctx(|| format!("reading {}", path.display())),
        }
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        self.sync_blobs()?;
        let path = self.path(key)?;
        match File::open(&path) {
            Err(e) if e.kind() == IoKind::NotFound => Err(self.not_found(key)),
            r => Ok(Box::new(r.ctx(|| format!("opening {}", path.display()))?)),
        }
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        use std::io::{Seek, SeekFrom};
        self.sync_blobs()?;
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
        // Without settling: a freeze asks this before every blob it writes.
        let unsynced = self.unsynced.lock().unwrap();
        if let Some((_, size)) = unsynced.files.get(key) {
            return Ok(Some(*size));
        }
        drop(unsynced);
        match fs::metadata(&path) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == IoKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("reading {}", path.display()), e)),
        }
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        // After the blobs waiting: this may be a record that names them.
        self.sync_blobs()?;
        self.write(key, data, false)
    }

    fn put_unsettled(&self, key: &str, data: &[u8]) -> Result<()> {
        self.write(key, data, true)
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        self.sync_blobs()?;
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
        self.sync_blobs()?;
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
        self.sync_blobs()?;
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

impl Drop for LocalStore {
    /// A run that ends without writing anything after its blobs (none should) still
    /// leaves them named; a run that fails leaves them too, for the next to reuse.
    fn drop(&mut self) {
        let _ = self.sync_blobs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_are_named_only_once_synced_and_before_what_names_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("repo");
        let store = LocalStore::new(root.clone());
        // Another process's view of the same directory.
        let other = || LocalStore::new(root.clone());

        store.put_unsettled("blobs/sha256/aa", b"chunk").unwrap();
        assert_eq!(store.size("blobs/sha256/aa").unwrap(), Some(5));
        assert_eq!(other().size("blobs/sha256/aa").unwrap(), None);

        // A record is written only after the blobs it names are in place.
        store.put("snapshots/site/1", b"record").unwrap();
        assert_eq!(other().get("blobs/sha256/aa").unwrap(), b"chunk");

        // Reading a waiting blob settles it first.
        store.put_unsettled("blobs/sha256/bb", b"more").unwrap();
        assert_eq!(store.get("blobs/sha256/bb").unwrap(), b"more");
        assert_eq!(other().size("blobs/sha256/bb").unwrap(), Some(4));

        // A run killed before it settled leaves no name, only a file in tmp/.
        let killed = LocalStore::new(root.clone());
        killed.put_unsettled("blobs/sha256/cc", b"lost").unwrap();
        std::mem::forget(killed);
        assert_eq!(other().size("blobs/sha256/cc").unwrap(), None);
        let keys: Vec<String> = other()
            .list("blobs/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert_eq!(keys, ["blobs/sha256/aa", "blobs/sha256/bb"]);
    }
}
