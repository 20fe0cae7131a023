//! Database endpoints: URLs (never printed with their password), connections, and
//! turning server errors into errors that say what failed and what to do.

use std::fmt;

use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::{Error, ErrorKind, Result};

/// `mysql://USER[:PASS]@HOST[:PORT]/DB` (MySQL, MariaDB) or `postgres://…` (PostgreSQL,
/// see [`crate::db::pg::PgUrl`]). Without a password in the URL, the password comes from
/// `FREEZER_DB_PASSWORD` (so it need not appear on a command line, where every user of
/// the machine can read it).
#[derive(Clone)]
pub struct DbUrl {
    target: Target,
    /// The database named in the URL's path.
    pub database: String,
}

#[derive(Clone)]
enum Target {
    Mysql(Opts),
    Postgres(crate::db::pg::PgUrl),
}

impl DbUrl {
    pub fn parse(url: &str) -> Result<DbUrl> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let pg = crate::db::pg::PgUrl::parse(url)?;
            return Ok(DbUrl {
                database: pg.database.clone(),
                target: Target::Postgres(pg),
            });
        }
        if !url.starts_with("mysql://") && !url.starts_with("mariadb://") {
            return Err(Error::usage(format!(
                "database URL {} is not mysql://USER@HOST[:PORT]/DB or postgres://USER@HOST[:PORT]/DB",
                redact(url)
            )));
        }
        let normal = url.replacen("mariadb://", "mysql://", 1);
        let opts = Opts::from_url(&normal).map_err(|e| {
            Error::usage(format!("invalid database URL {}: {e}", redact(url)))
                .with_hint("the form is mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE")
        })?;
        // One database: `mysql://u@h/db/extra` would name something else than it seems.
        let rest = &normal["mysql://".len()..];
        let after_user = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        let path = after_user.split_once('/').map_or("", |(_, p)| p);
        let path = path.split('?').next().unwrap_or("");
        if path.contains('/') {
            return Err(Error::usage(format!(
                "database URL {} has more than a database name in its path",
                redact(url)
            ))
            .with_hint("the form is mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"));
        }
        let database = opts.db_name().unwrap_or_default().to_string();
        if database.is_empty() {
            return Err(
                Error::usage(format!("database URL {} names no database", redact(url)))
                    .with_hint("add the database name as the path: mysql://USER@HOST/DATABASE"),
            );
        }
        let mut b = tuned(OptsBuilder::from_opts(opts.clone()));
        if opts.pass().is_none() {
            if let Ok(p) = std::env::var("FREEZER_DB_PASSWORD") {
                b = b.pass(Some(p));
            }
        }
        Ok(DbUrl {
            target: Target::Mysql(b.into()),
            database,
        })
    }

    /// The PostgreSQL endpoint, when the URL names one.
    pub fn postgres(&self) -> Option<&crate::db::pg::PgUrl> {
        match &self.target {
            Target::Postgres(p) => Some(p),
            Target::Mysql(_) => None,
        }
    }

    /// A PostgreSQL endpoint as a database URL.
    pub fn from_postgres(pg: crate::db::pg::PgUrl) -> DbUrl {
        DbUrl {
            database: pg.database.clone(),
            target: Target::Postgres(pg),
        }
    }

    /// The MySQL/MariaDB connection options; a PostgreSQL URL is refused with what
    /// cannot be done with it yet.
    fn mysql(&self) -> Result<&Opts> {
        match &self.target {
            Target::Mysql(o) => Ok(o),
            Target::Postgres(_) => Err(Error::usage(format!(
                "{self} is a PostgreSQL database; this step works with MySQL and MariaDB databases only, for now"
            ))),
        }
    }

    /// An endpoint from its parts (a database found in a container's environment), so
    /// no password needs URL-escaping.
    pub fn from_parts(host: &str, port: u16, user: &str, password: &str, database: &str) -> DbUrl {
        let b = OptsBuilder::default()
            .ip_or_hostname(host)
            .tcp_port(port)
            .user(Some(user))
            .pass(Some(password))
            .db_name(Some(database));
        DbUrl {
            target: Target::Mysql(tuned(b).into()),
            database: database.to_string(),
        }
    }

    /// The same server, another database.
    pub fn with_database(&self, db: &str) -> DbUrl {
        let target = match &self.target {
            Target::Mysql(o) => {
                Target::Mysql(OptsBuilder::from_opts(o.clone()).db_name(Some(db)).into())
            }
            Target::Postgres(p) => Target::Postgres(p.with_database(db)),
        };
        DbUrl {
            target,
            database: db.to_string(),
        }
    }

    /// `host:port`, for messages.
    pub fn server(&self) -> String {
        match &self.target {
            Target::Mysql(o) => format!("{}:{}", o.ip_or_hostname(), o.tcp_port()),
            Target::Postgres(p) => p.server(),
        }
    }

    pub fn user(&self) -> &str {
        match &self.target {
            Target::Mysql(o) => o.user().unwrap_or(""),
            Target::Postgres(p) => &p.user,
        }
    }

    /// Connects with no default database (it may not exist yet).
    pub async fn connect_server(&self) -> Result<Conn> {
        let opts: Opts = OptsBuilder::from_opts(self.mysql()?.clone())
            .db_name(None::<String>)
            .into();
        Conn::new(opts)
            .await
            .map_err(|e| db_error(e, &format!("connecting to {}", self)))
    }

    /// Connects to the URL's database.
    pub async fn connect(&self) -> Result<Conn> {
        Conn::new(self.mysql()?.clone())
            .await
            .map_err(|e| db_error(e, &format!("connecting to {}", self)))
    }
}

/// Without the password, always.
impl fmt::Display for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Target::Postgres(p) = &self.target {
            return fmt::Display::fmt(p, f);
        }
        write!(
            f,
            "mysql://{}@{}/{}",
            self.user(),
            self.server(),
            self.database
        )
    }
}

impl fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for DbUrl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The connection options every dump and load uses.
fn tuned(b: OptsBuilder) -> OptsBuilder {
    // Dumps and loads stream for minutes; no statement cache is needed across them.
    b.stmt_cache_size(32usize)
        // Rows as long as the server stores (up to 1 GiB) must be readable; the server
        // itself limits what it accepts.
        .max_allowed_packet(Some(1 << 30))
        .wait_timeout(Some(28_800))
}

/// A URL as typed, with any password replaced, for error messages.
pub use crate::error::redact_url as redact;

/// Maps a driver error to ours. Server error codes decide the kind: credentials and
/// network failures are "unreachable" (exit 3), missing databases "not found", missing
/// privileges name the privilege in the hint.
pub fn db_error(e: mysql_async::Error, what: &str) -> Error {
    use mysql_async::Error as E;
    let (kind, hint): (ErrorKind, Option<String>) = match &e {
        E::Io(_) => (
            ErrorKind::Unreachable,
            Some("is the database server running and reachable at that address?".into()),
        ),
        E::Driver(mysql_async::DriverError::ConnectionClosed) => (
            ErrorKind::Unreachable,
            Some("the server closed the connection; check its error log".into()),
        ),
        E::Server(s) => match s.code {
            1045 => (
                ErrorKind::Unreachable,
                Some("check the user and password (FREEZER_DB_PASSWORD or the URL)".into()),
            ),
            1049 => (
                ErrorKind::NotFound,
                Some("check the database name in the URL".into()),
            ),
            1044 | 1142 | 1143 | 1227 | 1370 => (
                ErrorKind::Other,
                Some(privilege_hint(&s.message)),
            ),
            1205 => (
                ErrorKind::Other,
                Some("a lock was held too long by another session; try again when the site is quieter".into()),
            ),
            _ => (ErrorKind::Other, None),
        },
        _ => (ErrorKind::Other, None),
    };
    let mut err = Error::new(kind, format!("{what}: {}", describe(&e)));
    err.hint = hint;
    err
}

fn describe(e: &mysql_async::Error) -> String {
    match e {
        mysql_async::Error::Server(s) => format!("server error {}: {}", s.code, s.message),
        // The client wraps I/O errors twice ("Input/output error: Input/output error:
        // Connection refused"); the reason is enough.
        mysql_async::Error::Io(mysql_async::IoError::Io(io)) => io.to_string(),
        other => other.to_string(),
    }
}

fn privilege_hint(msg: &str) -> String {
    // The server names the command or privilege ("LOCK TABLES command denied", "Access
    // denied; you need (at least one of) the RELOAD privilege(s)").
    format!("the database user lacks a privilege ({msg}); grant it, or use a user that has it")
}

/// `SELECT`s one row of strings (NULL as empty).
pub async fn query_strings(conn: &mut Conn, sql: &str, what: &str) -> Result<Vec<Vec<String>>> {
    let rows: Vec<mysql_async::Row> = conn.query(sql).await.map_err(|e| db_error(e, what))?;
    Ok(rows.into_iter().map(row_strings).collect())
}

/// A prepared `SELECT` with parameters, rows as strings (NULL as empty).
pub async fn exec_strings(
    conn: &mut Conn,
    sql: &str,
    params: Vec<mysql_async::Value>,
    what: &str,
) -> Result<Vec<Vec<String>>> {
    let rows: Vec<mysql_async::Row> = conn
        .exec(sql, params)
        .await
        .map_err(|e| db_error(e, what))?;
    Ok(rows.into_iter().map(row_strings).collect())
}

pub fn row_strings(row: mysql_async::Row) -> Vec<String> {
    row.unwrap()
        .into_iter()
        .map(|v| match v {
            mysql_async::Value::NULL => String::new(),
            mysql_async::Value::Bytes(b) => String::from_utf8_lossy(&b).into_owned(),
            mysql_async::Value::Int(i) => i.to_string(),
            mysql_async::Value::UInt(u) => u.to_string(),
            other => other.as_sql(true),
        })
        .collect()
}

pub async fn exec(conn: &mut Conn, sql: &str, what: &str) -> Result<()> {
    conn.query_drop(sql).await.map_err(|e| db_error(e, what))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_never_show_passwords() {
        assert_eq!(
            redact("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        let u = DbUrl::parse("mysql://u:secret@h:3306/db").unwrap();
        assert_eq!(u.to_string(), "mysql://u@h:3306/db");
        assert!(!format!("{u:?}").contains("secret"));
        assert!(DbUrl::parse("mysql://u@h/").is_err());
    }

    #[test]
    fn a_url_names_one_database() {
        assert_eq!(DbUrl::parse("mysql://u@h/db").unwrap().database, "db");
        assert_eq!(
            DbUrl::parse("mysql://u:p@h:3307/db?prefer_socket=false")
                .unwrap()
                .database,
            "db"
        );
        let e = DbUrl::parse("mysql://u@h/db/extra").unwrap_err();
        assert_eq!(e.kind, crate::error::ErrorKind::Usage);
        assert!(e.message.contains("more than a database name"), "{e}");
    }
}
