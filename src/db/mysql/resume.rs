//! Resumable loads: the record a database load keeps of what it has done, so that a load
//! interrupted (Ctrl-C, a lost connection, a server restart) continues where it stopped
//! when run again, instead of starting over.
//!
//! The record is a table in the target database itself, [`TABLE`], written in the same
//! transaction as what it records: a data chunk's rows and its mark commit together or
//! not at all, so after any crash the marks are exactly the chunks that are in. DDL
//! (secondary indexes, foreign keys, views, routines) commits on its own; its mark
//! follows it, and a statement found done without its mark (the load stopped between
//! the two) is recognised by the server's "already exists" error and counted as done.
//! Tables whose engine cannot roll back (MyISAM, Aria) are emptied and loaded whole
//! again unless all their chunks were marked. The table is dropped once the database
//! verified, so a completed load leaves nothing behind.

use std::collections::HashSet;

use mysql_async::Conn;

use super::conn::{exec, query_strings};
use super::sql::ident;
use super::DbManifest;
use crate::error::{Error, Result};
use crate::format::Digest;

/// The progress table's name (a snapshot with a table of that name loads without one).
pub const TABLE: &str = "_freezer_thaw_progress";

/// The marker of a `thaw --table` at work: one row naming the tables it replaces and
/// since when, written before they are dropped and removed (with the table) once they
/// are loaded and verified. A run that finds it knows the tables may be partly loaded.
pub const TABLES_MARK: &str = "_freezer_thaw_tables";

/// An interrupted `thaw --table` found in the target: (tables, since).
pub async fn read_tables_mark(conn: &mut Conn, db: &str) -> Result<Option<(String, String)>> {
    let what = format!("looking for an interrupted thaw --table in {}", ident(db));
    let present = query_strings(
        conn,
        &format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = '{TABLES_MARK}'",
            super::sql::string_literal(db)
        ),
        &what,
    )
    .await?;
    if present.first().and_then(|r| r.first()).map(String::as_str) != Some("1") {
        return Ok(None);
    }
    let rows = query_strings(
        conn,
        &format!(
            "SELECT tables, since FROM {}.{TABLES_MARK} LIMIT 1",
            ident(db)
        ),
        &what,
    )
    .await?;
    Ok(rows
        .into_iter()
        .next()
        .map(|r| (r[0].clone(), r[1].clone())))
}

/// Notes, in the selected database, that `tables` are about to be replaced.
pub async fn write_tables_mark(conn: &mut Conn, tables: &str) -> Result<()> {
    let what = "marking the tables as being replaced";
    exec(
        conn,
        &format!("CREATE TABLE IF NOT EXISTS {TABLES_MARK} (tables TEXT NOT NULL, since VARCHAR(40) NOT NULL) ENGINE=InnoDB"),
        what,
    )
    .await?;
    exec(conn, &format!("DELETE FROM {TABLES_MARK}"), what).await?;
    exec(
        conn,
        &format!(
            "INSERT INTO {TABLES_MARK} VALUES ({}, {})",
            super::sql::string_literal(tables),
            super::sql::string_literal(&crate::format::rfc3339(std::time::SystemTime::now()))
        ),
        what,
    )
    .await
}

/// The tables are loaded and verified: the marker goes.
pub async fn clear_tables_mark(conn: &mut Conn) -> Result<()> {
    exec(
        conn,
        &format!("DROP TABLE IF EXISTS {TABLES_MARK}"),
        "removing the thaw's marker",
    )
    .await
}

/// What an earlier, interrupted load of the same dump has done.
#[derive(Debug, Default)]
pub struct Done {
    /// schema.sql ran to its end (the tables exist, empty or partly loaded).
    pub schema: bool,
    /// (table ordinal in the manifest, chunk ordinal in the table).
    pub chunks: HashSet<(usize, usize)>,
    /// Statement ordinals of indexes.sql and objects.sql that completed.
    pub indexes: HashSet<usize>,
    pub objects: HashSet<usize>,
}

/// The kinds of steps in the record (the `step` column).
#[derive(Debug, Clone, Copy)]
pub enum Step {
    Schema,
    Chunk,
    Index,
    Object,
}

impl Step {
    fn name(self) -> &'static str {
        match self {
            Step::Schema => "schema",
            Step::Chunk => "chunk",
            Step::Index => "index",
            Step::Object => "object",
        }
    }
}

/// Whether a load of `m` keeps a record (not when the dump has a table of that name).
pub fn enabled(m: &DbManifest) -> bool {
    !m.tables.iter().any(|t| t.name == TABLE)
}

/// The identity of a dump: a record of another dump is never continued.
pub fn dump_id(m: &DbManifest) -> String {
    Digest::of(&serde_json::to_vec(m).expect("a manifest serializes")).hex()[..32].to_string()
}

/// Reads the record in the (selected or named) database `db`: `None` when it has none.
/// A record of another dump is an error: its tables are not this snapshot's.
pub async fn read(conn: &mut Conn, db: &str, m: &DbManifest) -> Result<Option<Done>> {
    let what = format!("reading the progress of an earlier thaw in {}", ident(db));
    let present = query_strings(
        conn,
        &format!(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = '{TABLE}'",
            super::sql::string_literal(db)
        ),
        &what,
    )
    .await?;
    if present.first().map(|r| r[0].as_str()) != Some("1") || !enabled(m) {
        return Ok(None);
    }
    let rows = query_strings(
        conn,
        &format!("SELECT step, a, b, note FROM {}.{TABLE}", ident(db)),
        &what,
    )
    .await?;
    let mut done = Done::default();
    let mut of = None;
    for r in rows {
        let (a, b) = (r[1].parse().unwrap_or(0), r[2].parse().unwrap_or(0));
        match r[0].as_str() {
            "dump" => of = Some(r[3].clone()),
            "schema" => done.schema = true,
            "chunk" => {
                done.chunks.insert((a, b));
            }
            "index" => {
                done.indexes.insert(a);
            }
            "object" => {
                done.objects.insert(a);
            }
            _ => {}
        }
    }
    if of.as_deref() != Some(dump_id(m).as_str()) {
        return Err(Error::conflict(format!(
            "database {} holds an interrupted thaw of another snapshot",
            ident(db)
        ))
        .with_hint(
            "pass --replace to drop it and load this snapshot, or load into another database",
        ));
    }
    Ok(Some(done))
}

/// Starts the record of a load of `m` into the selected database.
pub async fn start(conn: &mut Conn, m: &DbManifest) -> Result<()> {
    let what = "creating the progress record of the thaw";
    exec(
        conn,
        &format!(
            "CREATE TABLE {TABLE} (step VARCHAR(8) NOT NULL, a INT NOT NULL, b INT NOT NULL, \
             note VARCHAR(64) NOT NULL DEFAULT '', PRIMARY KEY (step, a, b)) ENGINE=InnoDB"
        ),
        what,
    )
    .await?;
    exec(
        conn,
        &format!(
            "INSERT INTO {TABLE} VALUES ('dump', 0, 0, '{}')",
            dump_id(m)
        ),
        what,
    )
    .await
}

/// The statement that marks a step done; a chunk's runs inside the chunk's transaction.
pub fn mark(step: Step, a: usize, b: usize) -> String {
    format!(
        "INSERT INTO {TABLE} (step, a, b) VALUES ('{}', {a}, {b})",
        step.name()
    )
}

/// Drops the record: the load is complete and verified.
pub async fn finish(conn: &mut Conn) -> Result<()> {
    exec(
        conn,
        &format!("DROP TABLE IF EXISTS {TABLE}"),
        "dropping the progress record of the thaw",
    )
    .await
}

/// Whether a statement's error says that what it creates is already there: on a resumed
/// load, a statement that completed just before the load stopped (and before its mark).
pub fn already_done(e: &mysql_async::Error) -> bool {
    // 1050 table/view exists, 1061 duplicate key name, 1304 routine exists, 1359 trigger
    // exists, 1537 event exists, 1826 duplicate foreign key name.
    matches!(e, mysql_async::Error::Server(s) if matches!(s.code, 1050 | 1061 | 1304 | 1359 | 1537 | 1826))
}
