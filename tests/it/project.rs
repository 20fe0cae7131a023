//! A compose project as people write it (tests/fixtures/compose-shop), brought up by the
//! real docker-compose: two `build:` services, a database in an anonymous volume whose
//! root password is a file-based secret, two configuration files bound one by one whose
//! effect shows over HTTP, a relative bind directory, a named volume, a tmpfs, env_file
//! and `.env`, two networks. Frozen, then thawed as a copy and onto the second engine,
//! where docker-compose runs the restored project again.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::compose::Projects;
use crate::hydrated::{
    address, docker, docker_try, free_port, freeze_dehydrated, freezer_on, host_a, host_b,
    http_get, sql_at,
};

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/compose-shop");
const SECRET: &[u8] = b"corner-shop-secret-7Qx\n";

/// A compose project on an engine, removed with everything of it when dropped: its
/// containers, their anonymous volumes, its named volumes, networks and built images.
struct Shop {
    host: String,
    name: String,
    dir: PathBuf,
    port: u16,
    _tmp: Option<tempfile::TempDir>,
}

impl Shop {
    /// Copies the fixture into a directory named as the project and runs
    /// `docker-compose up -d --build` there.
    fn up(host: &str, name: &str) -> Shop {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(name);
        copy_tree(Path::new(FIXTURE), &dir);
        let shop = Shop {
            host: host.into(),
            name: name.into(),
            dir,
            port: free_port(),
            _tmp: Some(tmp),
        };
        shop.compose(&["up", "-d", "--build"]);
        shop.wait_serving();
        shop
    }

    /// A project that freezer made (a thaw): removed the same way.
    fn made(host: &str, name: &str, dir: &Path, port: u16) -> Shop {
        Shop {
            host: host.into(),
            name: name.into(),
            dir: dir.into(),
            port,
            _tmp: None,
        }
    }

    fn compose(&self, args: &[&str]) -> Output {
        let out = self.compose_try(args);
        assert!(
            out.status.success(),
            "docker-compose {args:?} in {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    fn compose_try(&self, args: &[&str]) -> Output {
        Command::new("docker-compose")
            .arg("-p")
            .arg(&self.name)
            .args(args)
            .current_dir(&self.dir)
            .env("DOCKER_HOST", &self.host)
            .env("SHOP_PORT", self.port.to_string())
            .output()
            .expect("running docker-compose (installed by scripts/services)")
    }

    fn c(&self, service: &str) -> String {
        format!("{}_{service}_1", self.name)
    }

    fn exec(&self, service: &str, script: &str) -> String {
        docker(&self.host, &["exec", &self.c(service), "sh", "-c", script])
    }

    /// The front page through the proxy, once the database is up behind it.
    fn wait_serving(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let page = String::from_utf8_lossy(&http_get(self.port, "/cgi-bin/index")).into_owned();
            if page.contains("Database: up") {
                return page;
            }
            assert!(
                Instant::now() < deadline,
                "the shop never served with its database: {page}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn rows(&self, password: &str) -> String {
        let ip = address(&self.host, &self.c("db"));
        sql_at(
            &ip,
            "root",
            password,
            "shop",
            "CHECKSUM TABLE orders EXTENDED",
        )
    }

    /// Every volume its containers mount (named and anonymous).
    fn volumes(&self) -> Vec<String> {
        self.of_containers("{{range .Mounts}}{{.Name}} {{end}}")
    }

    /// What `format` (of `docker inspect`) gives for its containers, word by word.
    fn of_containers(&self, format: &str) -> Vec<String> {
        let filter = format!("label=com.docker.compose.project={}", self.name);
        let mut out = Vec::new();
        for id in docker(&self.host, &["ps", "-aq", "--filter", &filter]).lines() {
            let words = docker(&self.host, &["inspect", "-f", format, id]);
            out.extend(words.split_whitespace().map(str::to_string));
        }
        out.sort();
        out.dedup();
        out
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        let volumes = self.volumes();
        // The images compose built for the project it is a copy of, too (loaded from
        // the snapshot); never the shared test images.
        let mut images = self.of_containers("{{.Config.Image}}");
        images.retain(|i| i.ends_with("_web") || i.ends_with("_proxy"));
        if self.dir.is_dir() {
            let _ = self.compose_try(&["down", "-v", "--remove-orphans"]);
        }
        // Containers (with their anonymous volumes), named volumes, networks.
        drop(Projects::on(&self.host, &[&self.name]));
        // Anonymous volumes compose handed on by name when it recreated a container.
        for v in volumes {
            let _ = docker_try(&self.host, &["volume", "rm", &v]);
        }
        for i in ["web", "proxy"]
            .map(|s| format!("{}_{s}", self.name))
            .into_iter()
            .chain(images)
        {
            let _ = docker_try(&self.host, &["rmi", &i]);
        }
    }
}

/// Thaws the newest snapshot of `of` as a copy (`--as`, its port published elsewhere)
/// through the engine `env` names, which is `host`; the copy's project goes beside the
/// original's, renamed as the site is.
fn thaw_copy(repo: &TestRepo, of: &Shop, host: &str, env: &[(&str, &str)]) -> Shop {
    let name = unique("shopc");
    let port = free_port();
    let publish = format!("{}={port}", of.port);
    let args = [
        "thaw",
        &of.name,
        "--repo",
        &repo.url,
        "--as",
        &name,
        "--publish",
        &publish,
    ];
    let out = freezer_env(&args, env);
    let copy = Shop::made(host, &name, &of.dir.with_file_name(&name), port);
    ok(&out);
    copy
}

/// What a user of the shop sees and what its containers hold, for comparing copies.
#[derive(Debug, PartialEq)]
struct Facts {
    page: String,
    /// The front page as a real browser renders it (headless Chromium).
    rendered: String,
    prices_type: String,
    rows: String,
    secret_in_db: Vec<u8>,
    secret_in_web: Vec<u8>,
    site_conf: Vec<u8>,
    uploads: String,
    tmpfs: String,
    proxy_reaches_web: bool,
    proxy_reaches_db: bool,
}

fn facts(shop: &Shop) -> Facts {
    let password = String::from_utf8_lossy(SECRET).trim().to_string();
    let raw = |service: &str, path: &str| {
        docker_try(&shop.host, &["exec", &shop.c(service), "cat", path]).stdout
    };
    Facts {
        page: shop.wait_serving(),
        rendered: browse(shop.port, "/cgi-bin/index"),
        prices_type: shop.exec(
            "web",
            "wget -S -q -O /dev/null http://127.0.0.1/static/today.prices 2>&1 | grep -i content-type",
        ),
        rows: shop.rows(&password),
        secret_in_db: raw("db", "/run/secrets/db-password"),
        secret_in_web: raw("web", "/run/secrets/db-password"),
        site_conf: raw("web", "/etc/shop/site.conf"),
        uploads: shop.exec("web", "ls -l /srv/uploads | sed 1d; cat /srv/uploads/*"),
        tmpfs: shop.exec("web", "ls -A /var/cache/shop; grep ' /var/cache/shop ' /proc/mounts | cut -d' ' -f3"),
        proxy_reaches_web: docker_try(
            &shop.host,
            &["exec", &shop.c("proxy"), "sh", "-c", "timeout 5 wget -q -O /dev/null http://shop-web/cgi-bin/health"],
        )
        .status
        .success(),
        proxy_reaches_db: docker_try(
            &shop.host,
            &["exec", &shop.c("proxy"), "sh", "-c", "nc -w 2 db 3306 </dev/null | grep -q MariaDB"],
        )
        .status
        .success(),
    }
}

/// What a copy of `shop` must show: the same, but an empty tmpfs (of the same type).
fn expected(shop: &Shop) -> Facts {
    let mut want = facts(shop);
    assert_eq!(want.tmpfs, "page.cache\ntmpfs", "the original's tmpfs");
    want.tmpfs = "tmpfs".into();
    assert!(
        want.proxy_reaches_web && !want.proxy_reaches_db,
        "the proxy reaches the web service only: {want:?}"
    );
    want
}

/// The page at `path` as headless Chromium renders it (its DOM), from this host.
fn browse(port: u16, path: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--dump-dom"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .expect("running chromium (installed by scripts/services)");
    let dom = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() && dom.contains("<h1 id=\"title\">Corner Shop</h1>"),
        "chromium rendered: {dom}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dom
}

/// The shop with orders in its database and a file in its uploads volume.
fn seeded(host: &str, name: &str) -> Shop {
    let shop = Shop::up(host, name);
    let password = String::from_utf8_lossy(SECRET).trim().to_string();
    let ip = address(host, &shop.c("db"));
    sql_at(
        &ip,
        "root",
        &password,
        "shop",
        "CREATE TABLE orders (id INT PRIMARY KEY, item VARCHAR(40), cents INT); \
         INSERT INTO orders SELECT seq, CONCAT('item ', seq), seq * 7 FROM seq_1_to_2000",
    );
    shop.exec("web", "echo 'receipt 1' > /srv/uploads/receipt-1.txt");
    // Something the tmpfs must not bring back.
    shop.exec("web", "echo stale > /var/cache/shop/page.cache");
    shop
}

fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_compose_project_travels_to_another_engine_and_compose_runs_it_there() {
    let (a, b) = (host_a(), host_b());
    let repo = TestRepo::local().init();
    let name = unique("shop");
    let shop = seeded(&a, &name);
    let want = expected(&shop);

    ok(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--with-images"],
    ));

    // A restore drill of it passes when its front page comes through the proxy.
    let probe = "proxy=wget -q -O - http://127.0.0.1/cgi-bin/index | grep -q 'Database: up'";
    ok(&freezer_on(
        &a,
        &["drill", &name, "--repo", &repo.url, "--probe", probe],
    ));
    let bad = "proxy=wget -q -O - http://127.0.0.1/cgi-bin/index | grep -q 'Database: down'";
    let out = freezer_on(&a, &["drill", &name, "--repo", &repo.url, "--probe", bad]);
    assert!(!out.status.success(), "a failing probe fails the drill");

    // A copy beside it on this engine is the same shop.
    let beside = thaw_copy(&repo, &shop, &a, &[("DOCKER_HOST", a.as_str())]);
    assert_eq!(facts(&beside), want, "the copy on this engine");
    drop(beside);

    // The project is in the snapshot: what compose needs, not the bind directory.
    let ls = freezer_on(&a, &["ls", &name, "--repo", &repo.url, "project"]);
    ok(&ls);
    let listing = String::from_utf8_lossy(&ls.stdout);
    for f in [
        ".env",
        "docker-compose.yml",
        "web.env",
        "db-password.txt",
        "config",
        "web",
        "proxy",
    ] {
        assert!(
            listing.lines().any(|l| l.ends_with(&format!(" {f}"))),
            "{f} not in {listing}"
        );
    }
    assert!(
        !listing.contains(" html"),
        "the bind directory is a tree of its own: {listing}"
    );
    for (path, want) in [
        ("project/db-password.txt", SECRET.to_vec()),
        (
            "project/config/site.conf",
            std::fs::read(shop.dir.join("config/site.conf")).unwrap(),
        ),
    ] {
        let out = freezer_on(&a, &["cat", &name, "--repo", &repo.url, path]);
        ok(&out);
        assert_eq!(out.stdout, want, "freezer cat {path}");
    }

    // Onto the second engine, the project written where compose will run it.
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("shop");
    let port_b = free_port();
    let publish = format!("{}={port_b}", shop.port);
    let out = freezer_on(
        &b,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--project-dir",
            project.to_str().unwrap(),
            "--publish",
            &publish,
        ],
    );
    let copy = Shop::made(&b, &name, &project, port_b);
    ok(&out);
    assert_eq!(facts(&copy), want);
    for f in [
        ".env",
        "docker-compose.yml",
        "web.env",
        "db-password.txt",
        "config/site.conf",
        "config/httpd.conf",
        "html/today.prices",
        "web/Dockerfile",
        "web/cgi-bin/index",
    ] {
        assert_eq!(
            std::fs::read(project.join(f)).unwrap(),
            std::fs::read(shop.dir.join(f)).unwrap(),
            "{f} in the project directory"
        );
    }
    let labels = docker(
        &b,
        &["inspect", "-f", "{{json .Config.Labels}}", &copy.c("web")],
    );
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(
        labels["com.docker.compose.project.working_dir"],
        project.to_str().unwrap()
    );
    let sources = docker(
        &b,
        &[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Source}} {{end}}",
            &copy.c("web"),
        ],
    );
    for s in sources
        .split_whitespace()
        .filter(|s| !s.starts_with("/var/lib/"))
    {
        assert!(
            s.starts_with(project.to_str().unwrap()),
            "{s} is outside the project"
        );
    }

    // docker-compose, freezer not involved, runs the restored project: the same site.
    copy.compose(&["up", "-d"]);
    let again = facts(&copy);
    assert_eq!(again.rows, want.rows);
    assert_eq!(again.page, want.page);
    assert_eq!(
        (again.secret_in_db, again.site_conf),
        (want.secret_in_db.clone(), want.site_conf.clone())
    );
    drop(copy);
    assert_eq!(
        docker(
            &b,
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={name}")
            ]
        ),
        ""
    );
}

#[test]
fn built_images_are_named_when_the_engine_lacks_them_and_nothing_is_created() {
    let (a, b) = (host_a(), host_b());
    let repo = TestRepo::local().init();
    let name = unique("shopi");
    let shop = Shop::up(&a, &name);
    ok(&freezer_on(&a, &["freeze", &name, "--repo", &repo.url]));
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("p");
    let out = freezer_on(
        &b,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--project-dir",
            project.to_str().unwrap(),
        ],
    );
    let _guard = Shop::made(&b, &name, &project, shop.port);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    for service in ["web", "proxy"] {
        assert!(
            err.contains(&format!("{name}_{service}")),
            "{service} not named: {err}"
        );
    }
    assert!(err.contains("--with-images"), "{err}");
    assert!(!project.exists(), "the project directory was written");
    assert_eq!(
        docker(
            &b,
            &[
                "ps",
                "-aq",
                "--filter",
                &format!("label=com.docker.compose.project={name}")
            ]
        ),
        ""
    );
    let volumes = docker(&b, &["volume", "ls", "-q"]);
    assert!(!volumes.contains(&name), "{volumes}");
}

#[test]
fn a_dehydrated_copy_of_a_compose_project_is_the_same_shop_and_compose_removes_all_of_it() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("shopd");
    let shop = seeded(&a, &name);
    let want = expected(&shop);
    let out = freeze_dehydrated(&a, &name, &repo, &["--json", "--with-images"]);
    ok(&out);
    assert_no_secret(&out, &["corner-shop-secret"]);

    let copy = thaw_copy(&repo, &shop, &a, &[("DOCKER_HOST", a.as_str())]);
    assert_eq!(facts(&copy), want);
    // And on the second engine, which has never seen its images.
    let b = host_b();
    let far = thaw_copy(&repo, &shop, &b, &[("DOCKER_HOST", b.as_str())]);
    assert_eq!(facts(&far), want, "the copy on the second engine");
    drop(far);
    // Its database is in an anonymous volume again, as the original's.
    let mounts = docker(
        &a,
        &[
            "inspect",
            "-f",
            "{{range .Mounts}}{{.Destination}}={{.Name}} {{end}}",
            &copy.c("db"),
        ],
    );
    let data = mounts
        .split_whitespace()
        .find_map(|m| m.strip_prefix("/var/lib/mysql="))
        .unwrap();
    assert!(
        data.len() == 64 && data.bytes().all(|c| c.is_ascii_hexdigit()),
        "{mounts}"
    );

    // compose takes the copy down with every volume the thaw created.
    let made = copy.volumes();
    assert_eq!(made.len(), 2, "{made:?}");
    copy.compose(&["down", "-v"]);
    for v in made {
        let out = docker_try(&a, &["volume", "inspect", &v]);
        assert!(!out.status.success(), "volume {v} of the copy is left");
    }
    let _ = std::fs::remove_dir_all(&copy.dir);
}

#[test]
fn a_thaw_through_tcp_with_tls_gives_the_same_shop_as_through_the_unix_socket() {
    let (a, b) = (host_a(), host_b());
    let tcp = std::env::var("FREEZER_TEST_DOCKER_HOST_B_TCP").expect("set by scripts/services");
    let certs = std::env::var("FREEZER_TEST_DOCKER_CERTS_B").expect("set by scripts/services");
    let repo = TestRepo::local().init();
    let name = unique("shopt");
    let shop = seeded(&a, &name);
    let want = expected(&shop);
    ok(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--with-images"],
    ));
    let through: [(&str, Vec<(&str, &str)>); 2] = [
        ("the unix socket", vec![("DOCKER_HOST", b.as_str())]),
        (
            "tcp with tls",
            vec![
                ("DOCKER_HOST", tcp.as_str()),
                ("DOCKER_TLS_VERIFY", "1"),
                ("DOCKER_CERT_PATH", certs.as_str()),
            ],
        ),
    ];
    // A secret file where the copy's would go is another's: refused, left as it was.
    let taken = unique("shopx");
    let taken_dir = shop.dir.with_file_name(&taken);
    std::fs::create_dir_all(&taken_dir).unwrap();
    std::fs::write(taken_dir.join("db-password.txt"), "not yours\n").unwrap();
    let publish = format!("{}={}", shop.port, free_port());
    let args = [
        "thaw",
        &name,
        "--repo",
        &repo.url,
        "--as",
        &taken,
        "--publish",
        &publish,
    ];
    let out = freezer_env(&args, &through[1].1);
    let _guard = Shop::made(&b, &taken, &taken_dir, shop.port);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains("db-password.txt"), "{}", stderr(&out));
    let filter = format!("label=com.docker.compose.project={taken}");
    assert_eq!(docker(&b, &["ps", "-aq", "--filter", &filter]), "");
    assert_eq!(
        std::fs::read(taken_dir.join("db-password.txt")).unwrap(),
        b"not yours\n"
    );
    let mut copies = Vec::new();
    for (how, env) in through {
        let copy = thaw_copy(&repo, &shop, &b, &env);
        assert_eq!(facts(&copy), want, "the copy thawed through {how}");
        copies.push(copy);
    }
    // Frozen through the remote engine (its secret and configuration files read through
    // the containers), the copy thaws again as the same shop.
    let remote = &copies[1];
    let tls = [
        ("DOCKER_TLS_VERIFY", "1"),
        ("DOCKER_CERT_PATH", certs.as_str()),
    ];
    let env = [[("DOCKER_HOST", tcp.as_str())].as_slice(), &tls].concat();
    ok(&freezer_env(
        &["freeze", &remote.name, "--repo", &repo.url],
        &env,
    ));
    let copy = thaw_copy(&repo, remote, &b, &[("DOCKER_HOST", b.as_str())]);
    assert_eq!(
        facts(&copy),
        want,
        "the copy of the copy frozen through tcp"
    );

    // Dehydrated through the remote engine, a SQLite database in a volume is read through
    // the engine's archive API, which no SQLite lock guards: copied as files, and named.
    let uploads = crate::hydrated::mountpoint(&b, &format!("{}_uploads", remote.name));
    let db = uploads.join("cache.db");
    let st = std::process::Command::new("sqlite3")
        .arg(&db)
        .arg("CREATE TABLE t(x); INSERT INTO t VALUES (1);")
        .status()
        .unwrap();
    assert!(st.success());
    let out = freezer_env(
        &[
            "freeze",
            &remote.name,
            "--repo",
            &repo.url,
            "--mode",
            "dehydrated",
            "--json",
        ],
        &env,
    );
    let report = json(&out);
    let warnings = report["warnings"].to_string();
    assert!(
        warnings.contains("cache.db") && warnings.contains("through the remote engine"),
        "{report}"
    );
    let tree = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == format!("volume.{}_uploads", remote.name))
        .unwrap_or_else(|| panic!("no uploads tree: {report}"));
    assert_eq!(tree["sqlite"][0]["how"], "as-files", "{report}");
}
