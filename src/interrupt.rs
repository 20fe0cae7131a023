//! Ctrl-C and SIGTERM (cron timeouts, `systemctl stop`): stop cleanly and say what state
//! things are in. A freeze that is interrupted has written no snapshot record, so there is
//! nothing to undo; a thaw removes its unfinished staging directories, so destinations
//! stay exactly as they were.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// What releases a held lock (writes it released); run when a signal ends the run.
pub type Release = Box<dyn Fn() + Send>;

/// Actions that put things back (resume a paused site), run first on interruption.
pub type Cleanup = Box<dyn Fn() + Send>;

/// What the run does last when a signal ends it (the failure ping and metrics).
pub type Finish = Box<dyn Fn(i32) + Send + Sync>;

/// Exit code for a run ended by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// How long the signal thread waits for the run to stop at its next checkpoint before it
/// cleans up and ends the run on its own (a request that hangs, a long statement).
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What one run must put back, remove or report if a signal ends it before it has
/// unwound: a held site to resume, staging directories, locks, partly loaded databases.
/// It travels in the run's [`crate::progress::Cancel`] token, so whatever is given the
/// run's progress registers here; every registration is a [`Registered`] guard, and
/// dropping the guard (the work finished, or was undone normally) takes it back.
#[derive(Default)]
pub struct Scope {
    /// A signal arrived: errors after that are consequences of the cleanup.
    interrupted: AtomicBool,
    /// Set by whoever ends an interrupted run: the main thread once it has unwound, or
    /// the signal thread when it could not wait any longer. The other stays quiet.
    exiting: AtomicBool,
    entries: Mutex<Entries>,
}

#[derive(Default)]
struct Entries {
    next: u64,
    /// (path, whole tree?): staging directories are removed whole, the parent
    /// directories a thaw created only when empty.
    staging: Vec<(u64, PathBuf, bool)>,
    /// What is being changed that cannot be rolled back (a database being loaded).
    partial: Vec<(u64, String)>,
    locks: Vec<(u64, Release)>,
    cleanups: Vec<(u64, Cleanup)>,
}

impl Entries {
    fn forget(&mut self, id: u64) {
        self.staging.retain(|(i, _, _)| *i != id);
        self.partial.retain(|(i, _)| *i != id);
        self.locks.retain(|(i, _)| *i != id);
        self.cleanups.retain(|(i, _)| *i != id);
    }
}

/// One registration in a [`Scope`]; dropping it takes it back.
#[must_use = "dropping it at once takes the registration back"]
pub struct Registered {
    scope: Arc<Scope>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.scope.entries().forget(self.id);
    }
}

impl Scope {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn register(self: &Arc<Self>, add: impl FnOnce(&mut Entries, u64)) -> Registered {
        let mut e = self.entries();
        let id = e.next;
        e.next += 1;
        add(&mut e, id);
        Registered {
            scope: self.clone(),
            id,
        }
    }

    /// An action to run at once if the run is interrupted (resume a held site).
    pub fn on_interrupt(self: &Arc<Self>, f: Cleanup) -> Registered {
        self.register(|e, id| e.cleanups.push((id, f)))
    }

    /// A directory to remove, with its contents, if the run is interrupted.
    pub fn staging(self: &Arc<Self>, path: PathBuf) -> Registered {
        self.register(|e, id| e.staging.push((id, path, true)))
    }

    /// A directory to remove if the run is interrupted while it is still empty.
    pub fn created_dir(self: &Arc<Self>, path: PathBuf) -> Registered {
        self.register(|e, id| e.staging.push((id, path, false)))
    }

    /// A target an interruption leaves partly written, with what to do.
    pub fn partial(self: &Arc<Self>, what: String) -> Registered {
        self.register(|e, id| e.partial.push((id, what)))
    }

    /// A held lock, released by `release` if the run is interrupted.
    pub fn lock(self: &Arc<Self>, release: Release) -> Registered {
        self.register(|e, id| e.locks.push((id, release)))
    }

    /// True once a signal arrived: errors after that are consequences of the cleanup.
    pub fn interrupted(&self) -> bool {
        self.interrupted.load(Ordering::SeqCst)
    }

    /// Ends an interrupted run from the main thread, once it has unwound: removes what
    /// is still registered (normally nothing: the guards did) and says what state things
    /// are in. False when the signal thread is already ending the run.
    pub fn finish_interrupted(&self, what: &str) -> bool {
        if self.exiting.swap(true, Ordering::SeqCst) {
            return false;
        }
        self.remove_registered();
        self.report(what);
        true
    }

    /// Claims the end of a run that completed although a signal came late: the signal
    /// thread must not end it. False when the signal thread is already doing so.
    pub fn claim_exit(&self) -> bool {
        !self.exiting.swap(true, Ordering::SeqCst)
    }

    /// Staging directories and locks still registered: removed and released.
    fn remove_registered(&self) {
        let dirs: Vec<(PathBuf, bool)> = (self.entries().staging.iter())
            .map(|(_, p, w)| (p.clone(), *w))
            .collect();
        // Newest first: staging directories before the parents created for them.
        for (d, whole) in dirs.iter().rev() {
            if !whole {
                let _ = std::fs::remove_dir(d);
                continue;
            }
            // Writers may still be adding files for a moment: try a few times.
            for _ in 0..5 {
                if std::fs::remove_dir_all(d).is_ok() || !d.exists() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
        for (_, release) in self.entries().locks.iter() {
            release();
        }
    }

    /// What an interrupted run tells its user on stderr.
    fn report(&self, what: &str) {
        eprintln!("freezer: interrupted during {what}");
        let partial: Vec<String> = self
            .entries()
            .partial
            .iter()
            .map(|(_, p)| p.clone())
            .collect();
        for p in &partial {
            eprintln!("freezer: {p}");
        }
        match what {
            "thaw" if !partial.is_empty() => {
                eprintln!(
                    "freezer: the directories were not changed; unfinished restores were removed"
                )
            }
            "thaw" => eprintln!(
                "freezer: the destinations were not changed; unfinished restores were removed"
            ),
            "freeze" => eprintln!(
            "freezer: no snapshot was recorded; the next freeze reuses what was already uploaded"
        ),
            _ => {}
        }
    }
}

/// Starts a thread that waits for SIGINT or SIGTERM. The first one marks the run
/// interrupted, cancels it, runs the urgent cleanups (a held site is resumed at once),
/// and gives the run [`GRACE`] to stop at a checkpoint and unwind through its guards;
/// the main thread then reports with [`Scope::finish_interrupted`]. A second signal, or
/// the end of the grace period, removes what is still registered, reports, runs
/// `finish`, and sends the exit code on `ended`: whoever waits there ends the process.
pub fn install(
    what: &str,
    scope: Arc<Scope>,
    cancel: Box<dyn Fn() + Send>,
    finish: Finish,
    ended: std::sync::mpsc::Sender<i32>,
) {
    let what = what.to_string();
    std::thread::spawn(move || {
        // A runtime of its own: waiting for signals must not depend on the run's.
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        let Ok((mut int, mut term)) = rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            Ok::<_, std::io::Error>((
                signal(SignalKind::interrupt())?,
                signal(SignalKind::terminate())?,
            ))
        }) else {
            return;
        };
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        scope.interrupted.store(true, Ordering::SeqCst);
        cancel();
        // Most urgent first: a paused site is down until it is resumed.
        for (_, f) in scope.entries().cleanups.iter() {
            f();
        }
        eprintln!("\nfreezer: stopping {what} (interrupt again to stop at once)");
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
                _ = tokio::time::sleep(GRACE) => {}
            }
        });
        if !scope.claim_exit() {
            // The main thread is ending the run.
            return;
        }
        scope.remove_registered();
        scope.report(&what);
        finish(EXIT_INTERRUPTED);
        let _ = ended.send(EXIT_INTERRUPTED);
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn what_is_still_registered_is_removed_and_released_and_nothing_else() {
        let scope = Arc::new(Scope::default());
        let dir = tempfile::tempdir().unwrap();
        let staging = dir.path().join("staging");
        let installed = dir.path().join("installed");
        let empty_parent = dir.path().join("parent");
        let full_parent = dir.path().join("full");
        for d in [&staging, &installed, &empty_parent, &full_parent] {
            std::fs::create_dir(d).unwrap();
        }
        std::fs::write(staging.join("half-written"), "x").unwrap();
        std::fs::write(full_parent.join("kept"), "x").unwrap();
        let released = Arc::new(AtomicUsize::new(0));
        let r = released.clone();
        let _a = scope.staging(staging.clone());
        let b = scope.staging(installed.clone());
        let _c = scope.created_dir(empty_parent.clone());
        let _d = scope.created_dir(full_parent.clone());
        let _e = scope.lock(Box::new(move || {
            r.fetch_add(1, Ordering::SeqCst);
        }));
        let done = scope.lock(Box::new(|| panic!("a released lock is not released again")));
        // Done normally: taken back.
        drop(b);
        drop(done);
        assert!(scope.finish_interrupted("thaw"));
        assert!(!staging.exists());
        assert!(installed.exists());
        assert!(!empty_parent.exists());
        assert!(full_parent.join("kept").exists());
        assert_eq!(released.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn only_one_of_the_main_thread_and_the_signal_thread_ends_the_run() {
        let scope = Scope::default();
        assert!(scope.claim_exit());
        assert!(!scope.finish_interrupted("freeze"));
        assert!(!scope.claim_exit());
    }

    #[test]
    fn urgent_cleanups_are_taken_back_with_their_guard() {
        let scope = Arc::new(Scope::default());
        let a = scope.on_interrupt(Box::new(|| {}));
        let _b = scope.on_interrupt(Box::new(|| {}));
        assert_eq!(scope.entries().cleanups.len(), 2);
        drop(a);
        assert_eq!(scope.entries().cleanups.len(), 1);
        assert!(!scope.interrupted());
    }
}
