//! The repository: an OCI-layout-shaped set of immutable objects in a [`Store`].
//!
//! ```text
//! oci-layout                      {"imageLayoutVersion":"1.0.0"}
//! index.json                      empty OCI index, written once at init
//! freezer.json                    repository config: format version, id, encryption
//! blobs/sha256/<hex>              content-addressed blobs (layers, configs, manifests, indexes)
//! snapshots/<site>/<id>.json      one record per snapshot, an OCI image index
//! runs/<site>/<time>-<command>-<exit>-<rand>.json  one record per run ([`runs`])
//! ```
//!
//! Nothing is ever overwritten: blobs are named by their digest and records by their time
//! and digest, so correctness never depends on conditional writes. A record is written
//! last, after every blob it references exists: a snapshot is visible only when complete.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest as _, Sha256};

use crate::crypto::{Credentials, Keys, Sealer, BLOB_AAD};
use crate::error::{into_io, Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::store::Store;

mod runs;
pub use runs::RunRef;

/// Counters for the summary of a run ("uploaded 3 blobs, 12 MB; reused 40").
#[derive(Debug, Default)]
pub struct TransferStats {
    pub blobs_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub blobs_reused: AtomicU64,
    pub bytes_reused: AtomicU64,
}

pub struct Repository {
    store: std::sync::Arc<dyn Store>,
    pub config: RepoConfig,
    pub stats: TransferStats,
    /// The keyring of an encrypted repository (SPEC.md §14).
    keys: Option<Keys>,
    /// Encrypted records read by `list_snapshots` to learn their site, kept (decrypted)
    /// until `read_snapshot` takes them, so listing and then reading costs one GET each.
    listed_records: std::sync::Mutex<std::collections::HashMap<String, Vec<u8>>>,
}

/// A snapshot as named in the repository, before its record is read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SnapshotRef {
    pub site: String,
    pub id: String,
}

/// A snapshot record, read and verified.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub site: String,
    pub id: String,
    pub record: ImageIndex,
}

impl Snapshot {
    /// The record's images, by what each holds.
    pub fn parts(&self) -> impl Iterator<Item = Part<'_>> {
        self.record.manifests.iter().map(Part::of)
    }

    /// The snapshot of a Docker site: it holds containers (hydrated, or a dehydrated
    /// Docker site), so it thaws onto an engine.
    pub fn has_containers(&self) -> bool {
        self.parts().any(|p| matches!(p, Part::Container { .. }))
    }

    /// The databases it holds: name and the descriptor of its image.
    pub fn databases(&self) -> impl Iterator<Item = (&str, &Descriptor)> {
        self.parts().filter_map(|p| match p {
            Part::Database { name, image } => Some((name, image)),
            _ => None,
        })
    }

    /// What it holds, from its record (None for a value this version does not know).
    pub fn mode(&self) -> Option<Mode> {
        Mode::parse(self.annotation(A_MODE))
    }

    /// Its mode as the record names it (`files`, `dehydrated`, `hydrated`), for messages
    /// and reports: also a value this version does not know.
    pub fn mode_name(&self) -> &str {
        self.annotation(A_MODE)
    }

    /// When it was taken: RFC 3339 with nanoseconds, so the text orders snapshots.
    pub fn created(&self) -> &str {
        self.annotation(A_CREATED)
    }

    /// The snapshot whose indexes its freeze used to skip unchanged files, if any.
    pub fn parent(&self) -> Option<&str> {
        self.record.annotations.get(A_PARENT).map(String::as_str)
    }

    pub fn annotation(&self, key: &str) -> &str {
        self.record
            .annotations
            .get(key)
            .map(String::as_str)
            .unwrap_or("")
    }
}

pub fn check_site_name(site: &str) -> Result<()> {
    let ok = !site.is_empty()
        && site.len() <= 63
        && site
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::usage(format!("invalid site name {site:?}"))
            .with_hint("site names are 1-63 characters: letters, digits, '.', '_' and '-', starting with a letter or digit"));
    }
    Ok(())
}

impl Repository {
    /// Creates a new repository. Refuses to touch a location that already has one.
    pub fn init(store: Box<dyn Store>) -> Result<Repository> {
        Self::init_with(store, None)
    }

    /// Creates a repository; with `keys` an encrypted one whose keyring is wrapped to the
    /// keys' recipients and (when given) the passphrase.
    pub fn init_with(
        store: Box<dyn Store>,
        keys: Option<(Keys, Option<String>)>,
    ) -> Result<Repository> {
        if store.size(REPO_CONFIG_KEY)?.is_some() {
            return Err(Error::conflict(format!(
                "{} already holds a freezer repository",
                store.location()
            ))
            .with_hint("use it as it is, or choose another location"));
        }
        let mut id = [0u8; 16];
        rand::Rng::fill(&mut rand::thread_rng(), &mut id);
        let config = RepoConfig {
            format: "freezer-repository".into(),
            version: REPO_FORMAT_VERSION,
            id: hex::encode(id),
            created: rfc3339(SystemTime::now()),
            encryption: Encryption {
                scheme: if keys.is_some() {
                    crate::crypto::SCHEME.into()
                } else {
                    "none".into()
                },
            },
        };
        if let Some((k, passphrase)) = &keys {
            crate::crypto::write_keyring(store.as_ref(), k, passphrase.as_deref())?;
        }
        store.put(OCI_LAYOUT_KEY, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let mut index = ImageIndex {
            schema_version: 2,
            media_type: MT_INDEX.into(),
            manifests: vec![],
            annotations: Default::default(),
        };
        index.annotations.insert(
            "dev.freezer.note".into(),
            "snapshots are recorded under snapshots/; `freezer export` writes one as a standalone OCI layout".into(),
        );
        store.put(OCI_INDEX_KEY, &to_json(&index))?;
        // The config goes last: its presence is what makes this a repository.
        store.put(REPO_CONFIG_KEY, &to_json(&config))?;
        Ok(Repository {
            listed_records: Default::default(),
            store: store.into(),
            config,
            stats: Default::default(),
            keys: keys.map(|(k, _)| k),
        })
    }

    /// Whether the latest attempt to reach its store failed.
    pub fn store_failing(&self) -> bool {
        self.store.failing()
    }

    /// The same repository for another user in this process (the run's record): the
    /// same store and keys, counters of its own.
    pub fn handle(&self) -> Repository {
        Repository {
            listed_records: Default::default(),
            store: self.store.clone(),
            config: self.config.clone(),
            stats: Default::default(),
            keys: self.keys.clone(),
        }
    }

    /// Opens a repository that is not encrypted (an encrypted one asks for a key).
    pub fn open(store: Box<dyn Store>) -> Result<Repository> {
        Self::open_with(store, &Credentials::default())
    }

    /// Opens a repository; an encrypted one with the given identities or passphrase.
    pub fn open_with(store: Box<dyn Store>, creds: &Credentials) -> Result<Repository> {
        let data = match store.get(REPO_CONFIG_KEY) {
            Ok(d) => d,
            Err(e) if e.kind == ErrorKind::NotFound => {
                return Err(Error::not_found(format!(
                    "no freezer repository at {}",
                    store.location()
                ))
                .with_hint(format!(
                    "create one with: freezer init --repo {}",
                    store.location()
                )));
            }
            Err(e) => return Err(e),
        };
        let value: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
            Error::integrity(format!(
                "{}/{REPO_CONFIG_KEY} is not valid JSON: {e}",
                store.location()
            ))
        })?;
        if value.get("format").and_then(|v| v.as_str()) != Some("freezer-repository") {
            return Err(Error::integrity(format!(
                "{}/{REPO_CONFIG_KEY} is not a freezer repository config",
                store.location()
            )));
        }
        let version = value.get("version").and_then(|v| v.as_u64()).unwrap_or(0);
        if version != u64::from(REPO_FORMAT_VERSION) {
            return Err(Error::usage(format!(
                "repository {} has format version {version}; this freezer reads version {REPO_FORMAT_VERSION} only",
                store.location()
            ))
            .with_hint("use the freezer release that wrote this repository"));
        }
        let config: RepoConfig =
            from_json(&data, &format!("{}/{REPO_CONFIG_KEY}", store.location()))?;
        let keys = match config.encryption.scheme.as_str() {
            "none" => None,
            crate::crypto::SCHEME => {
                let keys = crate::crypto::open_keyring(store.as_ref(), creds)?;
                crate::crypto::check_epoch(&keys, &store.location())?;
                Some(keys)
            }
            other => {
                return Err(Error::usage(format!(
                    "repository {} uses encryption scheme {other:?}, which this freezer does not support",
                    store.location(),
                )))
            }
        };
        Ok(Repository {
            listed_records: Default::default(),
            store: store.into(),
            config,
            stats: Default::default(),
            keys,
        })
    }

    /// The keyring, for an encrypted repository.
    pub fn keys(&self) -> Option<&Keys> {
        self.keys.as_ref()
    }

    /// Replaces the keyring (key add/remove) and writes it.
    pub fn set_keys(&mut self, keys: Keys, passphrase: Option<&str>) -> Result<()> {
        crate::crypto::write_keyring(self.store.as_ref(), &keys, passphrase)?;
        self.keys = Some(keys);
        Ok(())
    }

    /// The store key of a blob: its digest, or in an encrypted repository its keyed name.
    pub fn blob_key(&self, digest: &Digest) -> String {
        format!("{BLOBS_PREFIX}{}", self.blob_name(digest))
    }

    /// The name (last key component) a blob is stored under.
    pub fn blob_name(&self, digest: &Digest) -> String {
        match &self.keys {
            None => digest.hex().to_string(),
            Some(k) => k.blob_name(digest),
        }
    }

    /// The directory of a site's records, and the name locks use for it: the site, or in
    /// an encrypted repository a keyed name that does not reveal it.
    pub fn site_dir(&self, site: &str) -> String {
        match &self.keys {
            None => site.to_string(),
            Some(k) => k.site_dir(site),
        }
    }

    /// Every blob object in the store by its stored name: size and when it was written.
    pub fn stored_blobs(&self) -> Result<StoredBlobs> {
        Ok(self
            .store
            .list(BLOBS_PREFIX)?
            .into_iter()
            .filter_map(|o| {
                let name = o.key.strip_prefix(BLOBS_PREFIX)?.to_string();
                Some((name, (o.size, o.modified)))
            })
            .collect())
    }

    /// Deletes a blob object by its stored name (prune only).
    pub fn delete_blob(&self, name: &str) -> Result<()> {
        self.store.delete(&format!("{BLOBS_PREFIX}{name}"))
    }

    /// The prune marks in the store (SPEC.md §11): the blobs an earlier prune found
    /// unreferenced, and when.
    pub fn prune_marks(&self) -> Result<Vec<PruneMark>> {
        let mut out = Vec::new();
        for o in self.store.list(PRUNE_PREFIX)? {
            let mark: PruneMarkFile = from_json(&self.store.get(&o.key)?, &o.key)?;
            out.push(PruneMark {
                key: o.key,
                marked: o.modified,
                blobs: mark.blobs,
            });
        }
        Ok(out)
    }

    /// Writes a prune mark of `blobs` (stored names, sorted here).
    pub fn write_prune_mark(&self, mut blobs: Vec<String>) -> Result<()> {
        let mut rand = [0u8; 4];
        rand::Rng::fill(&mut rand::thread_rng(), &mut rand);
        let key = format!(
            "{PRUNE_PREFIX}{}-{}.json",
            compact_time(SystemTime::now()),
            hex::encode(rand)
        );
        blobs.sort();
        self.store
            .put(&key, &to_json(&PruneMarkFile { format: 1, blobs }))
    }

    pub fn delete_prune_mark(&self, mark: &PruneMark) -> Result<()> {
        self.store.delete(&mark.key)
    }

    /// Removes a snapshot record (its blobs stay until a prune).
    pub fn delete_record(&self, r: &SnapshotRef) -> Result<()> {
        self.store.delete(&self.record_key(r))
    }

    /// The store key of a snapshot record.
    pub fn record_key(&self, r: &SnapshotRef) -> String {
        format!("{SNAPSHOTS_PREFIX}{}/{}.json", self.site_dir(&r.site), r.id)
    }

    /// Reads a whole object and, in an encrypted repository, opens it (`aad`: the
    /// record's key, or [`BLOB_AAD`]).
    fn get_object(&self, key: &str, aad: &str) -> Result<Vec<u8>> {
        let data = self.store.get(key)?;
        match &self.keys {
            None => Ok(data),
            Some(k) => k.open(aad, key, &data),
        }
    }

    /// Writes a whole object, sealed in an encrypted repository.
    fn put_object(&self, key: &str, aad: &str, data: &[u8]) -> Result<()> {
        self.store.put(key, &self.sealed(aad, data))
    }

    /// An object's bytes as stored: sealed in an encrypted repository, else as they are.
    fn sealed<'a>(&self, aad: &str, data: &'a [u8]) -> std::borrow::Cow<'a, [u8]> {
        match &self.keys {
            None => data.into(),
            Some(k) => k.seal(aad, data).into(),
        }
    }

    /// A new blob, written through the store's spool directory (sealed as it is written
    /// in an encrypted repository), hashed and counted as it goes; its digest is known at
    /// the end. [`Repository::put_written`] moves it into the repository.
    pub fn blob_writer(&self) -> Result<BlobWriter> {
        self.writer(None)
    }

    /// A writer for a blob whose digest is known and checked as it is read (a copy from
    /// another repository): it is not hashed a second time.
    pub fn blob_writer_for(&self, digest: &Digest) -> Result<BlobWriter> {
        self.writer(Some(digest.clone()))
    }

    fn writer(&self, known: Option<Digest>) -> Result<BlobWriter> {
        let spool = self.store.spool_dir()?;
        let staged = crate::store::spool_file(&spool)?;
        let file = staged.reopen().ctx(|| "reopening a spool file".into())?;
        let out = self.spool_writer(file, staged.path());
        Ok(BlobWriter {
            staged: staged.into_temp_path(),
            out,
            hasher: match known {
                Some(d) => Err(d),
                None => Ok(Sha256::new()),
            },
            count: 0,
        })
    }

    /// Ends a blob written through [`Repository::blob_writer`] and moves it into the
    /// repository: its digest and size.
    pub fn put_written(&self, w: BlobWriter) -> Result<(Digest, u64)> {
        let blob = w.stage()?;
        self.put_staged(&blob)?;
        Ok((blob.digest, blob.size))
    }

    /// Moves a staged blob into the repository (unless one with its digest is there).
    pub fn put_staged(&self, blob: &StagedBlob) -> Result<()> {
        self.put_spooled(&blob.path, &blob.digest, blob.size)
    }

    /// A writer for a blob staged in the spool directory: sealed as it is written in an
    /// encrypted repository, so the file is ready for [`Repository::put_spooled`].
    fn spool_writer(&self, file: std::fs::File, path: &Path) -> SpoolWriter {
        let file = SpoolFile {
            file,
            path: path.to_path_buf(),
        };
        let w = std::io::BufWriter::with_capacity(1 << 20, file);
        match &self.keys {
            None => SpoolWriter::Plain(w),
            Some(k) => SpoolWriter::Sealed(Box::new(k.sealer(BLOB_AAD, w))),
        }
    }

    /// Moves a blob written through [`Repository::spool_writer`] into the repository
    /// (unless one with that digest is there already).
    fn put_spooled(&self, file: &Path, digest: &Digest, size: u64) -> Result<()> {
        let key = self.blob_key(digest);
        if self.store.size(&key)? == Some(self.stored_size(size)) {
            let _ = std::fs::remove_file(file);
            self.count_reused(size);
            return Ok(());
        }
        self.store.put_file(&key, file)?;
        self.count_uploaded(size);
        Ok(())
    }

    /// The stored size of a blob of `size` bytes.
    fn stored_size(&self, size: u64) -> u64 {
        match &self.keys {
            None => size,
            Some(_) => Keys::sealed_size(size),
        }
    }

    pub fn location(&self) -> String {
        self.store.location()
    }

    pub fn store(&self) -> &dyn Store {
        self.store.as_ref()
    }

    /// The store, shared (for a lock's heartbeat thread).
    pub fn shared_store(&self) -> std::sync::Arc<dyn Store> {
        self.store.clone()
    }

    /// The size of a stored blob, or None.
    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>> {
        let stored = self.store.size(&self.blob_key(digest))?;
        Ok(match (&self.keys, stored) {
            (Some(_), Some(s)) => Some(Keys::plain_size(s)),
            (_, s) => s,
        })
    }

    /// Stores a small blob unless it is already there.
    pub fn put_blob(&self, data: &[u8]) -> Result<(Digest, u64)> {
        let digest = Digest::of(data);
        let size = data.len() as u64;
        let key = self.blob_key(&digest);
        if self.store.size(&key)? == Some(self.stored_size(size)) {
            self.count_reused(size);
        } else {
            // Unsettled: a local repository syncs a freeze's blobs together, before the
            // record that names them.
            self.store
                .put_unsettled(&key, &self.sealed(BLOB_AAD, data))?;
            self.count_uploaded(size);
        }
        Ok((digest, size))
    }

    /// Whether the repository holds a blob of that digest and (plain) size.
    pub fn has_blob(&self, d: &Descriptor) -> Result<bool> {
        Ok(self.store.size(&self.blob_key(&d.digest))? == Some(self.stored_size(d.size)))
    }

    /// Whether blobs are sealed (an encrypted repository).
    pub fn is_encrypted(&self) -> bool {
        self.keys.is_some()
    }

    /// Counts a blob that a freeze references without uploading it.
    pub fn count_reused(&self, size: u64) {
        self.stats.blobs_reused.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_reused.fetch_add(size, Ordering::Relaxed);
    }

    fn count_uploaded(&self, size: u64) {
        let n = self.stats.blobs_uploaded.fetch_add(1, Ordering::Relaxed) + 1;
        self.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
        crate::fault::abort_at(crate::fault::Abort::AfterUploads, n);
    }

    /// Reads a whole small blob and checks it against its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let data = self
            .get_object(&self.blob_key(digest), BLOB_AAD)
            .map_err(|e| self.missing(e, digest))?;
        let actual = Digest::of(&data);
        if &actual != digest {
            return Err(self.damaged(digest, &actual));
        }
        Ok(data)
    }

    /// Streams a blob; the reader fails at the end if the content does not match its digest,
    /// so callers must read to EOF before trusting what they wrote.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader<Box<dyn Read + Send>>> {
        let key = self.blob_key(digest);
        let inner = self.store.open(&key).map_err(|e| self.missing(e, digest))?;
        let inner: Box<dyn Read + Send> = match &self.keys {
            None => inner,
            Some(k) => Box::new(k.opener(BLOB_AAD, &key, inner)),
        };
        let mut r = VerifyingReader::new(inner, digest.clone(), self.location());
        r.name = key;
        Ok(r)
    }

    /// Streams `len` bytes of a blob (of `size` bytes) from `offset`, with ranged GETs of
    /// about [`RANGE_CHUNK`], for reading one zstd frame of a layer; the caller checks
    /// what it reads against the frame's digest. In an encrypted repository the sealed
    /// segments holding the range are read and each is authenticated as it is opened.
    pub fn open_range(
        &self,
        digest: &Digest,
        size: u64,
        offset: u64,
        len: u64,
    ) -> Result<Option<Box<dyn Read + Send + '_>>> {
        let key = self.blob_key(digest);
        let opener = match &self.keys {
            None => None,
            Some(k) => {
                let header = self
                    .store
                    .get_range(&key, 0, crate::crypto::SEALED_HEADER)
                    .map_err(|e| self.missing(e, digest))?;
                Some(k.segment_opener(BLOB_AAD, &key, &header)?)
            }
        };
        Ok(Some(Box::new(RangeReader {
            repo: self,
            key,
            digest: digest.clone(),
            opener,
            size,
            pos: offset,
            end: offset + len,
            chunk: Vec::new(),
            at: 0,
        })))
    }

    /// Downloads a blob to a temporary file, verified, for data that is read several times.
    pub fn fetch_blob(&self, digest: &Digest) -> Result<tempfile::NamedTempFile> {
        let mut tmp = crate::sys::temp_file()?;
        let mut r = self.open_blob(digest)?;
        std::io::copy(&mut r, tmp.as_file_mut()).ctx(|| format!("downloading {}", digest.key()))?;
        tmp.as_file_mut()
            .flush()
            .ctx(|| "writing a temporary file".into())?;
        Ok(tmp)
    }

    /// A blob that a snapshot references and the store does not have is damage to the
    /// repository, not a "not found" the user could fix by naming something else.
    fn missing(&self, e: Error, digest: &Digest) -> Error {
        if e.kind != ErrorKind::NotFound {
            return e;
        }
        // In an encrypted repository the stored name does not show the digest: give both.
        let also = match self.keys {
            Some(_) => format!(" (blob {digest})"),
            None => String::new(),
        };
        Error::integrity(format!(
            "object {}{also} is missing from {}",
            self.blob_key(digest),
            self.location()
        ))
        .with_hint(
            "restore that object from another copy of the repository, or thaw an older snapshot",
        )
    }

    fn damaged(&self, digest: &Digest, actual: &Digest) -> Error {
        Error::integrity(format!(
            "object {} in {} is damaged: its content hashes to {actual}, not {digest}",
            self.blob_key(digest),
            self.location()
        ))
        .with_hint(
            "restore that object from another copy of the repository, or thaw an older snapshot",
        )
    }

    /// Writes a snapshot record, the last step of a freeze. Returns its id.
    pub fn write_record(
        &self,
        site: &str,
        record: &ImageIndex,
        created: SystemTime,
    ) -> Result<SnapshotRef> {
        check_site_name(site)?;
        let data = to_json(record);
        let hash = hex::encode(Sha256::digest(&data));
        let r = SnapshotRef {
            site: site.to_string(),
            id: format!("{}-{}", compact_time(created), &hash[..12]),
        };
        let key = self.record_key(&r);
        self.put_object(&key, &key, &data)?;
        Ok(r)
    }

    /// Lists snapshot names, oldest first, for one site or all.
    pub fn list_snapshots(&self, site: Option<&str>) -> Result<Vec<SnapshotRef>> {
        let prefix = match site {
            Some(s) => {
                check_site_name(s)?;
                format!("{SNAPSHOTS_PREFIX}{}/", self.site_dir(s))
            }
            None => SNAPSHOTS_PREFIX.to_string(),
        };
        let mut out: Vec<SnapshotRef> = self
            .store
            .list(&prefix)?
            .into_iter()
            .filter_map(|o| {
                let rest = o.key.strip_prefix(SNAPSHOTS_PREFIX)?;
                let (site, file) = rest.split_once('/')?;
                let id = file.strip_suffix(".json")?;
                Some(SnapshotRef {
                    site: site.into(),
                    id: id.into(),
                })
            })
            .collect();
        // An encrypted repository's directories are keyed names: the sites are known
        // from the records (one read each; checked against the name in read_snapshot).
        if self.keys.is_some() {
            for r in &mut out {
                let dir = std::mem::take(&mut r.site);
                r.site = match site {
                    Some(s) => s.to_string(),
                    None => self.record_site(&dir, &r.id)?,
                };
            }
        }
        out.sort_by(|a, b| (&a.site, &a.id).cmp(&(&b.site, &b.id)));
        Ok(out)
    }

    /// The site an encrypted record belongs to, read from the record.
    fn record_site(&self, dir: &str, id: &str) -> Result<String> {
        let key = format!("{SNAPSHOTS_PREFIX}{dir}/{id}.json");
        let data = self.get_object(&key, &key)?;
        let record: ImageIndex = from_json(&data, &key)?;
        let site = record.annotations.get(A_SITE).cloned().unwrap_or_default();
        if self.site_dir(&site) != dir {
            return Err(Error::integrity(format!(
                "snapshot record {key} in {} names site {site:?}, which is not the site it is stored under",
                self.location()
            )));
        }
        self.listed_records.lock().unwrap().insert(key, data);
        Ok(site)
    }

    /// A record's bytes as written (opened, in an encrypted repository), checked against
    /// the digest prefix in its name.
    pub fn read_record(&self, r: &SnapshotRef) -> Result<Vec<u8>> {
        let key = self.record_key(r);
        let listed = self.listed_records.lock().unwrap().remove(&key);
        let data = match listed {
            Some(data) => data,
            None => self.get_object(&key, &key)?,
        };
        let hash = hex::encode(Sha256::digest(&data));
        let expected = r.id.rsplit('-').next().unwrap_or("");
        if expected.len() != 12 || !hash.starts_with(expected) {
            return Err(Error::integrity(format!(
                "snapshot record {key} in {} is damaged: its content does not match its name",
                self.location()
            )));
        }
        Ok(data)
    }

    /// Whether the repository holds a record of that name.
    pub fn has_record(&self, r: &SnapshotRef) -> Result<bool> {
        Ok(self.store.size(&self.record_key(r))?.is_some())
    }

    /// Writes a record read from another repository under its own name (`copy`); the
    /// bytes are those the name's digest prefix was taken from, so it reads back as is.
    pub fn put_record(&self, r: &SnapshotRef, data: &[u8]) -> Result<()> {
        check_site_name(&r.site)?;
        let key = self.record_key(r);
        self.put_object(&key, &key, data)
    }

    /// Reads a record and checks it against the digest prefix in its name.
    pub fn read_snapshot(&self, r: &SnapshotRef) -> Result<Snapshot> {
        let key = self.record_key(r);
        let data = self.read_record(r)?;
        let record: ImageIndex = from_json(&data, &key)?;
        if self.keys.is_some() && record.annotations.get(A_SITE).is_some_and(|s| *s != r.site) {
            return Err(Error::integrity(format!(
                "snapshot record {key} in {} belongs to another site",
                self.location()
            )));
        }
        let version = record
            .annotations
            .get(A_FORMAT)
            .map(String::as_str)
            .unwrap_or("");
        if version != REPO_FORMAT_VERSION.to_string() {
            return Err(Error::usage(format!(
                "snapshot {}:{} has format version {version:?}; this freezer reads version {REPO_FORMAT_VERSION}",
                r.site, r.id
            )));
        }
        Ok(Snapshot {
            site: r.site.clone(),
            id: r.id.clone(),
            record,
        })
    }

    /// The error for a site the repository has no snapshot of (a typo in a monitored
    /// command must not pass as "nothing to do"): exit 6.
    pub fn no_snapshots_of(&self, site: &str) -> Error {
        Error::not_found(format!(
            "site {site} has no snapshots in {}",
            self.location()
        ))
        .with_hint("list what the repository holds with: freezer snapshots")
    }

    /// Finds `SITE[:SNAPSHOT]`: the latest snapshot, or the one whose id is or starts with `snap`.
    pub fn find_snapshot(&self, site: &str, snap: Option<&str>) -> Result<Snapshot> {
        let all = self.list_snapshots(Some(site))?;
        if all.is_empty() {
            return Err(self.no_snapshots_of(site));
        }
        let chosen = match snap {
            None | Some("latest") => self.latest(&all)?,
            Some(s) => {
                let matches: Vec<&SnapshotRef> =
                    all.iter().filter(|r| r.id.starts_with(s)).collect();
                match matches.as_slice() {
                    [one] => (*one).clone(),
                    [] => {
                        return Err(Error::not_found(format!("site {site} has no snapshot {s}"))
                            .with_hint(format!("list them with: freezer snapshots {site}")))
                    }
                    _ => {
                        return Err(Error::usage(format!(
                            "snapshot {site}:{s} is ambiguous ({} match)",
                            matches.len()
                        )))
                    }
                }
            }
        };
        self.read_snapshot(&chosen)
    }

    /// The newest of a site's snapshots (`all`, sorted, not empty). Ids sort by creation
    /// second; a tie within the same second is broken by the nanosecond creation time
    /// inside the records.
    pub fn latest(&self, all: &[SnapshotRef]) -> Result<SnapshotRef> {
        let last = all.last().expect("non-empty");
        let second = &last.id[..16.min(last.id.len())];
        let same: Vec<&SnapshotRef> = all.iter().filter(|r| r.id.starts_with(second)).collect();
        if same.len() == 1 {
            return Ok(last.clone());
        }
        let mut best: Option<(String, &SnapshotRef)> = None;
        for r in same {
            let created = self.read_snapshot(r)?.created().to_string();
            if best.as_ref().is_none_or(|(c, _)| created > *c) {
                best = Some((created, r));
            }
        }
        Ok(best.expect("non-empty").1.clone())
    }
}

/// Bytes per ranged GET of [`Repository::open_range`].
pub const RANGE_CHUNK: u64 = 8 << 20;

/// A range of a blob, read about [`RANGE_CHUNK`] at a time. In an encrypted repository
/// (`opener`) the whole segments holding the range are read, opened, and cut to it.
struct RangeReader<'a> {
    repo: &'a Repository,
    key: String,
    digest: Digest,
    opener: Option<crate::crypto::SegmentOpener>,
    /// The blob's plaintext size (which sealed segment is the last).
    size: u64,
    pos: u64,
    end: u64,
    chunk: Vec<u8>,
    at: usize,
}

impl RangeReader<'_> {
    fn get(&self, start: u64, len: u64) -> Result<Vec<u8>> {
        let data = self
            .repo
            .store
            .get_range(&self.key, start, len)
            .map_err(|e| self.repo.missing(e, &self.digest))?;
        if data.len() as u64 != len {
            return Err(Error::integrity(format!(
                "object {} in {} is shorter than its index says (no bytes at {})",
                self.key,
                self.repo.location(),
                start + data.len() as u64
            )));
        }
        Ok(data)
    }

    /// The next piece of the range.
    fn refill(&mut self) -> Result<Vec<u8>> {
        use crate::crypto::{SEALED_HEADER, SEGMENT_BYTES, SEGMENT_TAG};
        let Some(opener) = &self.opener else {
            let len = (self.end - self.pos).min(RANGE_CHUNK);
            let data = self.get(self.pos, len)?;
            self.pos += len;
            return Ok(data);
        };
        let last = self.size.saturating_sub(1) / SEGMENT_BYTES;
        let first = self.pos / SEGMENT_BYTES;
        let upto = ((self.end - 1) / SEGMENT_BYTES)
            .min(first + RANGE_CHUNK / SEGMENT_BYTES - 1)
            .min(last);
        let plain_len = |i: u64| (self.size - i * SEGMENT_BYTES).min(SEGMENT_BYTES);
        let start = SEALED_HEADER + first * (SEGMENT_BYTES + SEGMENT_TAG);
        let sealed_len: u64 = (first..=upto).map(|i| plain_len(i) + SEGMENT_TAG).sum();
        let sealed = self.get(start, sealed_len)?;
        let mut plain = Vec::with_capacity(sealed.len());
        let mut rest = &sealed[..];
        for i in first..=upto {
            let (seg, more) = rest.split_at((plain_len(i) + SEGMENT_TAG) as usize);
            let mut seg = seg.to_vec();
            opener.open(i, i == last, &mut seg)?;
            plain.extend_from_slice(&seg);
            rest = more;
        }
        let skip = (self.pos - first * SEGMENT_BYTES) as usize;
        let keep = ((upto + 1) * SEGMENT_BYTES).min(self.end) - self.pos;
        self.pos += keep;
        Ok(plain[skip..skip + keep as usize].to_vec())
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.at == self.chunk.len() {
            if self.pos >= self.end {
                return Ok(0);
            }
            self.chunk = self.refill().map_err(into_io)?;
            self.at = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Hashes everything read through it and fails at EOF when the digest does not match.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: Sha256,
    digest: Digest,
    /// The object's key in the store, for messages.
    pub name: String,
    location: String,
    read: u64,
    checked: bool,
}

impl<R: Read> VerifyingReader<R> {
    pub fn new(inner: R, digest: Digest, location: String) -> Self {
        VerifyingReader {
            inner,
            hasher: Sha256::new(),
            name: digest.key(),
            digest,
            location,
            read: 0,
            checked: false,
        }
    }
    pub fn bytes_read(&self) -> u64 {
        self.read
    }
    /// Reads whatever is left and checks the digest; for callers that may stop early
    /// (the end of a tar archive comes before the end of its zstd frame).
    pub fn finish(mut self) -> Result<u64> {
        std::io::copy(&mut self, &mut std::io::sink())
            .ctx(|| format!("reading {}", self.digest.key()))?;
        Ok(self.read)
    }
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.hasher.update(&buf[..n]);
            self.read += n as u64;
        } else if !buf.is_empty() && !self.checked {
            self.checked = true;
            let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
            if actual != self.digest {
                return Err(into_io(
                    Error::integrity(format!(
                        "object {} in {} is damaged: its content hashes to {actual}, not {}",
                        self.name,
                        self.location,
                        self.digest
                    ))
                    .with_hint("restore that object from another copy of the repository, or thaw an older snapshot"),
                ));
            }
        }
        Ok(n)
    }
}

/// A staged blob's file: plain, or sealed as it is written (encrypted repositories).
/// Where blob objects live in the store.
const BLOBS_PREFIX: &str = "blobs/sha256/";
/// Where prune marks live.
pub const PRUNE_PREFIX: &str = "prune/";

/// Blob objects by stored name: size, and when written (by the store's clock).
pub type StoredBlobs = std::collections::HashMap<String, (u64, Option<SystemTime>)>;

/// A prune mark as stored.
#[derive(serde::Serialize, serde::Deserialize)]
struct PruneMarkFile {
    format: u32,
    /// Stored names of the marked blobs.
    blobs: Vec<String>,
}

/// The blobs an earlier prune found unreferenced, and when (by the store's clock).
pub struct PruneMark {
    key: String,
    pub marked: Option<SystemTime>,
    pub blobs: Vec<String>,
}

/// A blob being written (see [`Repository::blob_writer`]).
pub struct BlobWriter {
    staged: tempfile::TempPath,
    out: SpoolWriter,
    /// Hashing what is written, or the digest the caller already knows.
    hasher: std::result::Result<Sha256, Digest>,
    count: u64,
}

/// A blob written and named, staged on local disk, not yet in the repository.
pub struct StagedBlob {
    path: tempfile::TempPath,
    pub digest: Digest,
    /// Its size in the repository's terms (before sealing).
    pub size: u64,
}

impl BlobWriter {
    /// Bytes written so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// Ends the blob on local disk: its digest and size, for [`Repository::put_staged`]
    /// (from any thread).
    pub fn stage(self) -> Result<StagedBlob> {
        let BlobWriter {
            staged,
            out,
            hasher,
            count,
            ..
        } = self;
        out.finish()
            .map_err(|e| Error::io(format!("writing {}", staged.display()), e))?;
        Ok(StagedBlob {
            path: staged,
            digest: hasher.map_or_else(|known| known, Digest::from_hasher),
            size: count,
        })
    }
}

impl Write for BlobWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.out.write(buf)?;
        if let Ok(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.out.flush()
    }
}

pub enum SpoolWriter {
    Plain(std::io::BufWriter<SpoolFile>),
    Sealed(Box<Sealer<'static, std::io::BufWriter<SpoolFile>>>),
}

/// A spooled file that names itself when a write fails: the error surfaces far from
/// here (through zstd, tar and hashing writers), and "No space left on device" must say
/// which disk is full, not which source file was being read at the time.
pub struct SpoolFile {
    file: std::fs::File,
    path: std::path::PathBuf,
}

impl SpoolFile {
    fn error(&self, e: std::io::Error) -> std::io::Error {
        let dir = self.path.parent().unwrap_or(&self.path);
        let what = format!("writing {}", self.path.display());
        crate::error::into_io(crate::store::write_error(dir, what, e))
    }
}

impl Write for SpoolFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.file.write(buf).map_err(|e| self.error(e))
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush().map_err(|e| self.error(e))
    }
}

impl SpoolWriter {
    /// Ends the object (the last sealed segment) and flushes it to the file.
    pub fn finish(self) -> std::io::Result<()> {
        match self {
            SpoolWriter::Plain(mut w) => w.flush(),
            SpoolWriter::Sealed(s) => s.finish().and_then(|mut w| w.flush()),
        }
    }
}

impl Write for SpoolWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            SpoolWriter::Plain(w) => w.write(buf),
            SpoolWriter::Sealed(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            SpoolWriter::Plain(w) => w.flush(),
            SpoolWriter::Sealed(s) => s.flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn noise(n: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn ranges_read_the_same_bytes_plain_and_sealed() {
        let data = noise((3 << 20) + 12_345);
        let size = data.len() as u64;
        let plain = Repository::init(Box::new(crate::store::MemoryStore::default())).unwrap();
        let sealed = Repository::init_with(
            Box::new(crate::store::MemoryStore::default()),
            Some((Keys::generate(), None)),
        )
        .unwrap();
        for repo in [&plain, &sealed] {
            let (digest, _) = repo.put_blob(&data).unwrap();
            for (offset, len) in [
                (0, 10),
                ((1 << 20) - 5, 10),
                (12_345, 2 << 20),
                (size - 1, 1),
                (0, size),
                ((3 << 20) - 7, 12_352),
            ] {
                let mut out = Vec::new();
                repo.open_range(&digest, size, offset, len)
                    .unwrap()
                    .unwrap()
                    .read_to_end(&mut out)
                    .unwrap();
                assert!(
                    out == data[offset as usize..(offset + len) as usize],
                    "{offset}+{len}"
                );
            }
        }
        // A changed byte in the third sealed segment: that segment fails to open, the
        // first still reads.
        let (digest, _) = sealed.put_blob(&data).unwrap();
        let key = sealed.blob_key(&digest);
        let mut stored = sealed.store().get(&key).unwrap();
        stored[crate::crypto::SEALED_HEADER as usize + (2 << 20) + 100] ^= 1;
        sealed.store().put(&key, &stored).unwrap();
        let read = |offset: u64, len: u64| {
            let mut out = Vec::new();
            sealed
                .open_range(&digest, size, offset, len)
                .unwrap()
                .unwrap()
                .read_to_end(&mut out)
                .map(|_| out)
        };
        assert!(read(5, 100).is_ok());
        let e = read((2 << 20) + 50, 100).unwrap_err();
        assert!(e.to_string().contains("authentication failed"), "{e}");
    }
}

#[cfg(test)]
mod blob_writer_tests {
    use super::*;

    fn repos() -> Vec<Repository> {
        let plain = Repository::init(Box::new(crate::store::MemoryStore::default())).unwrap();
        let sealed = Repository::init_with(
            Box::new(crate::store::MemoryStore::default()),
            Some((Keys::generate(), None)),
        )
        .unwrap();
        vec![plain, sealed]
    }

    #[test]
    fn a_written_blob_is_named_by_its_content_and_reads_back() {
        for repo in repos() {
            let data: Vec<u8> = (0..3_000_000u32).flat_map(|i| i.to_le_bytes()).collect();
            let mut w = repo.blob_writer().unwrap();
            for piece in data.chunks(65_537) {
                w.write_all(piece).unwrap();
            }
            assert_eq!(w.count(), data.len() as u64);
            let (digest, size) = repo.put_written(w).unwrap();
            assert_eq!(digest, Digest::of(&data));
            assert_eq!(size, data.len() as u64);
            assert_eq!(repo.read_blob(&digest).unwrap(), data);
        }
    }

    #[test]
    fn a_blob_the_repository_has_is_not_stored_again() {
        for repo in repos() {
            for _ in 0..2 {
                let mut w = repo.blob_writer().unwrap();
                w.write_all(b"the same bytes").unwrap();
                let staged = w.stage().unwrap();
                repo.put_staged(&staged).unwrap();
            }
            assert_eq!(repo.stats.blobs_uploaded.load(Ordering::Relaxed), 1);
            assert_eq!(repo.stats.blobs_reused.load(Ordering::Relaxed), 1);
            assert_eq!(repo.stored_blobs().unwrap().len(), 1);
        }
    }
}
