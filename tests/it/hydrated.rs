//! Hydrated snapshots of Docker sites, on the two real engines scripts/services starts
//! (`DOCKER_HOST` and `FREEZER_TEST_DOCKER_HOST_B`, standing for two hosts).
//!
//! The test site: a web container serving a volume over HTTP (busybox httpd, published
//! port), a data container writing to a second volume and reading a bind-mounted
//! directory, and a job container that was created and never started.

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

pub fn host_a() -> String {
    services();
    std::env::var("DOCKER_HOST").expect("DOCKER_HOST is set by scripts/services")
}

pub fn host_b() -> String {
    services();
    std::env::var("FREEZER_TEST_DOCKER_HOST_B")
        .expect("FREEZER_TEST_DOCKER_HOST_B is set by scripts/services")
}

pub fn image() -> String {
    services();
    std::env::var("FREEZER_TEST_DOCKER_IMAGE").expect("set by scripts/services")
}

pub fn docker_try(host: &str, args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", host)
        .output()
        .expect("running docker")
}

pub fn docker(host: &str, args: &[&str]) -> String {
    let out = docker_try(host, args);
    assert!(
        out.status.success(),
        "docker {args:?} on {host}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Nothing of site `target` (containers, volumes, networks) is on the engine.
pub fn assert_gone(host: &str, target: &str) {
    let label = format!("label=com.docker.compose.project={target}");
    assert_eq!(docker(host, &["ps", "-aq", "--filter", &label]), "");
    let volumes = docker(host, &["volume", "ls", "-q"]);
    assert!(!volumes.contains(target), "volumes left: {volumes}");
    let networks = docker(host, &["network", "ls", "--format", "{{.Name}}"]);
    assert!(!networks.contains(target), "networks left: {networks}");
}

pub fn state(host: &str, container: &str) -> String {
    docker(host, &["inspect", "-f", "{{.State.Status}}", container])
}

pub fn mountpoint(host: &str, volume: &str) -> PathBuf {
    docker(
        host,
        &["volume", "inspect", "-f", "{{.Mountpoint}}", volume],
    )
    .into()
}

/// A loopback port nothing listens on, never the same twice in this process: a port a
/// container of another test publishes through the engine's NAT rules is not bound on
/// the host, so binding alone cannot tell it is taken.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// GET over plain HTTP/1.0; retries while the server starts (up to 15 s).
pub fn http_get(port: u16, path: &str) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let attempt = (|| -> std::io::Result<Vec<u8>> {
            let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
            let mut buf = Vec::new();
            s.read_to_end(&mut buf)?;
            let end = buf
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .ok_or_else(|| std::io::Error::other("no HTTP header"))?;
            if !buf.starts_with(b"HTTP/1.0 200") && !buf.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&buf[..end]).into_owned(),
                ));
            }
            Ok(buf[end + 4..].to_vec())
        })();
        match attempt {
            Ok(body) => return body,
            Err(e) if Instant::now() > deadline => panic!("GET {path} on port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

pub fn big_file() -> Vec<u8> {
    let mut x: u64 = 0x9e3779b97f4a7c15;
    (0..1 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub struct Site {
    pub name: String,
    pub host: String,
    pub bind: tempfile::TempDir,
    /// Other sites a test made from this one, (engine, name): removed with it.
    pub copies: std::cell::RefCell<Vec<(String, String)>>,
}

/// A failing test still removes what it started, so runs do not pile up containers.
impl Drop for Site {
    fn drop(&mut self) {
        for (host, name) in self.copies.borrow().iter() {
            remove_site(host, name);
        }
        remove_site(&self.host, &self.name);
    }
}

impl Site {
    /// Registers a site made from this one, to be removed with it.
    pub fn made(&self, host: &str, name: &str) {
        self.copies
            .borrow_mut()
            .push((host.to_string(), name.to_string()));
    }
    pub fn c(&self, service: &str) -> String {
        format!("{}-{service}-1", self.name)
    }
    pub fn marker(&self) -> Vec<u8> {
        format!("<h1>{}</h1>\n", self.name).into_bytes()
    }
}

/// Starts the test site on `host`, as docker compose would name it.
pub fn start_site(host: &str, name: &str, image: &str, port: u16) -> Site {
    let bind = tempfile::tempdir().unwrap();
    fs::create_dir_all(bind.path().join("conf")).unwrap();
    fs::write(bind.path().join("conf/app.ini"), b"[site]\nname=test\n").unwrap();
    let project = format!("com.docker.compose.project={name}");
    docker(
        host,
        &[
            "network",
            "create",
            "--label",
            &project,
            &format!("{name}_default"),
        ],
    );
    for v in ["www", "data"] {
        docker(
            host,
            &[
                "volume",
                "create",
                "--label",
                &project,
                &format!("{name}_{v}"),
            ],
        );
    }
    // Contents written straight into the volumes (the engine is local).
    let www = mountpoint(host, &format!("{name}_www"));
    fs::write(www.join("index.html"), format!("<h1>{name}</h1>\n")).unwrap();
    fs::create_dir_all(www.join("sub")).unwrap();
    fs::write(www.join("sub/big.bin"), big_file()).unwrap();
    std::os::unix::fs::symlink("../index.html", www.join("sub/link")).unwrap();
    let data = mountpoint(host, &format!("{name}_data"));
    fs::create_dir_all(data.join("db")).unwrap();
    fs::write(data.join("db/table.dat"), b"rows 1 2 3\n").unwrap();

    let net = format!("{name}_default");
    let publish = format!("127.0.0.1:{port}:80");
    let www_mount = format!("{name}_www:/www");
    let data_mount = format!("{name}_data:/data");
    let bind_mount = format!("{}:/conf:ro", bind.path().display());
    let marker_env = format!("SITE_MARKER={name}");
    #[rustfmt::skip]
    docker(host, &[
        "run", "-d", "--name", &format!("{name}-web-1"), "--label", &project,
        "--label", "com.docker.compose.service=web", "--network", &net, "--network-alias", "web",
        "-v", &www_mount, "-p", &publish, "--restart", "unless-stopped", "-e", &marker_env,
        image, "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    #[rustfmt::skip]
    docker(host, &[
        "run", "-d", "--name", &format!("{name}-data-1"), "--label", &project,
        "--label", "com.docker.compose.service=data", "--network", &net,
        "-v", &data_mount, "-v", &bind_mount, image, "sh", "-c",
        "while true; do date > /data/tick.tmp; mv /data/tick.tmp /data/tick; sleep 0.1; done",
    ]);
    #[rustfmt::skip]
    docker(host, &[
        "create", "--name", &format!("{name}-job-1"), "--label", &project,
        "--label", "com.docker.compose.service=job", image, "true",
    ]);
    Site {
        name: name.to_string(),
        host: host.to_string(),
        bind,
        copies: Default::default(),
    }
}

/// Removes a site's containers, volumes and network from an engine (what a lost host
/// would have lost).
pub fn remove_site(host: &str, name: &str) {
    let ids = docker(
        host,
        &[
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={name}"),
        ],
    );
    for id in ids.lines() {
        docker(host, &["rm", "-f", id]);
    }
    for v in ["www", "data", "db"] {
        let _ = docker_try(host, &["volume", "rm", &format!("{name}_{v}")]);
    }
    let _ = docker_try(host, &["network", "rm", &format!("{name}_default")]);
}

pub fn freezer_on(host: &str, args: &[&str]) -> Output {
    freezer_env(args, &[("DOCKER_HOST", host)])
}

/// `freezer freeze SITE --mode dehydrated` (with `extra` flags) of a site on engine `host`.
pub fn freeze_dehydrated(host: &str, site: &str, repo: &TestRepo, extra: &[&str]) -> Output {
    let mut args = vec!["freeze", site, "--repo", &repo.url, "--mode", "dehydrated"];
    args.extend_from_slice(extra);
    freezer_on(host, &args)
}

#[test]
fn hydrated_round_trip_a_renamed_copy_and_replace() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("hy");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    assert_eq!(http_get(port, "/index.html"), site.marker());
    let www = mountpoint(&a, &format!("{name}_www"));
    let reference = tempfile::tempdir().unwrap();
    copy_tree(&www, reference.path());

    let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
    let report = json(&out);
    assert_eq!(report["mode"], "hydrated");
    assert_eq!(report["window"]["mode"], "pause");
    assert_eq!(report["containers"].as_array().unwrap().len(), 3);
    let id = report["snapshot"].as_str().unwrap().to_string();
    // Every container is as it was: paused ones resumed, the job never started.
    assert_eq!(state(&a, &site.c("web")), "running");
    assert_eq!(state(&a, &site.c("data")), "running");
    assert_eq!(state(&a, &site.c("job")), "created");

    // A renamed copy beside the original, on another port.
    let copy = unique("cp");
    site.made(&a, &copy);
    let port2 = free_port();
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
        ],
    );
    assert_ok(&out);
    assert_eq!(http_get(port2, "/index.html"), site.marker());
    assert_eq!(http_get(port2, "/sub/big.bin"), big_file());
    assert_eq!(http_get(port, "/index.html"), site.marker());
    let web = format!("{copy}-web-1");
    let inspect: serde_json::Value = serde_json::from_str(&docker(&a, &["inspect", &web])).unwrap();
    let c = &inspect[0];
    assert!(c["Config"]["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(format!("SITE_MARKER={name}"))));
    assert_eq!(
        c["Config"]["Labels"]["com.docker.compose.project"],
        copy.as_str()
    );
    assert_eq!(c["Config"]["Labels"]["com.docker.compose.service"], "web");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "unless-stopped");
    let aliases = &c["NetworkSettings"]["Networks"][format!("{copy}_default")]["Aliases"];
    assert!(
        aliases
            .as_array()
            .unwrap()
            .contains(&serde_json::json!("web")),
        "{aliases}"
    );
    assert_eq!(state(&a, &format!("{copy}-job-1")), "created");
    assert_eq!(
        fs::read(mountpoint(&a, &format!("{copy}_data")).join("db/table.dat")).unwrap(),
        b"rows 1 2 3\n"
    );
    // The copy has its own bind-mounted directory, beside the original's.
    let copy_bind = PathBuf::from(format!("{}.{copy}", site.bind.path().display()));
    assert_eq!(
        fs::read(copy_bind.join("conf/app.ini")).unwrap(),
        b"[site]\nname=test\n"
    );
    let sites = json(&freezer_on(&a, &["sites", "--json"]));
    let listed = sites
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == copy.as_str())
        .unwrap_or_else(|| panic!("{copy} not listed: {sites}"));
    assert_eq!(listed["containers"].as_array().unwrap().len(), 3);
    // The same name again is refused: the copy is never touched without --replace.
    let out = freezer_on(&a, &["thaw", &name, "--repo", &repo.url, "--as", &copy]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    remove_site(&a, &copy);
    fs::remove_dir_all(&copy_bind).unwrap();

    // The host loses the site: thaw brings back the exact volume and the bind mount.
    remove_site(&a, &name);
    fs::remove_dir_all(site.bind.path().join("conf")).unwrap();
    let out = freezer_on(&a, &["thaw", &format!("{name}:{id}"), "--repo", &repo.url]);
    assert_ok(&out);
    assert_eq!(http_get(port, "/index.html"), site.marker());
    assert_same_tree(reference.path(), &mountpoint(&a, &format!("{name}_www")));
    assert_eq!(
        fs::read(site.bind.path().join("conf/app.ini")).unwrap(),
        b"[site]\nname=test\n"
    );
    assert_eq!(state(&a, &site.c("data")), "running");
    assert_eq!(state(&a, &site.c("job")), "created");

    // --replace: what is replaced is frozen first, and can be brought back.
    docker(
        &a,
        &[
            "exec",
            &site.c("web"),
            "sh",
            "-c",
            "echo changed > /www/index.html",
        ],
    );
    assert_eq!(http_get(port, "/index.html"), b"changed\n");
    let out = freezer_on(&a, &["thaw", &format!("{name}:{id}"), "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert_eq!(http_get(port, "/index.html"), b"changed\n");
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--replace",
            "--json",
        ],
    );
    let report = json(&out);
    let safety = report["safety_snapshot"].as_str().unwrap().to_string();
    assert_eq!(http_get(port, "/index.html"), site.marker());
    let port3 = free_port();
    let safe = unique("safe");
    site.made(&a, &safe);
    assert_ok(&freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{safety}"),
            "--repo",
            &repo.url,
            "--as",
            &safe,
            "--publish",
            &format!("{port}={port3}"),
        ],
    ));
    assert_eq!(http_get(port3, "/index.html"), b"changed\n");
    fs::remove_dir_all(format!("{}.{safe}", site.bind.path().display())).unwrap();
}

#[test]
fn hydrated_across_two_engines_with_images_and_export() {
    let (a, b) = (host_a(), host_b());
    let repo = TestRepo::s3().init();
    let name = unique("xe");
    // An image only engine A has: engine B must get it from the snapshot.
    let tag = format!("freezer-test/only-a:{}", unique("t"));
    docker(&a, &["tag", &image(), &tag]);
    let port = free_port();
    let site = start_site(&a, &name, &tag, port);
    site.made(&b, &name);
    // The two engines as two named hosts of the config file; B restores bind-mounted
    // directories under its bind_root.
    let bind_b = tempfile::tempdir().unwrap();
    let config = bind_b.path().join("freezer.toml");
    fs::write(
        &config,
        format!(
            "[hosts.a]\ndocker = \"{a}\"\n[hosts.b]\ndocker = \"{b}\"\nbind_root = \"{}\"\n",
            bind_b.path().join("binds").display()
        ),
    )
    .unwrap();
    let cfg = config.to_str().unwrap();
    // DOCKER_HOST points nowhere: only the config file's hosts are used.
    let nowhere = "unix:///nonexistent/docker.sock";

    let plain = json(&freezer_on(
        nowhere,
        &[
            "freeze",
            &format!("{name}@a"),
            "--repo",
            &repo.url,
            "--config",
            cfg,
            "--json",
        ],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let out = freezer_on(
        &a,
        &[
            "freeze",
            &name,
            "--repo",
            &repo.url,
            "--with-images",
            "--json",
        ],
    );
    let with_images = json(&out)["snapshot"].as_str().unwrap().to_string();

    // Without the image, B refuses before creating anything.
    let out = freezer_on(
        nowhere,
        &[
            "thaw",
            &format!("{name}:{plain}@b"),
            "--repo",
            &repo.url,
            "--config",
            cfg,
        ],
    );
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&tag) && stderr(&out).contains("--with-images"),
        "{}",
        stderr(&out)
    );
    assert_gone(&b, &name);

    // With the image in the snapshot, B runs the site (on another port: both engines
    // share this machine's ports).
    let port_b = free_port();
    let out = freezer_on(
        nowhere,
        &[
            "thaw",
            &format!("{name}:{with_images}@b"),
            "--repo",
            &repo.url,
            "--config",
            cfg,
            "--publish",
            &format!("{port}={port_b}"),
            "--json",
        ],
    );
    let report = json(&out);
    assert_eq!(report["images_loaded"], serde_json::json!([tag]));
    assert_eq!(http_get(port_b, "/index.html"), site.marker());
    assert_eq!(http_get(port_b, "/sub/big.bin"), big_file());
    assert_same_tree(
        &mountpoint(&a, &format!("{name}_www")),
        &mountpoint(&b, &format!("{name}_www")),
    );
    let bind_copy = under(&bind_b.path().join("binds"), site.bind.path());
    assert_eq!(
        fs::read(bind_copy.join("conf/app.ini")).unwrap(),
        b"[site]\nname=test\n"
    );
    docker(&b, &["image", "inspect", &tag]);

    // Export: stock tools read the images, and Docker loads them (gzip layers).
    let dir = tempfile::tempdir().unwrap();
    let oci = dir.path().join("oci");
    assert_ok(&freezer(&[
        "export",
        &format!("{name}:{with_images}"),
        "--repo",
        &repo.url,
        "--oci",
        oci.to_str().unwrap(),
        "--compression",
        "gzip",
    ]));
    let skopeo = |args: &[&str]| {
        let out = Command::new("skopeo")
            .args(args)
            .env("DOCKER_HOST", &a)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "skopeo {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let web_ref = format!("oci:{}:{}", oci.display(), site.c("web"));
    let inspected: serde_json::Value =
        serde_json::from_str(&skopeo(&["inspect", &web_ref])).unwrap();
    assert!(!inspected["Layers"].as_array().unwrap().is_empty());
    assert!(inspected["Env"]
        .as_array()
        .unwrap()
        .contains(&serde_json::json!(format!("SITE_MARKER={name}"))));
    let loaded = format!("freezer-test/exported:{}", unique("t"));
    skopeo(&["copy", &web_ref, &format!("docker-daemon:{loaded}")]);
    assert_eq!(docker(&a, &["run", "--rm", &loaded, "echo", "ran"]), "ran");
    let vol_loaded = format!("freezer-test/exported-www:{}", unique("t"));
    skopeo(&[
        "copy",
        &format!("oci:{}:volume.{name}_www", oci.display()),
        &format!("docker-daemon:{vol_loaded}"),
    ]);
    let c = docker(&a, &["create", &vol_loaded, "x"]);
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("docker cp {c}:/index.html - | tar -xO"))
        .env("DOCKER_HOST", &a)
        .output()
        .unwrap();
    assert_eq!(out.stdout, site.marker());
    docker(&a, &["rm", &c]);

    for img in [&loaded, &vol_loaded, &tag] {
        let _ = docker_try(&a, &["rmi", img]);
    }
    let _ = docker_try(&b, &["rmi", &tag]);
}

/// Waits until a container exists and is in state `want`.
pub fn wait_for_state(host: &str, container: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let now = || {
        let out = docker_try(host, &["inspect", "-f", "{{.State.Status}}", container]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    while now() != want {
        assert!(
            Instant::now() < deadline,
            "{container} did not become {want}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn an_interrupted_freeze_leaves_every_container_as_it_was() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("in");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    docker(&a, &["pause", &site.c("data")]);
    let states = || {
        ["web", "data", "job"]
            .iter()
            .map(|c| state(&a, &site.c(c)))
            .collect::<Vec<_>>()
    };
    let before = vec!["running", "paused", "created"];
    assert_eq!(states(), before);

    // SIGTERM and SIGINT are handled by freezer itself (exit 130, "resumed"); SIGKILL
    // gives it no chance, and its watchdog resumes the site instead.
    for (flag, held_state, signal) in [
        (None, "paused", "TERM"),
        (Some("--stop"), "exited", "INT"),
        (None, "paused", "KILL"),
        (Some("--stop"), "exited", "KILL"),
    ] {
        let mut args = vec!["freeze", name.as_str(), "--repo", &repo.url];
        args.extend(flag);
        let child = spawn_freezer(
            &args,
            &[
                ("DOCKER_HOST", &a),
                ("FREEZER_FAULT_HOLD_WINDOW_MS", "60000"),
            ],
        );
        // The window is open: the web container is held.
        wait_for_state(&a, &site.c("web"), held_state);
        let st = Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        let out = child.wait_with_output().unwrap();
        if signal == "KILL" {
            assert_eq!(out.status.code(), None, "killed by a signal");
            wait_for_state(&a, &site.c("web"), "running");
        } else {
            assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
            assert!(stderr(&out).contains("resumed"), "{}", stderr(&out));
        }
        assert_eq!(states(), before, "after SIG{signal} during {flag:?}");
        assert_eq!(http_get(port, "/index.html"), site.marker());
    }
    // No snapshot was recorded: the site is unknown to the repository (exit 6).
    let list = freezer(&["snapshots", &name, "--repo", &repo.url]);
    assert_eq!(list.status.code(), Some(6), "{}", stderr(&list));

    // freezer and its watchdog both killed (kill -9 of the whole session): nobody puts
    // the site back then. The next freeze does, before it reads the site; it says so,
    // and records the site's own states, not the ones freezer caused.
    for (flag, held_state, word) in [
        (None, "paused", "paused"),
        (Some("--stop"), "exited", "stopped"),
    ] {
        let mut args = vec!["freeze", name.as_str(), "--repo", &repo.url];
        args.extend(flag);
        let mut child = spawn_freezer(
            &args,
            &[
                ("DOCKER_HOST", &a),
                ("FREEZER_FAULT_HOLD_WINDOW_MS", "60000"),
            ],
        );
        wait_for_state(&a, &site.c("web"), held_state);
        let guard = String::from_utf8(
            Command::new("pgrep")
                .args(["-P", &child.id().to_string()])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        let guard = guard.trim();
        assert!(!guard.is_empty(), "no watchdog under the freeze");
        let st = Command::new("kill")
            .args(["-KILL", guard, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
        child.wait().unwrap();
        std::thread::sleep(Duration::from_secs(1));
        assert_eq!(state(&a, &site.c("web")), held_state, "someone resumed it");

        let out = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--json"]);
        let report = json(&out);
        let warnings = report["warnings"].to_string();
        assert!(
            warnings.contains(&site.c("web")) && warnings.contains(&format!("left {word}")),
            "the freeze should say it put the site back: {report}"
        );
        assert_eq!(
            states(),
            before,
            "after a freeze that followed a dead {flag:?} freeze"
        );
        assert_eq!(http_get(port, "/index.html"), site.marker());
        let id = report["snapshot"].as_str().unwrap();
        let plan = freezer_on(
            &a,
            &[
                "thaw",
                &format!("{name}:{id}"),
                "--repo",
                &repo.url,
                "--as",
                &unique("pl"),
                "--publish",
                &format!("{port}={}", free_port()),
                "--dry-run",
            ],
        );
        assert_ok(&plan);
        let plan = String::from_utf8_lossy(&plan.stdout).to_string();
        let recorded: Vec<&str> = plan
            .lines()
            .filter(|l| l.trim_start().starts_with("container "))
            .map(|l| {
                l.rsplit("-> ")
                    .next()
                    .unwrap()
                    .split(',')
                    .next()
                    .unwrap()
                    .trim()
            })
            .collect();
        let mut recorded = recorded;
        recorded.sort();
        let mut want = before.clone();
        want.sort();
        assert_eq!(recorded, want, "the snapshot records these states:\n{plan}");
    }

    // A thaw interrupted after creating the site's containers removes what it created.
    let id = json(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--json"],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = unique("ic");
    site.made(&a, &copy);
    let port2 = free_port();
    let child = spawn_freezer(
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
        ],
        &[
            ("DOCKER_HOST", &a),
            ("FREEZER_FAULT_THAW_CREATED_MS", "60000"),
        ],
    );
    wait_for_state(&a, &format!("{copy}-web-1"), "created");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_gone(&a, &copy);
    let net = format!("{copy}_default");
    assert!(!docker_try(&a, &["network", "inspect", &net])
        .status
        .success());
    let copy_bind = format!("{}.{copy}", site.bind.path().display());
    assert!(!Path::new(&copy_bind).exists(), "{copy_bind} left behind");

    // A whole --stop freeze: stopped for the copy, then exactly as before.
    let report = json(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--stop", "--json"],
    ));
    assert_eq!(report["window"]["mode"], "stop");
    assert_eq!(
        report["window"]["containers"],
        serde_json::json!([site.c("web")])
    );
    assert_eq!(states(), before);
    assert_eq!(http_get(port, "/index.html"), site.marker());
}

/// The dry run names every step and changes nothing.
#[test]
fn thaw_dry_run_prints_the_plan_and_changes_nothing() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("dr");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    let id = json(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--json"],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let copy = unique("dc");
    site.made(&a, &copy);
    let port2 = free_port();
    let plan = json(&freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(plan["target"], copy.as_str());
    assert!(plan["checks"].as_array().unwrap().len() >= 3, "{plan}");
    let names: Vec<&str> = plan["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        vec![
            format!("{copy}-data-1"),
            format!("{copy}-job-1"),
            format!("{copy}-web-1")
        ]
    );
    let web = &plan["containers"][2];
    assert_eq!(
        web["ports"],
        serde_json::json!([format!("127.0.0.1:{port2}->80/tcp")])
    );
    assert_eq!(plan["volumes"][0]["action"], "create");
    assert_gone(&a, &copy);
    // Without --publish the taken port is found before anything is created.
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
        ],
    );
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(stderr(&out).contains(&port.to_string()), "{}", stderr(&out));
    assert!(!PathBuf::from(format!("{}.{copy}", site.bind.path().display())).exists());

    // Only the volumes are left: --replace still keeps what it replaces.
    for c in ["web", "data", "job"] {
        docker(&a, &["rm", "-f", &site.c(c)]);
    }
    let www = mountpoint(&a, &format!("{name}_www"));
    fs::write(www.join("index.html"), b"orphan\n").unwrap();
    let out = freezer_on(&a, &["thaw", &format!("{name}:{id}"), "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    let report = json(&freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{id}"),
            "--repo",
            &repo.url,
            "--replace",
            "--json",
        ],
    ));
    let safety = report["safety_snapshot"].as_str().unwrap();
    assert_eq!(http_get(port, "/index.html"), site.marker());
    let kept = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, &format!("{name}:{safety}"), kept.path()));
    assert_eq!(
        fs::read(under(kept.path(), &www).join("index.html")).unwrap(),
        b"orphan\n"
    );
}

pub fn mariadb_image() -> String {
    services();
    std::env::var("FREEZER_TEST_MARIADB_IMAGE").expect("set by scripts/services")
}

/// A container's address on its network (reachable from this host).
pub fn address(host: &str, container: &str) -> String {
    docker(
        host,
        &[
            "inspect",
            "-f",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            container,
        ],
    )
}

/// Runs SQL with the mariadb client against a container's server; retries while it starts.
pub fn sql_at(ip: &str, user: &str, password: &str, db: &str, sql: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new("mariadb")
            .args(["-h", ip, "-u", user, "-N", "-B", db, "-e", sql])
            .env("MYSQL_PWD", password)
            .output()
            .unwrap();
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).trim().to_string();
        }
        assert!(
            Instant::now() < deadline,
            "mariadb at {ip}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What a restored shop database must equal: every table's extended checksum and the
/// view's definition.
pub fn shop_facts(ip: &str, password: &str) -> String {
    let sums = sql_at(
        ip,
        "shop",
        password,
        "shop",
        "CHECKSUM TABLE customers, orders, products EXTENDED",
    );
    let view = sql_at(
        ip,
        "shop",
        password,
        "shop",
        "SELECT * FROM order_totals ORDER BY id",
    );
    format!("{sums}\n{view}")
}

#[test]
fn a_docker_site_with_its_database_container_dehydrated_and_hydrated() {
    let (a, b) = (host_a(), host_b());
    let repo = TestRepo::s3().init();
    let name = unique("db");
    let port = free_port();
    // The web part as in the other tests, plus a MariaDB container like compose's.
    let site = start_site(&a, &name, &image(), port);
    site.made(&b, &name);
    let password = format!("pw/{}@x", unique("s"));
    add_shop_database(&site, &password);
    let ip = address(&a, &site.c("db"));
    let facts = shop_facts(&ip, &password);
    let no_secret = |out: &Output| {
        for text in [
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        ] {
            assert!(
                !text.contains(&password),
                "the database password was printed: {text}"
            );
        }
    };

    // Dehydrated: the database is found from its container and dumped; its volume is not
    // copied.
    let out = freeze_dehydrated(&a, &name, &repo, &["--json"]);
    no_secret(&out);
    let report = json(&out);
    assert_eq!(report["mode"], "dehydrated");
    assert_eq!(report["databases"][0]["database"], "shop");
    let trees: Vec<&str> = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(
        !trees.contains(&format!("volume.{name}_db").as_str()),
        "{trees:?}"
    );
    let dehydrated = report["snapshot"].as_str().unwrap().to_string();

    // Hydrated with --stop (a clean shutdown of the database) and the images.
    let out = freezer_on(
        &a,
        &[
            "freeze",
            &name,
            "--repo",
            &repo.url,
            "--stop",
            "--with-images",
            "--json",
        ],
    );
    no_secret(&out);
    let report = json(&out);
    assert_eq!(report["window"]["mode"], "stop");
    let hydrated = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(state(&a, &site.c("db")), "running");
    assert_eq!(shop_facts(&address(&a, &site.c("db")), &password), facts);

    // The dehydrated snapshot thaws as a copy: a fresh database container gets the dump.
    let copy = unique("dbc");
    site.made(&a, &copy);
    let port2 = free_port();
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{dehydrated}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
            "--dry-run",
        ],
    );
    assert_ok(&out);
    no_secret(&out);
    let out = freezer_on(
        &a,
        &[
            "thaw",
            &format!("{name}:{dehydrated}"),
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
            "--json",
        ],
    );
    no_secret(&out);
    let report = json(&out);
    assert_eq!(report["databases"][0]["source"], "shop");
    assert_eq!(
        shop_facts(&address(&a, &format!("{copy}-db-1")), &password),
        facts
    );
    assert_eq!(http_get(port2, "/index.html"), site.marker());
    fs::remove_dir_all(format!("{}.{copy}", site.bind.path().display())).unwrap();

    // The hydrated snapshot on the other engine: the database's files as they were.
    let port_b = free_port();
    let bind_b = tempfile::tempdir().unwrap();
    let out = freezer_on(
        &b,
        &[
            "thaw",
            &format!("{name}:{hydrated}"),
            "--repo",
            &repo.url,
            "--publish",
            &format!("{port}={port_b}"),
            "--into",
            bind_b.path().to_str().unwrap(),
        ],
    );
    assert_ok(&out);
    no_secret(&out);
    assert_eq!(shop_facts(&address(&b, &site.c("db")), &password), facts);
    assert_eq!(http_get(port_b, "/index.html"), site.marker());
}

/// Adds a MariaDB container (service `db`, database `shop` for user `shop` with
/// `password`) to a test site and loads examples/shop.sql into it.
pub fn add_shop_database(site: &Site, password: &str) {
    let name = &site.name;
    let project = format!("com.docker.compose.project={name}");
    let db_volume = format!("{name}_db:/var/lib/mysql");
    let pw_env = format!("MARIADB_PASSWORD={password}");
    let root_env = format!("MARIADB_ROOT_PASSWORD=root-{password}");
    #[rustfmt::skip]
    docker(&site.host, &[
        "run", "-d", "--name", &site.c("db"), "--label", &project,
        "--label", "com.docker.compose.service=db", "--network", &format!("{name}_default"),
        "--network-alias", "db", "-v", &db_volume, "-e", &root_env, "-e", "MARIADB_DATABASE=shop",
        "-e", "MARIADB_USER=shop", "-e", &pw_env, &mariadb_image(),
    ]);
    let ip = address(&site.host, &site.c("db"));
    let fixture =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/shop.sql"))
            .unwrap();
    sql_at(&ip, "shop", password, "shop", "SELECT 1");
    let out = Command::new("mariadb")
        .args([
            "-h",
            &ip,
            "-u",
            "shop",
            "--default-character-set=utf8mb4",
            "shop",
        ])
        .env("MYSQL_PWD", password)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(fixture.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test image on engine B, as a registry pull would have put it there.
pub fn image_on_b() {
    images_on_b(&[&image()]);
}

/// Copies images from engine A to engine B, as a registry pull would have put them there.
pub fn images_on_b(images: &[&str]) {
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "docker save {} | DOCKER_HOST={} docker load -q",
            images.join(" "),
            host_b()
        ))
        .env("DOCKER_HOST", host_a())
        .status()
        .unwrap();
    assert!(st.success());
}

/// An `ssh://` engine is reached through `ssh -L` to its socket (the user's ssh, here with
/// the test key through FREEZER_SSH_COMMAND): a site frozen over SSH thaws over SSH as a
/// copy that serves the same page; a login that fails says why; no tunnel outlives a run.
#[test]
fn a_site_on_an_engine_reached_over_ssh() {
    let b = host_b();
    services();
    let var = |k: &str| std::env::var(k).expect("set by scripts/services");
    let (url, ssh) = (
        var("FREEZER_TEST_DOCKER_HOST_B_SSH"),
        var("FREEZER_TEST_SSH_COMMAND"),
    );
    image_on_b();
    let repo = TestRepo::local().init();
    let name = unique("ssh");
    let port = free_port();
    let site = start_site(&b, &name, &image(), port);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("freezer.toml");
    fs::write(&config, format!("[hosts.far]\ndocker = \"{url}\"\n")).unwrap();
    let cache = work.path().join("cache");
    let run = |ssh: &str, args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--repo", &repo.url, "--config", config.to_str().unwrap()]);
        freezer_env(
            &all,
            &[
                ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
                ("FREEZER_CACHE_DIR", cache.to_str().unwrap()),
                ("FREEZER_SSH_COMMAND", ssh),
            ],
        )
    };

    let report = json(&run(&ssh, &["freeze", &format!("{name}@far"), "--json"]));
    let id = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(state(&b, &site.c("web")), "running");
    let copy = unique("sshc");
    site.made(&b, &copy);
    let port2 = free_port();
    assert_ok(&run(
        &ssh,
        &[
            "thaw",
            &format!("{name}:{id}@far"),
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port2}"),
        ],
    ));
    assert_eq!(http_get(port2, "/index.html"), site.marker());
    assert_eq!(http_get(port2, "/sub/big.bin"), big_file());

    // Without the key (and the test host unknown to the default known_hosts) the login
    // fails, and ssh's own reason is in the error.
    let out = run(
        "ssh -o IdentitiesOnly=yes -o IdentityFile=/dev/null",
        &["freeze", &format!("{name}@far")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("SSH tunnel") && stderr(&out).contains("failed"),
        "{}",
        stderr(&out)
    );
    let tunnels = Command::new("pgrep")
        .args([
            "-f",
            &format!("freezer-ssh.*{}", url.rsplit('/').next().unwrap()),
        ])
        .output()
        .unwrap();
    assert!(tunnels.stdout.is_empty(), "tunnels left running");
}

/// An engine reached over TCP (with TLS) is treated as remote: volumes and bind mounts
/// travel through the Engine API (a local mirror keeps nightly change detection working).
#[test]
fn a_site_on_a_remote_engine_through_the_engine_api() {
    let b = host_b();
    services();
    let tcp = std::env::var("FREEZER_TEST_DOCKER_HOST_B_TCP").expect("set by scripts/services");
    let certs = std::env::var("FREEZER_TEST_DOCKER_CERTS_B").expect("set by scripts/services");
    image_on_b();
    let repo = TestRepo::local().init();
    let name = unique("rm");
    let port = free_port();
    let site = start_site(&b, &name, &image(), port);
    let work = tempfile::tempdir().unwrap();
    let config = work.path().join("freezer.toml");
    // A second CA's certificate directory: the engine's certificate is not trusted.
    let other_ca = work.path().join("other-ca");
    fs::create_dir(&other_ca).unwrap();
    for f in ["cert.pem", "key.pem"] {
        fs::copy(Path::new(&certs).join(f), other_ca.join(f)).unwrap();
    }
    let st = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=other", "-keyout"])
        .arg(work.path().join("other-key.pem"))
        .arg("-out")
        .arg(other_ca.join("ca.pem"))
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    fs::write(
        &config,
        format!(
            "[hosts.far]\ndocker = \"{tcp}\"\ntls_certs = \"{certs}\"\n\
             [hosts.plain]\ndocker = \"{tcp}\"\n\
             [hosts.untrusted]\ndocker = \"{tcp}\"\ntls_certs = \"{}\"\n",
            other_ca.display()
        ),
    )
    .unwrap();
    let cache = work.path().join("cache");
    let run = |args: &[&str]| through_config_only(args, &repo, &config, &cache);
    let www = mountpoint(&b, &format!("{name}_www"));
    let reference = tempfile::tempdir().unwrap();
    copy_tree(&www, reference.path());

    // TLS: without certificates, or with a CA that did not sign the engine's, the engine
    // is refused with the reason; through the environment, as for the docker CLI, it works.
    let out = run(&["freeze", &format!("{name}@plain")]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("tls_certs"), "{}", stderr(&out));
    let out = run(&["freeze", &format!("{name}@untrusted")]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&tcp) && stderr(&out).contains("certificate"),
        "{}",
        stderr(&out)
    );
    let out = freezer_env(
        &["sites", "--json"],
        &[
            ("DOCKER_HOST", &tcp),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &certs),
        ],
    );
    assert!(json(&out).to_string().contains(&name), "{}", stderr(&out));
    // `tcp://HOST` without a port is the docker CLI's 2376 with TLS: a relay on
    // 127.0.0.1:2376 to the engine's TLS port stands for an engine listening there.
    let relayed = tcp_relay("127.0.0.1:2376", tcp.trim_start_matches("tcp://"));
    let out = freezer_env(
        &["sites", "--json"],
        &[
            ("DOCKER_HOST", "tcp://127.0.0.1"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", &certs),
        ],
    );
    assert!(json(&out).to_string().contains(&name), "{}", stderr(&out));
    assert!(relayed.load(std::sync::atomic::Ordering::SeqCst) > 0);

    let report = json(&run(&["freeze", &format!("{name}@far"), "--json"]));
    assert_eq!(report["window"]["mode"], "pause");
    let id = report["snapshot"].as_str().unwrap().to_string();
    assert_eq!(state(&b, &site.c("web")), "running");
    // The next night reads nothing that did not change.
    let report = json(&run(&["freeze", &format!("{name}@far"), "--json"]));
    let www_tree = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == format!("volume.{name}_www"))
        .unwrap()
        .clone();
    assert_eq!(www_tree["files_read"], 0, "{report}");

    remove_site(&b, &name);
    fs::remove_dir_all(site.bind.path().join("conf")).unwrap();
    let port2 = free_port();
    assert_ok(&run(&[
        "thaw",
        &format!("{name}:{id}@far"),
        "--publish",
        &format!("{port}={port2}"),
    ]));
    assert_eq!(http_get(port2, "/index.html"), site.marker());
    assert_eq!(http_get(port2, "/sub/big.bin"), big_file());
    assert_same_tree_to_seconds(reference.path(), &mountpoint(&b, &format!("{name}_www")));
    assert_eq!(
        fs::read(site.bind.path().join("conf/app.ini")).unwrap(),
        b"[site]\nname=test\n"
    );
    assert_eq!(state(&b, &site.c("job")), "created");
}

/// `--with-writable-layer` keeps what a container changed in its image's files (new files
/// and deletions); without it a thawed container starts from its image.
#[test]
fn a_container_s_writable_layer_comes_back_when_asked_for() {
    let a = host_a();
    let repo = TestRepo::local().init();
    let name = unique("wl");
    let c = format!("{name}-app-1");
    let project = format!("com.docker.compose.project={name}");
    #[rustfmt::skip]
    docker(&a, &["run", "-d", "--name", &c, "--label", &project, &image(), "sleep", "3600"]);
    // Guarded like a Site: removed even if the test fails.
    let _guard = Site {
        name: name.clone(),
        host: a.clone(),
        bind: tempfile::tempdir().unwrap(),
        copies: Default::default(),
    };
    docker(
        &a,
        &[
            "exec",
            &c,
            "sh",
            "-c",
            "echo configured > /etc/app.conf && rm /bin/true",
        ],
    );
    let with = json(&freezer_on(
        &a,
        &[
            "freeze",
            &name,
            "--repo",
            &repo.url,
            "--with-writable-layer",
            "--json",
        ],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    let without = json(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--json"],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();

    docker(&a, &["rm", "-f", &c]);
    assert_ok(&freezer_on(
        &a,
        &["thaw", &format!("{name}:{with}"), "--repo", &repo.url],
    ));
    assert_eq!(
        docker(&a, &["exec", &c, "cat", "/etc/app.conf"]),
        "configured"
    );
    assert!(!docker_try(&a, &["exec", &c, "ls", "/bin/true"])
        .status
        .success());

    docker(&a, &["rm", "-f", &c]);
    assert_ok(&freezer_on(
        &a,
        &["thaw", &format!("{name}:{without}"), "--repo", &repo.url],
    ));
    assert!(!docker_try(&a, &["exec", &c, "cat", "/etc/app.conf"])
        .status
        .success());
    docker(&a, &["exec", &c, "ls", "/bin/true"]);
}

/// Engine B stands for a second host: containers of a site thawed there reach each other
/// over the site's network (a web container talking to its database), as on a real host.
#[test]
fn containers_on_engine_b_reach_each_other() {
    let b = host_b();
    let repo = TestRepo::local().init();
    let name = unique("net");
    let port = free_port();
    let site = start_site(&host_a(), &name, &image(), port);
    assert_ok(&freezer_on(
        &host_a(),
        &["freeze", &name, "--repo", &repo.url, "--with-images"],
    ));
    let copy = unique("netb");
    site.made(&b, &copy);
    let port_b = free_port();
    assert_ok(&freezer_on(
        &b,
        &[
            "thaw",
            &name,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--publish",
            &format!("{port}={port_b}"),
        ],
    ));
    // From the data container to the web container, by its network alias. (nc: the
    // static busybox's wget crashes.)
    let got = docker(
        &b,
        &[
            "exec",
            &format!("{copy}-data-1"),
            "sh",
            "-c",
            "printf 'GET /index.html HTTP/1.0\r\n\r\n' | nc -w 5 web 80",
        ],
    );
    let marker = String::from_utf8(site.marker()).unwrap();
    assert!(
        got.starts_with("HTTP/1.") && got.contains(marker.trim()),
        "{got}"
    );
}

/// `freezer ARGS --repo REPO --config CONFIG` with this machine's Docker socket made
/// unusable, so every engine is reached through the config's hosts, and a cache of the
/// test's own.
pub fn through_config_only(
    args: &[&str],
    repo: &TestRepo,
    config: &std::path::Path,
    cache: &std::path::Path,
) -> std::process::Output {
    let mut all = args.to_vec();
    all.extend(["--repo", &repo.url, "--config", config.to_str().unwrap()]);
    freezer_env(
        &all,
        &[
            ("DOCKER_HOST", "unix:///nonexistent/docker.sock"),
            ("FREEZER_CACHE_DIR", cache.to_str().unwrap()),
        ],
    )
}
