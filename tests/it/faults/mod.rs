//! The store misbehaving under a running freeze, thaw or verify: a Garage of the test's
//! own killed and restarted, stopped (hung) for longer than the request timeout, gone for
//! good, a three-node cluster losing a node, and a fault proxy answering 503 SlowDown,
//! resetting connections, stalling and cutting bodies short.

mod garage;
mod mariadb;
mod postgres;
pub(crate) mod proxy;

use std::path::Path;
use std::process::{Child, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use garage::Garage;
use proxy::{Fault, FaultProxy};

/// A site of `mb` MiB of random data in a few files (one big enough for a multipart
/// upload), a link and a nested directory. (The restore cases are another test's; this
/// one needs data that takes a few seconds through a throttled proxy.)
fn site_tree(root: &Path, mb: usize) {
    std::fs::create_dir_all(root.join("nested/deeper")).unwrap();
    std::fs::write(root.join("nested/deeper/note.txt"), "kept\n").unwrap();
    std::os::unix::fs::symlink("nested/deeper/note.txt", root.join("link")).unwrap();
    let data = root.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(
        data.join("big.bin"),
        noise(mb.saturating_sub(2).max(1) << 20, 1),
    )
    .unwrap();
    for i in 0..8 {
        std::fs::write(data.join(format!("small-{i}.bin")), noise(256 << 10, i + 2)).unwrap();
    }
}

fn run(args: &[&str], env: &[(String, String)]) -> Output {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    freezer_env(args, &env)
}

fn spawn(args: &[&str], env: &[(String, String)]) -> Child {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    spawn_freezer(args, &env)
}

fn with(mut env: Vec<(String, String)>, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn retries(result: &serde_json::Value) -> u64 {
    result["store_retries"]["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no store_retries in the result: {result}"))
}

/// A Garage of the test's own behind a throttled fault proxy, a repository on it
/// (`prefix`), and a 24 MiB site to freeze.
struct Throttled {
    g: Garage,
    proxy: FaultProxy,
    env: Vec<(String, String)>,
    repo: String,
    src: tempfile::TempDir,
    path: String,
}

impl Throttled {
    fn start(bytes_per_sec: usize, request_timeout: &str, prefix: &str) -> Throttled {
        let g = Garage::start(1);
        let proxy = FaultProxy::start(&g.s3_addr(0));
        proxy.throttle(bytes_per_sec);
        let env = with(
            g.env(&proxy.endpoint()),
            &[("FREEZER_REQUEST_TIMEOUT", request_timeout)],
        );
        let repo = g.repo_url(prefix);
        assert_ok(&run(&["init", "--repo", &repo], &env));
        let src = tempfile::tempdir().unwrap();
        site_tree(src.path(), 24);
        let path = src.path().display().to_string();
        Throttled {
            g,
            proxy,
            env,
            repo,
            src,
            path,
        }
    }
}

#[test]
fn a_store_restart_and_a_hang_are_ridden_through() {
    // Throttled, so that the store goes away while the freeze and the thaw are moving data.
    let Throttled {
        mut g,
        proxy: _proxy,
        env,
        repo,
        src,
        path,
    } = Throttled::start(6 << 20, "3s", "restart");

    // Freeze: the store is killed a second in and comes back 3 seconds later.
    let child = spawn(
        &["freeze", "site", "--repo", &repo, "--path", &path, "--json"],
        &env,
    );
    std::thread::sleep(Duration::from_secs(1));
    g.kill(0);
    std::thread::sleep(Duration::from_secs(3));
    g.restart(0);
    let out = child.wait_with_output().unwrap();
    let result = json(&out);
    assert!(
        retries(&result) > 0,
        "the restart was not noticed: {result}\n{}",
        stderr(&out)
    );

    // Thaw: the store hangs (SIGSTOP: connections are accepted, nothing answers) for
    // 8 s, more than twice the request timeout. (It hangs from the start: behind the
    // throttled proxy, a hang in the middle would be hidden by the socket buffers.)
    let dest = tempfile::tempdir().unwrap();
    let into = dest.path().display().to_string();
    g.pause(0);
    let child = spawn(
        &["thaw", "site", "--repo", &repo, "--into", &into, "--json"],
        &env,
    );
    std::thread::sleep(Duration::from_secs(8));
    g.resume(0);
    let out = child.wait_with_output().unwrap();
    let result = json(&out);
    assert!(retries(&result) > 0, "the hang was not noticed: {result}");
    assert_same_tree(src.path(), &under(dest.path(), src.path()));

    // And what was written through all that verifies.
    let out = run(&["verify", "site", "--repo", &repo, "--json"], &env);
    assert_ok(&out);
}

#[test]
fn a_store_that_stays_down_fails_with_exit_3_within_the_bound() {
    let mut g = Garage::start(1);
    let env = with(g.env(&g.s3_addr(0)), &[("FREEZER_RETRY_FOR", "4s")]);
    let repo = g.repo_url("down");
    assert_ok(&run(&["init", "--repo", &repo], &env));
    let src = tempfile::tempdir().unwrap();
    site_tree(src.path(), 3);
    let path = src.path().display().to_string();
    g.kill(0);
    let started = Instant::now();
    let out = run(&["freeze", "site", "--repo", &repo, "--path", &path], &env);
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("Connection refused") && err.contains("retried for 4s"),
        "the message should give the cause and how long freezer tried: {err}"
    );
    // Not a timing test: only that the bound, not some internal limit, ended the run.
    assert!(took < Duration::from_secs(60), "took {took:?}");

    // --retry-for overrides the environment, and the same holds for a thaw.
    let out = run(
        &[
            "thaw",
            "site",
            "--repo",
            &repo,
            "--into",
            "/nonexistent-never-made",
            "--retry-for",
            "2s",
        ],
        &env,
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(stderr(&out).contains("retried for 2s"), "{}", stderr(&out));
}

/// Runs `args` while `fault` happens to the store 1.5 s in; returns each run's exit code
/// and how long after the fault it ended, with its stderr.
fn runs_through_fault(
    runs: &[Vec<String>],
    env: &[(String, String)],
    fault: impl FnOnce(),
) -> Vec<(Option<i32>, Duration, String)> {
    let children: Vec<Child> = runs
        .iter()
        .map(|a| spawn(&a.iter().map(String::as_str).collect::<Vec<_>>(), env))
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    fault();
    let at = Instant::now();
    let waiters: Vec<_> = children
        .into_iter()
        .map(|c| {
            std::thread::spawn(move || {
                let out = c.wait_with_output().unwrap();
                (out.status.code(), at.elapsed(), stderr(&out))
            })
        })
        .collect();
    waiters.into_iter().map(|w| w.join().unwrap()).collect()
}

#[test]
fn a_failing_run_gives_up_within_one_bound_clean_up_included() {
    // The store goes away in the middle of a freeze (a multipart upload in flight, whose
    // abort and the lock's release come after) and of a thaw. The bound is the run's,
    // not each request's: retry_for + one request timeout (+5 s for connect and exit).
    // 1 MiB/s per connection and direction: the 22 MiB the runs move take seconds.
    let Throttled {
        mut g,
        proxy: _proxy,
        env,
        repo,
        src,
        path,
    } = Throttled::start(1 << 20, "10s", "bound");
    assert_ok(&run(
        &["freeze", "site", "--repo", &repo, "--path", &path],
        &env,
    ));
    let dest = tempfile::tempdir().unwrap();
    let args = |cmd: &str, n: u64| -> Vec<String> {
        let mut a: Vec<String> = match cmd {
            "freeze" => vec!["freeze", "site", "--repo", &repo, "--path", &path],
            _ => vec!["thaw", "site", "--repo", &repo, "--into"],
        }
        .into_iter()
        .map(String::from)
        .collect();
        if cmd == "thaw" {
            a.push(dest.path().join(n.to_string()).display().to_string());
        }
        a.extend(["--retry-for".to_string(), "20s".to_string()]);
        a
    };
    let check = |results: Vec<(Option<i32>, Duration, String)>, bound: Duration, what: &str| {
        for (code, took, err) in results {
            eprintln!("{what}: exit {code:?} {took:?} after the fault");
            assert_eq!(code, Some(3), "{what}: {err}");
            assert!(
                took <= bound,
                "{what}: the run ended {took:?} after the store went away, past its bound {bound:?}: {err}"
            );
            assert!(
                err.contains("retried for 20s") && !err.contains("max_retries"),
                "{what}: the message should say how long freezer tried, in words: {err}"
            );
        }
    };

    // Hung (SIGSTOP: connections accepted, nothing answered), for longer than the runs.
    std::fs::write(src.path().join("data/big.bin"), noise(22 << 20, 77)).unwrap();
    let results = runs_through_fault(&[args("freeze", 1), args("thaw", 1)], &env, || g.pause(0));
    check(results, Duration::from_secs(35), "store hung");
    g.resume(0);

    // Refusing connections: nothing waits out a timeout, so retry_for + 5 s.
    std::fs::write(src.path().join("data/big.bin"), noise(22 << 20, 78)).unwrap();
    let results = runs_through_fault(&[args("freeze", 2), args("thaw", 2)], &env, || g.kill(0));
    check(
        results,
        Duration::from_secs(25),
        "store refusing connections",
    );
    g.restart(0);

    // Nothing of the failed runs is in the way of the next night.
    assert_ok(&run(
        &["freeze", "site", "--repo", &repo, "--path", &path],
        &env,
    ));
    assert_ok(&run(&["verify", "site", "--repo", &repo], &env));
}

#[test]
fn slowdown_resets_stalls_and_cut_bodies_are_retried() {
    // The shared Garage, through a proxy of this test's own.
    services();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let upstream = endpoint.trim_start_matches("http://").to_string();
    let proxy = FaultProxy::start(&upstream);
    let env: Vec<(String, String)> = vec![
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://{}", proxy.endpoint()),
        ),
        ("FREEZER_REQUEST_TIMEOUT".into(), "2s".into()),
    ];
    let repo = TestRepo::s3();
    assert_ok(&run(&["init", "--repo", &repo.url], &env));
    let src = tempfile::tempdir().unwrap();
    site_tree(src.path(), 20);
    let path = src.path().display().to_string();

    // Writes: throttling answers, resets, a stalled request, on single and part uploads.
    proxy.inject(Fault::SlowDown, Some("PUT"), 3);
    proxy.inject(Fault::Reset, Some("PUT"), 2);
    proxy.inject(Fault::Stall(Duration::from_secs(30)), Some("PUT"), 1);
    proxy.inject(Fault::SlowDown, Some("POST"), 1);
    let out = run(
        &[
            "freeze", "site", "--repo", &repo.url, "--path", &path, "--json",
        ],
        &env,
    );
    let result = json(&out);
    assert_eq!(proxy.pending(), 0, "not every fault was met");
    assert!(retries(&result) >= 7, "{result}");
    let causes = result["store_retries"]["causes"].to_string();
    assert!(causes.contains("503"), "{causes}");
    assert!(causes.contains("no answer within 2s"), "{causes}");

    // Reads: bodies cut in the middle, resets and throttling, during a thaw and a verify.
    proxy.inject(Fault::CutBody, Some("GET"), 3);
    proxy.inject(Fault::Reset, Some("GET"), 2);
    proxy.inject(Fault::SlowDown, Some("GET"), 2);
    let dest = tempfile::tempdir().unwrap();
    let into = dest.path().display().to_string();
    let out = run(
        &[
            "thaw", "site", "--repo", &repo.url, "--into", &into, "--json",
        ],
        &env,
    );
    let result = json(&out);
    assert_eq!(proxy.pending(), 0, "not every fault was met");
    assert!(retries(&result) >= 7, "{result}");
    assert_same_tree(src.path(), &under(dest.path(), src.path()));

    proxy.inject(Fault::CutBody, Some("GET"), 2);
    proxy.inject(Fault::Stall(Duration::from_secs(30)), Some("GET"), 1);
    let out = run(&["verify", "site", "--repo", &repo.url, "--json"], &env);
    let result = json(&out);
    assert_eq!(proxy.pending(), 0, "not every fault was met");
    assert!(retries(&result) >= 3, "{result}");
    // A copy out of the repository (export to an OCI layout) reads through the same faults,
    // and what it wrote is the snapshot's bytes.
    proxy.inject(Fault::CutBody, Some("GET"), 2);
    proxy.inject(Fault::Reset, Some("GET"), 1);
    let oci = tempfile::tempdir().unwrap();
    let layout = oci.path().join("layout");
    let out = run(
        &[
            "export",
            "site",
            "--repo",
            &repo.url,
            "--oci",
            &layout.display().to_string(),
            "--json",
        ],
        &env,
    );
    let result = json(&out);
    assert_eq!(proxy.pending(), 0, "not every fault was met");
    assert!(retries(&result) >= 3, "{result}");
    // skopeo copy re-reads and checks every blob against its digest.
    let r = result["refs"][0].as_str().unwrap();
    let out = std::process::Command::new("skopeo")
        .arg("copy")
        .arg(format!("oci:{}:{r}", layout.display()))
        .arg(format!("oci:{}:{r}", oci.path().join("copy").display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_three_node_cluster_loses_a_node_during_a_freeze_and_a_thaw() {
    let mut g = Garage::start(3);
    let proxy = FaultProxy::start(&g.s3_addr(0));
    proxy.throttle(6 << 20);
    let env = with(
        g.env(&proxy.endpoint()),
        &[("FREEZER_REQUEST_TIMEOUT", "5s")],
    );
    let repo = g.repo_url("cluster");
    assert_ok(&run(&["init", "--repo", &repo], &env));
    let src = tempfile::tempdir().unwrap();
    site_tree(src.path(), 16);
    let path = src.path().display().to_string();

    let child = spawn(
        &["freeze", "site", "--repo", &repo, "--path", &path, "--json"],
        &env,
    );
    std::thread::sleep(Duration::from_millis(700));
    g.kill(2);
    let out = child.wait_with_output().unwrap();
    json(&out);
    g.restart(2);

    // Another node goes away in the middle of the thaw; the one that missed part of the
    // freeze is back but may not have every block yet.
    let dest = tempfile::tempdir().unwrap();
    let into = dest.path().display().to_string();
    let child = spawn(
        &["thaw", "site", "--repo", &repo, "--into", &into, "--json"],
        &env,
    );
    std::thread::sleep(Duration::from_millis(700));
    g.kill(1);
    let out = child.wait_with_output().unwrap();
    json(&out);
    assert_same_tree(src.path(), &under(dest.path(), src.path()));
    assert_ok(&run(&["verify", "site", "--repo", &repo], &env));
    // Nothing else of the cluster's is needed past here.
    drop(proxy);
    let _ = g.dir();
}

/// The store goes away while a hydrated freeze holds the site paused: the freeze fails
/// (exit 3, after retrying for its bound) and the site is running again, as it was.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn a_store_that_vanishes_in_the_pause_window_leaves_the_site_running() {
    use crate::hydrated::*;
    let a = host_a();
    let mut g = Garage::start(1);
    let env = with(
        g.env(&g.s3_addr(0)),
        &[
            ("DOCKER_HOST", a.as_str()),
            ("FREEZER_RETRY_FOR", "3s"),
            ("FREEZER_FAULT_HOLD_WINDOW_MS", "1500"),
        ],
    );
    let repo = g.repo_url("window");
    assert_ok(&run(&["init", "--repo", &repo], &env));
    let name = unique("vanish");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    let child = spawn(&["freeze", &name, "--repo", &repo], &env);
    wait_for_state(&a, &site.c("web"), "paused");
    g.kill(0);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert_eq!(state(&a, &site.c("web")), "running");
    assert_eq!(state(&a, &site.c("data")), "running");
    assert_eq!(http_get(port, "/index.html"), site.marker());
}

/// The database server killed in the middle of a dump: the freeze fails with exit 3 and
/// records nothing; with the server back, the same freeze completes. Killed in the middle
/// of a load: exit 3, the message says the target is partly loaded, and the same thaw
/// run again continues it, verified.
#[test]
fn a_database_server_killed_mid_dump_and_mid_load() {
    let mut db = mariadb::MariaDb::start();
    // Big enough that the dump and the load take a while: 2^18 rows of ~200 bytes.
    db.sql(
        "CREATE DATABASE shop; CREATE TABLE shop.big_rows (id INT AUTO_INCREMENT PRIMARY KEY, \
         pad VARCHAR(200) NOT NULL) ENGINE=InnoDB; \
         INSERT INTO shop.big_rows (pad) VALUES (REPEAT('x', 200));",
    );
    for _ in 0..18 {
        db.sql("INSERT INTO shop.big_rows (pad) SELECT CONCAT(pad, '') FROM shop.big_rows;");
    }
    let before = db_checksum(&db, "shop");
    let repo = TestRepo::local().init();
    let url = db.url("shop");
    let args = [
        "freeze",
        "shop",
        "--repo",
        &repo.url,
        "--db",
        &url,
        "--chunk-size",
        "256K",
    ];

    // Killed once the dump is well into the table's 200-odd chunks (a query each).
    let since = db.selects();
    let child = spawn(&args, &[]);
    db.wait_for_selects(since, 60);
    db.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains("Input/output error: Input/output error"),
        "{}",
        stderr(&out)
    );
    let list = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "nothing recorded: {list}"
    );
    db.restart();
    assert_eq!(db_checksum(&db, "shop"), before);
    assert_ok(&freezer(&args));

    // The load: into a new database on the same server.
    let target = db.url("shop_copy");
    let thaw = ["thaw", "shop", "--repo", &repo.url, "--db", &target];
    let child = spawn(&thaw, &[]);
    // Killed once some rows are committed: the target is then really partly loaded (a
    // kill before any commit leaves nothing, and a plain re-run may load it).
    db.wait_for_rows("shop_copy.big_rows");
    db.kill();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`shop_copy` is partly loaded")
            && stderr(&out).contains("run the same thaw again to continue"),
        "the message says what state the target is in and what to do: {}",
        stderr(&out)
    );
    db.restart();
    assert_ok(&freezer(&thaw));
    assert_eq!(db_checksum(&db, "shop_copy"), before);
}

#[test]
fn a_postgresql_server_killed_mid_dump_and_mid_load() {
    let pg = postgres::PgServer::start();
    pg.sql("postgres", "CREATE DATABASE shop");
    // Many tables, so that the stock pg_dump of the schema takes a while, and one big
    // one, so that the load does.
    pg.sql(
        "shop",
        "DO $$ BEGIN FOR i IN 1..500 LOOP \
           EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, note text, secret_col int)', i); \
         END LOOP; END $$; \
         CREATE TABLE big_rows (id int PRIMARY KEY, pad text NOT NULL); \
         INSERT INTO big_rows SELECT g, repeat(md5(g::text), 6) FROM generate_series(1, 200000) g;",
    );
    let server = pg.server_url();
    let before = crate::postgres::facts_at(&server, "", "shop").1;
    let repo = TestRepo::local().init();
    let url = pg.url("shop");
    let args = [
        "freeze",
        "shop",
        "--repo",
        &repo.url,
        "--db",
        &url,
        "--chunk-size",
        "1M",
    ];

    // Killed while the stock pg_dump reads the schema: exit 3 with the hint, and none
    // of pg_dump's query text.
    let child = spawn(&args, &[]);
    pg.wait_for_process(&format!("pg_dump.*port={}", pg.port));
    pg.kill();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(err.contains("hint:"), "{err}");
    assert!(
        !err.contains("Query was") && !err.contains("SELECT") && !err.contains("secret_col"),
        "the message repeats the query: {err}"
    );
    assert!(err.lines().count() <= 3, "one error and its hint: {err}");
    eprintln!("killed mid pg_dump: {err}");
    pg.restart();
    assert_ok(&freezer(&args));

    // Killed during a load, once rows are committed: "partly loaded"; the same command
    // again completes, and the copy is exact.
    let target = pg.url("shop_copy");
    let thaw = ["thaw", "shop", "--repo", &repo.url, "--db", &target];
    let child = spawn(&thaw, &[]);
    pg.wait_for_rows("shop_copy", "big_rows");
    pg.kill();
    let out = child.wait_with_output().unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(3), "{err}");
    assert!(
        err.contains("shop_copy on")
            && err.contains("is partly loaded")
            && err.contains("run the same thaw again"),
        "the message says what state the target is in and what to do: {err}"
    );
    pg.restart();
    let again = freezer(&[
        "thaw", "shop", "--repo", &repo.url, "--db", &target, "--json",
    ]);
    let r = json(&again);
    assert!(
        r["databases"][0]["warnings"]
            .to_string()
            .contains("interrupted thaw"),
        "{r}"
    );
    assert_eq!(
        crate::postgres::facts_at(&server, "", "shop_copy").1,
        before
    );
    // Complete now: a further run refuses to load over it.
    let more = freezer(&thaw);
    assert_eq!(more.status.code(), Some(7), "{}", stderr(&more));
}

fn db_checksum(db: &mariadb::MariaDb, name: &str) -> String {
    db.sql(&format!(
        "CHECKSUM TABLE {name}.big_rows; SELECT COUNT(*) FROM {name}.big_rows;"
    ))
    .split_whitespace()
    .skip(1)
    .collect::<Vec<_>>()
    .join(" ")
}

/// The same store faults under a Docker site: a hydrated freeze (the site paused while
/// the store restarts) and a thaw as a copy while the store hangs; and a dehydrated
/// freeze of a database and its load the same way.
#[test]
fn hydrated_and_dehydrated_runs_ride_through_a_restart_and_a_hang() {
    use crate::hydrated::*;
    let a = host_a();
    let mut g = Garage::start(1);
    let proxy = FaultProxy::start(&g.s3_addr(0));
    proxy.throttle(4 << 20);
    let env = with(
        g.env(&proxy.endpoint()),
        &[
            ("DOCKER_HOST", a.as_str()),
            ("FREEZER_REQUEST_TIMEOUT", "3s"),
        ],
    );
    let repo = g.repo_url("docker");
    assert_ok(&run(&["init", "--repo", &repo], &env));

    // Hydrated: killed once the freeze is uploading, back 3 s later.
    let name = unique("rh");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    let seen = proxy.requests();
    let child = spawn(&["freeze", &name, "--repo", &repo, "--json"], &env);
    proxy.wait_for_requests(seen + 6);
    g.kill(0);
    std::thread::sleep(Duration::from_secs(3));
    g.restart(0);
    let out = child.wait_with_output().unwrap();
    let result = json(&out);
    assert!(retries(&result) > 0, "{result}");
    assert_eq!(state(&a, &site.c("web")), "running");

    // Thawed as a copy beside it while the store hangs for 8 s.
    let copy = unique("rhc");
    site.made(&a, &copy);
    let port2 = free_port();
    let publish = format!("{port}={port2}");
    g.pause(0);
    let child = spawn(
        &[
            "thaw",
            &name,
            "--repo",
            &repo,
            "--as",
            &copy,
            "--publish",
            &publish,
            "--json",
        ],
        &env,
    );
    std::thread::sleep(Duration::from_secs(8));
    g.resume(0);
    let out = child.wait_with_output().unwrap();
    let result = json(&out);
    assert!(retries(&result) > 0, "{result}");
    assert_eq!(http_get(port2, "/index.html"), site.marker());
    assert_eq!(
        http_get(port2, "/sub/big.bin"),
        http_get(port, "/sub/big.bin"),
        "the copy serves the same bytes"
    );

    // Dehydrated: a database dumped while the store restarts, loaded while it hangs.
    use crate::database::*;
    let src = unique("rd").replace('-', "_");
    fixture(&src);
    let seen = proxy.requests();
    let child = spawn(
        &[
            "freeze",
            "shop",
            "--repo",
            &repo,
            "--db",
            &db_url(&src),
            "--chunk-size",
            "64K",
            "--json",
        ],
        &env,
    );
    proxy.wait_for_requests(seen + 4);
    g.kill(0);
    std::thread::sleep(Duration::from_secs(3));
    g.restart(0);
    let result = json(&child.wait_with_output().unwrap());
    assert!(retries(&result) > 0, "{result}");
    let copy = unique("rdc").replace('-', "_");
    g.pause(0);
    let child = spawn(
        &[
            "thaw",
            "shop",
            "--repo",
            &repo,
            "--db",
            &db_url(&copy),
            "--json",
        ],
        &env,
    );
    std::thread::sleep(Duration::from_secs(8));
    g.resume(0);
    let result = json(&child.wait_with_output().unwrap());
    assert!(retries(&result) > 0, "{result}");
    assert_eq!(describe(&src), describe(&copy));
    drop_db(&src);
    drop_db(&copy);
}
