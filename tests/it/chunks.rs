//! Stable chunks (SPEC.md §10.2): an unchanged database dumps to byte-identical data chunks
//! night after night, also after its server restarts, so a nightly freeze uploads only the
//! database's config and manifest. The database: generated rows in four tables — an
//! integer key, BLOBs of varying size, no key at all, a composite key — on a MariaDB
//! server of its own (a container, so the test can restart it).
//!
//! The same server is killed in the middle of a thaw: the thaw run again continues from
//! the chunks that were in (SPEC.md §10.5).

use crate::common::*;
use crate::hydrated::*;

const PASSWORD: &str = "gen-pw-3";

/// A MariaDB container that is removed when dropped.
struct Server {
    host: String,
    name: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = docker_try(&self.host, &["rm", "-f", "-v", &self.name]);
    }
}

impl Server {
    /// A MariaDB container of its own, holding the [`GENERATE`]d database `gen`.
    fn generated(host: &str, name: &str) -> Server {
        let server = Server {
            host: host.to_string(),
            name: unique(name),
        };
        let pw = format!("MARIADB_PASSWORD={PASSWORD}");
        #[rustfmt::skip]
        docker(host, &[
            "run", "-d", "--name", &server.name, "-e", "MARIADB_ROOT_PASSWORD=root-gen",
            "-e", "MARIADB_DATABASE=gen", "-e", "MARIADB_USER=gen", "-e", &pw, &mariadb_image(),
        ]);
        server.sql("SELECT 1");
        server.sql(GENERATE);
        server
    }
    /// `freezer freeze gen --db … --chunk-size 256K --json` into `repo`.
    fn freeze(&self, repo: &TestRepo) -> std::process::Output {
        freezer(&[
            "freeze",
            "gen",
            "--db",
            &self.url(),
            "--chunk-size",
            "256K",
            "--repo",
            &repo.url,
            "--json",
        ])
    }
    fn ip(&self) -> String {
        address(&self.host, &self.name)
    }
    fn sql(&self, sql: &str) -> String {
        sql_at(&self.ip(), "gen", PASSWORD, "gen", sql)
    }
    fn url(&self) -> String {
        format!("mysql://gen:{PASSWORD}@{}/gen", self.ip())
    }
}

const GENERATE: &str = "
CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(80), price DECIMAL(10,2), made DATETIME) STATS_AUTO_RECALC=0;
INSERT INTO items SELECT seq, CONCAT('item ', seq, ' ', SHA1(seq)), seq * 1.25, '2020-01-01' + INTERVAL seq MINUTE FROM seq_1_to_120000;
CREATE TABLE media (id INT PRIMARY KEY, kind VARCHAR(10), data LONGBLOB) STATS_AUTO_RECALC=0;
INSERT INTO media SELECT seq, IF(seq % 3, 'jpeg', 'png'), REPEAT(UNHEX(SHA2(seq, 256)), 1 + (seq * 7919) % 700) FROM seq_1_to_1500;
CREATE TABLE log (at DATETIME, level VARCHAR(8), message TEXT) STATS_AUTO_RECALC=0;
INSERT INTO log SELECT '2021-06-01' + INTERVAL seq SECOND, ELT(1 + seq % 3, 'info', 'warn', 'error'), CONCAT('event ', seq, ' ', MD5(seq)) FROM seq_1_to_80000;
CREATE TABLE tags (item_id INT, tag VARCHAR(20), weight DOUBLE, PRIMARY KEY (item_id, tag)) STATS_AUTO_RECALC=0;
INSERT INTO tags SELECT 1 + seq DIV 3, CONCAT('tag', seq % 3, '-', seq % 97), seq / 7 FROM seq_0_to_89999;
";

#[test]
fn an_unchanged_database_re_freezes_without_uploading_a_chunk_also_after_a_restart() {
    let a = host_a();
    let server = Server::generated(&a, "chunks");
    let repo = TestRepo::local().init();
    let freeze = || {
        let out = server.freeze(&repo);
        assert_ok(&out);
        json(&out)
    };
    let first = freeze();
    let chunks = first["databases"][0]["chunks"].as_u64().unwrap();
    assert!(
        chunks > 40,
        "the test database should make many chunks: {first:#}"
    );
    let second = freeze();
    // The database's config and image manifest, nothing else.
    assert_eq!(second["blobs_uploaded"], 2, "{second:#}");
    assert_eq!(second["databases"][0]["chunks"], chunks, "{second:#}");

    // A restart: the server reads its statistics anew; the chunks stay.
    docker(&a, &["restart", &server.name]);
    server.sql("SELECT 1"); // retried until the server is back
    let third = freeze();
    assert_eq!(third["blobs_uploaded"], 2, "{third:#}");
    assert_eq!(third["databases"][0]["chunks"], chunks, "{third:#}");

    // Three changed rows in three tables: their chunks (one each; an appended row may
    // also end the last chunk of the keyless table elsewhere), the config and manifest.
    server.sql("UPDATE items SET price = 1 WHERE id = 50000; UPDATE media SET kind = 'gif' WHERE id = 700; INSERT INTO log VALUES (NOW(), 'info', 'one more')");
    let fourth = freeze();
    let uploaded = fourth["blobs_uploaded"].as_u64().unwrap();
    assert!((5..=7).contains(&uploaded), "{fourth:#}");
}

#[test]
fn a_thaw_whose_server_is_killed_continues_from_the_chunks_that_were_in() {
    let a = host_a();
    let server = Server::generated(&a, "resume");
    let sums = "CHECKSUM TABLE items, media, log, tags EXTENDED";
    let before = server.sql(sums);
    let repo = TestRepo::local().init();
    let frozen = server.freeze(&repo);
    assert_ok(&frozen);
    let chunks = json(&frozen)["databases"][0]["chunks"].as_u64().unwrap();
    server.sql("DROP DATABASE gen");

    // The thaw, killed with its server once 20 chunks are in.
    let thaw = || {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_freezer"));
        cmd.args(["thaw", "gen", "--repo", &repo.url, "--db", &server.url()])
            .env("FREEZER_CONFIG", "/dev/null")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        cmd
    };
    let running = thaw().spawn().unwrap();
    let marks = "SELECT COUNT(*) FROM _freezer_thaw_progress WHERE step = 'chunk'";
    loop {
        let n: u64 = server.sql(marks).parse().unwrap();
        if n >= 20 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    docker(&a, &["kill", &server.name]);
    let out = running.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the load ended before the kill: {err}"
    );
    assert!(
        err.contains("run the same thaw again to continue where it stopped"),
        "{err}"
    );

    // Started again (crash recovery rolls back the chunks in flight): the chunks in are
    // exactly the marked ones; the thaw run again loads only the others.
    docker(&a, &["start", &server.name]);
    let marked: u64 = server.sql(marks).parse().unwrap();
    assert!(marked >= 20 && marked < chunks, "{marked} of {chunks}");
    let mut again = thaw();
    again.arg("--json");
    let out = again.output().unwrap();
    assert_ok(&out);
    let report = json(&out);
    assert_eq!(
        report["databases"][0]["resumed_chunks"], marked,
        "{report:#}"
    );
    assert_eq!(report["databases"][0]["chunks"], chunks, "{report:#}");
    assert_eq!(server.sql(sums), before);
    let left = server.sql(
        "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_NAME = '_freezer_thaw_progress'",
    );
    assert_eq!(left, "0", "the progress record is dropped once verified");
}
