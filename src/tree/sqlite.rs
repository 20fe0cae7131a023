//! SQLite databases in a tree that is read while its site runs.
//!
//! A database in WAL mode lives in two files, the database and its `-wal`, which a writer
//! changes at different moments (a checkpoint copies pages from one into the other); a
//! database in rollback mode is rewritten in place while its `-journal` holds the old
//! pages. Copying the files one after the other, as any file is copied, yields a state
//! the database was never in. So a file that is a SQLite database (by its header, not its
//! name) is copied through SQLite's online backup API, in one step, inside one read
//! transaction: the copy is the database as of the last transaction committed before the
//! copy began, as one file with no `-wal`. Its `-wal`, `-shm` and `-journal` are then not
//! stored (SPEC.md §5.5): a stale `-wal` beside a newer database would be replayed onto
//! it.
//!
//! The backup keeps the database's page layout, so an unchanged database copies to the
//! same bytes. Whether it changed is told without reading it: by the stat data of the
//! database and of its `-wal` and `-journal` ([`stamp`]).

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::backup::{Backup, StepResult};
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};
use crate::progress::Progress;

/// The first 16 bytes of every SQLite 3 database file.
pub const HEADER: &[u8; 16] = b"SQLite format 3\0";

/// The files SQLite keeps beside a database `X`: `X-wal`, `X-shm`, `X-journal`.
pub const COMPANIONS: [&str; 3] = ["-wal", "-shm", "-journal"];

/// How a tree's SQLite databases are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sqlite {
    /// As files, like any other: the site is held still while the tree is read (a
    /// hydrated freeze), or the user turned the rule off.
    AsFiles,
    /// Through SQLite, each database as one consistent state (the site runs).
    Consistent {
        /// How long a database may stay locked against readers before giving up on it.
        wait: Duration,
        /// What to do then: copy its files as they are (with a warning) or fail.
        locked: OnLocked,
    },
}

/// What a freeze does with a database that stays locked longer than its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLocked {
    /// Copies its files as they are and says so: the copy may be torn.
    Copy,
    /// Fails the freeze, naming the database.
    Fail,
}

/// The default wait for a locked database.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);

impl Default for Sqlite {
    fn default() -> Sqlite {
        Sqlite::Consistent {
            wait: DEFAULT_WAIT,
            locked: OnLocked::Copy,
        }
    }
}

/// A SQLite database found in a tree, and how it was copied.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Found {
    /// Its path relative to the tree's root.
    pub path: String,
    pub how: How,
    /// Why SQLite could not copy it ([`How::Unreadable`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum How {
    /// Copied through SQLite's backup API (or carried over unchanged from such a copy).
    Consistent,
    /// Copied as files: the tree is read while the site is held still, or the rule is off.
    AsFiles,
    /// Copied as files because it stayed locked: may be torn.
    Locked,
    /// Copied as files because SQLite could not read it (damaged, or not open to this
    /// user): may be torn.
    Unreadable,
}

/// Whether the file at `path` (of `meta`, open as `file`) is a SQLite database: its
/// header says so, or it is still empty and its `-wal` holds its first transactions (a
/// new database in WAL mode before its first checkpoint).
pub fn is_database(path: &Path, meta: &std::fs::Metadata, file: &std::fs::File) -> bool {
    use std::os::unix::fs::FileExt;
    let starts_with = |f: &std::fs::File, magic: &[u8]| {
        let mut buf = [0u8; 16];
        let n = magic.len();
        f.read_exact_at(&mut buf[..n], 0)
            .is_ok_and(|()| &buf[..n] == magic)
    };
    if !could_be_database(meta.len()) {
        return false;
    }
    if meta.len() >= 512 {
        return starts_with(file, HEADER);
    }
    // A WAL file starts with 0x377f0682 or 0x377f0683 (big-endian).
    meta.len() == 0
        && std::fs::File::open(companion(path, "-wal")).is_ok_and(|wal| {
            starts_with(&wal, &[0x37, 0x7f, 0x06, 0x82])
                || starts_with(&wal, &[0x37, 0x7f, 0x06, 0x83])
        })
}

/// Whether a file of `size` bytes can be a database: a whole number of pages (each a
/// power of two of at least 512 bytes), or empty. Most files are not, and are not opened
/// to look.
pub fn could_be_database(size: u64) -> bool {
    size % 512 == 0
}

/// `X-wal` for `X` and `-wal`.
pub fn companion(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// If `name` is a companion file's name (`X-wal`, …), the name of its database `X`.
pub fn database_of(name: &[u8]) -> Option<&[u8]> {
    COMPANIONS
        .iter()
        .find_map(|s| name.strip_suffix(s.as_bytes()))
        .filter(|n| !n.is_empty())
}

/// The state on disk of the database at `path` (whose own stat the index keeps): its
/// size, and the size, mtime and inode of its `-wal` and `-journal`. A transaction
/// committed in WAL mode changes only the `-wal`, one in rollback mode the database
/// itself, so a database whose stamp and stat are unchanged holds the same data.
pub fn stamp(path: &Path, meta: &std::fs::Metadata) -> String {
    let mut s = format!("{}", meta.len());
    for suffix in ["-wal", "-journal"] {
        match std::fs::symlink_metadata(companion(path, suffix)) {
            Ok(m) => s.push_str(&format!(
                " {suffix}:{}:{}.{}:{}",
                m.len(),
                m.mtime(),
                m.mtime_nsec(),
                m.ino()
            )),
            Err(_) => s.push_str(&format!(" {suffix}:-")),
        }
    }
    s
}

/// A database copied as one consistent state: the copy, a scratch file in TMPDIR, and
/// the [`stamp`] of its files taken before the copy's read transaction began.
pub struct Copy {
    pub file: tempfile::NamedTempFile,
    pub stamp: String,
}

/// Copies the database at `path` as one consistent state. None: it stayed locked
/// against readers for longer than `wait`.
pub fn backup(path: &Path, wait: Duration, progress: &Progress) -> Result<Option<Copy>> {
    let sqlite_err = |what: &str, e: rusqlite::Error| {
        Error::other(format!("{what} SQLite database {}: {e}", path.display()))
            .with_hint("the file starts like a SQLite database; if SQLite cannot read it, copy it as a file: `sqlite = false` in the site's section of freezer.toml, or the container label dev.freezer.sqlite=false")
    };
    // Stamped before the copy: a commit in between is in the copy, and makes the next
    // freeze copy it again rather than miss it.
    let meta =
        std::fs::metadata(path).map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
    let stamp = stamp(path, &meta);
    // Opened as any client of it is (read-write, never created), so that it leaves the
    // directory as it found it: the -wal and -shm its first read makes when the
    // application is not running are removed again when it closes, as by the
    // application's own last connection. Reading may roll back a hot journal or
    // checkpoint a -wal a crashed writer left, as the application's next reader would. A
    // database on a read-only mount is read read-only. As root, SQLite gives any file it
    // creates the database's owner.
    let open = |flags| Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX);
    let src = match open(OpenFlags::SQLITE_OPEN_READ_WRITE) {
        Ok(c) => c,
        Err(_) => open(OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| sqlite_err("opening", e))?,
    };
    let started = Instant::now();
    match first_read(&src, wait) {
        Ok(true) => {}
        Ok(false) => return Ok(None),
        Err(e) => return Err(sqlite_err("reading", e)),
    }
    let file = crate::sys::temp_file()?;
    let mut dst = Connection::open(file.path()).map_err(|e| sqlite_err("copying", e))?;
    let done = {
        let b = Backup::new(&src, &mut dst).map_err(|e| sqlite_err("copying", e))?;
        loop {
            progress.check(|| format!("copying SQLite database {}", path.display()))?;
            // All pages in one step: one read transaction, so one state.
            match b.step(-1).map_err(|e| sqlite_err("copying", e))? {
                StepResult::Done => break true,
                StepResult::Busy | StepResult::Locked if started.elapsed() < wait => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                StepResult::More => {}
                _ => break false,
            }
        }
    };
    drop(dst);
    Ok(done.then_some(Copy { file, stamp }))
}

/// Reads the schema once, waiting up to `wait` for a lock. Ok(false): still locked.
fn first_read(c: &Connection, wait: Duration) -> rusqlite::Result<bool> {
    c.busy_timeout(wait)?;
    match c.query_row("SELECT count(*) FROM sqlite_master", [], |_| Ok(())) {
        Ok(()) => Ok(true),
        Err(rusqlite::Error::SqliteFailure(f, _))
            if matches!(
                f.code,
                rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(dir: &Path, wal: bool) -> PathBuf {
        let p = dir.join("app.db");
        let c = Connection::open(&p).unwrap();
        if wal {
            c.pragma_update(None, "journal_mode", "wal").unwrap();
        }
        c.execute_batch("CREATE TABLE t(x); INSERT INTO t VALUES (1), (2);")
            .unwrap();
        std::mem::forget(c); // keeps the -wal, as a running application does
        p
    }

    #[test]
    fn a_wal_database_is_copied_with_what_its_wal_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = db(dir.path(), true);
        assert!(companion(&p, "-wal").exists());
        let meta = std::fs::metadata(&p).unwrap();
        assert!(is_database(&p, &meta, &std::fs::File::open(&p).unwrap()));
        let copy = backup(&p, DEFAULT_WAIT, &Progress::default())
            .unwrap()
            .unwrap();
        let c = Connection::open(copy.file.path()).unwrap();
        let n: i64 = c
            .query_row("SELECT sum(x) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(n, 3);
    }

    #[test]
    fn a_database_locked_by_a_writer_is_given_up_after_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let p = db(dir.path(), false);
        let w = Connection::open(&p).unwrap();
        // An exclusive lock keeps every reader out until the writer commits.
        w.execute_batch("BEGIN EXCLUSIVE; INSERT INTO t VALUES (3);")
            .unwrap();
        let got = backup(&p, Duration::from_millis(300), &Progress::default()).unwrap();
        assert!(got.is_none());
        w.execute_batch("COMMIT").unwrap();
        assert!(backup(&p, Duration::from_millis(300), &Progress::default())
            .unwrap()
            .is_some());
    }

    #[test]
    fn names_and_stamps() {
        assert_eq!(database_of(b"app.db-wal"), Some(&b"app.db"[..]));
        assert_eq!(database_of(b"app.db-journal"), Some(&b"app.db"[..]));
        assert_eq!(database_of(b"-wal"), None);
        assert_eq!(database_of(b"app.db"), None);
        let dir = tempfile::tempdir().unwrap();
        let p = db(dir.path(), true);
        let before = stamp(&p, &std::fs::metadata(&p).unwrap());
        let c = Connection::open(&p).unwrap();
        c.execute("INSERT INTO t VALUES (9)", []).unwrap();
        let after = stamp(&p, &std::fs::metadata(&p).unwrap());
        assert_ne!(before, after, "a commit into the WAL changes the stamp");
        let plain = dir.path().join("plain");
        std::fs::write(&plain, vec![0u8; 4096]).unwrap();
        let f = std::fs::File::open(&plain).unwrap();
        assert!(!is_database(
            &plain,
            &std::fs::metadata(&plain).unwrap(),
            &f
        ));
    }
}
