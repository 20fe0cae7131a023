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
use crate::db::model::{reusable, with_uploads, DbReport, DumpOptions};
use crate::db::RowSum;
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
    /// The SQL types of the key's columns, in key order (`format_type`): a key value in a
    /// query is a literal cast to its type.
    key_types: Vec<String>,
}

/// A stored chunk: (table, (part of the table, sequence number in the part), chunk).
type StoredChunk = crate::db::model::Stored<(u32, u32)>;

/// A chunk's SQL on its way to compression and upload.
type ChunkOut = crate::db::model::ChunkOut<(u32, u32)>;

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
    let mut warnings: Vec<String> = tool.warning.iter().cloned().collect();
    let roles = if opts.with_users {
        let roles = rt.block_on(super::roles::read(&s.leader, url))?;
        warnings.extend(roles.warning.clone());
        Some(roles)
    } else {
        None
    };
    set_chunk_bits(&mut s.tables, prev, opts.chunk_bytes);
    let jobs = opts.jobs.max(1);
    let parts = rt.block_on(plan_parts(&s.leader, &s.tables, jobs, opts.chunk_bytes))?;
    let split = split_tables(&s.tables, &parts);
    // pg_dump writes the schema of the snapshot while the rows are read: both only need
    // the leader's transaction open.
    let (schema, rows) = std::thread::scope(|scope| {
        let schema = scope.spawn(|| {
            let files = |owners| -> Result<(String, String)> {
                Ok((
                    tool.run(url, &s.id, "pre-data", owners)?,
                    tool.run(url, &s.id, "post-data", owners)?,
                ))
            };
            let owners = match roles.is_some() {
                true => Some(files(true)?),
                false => None,
            };
            Ok::<_, Error>((files(false)?, owners))
        });
        let rows = read_rows(repo, url, &s, parts, prev, jobs, progress);
        (schema.join().expect("the pg_dump thread panicked"), rows)
    });
    let ((pre_data, post_data), owners) = schema?;
    let (sums, stored) = rows?;
    let users = roles
        .zip(owners)
        .map(|(roles, (pre, post))| (roles, pre, post));
    rt.block_on(s.leader.batch_execute("COMMIT"))
        .map_err(|e| pg_error(e, &format!("ending the dump's transaction on {url}")))?;

    let put_sql = |text: &str| -> Result<FileRef> {
        let z = zstd::bulk::compress(text.as_bytes(), 3)
            .map_err(|e| Error::io("compressing a schema file", e))?;
        let (digest, size) = repo.put_blob(&z)?;
        Ok(FileRef { digest, size })
    };
    let entries = table_entries(s.tables, stored, sums);
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
        split,
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
/// (table, (part, sequence number), chunk).
/// Each table's entry for the manifest: its rows, checksum and stored chunks in key
/// order.
fn table_entries(tables: Vec<Table>, stored: Vec<StoredChunk>, sums: Vec<RowSum>) -> Vec<PgTable> {
    let mut by_table: Vec<Vec<((u32, u32), Chunk)>> = vec![Vec::new(); tables.len()];
    for (t, seq, c) in stored {
        by_table[t].push((seq, c));
    }
    let mut entries = Vec::new();
    for ((t, mut list), sum) in tables.into_iter().zip(by_table).zip(sums) {
        list.sort_by_key(|(seq, _)| *seq);
        let mut e = t.entry;
        e.rows = sum.rows;
        e.checksum = sum.hex();
        e.chunks = list.into_iter().map(|(_, c)| c).collect();
        entries.push(e);
    }
    entries
}

fn read_rows(
    repo: &Repository,
    url: &PgUrl,
    s: &Snapshot,
    parts: Vec<Part>,
    prev: Option<&PgManifest>,
    jobs: usize,
    progress: &Progress,
) -> Result<(Vec<RowSum>, Vec<StoredChunk>)> {
    let reuse = reusable(prev.iter().flat_map(|m| &m.tables).flat_map(|t| &t.chunks));
    with_uploads(repo, &reuse, jobs, |tx, cancel| {
        let readers = Readers {
            url,
            snapshot: &s.id,
            tables: &s.tables,
            queue: Mutex::new(parts.into()),
            cancel: &cancel,
            progress,
        };
        readers.run(jobs, tx)
    })
}

/// Stores the config and the image manifest: the record's descriptor of the database
/// image, and the stored size of its files.
fn store_image(repo: &Repository, manifest: &PgManifest) -> Result<(Descriptor, u64)> {
    let layers = image_layers(manifest);
    let stored_bytes: u64 = layers.iter().map(|l| l.size).sum();
    let desc = crate::db::model::store_image(
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
        let (key, key_types): (Vec<String>, Vec<String>) = c
            .query(
                "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index i \
                 CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY k(attnum, ord) \
                 JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
                 WHERE i.indrelid = $1::oid AND i.indisprimary ORDER BY k.ord",
                &[&oid],
            )
            .await
            .map_err(|e| pg_error(e, &format!("reading the key of {schema}.{name}")))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .unzip();
        // A key column that is not dumped (generated) cannot place rows.
        let (key, key_types) = if key.iter().all(|k| columns.contains(k)) {
            (key, key_types)
        } else {
            (vec![], vec![])
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
            key_types,
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

/// What the readers share: the tables, the parts of them still to read, and where the
/// chunks go.
struct Readers<'a> {
    url: &'a PgUrl,
    snapshot: &'a str,
    tables: &'a [Table],
    queue: Mutex<VecDeque<Part>>,
    cancel: &'a AtomicBool,
    progress: &'a Progress,
}

impl Readers<'_> {
    /// Reads every part over `jobs` connections sharing the snapshot, each on a thread of
    /// its own ([`super::on_connections`]), in the queue's order; sends the chunks to
    /// `tx`. Returns each table's row sum.
    fn run(&self, jobs: usize, tx: tokio::sync::mpsc::Sender<ChunkOut>) -> Result<Vec<RowSum>> {
        let sums = Mutex::new(vec![RowSum::default(); self.tables.len()]);
        let connections = jobs.min(self.queue.lock().unwrap().len()).max(1);
        let result = super::on_connections(self.url, connections, |c| {
            let (tx, sums) = (tx.clone(), &sums);
            async move {
                c.batch_execute(&format!(
                    "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
                    quote_literal(self.snapshot)
                ))
                .await
                .map_err(|e| {
                    pg_error(e, &format!("joining the dump's snapshot on {}", self.url))
                })?;
                loop {
                    let Some(p) = self.queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let t = &self.tables[p.table];
                    self.progress
                        .check(|| format!("dumping {}", t.entry.qualified()))?;
                    let sum = self.read_part(&c, &p, &tx).await?;
                    sums.lock().unwrap()[p.table].merge(sum);
                }
                c.batch_execute("COMMIT")
                    .await
                    .map_err(|e| pg_error(e, "ending a reader's transaction"))
            }
        });
        drop(tx);
        result?;
        Ok(sums.into_inner().unwrap())
    }

    /// One part's rows in key order, cut into chunks: a chunk ends after a row whose key's
    /// text (the row's, without a key) hashes (XXH3-64) to a value whose low `chunk_bits`
    /// bits are zero ([`boundary_hash`]).
    async fn read_part(
        &self,
        c: &tokio_postgres::Client,
        p: &Part,
        tx: &tokio::sync::mpsc::Sender<ChunkOut>,
    ) -> Result<RowSum> {
        let table = &self.tables[p.table];
        let t = &table.entry;
        let what = || format!("dumping table {}", t.qualified());
        let stream = c
            .copy_out(p.copy_out(table).as_str())
            .await
            .map_err(|e| pg_error(e, &what()))?;
        futures::pin_mut!(stream);
        let key_fields = t.key_fields();
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
                table: p.table,
                seq: (p.n, *seq),
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
                if boundary_hash(line, &key_fields, &mut key_text) & mask == 0 {
                    let out = emit(&mut chunk, &mut rows, &mut seq);
                    self.send(tx, out).await?;
                }
            }
        }
        copied.finish(&what())?;
        if rows > 0 {
            let out = emit(&mut chunk, &mut rows, &mut seq);
            self.send(tx, out).await?;
        }
        Ok(sum)
    }

    /// Hands a chunk to the uploads, unless one of them failed (then the dump stops).
    async fn send(&self, tx: &tokio::sync::mpsc::Sender<ChunkOut>, out: ChunkOut) -> Result<()> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(uploads_stopped());
        }
        // An interrupt stops a long table at its next chunk, not at its end.
        let table = &self.tables[out.table].entry;
        self.progress
            .check(|| format!("dumping {}", table.qualified()))?;
        self.progress.add_done(out.sql.len() as u64);
        tx.send(out).await.map_err(|_| uploads_stopped())
    }
}

/// The hash that places chunk boundaries: XXH3-64 of the key's fields of a COPY text
/// line (`key_fields`, ascending column positions), each followed by a tab; of the whole
/// line for a table without a key (`key_fields` empty). `buf` is scratch space.
fn boundary_hash(line: &[u8], key_fields: &[usize], buf: &mut Vec<u8>) -> u64 {
    let Some(&last) = key_fields.last() else {
        return twox_hash::XxHash3_64::oneshot(line);
    };
    buf.clear();
    let ends = memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len()));
    let mut start = 0;
    for (n, end) in ends.enumerate() {
        if key_fields.contains(&n) {
            buf.extend_from_slice(&line[start..end]);
            buf.push(b'\t');
        }
        if n == last {
            break;
        }
        start = end + 1;
    }
    twox_hash::XxHash3_64::oneshot(buf)
}

/// A table whose heap holds this many chunks' worth of bytes (64 MiB at the default 2
/// MiB chunks) is read on several connections at once, in key ranges: one connection
/// reading it alone would leave the others idle for most of the dump.
const SPLIT_CHUNKS: u64 = 32;

/// A share of one table's rows that one connection reads: all of them, or, for a large
/// table read on several connections at once, those whose key is above `after` and at
/// most `upto` (key values as COPY gives them, in key order). The edges are keys that
/// end a chunk, so the parts' chunks are the very chunks one connection reading the
/// whole table would cut.
struct Part {
    table: usize,
    /// The part's place in the table.
    n: u32,
    after: Option<Vec<String>>,
    upto: Option<Vec<String>>,
}

impl Part {
    /// The `COPY … TO STDOUT` of the part's rows, in key order.
    fn copy_out(&self, t: &Table) -> String {
        let e = &t.entry;
        let keys: Vec<String> = e.key.iter().map(|k| quote_ident(k)).collect();
        let keys = keys.join(", ");
        let mut conds = Vec::new();
        if let Some(a) = &self.after {
            conds.push(format!("({keys}) > ({})", key_literals(a, t)));
        }
        if let Some(u) = &self.upto {
            conds.push(format!("({keys}) <= ({})", key_literals(u, t)));
        }
        if conds.is_empty() {
            return e.copy_out(true);
        }
        format!(
            "COPY (SELECT {} FROM ONLY {} WHERE {} ORDER BY {keys}) TO STDOUT",
            e.column_list(),
            e.qualified(),
            conds.join(" AND ")
        )
    }
}

/// The tables read in more than one part, as `name (N parts)`, for the report.
fn split_tables(tables: &[Table], parts: &[Part]) -> Vec<String> {
    let mut count = vec![0usize; tables.len()];
    for p in parts {
        count[p.table] += 1;
    }
    let split = tables.iter().zip(count).filter(|(_, n)| *n > 1);
    split
        .map(|(t, n)| format!("{}.{} ({n} parts)", t.entry.schema, t.entry.name))
        .collect()
}

/// A key's values (text, in key order) as SQL literals cast to their types.
fn key_literals(values: &[String], t: &Table) -> String {
    let lits: Vec<String> = values
        .iter()
        .zip(&t.key_types)
        .map(|(v, ty)| format!("{}::{ty}", quote_literal(v)))
        .collect();
    lits.join(", ")
}

/// The parts the readers take, largest first: a table with a key and over
/// [`SPLIT_CHUNKS`] chunks is cut in up to `jobs` parts at chunk boundaries
/// ([`part_edges`]), any other table is one part.
async fn plan_parts(
    c: &tokio_postgres::Client,
    tables: &[Table],
    jobs: usize,
    chunk_bytes: u64,
) -> Result<Vec<Part>> {
    let mut parts = Vec::new();
    for (i, t) in tables.iter().enumerate() {
        let large = t.bytes > SPLIT_CHUNKS * chunk_bytes;
        let edges = if jobs > 1 && !t.entry.key.is_empty() && large {
            part_edges(c, t, jobs).await?
        } else {
            vec![]
        };
        let share = t.bytes / (edges.len() as u64 + 1);
        let mut after = None;
        for (n, upto) in edges.into_iter().map(Some).chain([None]).enumerate() {
            parts.push((
                share,
                Part {
                    table: i,
                    n: n as u32,
                    after: after.take(),
                    upto: upto.clone(),
                },
            ));
            after = upto;
        }
    }
    parts.sort_by_key(|(share, _)| std::cmp::Reverse(*share));
    Ok(parts.into_iter().map(|(_, p)| p).collect())
}

/// Up to `n - 1` keys that cut the table in about equal parts, each the last row of a
/// chunk: from a sample of the keys (`TABLESAMPLE SYSTEM`, whole pages), the key at each
/// n-quantile, then the first chunk boundary at or after it in key order. None found
/// near a quantile (a chunk far larger than the average), no edge there.
async fn part_edges(c: &tokio_postgres::Client, t: &Table, n: usize) -> Result<Vec<Vec<String>>> {
    let e = &t.entry;
    let what = || format!("sampling the keys of {}", e.qualified());
    let keys: Vec<String> = e.key.iter().map(|k| quote_ident(k)).collect();
    let keys = keys.join(", ");
    // Cast, a key column keeps its name: ORDER BY names the table's column (t.k), not
    // the text (whose order differs: '10' < '9').
    let texts: Vec<String> = e
        .key
        .iter()
        .map(|k| format!("{}::text", quote_ident(k)))
        .collect();
    let by_key: Vec<String> = e
        .key
        .iter()
        .map(|k| format!("t.{}", quote_ident(k)))
        .collect();
    // Whole pages are sampled: 512 of them (about 4 MiB) place a quantile within a few
    // percent even where the keys are clustered by page.
    let pages = (t.bytes / 8192).max(1);
    let percent = (100.0 * 512.0 / pages as f64).min(100.0);
    let sample = c
        .query(
            &format!(
                "SELECT {} FROM ONLY {} t TABLESAMPLE SYSTEM ({percent:.6}) REPEATABLE (0) ORDER BY {}",
                texts.join(", "),
                e.qualified(),
                by_key.join(", ")
            ),
            &[],
        )
        .await
        .map_err(|err| pg_error(err, &what()))?;
    if sample.len() < n {
        return Ok(vec![]);
    }
    // The key's fields in column order, as a chunk boundary hashes them.
    let key_fields = e.key_fields();
    let in_key_order: Vec<usize> = e
        .key
        .iter()
        .map(|k| {
            key_fields
                .iter()
                .position(|&f| e.columns[f] == *k)
                .expect("a key column")
        })
        .collect();
    let columns: Vec<String> = key_fields
        .iter()
        .map(|&f| quote_ident(&e.columns[f]))
        .collect();
    let mask = (1u64 << e.chunk_bits) - 1;
    let mut edges: Vec<Vec<String>> = Vec::new();
    for q in 1..n {
        let from: Vec<String> = (0..e.key.len())
            .map(|k| sample[q * sample.len() / n].get(k))
            .collect();
        let from = key_literals(&from, t);
        // A chunk ends every 2^bits rows on average. The server sends every row up to the
        // LIMIT even after the edge is found, so a short window is tried first (missed
        // 14% of the time), then a long one (missed e^-16 of the time: no edge there).
        for rows in [2u64 << e.chunk_bits, 16u64 << e.chunk_bits] {
            let sql = format!(
                "COPY (SELECT {} FROM ONLY {} WHERE ({keys}) >= ({from}) ORDER BY {keys} LIMIT {rows}) TO STDOUT",
                columns.join(", "),
                e.qualified(),
            );
            if let Some(edge) = first_edge(c, &sql, &in_key_order, mask, &what).await? {
                if edges.last() != Some(&edge) {
                    edges.push(edge);
                }
                break;
            }
        }
    }
    Ok(edges)
}

/// The first key that ends a chunk among the rows of `sql` (a `COPY` of the key's columns
/// in column order, in key order), as its values in key order.
async fn first_edge(
    c: &tokio_postgres::Client,
    sql: &str,
    in_key_order: &[usize],
    mask: u64,
    what: &dyn Fn() -> String,
) -> Result<Option<Vec<String>>> {
    let stream = c
        .copy_out(sql)
        .await
        .map_err(|err| pg_error(err, &what()))?;
    futures::pin_mut!(stream);
    let all: Vec<usize> = (0..in_key_order.len()).collect();
    let mut copied = super::CopyRows::default();
    let mut buf = Vec::new();
    while let Some(bytes) = stream.next().await {
        copied.push(&bytes.map_err(|err| pg_error(err, &what()))?);
        while let Some(line) = copied.next_row() {
            if boundary_hash(line, &all, &mut buf) & mask == 0 {
                let fields: Vec<String> = line
                    .split(|&b| b == b'\t')
                    .map(|f| String::from_utf8_lossy(&super::copy_unescape(f)).into_owned())
                    .collect();
                return Ok(Some(
                    in_key_order.iter().map(|&i| fields[i].clone()).collect(),
                ));
            }
        }
    }
    Ok(None)
}

fn uploads_stopped() -> Error {
    Error::new(ErrorKind::Other, "the chunk uploads stopped")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A value as COPY's text format writes it.
    fn copy_escape(v: &str) -> String {
        let mut out = String::new();
        for c in v.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                '\u{b}' => out.push_str("\\v"),
                c => out.push(c),
            }
        }
        out
    }

    proptest! {
        /// A part's edge is found by hashing a COPY of the key's columns alone (in column
        /// order), and must be a key whose full row ends a chunk when the readers hash
        /// the whole row: both hashes agree, and the edge's values come back unescaped.
        #[test]
        fn an_edge_hashes_as_its_row_does(
            values in proptest::collection::vec("[a-z\\\\\t\n\r\u{8}é'\"]{0,6}", 1..6),
            key_mask in 1u8..63,
        ) {
            let fields: Vec<String> = values.iter().map(|v| copy_escape(v)).collect();
            let key: Vec<usize> = (0..fields.len()).filter(|i| key_mask & (1 << i) != 0).collect();
            prop_assume!(!key.is_empty());
            let row = fields.join("\t");
            let key_only: Vec<&str> = key.iter().map(|&i| fields[i].as_str()).collect();
            let key_only = key_only.join("\t");
            let all: Vec<usize> = (0..key.len()).collect();
            let mut buf = Vec::new();
            prop_assert_eq!(
                boundary_hash(row.as_bytes(), &key, &mut buf),
                boundary_hash(key_only.as_bytes(), &all, &mut buf)
            );
            for (f, v) in key_only.split('\t').zip(key.iter().map(|&i| &values[i])) {
                prop_assert_eq!(super::super::copy_unescape(f.as_bytes()), v.as_bytes());
            }
        }
    }

    #[test]
    fn a_table_without_a_key_hashes_the_whole_row() {
        let mut buf = Vec::new();
        assert_eq!(
            boundary_hash(b"1\tx", &[], &mut buf),
            twox_hash::XxHash3_64::oneshot(b"1\tx")
        );
        assert_eq!(
            boundary_hash(b"1\tx\ty", &[1], &mut buf),
            twox_hash::XxHash3_64::oneshot(b"x\t")
        );
    }
}
