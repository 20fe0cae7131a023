//! The stock `pg_dump` that writes a dump's schema files: on this machine, or inside a
//! Docker site's database container, where the server's own `pg_dump` is (same
//! version, nothing to install on the host).

use std::path::PathBuf;

use super::PgUrl;
use crate::error::{Error, ErrorKind, Result};

/// Runs a program in a container: `(argv, env)` to its exit code (None: it did not
/// finish in time; 126/127: it is not there), stdout and stderr. The ops layer builds it
/// from the Docker engine; the database layer does not know engines.
pub type Exec<'a> = dyn Fn(Vec<String>, Vec<String>) -> Result<Ran> + Sync + 'a;

/// A program's exit code (None: it did not finish in time), stdout and stderr.
pub type Ran = (Option<i64>, Vec<u8>, Vec<u8>);

/// Where `pg_dump` should run.
pub enum PgDumpAt<'a> {
    /// This machine's, found in `/usr/lib/postgresql/N/bin` or on PATH.
    Host,
    /// The database container's (`name`), through `exec`; this machine's when the
    /// container has none of the server's major version (said in the report).
    Container { name: String, exec: &'a Exec<'a> },
}

enum Runner<'a> {
    Host(PathBuf),
    Container(&'a Exec<'a>),
}

/// A `pg_dump` of the server's major version or newer (an older one refuses a newer
/// server), and where it runs.
pub struct PgDump<'a> {
    runner: Runner<'a>,
    /// Its `--version`, recorded in the manifest.
    pub version: String,
    /// Where it ran, for the report: "pg_dump 15.18 in container site-db-1".
    pub used: String,
    /// Why the container's was not used, when it was not.
    pub warning: Option<String>,
}

/// The major version in `pg_dump --version` ("pg_dump (PostgreSQL) 15.18 (Debian …)").
fn major_of(version: &str) -> i32 {
    version
        .split_whitespace()
        .nth(2)
        .and_then(|v| v.split('.').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn short(version: &str) -> &str {
    version.split_whitespace().nth(2).unwrap_or(version)
}

impl<'a> PgDump<'a> {
    /// The `pg_dump` to use for a server of version `server_num` (`server_version_num`).
    pub fn find(at: &PgDumpAt<'a>, server_num: i32) -> Result<PgDump<'a>> {
        let major = server_num / 10000;
        let PgDumpAt::Container { name, exec } = at else {
            return Self::find_host(major);
        };
        let argv = vec!["pg_dump".to_string(), "--version".to_string()];
        let why = match exec(argv, vec![])? {
            (Some(0), out, _) => {
                let version = String::from_utf8_lossy(&out).trim().to_string();
                if major_of(&version) >= major {
                    return Ok(PgDump {
                        used: format!("pg_dump {} in container {name}", short(&version)),
                        runner: Runner::Container(*exec),
                        version,
                        warning: None,
                    });
                }
                format!("is {version}, older than the server (PostgreSQL {major})")
            }
            (code, _, err) => format!(
                "could not run (exit {}: {})",
                code.map_or("none".into(), |c| c.to_string()),
                String::from_utf8_lossy(&err).trim()
            ),
        };
        let why = format!("the pg_dump in container {name} {why}");
        let mut host = Self::find_host(major).map_err(|mut e| {
            e.message = format!("{why}; {}", e.message);
            e
        })?;
        host.warning = Some(format!("{why}: this machine's was used"));
        Ok(host)
    }

    fn find_host(major: i32) -> Result<PgDump<'a>> {
        let mut candidates: Vec<(i32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let v: i32 = e.file_name().to_str()?.parse().ok()?;
                let p = e.path().join("bin/pg_dump");
                p.is_file().then_some((v, p))
            })
            .filter(|(v, _)| *v >= major)
            .collect();
        candidates.sort();
        let path = candidates
            .first()
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| "pg_dump".into());
        let install = format!(
            "install the PostgreSQL {major} client tools (Debian: postgresql-client-{major})"
        );
        let out = std::process::Command::new(&path).arg("--version").output();
        let version = match out {
            Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
            _ => {
                return Err(Error::not_found(format!(
                    "no pg_dump of PostgreSQL {major} or newer on this machine (the schema is dumped with it)"
                ))
                .with_hint(install))
            }
        };
        if major_of(&version) < major {
            return Err(Error::usage(format!(
                "{} is {version}, older than the server (PostgreSQL {major}), which it cannot dump",
                path.display()
            ))
            .with_hint(install));
        }
        Ok(PgDump {
            used: format!("pg_dump {} on this machine", short(&version)),
            runner: Runner::Host(path),
            version,
            warning: None,
        })
    }

    /// One section of the schema, as of the exported snapshot; without owners and
    /// privileges unless `owners`. psql's `\restrict` lines (a random key each run) are
    /// left out, so an unchanged schema gives the same file; the file holds no other
    /// meta-command.
    pub fn run(&self, url: &PgUrl, snapshot: &str, section: &str, owners: bool) -> Result<String> {
        let mut args: Vec<String> = vec!["--schema-only".into(), "--quote-all-identifiers".into()];
        if !owners {
            args.extend(["--no-owner".into(), "--no-privileges".into()]);
        }
        args.push(format!("--section={section}"));
        args.push(format!("--snapshot={snapshot}"));
        // In the container the server is this container's: its loopback address.
        let host = match self.runner {
            Runner::Host(_) => url.host.as_str(),
            Runner::Container(_) => "127.0.0.1",
        };
        args.extend([
            "-d".to_string(),
            conninfo(host, url.port, &url.user, &url.database),
        ]);
        let mut env = vec![
            ("PGAPPNAME", "freezer".to_string()),
            ("PGCONNECT_TIMEOUT", "30".to_string()),
        ];
        if let Some(p) = url.password() {
            env.push(("PGPASSWORD", p.to_string()));
        }
        let failed = |stderr: String| {
            let (kind, detail) = pg_dump_failure(&stderr);
            let e = Error::new(
                kind,
                format!(
                    "pg_dump --section={section} of {url} ({}) failed: {detail}",
                    self.used
                ),
            );
            match kind {
                ErrorKind::Unreachable => e.with_hint(
                    "the PostgreSQL server went away or refused the connection: check that it runs (and its log), then run again; nothing was recorded",
                ),
                _ => e,
            }
        };
        let stdout = match &self.runner {
            Runner::Host(path) => {
                let mut cmd = std::process::Command::new(path);
                // libpq reads PG* variables for whatever the command line leaves open
                // (PGSERVICE, PGSSLMODE, PGOPTIONS, PGPASSFILE, …): none of this
                // machine's apply to the server of the URL.
                for (k, _) in std::env::vars_os() {
                    if k.to_str().is_some_and(|k| k.starts_with("PG")) {
                        cmd.env_remove(k);
                    }
                }
                cmd.args(&args).envs(env).stdin(std::process::Stdio::null());
                let out = cmd
                    .output()
                    .map_err(|e| Error::io(format!("running {}", path.display()), e))?;
                if !out.status.success() {
                    return Err(failed(String::from_utf8_lossy(&out.stderr).trim().into()));
                }
                out.stdout
            }
            Runner::Container(exec) => {
                let mut argv = vec!["pg_dump".to_string()];
                argv.extend(args);
                let env = env.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
                match exec(argv, env)? {
                    (Some(0), out, _) => out,
                    (None, _, _) => return Err(failed("it did not finish within the hour".into())),
                    (Some(_), _, err) => {
                        return Err(failed(String::from_utf8_lossy(&err).trim().into()))
                    }
                }
            }
        };
        let text = String::from_utf8(stdout)
            .map_err(|_| Error::other(format!("pg_dump of {url} wrote text that is not UTF-8")))?;
        Ok(text
            .lines()
            .filter(|l| !l.starts_with("\\restrict ") && !l.starts_with("\\unrestrict "))
            .map(|l| format!("{l}\n"))
            .collect())
    }
}

/// What a failed `pg_dump` said, as the kind of failure and one line: its first error
/// without the query text it quotes (`detail: Query was: …`), the libpq continuation
/// lines or its `pg_dump:` prefixes. A server that closed the connection, went down or
/// refused it is "unreachable" (exit 3), as for the driver's own connections.
fn pg_dump_failure(stderr: &str) -> (ErrorKind, String) {
    const GONE: &[&str] = &[
        "server closed the connection unexpectedly",
        "terminating connection due to administrator command",
        "terminating connection due to unexpected postmaster exit",
        "server sent an error response during SSL exchange",
        "the database system is shutting down",
        "the database system is starting up",
        "the database system is in recovery mode",
        "Connection refused",
        "Connection reset by peer",
        "could not connect to server",
        "no connection to the server",
        "SSL SYSCALL error",
        "could not receive data from server",
        "could not send data to server",
        "timeout expired",
    ];
    let kind = if GONE.iter().any(|g| stderr.contains(g)) {
        ErrorKind::Unreachable
    } else {
        ErrorKind::Other
    };
    let first = stderr
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("pg_dump: error:"))
        .or_else(|| stderr.lines().map(str::trim).find(|l| !l.is_empty()))
        .unwrap_or("no message");
    let mut line = first
        .trim_start_matches("pg_dump: error:")
        .trim()
        .to_string();
    // "query failed: server closed …" or "Dumping the contents of table "t" failed:
    // PQgetResult() failed." — the cause is the libpq line, when there is one.
    if kind == ErrorKind::Unreachable {
        if let Some(g) = GONE.iter().find(|g| stderr.contains(*g)) {
            if !line.contains(g) {
                line = format!("{line} ({g})");
            }
        }
    }
    (kind, line)
}

/// The connection string `pg_dump -d` gets: every part named, so that nothing is taken
/// from the environment (a container's `PGHOSTADDR` would otherwise win over `-h`), and
/// a database name with `=` in it stays a name. An address is also given as `hostaddr`,
/// which libpq then uses as it is.
fn conninfo(host: &str, port: u16, user: &str, database: &str) -> String {
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut s = format!("host={}", quote(host));
    if host.parse::<std::net::IpAddr>().is_ok() {
        s.push_str(&format!(" hostaddr={}", quote(host)));
    }
    s.push_str(&format!(
        " port={port} user={} dbname={}",
        quote(user),
        quote(database)
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pg_dump_gets_every_part_of_the_connection_quoted() {
        assert_eq!(
            conninfo("127.0.0.1", 5432, "app", "shop"),
            "host='127.0.0.1' hostaddr='127.0.0.1' port=5432 user='app' dbname='shop'"
        );
        assert_eq!(
            conninfo("db.example", 5433, "o'neil", "a=b c\\d"),
            "host='db.example' port=5433 user='o\\'neil' dbname='a=b c\\\\d'"
        );
    }

    #[test]
    fn a_server_gone_mid_dump_is_unreachable_and_its_query_is_not_repeated() {
        let stderr = "pg_dump: error: query failed: server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally\n\tbefore or while processing the request.\npg_dump: detail: Query was: SELECT secret_column FROM \"public\".\"t\"\n";
        let (kind, line) = pg_dump_failure(stderr);
        assert_eq!(kind, ErrorKind::Unreachable);
        assert_eq!(
            line,
            "query failed: server closed the connection unexpectedly"
        );
        let (kind, line) = pg_dump_failure(
            "pg_dump: error: connection to server at \"127.0.0.1\", port 5433 failed: Connection refused\n\tIs the server running on that host and accepting TCP/IP connections?\n",
        );
        assert_eq!(kind, ErrorKind::Unreachable);
        assert!(line.starts_with("connection to server at"), "{line}");
        let (kind, line) =
            pg_dump_failure("pg_dump: error: aborting because of server version mismatch\n");
        assert_eq!(kind, ErrorKind::Other);
        assert_eq!(line, "aborting because of server version mismatch");
    }

    #[test]
    fn the_major_version_is_read_from_pg_dump_version() {
        assert_eq!(
            major_of("pg_dump (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)"),
            15
        );
        assert_eq!(major_of("pg_dump (PostgreSQL) 9.6.24"), 9);
        assert_eq!(major_of("something else"), 0);
        assert_eq!(short("pg_dump (PostgreSQL) 16.4"), "16.4");
    }
}
