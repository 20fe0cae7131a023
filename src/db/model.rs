//! What every database engine's dump and load share: the stored form of a dump's files
//! ([`FileRef`], [`Chunk`], [`store_image`]), the options and reports of a freeze and a
//! thaw, the row checksum tables are verified with ([`RowSum`]), the pipeline that
//! compresses and stores chunks while they are read ([`with_uploads`]), and the
//! downloaded, checked files of a dump ([`Fetched`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::error::{Error, Result};
use crate::format::Digest;
use crate::progress::Progress;
use crate::repo::Repository;

pub use crate::format::MT_DB_CONFIG;
pub const MT_SQL_ZSTD: &str = "application/vnd.freezer.sql.v1+zstd";
/// On a snapshot record's descriptor and the manifest: the source database's name.
pub use crate::format::A_DB_NAME;
pub use crate::format::{A_DB_ROWS, A_DB_TABLES};
/// On each layer: `schema`, `data`, `indexes` or `objects`.
pub const A_SQL_PART: &str = "dev.freezer.sql.part";
pub const A_SQL_TABLE: &str = "dev.freezer.sql.table";

/// zstd level of data chunks. Measured on sysbench data (scripts/bench db): level 1 is
/// 1.7x faster than level 3 and, on SQL text, no larger.
const CHUNK_ZSTD_LEVEL: i32 = 1;

#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Connections reading in parallel.
    pub jobs: usize,
    /// Average uncompressed size of a data chunk.
    pub chunk_bytes: u64,
    /// How long to wait for the table locks before giving up, in seconds.
    pub lock_wait_timeout: u64,
    /// Also dump the accounts with privileges on the database, and those privileges.
    pub with_users: bool,
}

impl Default for DumpOptions {
    fn default() -> Self {
        DumpOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            chunk_bytes: 2 << 20,
            lock_wait_timeout: 60,
            with_users: false,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DbReport {
    pub database: String,
    pub url: String,
    pub tables: usize,
    pub rows: u64,
    pub chunks: usize,
    pub sql_bytes: u64,
    pub stored_bytes: u64,
    pub lock_ms: u64,
    pub consistency: String,
    /// The program that wrote the schema, and where it ran (PostgreSQL:
    /// "pg_dump 15.18 in container site-db-1").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_by: Option<String>,
    /// Tables read on several connections at once, as `name (N parts)` (PostgreSQL).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub split: Vec<String>,
    pub seconds: f64,
    pub warnings: Vec<String>,
}

/// A stored chunk: (table, its place in the table, chunk).
pub(crate) type Stored<S> = (usize, S, Chunk);

/// One chunk's SQL on its way to compression and upload: its table, its place in the
/// table (`S` sorts the chunks of a table into key order; MySQL: (range, part)), its text
/// and rows.
pub(crate) struct ChunkOut<S> {
    pub table: usize,
    pub seq: S,
    pub sql: Vec<u8>,
    pub rows: u64,
}

/// Runs `read` (the readers, which send chunks on the channel it is given) while `jobs`
/// plain threads compress and store the chunks: the store has its own runtime, which
/// must not be entered from the readers'. A chunk whose text is in `reuse` (last night's
/// chunks by the digest of their text) is not compressed again. Returns what `read`
/// returned and the stored chunks as (table, place, chunk). An upload failure sets the
/// flag `read` is given (the readers stop) and is the error returned, whatever the
/// readers then say.
pub(crate) fn with_uploads<S: Send, R>(
    repo: &Repository,
    reuse: &HashMap<Digest, (Digest, u64)>,
    jobs: usize,
    read: impl FnOnce(mpsc::Sender<ChunkOut<S>>, Arc<AtomicBool>) -> Result<R>,
) -> Result<(R, Vec<Stored<S>>)> {
    let (tx, rx) = mpsc::channel::<ChunkOut<S>>(jobs * 2);
    let rx = Mutex::new(rx);
    let stored = Mutex::new(Vec::new());
    let upload_error: Mutex<Option<Error>> = Mutex::new(None);
    let cancel = Arc::new(AtomicBool::new(false));
    let read_result = std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| loop {
                let Some(c) = rx.lock().unwrap().blocking_recv() else {
                    break;
                };
                if upload_error.lock().unwrap().is_some() {
                    continue; // keep draining so the readers never block
                }
                let sql_digest = Digest::of(&c.sql);
                match store_chunk(repo, &c.sql, &sql_digest, reuse) {
                    Ok((digest, size)) => stored.lock().unwrap().push((
                        c.table,
                        c.seq,
                        Chunk {
                            digest,
                            size,
                            rows: c.rows,
                            sql_bytes: c.sql.len() as u64,
                            sql_digest: Some(sql_digest),
                        },
                    )),
                    Err(e) => {
                        cancel.store(true, Ordering::Relaxed);
                        *upload_error.lock().unwrap() = Some(e);
                    }
                }
            });
        }
        // The sender is dropped by the time `read` returns: that ends the threads, and
        // the scope joins them.
        read(tx, cancel.clone())
    });
    if let Some(e) = upload_error.into_inner().unwrap() {
        return Err(e);
    }
    Ok((read_result?, stored.into_inner().unwrap()))
}

/// Last night's chunks by the digest of their text: (blob digest, stored size).
pub(crate) fn reusable<'a>(
    chunks: impl Iterator<Item = &'a Chunk>,
) -> HashMap<Digest, (Digest, u64)> {
    chunks
        .filter_map(|c| Some((c.sql_digest.clone()?, (c.digest.clone(), c.size))))
        .collect()
}

/// Stores one chunk: reused without compressing when last night's dump had the same SQL
/// text and its blob is still in the repository, else compressed and uploaded (unless a
/// blob with that content is already there).
pub(crate) fn store_chunk(
    repo: &Repository,
    sql: &[u8],
    sql_digest: &Digest,
    reuse: &HashMap<Digest, (Digest, u64)>,
) -> Result<(Digest, u64)> {
    if let Some((digest, size)) = reuse.get(sql_digest) {
        if repo.blob_size(digest)? == Some(*size) {
            repo.count_reused(*size);
            return Ok((digest.clone(), *size));
        }
    }
    let z = zstd::bulk::compress(sql, CHUNK_ZSTD_LEVEL)
        .map_err(|e| Error::io("compressing a dump chunk", e))?;
    repo.put_blob(&z)
}

/// The files of a dump, downloaded (each checked against its digest as it streams) into
/// temporary files, compressed: the whole dump is known to be good before a target is
/// touched, and only the chunks being loaded are in memory.
pub(crate) struct Fetched {
    files: HashMap<Digest, tempfile::NamedTempFile>,
}

impl Fetched {
    /// Downloads `refs` (of the dump of `database`), after checking that the temporary
    /// directory has room for them.
    pub(crate) fn fetch(
        repo: &Repository,
        refs: &[FileRef],
        database: &str,
        progress: &Progress,
    ) -> Result<Fetched> {
        let need: u64 = refs.iter().map(|f| f.size).sum();
        let tmp = std::env::temp_dir();
        if let Ok(free) = crate::sys::free_space(&tmp) {
            if free < need + need / 10 {
                return Err(Error::other(format!(
                    "not enough space in {} for the dump of {database}: it needs {}, {} is free",
                    tmp.display(),
                    crate::progress::bytes(need),
                    crate::progress::bytes(free)
                ))
                .with_hint("set TMPDIR to a directory on a file system with more free space"));
            }
        }
        let mut files = HashMap::new();
        for f in refs {
            if files.contains_key(&f.digest) {
                continue;
            }
            progress.set_label(format!("fetching {}", &f.digest.hex()[..12]));
            files.insert(f.digest.clone(), repo.fetch_blob(&f.digest)?);
        }
        Ok(Fetched { files })
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// One file, decompressed.
    pub(crate) fn text(&self, f: &FileRef) -> Result<Vec<u8>> {
        let tmp = self.files.get(&f.digest).expect("fetched");
        let data =
            std::fs::read(tmp.path()).map_err(|e| Error::io("reading a fetched dump file", e))?;
        let damaged = |e: std::io::Error| {
            Error::integrity(format!(
                "dump file {} does not decompress: {e}",
                f.digest.key()
            ))
        };
        // Into a buffer of the size the frame header gives (freezer writes it): growing
        // one as decode_all does copied every chunk several times (7% of a thaw's CPU).
        // Streamed when the header has no size or an implausible one, or the file holds
        // more than one frame (the first frame's size is then too small).
        let sized = match zstd::zstd_safe::get_frame_content_size(&data) {
            Ok(Some(n)) if n <= 256 << 20 => zstd::bulk::decompress(&data, n as usize).ok(),
            _ => None,
        };
        match sized {
            Some(text) => Ok(text),
            None => zstd::stream::decode_all(data.as_slice()).map_err(damaged),
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    pub jobs: usize,
    /// Drop and recreate a target database that has objects.
    pub replace: bool,
    /// Create the dump's accounts (if it has them) and grant them their privileges on
    /// the target database.
    pub with_users: bool,
    /// `thaw --table`: load only these tables (the prepared manifest is restricted to
    /// them, [`super::select::restrict`]) into the target, which may hold other tables;
    /// with `replace` only these are dropped and loaded again.
    pub tables: Option<BTreeSet<String>>,
}

#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub source: String,
    pub target: String,
    pub tables: usize,
    pub rows: u64,
    pub chunks: usize,
    /// Chunks an interrupted load of the same dump had loaded (and committed) already:
    /// not loaded again.
    pub resumed_chunks: usize,
    pub objects: usize,
    /// Accounts created or granted privileges (thaw --with-users).
    pub accounts: Vec<String>,
    pub seconds: f64,
    /// Of which: loading rows, building indexes, verifying. A PostgreSQL thaw reads the
    /// tables back while it builds the indexes: its verification counts from the start
    /// of the indexes to the last read, within `index_seconds`.
    pub data_seconds: f64,
    pub index_seconds: f64,
    pub verify_seconds: f64,
    pub warnings: Vec<String>,
}

/// The content checksum of a table: the sum, modulo 2^128, of the XXH3-128 hash of each
/// row's text as the engine's dump writes it (MySQL: `push_row`; PostgreSQL: `COPY`). A sum is independent of row order and, unlike
/// XOR, does not cancel out duplicate rows in a table without a key.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RowSum {
    pub rows: u64,
    pub sum: u128,
}

impl RowSum {
    pub fn add_row(&mut self, row_text: &[u8]) {
        self.rows += 1;
        self.sum = self
            .sum
            .wrapping_add(twox_hash::XxHash3_128::oneshot(row_text));
    }
    pub fn merge(&mut self, other: RowSum) {
        self.rows += other.rows;
        self.sum = self.sum.wrapping_add(other.sum);
    }
    pub fn hex(&self) -> String {
        format!("{:032x}", self.sum)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    pub digest: Digest,
    pub size: u64,
    pub rows: u64,
    /// Uncompressed SQL bytes.
    pub sql_bytes: u64,
    /// SHA-256 of the uncompressed SQL: the next freeze reuses this chunk without
    /// compressing it again when its text hashes the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_digest: Option<Digest>,
}

/// Stores a database image, of either kind: its config (of media type `config_type`) and
/// the image manifest listing `layers` in load order. Returns the snapshot record's
/// descriptor of it, which names the database and counts its tables and rows.
pub fn store_image(
    repo: &crate::repo::Repository,
    config_type: &str,
    config: &[u8],
    layers: Vec<crate::format::Descriptor>,
    database: &str,
    tables: usize,
    rows: u64,
) -> crate::error::Result<crate::format::Descriptor> {
    use crate::format::*;
    let (cd, cs) = repo.put_blob(config)?;
    let mut ann = Annotations::new();
    ann.insert(A_DB_NAME.into(), database.to_string());
    ann.insert(A_TITLE.into(), database.to_string());
    let image = ImageManifest {
        schema_version: 2,
        media_type: MT_MANIFEST.into(),
        config: Descriptor::new(config_type, cd, cs),
        layers,
        annotations: ann,
    };
    let (md, ms) = repo.put_blob(&to_json(&image))?;
    let mut desc = Descriptor::new(MT_MANIFEST, md, ms);
    desc.annotations = Part::database_annotations(database, tables, rows);
    Ok(desc)
}

/// The config of database image `image` (read from `digest`), after the two checks every
/// engine makes: the config is of `media_type`, and of format `version` (`format` reads
/// it). `image_kind` and `dump_kind` name the engine's images and dumps in the errors
/// ("PostgreSQL database", "PostgreSQL dump").
pub(crate) fn image_config<T: serde::de::DeserializeOwned>(
    repo: &Repository,
    digest: &Digest,
    image: &crate::format::ImageManifest,
    (media_type, version, format): (&str, u32, fn(&T) -> u32),
    (image_kind, dump_kind): (&str, &str),
) -> Result<T> {
    if image.config.media_type != media_type {
        return Err(Error::integrity(format!(
            "{} is not a {image_kind} image (config type {})",
            digest.key(),
            image.config.media_type
        )));
    }
    let config: T = crate::format::from_json(
        &repo.read_blob(&image.config.digest)?,
        &image.config.digest.key(),
    )?;
    if format(&config) != version {
        return Err(Error::integrity(format!(
            "{dump_kind} {} has format {}; this freezer reads format {version}",
            image.config.digest.key(),
            format(&config)
        ))
        .with_hint("use a freezer release that reads this format"));
    }
    Ok(config)
}
