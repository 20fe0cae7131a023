//! Databases: the data of a dehydrated snapshot. Each engine has a module of its own
//! (`mysql`, `pg`) with its dump, its load and its stored form; what they share is in
//! [`model`]; which engine a URL or a stored dump is, is decided here, in one place
//! ([`Dump`], [`Prepared`]).

pub mod model;
pub mod mysql;
pub mod pg;

pub use model::{Chunk, FileRef, LoadOptions, LoadReport, RowSum};
pub use mysql::conn::DbUrl;
pub use mysql::DbManifest;

use crate::format::Digest;
use mysql::load;

pub use crate::format::MT_DB_CONFIG;
pub const MT_SQL_ZSTD: &str = "application/vnd.freezer.sql.v1+zstd";
/// On a snapshot record's descriptor and the manifest: the source database's name.
pub use crate::format::A_DB_NAME;
pub const A_DB_TABLES: &str = "dev.freezer.db.tables";
pub const A_DB_ROWS: &str = "dev.freezer.db.rows";
/// On each layer: `schema`, `data`, `indexes` or `objects`.
pub const A_SQL_PART: &str = "dev.freezer.sql.part";
pub const A_SQL_TABLE: &str = "dev.freezer.sql.table";

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
            mysql::load::manifest_of(repo, digest, &image).map(|m| Dump::Mysql(Box::new(m)))
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
        opts: &LoadOptions,
        progress: &crate::progress::Progress,
    ) -> crate::error::Result<LoadReport> {
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
