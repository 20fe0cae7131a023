//! A site's state on an altered codebase: `thaw --image` (the containers of a service
//! recreated from a newer image), `drill --image` (an upgrade rehearsed on a backup) and
//! `thaw --onto` (the state loaded into another, existing compose project).
//!
//! The site: a web container of image `freezer-test/web:v1` (busybox httpd serving the
//! image's code in /app and the site's uploads volume at /app/uploads) and a MariaDB
//! container with the shop database. `freezer-test/web:v2` has other code, another
//! default command, working directory and environment.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use crate::hydrated::*;

const V1: &str = "freezer-test/web:v1";
const V2: &str = "freezer-test/web:v2";

/// Builds the two web images on engine A once per test run.
fn web_images() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let a = host_a();
        for (tag, dockerfile, code) in [
            (
                V1,
                "ENV APP_VERSION=1 APP_MODE=production\nWORKDIR /app\nEXPOSE 80\n\
                 CMD [\"httpd\", \"-f\", \"-p\", \"80\", \"-h\", \"/app\"]\n",
                "code v1\n",
            ),
            (
                V2,
                "ENV APP_VERSION=2 APP_MODE=production\nWORKDIR /srv\nEXPOSE 80 443\n\
                 CMD [\"sh\", \"-c\", \"mkdir -p /tmp && echo v2 > /tmp/started && exec httpd -f -p 80 -h /app\"]\n",
                "code v2\n",
            ),
        ] {
            let ctx = tempfile::tempdir().unwrap();
            fs::create_dir_all(ctx.path().join("app/uploads")).unwrap();
            fs::write(ctx.path().join("app/version.html"), code).unwrap();
            fs::write(
                ctx.path().join("Dockerfile"),
                format!("FROM {}\nCOPY app/ /app/\n{dockerfile}", image()),
            )
            .unwrap();
            let out = Command::new("docker")
                .args(["build", "-q", "-t", tag])
                .arg(ctx.path())
                .env("DOCKER_HOST", &a)
                .env("DOCKER_BUILDKIT", "0")
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "building {tag}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// A compose-style site `name` on engine A: web (v1, uploads volume `NAME_www`, port
/// published) and db (MariaDB, database shop for user shop with `password`).
fn start_shop(name: &str, port: u16, password: &str) -> Site {
    web_images();
    let a = host_a();
    let project = format!("com.docker.compose.project={name}");
    docker(
        &a,
        &[
            "network",
            "create",
            "--label",
            &project,
            &format!("{name}_default"),
        ],
    );
    docker(
        &a,
        &[
            "volume",
            "create",
            "--label",
            &project,
            &format!("{name}_www"),
        ],
    );
    let uploads = mountpoint(&a, &format!("{name}_www"));
    fs::write(uploads.join("index.html"), format!("uploads of {name}\n")).unwrap();
    fs::create_dir_all(uploads.join("2026/11")).unwrap();
    fs::write(uploads.join("2026/11/photo.bin"), big_file()).unwrap();
    let site = Site {
        name: name.to_string(),
        host: a.clone(),
        bind: tempfile::tempdir().unwrap(),
        copies: Default::default(),
    };
    let www = format!("{name}_www:/app/uploads");
    let publish = format!("127.0.0.1:{port}:80");
    let marker = format!("SITE_MARKER={name}");
    let db_password = format!("DB_PASSWORD={password}");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &site.c("web"), "--label", &project,
        "--label", "com.docker.compose.service=web", "--network", &format!("{name}_default"),
        "-v", &www, "-p", &publish, "-e", &marker, "-e", &db_password, V1,
    ]);
    add_shop_database(&site, password);
    site
}

/// Freezes site `name` on engine `host` (with `extra` flags); returns the snapshot id.
fn freeze_id(host: &str, name: &str, repo: &TestRepo, extra: &[&str]) -> String {
    let mut args = vec!["freeze", name, "--repo", &repo.url, "--json"];
    args.extend_from_slice(extra);
    let out = freezer_on(host, &args);
    assert_ok(&out);
    json(&out)["snapshot"].as_str().unwrap().to_string()
}

fn inspect(host: &str, container: &str) -> serde_json::Value {
    let out = docker(host, &["inspect", container]);
    serde_json::from_str::<serde_json::Value>(&out).unwrap()[0].clone()
}

fn env_of(c: &serde_json::Value) -> Vec<String> {
    c["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap().to_string())
        .collect()
}

#[test]
fn a_snapshot_thawed_and_drilled_on_a_newer_image() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("cb");
    let port = free_port();
    let password = format!("pw-{}", unique("s"));
    let site = start_shop(&name, port, &password);
    assert_eq!(http_get(port, "/version.html"), b"code v1\n");
    let facts = shop_facts(&address(&a, &site.c("db")), &password);
    let no_secret = |out: &std::process::Output| assert_no_secret(out, &[&password]);
    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
    no_secret(&out);
    let hydrated = json(&out)["snapshot"].as_str().unwrap().to_string();

    // The plan names what changes, and hides secret values.
    let copy = unique("cbc");
    site.made(&a, &copy);
    let port2 = free_port();
    let snap = format!("{name}:{hydrated}");
    let publish = format!("{port}={port2}");
    let image_v2 = format!("web={V2}");
    let thaw = |extra: &[&str]| {
        let mut args = vec![
            "thaw",
            &snap,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &publish,
            "--image",
            &image_v2,
            "--env",
            "web:FEATURE_FLAG=on",
        ];
        args.extend_from_slice(extra);
        freezer_on(&a, &args)
    };
    let out = thaw(&["--env", "web:DB_PASSWORD=other-secret", "--dry-run"]);
    assert_ok(&out);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for line in [
        format!("Image: {V1} -> {V2}"),
        "Cmd: [\"httpd\",\"-f\",\"-p\",\"80\",\"-h\",\"/app\"] -> [\"sh\",\"-c\"".to_string(),
        "WorkingDir: /app -> /srv".into(),
        "Env APP_VERSION: 1 -> 2".into(),
        "Env FEATURE_FLAG: (none) -> on".into(),
        "Env DB_PASSWORD: (hidden) -> (hidden)".into(),
        "ExposedPorts 443/tcp: (none) -> {}".into(),
    ] {
        assert!(plan.contains(&line), "{line:?} not in the plan:\n{plan}");
    }
    assert!(!plan.contains("other-secret"), "{plan}");
    no_secret(&out);
    assert_gone(&a, &copy);

    // A missing image or an unknown service is refused before anything is created.
    let image_only = |image: &str| {
        freezer_on(
            &a,
            &[
                "thaw", &snap, "--repo", &repo.url, "--as", &copy, "--image", image,
            ],
        )
    };
    let out = image_only("web=freezer-test/web:nope");
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("image freezer-test/web:nope, named by --image for service web, is not on the Docker engine"), "{}", stderr(&out));
    let out = image_only("cache=redis:7");
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(
            "--image names service cache, which the snapshot does not have; its services are"
        ),
        "{}",
        stderr(&out)
    );
    assert_gone(&a, &copy);

    // The copy runs v2's code with the snapshot's data.
    let out = thaw(&[]);
    assert_ok(&out);
    no_secret(&out);
    assert_eq!(http_get(port2, "/version.html"), b"code v2\n");
    assert_eq!(
        http_get(port2, "/uploads/index.html"),
        format!("uploads of {name}\n").into_bytes()
    );
    assert_same_tree(
        &mountpoint(&a, &format!("{name}_www")),
        &mountpoint(&a, &format!("{copy}_www")),
    );
    assert_eq!(
        shop_facts(&address(&a, &format!("{copy}-db-1")), &password),
        facts
    );
    let web = inspect(&a, &format!("{copy}-web-1"));
    assert_eq!(web["Config"]["Image"], V2);
    assert_eq!(
        web["Config"]["Cmd"],
        serde_json::json!([
            "sh",
            "-c",
            "mkdir -p /tmp && echo v2 > /tmp/started && exec httpd -f -p 80 -h /app"
        ])
    );
    assert_eq!(web["Config"]["WorkingDir"], "/srv");
    let env = env_of(&web);
    for e in [
        format!("SITE_MARKER={name}"),
        format!("DB_PASSWORD={password}"),
        "APP_VERSION=2".into(),
        "APP_MODE=production".into(),
        "FEATURE_FLAG=on".into(),
    ] {
        assert!(env.contains(&e), "{e} not in {env:?}");
    }
    assert!(!env.contains(&"APP_VERSION=1".to_string()), "{env:?}");
    assert_eq!(
        docker(
            &a,
            &["exec", &format!("{copy}-web-1"), "cat", "/tmp/started"]
        ),
        "v2"
    );
    // The original is untouched.
    assert_eq!(http_get(port, "/version.html"), b"code v1\n");
    assert_eq!(inspect(&a, &site.c("web"))["Config"]["Image"], V1);

    // The upgrade rehearsed on the latest backup (dehydrated: the dump loaded into a fresh
    // database container): v2 must serve the old uploads and find the old rows.
    freeze_id(&a, &name, &repo, &["--mode", "dehydrated"]);
    let probe = format!(
        "web=wget -qO- http://localhost/version.html | grep -qx 'code v2' && wget -qO- http://localhost/uploads/index.html | grep -qx 'uploads of {name}' && test \"$APP_VERSION\" = 2"
    );
    let out = freezer_on(
        &a,
        &[
            "drill", &name, "--repo", &repo.url, "--image", &image_v2, "--probe", &probe, "--json",
        ],
    );
    no_secret(&out);
    let report = result_line(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert_eq!(report["ok"], true);
    let checks = report["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["name"].as_str().unwrap().starts_with("probe web") && c["ok"] == true),
        "{report:#}"
    );
    assert!(
        checks
            .iter()
            .any(|c| c["name"].as_str().unwrap().starts_with("database shop") && c["ok"] == true),
        "{report:#}"
    );
    // The same probe on the old image fails: the probe tells the images apart.
    let out = freezer_on(
        &a,
        &[
            "drill", &name, "--repo", &repo.url, "--probe", &probe, "--json",
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert_eq!(result_line(&out.stdout)["ok"], false);
    assert_gone(&a, &format!("drill-{name}"));
}

/// Per-table checksums and the view's rows of a shop database, without the database's
/// name (which differs between a site and a project it is loaded into).
fn shop_sums(ip: &str, user: &str, password: &str, db: &str) -> String {
    let sums = sql_at(
        ip,
        user,
        password,
        db,
        "CHECKSUM TABLE customers, orders, products EXTENDED",
    );
    let sums: Vec<String> = sums
        .lines()
        .map(|l| l.split_once('.').map_or(l, |(_, t)| t).to_string())
        .collect();
    let view = sql_at(
        ip,
        user,
        password,
        db,
        "SELECT * FROM order_totals ORDER BY id",
    );
    format!("{}\n{view}", sums.join("\n"))
}

/// A developer's project: names of its own (containers, volume, network), web on v2, and
/// its database service `mysql` with its own credentials and an empty database. Removed
/// when dropped.
struct DevProject {
    /// Holds the web container's bind-mounted config file, as compose projects have.
    _conf: tempfile::TempDir,
    host: String,
    name: String,
    web: String,
    db: String,
    volume: String,
    network: String,
}

impl Drop for DevProject {
    fn drop(&mut self) {
        let a = &self.host;
        let _ = docker_try(a, &["rm", "-f", "-v", &self.web, &self.db]);
        let _ = docker_try(a, &["volume", "rm", &self.volume]);
        let _ = docker_try(a, &["network", "rm", &self.network]);
    }
}

const DEV_PASSWORD: &str = "dev-pw-7";

fn start_dev(a: &str, port: u16) -> DevProject {
    web_images();
    let name = unique("dev");
    let conf = tempfile::tempdir().unwrap();
    fs::write(conf.path().join("app.ini"), b"[dev]\n").unwrap();
    let ini = format!("{}:/etc/app.ini:ro", conf.path().join("app.ini").display());
    let p = DevProject {
        _conf: conf,
        host: a.to_string(),
        web: format!("{name}-webapp"),
        db: format!("{name}-sql"),
        volume: format!("{name}-media"),
        network: format!("{name}-net"),
        name,
    };
    let project = format!("com.docker.compose.project={}", p.name);
    docker(a, &["network", "create", &p.network]);
    docker(a, &["volume", "create", &p.volume]);
    let media = format!("{}:/app/uploads", p.volume);
    let publish = format!("127.0.0.1:{port}:80");
    let pw = format!("MARIADB_PASSWORD={DEV_PASSWORD}");
    #[rustfmt::skip]
    docker(a, &[
        "run", "-d", "--name", &p.web, "--label", &project,
        "--label", "com.docker.compose.service=web", "--network", &p.network,
        "-v", &media, "-v", &ini, "-p", &publish, "-e", "SITE_MARKER=dev", V2,
    ]);
    #[rustfmt::skip]
    docker(a, &[
        "run", "-d", "--name", &p.db, "--label", &project,
        "--label", "com.docker.compose.service=mysql", "--network", &p.network,
        "-e", "MARIADB_ROOT_PASSWORD=dev-root", "-e", "MARIADB_DATABASE=devshop",
        "-e", "MARIADB_USER=dev", "-e", &pw, &mariadb_image(),
    ]);
    sql_at(
        &address(a, &p.db),
        "dev",
        DEV_PASSWORD,
        "devshop",
        "SELECT 1",
    );
    p
}

#[test]
fn a_snapshot_loaded_onto_another_compose_project() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("on");
    let password = format!("pw-{}", unique("s"));
    let site = start_shop(&name, free_port(), &password);
    let facts = shop_sums(&address(&a, &site.c("db")), "shop", &password, "shop");
    // Stopped, not paused, for the copy: a clean shutdown. (A paused server's files are
    // crash-consistent: on start PostgreSQL empties unlogged tables and moves sequences
    // past the values it had logged ahead, so its rows would not be the source's.)
    let hydrated = freeze_id(&a, &name, &repo, &["--stop"]);
    let snap = format!("{name}:{hydrated}");

    let port = free_port();
    let dev = start_dev(&a, port);
    let media = mountpoint(&a, &dev.volume);
    fs::write(media.join("placeholder.txt"), b"dev's own\n").unwrap();
    let ids = |p: &DevProject| {
        docker(
            &a,
            &["inspect", "-f", "{{.Id}} {{.State.Status}}", &p.web, &p.db],
        )
    };
    let before = ids(&dev);
    let no_secret = |out: &std::process::Output| assert_no_secret(out, &[&password, DEV_PASSWORD]);

    // The snapshot's service db has no counterpart without --map: refused, nothing changed.
    let onto = |extra: &[&str]| {
        let mut args = vec!["thaw", &snap, "--repo", &repo.url, "--onto", &dev.name];
        args.extend_from_slice(extra);
        let out = freezer_on(&a, &args);
        no_secret(&out);
        out
    };
    let out = onto(&["--replace"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("service db of snapshot {snap}"))
            && stderr(&out).contains("--map db=SERVICE"),
        "{}",
        stderr(&out)
    );
    // A non-empty volume needs --replace.
    let out = onto(&["--map", "db=mysql"]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("volume {}", dev.volume)),
        "{}",
        stderr(&out)
    );
    // The dry run prints the mapping and what is replaced.
    let out = onto(&["--map", "db=mysql", "--replace", "--dry-run"]);
    assert_ok(&out);
    let plan = String::from_utf8_lossy(&out.stdout).to_string();
    for line in [
        format!("service web ({}) -> web ({})", site.c("web"), dev.web),
        format!(
            "/app/uploads             tree volume.{name}_www -> volume {} (replace)",
            dev.volume
        ),
        format!("service db ({}) -> mysql ({})", site.c("db"), dev.db),
        format!(
            "database shop -> database devshop of {}, from a scratch copy",
            dev.db
        ),
        format!("stop {} for the swap", dev.web),
    ] {
        assert!(plan.contains(&line), "{line:?} not in:\n{plan}");
    }
    assert_eq!(
        fs::read(media.join("placeholder.txt")).unwrap(),
        b"dev's own\n"
    );
    assert_eq!(ids(&dev), before);

    // Loaded: the project serves the snapshot's files and rows under its own names and
    // credentials; its containers are the same ones, running again.
    let out = onto(&["--map", "db=mysql", "--replace", "--json"]);
    let report = result_line(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    let safety = report["safety_snapshot"]
        .as_str()
        .expect("a safety snapshot")
        .to_string();
    assert_eq!(report["databases"][0]["tables"], 3, "{report:#}");
    assert_eq!(ids(&dev), before);
    assert_same_tree(&mountpoint(&a, &format!("{name}_www")), &media);
    assert_eq!(
        http_get(port, "/uploads/index.html"),
        format!("uploads of {name}\n").into_bytes()
    );
    assert_eq!(http_get(port, "/version.html"), b"code v2\n");
    assert_eq!(
        shop_sums(&address(&a, &dev.db), "dev", DEV_PASSWORD, "devshop"),
        facts
    );
    assert!(!docker(&a, &["ps", "-a", "--format", "{{.Names}}"]).contains(&format!("onto-{name}")));
    // What was replaced is in the safety snapshot.
    let out = freezer(&[
        "cat",
        &format!("{}:{safety}", dev.name),
        &format!("volume.{}/placeholder.txt", dev.volume),
        "--repo",
        &repo.url,
    ]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"dev's own\n");

    // A dehydrated snapshot onto a project whose database is empty: loaded and verified.
    freeze_id(&a, &name, &repo, &["--mode", "dehydrated"]);
    let port2 = free_port();
    let dev2 = start_dev(&a, port2);
    let out = freezer_on(
        &a,
        &[
            "thaw", &name, "--repo", &repo.url, "--onto", &dev2.name, "--map", "db=mysql", "--json",
        ],
    );
    no_secret(&out);
    let report = result_line(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert!(report.get("safety_snapshot").is_none(), "{report:#}");
    assert_eq!(report["databases"][0]["source"], "shop");
    assert_eq!(
        shop_sums(&address(&a, &dev2.db), "dev", DEV_PASSWORD, "devshop"),
        facts
    );
    assert_eq!(
        http_get(port2, "/uploads/index.html"),
        format!("uploads of {name}\n").into_bytes()
    );
    // Loading it again into the now full database is refused without --replace.
    let out = freezer_on(
        &a,
        &[
            "thaw", &name, "--repo", &repo.url, "--onto", &dev2.name, "--map", "db=mysql",
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}

#[test]
fn a_snapshot_loaded_onto_a_project_on_a_remote_engine() {
    let (a, b) = (host_a(), host_b());
    let tcp = std::env::var("FREEZER_TEST_DOCKER_HOST_B_TCP").expect("set by scripts/services");
    let certs = std::env::var("FREEZER_TEST_DOCKER_CERTS_B").expect("set by scripts/services");
    let repo = TestRepo::local().init();
    let name = unique("onr");
    let password = format!("pw-{}", unique("s"));
    let site = start_shop(&name, free_port(), &password);
    let facts = shop_sums(&address(&a, &site.c("db")), "shop", &password, "shop");
    // Stopped, not paused, for the copy: a clean shutdown. (A paused server's files are
    // crash-consistent: on start PostgreSQL empties unlogged tables and moves sequences
    // past the values it had logged ahead, so its rows would not be the source's.)
    let hydrated = freeze_id(&a, &name, &repo, &["--stop"]);
    images_on_b(&[V2, &mariadb_image()]);
    let port = free_port();
    let dev = start_dev(&b, port);
    fs::write(
        mountpoint(&b, &dev.volume).join("placeholder.txt"),
        b"dev's own\n",
    )
    .unwrap();
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("freezer.toml");
    fs::write(
        &config,
        format!("[hosts.far]\ndocker = \"{tcp}\"\ntls_certs = \"{certs}\"\n"),
    )
    .unwrap();
    let cache = work.path().join("cache");
    // Through the Engine API only, with the config's [hosts.far]: this machine's docker
    // socket is not used.
    let far = |args: &[&str]| through_config_only(args, &repo, &config, &cache);
    let out = far(&[
        "thaw",
        &format!("{name}:{hydrated}@far"),
        "--onto",
        &dev.name,
        "--map",
        "db=mysql",
        "--replace",
        "--json",
    ]);
    let report = result_line(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
    assert!(report["safety_snapshot"].is_string(), "{report:#}");
    assert_same_tree_to_seconds(
        &mountpoint(&a, &format!("{name}_www")),
        &mountpoint(&b, &dev.volume),
    );
    assert_eq!(
        http_get(port, "/uploads/index.html"),
        format!("uploads of {name}\n").into_bytes()
    );
    assert_eq!(
        shop_sums(&address(&b, &dev.db), "dev", DEV_PASSWORD, "devshop"),
        facts
    );
    assert_eq!(state(&b, &dev.web), "running");
    let left = docker(&b, &["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        !left.contains("freezer-restore") && !left.contains(&format!("onto-{name}")),
        "{left}"
    );

    // The same snapshot as a copy on v2 through the remote engine (v1 is not there).
    let copy = unique("onrc");
    site.made(&b, &copy);
    let port2 = free_port();
    let out = far(&[
        "thaw",
        &format!("{name}:{hydrated}@far"),
        "--as",
        &copy,
        "--image",
        &format!("web={V2}"),
        "--publish",
        &format!("{}={port2}", site_port(&a, &site)),
    ]);
    assert_ok(&out);
    assert_eq!(http_get(port2, "/version.html"), b"code v2\n");
    assert_eq!(
        http_get(port2, "/uploads/index.html"),
        format!("uploads of {name}\n").into_bytes()
    );
    assert_eq!(
        shop_sums(
            &address(&b, &format!("{copy}-db-1")),
            "shop",
            &password,
            "shop"
        ),
        facts
    );
}

/// The host port a site's web container publishes.
fn site_port(host: &str, site: &Site) -> u16 {
    let p = docker(host, &["port", &site.c("web"), "80/tcp"]);
    let first = p.lines().next().unwrap();
    first.rsplit(':').next().unwrap().trim().parse().unwrap()
}

/// A PostgreSQL container as the official image is driven (POSTGRES_USER,
/// POSTGRES_PASSWORD, POSTGRES_DB), service `service` of compose project `project`, with
/// its data in a volume; returns once it accepts the login.
fn start_pg(a: &str, project: &str, service: &str, user: &str, password: &str, db: &str) -> String {
    let image = std::env::var("FREEZER_TEST_POSTGRES_IMAGE").expect("set by scripts/services");
    let name = format!("{project}-{service}-1");
    #[rustfmt::skip]
    docker(a, &[
        "run", "-d", "--name", &name, "--label", &format!("com.docker.compose.project={project}"),
        "--label", &format!("com.docker.compose.service={service}"),
        "-v", &format!("{project}_{service}:/var/lib/postgresql/data"),
        "-e", &format!("POSTGRES_PASSWORD={password}"), "-e", &format!("POSTGRES_USER={user}"),
        "-e", &format!("POSTGRES_DB={db}"), &image,
    ]);
    let url = format!("postgres://{user}@{}:5432", address(a, &name));
    crate::postgres::wait_for_psql(&url, password, db, &name);
    name
}

fn remove_pg(a: &str, project: &str, service: &str) {
    let _ = docker_try(a, &["rm", "-f", "-v", &format!("{project}-{service}-1")]);
    let _ = docker_try(a, &["volume", "rm", &format!("{project}_{service}")]);
}

/// `thaw --onto` with PostgreSQL: a site whose database is PostgreSQL, frozen dehydrated
/// and hydrated, loaded into another project's PostgreSQL service under that project's
/// own user, password and database name; rows, sequences and schema as the source's.
#[test]
fn a_postgres_snapshot_loaded_onto_another_project() {
    use crate::postgres::facts_at;
    let a = host_a();
    let repo = TestRepo::local().init();
    let (name, dev) = (unique("onpg"), unique("devpg"));
    let (password, dev_password) = (format!("pw-{}", unique("s")), "dev-pg-pw-9".to_string());
    start_pg(&a, &name, "db", "app", &password, "shop");
    let src = format!(
        "postgres://app@{}:5432",
        address(&a, &format!("{name}-db-1"))
    );
    let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/pg-fixture.sql");
    let out = crate::postgres::psql_at(&src, &password, "shop")
        .arg("-f")
        .arg(&fixture)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let facts = facts_at(&src, &password, "shop").1;
    let dehydrated = freeze_id(&a, &name, &repo, &["--mode", "dehydrated"]);
    // Stopped, not paused, for the copy: a clean shutdown. (A paused server's files are
    // crash-consistent: on start PostgreSQL empties unlogged tables and moves sequences
    // past the values it had logged ahead, so its rows would not be the source's.)
    let hydrated = freeze_id(&a, &name, &repo, &["--stop"]);

    for (snap, replace) in [(dehydrated, false), (hydrated, true)] {
        start_pg(&a, &dev, "pgsql", "dev", &dev_password, "devshop");
        let target = format!(
            "postgres://dev@{}:5432",
            address(&a, &format!("{dev}-pgsql-1"))
        );
        if replace {
            // Something to replace: the hydrated one loads over it (after a safety snapshot).
            let out = crate::postgres::psql_at(&target, &dev_password, "devshop")
                .args(["-c", "CREATE TABLE old_stuff (id int)"])
                .output()
                .unwrap();
            assert!(out.status.success());
        }
        let snapshot = format!("{name}:{snap}");
        let mut args = vec![
            "thaw", &snapshot, "--repo", &repo.url, "--onto", &dev, "--map", "db=pgsql", "--json",
        ];
        if replace {
            args.push("--replace");
        }
        let out = freezer_on(&a, &args);
        assert_no_secret(&out, &[&password, &dev_password]);
        let report = result_line(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{report:#}\n{}", stderr(&out));
        assert_eq!(report["databases"][0]["source"], "shop", "{report:#}");
        assert_eq!(
            facts_at(&target, &dev_password, "devshop").1,
            facts,
            "from {snapshot} (hydrated: {replace})"
        );
        remove_pg(&a, &dev, "pgsql");
    }
    remove_pg(&a, &name, "db");
}
