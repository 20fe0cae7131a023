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
    let no_secret = |out: &std::process::Output| {
        for text in [
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        ] {
            assert!(!text.contains(&password), "a password was printed: {text}");
        }
    };
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
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &snap,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--image",
            "web=freezer-test/web:nope",
        ],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("image freezer-test/web:nope, named by --image for service web, is not on the Docker engine"), "{}", stderr(&out));
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &snap,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--image",
            "cache=redis:7",
        ],
    );
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
    let out = freezer_on(
        &a,
        &[
            "freeze",
            &name,
            "--repo",
            &repo.url,
            "--mode",
            "dehydrated",
            "--json",
        ],
    );
    assert_ok(&out);
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
