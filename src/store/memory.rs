//! A store in memory: the repository of the fast tests (no service, no disk but its
//! spool directory). It keeps every promise of [`Store`], checked by the same
//! [`super::conformance`] suite as the local and S3 stores.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::{check_key, ObjectInfo, Store};
use crate::error::{Error, IoContext, Result};

/// An object: its bytes (shared with open readers) and when it was written.
type Object = (Arc<Vec<u8>>, SystemTime);

#[derive(Default)]
pub struct MemoryStore {
    objects: Mutex<BTreeMap<String, Object>>,
    /// Where files are staged for `put_file`; removed with the store.
    spool: Mutex<Option<tempfile::TempDir>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn not_found(key: &str) -> Error {
        Error::not_found(format!("object {key} not found in memory"))
    }

    fn object(&self, key: &str) -> Result<Arc<Vec<u8>>> {
        check_key(key)?;
        let objects = self.objects.lock().unwrap();
        objects
            .get(key)
            .map(|(d, _)| d.clone())
            .ok_or_else(|| Self::not_found(key))
    }
}

/// A reader over a shared object, so an open object survives its deletion (as a file
/// does).
struct SharedReader {
    data: Arc<Vec<u8>>,
    pos: usize,
}

impl Read for SharedReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let rest = &self.data[self.pos.min(self.data.len())..];
        let n = rest.len().min(buf.len());
        buf[..n].copy_from_slice(&rest[..n]);
        self.pos += n;
        Ok(n)
    }
}

impl Store for MemoryStore {
    fn location(&self) -> String {
        "memory".into()
    }

    fn get(&self, key: &str) -> Result<Vec<u8>> {
        Ok(self.object(key)?.as_ref().clone())
    }

    fn open(&self, key: &str) -> Result<Box<dyn Read + Send>> {
        Ok(Box::new(SharedReader {
            data: self.object(key)?,
            pos: 0,
        }))
    }

    fn get_range(&self, key: &str, start: u64, len: u64) -> Result<Vec<u8>> {
        let data = self.object(key)?;
        let from = (start as usize).min(data.len());
        let to = (start.saturating_add(len) as usize).min(data.len());
        Ok(data[from..to].to_vec())
    }

    fn size(&self, key: &str) -> Result<Option<u64>> {
        check_key(key)?;
        let objects = self.objects.lock().unwrap();
        Ok(objects.get(key).map(|(d, _)| d.len() as u64))
    }

    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        check_key(key)?;
        self.objects
            .lock()
            .unwrap()
            .insert(key.into(), (Arc::new(data.to_vec()), SystemTime::now()));
        Ok(())
    }

    fn put_file(&self, key: &str, file: &Path) -> Result<()> {
        check_key(key)?;
        let data = std::fs::read(file).ctx(|| format!("reading {}", file.display()))?;
        self.put(key, &data)?;
        std::fs::remove_file(file).ctx(|| format!("removing {}", file.display()))
    }

    fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let objects = self.objects.lock().unwrap();
        Ok(objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, (d, t))| ObjectInfo {
                key: k.clone(),
                size: d.len() as u64,
                modified: Some(*t),
            })
            .collect())
    }

    fn delete(&self, key: &str) -> Result<()> {
        check_key(key)?;
        self.objects.lock().unwrap().remove(key);
        Ok(())
    }

    fn spool_dir(&self) -> Result<PathBuf> {
        let mut spool = self.spool.lock().unwrap();
        if spool.is_none() {
            *spool = Some(crate::sys::temp_dir("the memory store's spool directory")?);
        }
        Ok(spool.as_ref().unwrap().path().to_path_buf())
    }
}
