//! Database endpoints: URLs (never printed with their password), connections, and
//! turning server errors into errors that say what failed and what to do.

use std::fmt;
use std::sync::{Arc, OnceLock};

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
    /// Which server every connection must reach (MySQL/MariaDB; see [`ServerCheck`]).
    /// Shared by the URL's clones and [`DbUrl::with_database`]: one server, one run.
    check: Arc<ServerCheck>,
}

/// What makes sure each MySQL/MariaDB connection of a run reaches the same server, and
/// the one meant: the first connection's identity (`@@hostname`, `@@port`, `@@datadir`,
/// `@@server_uuid` where the server has one) is kept, every later connection must show
/// the same, and when the server is a container's, its `@@hostname` must be the
/// container's hostname. A proxy or DNS name that spreads connections over several
/// servers, or a client option that reroutes one (mysql_async's `prefer_socket`, which
/// once sent connections meant for a container to this host's own server), is refused
/// instead of dumping one server's rows and loading them into another.
#[derive(Default)]
struct ServerCheck {
    expect_hostname: Option<String>,
    first: OnceLock<ServerId>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerId {
    hostname: String,
    port: String,
    datadir: String,
    server_uuid: String,
}

impl fmt::Display for ServerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "hostname {}, port {}, datadir {}",
            self.hostname, self.port, self.datadir
        )?;
        if !self.server_uuid.is_empty() {
            write!(f, ", server_uuid {}", self.server_uuid)?;
        }
        Ok(())
    }
}

/// The marker on the error of a connection that reached another server than the one
/// meant ([`ServerCheck`]), so that callers that retry connections while a server starts
/// stop at once.
#[derive(Debug)]
pub struct WrongServer;

impl fmt::Display for WrongServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("it reached another server than the one meant")
    }
}

impl std::error::Error for WrongServer {}

/// True when `e` is a refused connection to the wrong server ([`WrongServer`]).
pub fn is_wrong_server(e: &Error) -> bool {
    e.source.as_deref().is_some_and(|s| s.is::<WrongServer>())
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
            return Ok(DbUrl::from_postgres(pg));
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
            check: Arc::default(),
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
            check: Arc::default(),
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
            check: Arc::default(),
        }
    }

    /// The same endpoint, whose server must report `hostname` as its `@@hostname`: a
    /// container's server, whose hostname the engine reports (`Config.Hostname`).
    /// Connections already made by this URL's clones are not checked again.
    pub fn expecting_hostname(&self, hostname: &str) -> DbUrl {
        let mut url = self.clone();
        if !hostname.is_empty() {
            url.check = Arc::new(ServerCheck {
                expect_hostname: Some(hostname.to_string()),
                first: OnceLock::new(),
            });
        }
        url
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
            check: self.check.clone(),
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
        self.open(opts).await
    }

    /// Connects to the URL's database.
    pub async fn connect(&self) -> Result<Conn> {
        self.open(self.mysql()?.clone()).await
    }

    async fn open(&self, opts: Opts) -> Result<Conn> {
        let mut conn = Conn::new(opts)
            .await
            .map_err(|e| db_error(e, &format!("connecting to {}", self)))?;
        if let Err(e) = self.check_server(&mut conn).await {
            let _ = conn.disconnect().await;
            return Err(e);
        }
        Ok(conn)
    }

    /// Checks that `conn` reached the server this URL means ([`ServerCheck`]).
    async fn check_server(&self, conn: &mut Conn) -> Result<()> {
        // SHOW VARIABLES needs no privilege, and names only the variables the server
        // has (MariaDB has no server_uuid).
        let rows: Vec<(String, String)> = conn
            .query(
                "SHOW GLOBAL VARIABLES WHERE Variable_name IN ('hostname', 'port', 'datadir', 'server_uuid')",
            )
            .await
            .map_err(|e| db_error(e, &format!("asking {self} which server it is")))?;
        let var = |name: &str| {
            rows.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map_or(String::new(), |(_, v)| v.clone())
        };
        let id = ServerId {
            hostname: var("hostname"),
            port: var("port"),
            datadir: var("datadir"),
            server_uuid: var("server_uuid"),
        };
        let wrong = |why: String| {
            Error::other(format!(
                "refusing the connection to {self}: {WrongServer}: {why}; nothing was read from or written to it"
            ))
            .with_hint(
                "the address must lead to the database's own server: check for a proxy, port forward or DNS name that leads to several servers, and that the URL names the server itself",
            )
            .with_source(WrongServer)
        };
        if let Some(want) = &self.check.expect_hostname {
            if !id.hostname.eq_ignore_ascii_case(want) {
                return Err(wrong(format!(
                    "it answered as the server on host {} ({id}), not as the container's (hostname {want})",
                    id.hostname
                )));
            }
        }
        let first = self.check.first.get_or_init(|| id.clone());
        if *first != id {
            return Err(wrong(format!(
                "it answered as another server ({id}) than this run's first connection did ({first})"
            )));
        }
        Ok(())
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

/// The connection options every dump and load uses; every MySQL/MariaDB endpoint is
/// built through here.
fn tuned(b: OptsBuilder) -> OptsBuilder {
    // A connection goes exactly where its URL says. mysql_async's default
    // (`prefer_socket`) reads the server's `@@socket` after connecting over TCP and
    // reconnects through that path on this machine's filesystem: for a server in a
    // container or behind a forwarded port, that is the socket of this host's own
    // server, which (Debian's root@localhost by unix_socket) lets freezer in without a
    // password, so a dump read, and a load wrote into, the wrong server. A URL that
    // names a socket (`?socket=/path`) connects through it directly.
    b.prefer_socket(false)
        // Dumps and loads stream for minutes; no statement cache is needed across them.
        .stmt_cache_size(32usize)
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

    /// Every way a MySQL/MariaDB endpoint is made connects where it says: never through
    /// this host's socket instead of the URL's address (mysql_async's default).
    #[test]
    fn connections_never_reroute_through_this_host_s_socket() {
        let urls = [
            DbUrl::parse("mysql://root:pw@172.17.0.2:3306/site").unwrap(),
            DbUrl::parse("mariadb://root@db.example/site").unwrap(),
            // Asked for in the URL, still refused: the socket would be this host's.
            DbUrl::parse("mysql://root@10.0.0.5/site?prefer_socket=true").unwrap(),
            DbUrl::from_parts("172.18.0.3", 3306, "root", "pw", "site"),
            DbUrl::from_parts("172.18.0.3", 3306, "root", "pw", "site").with_database("other"),
            DbUrl::parse("mysql://root@h/site")
                .unwrap()
                .expecting_hostname("abc123"),
        ];
        for u in &urls {
            let o = u.mysql().unwrap();
            assert!(!o.prefer_socket(), "{u} would reconnect through @@socket");
            assert_eq!(o.socket(), None, "{u}");
        }
        // A socket named in the URL is the one used, directly.
        let s = DbUrl::parse("mysql://root@localhost/site?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(s.mysql().unwrap().socket(), Some("/run/mysqld/mysqld.sock"));
    }

    #[test]
    fn a_database_of_the_same_server_shares_its_identity_check() {
        let u = DbUrl::parse("mysql://root@h/a").unwrap();
        assert!(Arc::ptr_eq(&u.check, &u.with_database("b").check));
        let c = u.expecting_hostname("abc");
        assert!(!Arc::ptr_eq(&u.check, &c.check));
        assert_eq!(c.check.expect_hostname.as_deref(), Some("abc"));
    }
}
