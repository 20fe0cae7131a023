//! A PostgreSQL server a test owns (its own cluster, socket directory and port, trust
//! authentication on loopback), so that it can be killed in the middle of a dump or a
//! load without disturbing the shared one.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = "/usr/lib/postgresql/15/bin";

pub struct PgServer {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(dir: &Path, program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", "postgres", "--", &format!("{BIN}/{program}")])
        .current_dir(dir);
    c
}

impl PgServer {
    pub fn start() -> PgServer {
        let dir = tempfile::tempdir().unwrap();
        // The server runs as postgres: it must reach its directory.
        let st = Command::new("chown")
            .args(["postgres:postgres", dir.path().to_str().unwrap()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = as_postgres(dir.path(), "initdb")
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", "freezer", "--auth=trust", "-E", "UTF8", "--locale=C"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::hydrated::free_port();
        let pg = PgServer { dir, port };
        pg.spawn();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&self) {
        let out = as_postgres(self.dir.path(), "pg_ctl")
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"])
            .stdout(Stdio::null())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pg_ctl start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// `postgres://freezer@127.0.0.1:PORT` (trust: no password).
    pub fn server_url(&self) -> String {
        format!("postgres://freezer@127.0.0.1:{}", self.port)
    }

    pub fn url(&self, db: &str) -> String {
        format!("{}/{db}", self.server_url())
    }

    pub fn try_sql(&self, db: &str, sql: &str) -> Result<String, String> {
        let out = crate::postgres::psql_at(&self.server_url(), "", db)
            .args(["-c", sql])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    pub fn sql(&self, db: &str, sql: &str) -> String {
        self.try_sql(db, sql)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// SIGKILL of the postmaster and every process of the cluster, as a crash would.
    pub fn kill(&self) {
        let pidfile = self.data().join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pidfile) else {
            return;
        };
        let pid = text.lines().next().unwrap().trim().to_string();
        let children = Command::new("pgrep").args(["-P", &pid]).output().unwrap();
        let mut pids = vec![pid];
        pids.extend(
            String::from_utf8_lossy(&children.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
        let _ = Command::new("kill").arg("-KILL").args(&pids).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
        {
            assert!(Instant::now() < deadline, "the test's postgres did not die");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn restart(&self) {
        self.spawn();
    }

    /// Waits until a process whose command line holds `fragment` runs on this machine.
    pub fn wait_for_process(&self, fragment: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !Command::new("pgrep")
            .args(["-f", fragment])
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(Instant::now() < deadline, "no process {fragment:?} ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Waits until `table` of `db` has committed rows.
    pub fn wait_for_rows(&self, db: &str, table: &str) {
        let deadline = Instant::now() + Duration::from_secs(120);
        let q = format!("SELECT count(*) FROM {table}");
        while !self
            .try_sql(db, &q)
            .is_ok_and(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
        {
            assert!(Instant::now() < deadline, "no rows reached {table}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.kill();
    }
}
