//! Thaw side: load a dump into a database, in parallel, then prove it loaded exactly.
//!
//! Every file of the dump is downloaded and checked against its digest before the
//! target is touched. Then: schema.sql, the data chunks over N connections (largest
//! first), indexes.sql (one ALTER per table, in parallel), objects.sql, and finally a
//! re-read of every table whose row count and checksum must match the manifest.

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use mysql_async::prelude::Queryable;
use mysql_async::Conn;

use super::conn::{db_error, exec, exec_strings, DbUrl};
use super::resume::{self, Step};
use super::schema::strip_definer;
use super::sql::{ident, push_row, statements, string_literal, ColumnKind};
use super::*;
use crate::db::model::*;
use crate::error::{Error, Result};
use crate::format::{from_json, Digest, ImageManifest};
use crate::progress::Progress;
use crate::repo::Repository;

/// A database image read from the repository: its manifest and every file, verified.
pub struct PreparedDb {
    pub manifest: DbManifest,
    files: Fetched,
}

/// Reads a database image's manifest and config and checks that they agree. Cheap: no
/// chunk is read (that is [`fetch`]).
pub fn read_manifest(
    repo: &Repository,
    manifest_digest: &Digest,
) -> Result<(ImageManifest, DbManifest)> {
    let image: ImageManifest =
        from_json(&repo.read_blob(manifest_digest)?, &manifest_digest.key())?;
    let m = manifest_of(repo, manifest_digest, &image)?;
    Ok((image, m))
}

/// The config of the database image `image` (read from `manifest_digest`), checked
/// against the image's layers.
pub fn manifest_of(
    repo: &Repository,
    manifest_digest: &Digest,
    image: &ImageManifest,
) -> Result<DbManifest> {
    let m: DbManifest = image_config(
        repo,
        manifest_digest,
        image,
        (MT_DB_CONFIG, DB_FORMAT_VERSION, |m: &DbManifest| m.format),
        ("database", "database dump"),
    )?;
    let layers: BTreeSet<&Digest> = image.layers.iter().map(|l| &l.digest).collect();
    for d in files_of(&m) {
        if !layers.contains(&d.digest) {
            return Err(Error::integrity(format!(
                "database dump {} names {} which its image does not list",
                image.config.digest.key(),
                d.digest.key()
            )));
        }
    }
    Ok(m)
}

fn files_of(m: &DbManifest) -> Vec<FileRef> {
    let mut v = vec![m.schema.clone(), m.indexes.clone(), m.objects_file.clone()];
    v.extend(m.users.clone());
    for t in &m.tables {
        for c in &t.chunks {
            v.push(FileRef {
                digest: c.digest.clone(),
                size: c.size,
            });
        }
    }
    v
}

/// Downloads every file of the dump and checks its digest, before anything is loaded.
pub fn fetch(repo: &Repository, manifest: DbManifest, progress: &Progress) -> Result<PreparedDb> {
    let files = Fetched::fetch(
        repo,
        &files_of(&manifest),
        &ident(&manifest.database),
        progress,
    )?;
    Ok(PreparedDb { manifest, files })
}

/// The schema files of a load: whole, or only what belongs to the selected tables.
struct SchemaFiles {
    schema: Vec<u8>,
    indexes: Vec<u8>,
    objects: Vec<u8>,
    /// The views, routines, triggers and events verification expects.
    expected: Vec<schema::Object>,
}

impl SchemaFiles {
    fn read(p: &PreparedDb, tables: Option<&BTreeSet<String>>) -> Result<SchemaFiles> {
        let m = &p.manifest;
        let (schema, indexes, objects) = (
            p.text(&m.schema)?,
            p.text(&m.indexes)?,
            p.text(&m.objects_file)?,
        );
        let Some(tables) = tables else {
            return Ok(SchemaFiles {
                schema,
                indexes,
                objects,
                expected: m.objects.clone(),
            });
        };
        let (objects, triggers) = super::select::filter_file(&objects, tables);
        Ok(SchemaFiles {
            schema: super::select::filter_file(&schema, tables).0,
            indexes: super::select::filter_file(&indexes, tables).0,
            objects,
            expected: m
                .objects
                .iter()
                .filter(|o| o.kind == "trigger" && triggers.contains(&o.name))
                .cloned()
                .collect(),
        })
    }
}

/// What the target holds now: whether the database exists and how many objects it has.
pub async fn target_state(conn: &mut Conn, db: &str) -> Result<(bool, u64)> {
    let what = format!("inspecting database {}", ident(db));
    let exists = !exec_strings(
        conn,
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?",
        vec![db.into()],
        &what,
    )
    .await?
    .is_empty();
    if !exists {
        return Ok((false, 0));
    }
    let n = exec_strings(
        conn,
        "SELECT (SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?) \
         + (SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ?) \
         + (SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?)",
        vec![db.into(), db.into(), db.into()],
        &what,
    )
    .await?;
    Ok((true, n.first().and_then(|r| r[0].parse().ok()).unwrap_or(0)))
}

/// Checks the target before a thaw: reachable, able to hold the longest value, and
/// empty unless `replace`. Returns whether it will be replaced.
/// With `tables` (`thaw --table`), only those tables count: the target may hold others.
pub fn check_target(
    target: &DbUrl,
    m: &DbManifest,
    replace: bool,
    tables: Option<&BTreeSet<String>>,
) -> Result<bool> {
    let rt = crate::sys::runtime()?;
    rt.block_on(async {
        let mut c = target.connect_server().await?;
        let (exists, mut objects) = target_state(&mut c, &target.database).await?;
        // An interrupted thaw of this dump into it continues (resume.rs).
        if objects > 0
            && !replace
            && tables.is_none()
            && resume::read(&mut c, &target.database, m).await?.is_some()
        {
            objects = 0;
        }
        let mut what = format!("{objects} tables or other objects");
        let mut hint = match tables {
            None => "load into a new database (--db NAME=mysql://…/NEWDB), or pass --replace to drop and reload it",
            Some(_) => "load into another database, or pass --replace to drop and reload only the tables named",
        };
        if let (Some(tables), true) = (tables, exists) {
            let present = existing_tables(&mut c, &target.database, tables).await?;
            objects = present.len() as u64;
            let names: Vec<String> = present.iter().map(|t| ident(t)).collect();
            what = format!("table {}", names.join(", "));
            if let Some((t, since)) = resume::read_tables_mark(&mut c, &target.database).await? {
                what = format!("{what}; a thaw --table interrupted since {since} left {t} partly loaded");
                hint = "run the same thaw with --replace to load them again";
            }
        }
        let packet: u64 = super::conn::query_strings(
            &mut c,
            "SELECT @@GLOBAL.max_allowed_packet",
            "reading max_allowed_packet",
        )
        .await?
        .first()
        .and_then(|r| r[0].parse().ok())
        .unwrap_or(u64::MAX);
        let _ = c.disconnect().await;
        if let Some(t) = m.tables.iter().max_by_key(|t| t.max_value_bytes) {
            // The server builds such a value in one piece (CONCAT of the statement pieces),
            // and refuses values longer than max_allowed_packet.
            if t.max_value_bytes + 1024 > packet {
                return Err(Error::other(format!(
                    "table {} holds a value of {} bytes; max_allowed_packet of the server at {} is {packet}",
                    ident(&t.name),
                    t.max_value_bytes,
                    target.server()
                ))
                .with_hint(format!(
                    "raise it on the target server first: SET GLOBAL max_allowed_packet={}",
                    (t.max_value_bytes + (1 << 20)).next_power_of_two()
                )));
            }
        }
        if objects > 0 && !replace {
            return Err(Error::conflict(format!(
                "database {} at {} has {what}",
                ident(&target.database),
                target.server()
            ))
            .with_hint(hint));
        }
        Ok(exists && objects > 0)
    })
}

pub fn load_database(
    prepared: &PreparedDb,
    target: &DbUrl,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<LoadReport> {
    let rt = crate::sys::runtime()?;
    rt.block_on(load(prepared, target, opts, progress))
}

impl PreparedDb {
    fn text(&self, f: &FileRef) -> Result<Vec<u8>> {
        self.files.text(f)
    }
}

async fn load(
    p: &PreparedDb,
    target: &DbUrl,
    opts: &LoadOptions,
    progress: &Progress,
) -> Result<LoadReport> {
    let started = Instant::now();
    let m = &p.manifest;
    let db = &target.database;
    let mut warnings = Vec::new();
    let mut conn0 = target.connect_server().await?;
    let version =
        super::conn::query_strings(&mut conn0, "SELECT VERSION()", "reading the server version")
            .await?
            .first()
            .map(|r| r[0].clone())
            .unwrap_or_default();
    let files = SchemaFiles::read(p, opts.tables.as_ref())?;
    let mut schema_text = files.schema.clone();
    schema_text.extend_from_slice(&files.objects);
    check_features(&String::from_utf8_lossy(&schema_text), &version, target)?;
    if let Some(tables) = &opts.tables {
        return load_tables(p, target, opts, tables, &files, progress, conn0, started).await;
    }
    let done = prepare_target(&mut conn0, target, m, opts).await?;

    // From here on a failure leaves a partly loaded database: say so, also on Ctrl-C.
    let record = resume::enabled(m);
    let again = match record {
        true => {
            "run the same thaw again to continue where it stopped (or with --replace to start over)"
        }
        false => "run the thaw again with --replace to complete it",
    };
    let note = format!(
        "database {} at {} is partly loaded: {again}",
        ident(db),
        target.server()
    );
    let partial = progress.cancel().scope().partial(note.clone());
    let result = load_into(
        p,
        &files,
        target,
        opts,
        progress,
        &mut conn0,
        &mut warnings,
        Resume { record, done },
    )
    .await;
    drop(partial);
    let (data_seconds, index_seconds, verify_seconds, resumed_chunks) = result?;
    let accounts = load_accounts(p, db, opts, &mut conn0, &mut warnings).await?;
    if record {
        resume::finish(&mut conn0).await?;
    }
    let mut report = LoadReport::of(
        m,
        target,
        &files,
        accounts,
        started,
        (data_seconds, index_seconds, verify_seconds),
        warnings,
    );
    report.resumed_chunks = resumed_chunks;
    Ok(report)
}

/// Makes the target database ready for this dump and selects it: created (or altered
/// to the dump's character set), or dropped first with `--replace`. What an interrupted
/// load of the same dump already did is returned, and kept.
async fn prepare_target(
    conn0: &mut Conn,
    target: &DbUrl,
    m: &DbManifest,
    opts: &LoadOptions,
) -> Result<Option<resume::Done>> {
    let db = &target.database;
    let (mut exists, objects) = target_state(conn0, db).await?;
    // An interrupted load of this dump continues (unless --replace asks to start over);
    // one that stopped before its tables were all created starts over.
    let mut done = match objects > 0 && !opts.replace {
        true => resume::read(conn0, db, m).await?,
        false => None,
    };
    if objects > 0 && done.as_ref().is_none_or(|d| !d.schema) {
        if !opts.replace && done.is_none() {
            return Err(Error::conflict(format!(
                "database {} at {} is not empty",
                ident(db),
                target.server()
            ))
            .with_hint("pass --replace to drop and reload it"));
        }
        exec(
            conn0,
            &format!("DROP DATABASE {}", ident(db)),
            &format!("dropping database {} to replace it", ident(db)),
        )
        .await?;
        (exists, done) = (false, None);
    }
    let charset = format!(
        "CHARACTER SET {} COLLATE {}",
        string_literal(&m.charset),
        string_literal(&m.collation)
    );
    if done.is_none() {
        let create = match exists {
            true => format!("ALTER DATABASE {} {charset}", ident(db)),
            false => format!("CREATE DATABASE {} {charset}", ident(db)),
        };
        exec(conn0, &create, &format!("creating database {}", ident(db))).await?;
    }
    exec(
        conn0,
        &format!("USE {}", ident(db)),
        "selecting the database",
    )
    .await?;
    Ok(done)
}

/// With `--with-users`: the dump's accounts and their grants, moved to database `db`.
async fn load_accounts(
    p: &PreparedDb,
    db: &str,
    opts: &LoadOptions,
    conn0: &mut Conn,
    warnings: &mut Vec<String>,
) -> Result<Vec<String>> {
    let m = &p.manifest;
    if !opts.with_users {
        return Ok(vec![]);
    }
    let Some(f) = &m.users else {
        warnings.push(format!(
            "the snapshot of {} has no accounts (it was not frozen --with-users)",
            ident(&m.database)
        ));
        return Ok(vec![]);
    };
    // The grants name the source database; they now apply to the target.
    let text = String::from_utf8_lossy(&p.text(f)?).replace(
        &format!("{}.", ident(&m.database)),
        &format!("{}.", ident(db)),
    );
    run_file(conn0, text.as_bytes(), "users.sql", warnings, None).await?;
    Ok(m.accounts.clone())
}

impl LoadReport {
    fn of(
        m: &DbManifest,
        target: &DbUrl,
        files: &SchemaFiles,
        accounts: Vec<String>,
        started: Instant,
        (data_seconds, index_seconds, verify_seconds): (f64, f64, f64),
        warnings: Vec<String>,
    ) -> LoadReport {
        LoadReport {
            source: m.database.clone(),
            target: target.to_string(),
            tables: m.tables.len(),
            rows: m.tables.iter().map(|t| t.rows).sum(),
            chunks: m.tables.iter().map(|t| t.chunks.len()).sum(),
            resumed_chunks: 0,
            objects: files.expected.len(),
            accounts,
            seconds: started.elapsed().as_secs_f64(),
            data_seconds,
            index_seconds,
            verify_seconds,
            warnings,
        }
    }
}

/// The tables of `tables` that exist in the target database.
async fn existing_tables(
    conn: &mut Conn,
    db: &str,
    tables: &BTreeSet<String>,
) -> Result<Vec<String>> {
    let rows = exec_strings(
        conn,
        "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = ?",
        vec![db.into()],
        &format!("listing the tables of {}", ident(db)),
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| r[0].clone())
        .filter(|t| tables.contains(t))
        .collect())
}

/// `thaw --table`: loads some tables into a database that may hold others, which are
/// not touched. Tables of the selection that exist are dropped first (only with
/// `replace`), with their triggers; foreign keys of other tables that point at them
/// point at the reloaded tables afterwards (they are dropped and created with
/// foreign_key_checks off, as a dump reload does).
#[allow(clippy::too_many_arguments)]
async fn load_tables(
    p: &PreparedDb,
    target: &DbUrl,
    opts: &LoadOptions,
    tables: &BTreeSet<String>,
    files: &SchemaFiles,
    progress: &Progress,
    mut conn0: Conn,
    started: Instant,
) -> Result<LoadReport> {
    let m = &p.manifest;
    let db = &target.database;
    let mut warnings = Vec::new();
    let (exists, _) = target_state(&mut conn0, db).await?;
    let present = match exists {
        true => existing_tables(&mut conn0, db, tables).await?,
        false => vec![],
    };
    let interrupted = match exists {
        true => resume::read_tables_mark(&mut conn0, db).await?,
        false => None,
    };
    if !present.is_empty() && !opts.replace {
        return Err(tables_present(target, &present, interrupted.as_ref()));
    }
    if let Some((t, since)) = &interrupted {
        warnings.push(format!(
            "a thaw --table interrupted since {since} had left {t} of database {} partly loaded; loaded again",
            ident(db)
        ));
    }
    create_and_use(&mut conn0, m, db, exists).await?;
    let list: Vec<String> = tables.iter().map(|t| ident(t)).collect();
    let note = format!(
        "table {} of database {} at {} partly loaded: run the thaw again with --replace to complete it",
        list.join(", "),
        ident(db),
        target.server()
    );
    let partial = progress.cancel().scope().partial(note.clone());
    let result = async {
        // Before anything is dropped: the next run must know these may be partly loaded.
        resume::write_tables_mark(&mut conn0, &list.join(", ")).await?;
        exec(
            &mut conn0,
            "SET SESSION foreign_key_checks=0",
            "preparing the target",
        )
        .await?;
        for t in &present {
            exec(
                &mut conn0,
                &format!("DROP TABLE {}", ident(t)),
                &format!("dropping table {} to replace it", ident(t)),
            )
            .await?;
        }
        let none = Resume {
            record: false,
            done: None,
        };
        let r = load_into(
            p,
            files,
            target,
            opts,
            progress,
            &mut conn0,
            &mut warnings,
            none,
        )
        .await?;
        resume::clear_tables_mark(&mut conn0).await?;
        Ok::<_, Error>(r)
    }
    .await;
    drop(partial);
    let (data, index, verify, _) = result.map_err(|mut e| {
        if !present.is_empty() {
            e.hint = Some(format!(
                "{}; fix the cause and run the thaw again with --replace",
                note.trim_end_matches(": run the thaw again with --replace to complete it")
            ));
        }
        e
    })?;
    let _ = conn0.disconnect().await;
    Ok(LoadReport::of(
        m,
        target,
        files,
        vec![],
        started,
        (data, index, verify),
        warnings,
    ))
}

/// Creates database `db` (with the dump's character set) unless it `exists`, and
/// selects it.
async fn create_and_use(conn: &mut Conn, m: &DbManifest, db: &str, exists: bool) -> Result<()> {
    if !exists {
        let create = format!(
            "CREATE DATABASE {} CHARACTER SET {} COLLATE {}",
            ident(db),
            string_literal(&m.charset),
            string_literal(&m.collation)
        );
        exec(conn, &create, &format!("creating database {}", ident(db))).await?;
    }
    exec(
        conn,
        &format!("USE {}", ident(db)),
        "selecting the database",
    )
    .await
}

/// The refusal of a `thaw --table` without `--replace` whose tables are there; it says
/// when an interrupted one left them partly loaded.
fn tables_present(
    target: &DbUrl,
    present: &[String],
    interrupted: Option<&(String, String)>,
) -> Error {
    let names: Vec<String> = present.iter().map(|t| ident(t)).collect();
    let message = format!(
        "database {} at {} already has table {}",
        ident(&target.database),
        target.server(),
        names.join(", ")
    );
    match interrupted {
        Some((t, since)) => Error::conflict(format!(
            "{message}; a thaw --table interrupted since {since} left {t} partly loaded"
        ))
        .with_hint("run the same thaw with --replace to load them again"),
        None => Error::conflict(message).with_hint(
            "pass --replace to replace only these tables, or load them into another database",
        ),
    }
}

/// Whether a load keeps a progress record ([`resume`]), and what an earlier,
/// interrupted load of the same dump did.
struct Resume {
    record: bool,
    done: Option<resume::Done>,
}

/// Loads into the (created, selected) target database; returns the seconds spent on
/// rows, indexes and verification, and how many chunks an earlier load had loaded.
#[allow(clippy::too_many_arguments)]
async fn load_into(
    p: &PreparedDb,
    files: &SchemaFiles,
    target: &DbUrl,
    opts: &LoadOptions,
    progress: &Progress,
    conn0: &mut Conn,
    warnings: &mut Vec<String>,
    resume: Resume,
) -> Result<(f64, f64, f64, usize)> {
    let m = &p.manifest;
    let db = &target.database;
    let again = match resume.record {
        true => "run the same thaw again to continue where it stopped",
        false => "run the thaw again with --replace",
    };
    let partial = |mut e: Error| {
        e.hint = Some(format!(
            "database {} is partly loaded; fix the cause and {again}",
            ident(db)
        ));
        e
    };
    let resuming = resume.done.is_some();
    let done = match resume.done {
        Some(done) => done,
        None => {
            run_file(conn0, &files.schema, "schema.sql", warnings, None)
                .await
                .map_err(partial)?;
            if resume.record {
                resume::start(conn0, m).await.map_err(partial)?;
                exec(
                    conn0,
                    &resume::mark(Step::Schema, 0, 0),
                    "recording progress",
                )
                .await
                .map_err(partial)?;
            }
            resume::Done::default()
        }
    };

    // Data: every chunk not loaded yet, largest first, over `jobs` connections.
    let data_started = Instant::now();
    let (chunks, resumed) = chunks_to_load(conn0, m, &done, resuming)
        .await
        .map_err(partial)?;
    progress.set_label(format!("loading {db}"));
    let mut conns = Vec::new();
    for _ in 0..opts.jobs.max(1) {
        let mut c = target.connect().await.map_err(partial)?;
        // Not replicated: the copy is for this server. Needs a privilege; skip without.
        let _ = c.query_drop("SET SESSION sql_log_bin=0").await;
        conns.push(c);
    }
    load_chunks(p, &mut conns, chunks, resume.record, progress)
        .await
        .map_err(partial)?;
    let data_seconds = data_started.elapsed().as_secs_f64();
    let index_started = Instant::now();
    progress.set_label(format!("indexing {db}"));
    let marks = resume.record.then_some(Marks {
        step: Step::Index,
        done: &done.indexes,
        resuming,
    });
    build_indexes(&mut conns, &files.indexes, marks)
        .await
        .map_err(partial)?;
    let index_seconds = index_started.elapsed().as_secs_f64();
    progress.set_label(format!("creating views, routines and triggers in {db}"));
    let marks = resume.record.then_some(Marks {
        step: Step::Object,
        done: &done.objects,
        resuming,
    });
    run_file(conn0, &files.objects, "objects.sql", warnings, marks)
        .await
        .map_err(partial)?;

    let verify_started = Instant::now();
    progress.set_label(format!("verifying {db}"));
    verify_loaded(conns, conn0, m, files, db).await?;
    Ok((
        data_seconds,
        index_seconds,
        verify_started.elapsed().as_secs_f64(),
        resumed,
    ))
}

/// The target must hold exactly what the manifest says: every table's rows and
/// checksum, and every view, routine and trigger. (Reading each table back right after
/// its index build, beside the other builds, measured slower on the bench: 12.1 s for
/// both instead of 9.6 s; the builds and the reads compete for the same cores and disk.)
async fn verify_loaded(
    mut conns: Vec<Conn>,
    conn0: &mut Conn,
    m: &DbManifest,
    files: &SchemaFiles,
    db: &str,
) -> Result<()> {
    let mut problems = verify_tables(&mut conns, m).await?;
    for c in conns {
        let _ = c.disconnect().await;
    }
    problems.extend(check_objects(conn0, &files.expected, db).await?);
    if !problems.is_empty() {
        return Err(Error::integrity(format!(
            "database {} did not load exactly: {}",
            ident(db),
            problems.join("; ")
        ))
        .with_hint("the loaded database differs from the snapshot; do not use it. Report this, with the server versions of source and target"));
    }
    Ok(())
}

/// Loads `chunks` over the connections (a thread each), each taking the next from one
/// queue.
async fn load_chunks(
    p: &PreparedDb,
    conns: &mut [Conn],
    chunks: Vec<ChunkJob<'_>>,
    record: bool,
    progress: &Progress,
) -> Result<()> {
    progress.add_total(chunks.iter().map(|c| c.chunk.sql_bytes).sum());
    let queue = Mutex::new(chunks.into_iter().collect::<VecDeque<_>>());
    let loaded = std::sync::atomic::AtomicU64::new(0);
    let results = futures::future::join_all(conns.iter_mut().map(|c| async {
        loop {
            let Some(job) = queue.lock().unwrap().pop_front() else {
                return Ok(());
            };
            let (t, chunk) = (job.table, job.chunk);
            progress.check(|| format!("loading table {}", ident(&t.name)))?;
            let f = FileRef {
                digest: chunk.digest.clone(),
                size: chunk.size,
            };
            let mark = record.then(|| resume::mark(Step::Chunk, job.at.0, job.at.1));
            let result = match p.text(&f) {
                Ok(text) => load_chunk_retrying(c, t, chunk, &text, mark.as_deref()).await,
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                // The other connections stop after their current chunk.
                queue.lock().unwrap().clear();
                return Err(e);
            }
            progress.add_done(chunk.sql_bytes);
            crate::fault::abort_at(
                crate::fault::Abort::AfterChunks,
                loaded.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1,
            );
        }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// Runs indexes.sql: its session settings on every connection, then its ALTERs (one per
/// table) in parallel, skipping those an earlier load marked.
async fn build_indexes(conns: &mut [Conn], text: &[u8], marks: Option<Marks<'_>>) -> Result<()> {
    let resuming = marks.as_ref().is_some_and(|m| m.resuming);
    let (sets, alters): (Vec<_>, Vec<_>) = statements(text)
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !marks.as_ref().is_some_and(|m| m.done.contains(i)))
        .partition(|(_, s)| s.starts_with(b"SET "));
    let queue = Mutex::new(alters.into_iter().collect::<VecDeque<_>>());
    let results = futures::future::join_all(conns.iter_mut().map(|c| async {
        for (_, s) in &sets {
            c.query_drop(*s)
                .await
                .map_err(|e| db_error(e, "indexes.sql"))?;
        }
        loop {
            let Some((i, s)) = queue.lock().unwrap().pop_front() else {
                return Ok(());
            };
            match c.query_drop(s).await {
                Ok(()) => {}
                Err(e) if resuming && resume::already_done(&e) => {}
                Err(e) => return Err(db_error(e, &format!("indexes.sql: {}", preview(s)))),
            }
            if let Some(m) = &marks {
                ddl_done();
                exec(c, &resume::mark(m.step, i, 0), "recording progress").await?;
            }
        }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(())
}

/// Reads every table back over the connections (a thread each, largest table first) and
/// compares its row count and checksum with the manifest's: the differences found.
async fn verify_tables(conns: &mut [Conn], m: &DbManifest) -> Result<Vec<String>> {
    let mut order: Vec<&TableEntry> = m.tables.iter().collect();
    order.sort_by_key(|t| std::cmp::Reverse(t.rows));
    let queue = Mutex::new(order.into_iter().collect::<VecDeque<_>>());
    let problems = Mutex::new(Vec::new());
    let results = futures::future::join_all(conns.iter_mut().map(|c| async {
        exec(
            c,
            "SET SESSION time_zone='+00:00', NAMES binary",
            "setting up verification",
        )
        .await?;
        loop {
            let Some(t) = queue.lock().unwrap().pop_front() else {
                return Ok(());
            };
            if let Some(p) = check_table(c, t).await? {
                problems.lock().unwrap().push(p);
            }
        }
    }))
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(problems.into_inner().unwrap())
}

/// A chunk to load: its table, itself, and its place in the manifest (table ordinal,
/// chunk ordinal), which its progress mark records.
struct ChunkJob<'a> {
    table: &'a TableEntry,
    chunk: &'a Chunk,
    at: (usize, usize),
}

/// The chunks still to load, largest first, and how many an earlier load had loaded.
/// A table whose engine cannot roll back (MyISAM, Aria) and that an earlier load left
/// incomplete may hold rows of a chunk that was never marked: it is emptied and loaded
/// whole again.
async fn chunks_to_load<'a>(
    conn0: &mut Conn,
    m: &'a DbManifest,
    done: &resume::Done,
    resuming: bool,
) -> Result<(Vec<ChunkJob<'a>>, usize)> {
    let mut jobs = Vec::new();
    let mut resumed = 0;
    for (ti, t) in m.tables.iter().enumerate() {
        let is_done = |ci: usize| done.chunks.contains(&(ti, ci));
        let complete = (0..t.chunks.len()).all(is_done);
        let reload = resuming && !complete && !schema::transactional(&t.engine);
        if reload {
            let what = format!("emptying table {} to load it again", ident(&t.name));
            exec(conn0, &format!("TRUNCATE TABLE {}", ident(&t.name)), &what).await?;
            let forget = format!(
                "DELETE FROM {} WHERE step = 'chunk' AND a = {ti}",
                resume::TABLE
            );
            exec(conn0, &forget, &what).await?;
        }
        for (ci, chunk) in t.chunks.iter().enumerate() {
            if !reload && is_done(ci) {
                resumed += 1;
                continue;
            }
            jobs.push(ChunkJob {
                table: t,
                chunk,
                at: (ti, ci),
            });
        }
    }
    jobs.sort_by_key(|j| std::cmp::Reverse(j.chunk.sql_bytes));
    Ok((jobs, resumed))
}

/// Loads one chunk in one transaction: one redo log flush instead of one per statement,
/// and a chunk that hits a deadlock or lock wait timeout (parallel inserts into one table
/// can) is rolled back whole and loaded again, up to 5 times.
async fn load_chunk_retrying(
    c: &mut Conn,
    t: &TableEntry,
    chunk: &Chunk,
    text: &[u8],
    mark: Option<&str>,
) -> Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match load_chunk(c, text, mark).await {
            Ok(()) => return Ok(()),
            Err((e, stmt_len)) => {
                let _ = c.query_drop("ROLLBACK").await;
                let retry =
                    matches!(&e, mysql_async::Error::Server(s) if s.code == 1213 || s.code == 1205);
                if retry && attempt < 5 {
                    continue;
                }
                let mut err = db_error(
                    e,
                    &format!(
                        "loading rows of table {} (chunk {})",
                        ident(&t.name),
                        chunk.digest.key()
                    ),
                );
                if err.message.contains("max_allowed_packet") || err.message.contains("1153") {
                    err.hint = Some(format!(
                        "a statement is {stmt_len} bytes; raise max_allowed_packet on the target server above that"
                    ));
                }
                return Err(err);
            }
        }
    }
}

/// Features a dump's schema may use that older MariaDB servers do not have: (text in
/// the CREATE statements, what it is, first MariaDB version with it).
const FEATURES: &[(&str, &str, (u32, u32, u32))] = &[
    (" INVISIBLE", "invisible columns", (10, 3, 3)),
    (
        "WITH SYSTEM VERSIONING",
        "system-versioned tables",
        (10, 3, 4),
    ),
    (" inet6", "the INET6 type", (10, 5, 0)),
    ("utf8mb3", "the utf8mb3 charset name", (10, 6, 1)),
    (" uuid", "the UUID type", (10, 7, 0)),
    ("uca1400", "UCA 14.0 collations", (10, 10, 1)),
    (" inet4", "the INET4 type", (11, 3, 0)),
    (" vector(", "the VECTOR type", (11, 7, 1)),
];

fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let mut parts = v
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    Some((
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
        parts.next()?.parse().ok()?,
    ))
}

/// Refuses, before the target is touched, a MariaDB server too old for a feature the
/// dump's schema uses, naming the feature and the version it needs.
fn check_features(schema: &str, target_version: &str, target: &DbUrl) -> Result<()> {
    if !target_version.contains("MariaDB") {
        return Ok(());
    }
    let Some(have) = parse_version(target_version) else {
        return Ok(());
    };
    for (needle, what, need) in FEATURES {
        if *need > have && schema.contains(needle) {
            return Err(Error::other(format!(
                "the dump uses {what}, which needs MariaDB {}.{}.{}; the server at {} is {target_version}",
                need.0,
                need.1,
                need.2,
                target.server()
            ))
            .with_hint("load it into a newer server"));
        }
    }
    Ok(())
}

/// Runs one chunk's statements in a transaction, with its progress mark if any. On
/// failure: the error and the length of the statement that failed.
async fn load_chunk(
    c: &mut Conn,
    text: &[u8],
    mark: Option<&str>,
) -> Result<(), (mysql_async::Error, usize)> {
    c.query_drop("START TRANSACTION")
        .await
        .map_err(|e| (e, 0))?;
    for s in statements(text) {
        c.query_drop(s).await.map_err(|e| (e, s.len()))?;
    }
    if let Some(mark) = mark {
        c.query_drop(mark).await.map_err(|e| (e, mark.len()))?;
    }
    c.query_drop("COMMIT").await.map_err(|e| (e, 0))
}

fn preview(s: &[u8]) -> String {
    let s = String::from_utf8_lossy(&s[..s.len().min(120)]).into_owned();
    s.replace('\n', " ")
}

/// Runs a schema file's statements in order. An object whose DEFINER account the
/// loading user may not act for is created without the DEFINER clause (owned by the
/// loading user), with a warning.
async fn run_file(
    conn: &mut Conn,
    text: &[u8],
    name: &str,
    warnings: &mut Vec<String>,
    marks: Option<Marks<'_>>,
) -> Result<()> {
    let resuming = marks.as_ref().is_some_and(|m| m.resuming);
    for (i, s) in statements(text).into_iter().enumerate() {
        let set = s.starts_with(b"SET ");
        if !set && marks.as_ref().is_some_and(|m| m.done.contains(&i)) {
            continue;
        }
        match conn.query_drop(s).await {
            Ok(()) => {}
            Err(e) if resuming && resume::already_done(&e) => {}
            Err(mysql_async::Error::Server(e)) if e.code == 1227 => {
                let text = String::from_utf8_lossy(s);
                let Some(stripped) = strip_definer(&text) else {
                    return Err(db_error(
                        mysql_async::Error::Server(e),
                        &format!("{name}: {}", preview(s)),
                    ));
                };
                match conn.query_drop(stripped.as_str()).await {
                    Ok(()) => {}
                    Err(e) if resuming && resume::already_done(&e) => {}
                    Err(e) => return Err(db_error(e, &format!("{name}: {}", preview(s)))),
                }
                warnings.push(format!(
                    "created without its DEFINER (the loading user may not set it): {}",
                    preview(s)
                ));
            }
            Err(e) => return Err(db_error(e, &format!("{name}: {}", preview(s)))),
        }
        if let (Some(m), false) = (&marks, set) {
            ddl_done();
            exec(conn, &resume::mark(m.step, i, 0), "recording progress").await?;
        }
    }
    Ok(())
}

/// Test hook ([`crate::fault::Abort::BeforeMark`]): counts index and object statements
/// run, to stop the process between one and its progress mark.
fn ddl_done() {
    static RUN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUN.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    crate::fault::abort_at(crate::fault::Abort::BeforeMark, n);
}

/// The progress marks of a file's statements: which an earlier load ran, and the step
/// to record each one under.
struct Marks<'a> {
    step: Step,
    done: &'a std::collections::HashSet<usize>,
    resuming: bool,
}

/// Reads a table back and compares its row count and checksum with the manifest's:
/// the difference, if any.
async fn check_table(c: &mut Conn, t: &TableEntry) -> Result<Option<String>> {
    let sum = table_sum(c, t).await?;
    Ok(if sum.rows != t.rows {
        Some(format!(
            "table {} has {} rows, the snapshot has {}",
            ident(&t.name),
            sum.rows,
            t.rows
        ))
    } else if sum.hex() != t.checksum {
        Some(format!(
            "table {} has the right row count but different contents (checksum {} instead of {})",
            ident(&t.name),
            sum.hex(),
            t.checksum
        ))
    } else {
        None
    })
}

/// Checks that every view, routine, trigger and event of `expected` exists.
async fn check_objects(
    conn0: &mut Conn,
    expected: &[schema::Object],
    db: &str,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let p = || vec![mysql_async::Value::from(db)];
    let mut present: BTreeSet<(String, String)> = BTreeSet::new();
    for (kind, sql) in [
        ("view", "SELECT TABLE_NAME FROM information_schema.VIEWS WHERE TABLE_SCHEMA = ?"),
        ("trigger", "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ?"),
        ("procedure", "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_TYPE = 'PROCEDURE'"),
        ("function", "SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = ? AND ROUTINE_TYPE = 'FUNCTION'"),
        ("event", "SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = ?"),
    ] {
        for r in exec_strings(conn0, sql, p(), "listing the loaded objects").await? {
            present.insert((kind.to_string(), r[0].clone()));
        }
    }
    for o in expected {
        if !present.contains(&(o.kind.clone(), o.name.clone())) {
            problems.push(format!("{} {} is missing", o.kind, ident(&o.name)));
        }
    }
    Ok(problems)
}

/// The checksum of a table as loaded, computed exactly as the dump computed it.
pub async fn table_sum(c: &mut Conn, t: &TableEntry) -> Result<RowSum> {
    let cols: Vec<String> = t.columns.iter().map(|c| ident(&c.name)).collect();
    let kinds: Vec<ColumnKind> = t.columns.iter().map(|c| c.kind()).collect();
    let what = || format!("verifying table {}", ident(&t.name));
    let mut result = c
        .exec_iter(
            format!("SELECT {} FROM {}", cols.join(","), ident(&t.name)),
            (),
        )
        .await
        .map_err(|e| db_error(e, &what()))?;
    let mut sum = RowSum::default();
    let mut text = Vec::with_capacity(256);
    while let Some(row) = result.next().await.map_err(|e| db_error(e, &what()))? {
        text.clear();
        push_row(&mut text, &row.unwrap(), &kinds);
        sum.add_row(&text);
    }
    Ok(sum)
}

impl std::fmt::Debug for PreparedDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PreparedDb")
            .field("database", &self.manifest.database)
            .field("files", &self.files.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_old_servers_are_named() {
        let url = DbUrl::parse("mysql://u@h/db").unwrap();
        let schema = "CREATE TABLE `t` (\n  `a` int(11) DEFAULT NULL INVISIBLE\n)";
        let e = check_features(schema, "10.2.44-MariaDB", &url).unwrap_err();
        assert!(e.message.contains("invisible columns"), "{e}");
        assert!(e.message.contains("10.3.3"), "{e}");
        assert!(check_features(schema, "10.11.6-MariaDB-0+deb12u1", &url).is_ok());
        assert!(check_features(schema, "8.0.36", &url).is_ok());
    }
}
