//! Redis in a Docker site: frozen dehydrated while a writer adds to a counter and a set
//! in one transaction each, the thawed server holds a point-in-time data set in which
//! they agree, and which is no older than the freeze.

use std::time::{Duration, Instant};

use crate::common::*;
use crate::hydrated::{
    address, docker, freeze_dehydrated, freezer_on, host_a, mariadb_image, sql_at,
};
use crate::sqlite::Cleanup;

const SECRET: &str = "redis-secret-4b9e";

fn cli(host: &str, container: &str, args: &[&str]) -> String {
    let mut argv = vec![
        "exec",
        "-e",
        "REDISCLI_AUTH=redis-secret-4b9e",
        container,
        "redis-cli",
        "--no-auth-warning",
    ];
    argv.extend_from_slice(args);
    docker(host, &argv).trim().to_string()
}

fn count(host: &str, container: &str, args: &[&str]) -> u64 {
    let out = cli(host, container, args);
    if out.is_empty() {
        return 0;
    }
    out.parse()
        .unwrap_or_else(|_| panic!("redis-cli {args:?}: {out}"))
}

/// A site of a MariaDB (so it freezes dehydrated) and a Redis that saves nothing by itself
/// (`save ""`): only the freeze's own save puts its data in the volume.
fn start(host: &str, name: &str) -> Cleanup {
    let project = format!("com.docker.compose.project={name}");
    let net = format!("{name}_default");
    docker(host, &["network", "create", "--label", &project, &net]);
    docker(
        host,
        &[
            "volume",
            "create",
            "--label",
            &project,
            &format!("{name}_cache"),
        ],
    );
    let cleanup = Cleanup {
        host: host.to_string(),
        name: name.to_string(),
        services: vec!["cache", "db"],
        volumes: vec!["cache"],
    };
    #[rustfmt::skip]
    docker(host, &[
        "run", "-d", "--name", &format!("{name}-cache-1"), "--label", &project,
        "--label", "com.docker.compose.service=cache", "--network", &net,
        "-v", &format!("{name}_cache:/data"), "freezer-test/redis:latest",
        "redis-server", "--protected-mode", "no", "--save", "", "--appendonly", "no",
        "--enable-debug-command", "local", "--requirepass", SECRET,
    ]);
    #[rustfmt::skip]
    docker(host, &[
        "run", "-d", "--name", &format!("{name}-db-1"), "--label", &project,
        "--label", "com.docker.compose.service=db", "--network", &net,
        "-e", "MARIADB_ROOT_PASSWORD=root-pw", "-e", "MARIADB_DATABASE=app",
        "-e", "MARIADB_USER=app", "-e", "MARIADB_PASSWORD=app-pw", &mariadb_image(),
    ]);
    sql_at(
        &address(host, &format!("{name}-db-1")),
        "app",
        "app-pw",
        "app",
        "SELECT 1",
    );
    cleanup
}

#[test]
fn redis_frozen_dehydrated_while_written_thaws_with_a_point_in_time_data_set() {
    let host = host_a();
    let name = unique("rsite");
    let _site = start(&host, &name);
    let cache = format!("{name}-cache-1");
    let t = Instant::now();
    while cli(&host, &cache, &["PING"]) != "PONG" {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "Redis does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        cli(&host, &cache, &["DEBUG", "POPULATE", "100000", "key", "16"]),
        "OK"
    );
    // The writer: MULTI / INCR counter / SADD members mN / EXEC, without end.
    #[rustfmt::skip]
    docker(&host, &[
        "exec", "-d", "-e", &format!("REDISCLI_AUTH={SECRET}"), &cache, "sh", "-c",
        "awk 'BEGIN { while (1) { i++; print \"MULTI\"; print \"INCR counter\"; print \"SADD members m\" i; print \"EXEC\"; fflush() } }' | redis-cli --no-auth-warning > /dev/null",
    ]);
    let t = Instant::now();
    while count(&host, &cache, &["GET", "counter"]) < 1000 {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "the writer does not write"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let before = count(&host, &cache, &["GET", "counter"]);

    let repo = TestRepo::local().init();
    let out = freeze_dehydrated(&host, &name, &repo, &["--json"]);
    let report = ok_report(&out);
    assert_no_secret(&out, &[SECRET]);
    let saved = &report["redis"][0];
    assert_eq!(saved["container"], cache.as_str(), "{report}");
    assert_eq!(saved["file"], "/data/dump.rdb");
    assert!(saved["keys"].as_u64().unwrap() > 100_000, "{saved}");
    assert_eq!(report["warnings"], serde_json::json!([]));
    let after = count(&host, &cache, &["GET", "counter"]);
    let snap = report["snapshot"].as_str().unwrap();

    // Thawed as a copy of the site: its Redis starts from the volume's RDB.
    let copy = unique("rcopy");
    let _copy = Cleanup {
        host: host.clone(),
        name: copy.clone(),
        services: vec!["cache", "db"],
        volumes: vec!["cache"],
    };
    let out = freezer_on(
        &host,
        &[
            "thaw",
            &format!("{name}:{snap}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--json",
        ],
    );
    assert_ok(&out);
    assert_no_secret(&out, &[SECRET]);
    let thawed = format!("{copy}-cache-1");
    let t = Instant::now();
    while cli(&host, &thawed, &["PING"]) != "PONG" {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the thawed Redis does not answer"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let counter = count(&host, &thawed, &["GET", "counter"]);
    let members = count(&host, &thawed, &["SCARD", "members"]);
    let keys = count(&host, &thawed, &["DBSIZE"]);
    assert_eq!(
        counter, members,
        "the counter and the set were written in one MULTI"
    );
    assert!(
        (before..=after).contains(&counter),
        "the data set is of the freeze's time: counter {counter}, {before} before the freeze, {after} after"
    );
    assert_eq!(keys, 100_002, "the 100,000 keys, the counter and the set");
}

/// A container labelled `dev.freezer.consistency=pause` (a search index, say) is paused
/// for the copy of its own volume only; the rest of the site (Redis, the database) keeps
/// running throughout, as the engine's own event log shows.
#[test]
fn a_container_labelled_pause_is_paused_only_for_its_own_volume() {
    let host = host_a();
    let name = unique("psite");
    let mut site = start(&host, &name);
    site.services.push("search");
    site.volumes.push("index");
    let project = format!("com.docker.compose.project={name}");
    let index = format!("{name}_index");
    docker(&host, &["volume", "create", "--label", &project, &index]);
    #[rustfmt::skip]
    docker(&host, &[
        "run", "-d", "--name", &format!("{name}-search-1"), "--label", &project,
        "--label", "com.docker.compose.service=search",
        "--label", "dev.freezer.consistency=pause", "--network", &format!("{name}_default"),
        "-v", &format!("{index}:/index"), &crate::hydrated::image(), "sh", "-c",
        "i=0; while true; do i=$((i+1)); echo $i > /index/t; mv /index/t /index/a; echo $i > /index/t; mv /index/t /index/b; done",
    ]);
    let since = docker(&host, &["system", "info", "--format", "{{.SystemTime}}"]);
    let repo = TestRepo::local().init();
    let out = freeze_dehydrated(&host, &name, &repo, &["--json"]);
    let report = ok_report(&out);
    assert_eq!(report["window"], serde_json::Value::Null, "{report}");
    let windows = report["windows"].as_array().unwrap();
    assert_eq!(windows.len(), 1, "{report}");
    assert_eq!(windows[0]["mode"], "pause");
    assert_eq!(
        windows[0]["containers"],
        serde_json::json!([format!("{name}-search-1")])
    );
    let until = docker(&host, &["system", "info", "--format", "{{.SystemTime}}"]);
    let events = docker(
        &host,
        &[
            "events",
            "--since",
            since.trim(),
            "--until",
            until.trim(),
            "--filter",
            "event=pause",
            "--filter",
            &format!("label={project}"),
            "--format",
            "{{.Actor.Attributes.name}}",
        ],
    );
    assert_eq!(
        events.split_whitespace().collect::<Vec<_>>(),
        vec![format!("{name}-search-1")],
        "only the labelled container was paused"
    );
    // Copied while it was paused: b is a's value or one behind (the pause can fall
    // between the two writes); read live, b (read after a) would be ahead.
    let snap = report["snapshot"].as_str().unwrap();
    let tree = format!("volume.{index}");
    let cat = |f: &str| {
        let out = freezer(&[
            "cat",
            &format!("{name}:{snap}"),
            &format!("{tree}/{f}"),
            "--repo",
            &repo.url,
        ]);
        assert_ok(&out);
        String::from_utf8(out.stdout).unwrap()
    };
    let (a, b): (u64, u64) = (
        cat("a").trim().parse().unwrap(),
        cat("b").trim().parse().unwrap(),
    );
    assert!(a == b || a == b + 1, "a {a}, b {b}: not one moment");
    assert_eq!(
        crate::hydrated::state(&host, &format!("{name}-search-1")),
        "running"
    );
}
