//! Databases: the data of a dehydrated snapshot. Each engine has a module of its own
//! (`mysql`, `pg`) with its dump, its load and its stored form; what they share is in
//! [`model`]; which engine a URL or a stored dump is, is decided here, in one place
//! ([`Dump`], [`Prepared`]).

pub mod container;
pub mod model;
pub mod mysql;
pub mod pg;
pub mod redis;

pub use model::{
    Chunk, FileRef, LoadOptions, LoadReport, RowSum, A_DB_NAME, A_DB_ROWS, A_DB_TABLES, A_SQL_PART,
    A_SQL_TABLE, MT_DB_CONFIG, MT_SQL_ZSTD,
};
pub use mysql::conn::DbUrl;
pub use mysql::DbManifest;

use crate::format::Digest;
use mysql::load;

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

/// Where a database's own tools run: on this machine, or in the site's database
/// container through the engine. PostgreSQL writes its schema with the server's own
/// `pg_dump`; MySQL needs no tool.
pub use pg::tool::{PgDumpAt as ToolsAt, Ran};

/// Dumps the URL's database, of whichever engine, into the repository. `prev` is the
/// same database's dump in the previous snapshot: its unchanged chunks are reused, and
/// its chunk boundaries kept.
pub fn freeze_database(
    repo: &crate::repo::Repository,
    url: &DbUrl,
    at: &ToolsAt,
    prev: Option<&Dump>,
    opts: &model::DumpOptions,
    progress: &crate::progress::Progress,
) -> crate::error::Result<(crate::format::Descriptor, model::DbReport)> {
    match (url.postgres(), prev) {
        (Some(pg), prev) => {
            let prev = match prev {
                Some(Dump::Postgres(m)) => Some(&**m),
                _ => None,
            };
            pg::dump::freeze_database(repo, pg, at, prev, opts, progress)
        }
        (None, prev) => {
            let prev = match prev {
                Some(Dump::Mysql(m)) => Some(&**m),
                _ => None,
            };
            mysql::dump::freeze_database(repo, url, prev, opts, progress)
        }
    }
}

/// Waits for nothing: one connection to the URL's database, opened and closed (whether
/// a server accepts the application's login yet).
pub fn try_connect(url: &DbUrl) -> crate::error::Result<()> {
    let rt = crate::sys::runtime()?;
    match url.postgres() {
        Some(pg) => rt.block_on(pg.connect()).map(drop),
        None => rt
            .block_on(url.connect())
            .map(|c| drop(rt.block_on(c.disconnect()))),
    }
}

/// Whether `e` says the URL reached another server than the one it names (a database
/// container's port answered by the host's own server): waiting does not help.
pub use mysql::conn::is_wrong_server;

/// How many tables and other objects (views, routines, …) the URL's database holds; 0
/// when it does not exist.
pub fn target_objects(url: &DbUrl) -> crate::error::Result<u64> {
    let rt = crate::sys::runtime()?;
    if let Some(pg) = url.postgres() {
        let n = rt.block_on(pg::load::target_objects(pg))?;
        return Ok(n.map_or(0, |n| n.max(0) as u64));
    }
    rt.block_on(async {
        let mut c = url.connect_server().await?;
        let state = mysql::load::target_state(&mut c, &url.database).await;
        let _ = c.disconnect().await;
        state.map(|(_, n)| n)
    })
}

/// Drops the URL's database if it exists (a drill's scratch database), also while
/// something is connected to it.
pub fn drop_database(url: &DbUrl) -> crate::error::Result<()> {
    let rt = crate::sys::runtime()?;
    if let Some(pg) = url.postgres() {
        return rt.block_on(pg::load::drop_database(pg));
    }
    rt.block_on(async {
        let mut c = url.connect_server().await?;
        mysql::conn::exec(
            &mut c,
            &format!(
                "DROP DATABASE IF EXISTS {}",
                mysql::sql::ident(&url.database)
            ),
            "dropping the scratch database",
        )
        .await
    })
}

impl Dump {
    /// Checks the dump against its target before anything is read or loaded: the
    /// engines match, `tables` (`thaw --table`, MySQL only) are in the dump, and the
    /// target is empty unless `replace`. `what` names the dump in errors. Returns the
    /// dump to load (restricted to `tables`) and whether it replaces something.
    pub fn check_target(
        self,
        what: &str,
        target: &DbUrl,
        tables: Option<&std::collections::BTreeSet<String>>,
        replace: bool,
    ) -> crate::error::Result<(Dump, bool)> {
        use crate::error::Error;
        match self {
            Dump::Postgres(m) => {
                let Some(pg) = target.postgres() else {
                    return Err(Error::usage(format!(
                        "{what} is a PostgreSQL dump; {target} is not a PostgreSQL database"
                    ))
                    .with_hint("load it with --db postgres://USER@HOST[:PORT]/DATABASE"));
                };
                if tables.is_some() {
                    return Err(Error::usage(format!(
                        "{what} is a PostgreSQL dump; --table applies to MySQL and MariaDB dumps only, for now"
                    )));
                }
                let replaces = pg::load::check_target(pg, &m, replace)?;
                Ok((Dump::Postgres(m), replaces))
            }
            Dump::Mysql(m) => {
                if target.postgres().is_some() {
                    return Err(Error::usage(format!(
                        "{what} is a MySQL/MariaDB dump; {target} is a PostgreSQL database"
                    ))
                    .with_hint("load it with --db mysql://USER@HOST[:PORT]/DATABASE"));
                }
                let m = match tables {
                    Some(t) => Box::new(mysql::select::restrict(&m, t)?),
                    None => m,
                };
                let replaces = mysql::load::check_target(target, &m, replace, tables)?;
                Ok((Dump::Mysql(m), replaces))
            }
        }
    }
}

/// A dump read and checked, ready to load.
pub enum Prepared {
    Mysql(Box<load::PreparedDb>),
    Postgres(Box<crate::db::pg::load::PreparedPg>),
}

impl Prepared {
    /// The source database's name.
    pub fn database(&self) -> &str {
        match self {
            Prepared::Mysql(p) => &p.manifest.database,
            Prepared::Postgres(p) => &p.manifest.database,
        }
    }

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
