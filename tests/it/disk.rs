//! Full disks, made for real with size-limited tmpfs mounts (the tests run as root): a
//! local repository, a thaw's destination, and the temporary directory a database thaw
//! holds its dump in. Each fails with exit 1 and a message naming the place and the
//! space, leaves the destination as it was and the repository consistent.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

/// A tmpfs of `size` (e.g. "10m"), unmounted when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn new(size: &str) -> Tmpfs {
        assert!(
            is_root(),
            "the full-disk tests mount tmpfs and must run as root"
        );
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount -t tmpfs at {}", dir.path().display());
        Tmpfs { dir }
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn random_file(path: &Path, mb: usize) {
    fs::write(path, noise(mb << 20, 0x853c49e6748fea9b)).unwrap();
}

#[test]
fn a_full_local_repository_is_named_and_stays_consistent() {
    let disk = Tmpfs::new("10m");
    let repo_dir = disk.path().join("repo");
    let url = repo_dir.display().to_string();
    assert_ok(&freezer(&["init", "--repo", &url]));
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("big.bin"), 24);
    let path = src.path().display().to_string();

    let out = freezer(&["freeze", "site", "--repo", &url, "--path", &path]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "the disk holding {}/tmp is full",
            repo_dir.display()
        )) && err.contains("free"),
        "the message names the full disk: {err}"
    );
    // Nothing recorded, nothing half-written left, and what is there verifies.
    let list = json(&freezer(&["snapshots", "--repo", &url, "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    let spooled = fs::read_dir(repo_dir.join("tmp")).unwrap().count();
    assert_eq!(spooled, 0, "spooled files left behind");
    assert_ok(&freezer(&["verify", "--repo", &url]));

    // The repository is still usable for what fits.
    let small = tempfile::tempdir().unwrap();
    fs::write(small.path().join("a.txt"), "fits\n").unwrap();
    let small_path = small.path().display().to_string();
    assert_ok(&freezer(&[
        "freeze",
        "small",
        "--repo",
        &url,
        "--path",
        &small_path,
    ]));
    assert_ok(&freezer(&["verify", "--repo", &url]));
}

#[test]
fn a_full_thaw_destination_is_refused_before_anything_changes() {
    let repo = TestRepo::local().init();
    let src = tempfile::tempdir().unwrap();
    random_file(&src.path().join("big.bin"), 24);
    freeze(&repo, "site", &[src.path()]);

    let disk = Tmpfs::new("10m");
    let kept = disk.path().join("kept.txt");
    fs::write(&kept, "already here\n").unwrap();
    let out = thaw_into(&repo, "site", disk.path());
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("not enough space at {}", disk.path().display()))
            && err.contains("needs 24.0 MiB"),
        "the message names the place and the space needed: {err}"
    );
    let left: Vec<_> = fs::read_dir(disk.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("kept.txt")]);
    assert_eq!(fs::read_to_string(&kept).unwrap(), "already here\n");
}

#[test]
fn a_full_temporary_directory_fails_a_database_thaw_before_the_target_is_made() {
    use crate::database::*;
    let repo = TestRepo::local().init();
    let src = unique("fd").replace('-', "_");
    fixture(&src);
    freeze_db(&repo, "shop", &src);

    let disk = Tmpfs::new("64k");
    let target = unique("fdcopy").replace('-', "_");
    let url = db_url(&target);
    let tmpdir = disk.path().display().to_string();
    let out = freezer_env(
        &["thaw", "shop", "--repo", &repo.url, "--db", &url],
        &[("TMPDIR", &tmpdir)],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("not enough space in {tmpdir}")) && err.contains("it needs"),
        "{err}"
    );
    let exists = sql(
        None,
        &format!(
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{target}';"
        ),
    );
    assert_eq!(exists.trim(), "0", "the target database was created");
    drop_db(&src);
}

/// A repository that fills up while a database is dumped (MySQL, then PostgreSQL): the
/// freeze names the full disk — the upload's error, not the readers' "the chunk uploads
/// stopped" — records nothing, and what is in the repository verifies.
#[test]
fn a_repository_filling_up_during_a_database_dump_is_named_and_records_nothing() {
    let disk = Tmpfs::new("2m");
    let repo_dir = disk.path().join("repo");
    let url = repo_dir.display().to_string();
    assert_ok(&freezer(&["init", "--repo", &url]));
    // About 10 MB of hex text each, which zstd cannot shrink below the disk's 2 MB.
    let my = unique("fullmy").replace('-', "_");
    crate::database::sql(None, &format!("CREATE DATABASE `{my}`;"));
    crate::database::sql(
        Some(&my),
        "CREATE TABLE t (id INT PRIMARY KEY, v TEXT); INSERT INTO t SELECT seq, \
         CONCAT(MD5(seq), SHA2(seq, 256), MD5(seq + 1)) FROM seq_1_to_80000;",
    );
    let pg = crate::postgres::PgDb::new("fullpg");
    pg.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, \
         md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text) || md5((g + 3)::text) \
         FROM generate_series(1, 80000) g",
    );
    let dumps = [
        freezer(&[
            "freeze",
            "my",
            "--repo",
            &url,
            "--db",
            &crate::database::db_url(&my),
        ]),
        crate::postgres::freezer_pg(&["freeze", "pg", "--repo", &url, "--db", &pg.url()]),
    ];
    crate::database::drop_db(&my);
    for out in dumps {
        assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains(&format!(
                "the disk holding {}/tmp is full",
                repo_dir.display()
            )),
            "the message names the full disk: {err}"
        );
        assert!(!err.contains("uploads stopped"), "{err}");
    }
    let list = json(&freezer(&["snapshots", "--repo", &url, "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 0, "{list}");
    assert_ok(&freezer(&["verify", "--repo", &url]));
}
