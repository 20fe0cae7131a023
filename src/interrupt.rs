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

/// Starts a thread that waits for SIGINT or SIGTERM, cleans up and exits.
pub fn install(what: &'static str) {
    std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(async {
            use tokio::signal::unix::{signal, SignalKind};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
        // Most urgent first: a paused site is down until it is resumed.
        for (_, f) in CLEANUPS.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            f();
        }
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
        eprintln!("\nfreezer: interrupted during {what}");
        let partial: Vec<String> = PARTIAL.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for p in &partial {
            eprintln!("freezer: {p}");
        }
        match what {
            "thaw" if !partial.is_empty() => eprintln!("freezer: the directories were not changed; unfinished restores were removed"),
            "thaw" => eprintln!("freezer: the destinations were not changed; unfinished restores were removed"),
            "freeze" => eprintln!("freezer: no snapshot was recorded; the next freeze reuses what was already uploaded"),
            _ => {}
        }
        if let Some(finish) = FINISH.get() {
            finish(EXIT_INTERRUPTED);
        }
        std::process::exit(EXIT_INTERRUPTED);
    });
}
