//! Restore drills: prove a snapshot restores, without touching the live site.
//!
//! A drill thaws the snapshot under a scratch name (a Docker site: its own containers,
//! volumes and network, no published ports, no restart policy; files: a temporary
//! directory; databases: scratch databases), checks that it works, measures how long the
//! restore took, and removes everything again unless `--keep`.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::db::DbUrl;
use crate::docker::ContainerEngine;
use crate::error::{Error, ErrorKind, Result};
use crate::ops::recreate::{self, SiteOptions};
use crate::ops::{self, hooks, DbThawFlags};
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};

pub struct DrillOptions {
    /// `--probe SERVICE=COMMAND`: run `sh -c COMMAND` in the site's SERVICE container.
    pub probes: Vec<(String, String)>,
    /// `--image SERVICE=IMAGE` and `--env SERVICE:KEY=VALUE`: an upgrade rehearsed.
    pub images: Vec<(String, String)>,
    pub env: Vec<(String, String, String)>,
    /// Leave the restored copy in place.
    pub keep: bool,
    /// How long containers get to be running (and healthy, when they have a check).
    pub timeout: Duration,
    /// Files and dehydrated snapshots: the server for scratch databases, as
    /// `mysql://USER@HOST:PORT/PREFIX` (as given: the password, if in it, stays escaped).
    pub db_server: Option<String>,
    pub jobs: usize,
    /// The site's host hooks (after_drill_restore runs once the copy is up).
    pub hooks: crate::ops::hooks::HostHooks,
}

#[derive(Debug, Serialize)]
pub struct DrillReport {
    pub site: String,
    pub snapshot: String,
    /// The scratch name the snapshot was restored under.
    pub target: String,
    pub ok: bool,
    /// How long the restore took (thaw, including verification).
    pub restore_seconds: f64,
    /// The whole drill.
    pub seconds: f64,
    pub checks: Vec<Check>,
    /// The restored copy was left in place (`--keep`).
    pub kept: bool,
    /// Why the restore itself failed, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<DrillError>,
}

impl DrillReport {
    /// A passing report for a drill of `snapshot` under a new scratch name.
    fn new(snapshot: &Snapshot, keep: bool) -> DrillReport {
        DrillReport {
            site: snapshot.site.clone(),
            snapshot: snapshot.id.clone(),
            target: recreate::scratch_name("drill", &snapshot.site),
            ok: true,
            restore_seconds: 0.0,
            seconds: 0.0,
            checks: vec![],
            kept: keep,
            error: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct DrillError {
    pub kind: String,
    pub exit_code: i32,
    pub message: String,
    pub hint: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

impl DrillReport {
    /// The exit code: 0, the restore's own error code, or 4 when a check failed.
    pub fn exit_code(&self) -> i32 {
        match (&self.error, self.ok) {
            (Some(e), _) => e.exit_code,
            (None, true) => 0,
            (None, false) => ErrorKind::Integrity.exit_code(),
        }
    }
}

fn check(name: impl Into<String>, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

fn failed(report: &mut DrillReport, e: Error) {
    report.checks.push(check("restore", false, e.to_string()));
    report.error = Some(DrillError {
        kind: format!("{:?}", e.kind).to_lowercase(),
        exit_code: e.kind.exit_code(),
        message: e.to_string(),
        hint: e.hint.clone(),
    });
    report.ok = false;
}

/// Runs a drill of a Docker site's snapshot on `engine`.
pub fn drill_docker(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    snapshot: Snapshot,
    opts: &DrillOptions,
    progress: &Progress,
) -> Result<DrillReport> {
    let started = Instant::now();
    let mut report = DrillReport::new(&snapshot, opts.keep);
    let target = report.target.clone();
    let binds = crate::sys::temp_dir("a directory for the drill's bind mounts")?;
    let site_opts = SiteOptions {
        rename: Some(target.clone()),
        publish: vec![],
        replace: false,
        bind_root: Some(binds.path().to_path_buf()),
        project_dir: None,
        isolated: true,
        images: opts.images.clone(),
        env: opts.env.clone(),
        only: None,
    };
    let restored = recreate::plan(repo, engine, snapshot, &site_opts).and_then(|plan| {
        recreate::execute(repo, engine, plan, progress, || {
            Err(Error::other("a drill never replaces anything"))
        })
    });
    report.restore_seconds = started.elapsed().as_secs_f64();
    let thawed = match restored {
        Ok(r) => r,
        Err(e) => {
            failed(&mut report, e);
            report.seconds = started.elapsed().as_secs_f64();
            return Ok(report);
        }
    };
    // Ctrl-C while the copy is up removes it.
    let copy = recreate::CopyGuard::new(engine, &thawed, progress.cancel());
    report.checks.push(check(
        "restore",
        true,
        format!(
            "restored as site {target} in {:.1}s",
            report.restore_seconds
        ),
    ));
    report
        .checks
        .extend(restored_checks(&thawed.trees, &thawed.databases));
    progress.set_label("waiting for the containers".to_string());
    report
        .checks
        .extend(container_checks(engine, &thawed, opts.timeout));
    // The site's own after-thaw hooks, in the copy; then the host's after_drill_restore.
    let mut hooks = hooks::after_thaw_in_containers(engine, &thawed.states, opts.timeout, progress);
    hooks.extend(drill_restore_hook(&opts.hooks, &report, repo, progress));
    report.checks.extend(hooks.iter().map(hook_check));
    for (service, command) in &opts.probes {
        report
            .checks
            .push(probe(engine, &thawed, &target, service, command));
    }
    // Interrupted: the checks lost their ground (the copy is being removed).
    if let Err(e) = progress.check(|| format!("drilling {target}")) {
        copy.remove(engine);
        return Err(e);
    }
    report.ok = report.checks.iter().all(|c| c.ok);
    if opts.keep {
        // The bind directories stay with the copy.
        let _ = binds.keep();
        copy.keep();
    } else {
        progress.set_label(format!("removing {target}"));
        copy.remove(engine);
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The host's after_drill_restore hook, told the copy's name.
fn drill_restore_hook(
    host: &hooks::HostHooks,
    report: &DrillReport,
    repo: &Repository,
    progress: &Progress,
) -> Option<hooks::HookReport> {
    let cmd = host.command(hooks::When::AfterDrillRestore)?;
    let env = hooks::HookEnv {
        site: report.target.clone(),
        snapshot: Some(report.snapshot.clone()),
        repo: repo.location(),
        ..Default::default()
    };
    let r = hooks::run_host(hooks::When::AfterDrillRestore, cmd, &env, host.timeout);
    progress.announce("hook", &r);
    Some(r)
}

/// A hook as a drill check: it must exit 0.
fn hook_check(h: &hooks::HookReport) -> Check {
    let how = match (&h.error, h.exit_code) {
        (Some(e), _) => e.clone(),
        (None, Some(c)) => format!("exit {c}"),
        (None, None) => "did not finish".into(),
    };
    check(
        format!("hook {} on {}", h.hook.as_str(), h.place),
        h.ok,
        format!("{how} in {:.1}s{}", h.seconds, tail(&h.output)),
    )
}

/// What a completed restore proved: every tree's layers matched their digests, every
/// database its row counts and checksums.
fn restored_checks(
    trees: &[crate::ops::ThawTreeReport],
    databases: &[crate::db::LoadReport],
) -> Vec<Check> {
    let trees = trees.iter().map(|t| {
        check(
            format!("tree {}", t.name),
            true,
            format!(
                "{} files, {} restored; every layer matched its digest",
                t.stats.files,
                crate::progress::bytes(t.stats.bytes)
            ),
        )
    });
    let databases = databases.iter().map(|d| {
        check(
            format!("database {}", d.source),
            true,
            format!(
                "{} tables, {} rows: row counts and checksums match the snapshot",
                d.tables, d.rows
            ),
        )
    });
    trees.chain(databases).collect()
}

/// Every container that was running must be running (and healthy, if it has a
/// healthcheck) within `timeout`, and still be running a moment later.
fn container_checks(
    engine: &dyn ContainerEngine,
    thawed: &recreate::SiteReport,
    timeout: Duration,
) -> Vec<Check> {
    let mut out = Vec::new();
    for (name, state) in &thawed.states {
        if state != "running" {
            continue;
        }
        let deadline = Instant::now() + timeout;
        let mut stable = 0;
        let result = loop {
            let (status, health, code) = match engine.container(name) {
                Ok(c) => (c.status, c.health, c.exit_code),
                Err(e) => break Err(e.to_string()),
            };
            let good = status == "running" && health.as_deref().is_none_or(|h| h == "healthy");
            if good {
                stable += 1;
                // Twice, a second apart: a process that dies at once is caught.
                if stable >= 2 {
                    break Ok(match health {
                        Some(_) => "running and healthy".to_string(),
                        None => "running".to_string(),
                    });
                }
            } else {
                stable = 0;
                if status == "exited" || status == "dead" {
                    // Said here: the copy, and its log with it, is removed after the drill.
                    let said = match engine.log_tail(name, 3) {
                        l if l.is_empty() => String::new(),
                        l => format!(
                            "; its last lines: {}",
                            l.lines().collect::<Vec<_>>().join(" | ")
                        ),
                    };
                    break Err(format!("{status} with exit code {code}{said}"));
                }
            }
            if Instant::now() > deadline {
                break Err(format!(
                    "not running{} after {}s (state {status}{})",
                    if health.is_some() { " and healthy" } else { "" },
                    timeout.as_secs(),
                    health.map(|h| format!(", health {h}")).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        out.push(match result {
            Ok(d) => check(format!("container {name}"), true, d),
            Err(d) => check(format!("container {name}"), false, d),
        });
    }
    out
}

/// Runs `sh -c COMMAND` in the container of the given compose service (or name suffix).
fn probe(
    engine: &dyn ContainerEngine,
    thawed: &recreate::SiteReport,
    target: &str,
    service: &str,
    command: &str,
) -> Check {
    let name = format!("probe {service}: {command}");
    let Some(container) = thawed
        .containers
        .iter()
        .find(|c| {
            *c == service
                || c.strip_prefix(target).is_some_and(|rest| {
                    rest == format!("-{service}-1")
                        || rest == format!("_{service}_1")
                        || rest == format!("-{service}")
                })
        })
        .cloned()
    else {
        return check(
            name,
            false,
            format!(
                "no container of service {service}; the site has {}",
                thawed.containers.join(", ")
            ),
        );
    };
    let result = engine.exec(&container, command, None, Duration::from_secs(600));
    match result {
        Ok((Some(0), out)) => check(name, true, format!("exit 0 in {container}{}", tail(&out))),
        Ok((Some(code), out)) => check(
            name,
            false,
            format!("exit {code} in {container}{}", tail(&out)),
        ),
        Ok((None, out)) => check(
            name,
            false,
            format!("did not finish in 10 minutes in {container}{}", tail(&out)),
        ),
        Err(e) => check(name, false, format!("could not run it in {container}: {e}")),
    }
}

/// The last line of a probe's output, for the report.
fn tail(out: &str) -> String {
    match out.trim().lines().last() {
        Some(l) if !l.is_empty() => format!(": {}", l.chars().take(200).collect::<String>()),
        _ => String::new(),
    }
}

/// Runs a drill of a files or dehydrated snapshot: trees into a temporary directory,
/// databases into scratch databases on `opts.db_server`.
pub fn drill_files(
    repo: &Repository,
    snapshot: Snapshot,
    opts: &DrillOptions,
    progress: &Progress,
) -> Result<DrillReport> {
    let started = Instant::now();
    let mut report = DrillReport::new(&snapshot, opts.keep);
    let target = report.target.clone();
    let databases: Vec<String> = snapshot
        .databases()
        .map(|(name, _)| name.to_string())
        .collect();
    let mut targets = Vec::new();
    let mut scratch = Vec::new();
    for db in &databases {
        let raw = opts.db_server.as_ref().ok_or_else(|| {
            Error::usage(format!(
                "snapshot {}:{} holds database {db}; a drill loads it into a scratch database",
                snapshot.site, snapshot.id
            ))
            .with_hint("pass --db mysql://USER@HOST:PORT/PREFIX (or postgres://…/PREFIX): databases are loaded as PREFIX_DB_<hex> and dropped afterwards")
        })?;
        let server = DbUrl::parse(raw)?;
        let name = format!(
            "{}_{}_{}",
            server.database,
            db,
            target.rsplit('-').next().unwrap_or("0")
        );
        // The URL as given, with the scratch database as its path.
        let base = raw.split('?').next().unwrap_or(raw);
        let (base, _) = base.rsplit_once('/').expect("a URL that parsed has a path");
        targets.push(format!("{db}={base}/{name}"));
        scratch.push(server.with_database(&name));
    }
    let dir = crate::sys::temp_dir("the drill's directory")?;
    let flags = DbThawFlags {
        targets,
        skip: false,
        jobs: opts.jobs,
        with_users: false,
        tables: vec![],
    };
    let restored = ops::plan_thaw(
        repo,
        snapshot,
        Some(dir.path()),
        ops::Replace::No,
        &[],
        &flags,
    )
    .and_then(|plan| ops::thaw(repo, &plan, progress));
    report.restore_seconds = started.elapsed().as_secs_f64();
    match restored {
        Err(e) => failed(&mut report, e),
        Ok(r) => {
            report.checks.push(check(
                "restore",
                true,
                format!("restored in {:.1}s", report.restore_seconds),
            ));
            report
                .checks
                .extend(restored_checks(&r.trees, &r.databases));
            let hook = drill_restore_hook(&opts.hooks, &report, repo, progress);
            report.checks.extend(hook.iter().map(hook_check));
        }
    }
    if opts.keep {
        let _ = dir.keep();
    } else {
        for url in &scratch {
            let _ = crate::db::drop_database(url);
        }
    }
    report.ok = report.error.is_none() && report.checks.iter().all(|c| c.ok);
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::capture::ContainerSpec;
    use crate::docker::fake::FakeEngine;
    use crate::ops::testkit::{service, with_volume, Kit};

    const WEB: &str = "shop/web:1";
    const DB: &str = "mariadb:11";

    fn options() -> DrillOptions {
        DrillOptions {
            probes: vec![],
            images: vec![],
            env: vec![],
            keep: false,
            timeout: Duration::from_secs(5),
            db_server: None,
            jobs: 1,
            hooks: Default::default(),
        }
    }

    fn shop(kit: &Kit, web: ContainerSpec) -> Snapshot {
        let web = with_volume(web, "shop_www", "/var/www/uploads");
        let db = with_volume(service("shop", "db", DB), "shop_db", "/var/lib/mysql");
        kit.freeze(
            "shop",
            &[web, db],
            &[("volume.shop_www", "cat.jpg", "a cat")],
        )
    }

    fn drill(kit: &Kit, snap: Snapshot, opts: &DrillOptions) -> DrillReport {
        drill_docker(&kit.repo, &kit.engine, snap, opts, &Progress::default()).unwrap()
    }

    fn check_of<'a>(r: &'a DrillReport, name: &str) -> &'a Check {
        r.checks
            .iter()
            .find(|c| c.name.contains(name))
            .unwrap_or_else(|| panic!("no check {name} in {:?}", r.checks))
    }

    fn nothing_left(engine: &FakeEngine) {
        let st = engine.state();
        assert!(st.containers.is_empty(), "{:?}", st.containers.keys());
        assert!(st.volumes.is_empty(), "{:?}", st.volumes.keys());
        assert!(st.networks.is_empty(), "{:?}", st.networks);
    }

    #[test]
    fn a_drill_restores_a_copy_checks_it_and_removes_it() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        let r = drill(&kit, snap, &options());
        assert!(r.ok, "{:?}", r.checks);
        assert_eq!(r.exit_code(), 0);
        assert!(r.target.starts_with("drill-shop-"), "{}", r.target);
        assert!(check_of(&r, "restore").ok);
        let web = check_of(&r, "-web-1");
        assert!(web.ok && web.detail == "running", "{web:?}");
        // The copy lived under its own names, never the site's, and is gone.
        let created = kit.engine.calls("create_container");
        assert_eq!(created.len(), 2);
        assert!(created.iter().all(|c| c.contains(&r.target)), "{created:?}");
        nothing_left(&kit.engine);
    }

    #[test]
    fn keep_leaves_the_copy_in_place() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        let r = drill(
            &kit,
            snap,
            &DrillOptions {
                keep: true,
                ..options()
            },
        );
        assert!(r.ok && r.kept);
        let st = kit.engine.state();
        assert_eq!(st.containers.len(), 2);
        assert!(st.containers.keys().all(|c| c.starts_with(&r.target)));
    }

    #[test]
    fn a_container_that_exits_fails_the_drill_with_exit_4_and_its_last_lines() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        kit.engine.exit_on_start("-web-1", 2);
        let r = drill(&kit, snap, &options());
        assert!(!r.ok);
        assert_eq!(r.exit_code(), 4);
        let web = check_of(&r, "-web-1");
        assert!(!web.ok, "{web:?}");
        assert!(web.detail.contains("exited with exit code 2"), "{web:?}");
        assert!(web.detail.contains("(the log of drill-shop-"), "{web:?}");
        nothing_left(&kit.engine);
    }

    #[test]
    fn an_unhealthy_container_fails_the_drill_after_the_timeout() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        kit.engine.health_on_start("-db-1", "unhealthy");
        let opts = DrillOptions {
            timeout: Duration::from_secs(1),
            ..options()
        };
        let r = drill(&kit, snap, &opts);
        let db = check_of(&r, "-db-1");
        assert!(!db.ok, "{db:?}");
        assert!(db.detail.contains("health unhealthy"), "{db:?}");
        assert_eq!(r.exit_code(), 4);
    }

    #[test]
    fn a_probe_runs_in_the_service_s_container_and_its_exit_code_counts() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        kit.engine
            .answer("curl -fs localhost/health", 7, "curl: (7) refused");
        let opts = DrillOptions {
            probes: vec![
                ("web".into(), "curl -fs localhost/health".into()),
                ("db".into(), "mariadb -e 'SELECT 1'".into()),
                ("cache".into(), "redis-cli ping".into()),
            ],
            ..options()
        };
        let r = drill(&kit, snap, &opts);
        let failed: Vec<&Check> = r.checks.iter().filter(|c| !c.ok).collect();
        assert_eq!(failed.len(), 2, "{:?}", r.checks);
        assert!(
            failed[0].detail.starts_with("exit 7 in drill-shop-"),
            "{:?}",
            failed[0]
        );
        assert!(
            failed[0].detail.ends_with(": curl: (7) refused"),
            "{:?}",
            failed[0]
        );
        assert!(
            failed[1].detail.contains("no container of service cache"),
            "{:?}",
            failed[1]
        );
        assert_eq!(r.exit_code(), 4);
    }

    #[test]
    fn a_restore_that_fails_is_reported_with_its_own_exit_code_and_leaves_nothing() {
        let kit = Kit::new(&[WEB, DB]);
        let snap = shop(&kit, service("shop", "web", WEB));
        kit.engine.fail("create_container");
        let r = drill(&kit, snap, &options());
        assert!(!r.ok);
        let e = r.error.as_ref().expect("the restore's error");
        assert!(e.message.contains("create_container"), "{e:?}");
        assert_eq!(r.exit_code(), e.exit_code);
        assert_ne!(r.exit_code(), 0);
        nothing_left(&kit.engine);
    }

    #[test]
    fn the_site_s_after_thaw_hook_runs_in_the_copy_and_its_failure_counts() {
        let kit = Kit::new(&[WEB, DB]);
        let mut web = service("shop", "web", WEB);
        web.config["Labels"]["dev.freezer.hook.after-thaw"] = "php artisan cache:clear".into();
        let snap = shop(&kit, web);
        kit.engine
            .answer("php artisan cache:clear", 1, "Class not found");
        let r = drill(&kit, snap, &options());
        let hook = check_of(&r, "hook after-thaw");
        assert!(!hook.ok, "{hook:?}");
        assert!(hook.name.contains(&r.target), "{hook:?}");
        assert!(hook.detail.contains("Class not found"), "{hook:?}");
        let ran = kit.engine.calls("exec ");
        assert_eq!(ran.len(), 1, "{ran:?}");
        assert!(ran[0].contains("sh -c php artisan cache:clear"), "{ran:?}");
        assert_eq!(r.exit_code(), 4);
    }
}
