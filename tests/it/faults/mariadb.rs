//! A MariaDB server a test owns (its own data directory, socket and port), so that it
//! can be killed in the middle of a dump or a load without disturbing the shared one.
//! Grant tables are skipped: any user and password get in, which is all these tests need.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct MariaDb {
    dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl MariaDb {
    pub fn start() -> MariaDb {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let out = Command::new("mariadb-install-db")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .args([
                "--user=root",
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
            ])
            .output()
            .expect("running mariadb-install-db");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = crate::hydrated::free_port();
        let mut db = MariaDb {
            dir,
            port,
            child: None,
        };
        db.spawn();
        db
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn spawn(&mut self) {
        let d = self.dir.path();
        let child = Command::new("/usr/sbin/mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", d.join("data").display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--port={}", self.port))
            .arg(format!("--pid-file={}", d.join("pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .args([
                "--bind-address=127.0.0.1",
                "--skip-grant-tables",
                "--user=root",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mariadbd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !Command::new("mariadb-admin")
            .arg(format!("--socket={}", self.socket().display()))
            .arg("ping")
            .output()
            .unwrap()
            .status
            .success()
        {
            assert!(
                Instant::now() < deadline,
                "the test's mariadbd did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `mysql://root@127.0.0.1:PORT/DB`.
    pub fn url(&self, db: &str) -> String {
        format!("mysql://root@127.0.0.1:{}/{db}", self.port)
    }

    /// Runs SQL and returns the batch output.
    pub fn sql(&self, script: &str) -> String {
        self.try_sql(script)
            .unwrap_or_else(|e| panic!("{script}: {e}"))
    }

    /// Runs SQL; the client's error text if it fails.
    pub fn try_sql(&self, script: &str) -> Result<String, String> {
        let out = Command::new("mariadb")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--batch", "--skip-column-names", "-e", script])
            .output()
            .unwrap();
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Waits until `table` has committed rows, as another session sees them.
    pub fn wait_for_rows(&self, table: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let query = format!("SELECT COUNT(*) FROM {table}");
        while !self
            .try_sql(&query)
            .is_ok_and(|n| n.trim().parse::<u64>().is_ok_and(|n| n > 0))
        {
            assert!(Instant::now() < deadline, "no rows reached {table}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The server's count of SELECT statements so far (`SHOW` statements, which this
    /// reads it with, are not counted).
    pub fn selects(&self) -> u64 {
        let out = self.sql("SHOW GLOBAL STATUS LIKE 'Com_select'");
        out.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("Com_select: {out:?}"))
    }

    /// Waits until `n` more SELECT statements than `since` ran: a dump in progress has
    /// read that many chunks. (Catching one of its queries in PROCESSLIST missed them
    /// all under load: each chunk's query runs for milliseconds.)
    pub fn wait_for_selects(&self, since: u64, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.selects() < since + n {
            assert!(Instant::now() < deadline, "fewer than {n} SELECTs ran");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL, as a crash or an OOM kill would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        assert!(self.child.is_none());
        self.spawn();
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}
