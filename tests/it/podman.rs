//! Podman as a host: the Podman engine scripts/services starts (`podman system service`,
//! rootful, netavark) serves the Docker API on its own socket; sites move between it and
//! the Docker engine in both directions, hydrated and dehydrated.

use std::fs;

use crate::common::*;
use crate::hydrated::*;

pub fn host_p() -> String {
    services();
    std::env::var("FREEZER_TEST_PODMAN_HOST")
        .expect("FREEZER_TEST_PODMAN_HOST is set by scripts/services")
}

/// A config file naming the Docker engine `a` and the Podman engine `p` (with `podman =`),
/// which restores bind-mounted directories under `binds/` next to it.
fn two_hosts(dir: &std::path::Path) -> String {
    let config = dir.join("freezer.toml");
    fs::write(
        &config,
        format!(
            "[hosts.a]\ndocker = \"{}\"\n[hosts.p]\npodman = \"{}\"\nbind_root = \"{}\"\n",
            host_a(),
            host_p(),
            dir.join("binds").display()
        ),
    )
    .unwrap();
    config.to_str().unwrap().to_string()
}

fn snapshot(out: &std::process::Output) -> String {
    json(out)["snapshot"].as_str().unwrap().to_string()
}

/// A site with an image only the Docker host has goes to the Podman host and runs there
/// (image, volumes, bind mounts, network, states); changed there and frozen there
/// (paused on Podman), it comes back to Docker and serves what Podman's copy served.
#[test]
fn a_site_moves_from_docker_to_podman_and_back() {
    let (a, p) = (host_a(), host_p());
    let repo = TestRepo::s3().init();
    let name = unique("pm");
    let tag = format!("freezer-test/only-a:{}", unique("t"));
    docker(&a, &["tag", &image(), &tag]);
    let port = free_port();
    let site = start_site(&a, &name, &tag, port);
    site.made(&p, &name);
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_hosts(dir.path());
    let nowhere = "unix:///nonexistent/docker.sock";
    let on = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--repo", &repo.url, "--config", &cfg]);
        freezer_on(nowhere, &all)
    };

    let out = on(&["freeze", &format!("{name}@a"), "--with-images", "--json"]);
    let from_docker = snapshot(&out);

    // Onto Podman (another port: both engines publish on this machine).
    let port_p = free_port();
    let out = on(&[
        "thaw",
        &format!("{name}:{from_docker}@p"),
        "--publish",
        &format!("{port}={port_p}"),
        "--json",
    ]);
    assert_eq!(json(&out)["images_loaded"], serde_json::json!([tag]));
    // The same image (same id), not one made of the container's labels and environment.
    let id = |host: &str| docker(host, &["image", "inspect", "-f", "{{.Id}}", &tag]);
    assert_eq!(
        id(&p).trim_start_matches("sha256:"),
        id(&a).trim_start_matches("sha256:")
    );
    assert_eq!(http_get(port_p, "/index.html"), site.marker());
    assert_eq!(http_get(port_p, "/sub/big.bin"), big_file());
    assert_same_tree(
        &mountpoint(&a, &format!("{name}_www")),
        &mountpoint(&p, &format!("{name}_www")),
    );
    assert_eq!(
        fs::read(under(&dir.path().join("binds"), site.bind.path()).join("conf/app.ini")).unwrap(),
        b"[site]\nname=test\n"
    );
    assert_eq!(state(&p, &site.c("data")), "running");
    assert_eq!(state(&p, &site.c("job")), "created");
    // Containers of the site's network find each other by name on Podman too.
    assert_eq!(
        docker(
            &p,
            &[
                "exec",
                &site.c("data"),
                "wget",
                "-q",
                "-O-",
                "http://web/index.html"
            ]
        ),
        String::from_utf8(site.marker()).unwrap().trim()
    );
    let sites = on(&["sites", "p"]);
    assert_ok(&sites);
    assert!(
        String::from_utf8_lossy(&sites.stdout).contains(&name),
        "{}",
        String::from_utf8_lossy(&sites.stdout)
    );

    // Changed on Podman and frozen there: paused for the copy, running after it.
    let www_p = mountpoint(&p, &format!("{name}_www"));
    fs::write(www_p.join("podman.html"), b"changed on podman\n").unwrap();
    let out = on(&["freeze", &format!("{name}@p"), "--with-images", "--json"]);
    let report = json(&out);
    assert_eq!(report["window"]["mode"], "pause");
    let from_podman = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(state(&p, &site.c("web")), "running");
    assert_eq!(state(&p, &site.c("data")), "running");

    // Back on Docker, where the site and its image are gone meanwhile (on its old port:
    // the copy on Podman, running, publishes the one the snapshot has).
    remove_site(&a, &name);
    let _ = docker_try(&a, &["rmi", &tag]);
    let back = tempfile::tempdir().unwrap();
    let out = on(&[
        "thaw",
        &format!("{name}:{from_podman}@a"),
        "--publish",
        &format!("{port_p}={port}"),
        "--into",
        back.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(!json(&out)["images_loaded"].as_array().unwrap().is_empty());
    assert_eq!(http_get(port, "/podman.html"), b"changed on podman\n");
    assert_eq!(http_get(port, "/sub/big.bin"), big_file());
    assert_same_tree(&www_p, &mountpoint(&a, &format!("{name}_www")));
    assert_eq!(state(&a, &site.c("job")), "created");

    // A drill on the Podman host: a scratch copy runs and is removed.
    let out = on(&["drill", &format!("{name}:{from_docker}@p"), "--json"]);
    assert_eq!(json(&out)["ok"], true);
    let left = docker(&p, &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        left.lines().filter(|l| l.contains(&name)).count() == 3,
        "containers on Podman after the drill: {left}"
    );

    for img in [&tag, &format!("localhost/{tag}")] {
        let _ = docker_try(&a, &["rmi", img]);
        let _ = docker_try(&p, &["rmi", img]);
    }
}

/// Podman answers with container states of its own where Docker's API has none:
/// `stopping` while a stop waits out its timeout, `stopped` until the exit is cleaned up.
/// One container caught in such a state must not break the listing of the host's sites,
/// nor a freeze of another site there (bollard's typed answer refused the whole list).
#[test]
fn a_container_stopping_on_podman_breaks_no_listing_or_freeze() {
    let p = host_p();
    let repo = TestRepo::local().init();
    let name = unique("pms");
    let site = start_site(&p, &name, &image(), free_port());
    site.made(&p, &name);
    // busybox's sleep, as a container's first process, ignores the stop signal: the stop
    // waits its whole timeout, and the container is `stopping` all that time.
    let slow = unique("pmslow");
    let label = format!("dev.freezer.site={slow}");
    #[rustfmt::skip]
    docker(&p, &["run", "-d", "--name", &slow, "--label", &label, &image(), "sleep", "1000"]);
    let mut stop = std::process::Command::new("docker")
        .args(["stop", "-t", "120", &slow])
        .env("DOCKER_HOST", &p)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_state(&p, &slow, "stopping");

    let sites = json(&freezer_on(&p, &["sites", "--json"]));
    let find = |site: &str| {
        sites
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == site)
            .unwrap_or_else(|| panic!("{site} is not listed: {sites}"))
            .clone()
    };
    // Still running until the stop is done, in Docker's words.
    assert_eq!(find(&slow)["containers"][0]["state"], "running");
    assert_eq!(find(&name)["containers"].as_array().unwrap().len(), 3);

    let out = freezer_on(&p, &["freeze", &name, "--repo", &repo.url, "--json"]);
    assert_ok(&out);
    assert_eq!(state(&p, &site.c("web")), "running");
    // The other container was stopping the whole time (else this test proved nothing).
    assert_eq!(state(&p, &slow), "stopping");

    // Its own site cannot be paused mid-stop: a conflict to retry later (exit 7), saying
    // which container and what to do, and nothing recorded or changed.
    let out = freezer_on(&p, &["freeze", &slow, "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("container {slow} changed state")),
        "{err}"
    );
    assert!(err.contains("then freeze again"), "{err}");
    assert_eq!(state(&p, &slow), "stopping");
    let listed = json(&freezer_on(
        &p,
        &["snapshots", "--repo", &repo.url, "--json"],
    ));
    let sites: Vec<&serde_json::Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| &s["site"])
        .collect();
    assert_eq!(sites, [&serde_json::json!(name)], "{listed}");

    // Ends the stop now instead of after its timeout: the process is killed on the host.
    let pid = docker(&p, &["inspect", "-f", "{{.State.Pid}}", &slow]);
    let _ = std::process::Command::new("kill")
        .args(["-9", &pid])
        .status();
    let _ = stop.wait();
    docker(&p, &["rm", "-f", &slow]);
}

/// A compose-like site with a MariaDB container, frozen dehydrated on Docker, thaws on
/// Podman: a fresh database container there gets the dump, and the data is the same.
#[test]
fn a_database_site_frozen_dehydrated_on_docker_runs_on_podman() {
    let (a, p) = (host_a(), host_p());
    let repo = TestRepo::s3().init();
    let name = unique("pmdb");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    site.made(&p, &name);
    let password = format!("pw/{}@x", unique("s"));
    add_shop_database(&site, &password);
    let facts = shop_facts(&address(&a, &site.c("db")), &password);
    let dir = tempfile::tempdir().unwrap();
    let cfg = two_hosts(dir.path());
    let args = |more: &[&str]| {
        let mut all = more.to_vec();
        all.extend(["--repo", &repo.url, "--config", &cfg]);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let run = |more: &[&str]| {
        let v = args(more);
        freezer_on(
            "unix:///nonexistent/docker.sock",
            &v.iter().map(String::as_str).collect::<Vec<_>>(),
        )
    };
    let snap = snapshot(&run(&[
        "freeze",
        &format!("{name}@a"),
        "--mode",
        "dehydrated",
        "--json",
    ]));
    let port_p = free_port();
    let out = run(&[
        "thaw",
        &format!("{name}:{snap}@p"),
        "--publish",
        &format!("{port}={port_p}"),
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(report["databases"][0]["source"], "shop");
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    ] {
        assert!(
            !text.contains(&password),
            "the password was printed: {text}"
        );
    }
    assert_eq!(shop_facts(&address(&p, &site.c("db")), &password), facts);
    assert_eq!(http_get(port_p, "/index.html"), site.marker());
}

pub fn host_rootless() -> String {
    services();
    std::env::var("FREEZER_TEST_PODMAN_ROOTLESS_HOST")
        .expect("FREEZER_TEST_PODMAN_ROOTLESS_HOST is set by scripts/services")
}

/// A rootless engine (rootless Podman on this cgroup v1 machine): freezer refuses, before
/// it changes anything, what it cannot do right there — pausing containers (cgroup v1),
/// copying volume files out or in (their owners are shifted by the engine's user
/// namespace) — and does the rest: a site without volumes freezes with --stop and thaws.
#[test]
fn a_rootless_engine_is_refused_what_it_cannot_do_right() {
    let (a, r) = (host_a(), host_rootless());
    let repo = TestRepo::s3().init();
    let name = unique("rl");
    let site = Site {
        name: name.clone(),
        host: r.clone(),
        bind: tempfile::tempdir().unwrap(),
        copies: Default::default(),
    };
    let project = format!("com.docker.compose.project={name}");
    let img = image();
    let run = |host: &str, service: &str, extra: &[&str]| {
        let cname = format!("{name}-{service}-1");
        let mut args = vec!["run", "-d", "--name", &cname, "--label", &project];
        args.extend(extra);
        args.extend([img.as_str(), "sleep", "1000"]);
        docker(host, &args);
    };
    run(&r, "web", &["--network", "none"]);
    let freeze = |host: &str, extra: &[&str]| {
        let mut args = vec![
            "freeze",
            name.as_str(),
            "--repo",
            repo.url.as_str(),
            "--json",
        ];
        args.extend(extra);
        freezer_on(host, &args)
    };

    // Pausing is refused up front; the container was never paused.
    let out = freeze(&r, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rootless") && stderr(&out).contains("--stop"),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(&r, &site.c("web")), "running");
    // Stopped instead, it freezes, and runs again after.
    let stopped = json(&freeze(&r, &["--stop"]))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(state(&r, &site.c("web")), "running");

    // With a volume, copying its files is refused, and the site is left running.
    docker(&r, &["volume", "create", &format!("{name}_data")]);
    run(
        &r,
        "data",
        &["--network", "none", "-v", &format!("{name}_data:/data")],
    );
    let out = freeze(&r, &["--stop"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("owners"), "{}", stderr(&out));
    assert_eq!(state(&r, &site.c("data")), "running");

    // The snapshot without volumes thaws there as a copy.
    let copy = unique("rlc");
    site.made(&r, &copy);
    let out = freezer_on(
        &r,
        &[
            "thaw",
            &format!("{name}:{stopped}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
        ],
    );
    assert_ok(&out);
    assert_eq!(state(&r, &format!("{copy}-web-1")), "running");

    // A snapshot with a volume (from the rootful engine) is refused before anything is
    // created on the rootless one.
    let other = unique("rlv");
    let from_a = Site {
        name: other.clone(),
        host: a.clone(),
        bind: tempfile::tempdir().unwrap(),
        copies: Default::default(),
    };
    from_a.made(&r, &other);
    docker(&a, &["volume", "create", &format!("{other}_data")]);
    #[rustfmt::skip]
    docker(&a, &["run", "-d", "--name", &from_a.c("data"), "--label",
        &format!("com.docker.compose.project={other}"), "-v", &format!("{other}_data:/data"),
        &image(), "sleep", "1000"]);
    let snap = json(&freezer_on(
        &a,
        &["freeze", &other, "--repo", &repo.url, "--json"],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let out = freezer_on(
        &r,
        &["thaw", &format!("{other}:{snap}"), "--repo", &repo.url],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("owners"), "{}", stderr(&out));
    assert_gone(&r, &other);
}

/// A compose-like site with a PostgreSQL container (driven as the official image is:
/// POSTGRES_USER, POSTGRES_PASSWORD, POSTGRES_DB), frozen dehydrated on Docker, thaws on
/// Podman: a fresh PostgreSQL container there gets the dump, verified, and holds the
/// same schema, rows and sequences; the site serves its page.
#[test]
fn a_postgres_site_frozen_dehydrated_on_docker_runs_on_podman() {
    use crate::postgres::{facts_at, psql_at};
    let (a, p) = (host_a(), host_p());
    let repo = TestRepo::s3().init();
    let name = unique("pmpg");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    site.made(&p, &name);
    let password = format!("pg/{}@x", unique("s"));
    let pg_image = std::env::var("FREEZER_TEST_POSTGRES_IMAGE").expect("set by scripts/services");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &site.c("db"), "--label", &format!("com.docker.compose.project={name}"),
        "--label", "com.docker.compose.service=db", "--network", &format!("{name}_default"),
        "--network-alias", "db", "-v", &format!("{name}_db:/var/lib/postgresql/data"),
        "-e", &format!("POSTGRES_PASSWORD={password}"), "-e", "POSTGRES_USER=app",
        "-e", "POSTGRES_DB=shop", &pg_image,
    ]);
    let url = |host: &str| format!("postgres://app@{}:5432", address(host, &site.c("db")));
    crate::postgres::wait_for_psql(&url(&a), &password, "shop", &site.c("db"));
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pg-fixture.sql");
    let out = psql_at(&url(&a), &password, "shop")
        .arg("-f")
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts = facts_at(&url(&a), &password, "shop");

    let freeze = || {
        let args = [
            "freeze",
            &name,
            "--repo",
            &repo.url,
            "--mode",
            "dehydrated",
            "--json",
        ];
        json(&freezer_on(&a, &args))
    };
    let report = freeze();
    assert_eq!(report["databases"][0]["database"], "shop");
    assert_eq!(report["databases"][0]["consistency"], "exported-snapshot");
    let snap = report["snapshot"].as_str().unwrap().to_string();
    // The schema came from the container's own pg_dump, and the report says so.
    let by = report["databases"][0]["schema_by"].as_str().unwrap();
    assert!(
        by.starts_with("pg_dump 15.") && by.ends_with(&format!("in container {}", site.c("db"))),
        "{report:#}"
    );
    // A container without pg_dump: this machine's writes the schema, with a warning.
    docker(
        &a,
        &[
            "exec",
            &site.c("db"),
            "rm",
            "/usr/lib/postgresql/15/bin/pg_dump",
        ],
    );
    let again = freeze();
    let by = again["databases"][0]["schema_by"].as_str().unwrap();
    assert!(by.ends_with("on this machine"), "{again:#}");
    let warned = again["warnings"].to_string();
    assert!(
        warned.contains(&format!(
            "the pg_dump in container {} could not run",
            site.c("db")
        )),
        "{again:#}"
    );

    let dir = tempfile::tempdir().unwrap();
    let cfg = two_hosts(dir.path());
    let port_p = free_port();
    let out = freezer_on(
        "unix:///nonexistent/docker.sock",
        &[
            "thaw",
            &format!("{name}:{snap}@p"),
            "--repo",
            &repo.url,
            "--config",
            &cfg,
            "--publish",
            &format!("{port}={port_p}"),
            "--json",
        ],
    );
    let report = json(&out);
    assert_eq!(report["databases"][0]["source"], "shop");
    for text in [
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr(&out),
    ] {
        assert!(
            !text.contains(&password),
            "the password was printed: {text}"
        );
    }
    assert_eq!(facts_at(&url(&p), &password, "shop"), facts);
    assert_eq!(http_get(port_p, "/index.html"), site.marker());
}
