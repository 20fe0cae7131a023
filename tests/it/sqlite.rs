//! SQLite databases frozen while an application writes them: a bank whose writer moves
//! money between 20,000 accounts in transactions, so the sum never changes. A copy that
//! is not a state the database was ever in shows as a wrong sum (or a failed
//! integrity check).

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::hydrated::{docker, docker_try, freeze_dehydrated, host_a, mountpoint};

const ACCOUNTS: u32 = 20_000;
const TOTAL: u64 = 20_000_000;

/// Runs the host's sqlite3 on `db` with `sql`; its output.
fn sqlite3(db: &Path, sql: &str) -> String {
    let out = Command::new("sqlite3").arg(db).arg(sql).output().unwrap();
    assert!(
        out.status.success(),
        "sqlite3 {}: {}",
        db.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A bank of 20,000 accounts holding 1,000 each, in WAL mode, about 45 MB (each row
/// carries 2 kB of padding, so a transfer dirties pages far apart).
fn make_bank(db: &Path) {
    sqlite3(
        db,
        &format!(
            "PRAGMA journal_mode=WAL; PRAGMA page_size=4096;
             CREATE TABLE acct(id INTEGER PRIMARY KEY, bal INTEGER NOT NULL, pad BLOB);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM n WHERE i < {ACCOUNTS})
             INSERT INTO acct SELECT i, 1000, randomblob(2000) FROM n;"
        ),
    );
}

/// The shell pipeline of the writer: awk prints transfers between random accounts, one
/// transaction each, and sqlite3 commits them; the WAL is checkpointed every 50 pages.
fn writer_script(db: &str) -> String {
    format!(
        "awk 'BEGIN {{ srand(); print \"PRAGMA busy_timeout=60000; PRAGMA synchronous=NORMAL; PRAGMA wal_autocheckpoint=50;\"; \
         while (1) {{ a = int(rand()*{ACCOUNTS})+1; b = int(rand()*{ACCOUNTS})+1; v = int(rand()*100)+1; \
         printf \"BEGIN; UPDATE acct SET bal=bal-%d WHERE id=%d; UPDATE acct SET bal=bal+%d WHERE id=%d; COMMIT;\\n\", v, a, v, b; fflush() }} }}' \
         | sqlite3 {db} >/dev/null"
    )
}

/// A writer on this host, killed with its pipeline when dropped.
struct Writer(Child);

impl Writer {
    fn start(db: &Path) -> Writer {
        let child = Command::new("setsid")
            .args(["sh", "-c", &writer_script(db.to_str().unwrap())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Writer(child)
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // The whole session: sh, awk and sqlite3.
        unsafe_kill_group(self.0.id());
        let _ = self.0.wait();
    }
}

fn unsafe_kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .status();
}

/// Waits until the writer has committed at least `n` more transfers (the WAL or the
/// database changes), so every freeze below runs against a busy writer.
fn wait_for_writes(db: &Path) {
    let wal = db.with_extension("db-wal");
    let stamp = || {
        let m = |p: &Path| fs::metadata(p).map(|m| (m.len(), m.modified().ok())).ok();
        (m(db), m(&wal))
    };
    let before = stamp();
    let t = Instant::now();
    while stamp() == before {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the writer does not write"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What a copy of the bank holds: integrity_check's verdict and the sum of balances
/// (None when the copy does not even open as a database).
fn audit(db: &Path) -> (String, Option<u64>) {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("PRAGMA integrity_check; SELECT sum(bal) FROM acct;")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let check = lines.next().unwrap_or("").to_string();
    let sum = lines.last().and_then(|l| l.trim().parse().ok());
    if !out.status.success() {
        return (
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
            None,
        );
    }
    (check, sum)
}

fn is_consistent(db: &Path) -> bool {
    audit(db) == ("ok".to_string(), Some(TOTAL))
}

#[test]
fn a_sqlite_database_frozen_while_written_comes_back_as_one_state() {
    let src = tempfile::tempdir().unwrap();
    let db = src.path().join("bank.db");
    make_bank(&db);
    fs::write(src.path().join("notes.txt"), b"not a database\n").unwrap();
    assert!(is_consistent(&db));
    let repo = TestRepo::local().init();
    let site = unique("bank");
    let writer = Writer::start(&db);
    wait_for_writes(&db);
    for i in 0..20 {
        wait_for_writes(&db);
        let report = freeze(&repo, &site, &[src.path()]);
        let found = &report["trees"][0]["sqlite"];
        assert_eq!(
            found,
            &serde_json::json!([{"path": "bank.db", "how": "consistent"}]),
            "freeze {i}: {report}"
        );
        let into = tempfile::tempdir().unwrap();
        let out = thaw_into(&repo, &site, into.path());
        assert_ok(&out);
        let restored = under(into.path(), src.path());
        for c in ["-wal", "-shm", "-journal"] {
            assert!(
                !restored.join(format!("bank.db{c}")).exists(),
                "copy {i} has bank.db{c}"
            );
        }
        assert_eq!(
            audit(&restored.join("bank.db")),
            ("ok".into(), Some(TOTAL)),
            "copy {i}"
        );
    }
    drop(writer);

    // The killed writer left a -wal, which the next freeze's read checkpoints (as the
    // application's next reader would): one more copy. Unchanged since: not read again.
    freeze(&repo, &site, &[src.path()]);
    freeze(&repo, &site, &[src.path()]);
    // A freeze that rewrites the chain (a rebase: 20 copies of the database left little
    // of its layers live) reads everything by design; the one after it is incremental.
    let report = (0..2)
        .map(|_| freeze(&repo, &site, &[src.path()]))
        .find(|r| r["trees"][0]["rebased"] == false)
        .expect("an incremental freeze");
    assert_eq!(report["trees"][0]["files_read"], 0, "{report}");
    assert_eq!(report["trees"][0]["sqlite"][0]["how"], "consistent");
}

/// The same writer with the rule turned off (`sqlite = false`): the files are copied one
/// after the other, and some copies are states the bank was never in. This is what the
/// test above would see if freezer copied the database as files.
#[test]
fn with_the_sqlite_rule_off_a_copy_made_while_written_can_be_torn() {
    let src = tempfile::tempdir().unwrap();
    let db = src.path().join("bank.db");
    make_bank(&db);
    let repo = TestRepo::local().init();
    let site = unique("bank");
    let config = src.path().join("../freezer-off.toml");
    let config = config.with_file_name(format!("{site}.toml"));
    fs::write(
        &config,
        format!(
            "[sites.{site}]\npaths = [\"{}\"]\nsqlite = false\n",
            src.path().display()
        ),
    )
    .unwrap();
    let _writer = Writer::start(&db);
    let mut torn = Vec::new();
    for i in 0..10 {
        wait_for_writes(&db);
        let out = freezer(&[
            "freeze",
            &site,
            "--repo",
            &repo.url,
            "--config",
            config.to_str().unwrap(),
            "--json",
        ]);
        let report = ok_report(&out);
        assert_eq!(
            report["trees"][0]["sqlite"][0]["how"], "as-files",
            "{report}"
        );
        let into = tempfile::tempdir().unwrap();
        assert_ok(&thaw_into(&repo, &site, into.path()));
        let (check, sum) = audit(&under(into.path(), src.path()).join("bank.db"));
        if check != "ok" || sum != Some(TOTAL) {
            torn.push(format!("copy {i}: {check:.80} sum {sum:?}"));
            break;
        }
    }
    let _ = fs::remove_file(&config);
    assert!(
        !torn.is_empty(),
        "no torn copy in 10 freezes with the rule off: the test above could not fail"
    );
    eprintln!("torn with the rule off: {torn:?}");
}

/// A Docker site frozen dehydrated (its MariaDB dumped) while its application container
/// writes a SQLite database in a volume.
#[test]
fn a_docker_site_s_sqlite_database_frozen_dehydrated_while_written() {
    let host = host_a();
    let name = unique("sqsite");
    let project = format!("com.docker.compose.project={name}");
    docker(
        &host,
        &[
            "network",
            "create",
            "--label",
            &project,
            &format!("{name}_default"),
        ],
    );
    let volume = format!("{name}_state");
    docker(&host, &["volume", "create", "--label", &project, &volume]);
    let state = mountpoint(&host, &volume);
    make_bank(&state.join("bank.db"));
    let cleanup = Cleanup {
        host: host.clone(),
        name: name.clone(),
        services: vec!["app", "db"],
        volumes: vec!["state"],
    };
    #[rustfmt::skip]
    docker(&host, &[
        "run", "-d", "--name", &format!("{name}-app-1"), "--label", &project,
        "--label", "com.docker.compose.service=app", "--network", &format!("{name}_default"),
        "-v", &format!("{volume}:/state"), "freezer-test/sqlite:latest",
        "sh", "-c", &writer_script("/state/bank.db"),
    ]);
    #[rustfmt::skip]
    docker(&host, &[
        "run", "-d", "--name", &format!("{name}-db-1"), "--label", &project,
        "--label", "com.docker.compose.service=db", "--network", &format!("{name}_default"),
        "-e", "MARIADB_ROOT_PASSWORD=root-pw", "-e", "MARIADB_DATABASE=app",
        "-e", "MARIADB_USER=app", "-e", "MARIADB_PASSWORD=app-pw",
        &crate::hydrated::mariadb_image(),
    ]);
    let ip = crate::hydrated::address(&host, &format!("{name}-db-1"));
    crate::hydrated::sql_at(&ip, "app", "app-pw", "app", "SELECT 1");
    let repo = TestRepo::local().init();
    let db = state.join("bank.db");
    for i in 0..10 {
        wait_for_writes(&db);
        let out = freeze_dehydrated(&host, &name, &repo, &["--json"]);
        let report = ok_report(&out);
        let tree = report["trees"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["path"].as_str() == Some(state.to_str().unwrap()))
            .unwrap_or_else(|| panic!("no tree of {volume}: {report}"));
        assert_eq!(
            tree["sqlite"],
            serde_json::json!([{"path": "bank.db", "how": "consistent"}]),
            "freeze {i}"
        );
        assert_eq!(
            report["window"],
            serde_json::Value::Null,
            "a dehydrated freeze holds nothing still"
        );
        // The bytes a thaw writes: the file as the snapshot's index and layer hold it.
        let snap = report["snapshot"].as_str().unwrap();
        let out = freezer(&[
            "cat",
            &format!("{name}:{snap}"),
            &format!("{}/bank.db", tree["name"].as_str().unwrap()),
            "--repo",
            &repo.url,
        ]);
        assert_ok(&out);
        let copy = tempfile::tempdir().unwrap();
        let restored = copy.path().join("bank.db");
        fs::write(&restored, &out.stdout).unwrap();
        assert_eq!(audit(&restored), ("ok".into(), Some(TOTAL)), "copy {i}");
        let target = format!("{name}:{snap}");
        let tree_name = tree["name"].as_str().unwrap();
        let ls = freezer(&["ls", &target, tree_name, "-R", "--repo", &repo.url]);
        assert_ok(&ls);
        let listing = String::from_utf8_lossy(&ls.stdout);
        assert!(listing.contains("bank.db"), "{listing}");
        assert!(
            !listing.contains("bank.db-wal"),
            "the -wal is in the copy, not beside it: {listing}"
        );
    }
    // The application keeps writing after every freeze: nothing was left locked.
    wait_for_writes(&db);

    // The last snapshot thawed as a copy of the site: its application starts on the
    // restored volume, whose bank is whole and keeps its sum while it writes again.
    let copy = unique("sqcopy");
    let _copy = Cleanup {
        host: host.clone(),
        name: copy.clone(),
        services: vec!["app", "db"],
        volumes: vec!["state"],
    };
    let out = crate::hydrated::freezer_on(
        &host,
        &["thaw", &name, "--repo", &repo.url, "--as", &copy, "--json"],
    );
    assert_ok(&out);
    let restored = mountpoint(&host, &format!("{copy}_state")).join("bank.db");
    wait_for_writes(&restored);
    assert_eq!(audit(&restored), ("ok".into(), Some(TOTAL)));
    drop(cleanup);
}

/// Removes a compose-like test site (containers `NAME-SERVICE-1`, volumes `NAME_VOLUME`,
/// network `NAME_default`) when dropped.
pub struct Cleanup {
    pub host: String,
    pub name: String,
    pub services: Vec<&'static str>,
    pub volumes: Vec<&'static str>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (host, name) = (&self.host, &self.name);
        for c in &self.services {
            let _ = docker_try(host, &["rm", "-fv", &format!("{name}-{c}-1")]);
        }
        for v in &self.volumes {
            let _ = docker_try(host, &["volume", "rm", &format!("{name}_{v}")]);
        }
        let _ = docker_try(host, &["network", "rm", &format!("{name}_default")]);
    }
}

/// A database whose writer keeps it locked (rollback mode, an exclusive transaction left
/// open) past `sqlite_wait`: by default copied as files with a warning that names it;
/// with `sqlite_locked = "fail"` the freeze fails with exit 5 and records nothing.
#[test]
fn a_database_locked_past_the_wait_is_named_and_copied_as_files_or_fails() {
    let src = tempfile::tempdir().unwrap();
    let db = src.path().join("locked.db");
    sqlite3(&db, "CREATE TABLE t(x); INSERT INTO t VALUES (1);");
    let mut holder = Command::new("sh")
        .args([
            "-c",
            &format!(
                "(echo 'BEGIN EXCLUSIVE; INSERT INTO t VALUES (2);'; sleep 60) | sqlite3 {}",
                db.display()
            ),
        ])
        .spawn()
        .unwrap();
    // The -journal appears once the transaction holds its lock.
    let t = Instant::now();
    while !src.path().join("locked.db-journal").exists() {
        assert!(t.elapsed() < Duration::from_secs(10), "no lock taken");
        std::thread::sleep(Duration::from_millis(20));
    }
    let repo = TestRepo::local().init();
    let site = unique("locked");
    let config = |locked: &str| {
        let path = std::env::temp_dir().join(format!("{site}-{locked}.toml"));
        fs::write(
            &path,
            format!(
                "[sites.{site}]\npaths = [\"{}\"]\nsqlite_wait = \"1s\"\nsqlite_locked = \"{locked}\"\n",
                src.path().display()
            ),
        )
        .unwrap();
        path
    };
    let (copy, fail) = (config("copy"), config("fail"));
    let freeze_with = |config: &Path| {
        freezer(&[
            "freeze",
            &site,
            "--repo",
            &repo.url,
            "--config",
            config.to_str().unwrap(),
            "--json",
        ])
    };
    let out = freeze_with(&fail);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    let err = result_line(&out.stdout);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("locked.db"),
        "{err}"
    );
    let out = freezer(&["snapshots", &site, "--repo", &repo.url]);
    assert_eq!(
        out.status.code(),
        Some(6),
        "nothing recorded: {}",
        stderr(&out)
    );

    let report = ok_report(&freeze_with(&copy));
    assert_eq!(report["trees"][0]["sqlite"][0]["how"], "locked", "{report}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("locked.db") && warnings.contains("may be torn"),
        "{warnings}"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = Command::new("pkill")
        .args(["-f", &format!("sqlite3 {}", db.display())])
        .status();
    let _ = fs::remove_file(copy);
    let _ = fs::remove_file(fail);
}

/// A 41 MB database is stored by its 16 KiB units: after 1% of its rows change, the
/// night's upload is a small fraction of it, the restored copy is the changed database,
/// an OCI export holds it whole for stock tools, and prune keeps what it needs.
#[test]
fn a_large_database_is_stored_by_its_units_and_a_changed_one_uploads_little() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir(&src).unwrap();
    let db = src.join("bank.db");
    make_bank(&db);
    fs::write(src.join("notes.txt"), b"notes\n").unwrap();
    let size = fs::metadata(&db).unwrap().len();
    let repo = TestRepo::s3().init();
    let site = unique("paged");
    let first = freeze(&repo, &site, &[&src]);
    assert_eq!(first["trees"][0]["pages_new_bytes"], size, "{first}");

    // 1% of the accounts, chosen at random, get a transfer.
    sqlite3(
        &db,
        "UPDATE acct SET bal = bal + 7 WHERE id IN (SELECT abs(random()) % 20000 + 1 FROM acct LIMIT 200);",
    );
    let sum: u64 = sqlite3(&db, "SELECT sum(bal) FROM acct;")
        .trim()
        .parse()
        .unwrap();
    assert!(sum > TOTAL);
    let second = freeze(&repo, &site, &[&src]);
    let new = second["trees"][0]["pages_new_bytes"].as_u64().unwrap();
    let uploaded = second["bytes_uploaded"].as_u64().unwrap();
    eprintln!(
        "a {size}-byte database, 1% of rows changed: {new} bytes of units stored anew, {uploaded} bytes uploaded ({:.1}% of the file)",
        100.0 * uploaded as f64 / size as f64
    );
    assert!(new > 0 && new < size / 5, "{second}");
    assert!(uploaded < size / 10, "{second}");

    // Restored: the changed database, whole.
    let into = work.path().join("thawed");
    assert_ok(&thaw_into(&repo, &site, &into));
    let restored = under(&into, &src).join("bank.db");
    assert_eq!(audit(&restored), ("ok".into(), Some(sum)));
    let bytes = fs::read(&restored).unwrap();
    let cat = freezer(&[
        "cat",
        &site,
        &format!("{}/bank.db", second["trees"][0]["name"].as_str().unwrap()),
        "--repo",
        &repo.url,
    ]);
    assert_ok(&cat);
    assert!(cat.stdout == bytes, "cat gives the thawed bytes");

    // The mount reads it too.
    let at = work.path().join("mnt");
    fs::create_dir(&at).unwrap();
    {
        let _m = crate::mount::mount(&repo, &at);
        let id = second["snapshot"].as_str().unwrap();
        let viewed = fs::read(at.join(&site).join(id).join("src/bank.db")).unwrap();
        assert!(viewed == bytes, "the mount gives the thawed bytes");
    }

    // Stock tools: the exported layers, applied in order by GNU tar, hold it too.
    let oci = work.path().join("oci");
    assert_ok(&freezer(&[
        "export",
        &site,
        "--repo",
        &repo.url,
        "--oci",
        oci.to_str().unwrap(),
    ]));
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    let blob = |d: &str| oci.join("blobs/sha256").join(&d[7..]);
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let unpacked = work.path().join("unpacked");
    fs::create_dir(&unpacked).unwrap();
    for l in manifest["layers"].as_array().unwrap() {
        let st = Command::new("tar")
            .args(["--zstd", "-xf"])
            .arg(blob(l["digest"].as_str().unwrap()))
            .arg("-C")
            .arg(&unpacked)
            .status()
            .unwrap();
        assert!(st.success());
    }
    assert!(
        fs::read(unpacked.join("bank.db")).unwrap() == bytes,
        "the export holds the database whole"
    );
    assert_eq!(fs::read(unpacked.join("notes.txt")).unwrap(), b"notes\n");

    // The first snapshot forgotten and pruned: the second still verifies and thaws.
    assert_ok(&freezer(&[
        "forget",
        &site,
        "--repo",
        &repo.url,
        "--keep-last",
        "1",
    ]));
    for _ in 0..2 {
        assert_ok(&freezer(&["prune", "--repo", &repo.url, "--grace", "0"]));
    }
    assert_ok(&freezer(&["verify", "--repo", &repo.url]));
    let again = work.path().join("again");
    assert_ok(&thaw_into(&repo, &site, &again));
    assert!(fs::read(under(&again, &src).join("bank.db")).unwrap() == bytes);
}

/// A file that starts like a SQLite database but is not one SQLite can read (a damaged
/// database) is kept byte for byte, with a warning that says why; the freeze succeeds.
#[test]
fn a_file_sqlite_cannot_read_is_copied_as_it_is_with_a_warning() {
    let src = tempfile::tempdir().unwrap();
    let mut bytes = b"SQLite format 3\0".to_vec();
    bytes.extend(noise(8192 - 16, 7));
    fs::write(src.path().join("broken.db"), &bytes).unwrap();
    let repo = TestRepo::local().init();
    let site = unique("broken");
    let report = freeze(&repo, &site, &[src.path()]);
    let found = &report["trees"][0]["sqlite"][0];
    assert_eq!(found["how"], "unreadable", "{report}");
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("broken.db") && warnings.contains("could not be read by SQLite"),
        "{warnings}"
    );
    let into = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, &site, into.path()));
    assert!(fs::read(under(into.path(), src.path()).join("broken.db")).unwrap() == bytes);
}
