//! Loading a PostgreSQL dump: into a new (or, with `--replace`, recreated) database,
//! schema before the rows; then the indexes, built while every table is read back and
//! compared with the snapshot's row count and checksum; then the rest of the post-data
//! (constraints that use those indexes, foreign keys, triggers, …).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Instant;

use futures::{SinkExt, StreamExt};

use super::{pg_error, quote_ident, PgManifest, PgTable, PgUrl, MT_PG_CONFIG, PG_FORMAT_VERSION};
use crate::db::model::{Fetched, LoadOptions, LoadReport};
use crate::db::FileRef;
use crate::db::RowSum;
use crate::error::{Error, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::Repository;

/// Reads a PostgreSQL database image's manifest and config. Cheap: no chunk is read.
pub fn read_manifest(repo: &Repository, digest: &Digest) -> Result<PgManifest> {
    let image: ImageManifest = from_json(&repo.read_blob(digest)?, &digest.key())?;
    manifest_of(repo, digest, &image)
}

/// The config of the PostgreSQL database image `image` (read from `digest`), checked.
pub fn manifest_of(
    repo: &Repository,
    digest: &Digest,
    image: &ImageManifest,
) -> Result<PgManifest> {
    crate::db::model::image_config(
        repo,
        digest,
        image,
        (MT_PG_CONFIG, PG_FORMAT_VERSION, |m: &PgManifest| m.format),
        ("PostgreSQL database", "PostgreSQL dump"),
    )
}

/// A dump with every file downloaded and checked against its digest (kept compressed in
/// temporary files): nothing at the target is touched before the whole dump is known to
/// be good.
pub struct PreparedPg {
    pub manifest: PgManifest,
    files: Fetched,
}

impl PreparedPg {
    fn text(&self, f: &FileRef) -> Result<Vec<u8>> {
        self.files.text(f)
    }
}

pub fn fetch(repo: &Repository, manifest: PgManifest, progress: &Progress) -> Result<PreparedPg> {
    let mut refs = vec![
        manifest.pre_data.clone(),
        manifest.post_data.clone(),
        manifest.finish.clone(),
    ];
    if let Some(u) = &manifest.users {
        refs.extend([u.roles_sql.clone(), u.pre_data.clone(), u.post_data.clone()]);
    }
    for t in &manifest.tables {
        refs.extend(t.chunks.iter().map(|c| FileRef {
            digest: c.digest.clone(),
            size: c.size,
        }));
    }
    let files = Fetched::fetch(repo, &refs, &manifest.database, progress)?;
    Ok(PreparedPg { manifest, files })
}

/// The pre-flight: the server answers, has the dump's extensions, and the target
/// database is absent or empty (or `replace`). True when it holds objects that a load
/// with `replace` drops.
pub fn check_target(url: &PgUrl, manifest: &PgManifest, replace: bool) -> Result<bool> {
    let rt = crate::sys::runtime()?;
    rt.block_on(async {
        let admin = url.with_database("postgres").connect().await?;
        let available: Vec<String> = admin
            .query("SELECT name::text FROM pg_available_extensions", &[])
            .await
            .map_err(|e| pg_error(e, &format!("listing the extensions {} has", url.server())))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let missing: Vec<&str> = manifest
            .extensions
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| !available.iter().any(|a| a == name))
            .collect();
        if !missing.is_empty() {
            return Err(Error::not_found(format!(
                "the dump of {} uses the extension{} {}, which the server at {} does not have",
                manifest.database,
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                url.server()
            ))
            .with_hint("install them on that server (Debian: postgresql-contrib or the extension's package), then thaw again"));
        }
        match target(url).await? {
            Some(t) => t.may_load(url, manifest, replace).map(|()| t.objects > 0 && t.marker.is_none()),
            None => Ok(false),
        }
    })
}

/// What a thaw writes as the comment of the database it is loading, until the load is
/// complete: an interrupted thaw (killed, the server gone) leaves it, and the next thaw
/// of the same dump loads the database again from the start (SPEC.md §7).
const LOADING: &str = "freezer: a thaw is loading this database from the dump of ";

fn loading_marker(m: &PgManifest) -> String {
    format!(
        "{LOADING}{} at {} (snapshot {})",
        m.database, m.at, m.snapshot
    )
}

/// The target database as a load finds it.
struct Target {
    /// Tables, views, sequences and functions it holds.
    objects: i64,
    /// The comment of an interrupted thaw, if it has one.
    marker: Option<String>,
}

impl Target {
    /// Whether a load of `m` may go ahead: the database is empty, holds what an
    /// interrupted thaw of this same dump left (loaded again from the start), or
    /// `replace` was given.
    fn may_load(&self, url: &PgUrl, m: &PgManifest, replace: bool) -> Result<()> {
        if replace || self.objects == 0 {
            return Ok(());
        }
        match &self.marker {
            Some(mark) if *mark == loading_marker(m) => Ok(()),
            Some(_) => Err(Error::conflict(format!(
                "database {} on {} holds an interrupted thaw of another snapshot",
                url.database,
                url.server()
            ))
            .with_hint("pass --replace to drop it and load this one, or thaw that snapshot again to complete it")),
            None => Err(Error::conflict(format!(
                "database {} on {} exists and holds {} objects",
                url.database,
                url.server(),
                self.objects
            ))
            .with_hint("pass --replace to drop and recreate it, or load into another database")),
        }
    }
}

/// The target database: None when it does not exist.
async fn target(url: &PgUrl) -> Result<Option<Target>> {
    let admin = url.with_database("postgres").connect().await?;
    let row = admin
        .query_opt(
            "SELECT pg_catalog.shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = $1",
            &[&url.database],
        )
        .await
        .map_err(|e| pg_error(e, &format!("looking for database {}", url.database)))?;
    let Some(row) = row else { return Ok(None) };
    let comment: Option<String> = row.get(0);
    let objects = target_objects(url).await?.unwrap_or(0);
    Ok(Some(Target {
        objects,
        marker: comment.filter(|c| c.starts_with(LOADING)),
    }))
}

/// How many tables, views, sequences and functions the target database holds; None
/// when it does not exist.
pub(crate) async fn target_objects(url: &PgUrl) -> Result<Option<i64>> {
    let admin = url.with_database("postgres").connect().await?;
    let exists = admin
        .query_opt(
            "SELECT 1 FROM pg_database WHERE datname = $1",
            &[&url.database],
        )
        .await
        .map_err(|e| pg_error(e, &format!("looking for database {}", url.database)))?
        .is_some();
    if !exists {
        return Ok(None);
    }
    let c = url.connect().await?;
    let n: i64 = c
        .query_one(
            "SELECT (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') \
                       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%') \
                  + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &format!("inspecting database {}", url.database)))?
        .get(0);
    Ok(Some(n))
}

/// Loads a prepared dump into the URL's database and verifies every table.
pub fn load_database(
    p: &PreparedPg,
    url: &PgUrl,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<LoadReport> {
    let started = Instant::now();
    let rt = crate::sys::runtime()?;
    let m = &p.manifest;
    let partly = |e: Error| partly_loaded(url, e);
    let restarted = rt.block_on(create_target(url, m, opts.replace, partly))?;
    let result = (|| {
        progress.set_label(format!("loading the schema of {}", url.database));
        let c = rt.block_on(url.connect())?;
        let mut warnings = Vec::new();
        if restarted {
            warnings.push(format!(
                "database {} held an interrupted thaw of this snapshot; it was loaded again from the start",
                url.database
            ));
        }
        let mut accounts = Vec::new();
        // With users: the roles first, then the schema that names them as owners.
        let (pre_data, post_data) = match (&m.users, opts.with_users) {
            (Some(u), true) => {
                run_script(rt, &c, &p.text(&u.roles_sql)?, "roles.sql", url)?;
                accounts = u.roles.clone();
                (&u.pre_data, &u.post_data)
            }
            (None, true) => {
                warnings.push(format!(
                    "the snapshot of {} has no roles (it was not frozen --with-users)",
                    m.database
                ));
                (&m.pre_data, &m.post_data)
            }
            (_, false) => (&m.pre_data, &m.post_data),
        };
        run_script(rt, &c, &p.text(pre_data)?, "pre-data.sql", url)?;
        let held = rt.block_on(hold_autovacuum(&c, m));
        let data_started = Instant::now();
        let chunks = load_chunks(p, url, opts.jobs.max(1), progress)?;
        let data_seconds = data_started.elapsed().as_secs_f64();
        let index_started = Instant::now();
        progress.set_label(format!(
            "building the indexes of {} and verifying it",
            url.database
        ));
        let post_data = String::from_utf8(p.text(post_data)?)
            .map_err(|_| Error::integrity("post-data.sql of the dump is not UTF-8"))?;
        let loaded = m.tables.iter().map(|t| (t.qualified(), t.rows)).collect();
        let post_data = super::post_data::split(&post_data, &loaded);
        let (problems, verify_seconds) =
            build_and_verify(rt, m, url, opts.jobs.max(1), &post_data)?;
        if !problems.is_empty() {
            return Err(Error::integrity(format!(
                "database {} was loaded but does not match the snapshot: {}",
                url.database,
                problems.join("; ")
            )));
        }
        run_script(rt, &c, post_data.rest.as_bytes(), "post-data.sql", url)?;
        let index_seconds = index_started.elapsed().as_secs_f64();
        run_script(rt, &c, &p.text(&m.finish)?, "finish.sql", url)?;
        warnings.extend(rt.block_on(release_autovacuum(&c, &held)));
        // Complete: the interrupted-thaw marker goes.
        let done = format!("COMMENT ON DATABASE {} IS NULL", quote_ident(&url.database));
        run_script(rt, &c, done.as_bytes(), "clearing the thaw's marker", url)?;
        // A transaction with an id, committed synchronously, flushes the WAL of every
        // commit before it: the rows (loaded with synchronous_commit off) are on disk.
        let flush = "BEGIN; SELECT pg_catalog.txid_current(); COMMIT";
        run_script(rt, &c, flush.as_bytes(), "a WAL flush", url)?;
        Ok(LoadReport {
            source: m.database.clone(),
            target: url.to_string(),
            tables: m.tables.len(),
            rows: m.tables.iter().map(|t| t.rows).sum(),
            chunks,
            resumed_chunks: 0,
            objects: 0,
            accounts,
            seconds: started.elapsed().as_secs_f64(),
            data_seconds,
            index_seconds,
            verify_seconds,
            warnings,
        })
    })();
    result.map_err(partly)
}

/// A failure from the CREATE DATABASE on leaves a partly loaded database: the message
/// says so first, whatever the cause (a server that went away included), and the hint
/// what to do about it.
fn partly_loaded(url: &PgUrl, mut e: Error) -> Error {
    e.message = format!(
        "database {} on {} is partly loaded: {}",
        url.database,
        url.server(),
        e.message
    );
    let again = match e.kind {
        // The same dump would fail the same way.
        crate::error::ErrorKind::Integrity => {
            "thaw another snapshot into it with --replace, or drop it"
        }
        _ => "run the same thaw again: it loads the database again from the start",
    };
    e.hint = Some(match e.hint.take() {
        Some(h) => format!("{h}; then {again}"),
        None => again.to_string(),
    });
    e
}

/// Creates the target database afresh (dropping the one there, which [`Target::may_load`]
/// allows) and marks it as being loaded. True when it held an interrupted thaw of `m`.
async fn create_target(
    url: &PgUrl,
    m: &PgManifest,
    replace: bool,
    partly: impl Fn(Error) -> Error,
) -> Result<bool> {
    // A fresh database from template0: nothing the server's template1 holds.
    let admin = url.with_database("postgres").connect().await?;
    let db = quote_ident(&url.database);
    let mut restarted = false;
    if let Some(t) = target(url).await? {
        t.may_load(url, m, replace)?;
        restarted = t.marker.is_some();
        admin
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await
            .map_err(|e| pg_error(e, &format!("dropping database {}", url.database)))?;
    }
    admin
        .batch_execute(&format!(
            "CREATE DATABASE {db} TEMPLATE template0 ENCODING 'UTF8'"
        ))
        .await
        .map_err(|e| pg_error(e, &format!("creating database {}", url.database)))?;
    admin
        .batch_execute(&format!(
            "COMMENT ON DATABASE {db} IS {}",
            super::quote_literal(&loading_marker(m))
        ))
        .await
        .map_err(|e| partly(pg_error(e, &format!("marking database {}", url.database))))?;
    Ok(restarted)
}

/// Turns autovacuum off on the tables about to be loaded (those whose snapshot does not
/// set `autovacuum_enabled` itself); returns them, for [`release_autovacuum`]. Each chunk
/// commits, so autovacuum starts on a large table while it is still loading, and the
/// post-data's `ALTER TABLE … ADD PRIMARY KEY` then waits until the server cancels it,
/// `deadlock_timeout` (1 s) later: on pgbench, a second of idle in a nine-second thaw.
/// Best effort: a server that refuses leaves autovacuum as it was.
async fn hold_autovacuum(c: &tokio_postgres::Client, m: &PgManifest) -> Vec<String> {
    let Ok(rows) = c
        .query(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c \
             JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND NOT EXISTS (SELECT FROM unnest(c.reloptions) o \
             WHERE o LIKE 'autovacuum\\_enabled=%')",
            &[],
        )
        .await
    else {
        return Vec::new();
    };
    let plain: std::collections::HashSet<(String, String)> =
        rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let held: Vec<String> = m
        .tables
        .iter()
        .filter(|t| t.rows > 0 && plain.contains(&(t.schema.clone(), t.name.clone())))
        .map(|t| t.qualified())
        .collect();
    let sql: String = held
        .iter()
        .map(|t| format!("ALTER TABLE {t} SET (autovacuum_enabled = false);\n"))
        .collect();
    match c.batch_execute(&sql).await {
        Ok(()) => held,
        Err(_) => Vec::new(), // one batch: none of them was changed
    }
}

/// Gives the tables [`hold_autovacuum`] held their default back; what could not be
/// reset, as warnings that say how to do it by hand.
async fn release_autovacuum(c: &tokio_postgres::Client, held: &[String]) -> Vec<String> {
    let mut warnings = Vec::new();
    for t in held {
        let sql = format!("ALTER TABLE {t} RESET (autovacuum_enabled)");
        if let Err(e) = c.batch_execute(&sql).await {
            warnings.push(format!(
                "autovacuum is still off on table {t} ({}): run {sql}",
                pg_error(e, "resetting autovacuum_enabled")
            ));
        }
    }
    warnings
}

/// Drops the URL's database (a drill's scratch database), also while connected.
pub async fn drop_database(url: &PgUrl) -> Result<()> {
    let admin = url.with_database("postgres").connect().await?;
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(&url.database)
        ))
        .await
        .map_err(|e| pg_error(e, &format!("dropping database {}", url.database)))
}

/// Runs one of the dump's SQL files (plain SQL: pg_dump's output holds no psql
/// meta-command once its `\restrict` lines are left out).
fn run_script(
    rt: &tokio::runtime::Runtime,
    c: &tokio_postgres::Client,
    text: &[u8],
    name: &str,
    url: &PgUrl,
) -> Result<()> {
    let sql = std::str::from_utf8(text)
        .map_err(|_| Error::integrity(format!("{name} of the dump is not UTF-8")))?;
    rt.block_on(c.batch_execute(sql))
        .map_err(|e| pg_error(e, &format!("running {name} in {url}")))
}

/// Loads every data chunk with `COPY … FROM STDIN` over `jobs` connections, largest
/// table first, each connection on a thread of its own (one decompresses while the
/// other sends); returns how many.
fn load_chunks(p: &PreparedPg, url: &PgUrl, jobs: usize, progress: &Progress) -> Result<usize> {
    let mut list: Vec<(&PgTable, FileRef)> = p
        .manifest
        .tables
        .iter()
        .flat_map(|t| {
            t.chunks.iter().map(move |c| {
                (
                    t,
                    FileRef {
                        digest: c.digest.clone(),
                        size: c.size,
                    },
                )
            })
        })
        .collect();
    list.sort_by_key(|(t, _)| std::cmp::Reverse(t.rows));
    let n = list.len();
    let queue = Mutex::new(list.into_iter().collect::<VecDeque<_>>());
    let queue = &queue;
    super::on_connections(url, jobs.min(n.max(1)), |c| async move {
        // Each chunk is a transaction; its commit need not wait for the WAL to reach the
        // disk: a load cut short is redone whole (--replace) anyway, and the WAL is
        // flushed once after the data (load_database) before the thaw reports success.
        c.batch_execute("SET synchronous_commit = off")
            .await
            .map_err(|e| pg_error(e, &format!("setting up a loading session on {url}")))?;
        loop {
            let Some((t, f)) = queue.lock().unwrap().pop_front() else {
                return Ok::<(), Error>(());
            };
            progress.check(|| format!("loading {}", t.qualified()))?;
            let bytes = load_chunk(&c, t, &f, p.text(&f)?).await?;
            progress.add_done(bytes);
        }
    })?;
    Ok(n)
}

/// One chunk (`COPY … FROM stdin;\n` rows `\\.\n`) into its table; the bytes of its rows.
async fn load_chunk(
    c: &tokio_postgres::Client,
    t: &PgTable,
    f: &FileRef,
    text: Vec<u8>,
) -> Result<u64> {
    let what = || {
        format!(
            "loading a chunk of table {} ({})",
            t.qualified(),
            f.digest.key()
        )
    };
    let text = bytes::Bytes::from(text);
    let nl = memchr::memchr(b'\n', &text)
        .ok_or_else(|| Error::integrity(format!("{}: no COPY line", what())))?;
    let statement = std::str::from_utf8(&text[..nl])
        .map_err(|_| Error::integrity(format!("{}: not UTF-8", what())))?
        .trim_end_matches(';');
    if !text[nl + 1..].ends_with(b"\\.\n") {
        return Err(Error::integrity(format!("{}: no end-of-data line", what())));
    }
    let body = text.slice(nl + 1..text.len() - 3);
    let body_len = body.len() as u64;
    let sink = c
        .copy_in::<_, bytes::Bytes>(statement)
        .await
        .map_err(|e| pg_error(e, &what()))?;
    futures::pin_mut!(sink);
    sink.send(body).await.map_err(|e| pg_error(e, &what()))?;
    sink.finish().await.map_err(|e| pg_error(e, &what()))?;
    Ok(body_len)
}

/// A part of a table that one connection reads back: all of it, or (PostgreSQL 14 and
/// newer, which scan a range of pages by TID) the rows on heap pages `from..to`, so that
/// one large table keeps every connection busy. Row sums add up in any order.
struct Piece<'a> {
    table: usize,
    t: &'a PgTable,
    pages: Option<(u64, Option<u64>)>,
}

/// Tables of more pages than this (64 MiB of 8 KiB pages) are read back in pieces.
const PIECE_PAGES: u64 = 8192;

/// One connection's task in the index phase: an index build, or reading back a piece.
enum Task<'a> {
    Build(&'a super::post_data::Build),
    Read(Piece<'a>),
}

/// Builds the indexes that need only the rows ([`super::post_data`]) and meanwhile reads
/// every table back and compares its rows and checksum with the snapshot's, all from one
/// queue on `jobs` connections (each on a thread of its own), builds first, largest
/// table first: the reads fill what a build leaves of the cores (its last part runs on
/// one, or waits for the disk). Returns the differences found and the seconds until the
/// last read ended.
fn build_and_verify(
    rt: &tokio::runtime::Runtime,
    m: &PgManifest,
    url: &PgUrl,
    jobs: usize,
    post_data: &super::post_data::PostData,
) -> Result<(Vec<String>, f64)> {
    let started = Instant::now();
    let tasks = post_data.builds.iter().map(Task::Build).chain(
        rt.block_on(pieces(m, url, jobs))?
            .into_iter()
            .map(Task::Read),
    );
    let queue = Mutex::new(tasks.collect::<VecDeque<_>>());
    let sums = Mutex::new(vec![RowSum::default(); m.tables.len()]);
    let read_until = Mutex::new(started);
    let connections = jobs.min(queue.lock().unwrap().len()).max(1);
    super::on_connections(url, connections, |c| {
        let (queue, sums, read_until) = (&queue, &sums, &read_until);
        async move {
            loop {
                let Some(task) = queue.lock().unwrap().pop_front() else {
                    return Ok(());
                };
                match task {
                    Task::Build(b) => c
                        .batch_execute(&format!("{}{}", post_data.head, b.sql))
                        .await
                        .map_err(|e| {
                            pg_error(
                                e,
                                &format!("building an index of table {} in {url}", b.table),
                            )
                        })?,
                    Task::Read(p) => {
                        let sql = match p.pages {
                            None => p.t.copy_out(false),
                            Some((from, to)) => p.t.copy_out_pages(from, to),
                        };
                        let sum = rows_sum(&c, p.t, &sql).await?;
                        sums.lock().unwrap()[p.table].merge(sum);
                        *read_until.lock().unwrap() = Instant::now();
                    }
                }
            }
        }
    })?;
    let mut problems = Vec::new();
    for (t, sum) in m.tables.iter().zip(sums.into_inner().unwrap()) {
        if sum.rows != t.rows {
            problems.push(format!(
                "table {} has {} rows, the snapshot has {}",
                t.qualified(),
                sum.rows,
                t.rows
            ));
        } else if sum.hex() != t.checksum {
            problems.push(format!(
                "table {} has the right row count but different contents (checksum {} instead of {})",
                t.qualified(),
                sum.hex(),
                t.checksum
            ));
        }
    }
    let read_seconds = (*read_until.lock().unwrap() - started).as_secs_f64();
    Ok((problems, read_seconds))
}

/// What [`build_and_verify`] reads: every table whole, or in ranges of pages when it is large.
async fn pieces<'a>(m: &'a PgManifest, url: &PgUrl, jobs: usize) -> Result<Vec<Piece<'a>>> {
    let c = url.connect().await?;
    let mut pieces = Vec::new();
    let ranges = c
        .query_one(
            "SELECT current_setting('server_version_num')::int >= 140000",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, "reading the server's version"))?
        .get::<_, bool>(0);
    for (table, t) in m.tables.iter().enumerate() {
        let pages: i64 = c
            .query_one(
                "SELECT pg_relation_size($1::text::regclass) / current_setting('block_size')::int",
                &[&t.qualified()],
            )
            .await
            .map_err(|e| pg_error(e, &format!("sizing table {}", t.qualified())))?
            .get(0);
        let pages = pages.max(0) as u64;
        if !ranges || pages <= PIECE_PAGES {
            pieces.push(Piece {
                table,
                t,
                pages: None,
            });
            continue;
        }
        let n = pages.div_ceil(PIECE_PAGES).min(4 * jobs as u64).max(2);
        let step = pages.div_ceil(n);
        for k in 0..n {
            let last = k + 1 == n;
            let to = (!last).then_some((k + 1) * step);
            pieces.push(Piece {
                table,
                t,
                pages: Some((k * step, to)),
            });
        }
    }
    Ok(pieces)
}

/// The row count and checksum of a table as the server holds it.
pub async fn table_sum(c: &tokio_postgres::Client, t: &PgTable) -> Result<RowSum> {
    rows_sum(c, t, &t.copy_out(false)).await
}

/// The row sum of what `copy_out` (a `COPY … TO STDOUT` of `t`'s rows) reads.
async fn rows_sum(c: &tokio_postgres::Client, t: &PgTable, copy_out: &str) -> Result<RowSum> {
    let what = || format!("verifying table {}", t.qualified());
    let stream = c
        .copy_out(copy_out)
        .await
        .map_err(|e| pg_error(e, &what()))?;
    futures::pin_mut!(stream);
    let mut sum = RowSum::default();
    let mut copied = super::CopyRows::default();
    while let Some(bytes) = stream.next().await {
        copied.push(&bytes.map_err(|e| pg_error(e, &what()))?);
        while let Some(row) = copied.next_row() {
            sum.add_row(row);
        }
    }
    copied.finish(&what())?;
    Ok(sum)
}
