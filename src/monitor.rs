//! Telling the outside world how a run went, for unattended use: a healthchecks-style
//! ping URL (`--ping`), a Prometheus textfile (`--metrics-file`), and a run record in the
//! repository itself (SPEC.md §15; [`RunLog`]). None can fail the run: a ping that does
//! not get through, a metrics file that cannot be written or a record that cannot be
//! stored is a warning on stderr (the record then waits on this machine for the next run).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::format::{rfc3339, RunBytes, RunDrill, RunError, RunRecord, RUN_FORMAT};
use crate::repo::Repository;

pub struct Monitor {
    pub ping: Option<String>,
    pub metrics_file: Option<PathBuf>,
    pub command: &'static str,
    pub site: String,
    /// The run's record for the repository.
    pub runs: RunLog,
}

impl Monitor {
    /// Pings `URL/start`.
    pub fn start(&self) {
        if let Some(url) = &self.ping {
            ping(
                &format!("{}/start", url.trim_end_matches('/')),
                String::new(),
            );
        }
    }

    /// Pings `URL` (success) or `URL/fail` with a message, updates the metrics file and
    /// writes the run record (`error`: why it failed). `local`: the process is about to
    /// exit (a signal): the record is kept on this machine for the next run to store.
    pub fn finish(
        &self,
        exit_code: i32,
        duration: Duration,
        message: String,
        error: Option<&crate::error::Error>,
        local: bool,
    ) {
        // Read before the record takes what the command noted.
        let uploaded = self.runs.uploaded();
        self.runs.finish(exit_code, error, local);
        if let Some(url) = &self.ping {
            let url = url.trim_end_matches('/');
            if exit_code == 0 {
                ping(url, message);
            } else {
                ping(&format!("{url}/fail"), message);
            }
        }
        if let Some(path) = &self.metrics_file {
            if let Err(e) = self.write_metrics(path, exit_code, duration, uploaded) {
                eprintln!(
                    "freezer: warning: could not write metrics to {}: {e}",
                    path.display()
                );
            }
        }
    }

    /// Rewrites the textfile with this run's samples, keeping every other sample (other
    /// sites and commands, and the last success time when this run failed).
    fn write_metrics(
        &self,
        path: &Path,
        exit_code: i32,
        duration: Duration,
        uploaded: Option<u64>,
    ) -> std::io::Result<()> {
        let mut samples = read_samples(path);
        let labels = format!(
            "command=\"{}\",site=\"{}\"",
            self.command,
            self.site.replace('\\', "\\\\").replace('"', "\\\"")
        );
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let mut set = |name: &str, v: f64| {
            samples.insert((name.to_string(), labels.clone()), format!("{v}"));
        };
        set("freezer_last_run_timestamp_seconds", now);
        set("freezer_last_exit_code", f64::from(exit_code));
        set("freezer_last_duration_seconds", duration.as_secs_f64());
        if exit_code == 0 {
            set("freezer_last_success_timestamp_seconds", now);
            if let Some(bytes) = uploaded {
                set("freezer_last_bytes_uploaded", bytes as f64);
            }
        }
        let mut out = String::new();
        let mut last_name = String::new();
        for ((name, labels), value) in &samples {
            if *name != last_name {
                out.push_str(&format!(
                    "# HELP {name} {}\n# TYPE {name} gauge\n",
                    help(name)
                ));
                last_name = name.clone();
            }
            out.push_str(&format!("{name}{{{labels}}} {value}\n"));
        }
        // Atomically, so the collector never reads half a file.
        let tmp = path.with_extension("prom.tmp");
        std::fs::write(&tmp, out)?;
        std::fs::rename(&tmp, path)
    }
}

fn help(name: &str) -> &'static str {
    match name {
        "freezer_last_run_timestamp_seconds" => {
            "When the last run of this command for this site ended."
        }
        "freezer_last_success_timestamp_seconds" => "When the last successful run ended.",
        "freezer_last_exit_code" => {
            "Exit code of the last run (0 success; see freezer's documentation)."
        }
        "freezer_last_duration_seconds" => "How long the last run took.",
        "freezer_last_bytes_uploaded" => "Bytes the last successful freeze uploaded.",
        _ => "freezer metric.",
    }
}

/// The samples of an existing textfile: (name, labels) -> value. Comments are dropped
/// (they are regenerated); lines that do not parse are dropped too.
fn read_samples(path: &Path) -> BTreeMap<(String, String), String> {
    let mut m = BTreeMap::new();
    let Ok(text) = std::fs::read_to_string(path) else {
        return m;
    };
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (Some(open), Some(close)) = (line.find('{'), line.rfind('}')) else {
            continue;
        };
        if close < open {
            continue;
        }
        let value = line[close + 1..].trim();
        if value.is_empty() {
            continue;
        }
        m.insert(
            (line[..open].to_string(), line[open + 1..close].to_string()),
            value.to_string(),
        );
    }
    m
}

/// POSTs `body` to `url`, with a 10 s timeout. Failures are warnings.
fn ping(url: &str, body: String) {
    let result = (|| -> Result<(), String> {
        let rt = crate::sys::runtime().map_err(|e| e.to_string())?;
        rt.block_on(async {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| e.to_string())?;
            let resp = client
                .post(url)
                .body(body)
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if !resp.status().is_success() {
                return Err(format!("HTTP {}", resp.status()));
            }
            Ok(())
        })
    })();
    if let Err(e) = result {
        eprintln!("freezer: warning: ping {} failed: {e}", redact_url(url));
    }
}

/// Ping URLs carry a secret token in their path: print only scheme and host.
fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}/…", rest.split('/').next().unwrap_or("")),
        None => "the ping URL".into(),
    }
}

/// The record of one run (SPEC.md §15). Commands add what they did ([`RunLog::note`]);
/// [`Monitor::finish`] writes it into the repository the run opened, together with the
/// records earlier runs could not store. A record that cannot be stored now (the store
/// is down, the run is ending on a signal, the repository never opened) is kept in
/// `STATE_DIR/runs/<repository>/`, and the next run that reaches the repository stores
/// it: a failed night leaves its trace even when the failure was the store's.
pub struct RunLog {
    command: &'static str,
    site: String,
    /// Whether this run keeps a record at all (not a dry run, not a reading command).
    recorded: bool,
    started: SystemTime,
    state: Mutex<LogState>,
}

#[derive(Default)]
struct LogState {
    repo: Option<Repository>,
    /// Where records wait for the repository (per repository URL).
    outbox: Option<PathBuf>,
    snapshot: Option<String>,
    mode: Option<String>,
    bytes: RunBytes,
    drill: Option<RunDrill>,
    warnings: u64,
    error: Option<RunError>,
}

/// What a command says it did, for its run record.
#[derive(Default)]
pub struct RunNote {
    pub snapshot: Option<String>,
    pub mode: Option<String>,
    pub bytes: RunBytes,
    pub drill: Option<RunDrill>,
    pub warnings: u64,
    /// Why it failed, when it ends with a failing exit status but no error (a drill
    /// whose checks failed, a verify that found damage).
    pub error: Option<RunError>,
}

impl RunLog {
    pub fn new(command: &'static str, site: String, recorded: bool) -> RunLog {
        RunLog {
            command,
            site,
            recorded,
            started: crate::sys::now(),
            state: Mutex::default(),
        }
    }

    /// The repository at `url` is the run's: records wait for it under a name of its
    /// URL when they cannot be stored.
    pub fn set_repository_url(&self, url: &str) {
        use sha2::Digest as _;
        let id = hex::encode(&sha2::Sha256::digest(url.as_bytes())[..8]);
        self.state.lock().unwrap().outbox = Some(crate::sys::state_dir().join("runs").join(id));
    }

    /// The run opened its repository: its record goes there.
    pub fn opened(&self, repo: &Repository) {
        let mut st = self.state.lock().unwrap();
        if st.repo.is_none() {
            st.repo = Some(repo.handle());
        }
    }

    /// What a freeze uploaded, once it noted its snapshot (for the metrics).
    fn uploaded(&self) -> Option<u64> {
        let st = self.state.lock().unwrap();
        (self.command == "freeze" && st.snapshot.is_some()).then_some(st.bytes.added)
    }

    /// Adds what the command did.
    pub fn note(&self, note: RunNote) {
        let mut st = self.state.lock().unwrap();
        st.snapshot = note.snapshot.or(st.snapshot.take());
        st.mode = note.mode.or(st.mode.take());
        if !note.bytes.is_empty() {
            st.bytes = note.bytes;
        }
        st.drill = note.drill.or(st.drill.take());
        st.warnings += note.warnings;
        st.error = note.error.or(st.error.take());
    }

    fn finish(&self, exit: i32, error: Option<&crate::error::Error>, local: bool) {
        // A site name the repository cannot hold (the usage error said so) has no record.
        let invalid = !self.site.is_empty() && crate::repo::check_site_name(&self.site).is_err();
        if !self.recorded || invalid {
            return;
        }
        let mut st = self.state.lock().unwrap();
        let ended = crate::sys::now();
        let run = RunRecord {
            format: RUN_FORMAT,
            site: self.site.clone(),
            command: self.command.to_string(),
            host: crate::sys::hostname(),
            started: rfc3339(self.started),
            ended: rfc3339(ended),
            exit,
            error: match error {
                Some(e) => Some(RunError {
                    kind: e.kind.name(),
                    message: e.message.clone(),
                    hint: e.hint.clone(),
                }),
                None => st.error.take().filter(|_| exit != 0),
            },
            snapshot: st.snapshot.take(),
            mode: st.mode.take(),
            bytes: std::mem::take(&mut st.bytes),
            drill: st.drill.take(),
            warnings: st.warnings,
        };
        let name = Repository::run_name(&run, ended);
        let outbox = st.outbox.clone();
        // A run whose store stopped answering does not wait on it again.
        let store_down = st.repo.as_ref().is_some_and(Repository::store_failing);
        let repo = st.repo.take().filter(|_| !local && !store_down);
        let Some(repo) = repo else {
            let unreachable = error.is_some_and(|e| e.kind == crate::error::ErrorKind::Unreachable);
            keep(outbox.as_deref(), &name, &run, store_down || unreachable);
            return;
        };
        // The command's output is complete: retries of these writes are not announced
        // (a `--json` run's last line stays its result).
        crate::store::retry::hush();
        // Those that waited first, oldest first; each is removed here once stored.
        if let Some(dir) = &outbox {
            for (path, waiting) in waiting_runs(dir) {
                let file = path.file_name().unwrap_or_default().to_string_lossy();
                if repo.put_run(&waiting, &file).is_ok() {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        if let Err(e) = repo.put_run(&run, &name) {
            eprintln!("freezer: warning: could not store this run's record: {e}");
            keep(outbox.as_deref(), &name, &run, true);
        }
    }
}

/// Keeps a record on this machine until a run can store it (`say`: tell where).
fn keep(outbox: Option<&Path>, name: &str, run: &RunRecord, say: bool) {
    let Some(dir) = outbox else {
        return;
    };
    let written = std::fs::create_dir_all(dir).and_then(|()| {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, crate::format::to_json(run))?;
        std::fs::rename(&tmp, dir.join(name))
    });
    match written {
        Ok(()) if say => eprintln!(
            "freezer: this run's record is kept in {} until a run reaches the repository",
            dir.display()
        ),
        Ok(()) => {}
        Err(e) => eprintln!(
            "freezer: warning: could not keep this run's record in {}: {e}",
            dir.display()
        ),
    }
}

/// The records waiting in `dir`, by name (oldest first); unreadable files are left.
fn waiting_runs(dir: &Path) -> Vec<(PathBuf, RunRecord)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.retain(|p| p.extension().is_some_and(|x| x == "json"));
    files.sort();
    files
        .into_iter()
        .filter_map(|p| {
            let run = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
            Some((p, run))
        })
        .collect()
}
