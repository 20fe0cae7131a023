//! Logical dumps of PostgreSQL databases: the data of a dehydrated snapshot (SPEC.md §10.7).
//!
//! A database is one OCI image manifest whose config is a [`PgManifest`] and whose layers
//! are zstd-compressed SQL files that stock `psql` runs, in load order: `pre-data.sql`
//! (the stock `pg_dump --schema-only --section=pre-data`: types, functions, tables,
//! sequences, views), the data chunks (`COPY … FROM stdin` blocks in COPY's text
//! format), `post-data.sql` (`--section=post-data`: constraints, indexes, triggers,
//! rules, built after the data), `finish.sql` (sequence values, materialized views
//! refreshed).
//!
//! The dump reads one exported snapshot (`pg_export_snapshot()`) on every connection and
//! in `pg_dump --snapshot`, so schema and rows are of one instant; the tables stay locked
//! against DDL (ACCESS SHARE, as pg_dump does) until the data is read.

pub mod dump;
pub mod load;
pub mod post_data;
pub mod roles;
pub mod tool;

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::db::{Chunk, FileRef};
use crate::error::{Error, ErrorKind, Result};

pub use crate::format::MT_PG_CONFIG;
pub const PG_FORMAT_VERSION: u32 = 1;

/// The config blob of a PostgreSQL database image: everything needed to load and verify it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgManifest {
    pub format: u32,
    pub database: String,
    /// `SHOW server_version` of the source, and the `pg_dump --version` that wrote the
    /// schema files.
    pub server_version: String,
    pub pg_dump: String,
    /// The exported snapshot every reader shared, and when it was taken (RFC 3339).
    pub snapshot: String,
    pub at: String,
    pub pre_data: FileRef,
    pub post_data: FileRef,
    /// Sequence values and materialized view refreshes, run last.
    pub finish: FileRef,
    /// Extensions of the source (name and version), created on load by pre-data.sql.
    pub extensions: Vec<(String, String)>,
    pub tables: Vec<PgTable>,
    /// Present when frozen `--with-users`: the roles, and the schema files again with
    /// owners and grants, which `thaw --with-users` loads instead of `pre_data` and
    /// `post_data` (those stay without them, so a thaw without users needs no roles).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<PgUsers>,
}

/// A dump's roles and its schema with owners and grants (`--with-users`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgUsers {
    /// The roles' names.
    pub roles: Vec<String>,
    /// `roles.sql` ([`roles`]): the missing roles created, the database's owner and grants.
    pub roles_sql: FileRef,
    pub pre_data: FileRef,
    pub post_data: FileRef,
}

/// One table's rows (in COPY's text format: one line per row).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PgTable {
    pub schema: String,
    pub name: String,
    /// The columns dumped and loaded, in order (generated columns are not: the target
    /// computes them).
    pub columns: Vec<String>,
    /// The primary key's columns; rows are dumped in its order. Empty: no key, rows in
    /// the order the server returns them.
    pub key: Vec<String>,
    /// `key-hash` (a chunk ends after a row whose key's hash has its low chunk_bits
    /// bits zero) or `row-hash` (the same on the whole row's text).
    pub chunking: String,
    pub chunk_bits: u32,
    pub rows: u64,
    /// [`crate::db::RowSum`] of every row's COPY text line, 32 hex digits.
    pub checksum: String,
    pub chunks: Vec<Chunk>,
}

impl PgTable {
    /// `"schema"."table"`.
    pub fn qualified(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.name))
    }

    /// The `COPY … TO STDOUT` that reads its rows as the dump stored them: in key order
    /// (`ordered`, for chunk boundaries) or as the server returns them (verification).
    pub fn copy_out(&self, ordered: bool) -> String {
        let order = if ordered && !self.key.is_empty() {
            let k: Vec<String> = self.key.iter().map(|k| quote_ident(k)).collect();
            format!(" ORDER BY {}", k.join(", "))
        } else {
            String::new()
        };
        format!(
            "COPY (SELECT {} FROM ONLY {}{order}) TO STDOUT",
            self.column_list(),
            self.qualified()
        )
    }

    /// The `COPY … TO STDOUT` of the rows on heap pages `from..to` (`to` None: to the
    /// end), unordered: a TID range scan on PostgreSQL 14 and newer.
    pub fn copy_out_pages(&self, from: u64, to: Option<u64>) -> String {
        let upto = to.map_or(String::new(), |to| format!(" AND ctid < '({to},0)'::tid"));
        format!(
            "COPY (SELECT {} FROM ONLY {} WHERE ctid >= '({from},0)'::tid{upto}) TO STDOUT",
            self.column_list(),
            self.qualified()
        )
    }

    /// The positions of the key's columns among the columns, ascending.
    pub fn key_fields(&self) -> Vec<usize> {
        let mut f: Vec<usize> = self
            .key
            .iter()
            .filter_map(|k| self.columns.iter().position(|c| c == k))
            .collect();
        f.sort_unstable();
        f
    }

    /// `"a", "b"`.
    pub fn column_list(&self) -> String {
        self.columns
            .iter()
            .map(|c| quote_ident(c))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The rows of a `COPY … TO STDOUT` stream, which arrives in pieces that split rows
/// anywhere: whole rows (lines, without their newline) as they complete.
#[derive(Default)]
pub(crate) struct CopyRows {
    buf: Vec<u8>,
    start: usize,
}

impl CopyRows {
    pub(crate) fn push(&mut self, piece: &[u8]) {
        self.buf.drain(..self.start);
        self.start = 0;
        self.buf.extend_from_slice(piece);
    }

    pub(crate) fn next_row(&mut self) -> Option<&[u8]> {
        let nl = memchr::memchr(b'\n', &self.buf[self.start..])?;
        let row = &self.buf[self.start..self.start + nl];
        self.start += nl + 1;
        Some(row)
    }

    /// At the end of the stream: an error unless the last row was whole.
    pub(crate) fn finish(&self, what: &str) -> Result<()> {
        if self.start < self.buf.len() {
            return Err(Error::other(format!(
                "{what}: the server's COPY output ended in the middle of a row"
            )));
        }
        Ok(())
    }
}

/// A field of a COPY text line as the value it stands for: `\\` and the escapes COPY
/// writes for control characters (`\\n`, `\\t`, …) undone.
pub(crate) fn copy_unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut bytes = field.iter();
    while let Some(&b) = bytes.next() {
        if b != b'\\' {
            out.push(b);
            continue;
        }
        out.push(match bytes.next() {
            Some(b'b') => 0x08,
            Some(b'f') => 0x0c,
            Some(b'n') => b'\n',
            Some(b'r') => b'\r',
            Some(b't') => b'\t',
            Some(b'v') => 0x0b,
            Some(&c) => c,
            None => break,
        });
    }
    out
}

/// An identifier quoted for PostgreSQL.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string literal for PostgreSQL (standard_conforming_strings on).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The session settings both sides of a dump use, so that COPY's text for a value is
/// the same on the source and the target (the checksum compares these texts).
pub const SESSION: &str = "SET client_encoding = 'UTF8'; SET DateStyle = 'ISO, YMD'; \
    SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET TimeZone = 'UTC'; \
    SET bytea_output = 'hex'; SET standard_conforming_strings = on";

/// `postgres://USER[:PASS]@HOST[:PORT]/DB` (or `postgresql://`). Without a password in
/// the URL, the password comes from `FREEZER_DB_PASSWORD`.
#[derive(Clone)]
pub struct PgUrl {
    pub host: String,
    pub port: u16,
    pub user: String,
    password: Option<String>,
    pub database: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> Result<PgUrl> {
        let form = "the form is postgres://USER[:PASSWORD]@HOST[:PORT]/DATABASE";
        let bad = |why: &str| {
            Error::usage(format!(
                "database URL {} {why}",
                crate::error::redact_url(url)
            ))
            .with_hint(form)
        };
        let rest = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
            .ok_or_else(|| bad("is not postgres://USER@HOST[:PORT]/DB"))?;
        let (cred, rest) = rest.rsplit_once('@').ok_or_else(|| bad("names no user"))?;
        let (user, password) = match cred.split_once(':') {
            Some((u, p)) => (percent_decode(u), Some(percent_decode(p))),
            None => (percent_decode(cred), None),
        };
        let (hostport, path) = rest
            .split_once('/')
            .ok_or_else(|| bad("names no database"))?;
        let path = path.split('?').next().unwrap_or("");
        if path.is_empty() {
            return Err(bad("names no database"));
        }
        if path.contains('/') {
            return Err(bad("has more than a database name in its path"));
        }
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) => (
                h.to_string(),
                p.parse::<u16>().map_err(|_| bad("has an invalid port"))?,
            ),
            None => (hostport.to_string(), 5432),
        };
        if host.is_empty() || user.is_empty() {
            return Err(bad("needs a user and a host"));
        }
        let password = password.or_else(|| std::env::var("FREEZER_DB_PASSWORD").ok());
        Ok(PgUrl {
            host,
            port,
            user,
            password,
            database: percent_decode(path),
        })
    }

    /// An endpoint from its parts (a database found in a container's environment).
    pub fn from_parts(host: &str, port: u16, user: &str, password: &str, db: &str) -> PgUrl {
        PgUrl {
            host: host.into(),
            port,
            user: user.into(),
            password: Some(password.into()),
            database: db.into(),
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> PgUrl {
        PgUrl {
            database: db.to_string(),
            ..self.clone()
        }
    }

    /// `host:port`, for messages.
    pub fn server(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }

    /// The password, for the stock tools' environment (PGPASSWORD); never printed.
    pub(crate) fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Connects to the URL's database; the connection runs on the current runtime.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        let (client, conn) = self.open().await?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        self.set_session(&client).await?;
        Ok(client)
    }

    /// Runs `work` on a new connection that the calling task drives itself (not a task
    /// of its own): reading the socket, parsing the server's messages and handling the
    /// rows happen on one thread, without a wake-up of another thread per few kilobytes.
    /// The connection closes when `work` has dropped its client.
    pub async fn with_connection<T, F>(
        &self,
        work: impl FnOnce(tokio_postgres::Client) -> F,
    ) -> Result<T>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        let (client, conn) = self.open().await?;
        let work = async {
            self.set_session(&client).await?;
            work(client).await
        };
        let (out, _) = futures::join!(work, conn);
        out
    }

    async fn open(
        &self,
    ) -> Result<(
        tokio_postgres::Client,
        tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
    )> {
        let mut c = tokio_postgres::Config::new();
        c.host(&self.host)
            .port(self.port)
            .user(&self.user)
            .dbname(&self.database)
            .application_name("freezer")
            .connect_timeout(std::time::Duration::from_secs(30));
        if let Some(p) = &self.password {
            c.password(p);
        }
        c.connect(tokio_postgres::NoTls)
            .await
            .map_err(|e| pg_error(e, &format!("connecting to {self}")))
    }

    async fn set_session(&self, client: &tokio_postgres::Client) -> Result<()> {
        client
            .batch_execute(SESSION)
            .await
            .map_err(|e| pg_error(e, &format!("setting up the session on {self}")))
    }
}

/// Runs `worker` on `n` connections at once, each on a thread of its own that drives its
/// connection ([`PgUrl::with_connection`]) with a runtime of its own: the rows of two
/// connections are handled on two cores, and the thread that waits for the socket is
/// the one that reads it (no other thread is woken for every few kilobytes the server
/// sends). Every worker runs to its end; the first error is returned.
pub(crate) fn on_connections<W, F>(url: &PgUrl, n: usize, worker: W) -> Result<()>
where
    W: Fn(tokio_postgres::Client) -> F + Sync,
    F: std::future::Future<Output = Result<()>>,
{
    let run = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::other(format!("starting a connection's runtime: {e}")))?
            .block_on(url.with_connection(&worker))
    };
    std::thread::scope(|s| {
        let threads: Vec<_> = (0..n.max(1)).map(|_| s.spawn(run)).collect();
        threads
            .into_iter()
            .map(|t| t.join().expect("a database connection's thread panicked"))
            .collect::<Result<Vec<()>>>()
    })?;
    Ok(())
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Without the password, always.
impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "postgres://{}@{}/{}",
            self.user,
            self.server(),
            self.database
        )
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Maps a driver error to ours: connection and authentication failures are
/// "unreachable" (exit 3), a missing database "not found", with what to do.
pub fn pg_error(e: tokio_postgres::Error, what: &str) -> Error {
    use tokio_postgres::error::SqlState;
    let code = e.code().cloned();
    let detail = match e.as_db_error() {
        Some(d) => d.message().to_string(),
        None => {
            let mut s = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(x) = src {
                s = format!("{s}: {x}");
                src = x.source();
            }
            s
        }
    };
    let (kind, hint) = match code {
        Some(c) if c == SqlState::INVALID_PASSWORD || c == SqlState::INVALID_AUTHORIZATION_SPECIFICATION => (
            ErrorKind::Unreachable,
            Some("check the user and password (FREEZER_DB_PASSWORD or the URL)"),
        ),
        Some(c) if c == SqlState::INVALID_CATALOG_NAME => (
            ErrorKind::NotFound,
            Some("check the database name in the URL"),
        ),
        Some(c) if c == SqlState::INSUFFICIENT_PRIVILEGE => (
            ErrorKind::Other,
            Some("the user needs to read every table of the database (e.g. pg_read_all_data) to dump it, and to create databases to load one"),
        ),
        // The server shutting down, crashed or restarting (57P01–57P03), or the
        // connection failing (class 08): as a server that went away.
        Some(c) if c.code().starts_with("57P") || c.code().starts_with("08") => (
            ErrorKind::Unreachable,
            Some("the PostgreSQL server went away or is restarting: check that it runs (and its log), then run again"),
        ),
        None if e.as_db_error().is_none() => (
            ErrorKind::Unreachable,
            Some("is the PostgreSQL server running and reachable at that address?"),
        ),
        _ => (ErrorKind::Other, None),
    };
    let mut err = Error::new(kind, format!("{what}: {detail}"));
    if let Some(h) = hint {
        err = err.with_hint(h);
    }
    err
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_rows_come_whole_wherever_the_stream_splits() {
        let text = b"1\tab\n22\t\\N\n\n333\tx\\ty\n";
        let want: Vec<&[u8]> = vec![b"1\tab", b"22\t\\N", b"", b"333\tx\\ty"];
        for a in 0..=text.len() {
            for b in a..=text.len() {
                let mut rows = CopyRows::default();
                let mut got: Vec<Vec<u8>> = Vec::new();
                for piece in [&text[..a], &text[a..b], &text[b..]] {
                    rows.push(piece);
                    while let Some(r) = rows.next_row() {
                        got.push(r.to_vec());
                    }
                }
                assert!(rows.finish("t").is_ok());
                assert_eq!(got, want, "split at {a}, {b}");
            }
        }
        let mut rows = CopyRows::default();
        rows.push(b"1\n2");
        while rows.next_row().is_some() {}
        assert!(rows.finish("t").is_err());
    }

    #[test]
    fn urls_parse_and_never_show_the_password() {
        let u = PgUrl::parse("postgres://app:s%40cret@db.example:5433/shop").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.user.as_str()),
            ("db.example", 5433, "app")
        );
        assert_eq!(u.password(), Some("s@cret"));
        assert_eq!(u.database, "shop");
        assert_eq!(u.to_string(), "postgres://app@db.example:5433/shop");
        let u = PgUrl::parse("postgresql://app@localhost/shop").unwrap();
        assert_eq!(u.port, 5432);
        for bad in [
            "postgres://localhost/shop",
            "postgres://app@localhost",
            "postgres://app@localhost/",
            "postgres://app@localhost/a/b",
            "mysql://app@localhost/a",
        ] {
            let e = PgUrl::parse(bad).unwrap_err();
            assert!(!e.message.contains("s@cret"), "{e}");
        }
    }
}
