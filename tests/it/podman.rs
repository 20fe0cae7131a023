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
