//! Telling the outside world how a run went, for unattended use: a healthchecks-style
//! ping URL (`--ping`) and a Prometheus textfile (`--metrics-file`). Neither can fail the
//! run: a ping that does not get through, or a metrics file that cannot be written, is a
//! warning on stderr.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

static BYTES_UPLOADED: AtomicU64 = AtomicU64::new(u64::MAX);

/// Records what a freeze uploaded, for the metrics.
pub fn note_bytes_uploaded(n: u64) {
    BYTES_UPLOADED.store(n, Ordering::Relaxed);
}

pub struct Monitor {
    pub ping: Option<String>,
    pub metrics_file: Option<PathBuf>,
    pub command: &'static str,
    pub site: String,
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

    /// Pings `URL` (success) or `URL/fail` with a message, and updates the metrics file.
    pub fn finish(&self, exit_code: i32, duration: Duration, message: String) {
        if let Some(url) = &self.ping {
            let url = url.trim_end_matches('/');
            if exit_code == 0 {
                ping(url, message);
            } else {
                ping(&format!("{url}/fail"), message);
            }
        }
        if let Some(path) = &self.metrics_file {
            if let Err(e) = self.write_metrics(path, exit_code, duration) {
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
            let bytes = BYTES_UPLOADED.load(Ordering::Relaxed);
            if bytes != u64::MAX {
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
