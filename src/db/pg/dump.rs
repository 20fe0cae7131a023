//! Dumping a PostgreSQL database: one exported snapshot read by `pg_dump` (the schema)
//! and by several connections (the rows, with `COPY … TO STDOUT`), rows cut into chunks
//! at content-defined boundaries so that an unchanged table gives the same chunks the
//! next night.

use std::collections::VecDeque;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use futures::StreamExt;

use super::tool::{PgDump, PgDumpAt};
use super::{
    pg_error, quote_ident, quote_literal, PgManifest, PgTable, PgUrl, PgUsers, MT_PG_CONFIG,
};
use crate::db::dump::{reusable, with_uploads, DbReport, DumpOptions};
use crate::db::sql::RowSum;
use crate::db::{Chunk, FileRef, A_SQL_PART, A_SQL_TABLE, MT_SQL_ZSTD};
use crate::error::{Error, ErrorKind, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::Repository;

/// A table as the dump plans it.
struct Table {
    entry: PgTable,
    /// Estimated bytes, to read the largest first.
    bytes: u64,
    /// The average length of a row's COPY text over its first rows: chunks are sized by
    /// it.
    row_bytes: u64,
}

/// A stored chunk: (table, sequence number in the table, chunk).
type StoredChunk = crate::db::dump::Stored<u32>;

/// A chunk's SQL on its way to compression and upload.
type ChunkOut = crate::db::dump::ChunkOut<u32>;

/// Dumps the URL's database into the repository: the descriptor of its image (for the
/// snapshot record) and a report. `prev` is the same database's manifest from the
/// previous snapshot: its chunk sizes are kept so boundaries stay put, and its chunks
/// whose text is unchanged are not compressed or uploaded again.
pub fn freeze_database(
    repo: &Repository,
    url: &PgUrl,
    at: &PgDumpAt,
    prev: Option<&PgManifest>,
    opts: &DumpOptions,
    progress: &Progress,
) -> Result<(Descriptor, DbReport)> {
    let started = Instant::now();
    let rt = crate::sys::runtime()?;
    progress.set_label(format!("dumping {}", url.database));
    let mut s = rt.block_on(Snapshot::take(url, opts.lock_wait_timeout))?;
    let tool = PgDump::find(at, s.server_num)?;
    let pre_data = tool.run(url, &s.id, "pre-data", false)?;
    let post_data = tool.run(url, &s.id, "post-data", false)?;
    let mut warnings: Vec<String> = tool.warning.iter().cloned().collect();
    let users = if opts.with_users {
        let roles = rt.block_on(super::roles::read(&s.leader, url))?;
        warnings.extend(roles.warning.clone());
        Some((
            roles,
            tool.run(url, &s.id, "pre-data", true)?,
            tool.run(url, &s.id, "post-data", true)?,
        ))
    } else {
        None
    };
    set_chunk_bits(&mut s.tables, prev, opts.chunk_bytes);
    let (sums, stored) = read_rows(rt, repo, url, &s, prev, opts.jobs.max(1), progress)?;
    rt.block_on(s.leader.batch_execute("COMMIT"))
        .map_err(|e| pg_error(e, &format!("ending the dump's transaction on {url}")))?;

    let put_sql = |text: &str| -> Result<FileRef> {
        let z = zstd::bulk::compress(text.as_bytes(), 3)
            .map_err(|e| Error::io("compressing a schema file", e))?;
        let (digest, size) = repo.put_blob(&z)?;
        Ok(FileRef { digest, size })
    };
    let mut by_table: Vec<Vec<(u32, Chunk)>> = vec![Vec::new(); s.tables.len()];
    for (t, seq, c) in stored {
        by_table[t].push((seq, c));
    }
    let mut entries = Vec::new();
    for ((t, mut list), sum) in s.tables.into_iter().zip(by_table).zip(sums) {
        list.sort_by_key(|(seq, _)| *seq);
        let mut e = t.entry;
        e.rows = sum.rows;
        e.checksum = sum.hex();
        e.chunks = list.into_iter().map(|(_, c)| c).collect();
        entries.push(e);
    }
    let manifest = PgManifest {
        format: super::PG_FORMAT_VERSION,
        database: url.database.clone(),
        server_version: s.server_version,
        pg_dump: tool.version.clone(),
        snapshot: s.id,
        at: s.at,
        pre_data: put_sql(&pre_data)?,
        post_data: put_sql(&post_data)?,
        finish: put_sql(&s.finish)?,
        extensions: s.extensions,
        tables: entries,
        users: match users {
            Some((roles, pre, post)) => Some(PgUsers {
                roles: roles.names,
                roles_sql: put_sql(&roles.sql)?,
                pre_data: put_sql(&pre)?,
                post_data: put_sql(&post)?,
            }),
            None => None,
        },
    };
    let (desc, stored_bytes) = store_image(repo, &manifest)?;
    let chunks = manifest.tables.iter().flat_map(|t| &t.chunks);
    let report = DbReport {
        database: manifest.database.clone(),
        url: url.to_string(),
        tables: manifest.tables.len(),
        rows: manifest.tables.iter().map(|t| t.rows).sum(),
        chunks: chunks.clone().count(),
        sql_bytes: chunks.map(|c| c.sql_bytes).sum(),
        stored_bytes,
        lock_ms: 0,
        consistency: "exported-snapshot".into(),
        schema_by: Some(tool.used),
        seconds: started.elapsed().as_secs_f64(),
        warnings,
    };
    Ok((desc, report))
}

/// The dump's snapshot: exported by `leader`, whose transaction stays open (and its
/// ACCESS SHARE locks held) until every reader is done; what was read in it.
struct Snapshot {
    leader: tokio_postgres::Client,
    id: String,
    server_version: String,
    server_num: i32,
    at: String,
    tables: Vec<Table>,
    extensions: Vec<(String, String)>,
    /// finish.sql: sequence values and materialized view refreshes.
    finish: String,
}

impl Snapshot {
    async fn take(url: &PgUrl, lock_wait_timeout: u64) -> Result<Snapshot> {
        let leader = url.connect().await?;
        let what = |s: &str| format!("{s} on {url}");
        leader
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(|e| pg_error(e, &what("starting the dump's transaction")))?;
        let row = leader
            .query_one(
                "SELECT pg_export_snapshot(), current_setting('server_version'), \
                 current_setting('server_version_num')::int",
                &[],
            )
            .await
            .map_err(|e| pg_error(e, &what("exporting a snapshot")))?;
        let at = rfc3339(std::time::SystemTime::now());
        let tables = list_tables(&leader, url).await?;
        // Tables locked against DDL (as pg_dump does) while their rows are read; a table
        // changed between the snapshot and the lock is caught by [`changed_since`].
        if !tables.is_empty() {
            let names: Vec<String> = tables.iter().map(|t| t.entry.qualified()).collect();
            leader
                .batch_execute(&format!(
                    "SET LOCAL lock_timeout = '{lock_wait_timeout}s'; LOCK TABLE {} IN ACCESS SHARE MODE",
                    names.join(", ")
                ))
                .await
                .map_err(|e| {
                    pg_error(e, &what("locking the tables against schema changes")).with_hint(
                        "a schema change (migration, deploy) held its lock too long; run the freeze again when it is done",
                    )
                })?;
            let changed = changed_since(url, &leader).await?;
            if !changed.is_empty() {
                return Err(Error::conflict(format!(
                    "the schema of {url} changed while the dump started ({}); nothing was recorded",
                    changed.join(", ")
                ))
                .with_hint(
                    "run the freeze again when no schema change (deploy, migration) is running",
                ));
            }
        }
        Ok(Snapshot {
            id: row.get(0),
            server_version: row.get(1),
            server_num: row.get(2),
            at,
            extensions: list_extensions(&leader, url).await?,
            finish: finish_sql(&leader, url).await?,
            tables,
            leader,
        })
    }
}

/// How many low hash bits end a chunk, per table: about `chunk_bytes` of rows per chunk
/// from the sampled row length; the previous dump's value is kept unless that moved by
/// more than a factor of four.
fn set_chunk_bits(tables: &mut [Table], prev: Option<&PgManifest>, chunk_bytes: u64) {
    for t in tables {
        let old = prev
            .and_then(|p| {
                p.tables
                    .iter()
                    .find(|o| o.schema == t.entry.schema && o.name == t.entry.name)
            })
            .filter(|o| o.chunking == t.entry.chunking)
            .map(|o| o.chunk_bits);
        let ideal = ((chunk_bytes / t.row_bytes.max(16)).max(1) as f64)
            .log2()
            .round() as u32;
        let ideal = ideal.min(24);
        t.entry.chunk_bits = match old {
            Some(b) if b.abs_diff(ideal) <= 2 => b,
            _ => ideal,
        };
    }
}

/// Reads every table's rows in the snapshot while plain threads compress and upload
/// the chunks ([`with_uploads`]). Returns each table's row sum and the stored chunks as
/// (table, sequence number, chunk).
fn read_rows(
    rt: &tokio::runtime::Runtime,
    repo: &Repository,
    url: &PgUrl,
    s: &Snapshot,
    prev: Option<&PgManifest>,
    jobs: usize,
    progress: &Progress,
) -> Result<(Vec<RowSum>, Vec<StoredChunk>)> {
    let reuse = reusable(prev.iter().flat_map(|m| &m.tables).flat_map(|t| &t.chunks));
    with_uploads(repo, &reuse, jobs, |tx, cancel| {
        rt.block_on(read_tables(
            url, &s.id, &s.tables, jobs, tx, &cancel, progress,
        ))
    })
}

/// Stores the config and the image manifest: the record's descriptor of the database
/// image, and the stored size of its files.
fn store_image(repo: &Repository, manifest: &PgManifest) -> Result<(Descriptor, u64)> {
    let layers = image_layers(manifest);
    let stored_bytes: u64 = layers.iter().map(|l| l.size).sum();
    let desc = crate::db::store_image(
        repo,
        MT_PG_CONFIG,
        &to_json(manifest),
        layers,
        &manifest.database,
        manifest.tables.len(),
        manifest.tables.iter().map(|t| t.rows).sum(),
    )?;
    Ok((desc, stored_bytes))
}

/// The image's layers: every file of the dump in load order.
fn image_layers(m: &PgManifest) -> Vec<Descriptor> {
    let layer = |f: &FileRef, part: &str, title: String, table: Option<String>| {
        let mut d = Descriptor::new(MT_SQL_ZSTD, f.digest.clone(), f.size);
        d.annotations.insert(A_SQL_PART.into(), part.into());
        d.annotations.insert(A_TITLE.into(), title);
        if let Some(t) = table {
            d.annotations.insert(A_SQL_TABLE.into(), t);
        }
        d
    };
    let mut layers = vec![layer(&m.pre_data, "pre-data", "pre-data.sql".into(), None)];
    for t in &m.tables {
        let name = format!("{}.{}", t.schema, t.name);
        for (n, c) in t.chunks.iter().enumerate() {
            let f = FileRef {
                digest: c.digest.clone(),
                size: c.size,
            };
            layers.push(layer(
                &f,
                "data",
                format!("data/{name}/{n:05}.sql"),
                Some(name.clone()),
            ));
        }
    }
    layers.push(layer(
        &m.post_data,
        "post-data",
        "post-data.sql".into(),
        None,
    ));
    layers.push(layer(&m.finish, "finish", "finish.sql".into(), None));
    if let Some(u) = &m.users {
        layers.push(layer(&u.roles_sql, "roles", "roles.sql".into(), None));
        layers.push(layer(
            &u.pre_data,
            "pre-data-owners",
            "owners/pre-data.sql".into(),
            None,
        ));
        layers.push(layer(
            &u.post_data,
            "post-data-owners",
            "owners/post-data.sql".into(),
            None,
        ));
    }
    layers
}

/// The database's own tables (not the system's, not those of extensions), with their
/// columns, primary key and an estimate of their size.
async fn list_tables(c: &tokio_postgres::Client, url: &PgUrl) -> Result<Vec<Table>> {
    let rows = c
        .query(
            "SELECT n.nspname::text, c.relname::text, c.oid::int8, \
                 greatest(pg_relation_size(c.oid), 0)::int8 \
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') \
             ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &format!("listing the tables of {url}")))?;
    let mut out = Vec::new();
    for r in rows {
        let (schema, name, oid, bytes): (String, String, i64, i64) =
            (r.get(0), r.get(1), r.get(2), r.get(3));
        let oid = oid as u32;
        let columns: Vec<String> = c
            .query(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = $1::oid AND attnum > 0 \
                 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(e, &format!("reading the columns of {schema}.{name}")))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let key: Vec<String> = c
            .query(
                "SELECT a.attname::text FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(e, &format!("reading the key of {schema}.{name}")))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        // A key column that is not dumped (generated) cannot place rows.
        let key = if key.iter().all(|k| columns.contains(k)) {
            key
        } else {
            vec![]
        };
        let sample = format!(
            "SELECT coalesce(avg(octet_length(t::text)), 100)::int8 FROM (SELECT * FROM ONLY {}.{} LIMIT 1000) t",
            quote_ident(&schema),
            quote_ident(&name)
        );
        let row_bytes: i64 = c
            .query_one(sample.as_str(), &[])
            .await
            .map_err(|e| pg_error(e, &format!("sampling the rows of {schema}.{name}")))?
            .get(0);
        out.push(Table {
            row_bytes: row_bytes as u64,
            entry: PgTable {
                schema,
                name,
                chunking: if key.is_empty() {
                    "row-hash"
                } else {
                    "key-hash"
                }
                .into(),
                columns,
                key,
                chunk_bits: 0,
                rows: 0,
                checksum: String::new(),
                chunks: vec![],
            },
            bytes: bytes as u64,
        });
    }
    Ok(out)
}

async fn list_extensions(c: &tokio_postgres::Client, url: &PgUrl) -> Result<Vec<(String, String)>> {
    Ok(c.query(
        "SELECT extname::text, extversion FROM pg_extension WHERE extname <> 'plpgsql' ORDER BY 1",
        &[],
    )
    .await
    .map_err(|e| pg_error(e, &format!("listing the extensions of {url}")))?
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect())
}

/// Tables whose definition changed after the snapshot (their catalog row was rewritten
/// by a committed ALTER, or they were dropped or created), read outside the snapshot
/// once the tables are locked: such a change would make the schema and the rows
/// disagree.
async fn changed_since(url: &PgUrl, leader: &tokio_postgres::Client) -> Result<Vec<String>> {
    let then = catalog_rows(leader, url).await?;
    let now_conn = url.connect().await?;
    let now = catalog_rows(&now_conn, url).await?;
    let name = |s: &String| s.rsplit_once(' ').map_or(s.clone(), |(n, _)| n.to_string());
    let mut changed: Vec<String> = then
        .iter()
        .filter(|s| !now.contains(s))
        .chain(now.iter().filter(|s| !then.contains(s)))
        .map(name)
        .collect();
    changed.sort();
    changed.dedup();
    Ok(changed)
}

async fn catalog_rows(c: &tokio_postgres::Client, url: &PgUrl) -> Result<Vec<String>> {
    const CATALOG: &str = "SELECT n.nspname || '.' || c.relname || ' ' || c.xmin::text \
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S') \
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' ORDER BY 1";
    Ok(c.query(CATALOG, &[])
        .await
        .map_err(|e| pg_error(e, &format!("reading the catalog of {url}")))?
        .iter()
        .map(|r| r.get(0))
        .collect())
}

/// `finish.sql`, loaded last: each sequence's value as the snapshot has it (`setval`),
/// then the materialized views the source had populated, refreshed in the order they
/// were created (one built on another comes after it), as pg_restore does after the
/// indexes.
async fn finish_sql(c: &tokio_postgres::Client, url: &PgUrl) -> Result<String> {
    let seqs = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                               AND d.objid = c.oid AND d.deptype = 'e') ORDER BY 1, 2",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &format!("listing the sequences of {url}")))?;
    let mut out = String::from("SET search_path = pg_catalog;\n");
    for s in seqs {
        let (schema, name): (String, String) = (s.get(0), s.get(1));
        let q = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
        let r = c
            .query_one(&format!("SELECT last_value, is_called FROM {q}"), &[])
            .await
            .map_err(|e| pg_error(e, &format!("reading sequence {schema}.{name}")))?;
        let (value, called): (i64, bool) = (r.get(0), r.get(1));
        out.push_str(&format!(
            "SELECT pg_catalog.setval({}, {value}, {called});\n",
            quote_literal(&q)
        ));
    }
    let views = c
        .query(
            "SELECT n.nspname::text, c.relname::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'm' AND c.relispopulated ORDER BY c.oid",
            &[],
        )
        .await
        .map_err(|e| pg_error(e, &format!("listing the materialized views of {url}")))?;
    for v in views {
        let (schema, name): (String, String) = (v.get(0), v.get(1));
        out.push_str(&format!(
            "REFRESH MATERIALIZED VIEW {}.{};\n",
            quote_ident(&schema),
            quote_ident(&name)
        ));
    }
    Ok(out)
}

/// Reads every table's rows over `jobs` connections sharing the snapshot, largest table
/// first; sends the chunks to `tx`. Returns each table's row sum.
async fn read_tables(
    url: &PgUrl,
    snapshot: &str,
    tables: &[Table],
    jobs: usize,
    tx: tokio::sync::mpsc::Sender<ChunkOut>,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<Vec<RowSum>> {
    let mut order: Vec<usize> = (0..tables.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(tables[i].bytes));
    let queue = Mutex::new(order.into_iter().collect::<VecDeque<_>>());
    let sums = Mutex::new(vec![RowSum::default(); tables.len()]);
    let results = futures::future::join_all((0..jobs.min(tables.len().max(1))).map(|_| async {
        let c = url.connect().await?;
        c.batch_execute(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
            quote_literal(snapshot)
        ))
        .await
        .map_err(|e| pg_error(e, &format!("joining the dump's snapshot on {url}")))?;
        loop {
            let Some(i) = queue.lock().unwrap().pop_front() else {
                break;
            };
            progress.check(|| format!("dumping {}", tables[i].entry.qualified()))?;
            let sum = read_table(&c, i, &tables[i].entry, &tx, cancel, progress).await?;
            sums.lock().unwrap()[i] = sum;
        }
        c.batch_execute("COMMIT")
            .await
            .map_err(|e| pg_error(e, "ending a reader's transaction"))?;
        Ok::<(), Error>(())
    }))
    .await;
    drop(tx);
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(sums.into_inner().unwrap())
}

/// One table's rows in key order, cut into chunks: a chunk ends after a row whose key's
/// text (the row's, without a key) hashes (XXH3-64) to a value whose low `chunk_bits`
/// bits are zero.
async fn read_table(
    c: &tokio_postgres::Client,
    index: usize,
    t: &PgTable,
    tx: &tokio::sync::mpsc::Sender<ChunkOut>,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<RowSum> {
    let what = || format!("dumping table {}", t.qualified());
    let stream = c
        .copy_out(t.copy_out(true).as_str())
        .await
        .map_err(|e| pg_error(e, &what()))?;
    futures::pin_mut!(stream);
    let key_fields: Vec<usize> = t
        .key
        .iter()
        .filter_map(|k| t.columns.iter().position(|c| c == k))
        .collect();
    let mask = (1u64 << t.chunk_bits) - 1;
    let header = format!("COPY {} ({}) FROM stdin;\n", t.qualified(), t.column_list());
    let mut sum = RowSum::default();
    let mut chunk = header.clone().into_bytes();
    let mut rows = 0u64;
    let mut seq = 0u32;
    let mut copied = super::CopyRows::default();
    let mut key_text: Vec<u8> = Vec::new();
    let emit = |chunk: &mut Vec<u8>, rows: &mut u64, seq: &mut u32| {
        let mut sql = std::mem::replace(chunk, header.clone().into_bytes());
        sql.extend_from_slice(b"\\.\n");
        let out = ChunkOut {
            table: index,
            seq: *seq,
            sql,
            rows: *rows,
        };
        *seq += 1;
        *rows = 0;
        out
    };
    while let Some(bytes) = stream.next().await {
        copied.push(&bytes.map_err(|e| pg_error(e, &what()))?);
        while let Some(line) = copied.next_row() {
            sum.add_row(line);
            chunk.extend_from_slice(line);
            chunk.push(b'\n');
            rows += 1;
            let h = if key_fields.is_empty() {
                twox_hash::XxHash3_64::oneshot(line)
            } else {
                key_text.clear();
                for (n, f) in line.split(|&b| b == b'\t').enumerate() {
                    if key_fields.contains(&n) {
                        key_text.extend_from_slice(f);
                        key_text.push(b'\t');
                    }
                }
                twox_hash::XxHash3_64::oneshot(&key_text)
            };
            if h & mask == 0 {
                let out = emit(&mut chunk, &mut rows, &mut seq);
                send(tx, out, cancel, progress).await?;
            }
        }
    }
    copied.finish(&what())?;
    if rows > 0 {
        let out = emit(&mut chunk, &mut rows, &mut seq);
        send(tx, out, cancel, progress).await?;
    }
    Ok(sum)
}

/// Hands a chunk to the uploads, unless one of them failed (then the dump stops).
async fn send(
    tx: &tokio::sync::mpsc::Sender<ChunkOut>,
    out: ChunkOut,
    cancel: &AtomicBool,
    progress: &Progress,
) -> Result<()> {
    if cancel.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(uploads_stopped());
    }
    progress.add_done(out.sql.len() as u64);
    tx.send(out).await.map_err(|_| uploads_stopped())
}

fn uploads_stopped() -> Error {
    Error::new(ErrorKind::Other, "the chunk uploads stopped")
}
