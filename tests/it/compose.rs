//! Docker sites shaped as compose projects are written: a database whose password is a
//! compose secret (`MARIADB_ROOT_PASSWORD_FILE=/run/secrets/…`), its configuration in a
//! bind-mounted directory of the project.

use std::fs;

use crate::common::*;
use crate::hydrated::{
    address, docker, docker_try, freeze_dehydrated, freezer_on, host_a, mariadb_image, sql_at,
};

/// Removes what a test made on engine `host`: the containers, volumes and network of
/// each project, also when it failed halfway.
pub struct Projects {
    host: String,
    names: Vec<String>,
}

impl Projects {
    pub fn on(host: &str, names: &[&String]) -> Projects {
        Projects {
            host: host.to_string(),
            names: names.iter().map(|n| n.to_string()).collect(),
        }
    }
}

impl Drop for Projects {
    fn drop(&mut self) {
        for p in &self.names {
            let filter = format!("label=com.docker.compose.project={p}");
            for id in docker(&self.host, &["ps", "-aq", "--filter", &filter]).lines() {
                let _ = docker_try(&self.host, &["rm", "-f", "-v", id]);
            }
            let vols = docker(
                &self.host,
                &["volume", "ls", "-q", "--filter", &format!("name={p}")],
            );
            for v in vols.lines() {
                let _ = docker_try(&self.host, &["volume", "rm", v]);
            }
            let nets = docker(&self.host, &["network", "ls", "-q", "--filter", &filter]);
            for n in nets.lines() {
                let _ = docker_try(&self.host, &["network", "rm", n]);
            }
            let _ = docker_try(&self.host, &["network", "rm", &format!("{p}_default")]);
        }
    }
}

#[test]
fn a_database_whose_password_is_a_secret_file_is_dumped_and_loaded_back() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("sec");
    let copy = unique("secc");
    let broken = unique("secb");
    let _cleanup = Projects::on(&a, &[&name, &copy, &broken]);
    // The project directory: the secret (as `echo pw > file` writes it, with a newline)
    // and the server's configuration.
    let project = tempfile::tempdir().unwrap();
    let password = format!("pw-{}", unique("s"));
    let secret = format!("{password}\n");
    fs::create_dir_all(project.path().join("secrets")).unwrap();
    fs::write(project.path().join("secrets/db-password"), &secret).unwrap();
    fs::create_dir_all(project.path().join("conf")).unwrap();
    let cnf = b"[mysqld]\n# tuned for the shop\nmax_connections = 50\n";
    fs::write(project.path().join("conf/shop.cnf"), cnf).unwrap();

    let label = format!("com.docker.compose.project={name}");
    let net = format!("{name}_default");
    docker(&a, &["network", "create", "--label", &label, &net]);
    let db = format!("{name}-db-1");
    // As compose mounts a secret: the one file.
    let secrets = format!(
        "{}:/run/secrets/db-password:ro",
        project.path().join("secrets/db-password").display()
    );
    let conf = format!(
        "{}:/etc/mysql/conf.d:ro",
        project.path().join("conf").display()
    );
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &db, "--label", &label, "--label", "com.docker.compose.service=db",
        "--network", &net, "--network-alias", "db", "-v", &format!("{name}_db:/var/lib/mysql"),
        "-v", &secrets, "-v", &conf,
        "-e", "MARIADB_ROOT_PASSWORD_FILE=/run/secrets/db-password", "-e", "MARIADB_DATABASE=shop",
        &mariadb_image(),
    ]);
    let ip = address(&a, &db);
    sql_at(
        &ip,
        "root",
        &password,
        "shop",
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO t SELECT seq, CONCAT('row ', seq) FROM seq_1_to_500",
    );
    let sums = |ip: &str| sql_at(ip, "root", &password, "shop", "CHECKSUM TABLE t EXTENDED");
    let want = sums(&ip);
    let no_secret = |out: &std::process::Output| assert_no_secret(out, &[&password]);

    let out = freeze_dehydrated(&a, &name, &repo, &["--json"]);
    no_secret(&out);
    ok_report(&out);
    let report = result_line(&out.stdout);
    assert_eq!(report["databases"][0]["rows"], 500, "{report}");
    // The dump stands for the data directory only: the secret and the configuration
    // are kept as trees.
    let trees: Vec<&str> = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(trees.len(), 2, "{trees:?}");
    assert!(trees.iter().any(|t| t.starts_with("bind.")), "{trees:?}");
    assert!(trees.iter().any(|t| t.starts_with("files.")), "{trees:?}");

    let out = freezer_on(
        &a,
        &["thaw", &name, "--repo", &repo.url, "--as", &copy, "--json"],
    );
    no_secret(&out);
    ok_report(&out);
    let copy_db = format!("{copy}-db-1");
    let cat = |path: &str| docker(&a, &["exec", &copy_db, "cat", path]);
    assert_eq!(cat("/run/secrets/db-password"), password);
    // The copy's bind directories sit beside the original's, byte for byte.
    let restored = project.path().join(format!("secrets.{copy}/db-password"));
    assert_eq!(fs::read(&restored).unwrap(), secret.as_bytes());
    assert_eq!(
        cat("/etc/mysql/conf.d/shop.cnf").as_bytes(),
        cnf.trim_ascii_end()
    );
    assert_eq!(sums(&address(&a, &copy_db)), want);

    // A database container that cannot start (its secret is not where its environment
    // says): the thaw says it exited and why, and removes what it created.
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--as",
            &broken,
            "--env",
            "db:MARIADB_ROOT_PASSWORD_FILE=/run/secrets/missing",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("container {broken}-db-1 is exited")),
        "{err}"
    );
    assert!(
        err.contains("/run/secrets/missing"),
        "the log lines are not shown: {err}"
    );
    let left = docker(&a, &["ps", "-aq", "--filter", &format!("name={broken}")]);
    assert!(left.is_empty(), "left behind: {left}");
    let _ = fs::remove_dir_all(project.path().join(format!("secrets.{broken}")));
}

/// Docker marks a paused container unhealthy until its next check passes; a freeze
/// waits that out, so the site it leaves is as healthy as it found it.
#[test]
fn a_hydrated_freeze_leaves_healthy_containers_healthy() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("hc");
    let _cleanup = Projects::on(&a, &[&name]);
    let label = format!("com.docker.compose.project={name}");
    let image = crate::hydrated::image();
    let health = |c: &str| docker(&a, &["inspect", "-f", "{{.State.Health.Status}}", c]);
    let mut names = Vec::new();
    for service in ["web", "worker"] {
        let c = format!("{name}-{service}-1");
        #[rustfmt::skip]
        docker(&a, &[
            "run", "-d", "--name", &c, "--label", &label,
            "--label", &format!("com.docker.compose.service={service}"),
            "--health-cmd", "test -e /proc/1", "--health-interval", "3s", "--health-retries", "60",
            &image, "sleep", "600",
        ]);
        names.push(c);
    }
    for c in &names {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while health(c) != "healthy" {
            assert!(
                std::time::Instant::now() < deadline,
                "{c} never became healthy"
            );
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
    }

    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
    ok_report(&out);
    let after: Vec<String> = names.iter().map(|c| health(c)).collect();
    assert_eq!(after, ["healthy", "healthy"]);
    let report = result_line(&out.stdout);
    assert_eq!(report["window"]["mode"], "pause", "{report}");
    assert!(report["window"]["health_ms"].as_u64().is_some(), "{report}");
    assert!(report["window"].get("unhealthy").is_none(), "{report}");
    assert_eq!(report["warnings"], serde_json::json!([]), "{report}");
}

/// (bytes, permission bits, mtime seconds) of a file: what a restore must keep.
fn file_facts(p: &std::path::Path) -> (Vec<u8>, u32, i64) {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (fs::read(p).unwrap(), m.mode() & 0o7777, m.mtime())
}

/// A compose project's single-file binds: a page and a secret from the project
/// directory, a file inside a bind-mounted directory, and the host's /etc/localtime.
#[test]
fn single_file_binds_are_frozen_and_come_back_in_place_and_in_a_copy() {
    use std::os::unix::fs::PermissionsExt;
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("fb");
    let copy = unique("fbc");
    let _cleanup = Projects::on(&a, &[&name, &copy]);
    let project = tempfile::tempdir().unwrap();
    let dir = project.path().join("site");
    fs::create_dir_all(dir.join("conf")).unwrap();
    let page = dir.join("index.html");
    let secret = dir.join("db-password.txt");
    let extra = dir.join("conf/extra.ini");
    fs::write(&page, format!("<h1>{name} from a file bind</h1>\n")).unwrap();
    fs::write(&secret, "s3cret\n").unwrap();
    fs::set_permissions(&secret, fs::Permissions::from_mode(0o600)).unwrap();
    fs::write(&extra, "[extra]\nkey = 1\n").unwrap();
    fs::write(dir.join("conf/app.ini"), "[app]\n").unwrap();
    // Not bound: never touched by a thaw.
    fs::write(dir.join("README.md"), "the project\n").unwrap();
    let stamp = filetime::FileTime::from_unix_time(1_700_000_000, 0);
    for f in [&page, &secret, &extra] {
        filetime::set_file_mtime(f, stamp).unwrap();
    }
    let facts: Vec<_> = [&page, &secret, &extra]
        .iter()
        .map(|p| file_facts(p))
        .collect();

    let label = format!("com.docker.compose.project={name}");
    docker(
        &a,
        &[
            "network",
            "create",
            "--label",
            &label,
            &format!("{name}_default"),
        ],
    );
    let port = crate::hydrated::free_port();
    let bind = |from: &std::path::Path, to: &str| format!("{}:{to}", from.display());
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-web-1"), "--label", &label,
        "--label", "com.docker.compose.service=web", "--network", &format!("{name}_default"),
        "-p", &format!("127.0.0.1:{port}:80"),
        "-v", &bind(&page, "/www/index.html:ro"), "-v", &bind(&secret, "/run/secrets/db-password:ro"),
        "-v", &bind(&dir.join("conf"), "/conf"), "-v", &bind(&extra, "/etc/extra.ini"),
        "-v", "/etc/localtime:/etc/localtime:ro",
        &crate::hydrated::image(), "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let web = format!("{name}-web-1");
    let page_bytes = fs::read(&page).unwrap();
    assert_eq!(crate::hydrated::http_get(port, "/index.html"), page_bytes);

    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
    ok_report(&out);
    let report = result_line(&out.stdout);
    let trees: Vec<String> = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap().to_string())
        .collect();
    // The directory of the files holds just them; the file under the bound directory
    // travels with that directory; /etc/localtime is not copied.
    let files = trees
        .iter()
        .find(|t| t.starts_with("files."))
        .unwrap_or_else(|| panic!("{trees:?}"));
    assert_eq!(trees.len(), 2, "{trees:?}");
    let out = freezer(&[
        "cat",
        &name,
        &format!("{files}/db-password.txt"),
        "--repo",
        &repo.url,
    ]);
    assert_ok(&out);
    assert_eq!(out.stdout, b"s3cret\n");
    let out = freezer(&["ls", &name, files, "--repo", &repo.url]);
    assert_ok(&out);
    let listing = String::from_utf8_lossy(&out.stdout);
    assert!(!listing.contains("README.md"), "{listing}");

    // A copy: its files beside the original's, the same bytes, mode and mtime.
    let port2 = crate::hydrated::free_port();
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
            "--json",
        ],
    );
    ok_report(&out);
    assert_eq!(crate::hydrated::http_get(port2, "/index.html"), page_bytes);
    let copy_web = format!("{copy}-web-1");
    assert_eq!(
        docker(&a, &["exec", &copy_web, "cat", "/run/secrets/db-password"]),
        "s3cret"
    );
    assert_eq!(
        docker(&a, &["exec", &copy_web, "cat", "/etc/extra.ini"]),
        "[extra]\nkey = 1"
    );
    let sources = docker(
        &a,
        &[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Source}} {{end}}",
            &copy_web,
        ],
    );
    assert!(
        sources.split(' ').any(|s| s == "/etc/localtime"),
        "{sources}"
    );
    // The files' directory and the bound directory each get the copy's name.
    let copied = project.path().join(format!("site.{copy}"));
    let copied_files = [
        copied.join("index.html"),
        copied.join("db-password.txt"),
        dir.join(format!("conf.{copy}/extra.ini")),
    ];
    for (f, want) in copied_files.iter().zip(&facts) {
        assert_eq!(&file_facts(f), want, "{}", f.display());
    }
    assert!(!copied.join("README.md").exists());
    docker(&a, &["rm", "-f", &copy_web]);

    // The host lost the site and the bound files: they come back in place, and the
    // rest of the directory is left alone.
    docker(&a, &["rm", "-f", &web]);
    docker(&a, &["network", "rm", &format!("{name}_default")]);
    fs::remove_file(&page).unwrap();
    fs::remove_file(&secret).unwrap();
    fs::remove_dir_all(dir.join("conf")).unwrap();
    fs::write(dir.join("README.md"), "edited since\n").unwrap();
    let out = freezer_on(&a, &["thaw", &name, "--repo", &repo.url, "--json"]);
    ok_report(&out);
    for (f, want) in [&page, &secret, &extra].iter().zip(&facts) {
        assert_eq!(&file_facts(f), want, "{}", f.display());
    }
    assert_eq!(fs::read(dir.join("README.md")).unwrap(), b"edited since\n");
    assert_eq!(crate::hydrated::http_get(port, "/index.html"), page_bytes);

    // Again without the containers, the files still there: refused, naming a file;
    // with --replace, replaced.
    docker(&a, &["rm", "-f", &web]);
    fs::write(&secret, "changed\n").unwrap();
    let out = freezer_on(&a, &["thaw", &name, "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("exists"), "{}", stderr(&out));
    let out = freezer_on(
        &a,
        &["thaw", &name, "--repo", &repo.url, "--replace", "--json"],
    );
    ok_report(&out);
    assert_eq!(file_facts(&secret), facts[1]);
    assert_eq!(fs::read(dir.join("README.md")).unwrap(), b"edited since\n");
}

/// Images built by compose (`build:`) exist on their own host only: a thaw elsewhere
/// without `--with-images` is refused before anything is created, naming each service.
#[test]
fn a_thaw_onto_an_engine_without_the_built_images_names_the_services() {
    let (a, b) = (host_a(), crate::hydrated::host_b());
    let repo = TestRepo::local().init();
    let name = unique("bi");
    let _cleanup = Projects::on(&a, &[&name]);
    let label = format!("com.docker.compose.project={name}");
    let mut images = Vec::new();
    for service in ["web", "worker"] {
        // As compose names what it builds: PROJECT-SERVICE, on this engine only.
        let built = format!("{name}-{service}");
        docker(&a, &["tag", &crate::hydrated::image(), &built]);
        #[rustfmt::skip]
        docker(&a, &[
            "run", "-d", "--name", &format!("{name}-{service}-1"), "--label", &label,
            "--label", &format!("com.docker.compose.service={service}"), &built, "sleep", "600",
        ]);
        images.push(built);
    }
    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url]);
    assert_ok(&out);
    let out = freezer_on(&b, &["thaw", &name, "--repo", &repo.url]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "{err}");
    for (service, image) in ["web", "worker"].iter().zip(&images) {
        assert!(err.contains(&format!("{service} ({image})")), "{err}");
    }
    assert!(err.contains("--with-images"), "{err}");
    let made = docker(&b, &["ps", "-aq", "--filter", &format!("label={label}")]);
    assert!(made.is_empty(), "created on the other engine: {made}");
    let nets = docker(
        &b,
        &["network", "ls", "-q", "--filter", &format!("name={name}")],
    );
    assert!(nets.is_empty(), "{nets}");
    for i in &images {
        let _ = docker_try(&a, &["rm", "-f", &format!("{i}-1")]);
        let _ = docker_try(&a, &["rmi", i]);
    }
}

/// What a compose file can set on a container, each one compared after a thaw as a copy:
/// none may be dropped silently. A service in another's network namespace
/// (`network_mode: service:proxy`) joins its own copy's, not the original's.
#[test]
fn compose_settings_survive_a_thaw() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("cs");
    let copy = unique("csc");
    let _cleanup = Projects::on(&a, &[&name, &copy]);
    let label = format!("com.docker.compose.project={name}");
    let net = format!("{name}_default");
    docker(&a, &["network", "create", "--label", &label, &net]);
    let image = crate::hydrated::image();
    let proxy = format!("{name}-proxy-1");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &proxy, "--label", &label,
        "--label", "com.docker.compose.service=proxy", "--label", "app.tier=front",
        "--network", &net, "--network-alias", "proxy",
        "--restart", "unless-stopped", "--add-host", "db.example:10.1.2.3",
        "--cap-add", "NET_ADMIN", "--cap-drop", "MKNOD", "--ulimit", "nofile=1024:2048",
        "--sysctl", "net.ipv4.ip_unprivileged_port_start=0",
        "--log-opt", "max-size=10m", "--log-opt", "max-file=2",
        "--tmpfs", "/cache:size=1m,mode=1777", "--dns", "10.9.9.9", "--dns-search", "example.com",
        "--stop-signal", "SIGINT", "--stop-timeout", "7", "--workdir", "/tmp",
        "--hostname", "proxyhost", "--pids-limit", "100", "--memory", "64m", "--shm-size", "32m",
        "--group-add", "10", "--security-opt", "no-new-privileges",
        "--health-cmd", "true", "--health-interval", "5s", "--health-retries", "3",
        "--health-timeout", "2s", "--health-start-period", "1s", "-e", "APP_MODE=edge",
        &image, "sleep", "600",
    ]);
    let side = format!("{name}-side-1");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &side, "--label", &label, "--label", "com.docker.compose.service=side",
        "--network", &format!("container:{proxy}"), &image, "sleep", "600",
    ]);

    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url]);
    assert_ok(&out);
    let out = freezer_on(&a, &["thaw", &name, "--repo", &repo.url, "--as", &copy]);
    assert_ok(&out);

    let inspect = |c: &str| -> serde_json::Value {
        serde_json::from_str::<serde_json::Value>(&docker(&a, &["inspect", c])).unwrap()[0].clone()
    };
    let (orig, new) = (inspect(&proxy), inspect(&format!("{copy}-proxy-1")));
    let host_config = [
        "RestartPolicy",
        "ExtraHosts",
        "CapAdd",
        "CapDrop",
        "Ulimits",
        "Sysctls",
        "LogConfig",
        "Tmpfs",
        "Dns",
        "DnsSearch",
        "PidsLimit",
        "Memory",
        "ShmSize",
        "GroupAdd",
        "SecurityOpt",
    ];
    for f in host_config {
        assert_eq!(
            new["HostConfig"][f], orig["HostConfig"][f],
            "HostConfig.{f}"
        );
        assert!(
            !orig["HostConfig"][f].is_null(),
            "HostConfig.{f} was not set by the test"
        );
    }
    for f in [
        "Healthcheck",
        "StopSignal",
        "StopTimeout",
        "WorkingDir",
        "Hostname",
        "Env",
        "Cmd",
    ] {
        assert_eq!(new["Config"][f], orig["Config"][f], "Config.{f}");
    }
    assert_eq!(new["Config"]["Labels"]["app.tier"], "front");
    assert_eq!(
        new["Config"]["Labels"]["com.docker.compose.service"],
        "proxy"
    );
    let aliases = &new["NetworkSettings"]["Networks"][format!("{copy}_default")]["Aliases"];
    assert!(
        aliases
            .as_array()
            .is_some_and(|a| a.contains(&serde_json::json!("proxy"))),
        "{aliases}"
    );

    // network_mode: service:proxy, in the copy: the copy's proxy's namespace.
    let netns = |c: &str| docker(&a, &["exec", c, "readlink", "/proc/1/ns/net"]);
    let copy_side = format!("{copy}-side-1");
    assert_eq!(netns(&copy_side), netns(&format!("{copy}-proxy-1")));
    assert_ne!(netns(&copy_side), netns(&proxy));
}

/// A compose file that forgets to name a database's volume leaves it anonymous: the copy
/// gets an anonymous volume at the same path with the same files, which `docker rm -v`
/// (as `docker compose down -v`) removes with it.
#[test]
fn an_anonymous_volume_comes_back_anonymous() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("av");
    let copy = unique("avc");
    let _cleanup = Projects::on(&a, &[&name, &copy]);
    let label = format!("com.docker.compose.project={name}");
    let app = format!("{name}-app-1");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &app, "--label", &label, "--label", "com.docker.compose.service=app",
        "-v", "/data", &crate::hydrated::image(), "sleep", "600",
    ]);
    // Its state, written while it runs (a copy that only started again would lack it).
    docker(
        &a,
        &[
            "exec",
            &app,
            "sh",
            "-c",
            "echo kept > /data/state && mkdir /data/sub && echo deep > /data/sub/x",
        ],
    );
    let volume_of = |c: &str| {
        docker(
            &a,
            &["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", c],
        )
    };
    let original = volume_of(&app);

    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
    ok_report(&out);
    let trees = result_line(&out.stdout)["trees"].clone();
    assert_eq!(trees[0]["name"], format!("anon.{app}.data"), "{trees}");

    let out = freezer_on(
        &a,
        &["thaw", &name, "--repo", &repo.url, "--as", &copy, "--json"],
    );
    ok_report(&out);
    let copy_app = format!("{copy}-app-1");
    let volume = volume_of(&copy_app);
    assert!(
        volume.len() == 64 && volume.bytes().all(|b| b.is_ascii_hexdigit()) && volume != original,
        "the copy's volume is not a new anonymous one: {volume}"
    );
    assert_eq!(
        docker(&a, &["exec", &copy_app, "cat", "/data/state"]),
        "kept"
    );
    assert_eq!(
        docker(&a, &["exec", &copy_app, "cat", "/data/sub/x"]),
        "deep"
    );
    let named = docker(
        &a,
        &["volume", "ls", "-q", "--filter", &format!("name={copy}")],
    );
    assert!(named.is_empty(), "a named volume was made for it: {named}");
    // As `docker compose down -v`: the volume goes with its container.
    docker(&a, &["rm", "-f", "-v", &copy_app]);
    assert!(!docker_try(&a, &["volume", "inspect", &volume])
        .status
        .success());
}

/// A timestamp of the engine's in UTC (RFC 3339 `2026-12-06T15:15:16.0043Z`, or Go's
/// `2026-12-06 15:15:16.0043 +0000 UTC`) as nanoseconds since the day began, for
/// ordering two of the same day.
fn nanos_of_day(t: &str) -> u128 {
    let clock = match t.as_bytes().get(10) {
        Some(b'T') => t[11..].trim_end_matches('Z'),
        _ => t.split_whitespace().nth(1).unwrap(),
    };
    let (hms, frac) = clock.split_once('.').unwrap_or((clock, "0"));
    let secs: Vec<u128> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let frac: u128 = format!("{frac:0<9}")[..9].parse().unwrap();
    (secs[0] * 3600 + secs[1] * 60 + secs[2]) * 1_000_000_000 + frac
}

/// `depends_on: {db: {condition: service_healthy}}`: the copy's app starts only once its
/// database passes its health check, as `docker compose up` would start it.
#[test]
fn a_service_that_needs_a_healthy_one_starts_after_it() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("do");
    let copy = unique("doc");
    let _cleanup = Projects::on(&a, &[&name, &copy]);
    let label = format!("com.docker.compose.project={name}");
    let image = crate::hydrated::image();
    // Named so that the snapshot lists the app first.
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-app-1"), "--label", &label,
        "--label", "com.docker.compose.service=app",
        "--label", "com.docker.compose.depends_on=zdb:service_healthy:false",
        &image, "sleep", "600",
    ]);
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-zdb-1"), "--label", &label,
        "--label", "com.docker.compose.service=zdb",
        "--health-cmd", "test -e /ready", "--health-interval", "1s", "--health-retries", "30",
        &image, "sh", "-c", "sleep 2; touch /ready; exec sleep 600",
    ]);
    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url]);
    assert_ok(&out);
    let out = freezer_on(&a, &["thaw", &name, "--repo", &repo.url, "--as", &copy]);
    assert_ok(&out);

    let (app, db) = (format!("{copy}-app-1"), format!("{copy}-zdb-1"));
    let started = docker(&a, &["inspect", "-f", "{{.State.StartedAt}}", &app]);
    let checks = docker(
        &a,
        &[
            "inspect",
            "-f",
            "{{range .State.Health.Log}}{{.ExitCode}} {{.End}}\n{{end}}",
            &db,
        ],
    );
    let healthy = checks
        .lines()
        .find_map(|l| l.strip_prefix("0 "))
        .unwrap_or_else(|| panic!("{db} never passed a check: {checks}"));
    assert!(
        nanos_of_day(&started) >= nanos_of_day(healthy),
        "{app} started at {started}, before {db} was healthy at {healthy}"
    );
}

/// `depends_on: {migrate: {condition: service_completed_successfully}}`: a one-shot that
/// was running at the freeze runs to its end in the copy before the app starts; one that
/// fails fails the thaw, naming both, with its last lines.
#[test]
fn a_service_that_needs_a_one_shot_starts_after_it_completes() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("oc");
    let (copy, broken) = (unique("occ"), unique("ocb"));
    let _cleanup = Projects::on(&a, &[&name, &copy, &broken]);
    let label = format!("com.docker.compose.project={name}");
    let image = crate::hydrated::image();
    // Named so that the snapshot lists the app first. The one-shot waits 8 s (so that
    // it runs while the site is frozen), then exits with the status its file says.
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-app-1"), "--label", &label,
        "--label", "com.docker.compose.service=app",
        "--label", "com.docker.compose.depends_on=zmigrate:service_completed_successfully:false",
        &image, "sleep", "600",
    ]);
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-zmigrate-1"), "--label", &label,
        "--label", "com.docker.compose.service=zmigrate",
        "-v", &format!("{name}_state:/state"), &image, "sh", "-c", "sleep 8; echo migrated; exit $(cat /state/status 2>/dev/null || echo 0)",
    ]);
    let freeze = || {
        let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
        json(&out)["snapshot"].as_str().unwrap().to_string()
    };
    // The snapshot's one-shot was running; in a second snapshot's volume it fails.
    let first = freeze();
    #[rustfmt::skip]
    docker(&a, &["exec", &format!("{name}-zmigrate-1"), "sh", "-c", "echo 3 > /state/status"]);
    let failing = freeze();

    let target = format!("{name}:{first}");
    assert_ok(&freezer_on(
        &a,
        &["thaw", &target, "--repo", &repo.url, "--as", &copy],
    ));
    let (app, migrate) = (format!("{copy}-app-1"), format!("{copy}-zmigrate-1"));
    let finished = docker(
        &a,
        &[
            "inspect",
            "-f",
            "{{.State.FinishedAt}} {{.State.ExitCode}}",
            &migrate,
        ],
    );
    let (finished, code) = finished.split_once(' ').unwrap();
    assert_eq!(code, "0");
    let started = docker(&a, &["inspect", "-f", "{{.State.StartedAt}}", &app]);
    assert!(
        nanos_of_day(&started) >= nanos_of_day(finished),
        "{app} started at {started}, before {migrate} finished at {finished}"
    );

    let target = format!("{name}:{failing}");
    let out = freezer_on(&a, &["thaw", &target, "--repo", &repo.url, "--as", &broken]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("exited with status 3")
            && err.contains("migrated")
            && err.contains(&format!("{broken}-app-1")),
        "{err}"
    );
    let filter = format!("label=com.docker.compose.project={broken}");
    assert_eq!(docker(&a, &["ps", "-aq", "--filter", &filter]), "");
}

/// Two networks as compose files split them: the proxy reaches the web service by its
/// alias, and not the database, in the copy as in the original.
#[test]
fn a_copy_keeps_which_service_reaches_which() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("nw");
    let copy = unique("nwc");
    let _cleanup = Projects::on(&a, &[&name, &copy]);
    let label = format!("com.docker.compose.project={name}");
    for n in ["front", "back"] {
        docker(
            &a,
            &[
                "network",
                "create",
                "--label",
                &label,
                &format!("{name}_{n}"),
            ],
        );
    }
    let image = crate::hydrated::image();
    let run = |service: &str, first: &str| {
        let c = format!("{name}-{service}-1");
        #[rustfmt::skip]
        docker(&a, &[
            "run", "-d", "--name", &c, "--label", &label,
            "--label", &format!("com.docker.compose.service={service}"),
            "--network", &format!("{name}_{first}"), "--network-alias", service,
            &image, "sleep", "600",
        ]);
        c
    };
    run("proxy", "front");
    let web = run("web", "front");
    run("db", "back");
    #[rustfmt::skip]
    docker(&a, &["network", "connect", "--alias", "web", &format!("{name}_back"), &web]);

    let reaches = |project: &str, from: &str, to: &str| {
        docker_try(
            &a,
            &[
                "exec",
                &format!("{project}-{from}-1"),
                "ping",
                "-c1",
                "-W2",
                to,
            ],
        )
        .status
        .success()
    };
    let facts = |p: &str| {
        [
            ("proxy", "web"),
            ("proxy", "db"),
            ("web", "db"),
            ("db", "web"),
            ("db", "proxy"),
        ]
        .map(|(f, t)| (f, t, reaches(p, f, t)))
    };
    let before = facts(&name);
    assert_eq!(
        before.map(|(_, _, r)| r),
        [true, false, true, true, false],
        "the test's own site: {before:?}"
    );
    assert_ok(&freezer_on(&a, &["freeze", &name, "--repo", &repo.url]));
    assert_ok(&freezer_on(
        &a,
        &["thaw", &name, "--repo", &repo.url, "--as", &copy],
    ));
    assert_eq!(facts(&copy), before);
}

/// A thaw that fails after it loaded images from the snapshot removes them with the
/// rest of what it created, as its message says.
#[test]
fn a_failed_thaw_removes_the_images_it_loaded() {
    let (a, b) = (host_a(), crate::hydrated::host_b());
    let repo = TestRepo::local().init();
    let name = unique("fi");
    let _cleanup = Projects::on(&a, &[&name]);
    let _cleanup_b = Projects::on(&b, &[&name]);
    // Its database image exists on this engine only, as one compose built would.
    let built = format!("{name}-db");
    docker(&a, &["tag", &mariadb_image(), &built]);
    let label = format!("com.docker.compose.project={name}");
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-db-1"), "--label", &label,
        "--label", "com.docker.compose.service=db",
        "-e", "MARIADB_ROOT_PASSWORD=pw", "-e", "MARIADB_DATABASE=shop", &built,
    ]);
    sql_at(
        &address(&a, &format!("{name}-db-1")),
        "root",
        "pw",
        "shop",
        "SELECT 1",
    );
    let out = freeze_dehydrated(&a, &name, &repo, &["--with-images"]);
    assert_ok(&out);
    // On the other engine, its server cannot start (its password file is missing).
    let out = freezer_on(
        &b,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--env",
            "db:MARIADB_ROOT_PASSWORD_FILE=/run/secrets/missing",
        ],
    );
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("was removed"), "{err}");
    assert!(
        !docker_try(&b, &["image", "inspect", &built])
            .status
            .success(),
        "the image it loaded is still on the other engine"
    );
    let _ = docker_try(&a, &["rm", "-f", &format!("{name}-db-1")]);
    let _ = docker_try(&a, &["rmi", &built]);
}
