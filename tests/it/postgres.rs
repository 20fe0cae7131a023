//! PostgreSQL dehydrated snapshots against the real server scripts/services starts
//! (FREEZER_TEST_PG_URL): a database with every kind of object (examples/pg-fixture.sql)
//! round-trips exactly through a local and a Garage repository; nightly freezes of an
//! unchanged database upload nothing but the config and manifest.

use std::path::Path;
use std::process::{Command, Output};

use crate::common::*;

/// The test server: (URL without the password, the password).
fn server() -> (String, String) {
    services();
    let url = std::env::var("FREEZER_TEST_PG_URL")
        .expect("FREEZER_TEST_PG_URL is set by scripts/services");
    let rest = url.strip_prefix("postgres://").unwrap();
    let (cred, host) = rest.rsplit_once('@').unwrap();
    let (user, pass) = cred.split_once(':').unwrap();
    (format!("postgres://{user}@{host}"), pass.to_string())
}

/// A database of the test server, dropped when the test ends.
pub struct PgDb {
    pub name: String,
}

impl PgDb {
    pub fn new(prefix: &str) -> PgDb {
        let name = unique(prefix).replace('-', "_");
        psql("postgres", &format!("CREATE DATABASE {name}"));
        PgDb { name }
    }

    /// A database holding examples/pg-fixture.sql.
    pub fn fixture(prefix: &str) -> PgDb {
        let db = PgDb::new(prefix);
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pg-fixture.sql");
        psql_file(&db.name, &file);
        db
    }

    pub fn url(&self) -> String {
        format!("{}/{}", server().0, self.name)
    }

    pub fn sql(&self, sql: &str) -> String {
        psql(&self.name, sql)
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql_try(
            "postgres",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

fn psql_cmd(db: &str) -> Command {
    let (url, pass) = server();
    psql_at(&url, &pass, db)
}

/// psql on database `db` of the server at `url` (postgres://USER@HOST:PORT).
/// Waits up to a minute for the PostgreSQL at `url` (in container `name`) to accept
/// `SELECT 1` on `db`.
pub fn wait_for_psql(url: &str, pass: &str, db: &str, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !psql_at(url, pass, db)
        .args(["-c", "SELECT 1"])
        .output()
        .unwrap()
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "PostgreSQL in {name} did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
}

pub fn psql_at(url: &str, pass: &str, db: &str) -> Command {
    let mut c = Command::new("psql");
    c.arg(format!("{url}/{db}"))
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .env("PGPASSWORD", pass);
    c
}

pub fn psql_try(db: &str, sql: &str) -> Output {
    psql_cmd(db)
        .args(["-c", sql])
        .output()
        .expect("running psql")
}

pub fn psql(db: &str, sql: &str) -> String {
    let out = psql_try(db, sql);
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn psql_file(db: &str, file: &Path) {
    let out = psql_cmd(db)
        .arg("-f")
        .arg(file)
        .output()
        .expect("running psql");
    assert!(
        out.status.success(),
        "psql -f {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// freezer with the test server's password in FREEZER_DB_PASSWORD (never in the URL).
pub fn freezer_pg(args: &[&str]) -> Output {
    let out = freezer_env(args, &[("FREEZER_DB_PASSWORD", &server().1)]);
    for text in [
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ] {
        assert!(
            !text.contains(&server().1),
            "the database password was printed: {text}"
        );
    }
    out
}

/// What a restored database must equal: its schema as the stock pg_dump writes it
/// (without psql's random `\restrict` key), every table's and materialized view's rows
/// (count and an ordered digest of their text), every sequence's value.
pub fn facts(db: &str) -> (String, Vec<String>) {
    let (url, pass) = server();
    facts_at(&url, &pass, db)
}

/// [`facts`] of a database on the server at `url` (postgres://USER@HOST:PORT).
pub fn facts_at(url: &str, pass: &str, db: &str) -> (String, Vec<String>) {
    let psql = |sql: &str| {
        let out = psql_at(url, pass, db).args(["-c", sql]).output().unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let schema = schema_at(url, pass, db, &["--no-owner"]);
    let mut data = Vec::new();
    let relations = psql(
        "SELECT c.relkind::text || ' ' || format('%I.%I', n.nspname, c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'm', 'S') \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
    );
    for line in relations.lines() {
        let (kind, name) = line.split_once(' ').unwrap();
        let q = match kind {
            "S" => format!("SELECT last_value, is_called FROM {name}"),
            "m" => format!("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM {name} t"),
            _ => format!("SELECT count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY t::text), '')) FROM ONLY {name} t"),
        };
        data.push(format!("{name}: {}", psql(&q)));
    }
    (schema, data)
}

/// `pg_dump --schema-only` (with `extra` options) of a database on the server at `url`,
/// without psql's random `\restrict` key.
fn schema_at(url: &str, pass: &str, db: &str, extra: &[&str]) -> String {
    let out = Command::new("pg_dump")
        .arg(format!("{url}/{db}"))
        .arg("--schema-only")
        .args(extra)
        .env("PGPASSWORD", pass)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect()
}

fn round_trip(repo: &TestRepo) {
    let source = PgDb::fixture("pgsrc");
    let site = unique("pg");
    let out = freezer_pg(&[
        "freeze",
        &site,
        "--db",
        &source.url(),
        "--repo",
        &repo.url,
        "--json",
    ]);
    let report = json(&out);
    let db = &report["databases"][0];
    assert_eq!(db["database"], source.name.as_str());
    assert_eq!(db["consistency"], "exported-snapshot");
    // customers, orders, Bestellpositionen, events, the two partitions, cities, capitals,
    // cache_entries, products: every table that holds rows.
    assert_eq!(db["tables"], 10, "{report:#}");

    let target = PgDb::new("pgdst");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let out = freezer_pg(&[
        "thaw",
        &site,
        "--db",
        &target.url(),
        "--repo",
        &repo.url,
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["databases"][0]["source"], source.name.as_str());
    let (schema_a, data_a) = facts(&source.name);
    let (schema_b, data_b) = facts(&target.name);
    assert_eq!(data_a, data_b);
    assert!(data_a.len() > 15, "{data_a:#?}");
    assert_eq!(schema_a, schema_b);

    // The target now holds objects: refused without --replace, nothing changed; with
    // --replace it is loaded again.
    target.sql("CREATE TABLE extra (x int)");
    let out = freezer_pg(&["thaw", &site, "--db", &target.url(), "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("--replace"), "{}", stderr(&out));
    assert_eq!(target.sql("SELECT count(*) FROM extra"), "0");
    let out = freezer_pg(&[
        "thaw",
        &site,
        "--db",
        &target.url(),
        "--repo",
        &repo.url,
        "--replace",
    ]);
    assert_ok(&out);
    assert_eq!(facts(&target.name), (schema_a, data_a));
    // Every blob of the dump is known to the repository's own checks.
    let out = freezer(&["verify", "--repo", &repo.url]);
    assert_ok(&out);
}

/// Schemas, types, extensions, partitioned, inherited, unlogged and keyless tables,
/// identity and generated columns, NULL and '', bytea, numeric, timestamptz, arrays,
/// jsonb, NaN and infinities, sequences, views, a materialized view, functions, a
/// procedure, a trigger, comments, constraints and indexes, non-ASCII names: the
/// restored database's schema (as pg_dump writes it), rows and sequences are the source's.
#[test]
fn a_database_with_every_kind_of_object_round_trips_exactly_locally() {
    round_trip(&TestRepo::local().init());
}

#[test]
fn a_database_with_every_kind_of_object_round_trips_exactly_through_garage() {
    round_trip(&TestRepo::s3().init());
}

/// The thaw reads every table back (beside its index builds) and compares it with the
/// snapshot: a snapshot whose recorded checksum the rows do not have (intact digests, as
/// a faulty writer might leave it) fails with the table named, exit 4, and says the
/// database is partly loaded.
#[test]
fn a_thaw_whose_rows_differ_from_the_snapshot_fails_naming_the_table() {
    let repo = TestRepo::local().init();
    let source = PgDb::fixture("pgsrc");
    let site = unique("pg");
    let report = freeze_json(&site, &source, &repo, &[]);
    let id = report["snapshot"]
        .as_str()
        .expect("a snapshot id")
        .to_string();
    let (forged, table) = forge_table_checksum(repo.local.as_ref().unwrap(), &site, &id);
    let target = PgDb::new("pgdst");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let url = target.url();
    let thaw = |snapshot: String, extra: &[&str]| {
        let mut args = vec!["thaw", &snapshot, "--db", &url, "--repo", &repo.url];
        args.extend(extra);
        freezer_pg(&args)
    };
    let out = thaw(format!("{site}:{forged}"), &[]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("different contents") && err.contains(&table),
        "{err}"
    );
    assert!(
        err.contains("partly loaded") && err.contains("--replace"),
        "{err}"
    );
    // The untouched snapshot thaws and verifies.
    assert_ok(&thaw(format!("{site}:{id}"), &["--replace"]));
    assert_eq!(facts(&target.name), facts(&source.name));
}

/// `freezer freeze SITE --db DB --repo REPO --json EXTRA…`, its JSON report.
fn freeze_json(site: &str, db: &PgDb, repo: &TestRepo, extra: &[&str]) -> serde_json::Value {
    let url = db.url();
    let mut args = vec!["freeze", site, "--db", &url, "--repo", &repo.url, "--json"];
    args.extend(extra);
    json(&freezer_pg(&args))
}

/// Nightly cost: an unchanged database's next freeze uploads only its config and image
/// manifest; three changed rows upload a small part of it.
#[test]
fn an_unchanged_postgres_database_re_freezes_without_uploading_a_chunk() {
    let db = PgDb::fixture("pgnight");
    db.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, body text, n numeric); \
         INSERT INTO big SELECT i, repeat(md5(i::text), 4), i * 1.5 FROM generate_series(1, 150000) i",
    );
    let repo = TestRepo::local().init();
    let site = unique("pgn");
    let freeze = || freeze_json(&site, &db, &repo, &["--chunk-size", "256K"]);
    let first = freeze();
    let chunks = first["databases"][0]["chunks"].as_u64().unwrap();
    assert!(chunks > 10, "{first:#}");
    let second = freeze();
    assert_eq!(second["blobs_uploaded"], 2, "{second:#}");
    assert_eq!(second["databases"][0]["chunks"], chunks);

    db.sql("UPDATE big SET n = 0 WHERE id = 70000; UPDATE customers SET note = 'x' WHERE id = 5; INSERT INTO events (kind) VALUES ('one more')");
    let third = freeze();
    let total = first["bytes_uploaded"].as_u64().unwrap();
    let now = third["bytes_uploaded"].as_u64().unwrap();
    assert!(
        now * 10 < total,
        "{now} of {total} bytes uploaded: {third:#}"
    );
}

/// A large table is read on several connections at once, in key ranges whose edges are
/// chunk boundaries, so its chunks are the very ones one connection cuts: a freeze with
/// one connection after one with four uploads no chunk. The key is composite, with text
/// that COPY escapes (tab, newline, backslash, quotes, non-ASCII), as edges are passed
/// back to the server as literals; the split snapshot thaws to the same rows.
#[test]
fn a_large_table_read_in_parallel_is_cut_into_the_chunks_one_connection_cuts() {
    let db = PgDb::new("pgsplit");
    db.sql(
        "CREATE TABLE wide (name text, n int, body text, PRIMARY KEY (name, n)); \
         INSERT INTO wide SELECT (ARRAY[E'a\\tb', E'line\\nnext', E'back\\\\slash', 'it''s', \
           'é\"x', 'plain'])[1 + i % 6] || (i % 97), i, repeat(md5(i::text), 3) \
         FROM generate_series(1, 40000) i",
    );
    let repo = TestRepo::local().init();
    let site = unique("pgsplit");
    let freeze =
        |jobs: &str| freeze_json(&site, &db, &repo, &["--chunk-size", "16K", "--jobs", jobs]);
    let one = freeze("1");
    assert!(one["databases"][0].get("split").is_none(), "{one:#}");
    let chunks = one["databases"][0]["chunks"].as_u64().unwrap();
    assert!(chunks > 100, "{one:#}");
    let four = freeze("4");
    assert_eq!(
        four["databases"][0]["split"],
        serde_json::json!(["public.wide (4 parts)"]),
        "{four:#}"
    );
    assert_eq!(four["databases"][0]["chunks"], chunks, "{four:#}");
    assert_eq!(four["blobs_uploaded"], 2, "{four:#}");
    let again = freeze("1");
    assert_eq!(again["blobs_uploaded"], 2, "{again:#}");

    db.sql("UPDATE wide SET n = -n WHERE n % 1000 = 0"); // edges move: the next split still holds
    let changed = freeze("4");
    assert_eq!(changed["databases"][0]["split"][0], "public.wide (4 parts)");
    let target = PgDb::new("pgsplitcopy");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    assert_ok(&freezer_pg(&[
        "thaw",
        &site,
        "--db",
        &target.url(),
        "--repo",
        &repo.url,
    ]));
    assert_eq!(facts(&db.name), facts(&target.name));
}

/// SPEC.md §10.7's restore by hand, verbatim, with only psql, zstd and jq: the fixture
/// comes back exactly.
#[test]
fn psql_restores_a_postgres_dump_by_following_spec_md() {
    let source = PgDb::fixture("pgmanual");
    let repo = TestRepo::local().init();
    assert_ok(&freezer_pg(&[
        "freeze",
        "manual",
        "--db",
        &source.url(),
        "--repo",
        &repo.url,
    ]));
    let target = PgDb::new("pgmanualcopy");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let out = manual_restore(&repo, "manual", &target.name, None);
    assert!(
        out.status.success(),
        "manual restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(facts(&source.name), facts(&target.name));
}

/// Runs SPEC.md's PostgreSQL hand-restore script verbatim: the newest snapshot of `site`
/// in the local `repo` into a new database `db`, with `PARTS` when given.
fn manual_restore(repo: &TestRepo, site: &str, db: &str, parts: Option<&str>) -> Output {
    let spec = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/SPEC.md")).unwrap();
    let script = spec
        .split("```sh manual-restore-postgres\n")
        .nth(1)
        .and_then(|s| s.split("```").next())
        .expect("SPEC.md has the PostgreSQL manual restore script");
    let (url, pass) = server();
    let hostport = url.rsplit_once('@').unwrap().1;
    let (host, port) = hostport.split_once(':').unwrap();
    let user = url
        .strip_prefix("postgres://")
        .unwrap()
        .split('@')
        .next()
        .unwrap();
    let mut cmd = Command::new("bash");
    cmd.args(["-euo", "pipefail", "-c", script])
        .env("REPO", repo.local.as_ref().unwrap())
        .env("SITE", site)
        .env("DB", db)
        .env("PGHOST", host)
        .env("PGPORT", port)
        .env("PGUSER", user)
        .env("PGPASSWORD", pass);
    if let Some(p) = parts {
        cmd.env("PARTS", p);
    }
    cmd.output().unwrap()
}

/// Consistency: money moves between two tables (read by different connections) while
/// the database is frozen, three times; each restored copy holds exactly the total.
#[test]
fn a_freeze_during_transfers_keeps_the_total_exact() {
    let db = PgDb::new("pgbank");
    db.sql(
        "CREATE TABLE checking (id int PRIMARY KEY, balance bigint NOT NULL); \
         CREATE TABLE savings (id int PRIMARY KEY, balance bigint NOT NULL); \
         CREATE TABLE ledger (id bigserial PRIMARY KEY, note text); \
         INSERT INTO checking SELECT i, 1000 FROM generate_series(1, 200) i; \
         INSERT INTO savings SELECT i, 1000 FROM generate_series(1, 200) i; \
         INSERT INTO ledger (note) SELECT repeat('x', 200) FROM generate_series(1, 60000)",
    );
    let total = "SELECT (SELECT sum(balance) FROM checking) + (SELECT sum(balance) FROM savings)";
    assert_eq!(db.sql(total), "400000");
    // Transfers, each its own transaction, from a psql session that runs until stopped.
    let mut script = String::new();
    for i in 0..200_000u32 {
        let (a, b, amount) = (1 + i % 200, 1 + (i * 7) % 200, 1 + i % 13);
        script.push_str(&format!(
            "BEGIN; UPDATE checking SET balance = balance - {amount} WHERE id = {a}; \
             UPDATE savings SET balance = balance + {amount} WHERE id = {b}; \
             INSERT INTO ledger (note) VALUES ('t{i}'); COMMIT;\n"
        ));
    }
    let mut transfers = psql_cmd(&db.name)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = transfers.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(script.as_bytes());
    });
    let repo = TestRepo::local().init();
    let site = unique("bank");
    let before = db.sql("SELECT count(*) FROM ledger");
    for run in 0..3 {
        let out = freezer_pg(&[
            "freeze",
            &site,
            "--db",
            &db.url(),
            "--repo",
            &repo.url,
            "--json",
        ]);
        let snapshot = json(&out)["snapshot"].as_str().unwrap().to_string();
        let copy = PgDb::new("pgbankcopy");
        psql("postgres", &format!("DROP DATABASE {}", copy.name));
        assert_ok(&freezer_pg(&[
            "thaw",
            &format!("{site}:{snapshot}"),
            "--db",
            &copy.url(),
            "--repo",
            &repo.url,
        ]));
        assert_eq!(copy.sql(total), "400000", "run {run}");
        // The ledger, read by yet another connection, is of the same instant: one entry
        // per transfer the copy's balances include.
        let moved = copy.sql("SELECT count(*) FROM ledger");
        let out_of_checking = copy.sql("SELECT 200000 - sum(balance) FROM checking");
        let expected: u64 = (0..moved.parse::<u64>().unwrap() - 60000)
            .map(|i| 1 + (i as u32 % 13) as u64)
            .sum();
        assert_eq!(out_of_checking, expected.to_string(), "run {run}");
    }
    let after = db.sql("SELECT count(*) FROM ledger");
    assert_ne!(before, after, "the transfers ran during the freezes");
    let _ = transfers.kill();
    let _ = transfers.wait();
    let _ = writer.join();
}

/// Bad input gets a clear error, the right exit code, and no password on the screen.
#[test]
fn postgres_errors_say_what_failed() {
    let repo = TestRepo::local().init();
    let (url, pass) = server();
    // Nothing listens there.
    let out = freezer_pg(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--db",
        "postgres://u:secret-pw@127.0.0.1:1/db",
    ]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(!stderr(&out).contains("secret-pw"), "{}", stderr(&out));
    // A wrong password.
    let wrong = url.replacen("@", ":wrong-secret@", 1);
    let out = freezer_env(
        &[
            "freeze",
            "x",
            "--repo",
            &repo.url,
            "--db",
            &format!("{wrong}/postgres"),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("password"), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("wrong-secret") && !stderr(&out).contains(&pass),
        "{}",
        stderr(&out)
    );
    // A database that does not exist.
    let out = freezer_pg(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--db",
        &format!("{url}/no_such_db"),
    ]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("no_such_db"), "{}", stderr(&out));
    // A PostgreSQL dump is not loaded into MySQL, and the other way round.
    let db = PgDb::new("pgerr");
    db.sql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    assert_ok(&freezer_pg(&[
        "freeze",
        "pgerr",
        "--repo",
        &repo.url,
        "--db",
        &db.url(),
    ]));
    let out = freezer_pg(&[
        "thaw",
        "pgerr",
        "--repo",
        &repo.url,
        "--db",
        "mysql://u@127.0.0.1/x",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("PostgreSQL dump"), "{}", stderr(&out));
}

/// A table of about 200 MB (a million rows) round-trips through Garage exactly, with the
/// fixture's tables beside it.
#[test]
fn a_200_mb_table_round_trips_through_garage() {
    let source = PgDb::fixture("pgbig");
    source.sql(
        "CREATE TABLE big (id bigint PRIMARY KEY, payload text NOT NULL, n numeric, at timestamptz); \
         INSERT INTO big SELECT i, repeat(md5(i::text), 6), i / 7.0, \
           timestamptz '2026-01-01 00:00:00+00' + i * interval '1 second' \
         FROM generate_series(1, 1000000) i",
    );
    let bytes: u64 = source
        .sql("SELECT pg_relation_size('big')")
        .parse()
        .unwrap();
    assert!(bytes > 200 << 20, "{bytes} bytes");
    let repo = TestRepo::s3().init();
    let out = freezer_pg(&[
        "freeze",
        "big",
        "--db",
        &source.url(),
        "--repo",
        &repo.url,
        "--json",
    ]);
    let chunks = json(&out)["databases"][0]["chunks"].as_u64().unwrap();
    assert!(chunks > 50, "{chunks} chunks");
    let target = PgDb::new("pgbigcopy");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    assert_ok(&freezer_pg(&[
        "thaw",
        "big",
        "--db",
        &target.url(),
        "--repo",
        &repo.url,
    ]));
    assert_eq!(facts(&source.name), facts(&target.name));
}

/// The database's schema with owners and grants, as the stock pg_dump writes it.
fn schema_with_owners(db: &str) -> String {
    let (url, pass) = server();
    schema_at(&url, &pass, db, &[])
}

/// `--with-users`: the roles that own the database's objects or hold grants on them
/// travel with the dump. On a server that lacks them, `thaw --with-users` creates them
/// (the login role logs in with its password) and the objects get the same owners,
/// grants and default privileges; a thaw without it needs none of the roles; the SPEC's
/// hand restore with PARTS does what `thaw --with-users` does.
#[test]
fn roles_travel_with_a_postgres_dump_frozen_with_users() {
    let tag = unique("r").replace('-', "_");
    let (owner, reader) = (format!("{tag}_owner"), format!("{tag}_reader"));
    let role_password = format!("pw-{tag}");
    let drop_roles = || {
        let _ = psql_try(
            "postgres",
            &format!("DROP ROLE IF EXISTS {owner}; DROP ROLE IF EXISTS {reader}"),
        );
    };
    let source = PgDb::new("pgroles");
    psql(
        "postgres",
        &format!(
            "CREATE ROLE {owner} LOGIN PASSWORD '{role_password}'; CREATE ROLE {reader}; \
             GRANT {reader} TO {owner}; ALTER DATABASE {db} OWNER TO {owner}; \
             GRANT CONNECT, TEMPORARY ON DATABASE {db} TO {reader}",
            db = source.name
        ),
    );
    source.sql(&format!(
        "CREATE SCHEMA app AUTHORIZATION {owner}; \
         CREATE TABLE app.items (id int PRIMARY KEY, name text); \
         INSERT INTO app.items SELECT g, 'item ' || g FROM generate_series(1, 500) g; \
         ALTER TABLE app.items OWNER TO {owner}; GRANT SELECT ON app.items TO {reader}; \
         ALTER DEFAULT PRIVILEGES FOR ROLE {owner} IN SCHEMA app GRANT SELECT ON TABLES TO {reader}; \
         CREATE FUNCTION app.n() RETURNS int LANGUAGE sql AS 'SELECT 1'; \
         ALTER FUNCTION app.n() OWNER TO {owner}"
    ));
    let schema = schema_with_owners(&source.name);
    assert!(schema.contains(&format!("OWNER TO {owner}")), "{schema}");
    let data = facts(&source.name).1;
    let repo = TestRepo::local().init();
    let site = unique("pgroles");
    let source_url = source.url();
    let freeze = |extra: &[&str]| {
        let mut args = vec!["freeze", &site, "--db", &source_url, "--repo", &repo.url];
        args.extend(extra);
        assert_ok(&freezer_pg(&args));
    };
    freeze(&["--with-users"]);

    // Without --with-users: no role is needed, the loading user owns everything.
    let plain = PgDb::new("pgrolesplain");
    psql("postgres", &format!("DROP DATABASE {}", plain.name));
    let thaw = |db: &PgDb, extra: &[&str]| {
        let url = db.url();
        let mut args = vec!["thaw", &site, "--db", &url, "--repo", &repo.url, "--json"];
        args.extend(extra);
        json(&freezer_pg(&args))
    };
    thaw(&plain, &[]);
    assert!(!schema_with_owners(&plain.name).contains(&owner));
    assert_eq!(facts(&plain.name).1, data);

    // The roles gone from the server (as on a new host), then thawed with them.
    drop(plain);
    drop(source);
    drop_roles();
    let target = PgDb::new("pgrolestarget");
    psql("postgres", &format!("DROP DATABASE {}", target.name));
    let report = thaw(&target, &["--with-users"]);
    let accounts = &report["databases"][0]["accounts"];
    assert_eq!(accounts, &serde_json::json!([owner, reader]), "{report:#}");
    assert_eq!(schema_with_owners(&target.name), schema);
    assert_eq!(facts(&target.name).1, data);
    assert_eq!(
        psql("postgres", &format!("SELECT pg_has_role('{owner}', '{reader}', 'MEMBER'), rolcanlogin, rolsuper FROM pg_roles WHERE rolname = '{owner}'")),
        "t|t|f"
    );
    let (url, _) = server();
    let server_at = url.rsplit_once('@').unwrap().1;
    let login = psql_at(
        &format!("postgres://{owner}@{server_at}"),
        &role_password,
        &target.name,
    )
    .args(["-c", "SELECT count(*) FROM app.items"])
    .output()
    .unwrap();
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&login.stdout).trim(), "500");

    // The hand restore with the roles' parts gives the same database.
    let manual = PgDb::new("pgrolesmanual");
    psql("postgres", &format!("DROP DATABASE {}", manual.name));
    let out = manual_restore(
        &repo,
        &site,
        &manual.name,
        Some("roles pre-data-owners data post-data-owners finish"),
    );
    assert!(
        out.status.success(),
        "manual restore failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(schema_with_owners(&manual.name), schema);
    drop(target);
    drop(manual);
    drop_roles();
}

/// Files put in place for a test, removed when it ends.
struct Placed(Vec<std::path::PathBuf>);

impl Drop for Placed {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// The thaw's pre-flight: a dump that uses an extension the target server lacks is
/// refused before anything changes, naming the extension and what to install.
#[test]
fn a_dump_whose_extension_the_server_lacks_is_refused_before_anything_changes() {
    let ext = unique("fx").replace('-', "_");
    // An extension of this test's own, installed on the server like a package would.
    let sharedir = psql(
        "postgres",
        "SELECT setting FROM pg_config WHERE name = 'SHAREDIR'",
    );
    let dir = Path::new(&sharedir).join("extension");
    let placed = Placed(vec![
        dir.join(format!("{ext}.control")),
        dir.join(format!("{ext}--1.0.sql")),
    ]);
    std::fs::write(
        &placed.0[0],
        "default_version = '1.0'\nrelocatable = true\n",
    )
    .unwrap();
    std::fs::write(
        &placed.0[1],
        "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42';\n",
    )
    .unwrap();
    let source = PgDb::new("pgext");
    source.sql(&format!(
        "CREATE EXTENSION {ext}; CREATE TABLE t (x int); INSERT INTO t VALUES (answer())"
    ));
    let repo = TestRepo::local().init();
    let site = unique("pgext");
    assert_ok(&freezer_pg(&[
        "freeze",
        &site,
        "--db",
        &source.url(),
        "--repo",
        &repo.url,
    ]));

    // The extension's package removed, as on a host that never had it.
    drop(source);
    drop(placed);
    let target = PgDb::new("pgexttarget");
    target.sql("CREATE TABLE kept (x int); INSERT INTO kept VALUES (7)");
    let target_url = target.url();
    for replace in [false, true] {
        let mut args = vec!["thaw", &site, "--db", &target_url, "--repo", &repo.url];
        if replace {
            args.push("--replace");
        }
        let out = freezer_pg(&args);
        assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains(&format!("uses the extension {ext}")), "{err}");
        assert!(err.contains("install"), "{err}");
        // Nothing changed, not even with --replace.
        assert_eq!(target.sql("SELECT x FROM kept"), "7");
    }
}
