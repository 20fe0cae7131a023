//! The site's own commands around a freeze: host hooks from freezer.toml and container
//! hooks from labels, in order around the window, after-hooks also on failure and on
//! SIGTERM, every hook in the JSON result, no secret in any output.

use std::fs;
use std::path::Path;

use crate::common::*;
use crate::hydrated::{docker, freezer_on, host_a, image, mountpoint, remove_site, state};

/// A config file with host hooks for site `site` that log to `log`.
fn config(dir: &Path, site: &str, log: &Path, before: &str) -> std::path::PathBuf {
    let log = log.display();
    let text = format!(
        r#"[sites.{site}]
paths = ["{src}"]
[sites.{site}.hooks]
before_freeze = "{before}"
after_freeze = "echo after $FREEZER_HOOK $FREEZER_SITE $FREEZER_MODE $FREEZER_SNAPSHOT >> {log}; env >> {log}.env"
on_error = "echo on-error: $FREEZER_ERROR >> {log}"
timeout = "20s"
"#,
        src = dir.join("src").display(),
    );
    let path = dir.join("freezer.toml");
    fs::write(&path, text).unwrap();
    path
}

#[test]
fn host_hooks_run_around_a_freeze_with_their_environment_and_no_secret() {
    let work = tempfile::tempdir().unwrap();
    fs::create_dir_all(work.path().join("src")).unwrap();
    fs::write(work.path().join("src/a"), b"a").unwrap();
    let log = work.path().join("hooks.log");
    let before = format!(
        "echo before $FREEZER_REPO >> {}; echo hello-from-hook",
        log.display()
    );
    let cfg = config(work.path(), "hk", &log, &before);
    let repo = TestRepo::local().init();
    let out = freezer_env(
        &[
            "freeze",
            "hk",
            "--repo",
            &repo.url,
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ],
        &[
            ("FREEZER_DB_PASSWORD", "sekrit-db"),
            ("FREEZER_PASSPHRASE", "sekrit-pass"),
        ],
    );
    let report = json(&out);
    let id = report["snapshot"].as_str().unwrap();
    let text = fs::read_to_string(&log).unwrap();
    assert_eq!(
        text,
        format!("before {}\nafter after-freeze hk files {id}\n", repo.url)
    );
    // The hooks in the result, with exit codes, durations and output.
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report:#}");
    assert_eq!(hooks[0]["hook"], "before-freeze");
    assert_eq!(hooks[0]["where"], "host");
    assert_eq!(hooks[0]["exit_code"], 0);
    assert_eq!(hooks[0]["output"], "hello-from-hook\n");
    assert!(hooks[0]["seconds"].as_f64().unwrap() >= 0.0);
    assert_eq!(hooks[1]["hook"], "after-freeze");
    // Announced as events too, before the result.
    assert!(String::from_utf8_lossy(&out.stdout).contains(r#""event":"hook""#));
    // freezer's secrets reach neither a hook's environment nor any output.
    let env = fs::read_to_string(format!("{}.env", log.display())).unwrap();
    assert!(env.contains("FREEZER_SITE=hk"), "{env}");
    for s in ["sekrit-db", "sekrit-pass"] {
        assert!(!env.contains(s), "{s} in a hook's environment");
        assert!(!String::from_utf8_lossy(&out.stdout).contains(s));
        assert!(!stderr(&out).contains(s));
    }
}

#[test]
fn a_failing_before_hook_stops_the_freeze_and_the_after_hooks_still_run() {
    let work = tempfile::tempdir().unwrap();
    fs::create_dir_all(work.path().join("src")).unwrap();
    let log = work.path().join("hooks.log");
    let cfg = config(
        work.path(),
        "hf",
        &log,
        "echo cannot enter maintenance >&2; exit 3",
    );
    let repo = TestRepo::local().init();
    let out = freezer(&[
        "freeze",
        "hf",
        "--repo",
        &repo.url,
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("before-freeze hook on host failed (exit 3)"),
        "{err}"
    );
    assert!(err.contains("cannot enter maintenance"), "{err}");
    let text = fs::read_to_string(&log).unwrap();
    assert!(text.starts_with("after after-freeze hf files\n"), "{text}");
    assert!(
        text.contains("on-error: before-freeze hook on host failed"),
        "{text}"
    );
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0, "nothing recorded");
}

/// A compose-like site whose web container puts itself in maintenance around a freeze.
struct HookSite {
    host: String,
    name: String,
}

impl Drop for HookSite {
    fn drop(&mut self) {
        remove_site(&self.host, &self.name);
    }
}

impl HookSite {
    fn start(before: &str) -> HookSite {
        HookSite::start_on(host_a(), before)
    }

    fn start_on(host: String, before: &str) -> HookSite {
        let name = unique("hk");
        let site = HookSite { host, name };
        let (a, name) = (&site.host, &site.name);
        let project = format!("com.docker.compose.project={name}");
        let volume = format!("{name}_www");
        docker(a, &["volume", "create", "--label", &project, &volume]);
        fs::write(mountpoint(a, &volume).join("index.html"), b"<h1>hk</h1>").unwrap();
        #[rustfmt::skip]
        docker(a, &[
            "run", "-d", "--name", &format!("{name}-web-1"), "--label", &project,
            "--label", "com.docker.compose.service=web",
            "--label", &format!("dev.freezer.hook.before-freeze={before}"),
            "--label", "dev.freezer.hook.after-freeze=rm /www/.maintenance; echo resumed >> /www/.hooks",
            "--label", "dev.freezer.hook.timeout=30s",
            "--label", "dev.freezer.hook.after-thaw=echo thawed >> /www/.thawed",
            "-v", &format!("{volume}:/www"), &image(), "httpd", "-f", "-p", "80", "-h", "/www",
        ]);
        site
    }

    fn web(&self) -> String {
        format!("{}-web-1", self.name)
    }

    fn volume(&self) -> std::path::PathBuf {
        mountpoint(&self.host, &format!("{}_www", self.name))
    }
}

#[test]
fn container_hooks_run_before_the_window_and_after_it_even_on_failure() {
    let site = HookSite::start("echo on > /www/.maintenance; echo paused >> /www/.hooks");
    let (a, name) = (&site.host, &site.name);
    let repo = TestRepo::local().init();
    let report = json(&freezer_on(
        a,
        &["freeze", name, "--repo", &repo.url, "--json"],
    ));
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report:#}");
    assert_eq!(hooks[0]["hook"], "before-freeze");
    assert_eq!(hooks[0]["where"], site.web());
    assert_eq!(hooks[1]["hook"], "after-freeze");
    assert_eq!(hooks[1]["exit_code"], 0);
    // The before-hook ran before the volumes were copied: its files are in the snapshot;
    // the after-hook ran after the site was resumed: the live volume no longer has it.
    let tree = format!("volume.{name}_www");
    let snaps = json(&freezer(&[
        "snapshots",
        name,
        "--repo",
        &repo.url,
        "--json",
    ]));
    let frozen = snaps[0]["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == tree.as_str())
        .unwrap()["files"]
        .clone();
    assert_eq!(
        frozen, 3,
        "index.html and the two files the before-hook wrote"
    );
    assert!(!site.volume().join(".maintenance").exists());
    let log = fs::read_to_string(site.volume().join(".hooks")).unwrap();
    assert_eq!(log, "paused\nresumed\n");
    assert_eq!(state(a, &site.web()), "running");
}

#[test]
fn a_failing_container_before_hook_leaves_no_snapshot_and_the_site_running() {
    let site = HookSite::start("echo on > /www/.maintenance; echo no database >&2; exit 7");
    let (a, name) = (&site.host, &site.name);
    let repo = TestRepo::local().init();
    let out = freezer_on(a, &["freeze", name, "--repo", &repo.url, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = result_line(&out.stdout);
    let msg = err["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "before-freeze hook on {} failed (exit 7)",
            site.web()
        )),
        "{msg}"
    );
    assert!(msg.contains("no database"), "{msg}");
    // The after-hook ran: maintenance is off again.
    assert!(!site.volume().join(".maintenance").exists());
    assert_eq!(state(a, &site.web()), "running");
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0);
}

#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn an_interrupted_freeze_still_runs_the_after_hook() {
    let site = HookSite::start("echo on > /www/.maintenance; echo paused >> /www/.hooks");
    let (a, name) = (&site.host, &site.name);
    let repo = TestRepo::local().init();
    let child = spawn_freezer(
        &["freeze", name, "--repo", &repo.url],
        &[
            ("DOCKER_HOST", a),
            ("FREEZER_FAULT_HOLD_WINDOW_MS", "60000"),
        ],
    );
    crate::hydrated::wait_for_state(a, &site.web(), "paused");
    assert!(site.volume().join(".maintenance").exists());
    let st = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        !site.volume().join(".maintenance").exists(),
        "{}",
        stderr(&out)
    );
    assert_eq!(state(a, &site.web()), "running");
    let log = fs::read_to_string(site.volume().join(".hooks")).unwrap();
    assert_eq!(log, "paused\nresumed\n");
    // The interrupted run deleted its lock, as a finished run does (SPEC.md §12).
    let locks = repo.store().list("locks/").unwrap();
    assert!(locks.is_empty(), "{locks:?}");
}

#[test]
fn after_thaw_hooks_run_in_a_thawed_copy_and_in_a_drill() {
    let site = HookSite::start("echo on > /www/.maintenance");
    let (a, name) = (&site.host, &site.name);
    let copy = unique("hc");
    struct Copy(String, String);
    impl Drop for Copy {
        fn drop(&mut self) {
            remove_site(&self.0, &self.1);
        }
    }
    let _copy = Copy(a.clone(), copy.clone());
    let repo = TestRepo::local().init();
    let id = json(&freezer_on(
        a,
        &["freeze", name, "--repo", &repo.url, "--json"],
    ))["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // The host's after_thaw hook comes from the site's config.
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("thaw.log");
    let cfg = work.path().join("freezer.toml");
    fs::write(
        &cfg,
        format!(
            "[sites.{name}.hooks]\nafter_thaw = \"echo $FREEZER_SITE $FREEZER_SNAPSHOT $FREEZER_MODE > {}\"\n\
             after_drill_restore = \"echo drilled $FREEZER_SITE > {}.drill\"\n",
            log.display(),
            log.display()
        ),
    )
    .unwrap();
    let report = json(&freezer_on(
        a,
        &[
            "thaw",
            name,
            "--repo",
            &repo.url,
            "--as",
            &copy,
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ],
    ));
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report:#}");
    assert_eq!(hooks[0]["hook"], "after-thaw");
    assert_eq!(hooks[0]["where"], format!("{copy}-web-1"));
    assert_eq!(hooks[0]["exit_code"], 0);
    assert_eq!(hooks[1]["where"], "host");
    let copy_volume = mountpoint(a, &format!("{copy}_www"));
    assert_eq!(fs::read(copy_volume.join(".thawed")).unwrap(), b"thawed\n");
    assert!(
        !site.volume().join(".thawed").exists(),
        "only the copy ran it"
    );
    assert_eq!(
        fs::read_to_string(&log).unwrap(),
        format!("{copy} {id} hydrated\n")
    );

    // A drill runs them in its scratch copy, as checks.
    let drill = json(&freezer_on(
        a,
        &[
            "drill",
            name,
            "--repo",
            &repo.url,
            "--config",
            cfg.to_str().unwrap(),
            "--json",
        ],
    ));
    assert_eq!(drill["ok"], true, "{drill:#}");
    let checks = drill["checks"].as_array().unwrap();
    assert!(
        checks.iter().any(|c| c["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("hook after-thaw on ") && n.ends_with("-web-1"))
            && c["ok"] == true),
        "{drill:#}"
    );
    assert!(checks
        .iter()
        .any(|c| c["name"] == "hook after-drill-restore on host" && c["ok"] == true));
    let drilled = fs::read_to_string(format!("{}.drill", log.display())).unwrap();
    assert_eq!(
        drilled,
        format!("drilled {}\n", drill["target"].as_str().unwrap())
    );
}

/// Container hooks run through the Engine API, so they work on a remote engine too (TLS).
#[test]
fn container_hooks_on_a_remote_engine_through_tls() {
    let b = crate::hydrated::host_b();
    let tcp = std::env::var("FREEZER_TEST_DOCKER_HOST_B_TCP").expect("set by scripts/services");
    let certs = std::env::var("FREEZER_TEST_DOCKER_CERTS_B").expect("set by scripts/services");
    crate::hydrated::image_on_b();
    let site = HookSite::start_on(b, "echo on > /www/.maintenance; echo paused >> /www/.hooks");
    let work = tempfile::tempdir().unwrap();
    let cfg = work.path().join("freezer.toml");
    fs::write(
        &cfg,
        format!("[hosts.far]\ndocker = \"{tcp}\"\ntls_certs = \"{certs}\"\n"),
    )
    .unwrap();
    let repo = TestRepo::local().init();
    let target = format!("{}@far", site.name);
    let report = json(&freezer(&[
        "freeze",
        &target,
        "--repo",
        &repo.url,
        "--config",
        cfg.to_str().unwrap(),
        "--json",
    ]));
    let hooks = report["hooks"].as_array().unwrap();
    assert_eq!(hooks.len(), 2, "{report:#}");
    assert!(hooks.iter().all(|h| h["exit_code"] == 0), "{report:#}");
    let tree = report["trees"].as_array().unwrap()[0].clone();
    assert_eq!(
        tree["files"], 3,
        "the before-hook's files were copied: {tree:#}"
    );
    assert!(!site.volume().join(".maintenance").exists());
    assert_eq!(
        fs::read_to_string(site.volume().join(".hooks")).unwrap(),
        "paused\nresumed\n"
    );
}
