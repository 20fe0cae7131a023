//! MySQL and MariaDB: logical dumps read with the driver (mysql_async), loaded back with
//! it, and verified table by table.
//!
//! A database is stored as one OCI image manifest (SPEC.md §10) whose config is a
//! [`DbManifest`] and whose layers are zstd-compressed SQL files in load order:
//! `schema.sql`, the data chunks, `indexes.sql`, `objects.sql`. Each file loads with the
//! stock `mariadb` client, so a dump outlives freezer.

pub mod conn;
pub mod dump;
pub mod load;
pub mod resume;
pub mod schema;
pub mod select;
pub mod sql;

use serde::{Deserialize, Serialize};

pub use super::model::{Chunk, FileRef};
pub use super::model::{A_SQL_PART, A_SQL_TABLE, MT_DB_CONFIG, MT_SQL_ZSTD};

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

pub const DB_FORMAT_VERSION: u32 = 1;
