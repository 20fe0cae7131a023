//! Logical dumps of MySQL and MariaDB databases: the data of a dehydrated snapshot.
//!
//! A database is stored as one OCI image manifest (SPEC.md §10) whose config is a
//! [`DbManifest`] and whose layers are zstd-compressed SQL files in load order:
//! `schema.sql`, the data chunks, `indexes.sql`, `objects.sql`. Each file loads with the
//! stock `mariadb` client, so a dump outlives freezer.

pub mod conn;
pub mod dump;
pub mod load;
pub mod pg;
pub mod resume;
pub mod schema;
pub mod select;
pub mod sql;

use serde::{Deserialize, Serialize};

use crate::format::Digest;

pub use conn::DbUrl;

pub use crate::format::MT_DB_CONFIG;
pub const MT_SQL_ZSTD: &str = "application/vnd.freezer.sql.v1+zstd";
/// On a snapshot record's descriptor and the manifest: the source database's name.
pub use crate::format::A_DB_NAME;
pub const A_DB_TABLES: &str = "dev.freezer.db.tables";
pub const A_DB_ROWS: &str = "dev.freezer.db.rows";
/// On each layer: `schema`, `data`, `indexes` or `objects`.
pub const A_SQL_PART: &str = "dev.freezer.sql.part";
pub const A_SQL_TABLE: &str = "dev.freezer.sql.table";

/// The config blob of a database image: everything needed to load and verify it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DbManifest {
    pub format: u32,
    pub database: String,
    pub server: ServerInfo,
    pub charset: String,
    pub collation: String,
    pub consistency: Consistency,
    pub schema: FileRef,
    pub indexes: FileRef,
    pub objects_file: FileRef,
    pub tables: Vec<TableEntry>,
    /// Routines, views, triggers and events, in load order.
    pub objects: Vec<schema::Object>,
    /// Objects that exist in the source but are not in the dump (sequences, for now).
    #[serde(default)]
    pub skipped: Vec<String>,
    /// `users.sql` (freeze `--with-users`): the accounts with privileges on the database
    /// and those privileges. Loaded only on request (thaw `--with-users`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<FileRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub accounts: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `SELECT VERSION()`, e.g. `10.11.6-MariaDB-0+deb12u1`.
    pub version: String,
    /// The source server's global sql_mode and time_zone, for the record; data is
    /// dumped and loaded in UTC with [`schema::LOAD_SQL_MODE`].
    pub sql_mode: String,
    pub time_zone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Consistency {
    /// How the shared snapshot was taken: `lock-tables` (every table of the database
    /// read-locked while each connection starts its transaction).
    pub method: String,
    /// How long the site's tables were read-locked, in milliseconds.
    pub lock_ms: u64,
    /// The server's GTID position at the snapshot, where it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<String>,
    /// `file:position` of the binary log at the snapshot, where readable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binlog: Option<String>,
    /// When the snapshot was taken (RFC 3339).
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRef {
    pub digest: Digest,
    /// Compressed size.
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableEntry {
    pub name: String,
    pub engine: String,
    pub columns: Vec<schema::Column>,
    /// Chunk boundaries follow this key; empty for a table without one.
    pub key: Vec<String>,
    /// How rows were cut into chunks (SPEC.md §10.2): `key-range` (a chunk per key range
    /// of width 2^chunk_bits), `key-hash` (a chunk starts at a key whose hash has its low
    /// chunk_bits bits zero) or `row-hash` (a chunk ends after such a row).
    pub chunking: String,
    pub chunk_bits: u32,
    pub rows: u64,
    /// The longest single value (string or BLOB) in bytes: a target server whose
    /// max_allowed_packet is smaller cannot hold it.
    #[serde(default)]
    pub max_value_bytes: u64,
    /// [`sql::RowSum`] of every row, as 32 hex digits.
    pub checksum: String,
    pub chunks: Vec<Chunk>,
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

pub const DB_FORMAT_VERSION: u32 = 1;

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
    let a = &mut desc.annotations;
    a.insert(A_DB_NAME.into(), database.to_string());
    a.insert(A_DB_TABLES.into(), tables.to_string());
    a.insert(A_DB_ROWS.into(), rows.to_string());
    a.insert(A_REF_NAME.into(), format!("db-{database}"));
    Ok(desc)
}

/// A database dump of a snapshot, of either kind.
#[derive(Debug, Clone)]
pub enum Dump {
    Mysql(Box<DbManifest>),
    Postgres(Box<crate::db::pg::PgManifest>),
}

impl Dump {
    pub fn tables(&self) -> usize {
        match self {
            Dump::Mysql(m) => m.tables.len(),
            Dump::Postgres(m) => m.tables.len(),
        }
    }
    pub fn rows(&self) -> u64 {
        match self {
            Dump::Mysql(m) => m.tables.iter().map(|t| t.rows).sum(),
            Dump::Postgres(m) => m.tables.iter().map(|t| t.rows).sum(),
        }
    }
    pub fn chunks(&self) -> usize {
        match self {
            Dump::Mysql(m) => m.tables.iter().map(|t| t.chunks.len()).sum(),
            Dump::Postgres(m) => m.tables.iter().map(|t| t.chunks.len()).sum(),
        }
    }
}

impl Dump {
    /// The source database's name.
    pub fn database(&self) -> &str {
        match self {
            Dump::Mysql(m) => &m.database,
            Dump::Postgres(m) => &m.database,
        }
    }

    /// Reads the dump of the database image at `digest`, of whichever kind.
    pub fn read(repo: &crate::repo::Repository, digest: &Digest) -> crate::error::Result<Dump> {
        let image: crate::format::ImageManifest =
            crate::format::from_json(&repo.read_blob(digest)?, &digest.key())?;
        if image.config.media_type == crate::format::MT_PG_CONFIG {
            crate::db::pg::load::manifest_of(repo, digest, &image)
                .map(|m| Dump::Postgres(Box::new(m)))
        } else {
            load::manifest_of(repo, digest, &image).map(|m| Dump::Mysql(Box::new(m)))
        }
    }

    /// Every file of the dump, read and checked: nothing is loaded before all are good.
    pub fn fetch(
        &self,
        repo: &crate::repo::Repository,
        progress: &crate::progress::Progress,
    ) -> crate::error::Result<Prepared> {
        Ok(match self {
            Dump::Mysql(m) => {
                Prepared::Mysql(Box::new(load::fetch(repo, (**m).clone(), progress)?))
            }
            Dump::Postgres(m) => Prepared::Postgres(Box::new(crate::db::pg::load::fetch(
                repo,
                (**m).clone(),
                progress,
            )?)),
        })
    }
}

/// A dump read and checked, ready to load.
pub enum Prepared {
    Mysql(Box<load::PreparedDb>),
    Postgres(Box<crate::db::pg::load::PreparedPg>),
}

impl Prepared {
    /// Loads it into `url`'s database, which must be of the dump's kind.
    pub fn load(
        &self,
        url: &DbUrl,
        opts: &load::LoadOptions,
        progress: &crate::progress::Progress,
    ) -> crate::error::Result<load::LoadReport> {
        match (self, url.postgres()) {
            (Prepared::Postgres(p), Some(pg)) => {
                crate::db::pg::load::load_database(p, pg, opts, progress)
            }
            (Prepared::Mysql(p), None) => load::load_database(p, url, opts, progress),
            (Prepared::Postgres(_), None) => Err(crate::error::Error::usage(format!(
                "a PostgreSQL dump cannot be loaded into {url}"
            ))),
            (Prepared::Mysql(_), Some(_)) => Err(crate::error::Error::usage(format!(
                "a MySQL/MariaDB dump cannot be loaded into {url}"
            ))),
        }
    }
}

/// A table of a dump, of either kind, as listings and diffs show it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSummary {
    /// The table's name; `schema.table` for PostgreSQL.
    pub name: String,
    pub rows: u64,
    pub checksum: String,
    pub chunks: Vec<Chunk>,
}

impl Dump {
    pub fn table_summaries(&self) -> Vec<TableSummary> {
        match self {
            Dump::Mysql(m) => m
                .tables
                .iter()
                .map(|t| TableSummary {
                    name: t.name.clone(),
                    rows: t.rows,
                    checksum: t.checksum.clone(),
                    chunks: t.chunks.clone(),
                })
                .collect(),
            Dump::Postgres(m) => m
                .tables
                .iter()
                .map(|t| TableSummary {
                    name: format!("{}.{}", t.schema, t.name),
                    rows: t.rows,
                    checksum: t.checksum.clone(),
                    chunks: t.chunks.clone(),
                })
                .collect(),
        }
    }
}
