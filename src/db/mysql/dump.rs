//! Freeze side: a consistent, parallel dump of one database into deterministic chunks.
//!
//! 1. Read the schema (before any lock), and the first rows of each table to size its
//!    chunks by (see [`sample_row_bytes`]).
//! 2. `LOCK TABLES … READ` on every table of the database, then every worker connection
//!    starts `START TRANSACTION WITH CONSISTENT SNAPSHOT`: all of them now see the same
//!    instant. Tables that are not transactional are read while the lock is held. Then
//!    `UNLOCK TABLES`; the site was blocked from writing only for that window.
//! 3. Tables with a key are cut into chunks at *content-defined* boundaries: a row
//!    starts a chunk when the hash of its key has its low `bits` bits zero. One cheap
//!    pass over the key finds the boundaries; the chunks are then read in parallel by
//!    key range. A row inserted or deleted moves no boundary but its own, so the other
//!    chunks are byte-identical to last night's and are not uploaded again.
//! 4. The schema is read again; if it changed (DDL ran during the dump), the dump is
//!    thrown away and taken again, once, rather than recorded inconsistent.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Value};
use tokio::sync::mpsc;

use super::conn::{db_error, exec, query_strings, DbUrl};
use super::schema::{read_schema, schema_files, Schema, Table};
use super::sql::{ident, push_row, string_literal, ColumnKind};
use super::*;
use crate::db::model::*;
use crate::error::{Error, ErrorKind, Result};
use crate::format::{rfc3339, to_json, Descriptor, A_TITLE};
use crate::progress::Progress;
use crate::repo::Repository;

/// INSERT statements are cut at this size, far below any server's max_allowed_packet
/// default (16 MiB in MariaDB, 64 MiB in MySQL). A single larger row gets a statement
/// of its own.
const STATEMENT_BYTES: usize = 1 << 20;

/// Dumps the URL's database into the repository. Returns the descriptor of its image
/// (for the snapshot record) and a report. `prev` is the same database's manifest from
/// the previous snapshot: its chunk sizes are kept so boundaries stay put.
pub fn freeze_database(
    repo: &Repository,
    url: &DbUrl,
    prev: Option<&DbManifest>,
    opts: &DumpOptions,
    progress: &Progress,
) -> Result<(Descriptor, DbReport)> {
    let started = Instant::now();
    let rt = crate::sys::runtime()?;
    let mut warnings = Vec::new();
    let dumped = dump_consistent(rt, repo, url, prev, opts, progress, &mut warnings)?;
    let Dumped {
        schema,
        manifest,
        chunks,
        sums,
        max_values,
        chunking,
        users_sql,
    } = dumped;
    warnings.extend(schema.skipped.iter().map(|s| {
        format!("{s} in {url} is not dumped: freezer does not dump that kind of object yet")
    }));

    // The schema files, then the image that lists every file in load order.
    let (schema_sql, indexes_sql, objects_sql) = schema_files(&schema);
    let put_sql = |text: &str| -> Result<FileRef> {
        let z = zstd::bulk::compress(text.as_bytes(), 3)
            .map_err(|e| Error::io("compressing a schema file", e))?;
        let (digest, size) = repo.put_blob(&z)?;
        Ok(FileRef { digest, size })
    };
    let mut manifest = manifest;
    manifest.schema = put_sql(&schema_sql)?;
    manifest.indexes = put_sql(&indexes_sql)?;
    manifest.objects_file = put_sql(&objects_sql)?;
    if let Some(users_sql) = &users_sql {
        manifest.users = Some(put_sql(users_sql)?);
    }
    manifest.tables = table_entries(&schema, chunks, &sums, &max_values, &chunking);

    let layers = image_layers(&manifest);

    let rows: u64 = manifest.tables.iter().map(|t| t.rows).sum();
    let n_chunks: usize = manifest.tables.iter().map(|t| t.chunks.len()).sum();
    let sql_bytes: u64 = manifest
        .tables
        .iter()
        .flat_map(|t| &t.chunks)
        .map(|c| c.sql_bytes)
        .sum();
    let stored_bytes: u64 = layers.iter().map(|l| l.size).sum();
    let desc = store_image(
        repo,
        MT_DB_CONFIG,
        &to_json(&manifest),
        layers,
        &manifest.database,
        manifest.tables.len(),
        rows,
    )?;
    let report = DbReport {
        database: manifest.database.clone(),
        url: url.to_string(),
        tables: manifest.tables.len(),
        rows,
        chunks: n_chunks,
        sql_bytes,
        stored_bytes,
        lock_ms: manifest.consistency.lock_ms,
        schema_by: None,
        split: vec![],
        consistency: manifest.consistency.method.clone(),
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    };
    Ok((desc, report))
}

/// Dumps the database once; when its schema changed meanwhile, once more (with a
/// warning), and then gives up.
fn dump_consistent(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    url: &DbUrl,
    prev: Option<&DbManifest>,
    opts: &DumpOptions,
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Result<Dumped> {
    let mut attempt = 0;
    let dumped = loop {
        attempt += 1;
        match dump_once(rt, repo, url, prev, opts, progress)? {
            Outcome::Done(d) => break *d,
            Outcome::SchemaChanged(what) if attempt == 1 => warnings.push(format!(
                "the schema of {} changed during the dump ({}); dumped again",
                url,
                what.join(", ")
            )),
            Outcome::SchemaChanged(what) => {
                return Err(Error::conflict(format!(
                    "the schema of {} changed during the dump, twice ({}); nothing was recorded",
                    url,
                    what.join(", ")
                ))
                .with_hint(
                    "run the freeze again when no schema change (deploy, migration) is running",
                ));
            }
        }
    };
    Ok(dumped)
}

/// The manifest's tables: each with its chunks in order, row count and checksum.
fn table_entries(
    schema: &Schema,
    chunks: Vec<StoredChunk>,
    sums: &[RowSum],
    max_values: &[u64],
    chunking: &[(&str, u32)],
) -> Vec<TableEntry> {
    let mut entries = Vec::new();
    let mut by_table: Vec<Vec<((u32, u32), Chunk)>> = vec![Vec::new(); schema.tables.len()];
    for (t, seq, c) in chunks {
        by_table[t].push((seq, c));
    }
    for (i, t) in schema.tables.iter().enumerate() {
        let mut list = std::mem::take(&mut by_table[i]);
        list.sort_by_key(|(seq, _)| *seq);
        let sum = sums[i];
        entries.push(TableEntry {
            name: t.name.clone(),
            engine: t.engine.clone(),
            columns: t.columns.clone(),
            key: t.key.clone(),
            chunking: chunking[i].0.to_string(),
            chunk_bits: chunking[i].1,
            rows: sum.rows,
            max_value_bytes: max_values[i],
            checksum: sum.hex(),
            chunks: list.into_iter().map(|(_, c)| c).collect(),
        });
    }
    entries
}

/// The image's layers: every file of the dump in load order (schema, data chunks
/// table by table, indexes, objects, users).
fn image_layers(manifest: &DbManifest) -> Vec<Descriptor> {
    let layer = |f: &FileRef, part: &str, title: String, table: Option<&str>| {
        let mut d = Descriptor::new(MT_SQL_ZSTD, f.digest.clone(), f.size);
        d.annotations.insert(A_SQL_PART.into(), part.into());
        d.annotations.insert(A_TITLE.into(), title);
        if let Some(t) = table {
            d.annotations.insert(A_SQL_TABLE.into(), t.into());
        }
        d
    };
    let mut layers = vec![layer(&manifest.schema, "schema", "schema.sql".into(), None)];
    for t in &manifest.tables {
        for (n, c) in t.chunks.iter().enumerate() {
            let f = FileRef {
                digest: c.digest.clone(),
                size: c.size,
            };
            layers.push(layer(
                &f,
                "data",
                format!("data/{}/{:05}.sql", t.name, n),
                Some(&t.name),
            ));
        }
    }
    layers.push(layer(
        &manifest.indexes,
        "indexes",
        "indexes.sql".into(),
        None,
    ));
    layers.push(layer(
        &manifest.objects_file,
        "objects",
        "objects.sql".into(),
        None,
    ));
    if let Some(u) = &manifest.users {
        layers.push(layer(u, "users", "users.sql".into(), None));
    }
    layers
}

enum Outcome {
    Done(Box<Dumped>),
    /// What changed.
    SchemaChanged(Vec<String>),
}

/// A stored chunk of a MySQL table, placed by (range, part).
type StoredChunk = Stored<(u32, u32)>;

struct Dumped {
    schema: Schema,
    /// Without tables and files yet.
    manifest: DbManifest,
    chunks: Vec<StoredChunk>,
    sums: Vec<RowSum>,
    max_values: Vec<u64>,
    /// Per table: how it was cut into chunks, and the bits of that method.
    chunking: Vec<(&'static str, u32)>,
    users_sql: Option<String>,
}

fn dump_once(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    url: &DbUrl,
    prev: Option<&DbManifest>,
    opts: &DumpOptions,
    progress: &Progress,
) -> Result<Outcome> {
    let reuse = reusable(prev.iter().flat_map(|m| &m.tables).flat_map(|t| &t.chunks));
    let (outcome, stored) = with_uploads(repo, &reuse, opts.jobs, |tx, cancel| {
        rt.block_on(dump(url, prev, opts, tx, cancel, progress))
    })?;
    Ok(match outcome {
        Outcome::Done(mut d) => {
            d.chunks = stored;
            Outcome::Done(d)
        }
        other => other,
    })
}

/// How many low hash bits must be zero for a row to start a chunk: about `target`
/// bytes of rows per chunk, from the average text length of the table's first rows
/// (`row_bytes`, see [`sample_row_bytes`]). The previous dump's value is kept unless
/// that moved by more than a factor of four.
fn chunk_bits(t: &Table, prev: Option<&DbManifest>, target: u64, row_bytes: u64) -> u32 {
    let ideal = ((target / row_bytes.max(16)).max(1) as f64).log2().round() as u32;
    keep_previous(t, prev, &["key-hash", "row-hash"], ideal.min(24))
}

/// How many rows [`sample_row_bytes`] reads.
const SAMPLE_ROWS: u32 = 1000;

/// The average length of a row's SQL text over the table's first rows (in key order, or
/// in the engine's order without a key). Chunks are sized by it rather than by the
/// server's statistics: InnoDB's are sampled, stale after bulk inserts, and recomputed
/// after a restart, and sizing by them moved every boundary of unchanged tables; the
/// same first rows always give the same length.
async fn sample_row_bytes(conn: &mut Conn, t: &Table) -> Result<u64> {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let kinds: Vec<ColumnKind> = t.columns.iter().map(|c| c.kind()).collect();
    let mut sql = format!("SELECT {} FROM {}", cols.join(","), ident(&t.name));
    if !t.key.is_empty() {
        sql.push_str(&format!(" ORDER BY {}", key_list(t)));
    }
    sql.push_str(&format!(" LIMIT {SAMPLE_ROWS}"));
    let what = || format!("sampling the rows of table {}", ident(&t.name));
    let mut result = conn
        .exec_iter(sql, ())
        .await
        .map_err(|e| db_error(e, &what()))?;
    let (mut rows, mut bytes) = (0u64, 0u64);
    let mut text = Vec::new();
    while let Some(row) = result.next().await.map_err(|e| db_error(e, &what()))? {
        text.clear();
        push_row(&mut text, &row.unwrap(), &kinds);
        rows += 1;
        bytes += text.len() as u64;
    }
    Ok(bytes / rows.max(1))
}

/// The previous dump of this table, when it was cut by the same key.
fn previous<'a>(t: &Table, prev: Option<&'a DbManifest>) -> Option<&'a TableEntry> {
    prev?
        .tables
        .iter()
        .find(|e| e.name == t.name && e.key == t.key)
}

/// Whether a table is cut at boundaries of its key (`key-range`, `key-hash`) rather than
/// after rows (`row-hash`): every transactional table with a key, whatever its size, so
/// no table flips between the two as it grows (a flip moves every boundary).
fn cut_by_key(t: &Table) -> bool {
    t.transactional() && !t.key.is_empty()
}

/// The previous dump's bits for this table and method, if within a factor of four of
/// `ideal`; else `ideal`.
fn keep_previous(t: &Table, prev: Option<&DbManifest>, methods: &[&str], ideal: u32) -> u32 {
    let old = previous(t, prev)
        .filter(|e| methods.contains(&e.chunking.as_str()))
        .map(|e| e.chunk_bits);
    match old {
        Some(b) if b.abs_diff(ideal) <= 2 => b,
        _ => ideal,
    }
}

enum Job {
    /// Find the chunk boundaries of a large keyed table.
    Boundaries { table: usize },
    /// Read rows `lo <= key < hi` (unbounded where None) as one range of chunks.
    Range {
        table: usize,
        range: u32,
        lo: Option<Vec<Value>>,
        hi: Option<Vec<Value>>,
        /// Also cut after rows whose text hashes to a boundary (tables not cut by key).
        cut_rows: bool,
    },
}

struct Shared<'a> {
    schema: &'a Schema,
    bits: Vec<u32>,
    max_chunk: usize,
    tx: mpsc::Sender<ChunkOut<(u32, u32)>>,
    cancel: Arc<AtomicBool>,
    /// The source is MariaDB (chunks may use its session variables).
    mariadb: bool,
    sums: Mutex<Vec<RowSum>>,
    /// Per table, the longest single value seen.
    max_value: Mutex<Vec<u64>>,
    /// Per table, the chunking method and its bits (key-range tables change it).
    chunking: Mutex<Vec<(&'static str, u32)>>,
    prev: Option<&'a DbManifest>,
    progress: &'a Progress,
}

async fn session_setup(conn: &mut Conn, what: &str) -> Result<()> {
    exec(
        conn,
        "SET SESSION time_zone='+00:00', NAMES binary, SESSION net_write_timeout=3600, \
         SESSION net_read_timeout=3600",
        what,
    )
    .await?;
    exec(
        conn,
        "SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        what,
    )
    .await
}

async fn dump(
    url: &DbUrl,
    prev: Option<&DbManifest>,
    opts: &DumpOptions,
    tx: mpsc::Sender<ChunkOut<(u32, u32)>>,
    cancel: Arc<AtomicBool>,
    progress: &Progress,
) -> Result<Outcome> {
    let db = url.database.clone();
    let mut conn0 = url.connect().await?;
    let info = query_strings(
        &mut conn0,
        "SELECT VERSION(), @@GLOBAL.sql_mode, @@GLOBAL.time_zone",
        &format!("reading the server version of {url}"),
    )
    .await?
    .pop()
    .unwrap_or_default();
    let before = read_schema(&mut conn0, &db).await?;
    let mut bits = Vec::new();
    for t in &before.tables {
        let row = sample_row_bytes(&mut conn0, t).await?;
        bits.push(chunk_bits(t, prev, opts.chunk_bytes, row));
    }
    progress.set_label(format!("dumping {db}"));
    progress.add_total(before.tables.iter().map(|t| t.est_bytes).sum());

    let mut workers = worker_sessions(url, opts.jobs.max(1)).await?;
    session_setup(&mut conn0, &format!("setting up a session on {url}")).await?;

    let shared = Shared {
        schema: &before,
        bits: bits.clone(),
        max_chunk: (opts.chunk_bytes * 8) as usize,
        tx,
        cancel,
        mariadb: info.first().is_some_and(|v| v.contains("MariaDB")),
        sums: Mutex::new(vec![RowSum::default(); before.tables.len()]),
        max_value: Mutex::new(vec![0; before.tables.len()]),
        chunking: Mutex::new(
            before
                .tables
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let keyed = cut_by_key(t);
                    (if keyed { "key-hash" } else { "row-hash" }, bits[i])
                })
                .collect(),
        ),
        prev,
        progress,
    };

    let window = lock_window(&mut conn0, &mut workers, &shared, url, opts).await?;
    read_tables(&mut workers, &shared).await?;
    for c in workers {
        let _ = c.disconnect().await;
    }

    // DDL check: anything that differs from the schema read before the lock.
    let changed = schema_changes(url, &before).await?;
    if !changed.is_empty() {
        return Ok(Outcome::SchemaChanged(changed));
    }
    let (accounts, users_sql) = if opts.with_users {
        let (a, sql) = super::schema::read_users(&mut conn0, &db).await?;
        (a, Some(sql))
    } else {
        (vec![], None)
    };
    let _ = conn0.disconnect().await;
    let sums = shared.sums.into_inner().unwrap();
    let max_values = shared.max_value.into_inner().unwrap();
    let chunking = shared.chunking.into_inner().unwrap();
    drop(shared.tx);

    let manifest = empty_manifest(db, &info, &before, window, accounts);
    Ok(Outcome::Done(Box::new(Dumped {
        schema: before,
        manifest,
        chunks: vec![],
        sums,
        max_values,
        chunking,
        users_sql,
    })))
}

/// `n` more connections to the database, each set up for a consistent read.
async fn worker_sessions(url: &DbUrl, n: usize) -> Result<Vec<Conn>> {
    let mut workers = Vec::new();
    for _ in 0..n {
        let mut c = url.connect().await?;
        session_setup(&mut c, &format!("setting up a session on {url}")).await?;
        workers.push(c);
    }
    Ok(workers)
}

/// The manifest of a dump before its files are stored: the server, character set, lock
/// window, objects and accounts; `info` is the server's version, sql_mode and time zone.
fn empty_manifest(
    db: String,
    info: &[String],
    before: &Schema,
    window: Consistency,
    accounts: Vec<String>,
) -> DbManifest {
    let empty = FileRef {
        digest: crate::format::Digest::of(b""),
        size: 0,
    };
    DbManifest {
        format: DB_FORMAT_VERSION,
        database: db,
        server: ServerInfo {
            version: info.first().cloned().unwrap_or_default(),
            sql_mode: info.get(1).cloned().unwrap_or_default(),
            time_zone: info.get(2).cloned().unwrap_or_default(),
        },
        charset: before.charset.clone(),
        collation: before.collation.clone(),
        consistency: window,
        schema: empty.clone(),
        indexes: empty.clone(),
        objects_file: empty,
        tables: vec![],
        objects: before.objects.clone(),
        skipped: before.skipped.clone(),
        users: None,
        accounts,
    }
}

/// The lock window, from asking for the locks to releasing them: every table locked,
/// every worker's snapshot transaction started (all see the same instant), the tables
/// outside transactions read; returns where and when the snapshot stands.
async fn lock_window(
    conn0: &mut Conn,
    workers: &mut [Conn],
    shared: &Shared<'_>,
    url: &DbUrl,
    opts: &DumpOptions,
) -> Result<Consistency> {
    let before = shared.schema;
    let db = &url.database;
    exec(
        conn0,
        &format!("SET SESSION lock_wait_timeout={}", opts.lock_wait_timeout),
        "setting lock_wait_timeout",
    )
    .await?;
    let lock_started = Instant::now();
    let at = rfc3339(SystemTime::now());
    if !before.tables.is_empty() {
        let list: Vec<String> = before
            .tables
            .iter()
            .map(|t| format!("{} READ", ident(&t.name)))
            .collect();
        exec(
            conn0,
            &format!("LOCK TABLES {}", list.join(", ")),
            &format!("locking the tables of {url} for a consistent snapshot"),
        )
        .await
        .map_err(|mut e| {
            if e.message.contains("1044") || e.message.contains("LOCK TABLES") {
                e.hint = Some(format!(
                    "the user needs the LOCK TABLES privilege on {}: GRANT LOCK TABLES ON {}.* TO ...",
                    ident(db),
                    ident(db)
                ));
            }
            e
        })?;
    }
    let starts = workers
        .iter_mut()
        .map(|c| c.query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY"));
    futures::future::try_join_all(starts)
        .await
        .map_err(|e| db_error(e, &format!("starting the snapshot transactions on {url}")))?;
    let gtid = first_value(conn0, "SELECT @@GLOBAL.gtid_binlog_pos")
        .await
        .or(first_value(conn0, "SELECT @@GLOBAL.gtid_executed").await);
    let binlog = match query_strings(conn0, "SHOW MASTER STATUS", "").await {
        Ok(rows) => rows
            .first()
            .filter(|r| r.len() >= 2 && !r[0].is_empty())
            .map(|r| format!("{}:{}", r[0], r[1])),
        Err(_) => None,
    };
    // Tables outside the snapshot are read now, under the lock.
    for (i, t) in before.tables.iter().enumerate() {
        if !t.transactional() {
            dump_range(conn0, shared, i, 0, None, None, true).await?;
        }
    }
    if !before.tables.is_empty() {
        exec(conn0, "UNLOCK TABLES", "releasing the table locks").await?;
    }
    let lock_ms = lock_started.elapsed().as_millis() as u64;
    // Test hook: SQL (say, an ALTER TABLE) from another session once the snapshot is
    // taken, as a deploy's migration would.
    if let Some(stmt) = crate::fault::sql_after_snapshot() {
        let mut other = url.connect().await?;
        exec(&mut other, &stmt, "running the test hook's statement").await?;
        let _ = other.disconnect().await;
    }

    Ok(Consistency {
        method: "lock-tables".into(),
        lock_ms,
        gtid: gtid.filter(|g| !g.is_empty()),
        binlog,
        at,
    })
}

/// Phase 1: the boundaries of the tables cut by key; phase 2: every range, by all the
/// workers.
async fn read_tables(workers: &mut [Conn], shared: &Shared<'_>) -> Result<()> {
    let before = shared.schema;
    let mut boundary_jobs = VecDeque::new();
    let mut range_jobs = VecDeque::new();
    for (i, t) in before.tables.iter().enumerate() {
        if !t.transactional() {
            continue;
        }
        if cut_by_key(t) {
            boundary_jobs.push_back(Job::Boundaries { table: i });
        } else {
            let job = Job::Range {
                table: i,
                range: 0,
                lo: None,
                hi: None,
                cut_rows: true,
            };
            range_jobs.push_back((t.est_bytes, job));
        }
    }
    let boundaries: Mutex<HashMap<usize, Vec<Vec<Value>>>> = Mutex::new(HashMap::new());
    run_queue(workers, boundary_jobs, shared, &boundaries).await?;
    let found = std::mem::take(&mut *boundaries.lock().unwrap());
    for (table, keys) in found {
        // Ranges between consecutive boundaries, open at both ends.
        let per = before.tables[table].est_bytes / (keys.len() as u64 + 1);
        let mut bounds = vec![None];
        bounds.extend(keys.into_iter().map(Some));
        bounds.push(None);
        for (n, w) in bounds.windows(2).enumerate() {
            let job = Job::Range {
                table,
                range: n as u32,
                lo: w[0].clone(),
                hi: w[1].clone(),
                cut_rows: false,
            };
            range_jobs.push_back((per, job));
        }
    }
    // Largest first, so no worker is left with one big table at the end.
    let mut sorted: Vec<(u64, Job)> = range_jobs.into_iter().collect();
    sorted.sort_by_key(|j| std::cmp::Reverse(j.0));
    let jobs = sorted.into_iter().map(|(_, j)| j).collect();
    run_queue(workers, jobs, shared, &boundaries).await?;

    Ok(())
}

/// What differs between the schema read before the lock and the one now (DDL during the
/// dump).
async fn schema_changes(url: &DbUrl, before: &Schema) -> Result<Vec<String>> {
    let mut conn_check = url.connect().await?;
    let after = read_schema(&mut conn_check, &url.database).await?;
    let _ = conn_check.disconnect().await;
    let (fa, fb) = (before.fingerprint(), after.fingerprint());
    let mut changed: Vec<String> = fa
        .iter()
        .filter(|(k, v)| fb.get(*k) != Some(v))
        .map(|(k, _)| k.clone())
        .collect();
    changed.extend(fb.keys().filter(|k| !fa.contains_key(*k)).cloned());
    Ok(changed)
}

async fn first_value(conn: &mut Conn, sql: &str) -> Option<String> {
    query_strings(conn, sql, "")
        .await
        .ok()
        .and_then(|r| r.into_iter().next())
        .and_then(|r| r.into_iter().next())
}

/// Runs the jobs over all worker connections, each taking the next job when it is free.
/// (They share this task's thread: a thread per connection measured no faster for the
/// dump and slower for loads on the 2-core bench machine, where the server needs the
/// other core.)
async fn run_queue(
    workers: &mut [Conn],
    jobs: VecDeque<Job>,
    shared: &Shared<'_>,
    boundaries: &Mutex<HashMap<usize, Vec<Vec<Value>>>>,
) -> Result<()> {
    let queue = Mutex::new(jobs);
    let results = futures::future::join_all(
        workers
            .iter_mut()
            .map(|c| run_jobs(c, &queue, shared, boundaries)),
    )
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

async fn run_jobs(
    conn: &mut Conn,
    queue: &Mutex<VecDeque<Job>>,
    shared: &Shared<'_>,
    boundaries: &Mutex<HashMap<usize, Vec<Vec<Value>>>>,
) -> Result<()> {
    loop {
        let Some(job) = queue.lock().unwrap().pop_front() else {
            return Ok(());
        };
        match job {
            Job::Boundaries { table } => {
                let keys = find_boundaries(conn, shared, table).await?;
                boundaries.lock().unwrap().insert(table, keys);
            }
            Job::Range {
                table,
                range,
                lo,
                hi,
                cut_rows,
            } => {
                dump_range(conn, shared, table, range, lo, hi, cut_rows).await?;
            }
        }
    }
}

fn key_list(t: &Table) -> String {
    t.key.iter().map(|k| ident(k)).collect::<Vec<_>>().join(",")
}

/// The key of every row that starts a chunk, in key order.
///
/// A table keyed by one integer column is cut at multiples of a power of two (`key-range`):
/// no scan is needed, only MIN and MAX, and a boundary never moves. The width is chosen
/// from the key's density so a range holds about a chunk of rows. Other keys (and integer
/// keys too sparse for that) are cut where CRC32 of the key columns' text joined by NUL
/// has its low bits zero (`key-hash`), computed by the server so only boundary keys travel.
async fn find_boundaries(conn: &mut Conn, s: &Shared<'_>, table: usize) -> Result<Vec<Vec<Value>>> {
    let t = &s.schema.tables[table];
    if t.integer_key() {
        if let Some(keys) = integer_ranges(conn, s, table).await? {
            return Ok(keys);
        }
    }
    let keys = key_list(t);
    let mask = (1u64 << s.bits[table]) - 1;
    let sql = format!(
        "SELECT {keys} FROM {} WHERE (CRC32(CONCAT_WS(0x00,{keys})) & {mask}) = 0 ORDER BY {keys}",
        ident(&t.name)
    );
    let rows: Vec<mysql_async::Row> = conn.exec(sql, ()).await.map_err(|e| {
        db_error(
            e,
            &format!("finding the chunks of table {}", ident(&t.name)),
        )
    })?;
    Ok(rows.into_iter().map(|r| r.unwrap()).collect())
}

/// Boundaries at multiples of 2^bits between the key's MIN and MAX, or None when that
/// would make too many ranges (a sparse key).
async fn integer_ranges(
    conn: &mut Conn,
    s: &Shared<'_>,
    table: usize,
) -> Result<Option<Vec<Vec<Value>>>> {
    let t = &s.schema.tables[table];
    let k = ident(&t.key[0]);
    let row: Option<mysql_async::Row> = conn
        .exec_first(
            format!("SELECT MIN({k}), MAX({k}) FROM {}", ident(&t.name)),
            (),
        )
        .await
        .map_err(|e| {
            db_error(
                e,
                &format!("finding the key range of table {}", ident(&t.name)),
            )
        })?;
    let as_int = |v: &Value| match v {
        Value::Int(i) => Some(i128::from(*i)),
        Value::UInt(u) => Some(i128::from(*u)),
        _ => None,
    };
    let vals = row.map(|r| r.unwrap()).unwrap_or_default();
    let (Some(min), Some(max)) = (vals.first().and_then(as_int), vals.get(1).and_then(as_int))
    else {
        s.chunking.lock().unwrap()[table] = ("key-range", 0);
        return Ok(Some(vec![]));
    };
    // Rows per chunk 2^bits; the key spans (max - min + 1) values for est_rows rows. The
    // density is taken as at least 1/4, so a few outlying keys (one id of 10^9 among
    // 1..10^6) cannot make a range hold more than 4 chunks' worth of the dense part.
    let span = (max - min + 1) as f64;
    // Rows: the previous dump's, exact; else the server's estimate (the clamp and
    // keep_previous's factor of four absorb how far that is off).
    let rows = previous(t, s.prev).map_or(t.est_rows, |e| e.rows);
    let per_value = (rows.max(1) as f64 / span).clamp(0.25, 1.0);
    let ideal = ((1u64 << s.bits[table]) as f64 / per_value)
        .log2()
        .round()
        .clamp(0.0, 62.0) as u32;
    let wb = keep_previous(t, s.prev, &["key-range"], ideal);
    let w = 1i128 << wb;
    let (first, last) = (min.div_euclid(w) + 1, max.div_euclid(w));
    if last - first > 100_000 {
        return Ok(None);
    }
    s.chunking.lock().unwrap()[table] = ("key-range", wb);
    Ok(Some(
        (first..=last)
            .map(|n| {
                let b = n * w;
                vec![i64::try_from(b).map_or(Value::UInt(b as u64), Value::Int)]
            })
            .collect(),
    ))
}

/// `key >= lo AND key < hi` over a (possibly multi-column) key, written as ORs of
/// equalities so every server version can use the index range for it.
fn range_condition(
    key: &[String],
    bound: &[Value],
    lower: bool,
    params: &mut Vec<Value>,
) -> String {
    let mut ors = Vec::new();
    for i in 0..key.len() {
        let mut ands = Vec::new();
        for j in 0..i {
            ands.push(format!("{} = ?", ident(&key[j])));
            params.push(bound[j].clone());
        }
        let op = match (lower, i + 1 == key.len()) {
            (true, true) => ">=",
            (true, false) => ">",
            (false, _) => "<",
        };
        ands.push(format!("{} {op} ?", ident(&key[i])));
        params.push(bound[i].clone());
        ors.push(format!("({})", ands.join(" AND ")));
    }
    format!("({})", ors.join(" OR "))
}

async fn dump_range(
    conn: &mut Conn,
    s: &Shared<'_>,
    table: usize,
    range: u32,
    lo: Option<Vec<Value>>,
    hi: Option<Vec<Value>>,
    cut_rows: bool,
) -> Result<()> {
    let t = &s.schema.tables[table];
    let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let kinds: Vec<ColumnKind> = t.columns.iter().map(|c| c.kind()).collect();
    let mut params = Vec::new();
    let mut conds = Vec::new();
    if let Some(lo) = &lo {
        conds.push(range_condition(&t.key, lo, true, &mut params));
    }
    if let Some(hi) = &hi {
        conds.push(range_condition(&t.key, hi, false, &mut params));
    }
    let mut sql = format!("SELECT {} FROM {}", cols.join(","), ident(&t.name));
    if !conds.is_empty() {
        sql.push_str(&format!(" WHERE {}", conds.join(" AND ")));
    }
    if !t.key.is_empty() {
        sql.push_str(&format!(" ORDER BY {}", key_list(t)));
    }
    // Tables not cut by key are cut after a row whose own text hashes to a boundary
    // (content-defined too); every chunk is also cut at 8 times the target size.
    let mask = (1u64 << s.bits[table]) - 1;
    let what = || format!("reading table {}", ident(&t.name));
    let mut result = conn
        .exec_iter(sql, params)
        .await
        .map_err(|e| db_error(e, &what()))?;
    let new_builder = || ChunkBuilder::new(&t.name, &cols, s.mariadb);
    let mut builder = new_builder();
    let mut part = 0u32;
    let mut sum = RowSum::default();
    let mut max_value = 0u64;
    let mut row_text = Vec::with_capacity(256);
    while let Some(row) = result.next().await.map_err(|e| db_error(e, &what()))? {
        let values = row.unwrap();
        row_text.clear();
        push_row(&mut row_text, &values, &kinds);
        sum.add_row(&row_text);
        if row_text.len() > STATEMENT_BYTES {
            for v in &values {
                if let Value::Bytes(b) = v {
                    max_value = max_value.max(b.len() as u64);
                }
            }
        }
        if row_text.len() > STATEMENT_BYTES && !t.key.is_empty() {
            builder.push_split(t, &values, &kinds);
        } else {
            builder.push(&row_text);
        }
        let boundary = cut_rows && twox_hash::XxHash3_64::oneshot(&row_text) & mask == 0;
        if boundary || builder.buf.len() >= s.max_chunk {
            let done = std::mem::replace(&mut builder, new_builder());
            send(s, table, (range, part), done).await?;
            part += 1;
        }
    }
    drop(result);
    if builder.rows > 0 {
        send(s, table, (range, part), builder).await?;
    }
    s.sums.lock().unwrap()[table].merge(sum);
    let mut m = s.max_value.lock().unwrap();
    m[table] = m[table].max(max_value);
    Ok(())
}

async fn send(s: &Shared<'_>, table: usize, seq: (u32, u32), b: ChunkBuilder) -> Result<()> {
    if s.cancel.load(Ordering::Relaxed) {
        return Err(Error::new(
            ErrorKind::Other,
            "the dump was stopped: an upload failed",
        ));
    }
    s.progress
        .check(|| format!("dumping table {}", ident(&s.schema.tables[table].name)))?;
    let rows = b.rows;
    let sql = b.finish();
    s.progress.add_done(sql.len() as u64);
    s.tx.send(ChunkOut {
        table,
        seq,
        sql,
        rows,
    })
    .await
    .map_err(|_| Error::other("the dump was stopped: the uploaders have ended"))
}

/// Accumulates the text of one chunk: a header that makes the file self-contained for
/// the `mariadb` client, then INSERT statements of at most [`STATEMENT_BYTES`], one
/// per line.
/// Where to cut `b` at about `at` bytes without splitting a UTF-8 character (a text
/// column's intermediate value must stay valid in its charset).
fn char_boundary(b: &[u8], at: usize) -> usize {
    if b.len() <= at {
        return b.len();
    }
    let mut cut = at;
    while cut > at - 4 && (0x80..0xC0).contains(&b[cut]) {
        cut -= 1;
    }
    cut
}

struct ChunkBuilder {
    buf: Vec<u8>,
    insert: Vec<u8>,
    statement_start: Option<usize>,
    rows: u64,
}

impl ChunkBuilder {
    fn new(table: &str, cols: &[String], mariadb: bool) -> ChunkBuilder {
        let mut buf = Vec::with_capacity(64 << 10);
        buf.extend_from_slice(
            format!(
                "-- freezer dump v1: rows of {}\nSET NAMES binary;\nSET SESSION time_zone='+00:00';\nSET SESSION sql_mode={};\nSET SESSION foreign_key_checks=0;\nSET SESSION unique_checks=0;\n",
                ident(table),
                string_literal(super::schema::LOAD_SQL_MODE),
            )
            .as_bytes(),
        );
        if mariadb {
            // The rows satisfied their CHECK constraints in the source; a row split into
            // pieces (see push_split) may not until its last piece is in.
            buf.extend_from_slice(b"SET SESSION check_constraint_checks=0;\n");
        }
        let insert =
            format!("INSERT INTO {} ({}) VALUES ", ident(table), cols.join(",")).into_bytes();
        ChunkBuilder {
            buf,
            insert,
            statement_start: None,
            rows: 0,
        }
    }

    fn push(&mut self, row: &[u8]) {
        match self.statement_start {
            Some(start) if self.buf.len() - start + row.len() < STATEMENT_BYTES => {
                self.buf.push(b',');
            }
            Some(_) => {
                self.buf.extend_from_slice(b";\n");
                self.statement_start = Some(self.buf.len());
                self.buf.extend_from_slice(&self.insert);
            }
            None => {
                self.statement_start = Some(self.buf.len());
                self.buf.extend_from_slice(&self.insert);
            }
        }
        self.buf.extend_from_slice(row);
        self.rows += 1;
    }

    fn close_statement(&mut self) {
        if self.statement_start.take().is_some() {
            self.buf.extend_from_slice(b";\n");
        }
    }

    /// A row too long for one statement: inserted with its long string values cut to a
    /// first piece, then completed by `UPDATE … SET c = CONCAT(c, piece) WHERE key = …`
    /// statements, so no statement exceeds about 1 MiB and any server's
    /// max_allowed_packet accepts them. (Triggers do not exist yet while data loads.)
    fn push_split(&mut self, t: &Table, values: &[Value], kinds: &[ColumnKind]) {
        const PIECE: usize = 256 << 10;
        let mut first = values.to_vec();
        let mut rest: Vec<(usize, &[u8])> = Vec::new();
        for (i, (v, k)) in values.iter().zip(kinds).enumerate() {
            if let (Value::Bytes(b), ColumnKind::Bytes) = (v, k) {
                if b.len() > PIECE {
                    let cut = char_boundary(b, PIECE);
                    first[i] = Value::Bytes(b[..cut].to_vec());
                    rest.push((i, &b[cut..]));
                }
            }
        }
        self.close_statement();
        let mut row = Vec::new();
        push_row(&mut row, &first, kinds);
        self.buf.extend_from_slice(&self.insert);
        self.buf.extend_from_slice(&row);
        self.buf.extend_from_slice(b";\n");
        let mut cond = Vec::new();
        for (n, k) in t.key.iter().enumerate() {
            let i = t
                .columns
                .iter()
                .position(|c| &c.name == k)
                .expect("key columns are dumped");
            if n > 0 {
                cond.extend_from_slice(b" AND ");
            }
            cond.extend_from_slice(ident(k).as_bytes());
            cond.push(b'=');
            super::sql::push_value(&mut cond, &values[i], kinds[i]);
        }
        // Assigning a timestamp column explicitly keeps ON UPDATE CURRENT_TIMESTAMP off it.
        let keep: String = t
            .columns
            .iter()
            .zip(kinds)
            .filter(|(_, k)| **k == ColumnKind::DateTime)
            .map(|(c, _)| format!(",{0}={0}", ident(&c.name)))
            .collect();
        for (i, mut tail) in rest {
            let col = ident(&t.columns[i].name);
            while !tail.is_empty() {
                let cut = char_boundary(tail, PIECE);
                self.buf.extend_from_slice(
                    format!("UPDATE {} SET {col}=CONCAT({col},", ident(&t.name)).as_bytes(),
                );
                super::sql::push_quoted(&mut self.buf, &tail[..cut]);
                self.buf
                    .extend_from_slice(format!("){keep} WHERE ").as_bytes());
                self.buf.extend_from_slice(&cond);
                self.buf.extend_from_slice(b";\n");
                tail = &tail[cut..];
            }
        }
        self.rows += 1;
    }

    fn finish(mut self) -> Vec<u8> {
        if self.statement_start.is_some() {
            self.buf.extend_from_slice(b";\n");
        }
        self.buf
    }
}
