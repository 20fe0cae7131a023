//! Which server a database connection reaches. This machine runs its own MariaDB (root
//! by unix_socket, as Debian sets it up) beside MariaDB containers; each test gives a
//! container and the host's server a database of the same name with different rows, and
//! checks that every freeze reads the container's rows, every thaw writes into the
//! container, and the host's server is left exactly as it was.

use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::common::*;
use crate::database::{drop_db, sql};
use crate::hydrated::{
    address, docker, freeze_dehydrated, freezer_on, host_a, mariadb_image, sql_at,
};

/// A MariaDB container (root by password only, as compose files often have it) with
/// database `db`, removed on drop.
struct DbContainer {
    host: String,
    name: String,
    ip: String,
    password: String,
}

impl DbContainer {
    fn start(name: &str, db: &str, labels: &[String], network: Option<&str>) -> DbContainer {
        let host = host_a();
        let password = format!("root-{}", unique("pw"));
        let mut args = vec![
            "run".to_string(),
            "-d".into(),
            "--name".into(),
            name.into(),
            "-e".into(),
            format!("MARIADB_ROOT_PASSWORD={password}"),
            "-e".into(),
            format!("MARIADB_DATABASE={db}"),
        ];
        for l in labels {
            args.extend(["--label".to_string(), l.clone()]);
        }
        if let Some(n) = network {
            args.extend([
                "--network".to_string(),
                n.into(),
                "--network-alias".into(),
                "db".into(),
            ]);
        }
        args.push(mariadb_image());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        docker(&host, &args);
        let ip = address(&host, name);
        sql_at(&ip, "root", &password, db, "SELECT 1");
        DbContainer {
            host,
            name: name.into(),
            ip,
            password,
        }
    }

    fn url(&self, db: &str) -> String {
        format!("mysql://root:{}@{}:3306/{db}", self.password, self.ip)
    }

    fn sql(&self, db: &str, q: &str) -> String {
        sql_at(&self.ip, "root", &self.password, db, q)
    }

    /// The rows of `db`.`t`, or None when the container has no such database.
    fn rows(&self, db: &str) -> Option<String> {
        let dbs = self.sql("mysql", &format!("SHOW DATABASES LIKE '{db}'"));
        (!dbs.is_empty()).then(|| self.sql(db, "SELECT id, origin FROM t ORDER BY id"))
    }
}

impl Drop for DbContainer {
    fn drop(&mut self) {
        let _ = crate::hydrated::docker_try(&self.host, &["rm", "-f", "-v", &self.name]);
    }
}

/// The host server's databases whose names hold `db` (the test's copies and scratch
/// databases would; other tests make theirs meanwhile) and the rows of `db`.`t`: what
/// must not change.
fn host_state(db: &str) -> (String, String) {
    (
        sql(None, &format!("SHOW DATABASES LIKE '%{db}%'")),
        sql(Some(db), "SELECT id, origin FROM t ORDER BY id"),
    )
}

const TABLE: &str = "CREATE TABLE t (id INT PRIMARY KEY, origin VARCHAR(40) NOT NULL)";

/// The same database on both servers: five rows from the container, two from the host.
fn same_named_databases(c: &DbContainer, db: &str) {
    c.sql(
        db,
        &format!(
            "{TABLE}; INSERT INTO t SELECT seq, 'container {}' FROM seq_1_to_5",
            c.name
        ),
    );
    drop_db(db);
    sql(
        None,
        &format!("CREATE DATABASE `{db}`; USE `{db}`; {TABLE}; INSERT INTO t VALUES (1, 'host'), (2, 'host');"),
    );
}

#[test]
fn a_database_url_of_a_container_never_reaches_this_host_s_server() {
    let repo = TestRepo::local().init();
    let db = unique("wrongsrv").replace('-', "_");
    let c = DbContainer::start(&unique("wsdb"), &db, &[], None);
    same_named_databases(&c, &db);
    let before = host_state(&db);
    let want = c.rows(&db).unwrap();
    let site = unique("ws");

    let out = freezer(&[
        "freeze",
        &site,
        "--repo",
        &repo.url,
        "--db",
        &c.url(&db),
        "--json",
    ]);
    assert_eq!(
        ok_report(&out)["databases"][0]["rows"],
        5,
        "{}",
        stderr(&out)
    );

    // Into a new database of the container: the container's rows, nothing on the host.
    let copy = format!("{db}_copy");
    let out = freezer(&[
        "thaw",
        &site,
        "--repo",
        &repo.url,
        "--db",
        &c.url(&copy),
        "--json",
    ]);
    ok_report(&out);
    assert_eq!(c.rows(&copy).as_deref(), Some(want.as_str()));
    // One table into another new database.
    let one = format!("{db}_one");
    let out = freezer(&[
        "thaw",
        &site,
        "--repo",
        &repo.url,
        "--db",
        &c.url(&one),
        "--table",
        "t",
        "--json",
    ]);
    ok_report(&out);
    assert_eq!(c.rows(&one).as_deref(), Some(want.as_str()));
    // A drill's scratch database, kept to be looked at.
    let out = freezer(&[
        "drill",
        &site,
        "--repo",
        &repo.url,
        "--db",
        &c.url("drl"),
        "--keep",
        "--json",
    ]);
    assert_eq!(ok_report(&out)["ok"], true);
    let scratch = c.sql("mysql", "SHOW DATABASES LIKE 'drl\\_%'");
    assert_eq!(scratch.lines().count(), 1, "{scratch}");
    assert_eq!(c.rows(scratch.trim()).as_deref(), Some(want.as_str()));

    assert_eq!(host_state(&db), before, "the host's server was changed");
    drop_db(&db);
}

/// Forwards each connection to the next of `upstreams` in turn: a load balancer in front
/// of servers that are not one.
fn round_robin(upstreams: Vec<String>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let next = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            let to = &upstreams[next.fetch_add(1, Ordering::SeqCst) % upstreams.len()];
            if let Ok(server) = TcpStream::connect(to) {
                splice(client, server);
            }
        }
    });
    port
}

#[test]
fn connections_that_land_on_two_servers_are_refused() {
    let repo = TestRepo::local().init();
    let db = unique("twosrv").replace('-', "_");
    let c = DbContainer::start(&unique("tsdb"), &db, &[], None);
    same_named_databases(&c, &db);
    // The same account on both, so that only the server's identity tells them apart.
    let user = unique("lb").replace('-', "_");
    let grant = format!(
        "CREATE USER '{user}'@'%' IDENTIFIED BY 'lb-pw'; GRANT ALL ON *.* TO '{user}'@'%';"
    );
    c.sql("mysql", &grant);
    sql(None, &grant);
    let before = host_state(&db);
    let port = round_robin(vec![format!("{}:3306", c.ip), "127.0.0.1:3306".into()]);
    let url = format!("mysql://{user}:lb-pw@127.0.0.1:{port}/{db}");

    let out = freezer(&["freeze", &unique("lb"), "--repo", &repo.url, "--db", &url]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("refusing the connection") && err.contains("another server"),
        "{err}"
    );
    assert!(!err.contains("lb-pw"), "the password was printed: {err}");
    assert_eq!(host_state(&db), before);
    sql(None, &format!("DROP USER '{user}'@'%';"));
    drop_db(&db);
}

#[test]
fn a_compose_site_s_database_is_its_container_s_not_the_host_s() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let db = unique("zoo").replace('-', "_");
    let (project, target) = (unique("wz"), unique("wzt"));
    let mut containers = Vec::new();
    for p in [&project, &target] {
        docker(
            &a,
            &[
                "network",
                "create",
                "--label",
                &format!("com.docker.compose.project={p}"),
                &format!("{p}_default"),
            ],
        );
        let labels = [
            format!("com.docker.compose.project={p}"),
            "com.docker.compose.service=db".to_string(),
        ];
        containers.push(DbContainer::start(
            &format!("{p}-db-1"),
            &db,
            &labels,
            Some(&format!("{p}_default")),
        ));
    }
    let (src, onto) = (&containers[0], &containers[1]);
    same_named_databases(src, &db);
    let before = host_state(&db);
    let want = src.rows(&db).unwrap();
    let copy = unique("wzc");

    let result = std::panic::catch_unwind(|| {
        // Dehydrated: the dump is the container's.
        let out = freeze_dehydrated(&a, &project, &repo, &["--json"]);
        let r = ok_report(&out);
        assert_eq!(r["databases"][0]["rows"], 5, "{r}");
        let snap = format!("{project}:{}", r["snapshot"].as_str().unwrap());

        // Onto another project's (empty) database.
        ok_report(&freezer_on(
            &a,
            &[
                "thaw", &snap, "--repo", &repo.url, "--onto", &target, "--json",
            ],
        ));
        assert_eq!(onto.rows(&db).as_deref(), Some(want.as_str()));

        // As a copy: a new database container, loaded.
        ok_report(&freezer_on(
            &a,
            &["thaw", &snap, "--repo", &repo.url, "--as", &copy, "--json"],
        ));
        let ip = address(&a, &format!("{copy}-db-1"));
        assert_eq!(
            sql_at(
                &ip,
                "root",
                &src.password,
                &db,
                "SELECT id, origin FROM t ORDER BY id"
            ),
            want
        );

        // A drill: scratch containers, loaded and verified, removed.
        let out = freezer_on(&a, &["drill", &snap, "--repo", &repo.url, "--json"]);
        assert_eq!(ok_report(&out)["ok"], true);

        assert_eq!(host_state(&db), before, "the host's server was changed");
    });
    for p in [&project, &target, &copy] {
        let ids = docker(
            &a,
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={p}"),
            ],
        );
        for id in ids.lines() {
            let _ = crate::hydrated::docker_try(&a, &["rm", "-f", "-v", id]);
        }
    }
    drop(containers);
    for p in [&project, &target, &copy] {
        let _ = crate::hydrated::docker_try(&a, &["network", "rm", &format!("{p}_default")]);
    }
    drop_db(&db);
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}
