//! Fault injection for the tests that kill or stall a run at a known point (SPEC.md §9's
//! crash promises are tested this way). Compiled in only with the `fault-injection`
//! feature, which `scripts/test` turns on; a build without it (every release build) has
//! no hook at all: every function here is an empty inline one, and the variables below
//! appear nowhere in the binary.
//!
//! | point                        | variable                             | effect            |
//! |------------------------------|--------------------------------------|-------------------|
//! | [`Abort::AfterUploads`]      | `FREEZER_FAULT_ABORT_AFTER_UPLOADS=N` | abort after the N-th blob upload |
//! | [`Abort::AfterChunks`]       | `FREEZER_FAULT_ABORT_AFTER_CHUNKS=N`  | abort after N database chunks are loaded |
//! | [`Abort::BeforeMark`]        | `FREEZER_FAULT_ABORT_BEFORE_MARK=N`   | abort once the N-th index or object statement of a load ran, before its progress mark |
//! | [`Abort::InMultipart`]       | `FREEZER_FAULT_ABORT_IN_MULTIPART=1`  | abort once a multipart upload's first part is sent |
//! | [`Pause::HoldWindow`]        | `FREEZER_FAULT_HOLD_WINDOW_MS=MS`     | sleep while a Docker site is held still |
//! | [`Pause::ThawCreated`]       | `FREEZER_FAULT_THAW_CREATED_MS=MS`    | sleep once a thaw has created its containers |
//! | [`sql_after_snapshot`]       | `FREEZER_FAULT_SQL_AFTER_SNAPSHOT=SQL` | run SQL from another session after the dump's snapshot |

/// Points where a test can make the process abort, the way `kill -9` or a power cut would.
#[derive(Debug, Clone, Copy)]
pub enum Abort {
    AfterUploads,
    AfterChunks,
    BeforeMark,
    InMultipart,
}

/// Points where a test can make the run wait, to interrupt it there.
#[derive(Debug, Clone, Copy)]
pub enum Pause {
    HoldWindow,
    ThawCreated,
}

#[cfg(feature = "fault-injection")]
mod hooks {
    use super::{Abort, Pause};

    fn var(name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }

    pub fn armed(point: Abort) -> Option<u64> {
        let name = match point {
            Abort::AfterUploads => "FREEZER_FAULT_ABORT_AFTER_UPLOADS",
            Abort::AfterChunks => "FREEZER_FAULT_ABORT_AFTER_CHUNKS",
            Abort::BeforeMark => "FREEZER_FAULT_ABORT_BEFORE_MARK",
            Abort::InMultipart => "FREEZER_FAULT_ABORT_IN_MULTIPART",
        };
        var(name).and_then(|v| v.parse().ok())
    }

    pub fn pause(point: Pause, cancel: &crate::progress::Cancel) {
        let name = match point {
            Pause::HoldWindow => "FREEZER_FAULT_HOLD_WINDOW_MS",
            Pause::ThawCreated => "FREEZER_FAULT_THAW_CREATED_MS",
        };
        if let Some(ms) = var(name).and_then(|v| v.parse::<u64>().ok()) {
            let until = std::time::Instant::now() + std::time::Duration::from_millis(ms);
            while std::time::Instant::now() < until && !cancel.is_cancelled() {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    pub fn sql_after_snapshot() -> Option<String> {
        var("FREEZER_FAULT_SQL_AFTER_SNAPSHOT")
    }
}

#[cfg(not(feature = "fault-injection"))]
mod hooks {
    use super::{Abort, Pause};

    #[inline(always)]
    pub fn armed(_: Abort) -> Option<u64> {
        None
    }

    #[inline(always)]
    pub fn pause(_: Pause, _: &crate::progress::Cancel) {}

    #[inline(always)]
    pub fn sql_after_snapshot() -> Option<String> {
        None
    }
}

/// The count an abort point is armed with (1 for a point without a count), if a test
/// armed it.
pub fn armed(point: Abort) -> Option<u64> {
    hooks::armed(point)
}

/// Aborts the process if `point` is armed with `n`.
pub fn abort_at(point: Abort, n: u64) {
    if armed(point) == Some(n) {
        let at = match point {
            Abort::AfterUploads => format!("after {n} uploads"),
            Abort::AfterChunks => format!("after {n} chunks"),
            Abort::BeforeMark => format!("after statement {n}, before its progress mark"),
            Abort::InMultipart => "in the middle of a multipart upload".into(),
        };
        eprintln!("freezer: fault injection: aborting {at}");
        std::process::abort();
    }
}

/// Waits as long as a test asked at `point`, or until the run is cancelled; returns at
/// once otherwise.
pub fn pause(point: Pause, cancel: &crate::progress::Cancel) {
    hooks::pause(point, cancel)
}

/// A statement a test wants run from another session once a dump's snapshot is taken,
/// as a deploy's migration would.
pub fn sql_after_snapshot() -> Option<String> {
    hooks::sql_after_snapshot()
}
