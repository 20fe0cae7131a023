//! Dehydrated snapshots of a real MariaDB (started by scripts/services): fixture
//! databases with every object kind and data type, round trips compared by CHECKSUM
//! TABLE, SHOW CREATE and row counts, consistency under concurrent writes, damaged
//! chunks, and the manual restore SPEC.md describes.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use crate::common::*;

/// `mysql://freezer:PASS@127.0.0.1:3306` from scripts/services.
fn server_url() -> String {
    services();
    std::env::var("FREEZER_TEST_MYSQL_URL")
        .expect("FREEZER_TEST_MYSQL_URL is set by scripts/services")
}

pub fn db_url(db: &str) -> String {
    format!("{}/{db}", server_url())
}

fn password() -> String {
    let u = server_url();
    let cred = u.split("://").nth(1).unwrap().split('@').next().unwrap();
    cred.split_once(':').unwrap().1.to_string()
}

/// Runs SQL through the stock `mariadb` client (batch mode: tab-separated, newlines in
/// values escaped) and returns its output. The password travels in the environment.
pub fn sql(db: Option<&str>, script: &str) -> String {
    let mut cmd = Command::new("mariadb");
    cmd.args([
        "-h127.0.0.1",
        "-P3306",
        "-ufreezer",
        "--batch",
        "--skip-column-names",
        "--default-character-set=utf8mb4",
    ])
    .env("MYSQL_PWD", password())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    if let Some(db) = db {
        cmd.arg(db);
    }
    let mut child = cmd.spawn().expect("running mariadb");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "mariadb failed: {}\nscript:\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn drop_db(db: &str) {
    sql(None, &format!("DROP DATABASE IF EXISTS `{db}`;"));
}

/// A database with every object kind and data type the issue lists.
pub fn fixture(db: &str) {
    drop_db(db);
    sql(
        None,
        &format!("CREATE DATABASE `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"),
    );
    sql(Some(db), FIXTURE);
    // Fresh statistics, so table sizes (which choose how tables are chunked) are known.
    sql(
        Some(db),
        "ANALYZE TABLE types, pairs, wide, nokey, legacy, parts, parent, child, places;",
    );
}

const FIXTURE: &str = r#"
SET SESSION sql_mode = '';
SET NAMES utf8mb4;
CREATE TABLE types (
  id INT NOT NULL AUTO_INCREMENT,
  c_null VARCHAR(10) NULL,
  c_empty VARCHAR(10) NULL,
  c_utf8 VARCHAR(50) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
  c_latin1 VARCHAR(50) CHARACTER SET latin1 COLLATE latin1_swedish_ci,
  c_bin VARBINARY(64),
  c_blob LONGBLOB,
  c_text MEDIUMTEXT,
  c_dec DECIMAL(65,30),
  c_float FLOAT,
  c_double DOUBLE,
  c_date DATE,
  c_datetime DATETIME(6),
  c_ts TIMESTAMP(3) NULL DEFAULT NULL,
  c_time TIME(6),
  c_year YEAR,
  c_json JSON,
  c_bit BIT(13),
  c_enum ENUM('a','b','c'),
  c_set SET('x','y','z'),
  c_geo GEOMETRY NULL,
  c_tiny TINYINT,
  c_ubig BIGINT UNSIGNED,
  c_gen_v INT AS (id * 2) VIRTUAL,
  c_gen_s VARCHAR(60) AS (CONCAT(c_utf8, '!')) PERSISTENT,
  PRIMARY KEY (id),
  UNIQUE KEY u_bin (c_bin),
  KEY k_dt (c_datetime),
  KEY k_gen (c_gen_s),
  FULLTEXT KEY ft (c_text)
) ENGINE=InnoDB AUTO_INCREMENT=1000 COMMENT='every type';

INSERT INTO types (c_null, c_empty, c_utf8, c_latin1, c_bin, c_blob, c_text, c_dec, c_float, c_double,
  c_date, c_datetime, c_ts, c_time, c_year, c_json, c_bit, c_enum, c_set, c_geo, c_tiny, c_ubig) VALUES
 (NULL, '', 'emoji 🧊 and ünïcødé', 'caf\xe9 ok', 0x00FF275C0A0D1A, 0x000102030405FEFF, 'line1\nline2\ttab \\ backslash '' quote',
  '12345678901234567890123456789012345.123456789012345678901234567891', 0.1, 0.1,
  '0000-00-00', '0000-00-00 00:00:00.000000', '1970-01-01 00:00:01.001', '-838:59:59.000000', 1901,
  '{"a": [1, 2.5, "x"], "b": null}', b'1010101010101', 'b', 'x,z', ST_GeomFromText('POLYGON((0 0,10 0,10 10,0 10,0 0))', 4326), -128, 18446744073709551615),
 ('', NULL, 'plain', NULL, NULL, NULL, NULL, '-0.000000000000000000000000000001', 3.4028235e38, -2.2250738585072014e-308,
  '2024-02-29', '9999-12-31 23:59:59.999999', '2038-01-19 03:14:07.999', '838:59:59.999999', 2155,
  '[]', b'0', 'c', '', ST_GeomFromText('POINT(1.5 -2.25)'), 127, 0),
 ('x', 'y', 'zero float', 'Z', X'', '', '', '0', 1.17549435e-38, 4.9406564584124654e-324,
  '1000-01-01', '2020-02-30 12:00:00', NULL, '00:00:00', 0,
  NULL, NULL, 'a', 'x,y,z', NULL, 0, 1);
-- An invalid ENUM value (stored as the empty error value) and a zero date in a TIMESTAMP.
INSERT INTO types (c_enum, c_ts, c_bin) VALUES ('nope', '0000-00-00 00:00:00', 0x01);

CREATE TABLE pairs (
  a INT NOT NULL,
  b VARCHAR(20) NOT NULL,
  v INT,
  note VARCHAR(100),
  PRIMARY KEY (a, b),
  KEY by_v (v)
) ENGINE=InnoDB;
INSERT INTO pairs SELECT seq DIV 3, CONCAT('k', seq MOD 3), seq MOD 1000, REPEAT(CHAR(65 + seq MOD 26), 40 + seq MOD 50) FROM seq_1_to_60000;

CREATE TABLE wide (
  id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  payload LONGBLOB NOT NULL,
  label VARCHAR(30),
  KEY by_label (label)
) ENGINE=InnoDB ROW_FORMAT=DYNAMIC;
INSERT INTO wide SELECT seq, RANDOM_BYTES(1024), CONCAT('row ', seq) FROM seq_1_to_6000;
INSERT INTO wide VALUES (100000, REPEAT(UNHEX('00FF'), 1500000), 'three megabytes');

CREATE TABLE nokey (x INT, y TEXT) ENGINE=InnoDB;
INSERT INTO nokey VALUES (1, 'dup'), (1, 'dup'), (2, NULL), (NULL, NULL);

CREATE TABLE legacy (id INT PRIMARY KEY, t VARCHAR(20)) ENGINE=MyISAM;
INSERT INTO legacy VALUES (1, 'myisam'), (2, 'rows');

CREATE TABLE parts (id INT NOT NULL, y INT NOT NULL, PRIMARY KEY (id, y))
  PARTITION BY RANGE (y) (PARTITION p0 VALUES LESS THAN (2000), PARTITION p1 VALUES LESS THAN MAXVALUE);
INSERT INTO parts VALUES (1, 1999), (2, 2000), (3, 2024);

CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(20) CHECK (name <> '')) ENGINE=InnoDB;
CREATE TABLE child (
  id INT PRIMARY KEY AUTO_INCREMENT,
  parent_id INT,
  CONSTRAINT fk_parent FOREIGN KEY (parent_id) REFERENCES parent (id) ON DELETE CASCADE
) ENGINE=InnoDB;
INSERT INTO parent VALUES (1, 'one'), (2, 'two');
INSERT INTO child (parent_id) VALUES (1), (2), (2);

CREATE TABLE places (id INT PRIMARY KEY, pt POINT NOT NULL, SPATIAL KEY sp (pt)) ENGINE=InnoDB;
INSERT INTO places VALUES (1, POINT(1, 2)), (2, POINT(-3.5, 4.25));

CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
DELIMITER //
CREATE PROCEDURE fill_note(IN n INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    UPDATE pairs SET note = CONCAT(note, ';') WHERE a = i;
    SET i = i + 1;
  END WHILE;
END//
DELIMITER ;

-- Views on views, named so that name order is not dependency order.
CREATE VIEW z_base AS SELECT id, double_it(id) AS twice FROM types;
CREATE VIEW m_mid AS SELECT id, twice FROM z_base WHERE twice > 0;
CREATE VIEW a_top AS SELECT m.id, p.name FROM m_mid m JOIN parent p ON p.id = m.id;

-- Two triggers on one event, in an explicit order, one under a special sql_mode.
CREATE TRIGGER pairs_bi BEFORE INSERT ON pairs FOR EACH ROW SET NEW.note = COALESCE(NEW.note, 'default');
SET SESSION sql_mode = 'ANSI_QUOTES,PIPES_AS_CONCAT';
CREATE TRIGGER child_ai AFTER INSERT ON child FOR EACH ROW UPDATE parent SET name = name || '+' WHERE id = NEW.parent_id;
SET SESSION sql_mode = '';
CREATE TRIGGER child_ai2 AFTER INSERT ON child FOR EACH ROW FOLLOWS child_ai UPDATE parent SET name = name WHERE id = NEW.parent_id;

CREATE EVENT nightly ON SCHEDULE EVERY 1 DAY STARTS '2030-01-01 03:00:00' DISABLE DO DELETE FROM nokey WHERE x IS NULL;
"#;

/// Everything a restore must reproduce, with the database's own name replaced so a
/// copy under another name compares equal.
pub fn describe(db: &str) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let norm = |s: String| s.replace(&format!("`{db}`."), "`DB`.");
    m.insert(
        "database".into(),
        sql(None, &format!("SELECT DEFAULT_CHARACTER_SET_NAME, DEFAULT_COLLATION_NAME FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{db}';")),
    );
    let tables = sql(
        None,
        &format!("SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES WHERE TABLE_SCHEMA='{db}' ORDER BY 1;"),
    );
    for line in tables.lines() {
        let (name, ttype) = line.split_once('\t').unwrap();
        if ttype == "VIEW" {
            m.insert(
                format!("view {name}"),
                norm(sql(Some(db), &format!("SHOW CREATE VIEW `{name}`;"))),
            );
            continue;
        }
        m.insert(
            format!("table {name} create"),
            sql(Some(db), &format!("SHOW CREATE TABLE `{name}`;")),
        );
        m.insert(
            format!("table {name} checksum"),
            sql(Some(db), &format!("CHECKSUM TABLE `{name}` EXTENDED;"))
                .replace(&format!("{db}."), "DB."),
        );
        m.insert(
            format!("table {name} rows"),
            sql(Some(db), &format!("SELECT COUNT(*) FROM `{name}`;")),
        );
    }
    for (kind, list) in [
        ("TRIGGER", format!("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}'")),
        ("PROCEDURE", format!("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{db}' AND ROUTINE_TYPE='PROCEDURE'")),
        ("FUNCTION", format!("SELECT ROUTINE_NAME FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA='{db}' AND ROUTINE_TYPE='FUNCTION'")),
        ("EVENT", format!("SELECT EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA='{db}'")),
    ] {
        for name in sql(None, &format!("{list};")).lines() {
            let mut shown = sql(Some(db), &format!("SHOW CREATE {kind} `{name}`;"));
            if kind == "TRIGGER" {
                // The last column is the creation time, which a restore cannot keep.
                let cols: Vec<&str> = shown.trim_end().split('\t').collect();
                shown = cols[..cols.len() - 1].join("\t");
            }
            m.insert(format!("{} {name}", kind.to_lowercase()), norm(shown));
        }
    }
    let order = sql(
        None,
        &format!("SELECT TRIGGER_NAME, ACTION_ORDER FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA='{db}' ORDER BY 1;"),
    );
    m.insert("trigger order".into(), order);
    m
}

pub(crate) fn assert_same_db(source: &str, copy: &str) {
    let (a, b) = (describe(source), describe(copy));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "object lists differ"
    );
    for (k, v) in &a {
        assert_eq!(v, &b[k], "{k} differs between {source} and {copy}");
    }
}

/// `freezer thaw SITE --db URL-of-db` plus `extra` flags.
fn thaw_db(repo: &TestRepo, site: &str, db: &str, extra: &[&str]) -> std::process::Output {
    let url = db_url(db);
    let mut args = vec!["thaw", site, "--repo", &repo.url, "--db", &url];
    args.extend(extra);
    freezer(&args)
}

pub fn freeze_db(repo: &TestRepo, site: &str, db: &str) -> serde_json::Value {
    // Small chunks, so the fixture's tables span many of them.
    json(&freezer(&[
        "freeze",
        site,
        "--repo",
        &repo.url,
        "--db",
        &db_url(db),
        "--chunk-size",
        "256K",
        "--json",
    ]))
}

#[test]
fn fixture_round_trips_exactly_through_local_and_garage() {
    let src = unique("fx").replace('-', "_");
    fixture(&src);
    for repo in TestRepo::both() {
        let repo = repo.init();
        let report = freeze_db(&repo, "shop", &src);
        let d = &report["databases"][0];
        assert_eq!(d["tables"], 9, "{report}");
        assert!(
            d["chunks"].as_u64().unwrap() > 9,
            "large tables are chunked: {report}"
        );
        let copy = unique("fxcopy").replace('-', "_");
        let out = thaw_db(&repo, "shop", &copy, &["--json"]);
        let r = json(&out);
        assert_eq!(r["databases"][0]["rows"], d["rows"]);
        assert_same_db(&src, &copy);

        // A second thaw into the now non-empty database is refused, and --replace works.
        let again = thaw_db(&repo, "shop", &copy, &[]);
        assert_eq!(again.status.code(), Some(7), "{}", stderr(&again));
        sql(Some(&copy), "DELETE FROM pairs WHERE a < 100;");
        assert_ok(&thaw_db(&repo, "shop", &copy, &["--replace"]));
        assert_same_db(&src, &copy);
        drop_db(&copy);
    }
    drop_db(&src);
}

#[test]
fn unchanged_chunks_are_not_uploaded_again() {
    let src = unique("inc").replace('-', "_");
    fixture(&src);
    let repo = TestRepo::local().init();
    let first = freeze_db(&repo, "inc", &src);
    let unchanged = freeze_db(&repo, "inc", &src);
    assert_eq!(
        unchanged["databases"][0]["chunks"],
        first["databases"][0]["chunks"]
    );
    // Nothing but the dump's config (it records when the snapshot was taken) and its
    // image manifest is new.
    assert_eq!(unchanged["blobs_uploaded"], 2, "{unchanged}");

    // Rows inserted in the middle of a large table, one updated, one deleted: most chunks
    // keep their boundaries and are reused.
    sql(
        Some(&src),
        "INSERT INTO pairs VALUES (10000, 'new', 1, 'inserted'); UPDATE pairs SET v = -1 WHERE a = 15000 AND b = 'k0'; DELETE FROM pairs WHERE a = 5000;",
    );
    let changed = freeze_db(&repo, "inc", &src);
    let total = first["bytes_uploaded"].as_u64().unwrap();
    let moved = changed["bytes_uploaded"].as_u64().unwrap();
    assert!(
        moved * 10 < total,
        "three changed rows uploaded {moved} of {total} bytes: {changed}"
    );
    let copy = unique("inccopy").replace('-', "_");
    assert_ok(&thaw_db(&repo, "inc", &copy, &[]));
    assert_same_db(&src, &copy);
    drop_db(&copy);
    drop_db(&src);
}

#[test]
fn a_freeze_under_concurrent_transfers_is_consistent() {
    let db = unique("bank").replace('-', "_");
    drop_db(&db);
    sql(None, &format!("CREATE DATABASE `{db}`;"));
    sql(
        Some(&db),
        r#"
CREATE TABLE acct (id INT PRIMARY KEY, bal BIGINT NOT NULL) ENGINE=InnoDB;
CREATE TABLE ledger (id INT AUTO_INCREMENT PRIMARY KEY, amount INT) ENGINE=InnoDB;
INSERT INTO acct SELECT seq, 1000 FROM seq_1_to_1000;
DELIMITER //
CREATE PROCEDURE churn(IN n INT)
BEGIN
  DECLARE i INT DEFAULT 0;
  WHILE i < n DO
    START TRANSACTION;
    UPDATE acct SET bal = bal - 7 WHERE id = 1 + (i MOD 1000);
    INSERT INTO ledger (amount) VALUES (7);
    UPDATE acct SET bal = bal + 7 WHERE id = 1000 - (i MOD 1000);
    COMMIT;
    SET i = i + 1;
  END WHILE;
END//
DELIMITER ;
"#,
    );
    // Transfers keep the total at 1,000,000 and add one ledger row each; a consistent
    // snapshot sees the total exactly and ledger rows equal to completed transfers.
    let mut writer = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-P3306",
            "-ufreezer",
            &db,
            "-e",
            "CALL churn(20000);",
        ])
        .env("MYSQL_PWD", password())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let repo = TestRepo::local().init();
    let mut seen_changes = 0;
    for _ in 0..3 {
        freeze_db(&repo, "bank", &db);
        let copy = unique("bankcopy").replace('-', "_");
        assert_ok(&thaw_db(&repo, "bank", &copy, &[]));
        let out = sql(
            Some(&copy),
            "SELECT SUM(bal), (SELECT COUNT(*) FROM ledger), SUM(bal <> 1000) FROM acct;",
        );
        let cols: Vec<&str> = out.trim().split('\t').collect();
        assert_eq!(
            cols[0], "1000000",
            "money appeared or vanished in the snapshot: {out}"
        );
        seen_changes += (cols[2] != "0") as u32;
        drop_db(&copy);
    }
    let _ = writer.kill();
    let _ = writer.wait();
    assert!(
        seen_changes > 0,
        "the freezes did not overlap the transfers"
    );
    drop_db(&db);
}

#[test]
fn a_damaged_chunk_is_refused_before_the_target_is_touched() {
    let src = unique("dmg").replace('-', "_");
    fixture(&src);
    let repo = TestRepo::local().init();
    freeze_db(&repo, "dmg", &src);
    // Flip a byte in the largest blob (a data chunk of the wide table).
    let blobs = repo.local.as_ref().unwrap().join("blobs/sha256");
    let largest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut data = std::fs::read(&largest).unwrap();
    let mid = data.len() / 2;
    data[mid] ^= 0x20;
    std::fs::write(&largest, data).unwrap();

    let copy = unique("dmgcopy").replace('-', "_");
    let out = thaw_db(&repo, "dmg", &copy, &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(largest.file_name().unwrap().to_str().unwrap()),
        "{}",
        stderr(&out)
    );
    let exists = sql(
        None,
        &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{copy}';"),
    );
    assert_eq!(exists.trim(), "0", "the target database was created");
    drop_db(&src);
}

#[test]
fn the_stock_client_restores_a_dump_by_following_spec_md() {
    let src = unique("manual").replace('-', "_");
    fixture(&src);
    let repo = TestRepo::local().init();
    freeze_db(&repo, "manual", &src);
    let copy = unique("manualcopy").replace('-', "_");
    // The script in SPEC.md §10, verbatim.
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md")).unwrap();
    let script = spec
        .split("```sh manual-restore\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("SPEC.md has the manual restore script");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("REPO", repo.local.as_ref().unwrap())
        .env("SITE", "manual")
        .env("DB", &copy)
        .env("MYSQL_PWD", password())
        .env("MYSQL_HOST", "127.0.0.1")
        .env("MYSQL_USER", "freezer")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "manual restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same_db(&src, &copy);
    drop_db(&copy);
    drop_db(&src);
}

#[test]
fn database_errors_say_what_failed() {
    let repo = TestRepo::local().init();
    // Unreachable server.
    let out = freezer(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--db",
        "mysql://u:p@127.0.0.1:1/db",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(":p@"),
        "the password was printed: {}",
        stderr(&out)
    );
    // Wrong password: the server says so; the password is not printed.
    let url = db_url("mysql").replace(&password(), "wrong-secret");
    let out = freezer(&["freeze", "x", "--repo", &repo.url, "--db", &url]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("wrong-secret"), "{}", stderr(&out));
    // A database that does not exist.
    let out = freezer(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--db",
        &db_url("no_such_database_here"),
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no_such_database_here"),
        "{}",
        stderr(&out)
    );
    // A user without LOCK TABLES: the privilege is named.
    let db = unique("priv").replace('-', "_");
    drop_db(&db);
    sql(
        None,
        &format!(
            "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY); \
         CREATE USER IF NOT EXISTS 'freezer_ro'@'%' IDENTIFIED BY 'ro-pass'; \
         GRANT SELECT, SHOW VIEW ON `{db}`.* TO 'freezer_ro'@'%';"
        ),
    );
    let out = freezer(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--db",
        &format!("mysql://freezer_ro:ro-pass@127.0.0.1:3306/{db}"),
    ]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("LOCK TABLES"), "{}", stderr(&out));
    assert!(!stderr(&out).contains("ro-pass"), "{}", stderr(&out));
    drop_db(&db);
    // Each failed run left its record in the repository (SPEC.md §15), saying what
    // failed, and none holds a password.
    let dir = repo.local.as_ref().unwrap().join("runs/x");
    let (names, records): (Vec<String>, Vec<String>) = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(e.path()).unwrap())
        })
        .unzip();
    assert_eq!(records.len(), 4, "{records:#?}");
    let all = records.join("\n");
    for code in ["-freeze-3-", "-freeze-6-"] {
        assert!(names.iter().any(|n| n.contains(code)), "{names:?}");
    }
    assert!(all.contains("no_such_database_here"), "{all}");
    assert!(all.contains("LOCK TABLES"), "{all}");
    for secret in ["wrong-secret", "ro-pass", ":p@", password().as_str()] {
        assert!(!all.contains(secret), "a run record holds a secret: {all}");
    }
}

#[test]
fn rows_longer_than_max_allowed_packet_round_trip() {
    let db = unique("big").replace('-', "_");
    drop_db(&db);
    // A 20 MB value only exists on a server that allowed it when it was written.
    sql(None, "SET GLOBAL max_allowed_packet = 67108864;");
    sql(None, &format!(
        "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY, body LONGTEXT CHARACTER SET utf8mb4, ts TIMESTAMP NOT NULL DEFAULT '2001-02-03 04:05:06' ON UPDATE CURRENT_TIMESTAMP); \
         INSERT INTO `{db}`.t (id, body) VALUES (1, REPEAT('ä€🧊x', 2000000)), (2, 'small');"
    ));
    sql(None, "SET GLOBAL max_allowed_packet = 16777216;");
    let repo = TestRepo::local().init();
    freeze_db(&repo, "big", &db);
    let copy = unique("bigcopy").replace('-', "_");
    // The target cannot hold the value: said before anything is loaded.
    let out = thaw_db(&repo, "big", &copy, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("max_allowed_packet"),
        "{}",
        stderr(&out)
    );
    let exists = sql(
        None,
        &format!("SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME='{copy}';"),
    );
    assert_eq!(exists.trim(), "0");
    // Raised, the row loads in statements of about 1 MiB each, exactly.
    sql(None, "SET GLOBAL max_allowed_packet = 67108864;");
    let out = thaw_db(&repo, "big", &copy, &[]);
    sql(None, "SET GLOBAL max_allowed_packet = 16777216;");
    assert_ok(&out);
    assert_same_db(&db, &copy);
    drop_db(&copy);
    drop_db(&db);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn ddl_during_a_dump_is_detected_and_never_recorded() {
    let db = unique("ddl").replace('-', "_");
    drop_db(&db);
    sql(None, &format!("CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY, v INT); INSERT INTO `{db}`.t VALUES (1, 1), (2, 2);"));
    let repo = TestRepo::local().init();
    // A migration that lands once (the test hook runs it after each snapshot is taken; the
    // second time it changes nothing): the dump is taken again and matches the new schema.
    let out = freezer_env(
        &[
            "freeze",
            "ddl",
            "--repo",
            &repo.url,
            "--db",
            &db_url(&db),
            "--json",
        ],
        &[(
            "FREEZER_FAULT_SQL_AFTER_SNAPSHOT",
            "ALTER TABLE t ADD COLUMN IF NOT EXISTS added INT DEFAULT 7",
        )],
    );
    let report = json(&out);
    let warnings = report["warnings"].to_string();
    assert!(warnings.contains("changed during the dump"), "{report}");
    let copy = unique("ddlcopy").replace('-', "_");
    assert_ok(&thaw_db(&repo, "ddl", &copy, &[]));
    assert_same_db(&db, &copy);
    drop_db(&copy);

    // Schema changes that keep coming: the freeze fails (exit 7) and records nothing.
    let before = json(&freezer(&[
        "snapshots",
        "ddl",
        "--repo",
        &repo.url,
        "--json",
    ]));
    let out = freezer_env(
        &["freeze", "ddl", "--repo", &repo.url, "--db", &db_url(&db)],
        &[(
            "FREEZER_FAULT_SQL_AFTER_SNAPSHOT",
            "EXECUTE IMMEDIATE CONCAT('ALTER TABLE t COMMENT = ', QUOTE(UUID()))",
        )],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("changed during the dump, twice"),
        "{}",
        stderr(&out)
    );
    let after = json(&freezer(&[
        "snapshots",
        "ddl",
        "--repo",
        &repo.url,
        "--json",
    ]));
    assert_eq!(after, before, "a snapshot was recorded");
    drop_db(&db);
}

#[test]
fn accounts_and_their_grants_come_along_on_request() {
    let db = unique("acct").replace('-', "_");
    let user = unique("app").replace('-', "_");
    drop_db(&db);
    sql(None, &format!(
        "CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY); INSERT INTO `{db}`.t VALUES (1);
         CREATE USER '{user}'@'%' IDENTIFIED BY 'app-pass-123';
         GRANT SELECT, INSERT ON `{db}`.* TO '{user}'@'%';
         GRANT PROCESS ON *.* TO '{user}'@'%';"
    ));
    let repo = TestRepo::local().init();
    let out = freezer(&[
        "freeze",
        "acct",
        "--repo",
        &repo.url,
        "--db",
        &db_url(&db),
        "--with-users",
    ]);
    assert_ok(&out);
    assert!(
        !stderr(&out).contains("app-pass") && !String::from_utf8_lossy(&out.stdout).contains("*"),
        "{}",
        stderr(&out)
    );
    sql(None, &format!("DROP USER '{user}'@'%';"));

    // Without --with-users no account is created.
    let copy = unique("acctcopy").replace('-', "_");
    assert_ok(&thaw_db(&repo, "acct", &copy, &[]));
    let n = sql(
        None,
        &format!("SELECT COUNT(*) FROM mysql.user WHERE User = '{user}';"),
    );
    assert_eq!(n.trim(), "0");
    drop_db(&copy);

    // With it: the account (same password) and its grants, on the target database only.
    let r = json(&thaw_db(&repo, "acct", &copy, &["--with-users", "--json"]));
    assert_eq!(r["databases"][0]["accounts"][0], format!("'{user}'@'%'"));
    let grants = sql(None, &format!("SHOW GRANTS FOR '{user}'@'%';"));
    assert!(
        grants.contains(&format!("GRANT SELECT, INSERT ON `{copy}`.*")),
        "{grants}"
    );
    assert!(
        !grants.contains("PROCESS"),
        "a global privilege was copied: {grants}"
    );
    let login = Command::new("mariadb")
        .args([
            "-h127.0.0.1",
            "-P3306",
            &format!("-u{user}"),
            &copy,
            "-N",
            "-e",
            "SELECT COUNT(*) FROM t",
        ])
        .env("MYSQL_PWD", "app-pass-123")
        .output()
        .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), "1");
    sql(None, &format!("DROP USER '{user}'@'%';"));
    drop_db(&copy);
    drop_db(&db);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn a_thaw_killed_halfway_continues_where_it_stopped() {
    let src = unique("half").replace('-', "_");
    fixture(&src);
    let repo = TestRepo::local().init();
    let frozen = freeze_db(&repo, "half", &src);
    let chunks = frozen["databases"][0]["chunks"].as_u64().unwrap();
    let thaw_aborted = |copy: &str, fault: (&str, &str)| {
        let out = freezer_env(
            &["thaw", "half", "--repo", &repo.url, "--db", &db_url(copy)],
            &[fault],
        );
        assert!(!out.status.success(), "the fault hook did not fire");
        assert!(stderr(&out).contains("fault injection"), "{}", stderr(&out));
    };

    // Killed after 5 chunks (two connections: 5 or 6 are committed): the same command
    // again loads only the others, and the copy is exact.
    let copy = unique("halfcopy").replace('-', "_");
    thaw_aborted(&copy, ("FREEZER_FAULT_ABORT_AFTER_CHUNKS", "5"));
    let marked = sql(
        Some(&copy),
        "SELECT COUNT(*) FROM _freezer_thaw_progress WHERE step = 'chunk';",
    );
    let marked: u64 = marked.trim().parse().unwrap();
    assert!((5..=6).contains(&marked), "{marked} chunks marked");
    let again = thaw_db(&repo, "half", &copy, &["--json"]);
    let r = json(&again);
    assert_eq!(r["databases"][0]["resumed_chunks"], marked, "{r:#}");
    assert!(marked < chunks, "{marked} of {chunks}");
    assert_same_db(&src, &copy);
    let left = sql(
        None,
        &format!("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{copy}' AND TABLE_NAME = '_freezer_thaw_progress';"),
    );
    assert_eq!(left.trim(), "0", "the progress record is dropped");
    // Complete now: a further run refuses to load over it.
    let more = thaw_db(&repo, "half", &copy, &[]);
    assert_eq!(more.status.code(), Some(7), "{}", stderr(&more));
    drop_db(&copy);

    // Killed between an index or object statement (indexes, foreign keys, routines,
    // views, triggers) and its progress mark: the run again finds it done.
    for n in ["2", "7"] {
        let copy = unique("halfddl").replace('-', "_");
        thaw_aborted(&copy, ("FREEZER_FAULT_ABORT_BEFORE_MARK", n));
        let again = thaw_db(&repo, "half", &copy, &["--json"]);
        assert_eq!(json(&again)["databases"][0]["resumed_chunks"], chunks);
        assert_same_db(&src, &copy);
        drop_db(&copy);
    }

    // An interrupted thaw of another snapshot is not continued with this one's rows.
    let copy = unique("halfother").replace('-', "_");
    thaw_aborted(&copy, ("FREEZER_FAULT_ABORT_AFTER_CHUNKS", "3"));
    freeze_db(&repo, "other", &src);
    let other = thaw_db(&repo, "other", &copy, &[]);
    assert_eq!(other.status.code(), Some(7), "{}", stderr(&other));
    assert!(
        stderr(&other).contains("interrupted thaw of another snapshot"),
        "{}",
        stderr(&other)
    );
    // --replace starts over.
    assert_ok(&thaw_db(&repo, "other", &copy, &["--replace"]));
    assert_same_db(&src, &copy);
    drop_db(&copy);
    drop_db(&src);
}

#[test]
fn a_site_with_two_databases_maps_each_to_its_target() {
    let (a, b) = (
        unique("twoa").replace('-', "_"),
        unique("twob").replace('-', "_"),
    );
    for (db, v) in [(&a, 1), (&b, 2)] {
        drop_db(db);
        sql(None, &format!("CREATE DATABASE `{db}`; CREATE TABLE `{db}`.t (id INT PRIMARY KEY); INSERT INTO `{db}`.t VALUES ({v});"));
    }
    let repo = TestRepo::local().init();
    assert_ok(&freezer(&[
        "freeze",
        "two",
        "--repo",
        &repo.url,
        "--db",
        &db_url(&a),
        "--db",
        &db_url(&b),
    ]));
    let (ca, cb) = (
        unique("twoca").replace('-', "_"),
        unique("twocb").replace('-', "_"),
    );
    // One bare --db is ambiguous with two databases.
    let out = thaw_db(&repo, "two", &ca, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("SOURCE=URL"), "{}", stderr(&out));
    let (fa, fb) = (
        format!("{a}={}", db_url(&ca)),
        format!("{b}={}", db_url(&cb)),
    );
    assert_ok(&freezer(&[
        "thaw", "two", "--repo", &repo.url, "--db", &fa, "--db", &fb,
    ]));
    assert_eq!(sql(Some(&ca), "SELECT id FROM t;").trim(), "1");
    assert_eq!(sql(Some(&cb), "SELECT id FROM t;").trim(), "2");
    for db in [&a, &b, &ca, &cb] {
        drop_db(db);
    }
}
