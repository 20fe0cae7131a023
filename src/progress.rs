//! Progress and messages on stderr.
//!
//! On a terminal: one line redrawn a few times a second with bytes, rate and ETA.
//! Otherwise (cron, CI, pipes): no progress line at all, only the plain messages and the
//! final summary, so logs stay readable.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::interrupt::Scope;

/// A run's cancel token: set once, when a signal asks the run to stop; the long
/// operations look at it between steps (a file, a chunk, a blob) and stop with an
/// `Interrupted` error, which unwinds through their guards (staging removed, locks
/// released, a held site resumed).
///
/// It also carries the run's [`Scope`]: what a signal that ends the run before it has
/// unwound must still put back, remove or report.
#[derive(Clone, Default)]
pub struct Cancel(Arc<AtomicBool>, Arc<Scope>);

impl Cancel {
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Where the run registers what an interruption must undo.
    pub fn scope(&self) -> &Arc<Scope> {
        &self.1
    }

    /// An `Interrupted` error once the run was asked to stop; `what` names the step.
    pub fn check(&self, what: impl FnOnce() -> String) -> crate::error::Result<()> {
        if self.is_cancelled() {
            return Err(crate::error::Error::interrupted(what()));
        }
        Ok(())
    }
}

/// What a long operation reports to (bytes done, a label) and the cancel token it obeys:
/// the one handle every long operation is given.
#[derive(Default)]
pub struct Progress {
    pub total: AtomicU64,
    pub done: AtomicU64,
    label: Mutex<String>,
    stop: AtomicBool,
    drawn: AtomicBool,
    cancel: Cancel,
    /// Told of events a long operation announces as they happen (a hook ran).
    observer: Option<Observer>,
}

/// Receives `(kind, details)` of an announced event.
pub type Observer = Box<dyn Fn(&str, &serde_json::Value) + Send + Sync>;

impl Progress {
    /// A progress handle whose operations stop when `cancel` is set.
    pub fn with_cancel(cancel: Cancel) -> Progress {
        Progress {
            cancel,
            ..Default::default()
        }
    }

    /// The same, with an observer for announced events.
    pub fn with_observer(cancel: Cancel, observer: Observer) -> Progress {
        Progress {
            cancel,
            observer: Some(observer),
            ..Default::default()
        }
    }

    /// Announces an event (`kind`, e.g. `hook`) to the observer, if there is one.
    pub fn announce(&self, kind: &str, details: &impl serde::Serialize) {
        if let Some(o) = &self.observer {
            o(kind, &serde_json::to_value(details).unwrap_or_default());
        }
    }

    pub fn cancel(&self) -> &Cancel {
        &self.cancel
    }

    /// An `Interrupted` error once the run was asked to stop; `what` names the step.
    pub fn check(&self, what: impl FnOnce() -> String) -> crate::error::Result<()> {
        self.cancel.check(what)
    }

    pub fn set_label(&self, label: impl Into<String>) {
        *self.label.lock().unwrap() = label.into();
    }
    pub fn add_total(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
    }
    pub fn add_done(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
    }
}

/// Starts the redraw thread when stderr is a terminal; stops and clears the line on drop.
pub struct ProgressGuard {
    progress: Arc<Progress>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A redrawn line on stderr when it is a terminal, else nothing.
    Human,
    /// `--json`: a JSON line on stdout every [`JSON_EVERY`] (SPEC.md §9).
    Json,
    /// `-q`: nothing.
    Off,
}

pub const JSON_EVERY: Duration = Duration::from_secs(2);

pub fn start(progress: Arc<Progress>, mode: Mode) -> ProgressGuard {
    let tty = mode == Mode::Human && std::io::stderr().is_terminal();
    let p = progress.clone();
    let thread = if tty {
        Some(std::thread::spawn(move || {
            let start = Instant::now();
            while !p.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(200));
                let line = render(&p, start.elapsed());
                eprint!("\r\x1b[2K{line}");
                let _ = std::io::stderr().flush();
                p.drawn.store(true, Ordering::Relaxed);
            }
        }))
    } else if mode == Mode::Json {
        // One event at once (so every run shows the shape), then one every JSON_EVERY.
        let start = Instant::now();
        json_event(&p, Duration::ZERO);
        Some(std::thread::spawn(move || {
            let mut next = JSON_EVERY;
            while !p.stop.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(100));
                let elapsed = start.elapsed();
                if elapsed >= next {
                    next += JSON_EVERY;
                    json_event(&p, elapsed);
                }
            }
        }))
    } else {
        None
    };
    ProgressGuard { progress, thread }
}

fn json_event(p: &Progress, elapsed: Duration) {
    let event = serde_json::json!({
        "event": "progress",
        "label": p.label.lock().unwrap().clone(),
        "done_bytes": p.done.load(Ordering::Relaxed),
        "total_bytes": p.total.load(Ordering::Relaxed),
        "seconds": elapsed.as_secs_f64(),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{event}");
    let _ = out.flush();
}

impl Drop for ProgressGuard {
    fn drop(&mut self) {
        self.progress.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            // The thread parks between updates; waking it ends the run without a wait.
            t.thread().unpark();
            let _ = t.join();
            if self.progress.drawn.load(Ordering::Relaxed) {
                eprint!("\r\x1b[2K");
            }
        }
    }
}

fn render(p: &Progress, elapsed: Duration) -> String {
    let done = p.done.load(Ordering::Relaxed);
    let total = p.total.load(Ordering::Relaxed);
    let secs = elapsed.as_secs_f64().max(0.001);
    let rate = done as f64 / secs;
    let label = p.label.lock().unwrap().clone();
    let mut line = format!("{label} {}", bytes(done));
    if total > 0 {
        line += &format!(
            " / {} ({:.0}%)",
            bytes(total),
            100.0 * done as f64 / total as f64
        );
    }
    line += &format!(", {}/s", bytes(rate as u64));
    if total > done && rate > 0.0 {
        line += &format!(", ETA {}s", ((total - done) as f64 / rate).ceil() as u64);
    }
    line
}

/// Human durations, to the two largest units: `45s`, `12m`, `3h20m`, `2d4h`.
pub fn duration(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => match s % 3600 / 60 {
            0 => format!("{}h", s / 3600),
            m => format!("{}h{m:02}m", s / 3600),
        },
        _ => match s % 86_400 / 3600 {
            0 => format!("{}d", s / 86_400),
            h => format!("{}d{h}h", s / 86_400),
        },
    }
}

/// Human byte counts: `512 B`, `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
