//! The site's own commands around a freeze or a thaw (SPEC.md §9, "Hooks"): host
//! commands from the site's `[sites.NAME.hooks]` in freezer.toml, and commands inside
//! containers declared by their `dev.freezer.hook.*` labels, run through the engine.
//!
//! A failing before-hook stops the freeze (nothing is recorded) unless the hook may fail;
//! after-hooks run whenever before-hooks ran, also when the freeze failed or was
//! interrupted, as the pause window is always undone. Each hook's report is announced
//! as it ends (a line on stderr, or a JSON event) and is part of the result.

use std::io::{Read, Seek};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::docker::capture::ContainerSpec;
use crate::docker::ContainerEngine;
use crate::error::{Error, Result};

/// When a hook runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum When {
    BeforeFreeze,
    AfterFreeze,
    OnError,
    AfterThaw,
    AfterDrillRestore,
}

impl When {
    pub fn as_str(self) -> &'static str {
        match self {
            When::BeforeFreeze => "before-freeze",
            When::AfterFreeze => "after-freeze",
            When::OnError => "on-error",
            When::AfterThaw => "after-thaw",
            When::AfterDrillRestore => "after-drill-restore",
        }
    }
}

/// The host commands of a site (freezer.toml), with their timeout.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostHooks {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before_freeze: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_freeze: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_thaw: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after_drill_restore: Option<String>,
    #[serde(skip)]
    pub timeout: Duration,
    /// A failing before-freeze hook does not stop the freeze.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub continue_on_error: bool,
}

impl HostHooks {
    pub fn command(&self, when: When) -> Option<&str> {
        match when {
            When::BeforeFreeze => self.before_freeze.as_deref(),
            When::AfterFreeze => self.after_freeze.as_deref(),
            When::OnError => self.on_error.as_deref(),
            When::AfterThaw => self.after_thaw.as_deref(),
            When::AfterDrillRestore => self.after_drill_restore.as_deref(),
        }
    }
}

/// Container labels that declare hooks.
pub const LABEL_HOOK: &str = "dev.freezer.hook.";
pub const LABEL_HOOK_USER: &str = "dev.freezer.hook.user";
pub const LABEL_HOOK_TIMEOUT: &str = "dev.freezer.hook.timeout";
pub const LABEL_HOOK_ON_ERROR: &str = "dev.freezer.hook.on-error";

/// How long a thawed container gets to run (and be healthy) before its after-thaw hook.
pub const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Default for a hook without a timeout of its own.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(300);

/// What one hook did.
#[derive(Debug, Clone, Serialize)]
pub struct HookReport {
    pub hook: When,
    /// `host`, or the container it ran in.
    #[serde(rename = "where")]
    pub place: String,
    pub command: String,
    /// None: it did not finish in time, or could not be started (`error` says which).
    pub exit_code: Option<i64>,
    pub seconds: f64,
    pub ok: bool,
    /// The last lines of its output (stdout and stderr), at most 2 KiB.
    pub output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl HookReport {
    /// The failure, as an error naming the hook.
    pub fn failure(&self) -> Error {
        let how = match (&self.error, self.exit_code) {
            (Some(e), _) => e.clone(),
            (None, Some(c)) => format!("exit {c}"),
            (None, None) => "did not finish".into(),
        };
        let mut e = Error::other(format!(
            "{} hook on {} failed ({how}): {}",
            self.hook.as_str(),
            self.place,
            self.command
        ));
        if !self.output.trim().is_empty() {
            e.message
                .push_str(&format!("; its output ends: {}", last_line(&self.output)));
        }
        e.with_hint("nothing was recorded; fix the hook, or let it fail (continue_on_error = true, or the label dev.freezer.hook.on-error=continue)")
    }
}

fn last_line(s: &str) -> String {
    s.trim()
        .lines()
        .last()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// What a hook is told about the run, as `FREEZER_*` environment variables.
#[derive(Debug, Clone, Default)]
pub struct HookEnv {
    pub site: String,
    pub snapshot: Option<String>,
    pub mode: Option<String>,
    /// The repository's location (an address, never a key or password).
    pub repo: String,
    /// on-error: what failed.
    pub error: Option<String>,
}

/// freezer's own secrets, which a hook's environment does not inherit.
const SECRETS: &[&str] = &[
    "FREEZER_PASSPHRASE",
    "FREEZER_NEW_PASSPHRASE",
    "FREEZER_IDENTITY",
    "FREEZER_DB_PASSWORD",
];

const OUTPUT_TAIL: usize = 2048;

fn tail(mut s: String) -> String {
    if s.len() > OUTPUT_TAIL {
        let mut cut = s.len() - OUTPUT_TAIL;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s.drain(..cut);
    }
    s
}

/// Runs a host hook: `sh -c command` in its own process group, killed whole when it
/// outlives `timeout`.
pub fn run_host(when: When, command: &str, env: &HookEnv, timeout: Duration) -> HookReport {
    let started = Instant::now();
    let mut report = HookReport {
        hook: when,
        place: "host".into(),
        command: command.to_string(),
        exit_code: None,
        seconds: 0.0,
        ok: false,
        output: String::new(),
        error: None,
    };
    let result = (|| -> std::io::Result<(Option<i64>, String)> {
        let mut out = tempfile::tempfile()?;
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(command)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out.try_clone()?)
            .env("FREEZER_HOOK", when.as_str())
            .env("FREEZER_SITE", &env.site)
            .env("FREEZER_REPO", &env.repo);
        for s in SECRETS {
            cmd.env_remove(s);
        }
        for (k, v) in [
            ("FREEZER_SNAPSHOT", &env.snapshot),
            ("FREEZER_MODE", &env.mode),
            ("FREEZER_ERROR", &env.error),
        ] {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn()?;
        let code = loop {
            if let Some(st) = child.try_wait()? {
                break st.code().map(i64::from);
            }
            if started.elapsed() >= timeout {
                // The whole group: `sh -c` and whatever it started.
                crate::sys::kill_group(child.id());
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut text = Vec::new();
        out.rewind()?;
        out.read_to_end(&mut text)?;
        Ok((code, String::from_utf8_lossy(&text).into_owned()))
    })();
    match result {
        Ok((code, output)) => {
            report.exit_code = code;
            report.ok = code == Some(0);
            report.output = tail(output);
            if code.is_none() {
                report.error = Some(format!("killed after {}s", timeout.as_secs()));
            }
        }
        Err(e) => report.error = Some(format!("could not start it: {e}")),
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The hooks a container's labels declare for `when`.
pub struct ContainerHook {
    pub container: String,
    pub command: String,
    pub user: Option<String>,
    pub timeout: Duration,
    /// A failure does not stop the freeze (`dev.freezer.hook.on-error=continue`).
    pub may_fail: bool,
}

/// The container hooks of `specs` for `when`, in the site's container order.
pub fn container_hooks(specs: &[ContainerSpec], when: When) -> Result<Vec<ContainerHook>> {
    let mut out = Vec::new();
    for spec in specs {
        out.extend(labelled(&spec.name, &spec.config["Labels"], when)?);
    }
    Ok(out)
}

/// The hook container `name`'s labels (a JSON object) declare for `when`, if any.
fn labelled(name: &str, labels: &serde_json::Value, when: When) -> Result<Option<ContainerHook>> {
    let label = |k: &str| labels[k].as_str().map(str::to_string);
    let Some(command) = label(&format!("{LABEL_HOOK}{}", when.as_str())) else {
        return Ok(None);
    };
    let timeout = match label(LABEL_HOOK_TIMEOUT) {
        Some(t) => crate::sys::parse_duration(&t).map_err(|e| {
            Error::usage(format!("container {name}: label {LABEL_HOOK_TIMEOUT}: {e}"))
        })?,
        None => DEFAULT_TIMEOUT,
    };
    Ok(Some(ContainerHook {
        container: name.to_string(),
        command,
        user: label(LABEL_HOOK_USER).filter(|u| !u.is_empty()),
        timeout,
        may_fail: label(LABEL_HOOK_ON_ERROR).as_deref() == Some("continue"),
    }))
}

/// Runs the after-thaw hooks of a thawed site's running containers, each once its
/// container is running and, when it has a healthcheck, healthy (waiting up to `ready`).
pub fn after_thaw_in_containers(
    engine: &dyn ContainerEngine,
    containers: &[(String, String)],
    ready: Duration,
    progress: &crate::progress::Progress,
) -> Vec<HookReport> {
    let mut out = Vec::new();
    for (name, state) in containers {
        if state != "running" {
            continue;
        }
        let labels = match engine.container(name) {
            Ok(c) => serde_json::to_value(c.labels).unwrap_or_default(),
            Err(_) => continue,
        };
        let hook = match labelled(name, &labels, When::AfterThaw) {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                out.push(failed_to_start(When::AfterThaw, name, "", e.to_string()));
                continue;
            }
        };
        progress.set_label(format!("running the after-thaw hook in {name}"));
        let report = match wait_ready(engine, name, ready) {
            Ok(()) => run_in_container(engine, When::AfterThaw, &hook),
            Err(why) => failed_to_start(When::AfterThaw, name, &hook.command, why),
        };
        progress.announce("hook", &report);
        out.push(report);
    }
    out
}

fn failed_to_start(when: When, place: &str, command: &str, why: String) -> HookReport {
    HookReport {
        hook: when,
        place: place.to_string(),
        command: command.to_string(),
        exit_code: None,
        seconds: 0.0,
        ok: false,
        output: String::new(),
        error: Some(why),
    }
}

/// Waits until `container` runs and, if it has a healthcheck, is healthy.
fn wait_ready(
    engine: &dyn ContainerEngine,
    container: &str,
    ready: Duration,
) -> std::result::Result<(), String> {
    let started = Instant::now();
    loop {
        let state = engine.container(container).map_err(|e| e.to_string())?;
        let health = state.health.unwrap_or_default();
        if state.running && (health.is_empty() || health == "healthy") {
            return Ok(());
        }
        if started.elapsed() >= ready {
            return Err(format!(
                "the container was not running{} within {}s",
                if health.is_empty() {
                    ""
                } else {
                    " and healthy"
                },
                ready.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Runs one container hook through the engine.
pub fn run_in_container(engine: &dyn ContainerEngine, when: When, h: &ContainerHook) -> HookReport {
    let started = Instant::now();
    let mut report = HookReport {
        hook: when,
        place: h.container.clone(),
        command: h.command.clone(),
        exit_code: None,
        seconds: 0.0,
        ok: false,
        output: String::new(),
        error: None,
    };
    match engine.exec(&h.container, &h.command, h.user.as_deref(), h.timeout) {
        Ok((code, output)) => {
            report.exit_code = code;
            report.ok = code == Some(0);
            report.output = tail(output);
            if code.is_none() {
                report.error = Some(format!(
                    "did not finish in {}s (it may still be running in the container)",
                    h.timeout.as_secs()
                ));
            }
        }
        Err(e) => report.error = Some(e.to_string()),
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

#[cfg(test)]
mod fake_engine_tests {
    use super::*;
    use crate::docker::fake::FakeEngine;
    use crate::ops::testkit::service;

    fn labelled_spec(labels: &[(&str, &str)]) -> ContainerSpec {
        let mut s = service("shop", "web", "shop/web:1");
        for (k, v) in labels {
            s.config["Labels"][*k] = (*v).into();
        }
        s
    }

    /// A running container of the fake engine with `labels`.
    fn running(engine: &FakeEngine, name: &str, labels: &[(&str, &str)]) {
        let labels: serde_json::Map<String, serde_json::Value> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let body = serde_json::json!({"Image": "shop/web:1", "Labels": labels});
        engine.create_container(name, &body).unwrap();
        engine.start_container(name).unwrap();
    }

    #[test]
    fn labels_declare_a_hook_with_its_user_timeout_and_failure_policy() {
        let s = labelled_spec(&[
            (
                "dev.freezer.hook.before-freeze",
                "wp maintenance-mode activate",
            ),
            (LABEL_HOOK_USER, "www-data"),
            (LABEL_HOOK_TIMEOUT, "90s"),
            (LABEL_HOOK_ON_ERROR, "continue"),
        ]);
        let hooks = container_hooks(&[s], When::BeforeFreeze).unwrap();
        assert_eq!(hooks.len(), 1);
        let h = &hooks[0];
        assert_eq!(h.command, "wp maintenance-mode activate");
        assert_eq!(h.user.as_deref(), Some("www-data"));
        assert_eq!(h.timeout, Duration::from_secs(90));
        assert!(h.may_fail);
        assert!(container_hooks(&[labelled_spec(&[])], When::BeforeFreeze)
            .unwrap()
            .is_empty());
    }

    #[test]
    fn a_timeout_label_that_is_no_duration_is_named() {
        let s = labelled_spec(&[
            ("dev.freezer.hook.after-thaw", "true"),
            (LABEL_HOOK_TIMEOUT, "soon"),
        ]);
        let err = container_hooks(&[s], When::AfterThaw)
            .err()
            .expect("refused");
        assert!(err.message.contains("shop-web-1"), "{err}");
        assert!(err.message.contains(LABEL_HOOK_TIMEOUT), "{err}");
    }

    #[test]
    fn a_hook_s_exit_code_and_last_output_are_reported() {
        let engine = FakeEngine::with_images(&["shop/web:1"]);
        running(&engine, "web", &[]);
        engine.answer(
            "php artisan migrate",
            3,
            "line one\nSQLSTATE[42S02]: no such table",
        );
        let h = ContainerHook {
            container: "web".into(),
            command: "php artisan migrate".into(),
            user: Some("www-data".into()),
            timeout: Duration::from_secs(5),
            may_fail: false,
        };
        let r = run_in_container(&engine, When::AfterThaw, &h);
        assert!(!r.ok);
        assert_eq!(r.exit_code, Some(3));
        assert!(r.output.ends_with("no such table"), "{r:?}");
        assert!(r.error.is_none());
    }

    #[test]
    fn after_thaw_hooks_run_only_in_running_containers_that_declare_one() {
        let engine = FakeEngine::with_images(&["shop/web:1"]);
        running(
            &engine,
            "web",
            &[("dev.freezer.hook.after-thaw", "wp cache flush")],
        );
        running(&engine, "db", &[]);
        let states = vec![
            ("web".to_string(), "running".to_string()),
            ("db".to_string(), "running".to_string()),
            ("job".to_string(), "exited".to_string()),
        ];
        let ran = after_thaw_in_containers(
            &engine,
            &states,
            Duration::from_secs(1),
            &crate::progress::Progress::default(),
        );
        assert_eq!(ran.len(), 1);
        assert!(ran[0].ok && ran[0].place == "web", "{ran:?}");
        assert_eq!(engine.calls("exec "), ["exec web sh -c wp cache flush"]);
    }

    #[test]
    fn an_after_thaw_hook_waits_for_health_and_gives_up_when_it_never_comes() {
        let engine = FakeEngine::with_images(&["shop/web:1"]);
        engine.health_on_start("web", "unhealthy");
        running(&engine, "web", &[("dev.freezer.hook.after-thaw", "true")]);
        let states = vec![("web".to_string(), "running".to_string())];
        let ran = after_thaw_in_containers(
            &engine,
            &states,
            Duration::from_millis(300),
            &crate::progress::Progress::default(),
        );
        assert!(!ran[0].ok);
        let why = ran[0].error.as_deref().unwrap_or("");
        assert!(why.contains("not running and healthy"), "{why}");
        assert!(engine.calls("exec ").is_empty());
    }
}
