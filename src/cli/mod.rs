//! The command line: parsed arguments → resolved settings → one library call → what is
//! printed. [`args`] holds the clap types; each command has a module that resolves its
//! arguments into a request for [`crate::ops`] and renders the report. No decision about
//! snapshots, sites or keys is made here.
//!
//! stdout carries only data (ids, tables, JSON); messages, progress and errors go to
//! stderr. Under `-q` a successful command prints nothing, except what a listing or a
//! `--dry-run` was asked to list.

use std::io::Write;
use std::sync::Arc;

use serde::Serialize;

use crate::error::ErrorKind;
use crate::error::{Error, Result};
use crate::progress::{self, Cancel, Progress};
use crate::repo::Repository;
use crate::settings::Settings;
use crate::store;

/// `println!` that never panics: a closed stdout (`freezer snapshots | head`) must not
/// end a run in the middle of its work; what could not be written is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
    }};
}

/// `writeln!` into a String (which cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {{
        let _ = writeln!($out, $($arg)*);
    }};
}

pub mod args;
mod browse;
mod copy;
mod drill;
mod export;
mod forget;
mod freeze;
mod keys;
mod list;
mod maintain;
mod mount;
mod report;
mod status;
#[cfg(test)]
mod tests;
mod thaw;

use args::{split_host, split_target};
pub use args::{Cli, Command, Global};

/// What every command gets: the global flags and the settings they resolve to.
pub struct Ctx {
    pub global: Global,
    pub settings: Settings,
    /// Set when a signal asks the run to stop; every long operation is given it.
    pub cancel: Cancel,
    /// Pings, metrics and the run's record.
    pub monitor: Arc<crate::monitor::Monitor>,
}

impl Ctx {
    fn json(&self) -> bool {
        self.global.json
    }

    /// A message on stderr, unless `-q`.
    fn say(&self, msg: impl std::fmt::Display) {
        if !self.global.quiet {
            eprintln!("{msg}");
        }
    }

    /// A warning on stderr, even under `-q` (it is something to act on).
    fn warn(&self, msg: impl std::fmt::Display) {
        eprintln!("freezer: warning: {msg}");
    }

    /// Opens the repository; the run's record goes there.
    fn open_repo(&self) -> Result<Repository> {
        let repo = self.settings.open_repo(&self.credentials()?)?;
        self.monitor.runs.opened(&repo);
        Ok(repo)
    }

    /// Adds to the run's record what the command did.
    fn note(&self, note: crate::monitor::RunNote) {
        self.monitor.runs.note(note);
    }

    fn credentials(&self) -> Result<crate::crypto::Credentials> {
        crate::settings::credentials(
            self.global.identity.as_deref(),
            self.global.passphrase_file.as_deref(),
        )
    }

    fn progress_mode(&self) -> progress::Mode {
        progress_mode(&self.global)
    }

    /// Runs `f` with a progress display (a redrawn line on a terminal, JSON events
    /// with `--json`), taken down before anything else is printed.
    fn with_progress<T>(&self, f: impl FnOnce(&Progress) -> Result<T>) -> Result<T> {
        let progress = Arc::new(Progress::with_observer(
            self.cancel.clone(),
            announcer(self.json(), self.global.quiet),
        ));
        let guard = progress::start(progress.clone(), self.progress_mode());
        let result = f(&progress);
        drop(guard);
        result
    }
}

/// Runs a parsed command line to its end; returns the process exit code. The command
/// runs on a thread of its own, so that a signal whose grace period runs out (a call
/// that hangs) ends the run here, where `main` exits, however stuck the command is.
pub fn main(cli: Cli) -> i32 {
    let (done, ended) = std::sync::mpsc::channel();
    let signalled = done.clone();
    let worker = std::thread::Builder::new()
        .name("run".into())
        // As much stack as a main thread has.
        .stack_size(8 << 20)
        .spawn(move || {
            let run = std::panic::AssertUnwindSafe(|| run(cli, signalled));
            // A panic has printed its message; 101 as Rust's own main reports it.
            let _ = done.send(std::panic::catch_unwind(run).unwrap_or(101));
        });
    if let Err(e) = worker {
        eprintln!("freezer: starting the run's thread: {e}");
        return 1;
    }
    ended.recv().unwrap_or(101)
}

/// Prints the completion script for `shell`.
fn completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "freezer", &mut std::io::stdout());
    0
}

/// Writes `freezer.1` and a `freezer-COMMAND.1` per command into `dir`.
fn manpages(dir: &std::path::Path) -> i32 {
    use clap::CommandFactory;
    let written =
        std::fs::create_dir_all(dir).and_then(|()| clap_mangen::generate_to(Cli::command(), dir));
    match written {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("freezer: writing man pages into {}: {e}", dir.display());
            1
        }
    }
}

/// Runs a parsed command line; returns the process exit code. `ended` is where the
/// signal thread says the run is over when it could not wait for it.
fn run(cli: Cli, ended: std::sync::mpsc::Sender<i32>) -> i32 {
    match &cli.command {
        Command::Guard => return crate::docker::guard::run(),
        // From the command line's definition alone: no repository, no monitoring.
        Command::Completions(a) => return completions(a.shell),
        Command::Manpages(a) => return manpages(&a.dir),
        _ => {}
    }
    let json = cli.global.json;
    let (command, site) = describe(&cli.command);
    let monitor = crate::monitor::Monitor {
        ping: cli.global.ping.clone(),
        metrics_file: cli.global.metrics_file.clone(),
        command,
        runs: crate::monitor::RunLog::new(command, site.clone(), recorded(&cli.command)),
        site,
    };
    monitor.start();
    announce_retries(progress_mode(&cli.global));
    // What killed runs left in TMPDIR goes before this run makes its own.
    crate::sys::sweep_temp();
    let started = std::time::Instant::now();
    let monitor = Arc::new(monitor);
    let cancel = Cancel::default();
    let scope = cancel.scope().clone();
    let what = interrupted_what(&cli.command);
    {
        // An interrupted backup must still be reported as a failed one.
        let monitor = monitor.clone();
        let finish = Box::new(move |code| {
            let e = Error::new(ErrorKind::Interrupted, "interrupted by a signal");
            monitor.finish(
                code,
                started.elapsed(),
                format!("freezer {command}: exit {code}: interrupted by a signal"),
                Some(&e),
                true,
            )
        });
        let stop = cancel.clone();
        let stop = Box::new(move || stop.cancel());
        crate::interrupt::install(what, scope.clone(), stop, finish, ended);
    }
    match dispatch(cli, cancel, monitor.clone()) {
        Ok(code) => {
            // A signal that came after the work was done: the run still ended well,
            // unless the signal thread is already ending it.
            if scope.interrupted() && !scope.claim_exit() {
                wait_for_exit();
            }
            monitor.finish(
                code,
                started.elapsed(),
                format!("freezer {command}: exit {code}"),
                None,
                false,
            );
            code
        }
        // Stopped by a signal: whatever the error says, it is the consequence.
        Err(e) if e.kind == ErrorKind::Interrupted || scope.interrupted() => {
            if !scope.finish_interrupted(what) {
                wait_for_exit();
            }
            if e.kind != ErrorKind::Interrupted {
                eprintln!("freezer: {e}");
            }
            let e = match e.kind {
                ErrorKind::Interrupted => e,
                _ => Error::new(
                    ErrorKind::Interrupted,
                    format!("interrupted: {}", e.message),
                ),
            };
            if json {
                report_error(&e, true);
            }
            let code = e.kind.exit_code();
            monitor.finish(
                code,
                started.elapsed(),
                format!("freezer {command}: exit {code}: interrupted by a signal"),
                Some(&e),
                true,
            );
            code
        }
        Err(e) => {
            report_error(&e, json);
            let code = e.kind.exit_code();
            let mut msg = format!("freezer {command}: exit {code}: {e}");
            if let Some(h) = &e.hint {
                msg.push_str(&format!("\nhint: {h}"));
            }
            monitor.finish(code, started.elapsed(), msg, Some(&e), false);
            code
        }
    }
}

/// The signal thread is ending the run (exit 130, with its own report): wait for it
/// (`main` returns its code).
fn wait_for_exit() -> ! {
    loop {
        std::thread::park();
    }
}

/// What an interrupted run says it was doing ("interrupted during freeze").
fn interrupted_what(command: &Command) -> &'static str {
    match command {
        Command::Freeze(_) => "freeze",
        Command::Thaw(_) => "thaw",
        Command::Drill(_) => "drill",
        Command::Verify(_) => "verify",
        Command::Export(_) => "export",
        Command::Copy(_) => "copy",
        Command::Mount(_) => "mount",
        Command::Prune(_) => "prune",
        _ => "the command",
    }
}

fn dispatch(cli: Cli, cancel: Cancel, monitor: Arc<crate::monitor::Monitor>) -> Result<i32> {
    let g = &cli.global;
    let settings = Settings::load(g.config.as_deref(), g.repo.as_deref(), g.retry_for)?;
    if let Ok(url) = settings.repo_url() {
        // What names the repository on this machine, for records that wait for it (not
        // the endpoint: a store that moves keeps its records).
        let name = match url {
            crate::store::StoreUrl::Local(p) => format!("{:?}", p.canonicalize().unwrap_or(p)),
            s3 => format!("{s3:?}"),
        };
        monitor.runs.set_repository_url(&name);
    }
    let ctx = Ctx {
        global: cli.global,
        settings,
        cancel,
        monitor,
    };
    match cli.command {
        // Handled in `run` before anything else starts.
        Command::Guard => Ok(crate::docker::guard::run()),
        Command::Completions(a) => Ok(completions(a.shell)),
        Command::Manpages(a) => Ok(manpages(&a.dir)),
        Command::Init(a) => keys::init(&ctx, a),
        Command::Key(a) => keys::key(&ctx, a),
        Command::Freeze(a) => freeze::run(&ctx, a),
        Command::Thaw(a) => thaw::run(&ctx, a),
        Command::Drill(a) => drill::run(&ctx, a),
        Command::Ls(a) => browse::ls(&ctx, a),
        Command::Diff(a) => browse::diff(&ctx, a),
        Command::Cat(a) => browse::cat(&ctx, a),
        Command::Snapshots(a) => list::snapshots(&ctx, a),
        Command::Sites(a) => list::sites(&ctx, a),
        Command::Status(a) => status::status(&ctx, a),
        Command::Report(a) => status::report(&ctx, a),
        Command::Forget(a) => forget::run(&ctx, a),
        Command::Verify(a) => maintain::verify(&ctx, a),
        Command::Prune(a) => maintain::prune(&ctx, a),
        Command::Export(a) => export::run(&ctx, a),
        Command::Copy(a) => copy::run(&ctx, a),
        Command::Mount(a) => mount::run(&ctx, a),
    }
}

/// Whether a run of the command keeps a record in the repository (SPEC.md §15): the
/// commands that change a site's backups or prove them, unless they only preview.
fn recorded(c: &Command) -> bool {
    match c {
        Command::Freeze(a) => !a.dry_run,
        Command::Thaw(a) => !a.dry_run,
        Command::Forget(a) => !a.dry_run,
        Command::Prune(a) => !a.dry_run,
        Command::Copy(a) => !a.dry_run,
        Command::Drill(_) | Command::Verify(_) => true,
        _ => false,
    }
}

/// The command's name and the site it works on (empty for repository-wide commands),
/// for pings and metrics.
fn describe(c: &Command) -> (&'static str, String) {
    let site_of = |t: &str| split_target(split_host(t).0).0.to_string();
    match c {
        Command::Guard => ("guard", String::new()),
        Command::Completions(_) => ("completions", String::new()),
        Command::Manpages(_) => ("manpages", String::new()),
        Command::Init(_) => ("init", String::new()),
        Command::Key(_) => ("key", String::new()),
        Command::Freeze(a) => ("freeze", site_of(&a.site)),
        Command::Thaw(a) => ("thaw", site_of(&a.target)),
        Command::Drill(a) => ("drill", site_of(&a.target)),
        Command::Ls(a) => ("ls", site_of(&a.target)),
        Command::Diff(a) => ("diff", site_of(&a.from)),
        Command::Cat(a) => ("cat", site_of(&a.target)),
        Command::Snapshots(a) => ("snapshots", a.site.clone().unwrap_or_default()),
        Command::Sites(_) => ("sites", String::new()),
        Command::Status(_) => ("status", String::new()),
        Command::Report(_) => ("report", String::new()),
        Command::Forget(a) => ("forget", a.site.clone()),
        Command::Verify(a) => (
            "verify",
            a.target.as_deref().map(site_of).unwrap_or_default(),
        ),
        Command::Prune(_) => ("prune", String::new()),
        Command::Export(a) => ("export", site_of(&a.target)),
        Command::Mount(_) => ("mount", String::new()),
        Command::Copy(a) => (
            "copy",
            match a.targets.as_slice() {
                [one] => site_of(one),
                _ => String::new(),
            },
        ),
    }
}

pub fn report_error(e: &Error, json: bool) {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            kind: String,
            exit_code: i32,
            message: String,
            hint: Option<&'a str>,
        }
        let out = Out {
            error: Inner {
                kind: e.kind.name(),
                exit_code: e.kind.exit_code(),
                message: e.to_string(),
                hint: e.hint.as_deref(),
            },
        };
        print_json(&out);
    }
    eprintln!("freezer: error: {e}");
    if let Some(h) = &e.hint {
        eprintln!("hint: {h}");
    }
}

/// The command's result: one JSON line, always the last line on stdout (progress events
/// may come before it). Every result carries the run's store retries (SPEC.md §9).
fn print_json<T: Serialize>(v: &T) {
    let mut value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        let retries = store::retry::log().summary();
        map.insert(
            "store_retries".into(),
            serde_json::to_value(retries).unwrap_or_default(),
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &value);
    let _ = writeln!(out);
}

/// Failed store requests that are being retried: a line on stderr, or a JSON event.
fn announce_retries(mode: progress::Mode) {
    match mode {
        progress::Mode::Off => {}
        progress::Mode::Human => store::retry::announce_with(Box::new(|request, cause| {
            eprintln!("freezer: store: {request}: {cause}; retrying");
        })),
        progress::Mode::Json => store::retry::announce_with(Box::new(|request, cause| {
            let event = serde_json::json!({"event": "retry", "request": request, "cause": cause});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{event}");
        })),
    }
}

fn progress_mode(g: &Global) -> progress::Mode {
    if g.json {
        progress::Mode::Json
    } else if g.quiet {
        progress::Mode::Off
    } else {
        progress::Mode::Human
    }
}

/// How announced events (hooks) are shown as they happen: a JSON event line on stdout,
/// or a line on stderr (under `-q` only when a hook failed).
fn announcer(json: bool, quiet: bool) -> progress::Observer {
    Box::new(move |kind, details| {
        if json {
            let mut event = serde_json::json!({ "event": kind });
            if let (Some(e), Some(d)) = (event.as_object_mut(), details.as_object()) {
                e.extend(d.clone());
            }
            outln!("{event}");
            return;
        }
        if kind != "hook" {
            return;
        }
        let ok = details["ok"].as_bool() == Some(true);
        if quiet && ok {
            return;
        }
        let how = match (&details["exit_code"], &details["error"]) {
            (_, serde_json::Value::String(e)) => e.clone(),
            (c, _) => format!("exit {c}"),
        };
        eprintln!(
            "freezer: hook {} on {} ({}): {how} in {:.1}s{}",
            details["hook"].as_str().unwrap_or(""),
            details["where"].as_str().unwrap_or(""),
            details["command"].as_str().unwrap_or(""),
            details["seconds"].as_f64().unwrap_or(0.0),
            match details["output"].as_str().map(str::trim) {
                Some(o) if !o.is_empty() =>
                    format!("; output ends: {}", o.lines().last().unwrap_or("")),
                _ => String::new(),
            }
        );
    })
}

/// `--jobs`, else the number of CPUs.
fn jobs(flag: Option<usize>) -> usize {
    flag.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
}
