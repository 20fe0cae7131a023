//! Ctrl-C and SIGTERM (cron timeouts, `systemctl stop`): stop cleanly and say what state
//! things are in. A freeze that is interrupted has written no snapshot record, so there is
//! nothing to undo; a thaw removes its unfinished staging directories, so destinations
//! stay exactly as they were.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// (path, whole tree?): staging directories are removed whole, the parent directories a
/// thaw created only when empty.
static STAGING: Mutex<Vec<(PathBuf, bool)>> = Mutex::new(Vec::new());
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// What is being changed that cannot be rolled back (a database being loaded), to be
/// reported if the run is interrupted.
static PARTIAL: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Locks to release on interruption: (store, key, the released lock's bytes).
type HeldLock = (std::sync::Arc<dyn crate::store::Store>, String, Vec<u8>);
static LOCKS: Mutex<Vec<HeldLock>> = Mutex::new(Vec::new());

/// Actions that put things back (resume a paused site), run first on interruption.
type Cleanup = Box<dyn Fn() + Send>;
static CLEANUPS: Mutex<Vec<(u64, Cleanup)>> = Mutex::new(Vec::new());
static NEXT_CLEANUP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What the run does last when a signal ends it (the failure ping and metrics).
type Finish = Box<dyn Fn(i32) + Send + Sync>;
static FINISH: std::sync::OnceLock<Finish> = std::sync::OnceLock::new();

/// Sets what runs last, with the exit code, when a signal ends the run: an interrupted
/// backup must still be reported as a failed one.
pub fn on_exit(f: Finish) {
    let _ = FINISH.set(f);
}

/// Registers an action to run if the run is interrupted; returns its handle.
pub fn on_interrupt(f: Cleanup) -> u64 {
    let id = NEXT_CLEANUP.fetch_add(1, Ordering::SeqCst);
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((id, f));
    id
}

/// Forgets an action registered with [`on_interrupt`] (its work was done normally).
pub fn remove_cleanup(id: u64) {
    CLEANUPS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(i, _)| *i != id);
}

/// Registers a held lock, released if the run is interrupted.
pub fn track_lock(store: std::sync::Arc<dyn crate::store::Store>, key: String, released: Vec<u8>) {
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((store, key, released));
}

pub fn untrack_lock(key: &str) {
    LOCKS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(_, k, _)| k != key);
}

/// Registers a target that an interruption leaves partly written, with what to do.
pub fn note_partial(what: String) {
    PARTIAL.lock().unwrap_or_else(|e| e.into_inner()).push(what);
}

/// Forgets a target (it was completed, or its failure was reported).
pub fn clear_partial(what: &str) {
    PARTIAL
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|p| p != what);
}

/// True once a signal arrived: errors after that are consequences of the cleanup, and the
/// signal thread reports and exits.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Exit code for a run ended by a signal (128 + SIGINT, as shells report it).
pub const EXIT_INTERRUPTED: i32 = 130;

/// Registers a directory to remove, with its contents, if the run is interrupted.
pub fn track(path: PathBuf) {
    STAGING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, true));
}

/// Registers a directory to remove if the run is interrupted while it is still empty.
pub fn track_if_empty(path: PathBuf) {
    STAGING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((path, false));
}

/// Forgets a directory (it was installed or cleaned up normally).
pub fn untrack(path: &std::path::Path) {
    STAGING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|(p, _)| p != path);
}

/// What the run is doing, for the report ("interrupted during freeze").
static WHAT: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
/// Set by whoever ends an interrupted run: the main thread once it has unwound, or the
/// signal thread when it could not wait any longer. The other one then stays quiet.
static EXITING: AtomicBool = AtomicBool::new(false);

/// How long the signal thread waits for the run to stop at its next checkpoint before it
/// cleans up and exits on its own (a request that hangs, a long statement).
const GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Starts a thread that waits for SIGINT or SIGTERM. The first one cancels `cancel`, runs
/// the urgent cleanups (a held site is resumed at once), and gives the run [`GRACE`] to
/// stop at a checkpoint and unwind through its guards; the main thread then reports with
/// [`finish_interrupted`]. A second signal, or the end of the grace period, cleans up
/// what is still tracked and exits 130 from here.
pub fn install(what: &'static str, cancel: crate::progress::Cancel) {
    let _ = WHAT.set(what);
    std::thread::spawn(move || {
        let Ok(rt) = crate::sys::runtime() else {
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
        INTERRUPTED.store(true, Ordering::SeqCst);
        cancel.cancel();
        // Most urgent first: a paused site is down until it is resumed.
        for (_, f) in CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
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
        if EXITING.swap(true, Ordering::SeqCst) {
            // The main thread is ending the run.
            loop {
                std::thread::park();
            }
        }
        remove_tracked();
        report(what);
        if let Some(finish) = FINISH.get() {
            finish(EXIT_INTERRUPTED);
        }
        std::process::exit(EXIT_INTERRUPTED);
    });
}

/// Ends an interrupted run from the main thread, once it has unwound: removes what is
/// still tracked (normally nothing: the guards did) and says what state things are in.
/// False when the signal thread is already ending the run; the caller then waits for it.
pub fn finish_interrupted() -> bool {
    if EXITING.swap(true, Ordering::SeqCst) {
        return false;
    }
    remove_tracked();
    report(WHAT.get().copied().unwrap_or("the command"));
    true
}

/// Claims the end of a run that completed although a signal came late: the signal
/// thread must not exit under it. False when the signal thread is already exiting.
pub fn claim_exit() -> bool {
    !EXITING.swap(true, Ordering::SeqCst)
}

/// Staging directories and locks still registered: removed and released.
fn remove_tracked() {
    let dirs: Vec<(PathBuf, bool)> = STAGING.lock().unwrap_or_else(|e| e.into_inner()).clone();
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
    let locks: Vec<HeldLock> = LOCKS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for (store, key, released) in locks {
        let _ = store.put(&key, &released);
    }
}

/// What an interrupted run tells its user on stderr.
fn report(what: &str) {
    eprintln!("freezer: interrupted during {what}");
    let partial: Vec<String> = PARTIAL.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for p in &partial {
        eprintln!("freezer: {p}");
    }
    match what {
        "thaw" if !partial.is_empty() => {
            eprintln!("freezer: the directories were not changed; unfinished restores were removed")
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
