//! `freezer prune`: delete the blobs no snapshot references, in two phases.
//!
//! Phase one *marks*: the unreferenced blobs are written to a plan object
//! `prune/<time>-<random>.json`. A later prune *sweeps* every plan older than the grace
//! period: it deletes the blobs of the plan that are still unreferenced and were not
//! written again after the plan (a freeze that uploads the same content again refreshes
//! it). Both run under the prune lock, which no freeze holds at the same time, and
//! everything is decided from a fresh listing of the records. A record that cannot be read
//! stops the prune before anything is deleted: prune never guesses.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::*;
use crate::lock::Lock;
use crate::progress::Progress;
use crate::repo::{PruneMark, Repository, StoredBlobs};

#[derive(Debug, Default, Serialize)]
pub struct PruneReport {
    pub dry_run: bool,
    pub grace_seconds: u64,
    pub snapshots: u64,
    pub blobs: u64,
    pub referenced_blobs: u64,
    pub unreferenced_blobs: u64,
    /// Deleted by this run (sweep of plans older than the grace period).
    pub deleted_blobs: u64,
    pub freed_bytes: u64,
    /// Newly marked by this run; deleted by a prune after the grace period.
    pub marked_blobs: u64,
    /// Marked (by this run or earlier) and not yet deleted.
    pub pending_blobs: u64,
    pub pending_bytes: u64,
    /// Lock objects of finished or dead runs, and staging leftovers, removed.
    pub removed_leftovers: u64,
    /// Run records older than the time they are kept (SPEC.md §15), removed.
    pub removed_runs: u64,
}

/// What a prune will do, decided under the prune lock, which it holds until it is
/// carried out ([`prune`]) or dropped (`--dry-run`): no freeze writes in between.
pub struct PrunePlan {
    _lock: Lock,
    /// Blobs whose grace period is over: deleted.
    delete: Vec<String>,
    /// Marks whose blobs are all dealt with: removed.
    done_marks: Vec<PruneMark>,
    /// Unreferenced blobs in no mark yet: marked now.
    mark: Vec<String>,
    /// Locks of finished or dead runs, and staging leftovers: removed.
    leftovers: Vec<String>,
    /// Run records past their time: removed.
    runs: Vec<crate::repo::RunRef>,
    /// What it will do, in numbers.
    pub report: PruneReport,
}

impl std::fmt::Debug for PrunePlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrunePlan")
            .field("delete", &self.delete.len())
            .field("mark", &self.mark.len())
            .field("leftovers", &self.leftovers)
            .finish()
    }
}

/// Decides a prune from a fresh listing of the records, blobs and marks (SPEC.md §11),
/// and which run records are older than `keep_runs`. Nothing is changed.
pub fn plan_prune(
    repo: &Repository,
    (grace, keep_runs): (Duration, Duration),
    progress: &Progress,
) -> Result<PrunePlan> {
    let lock = crate::lock::acquire(repo, "prune", None, progress)?;
    // The store's clock, not this machine's, decides ages.
    let now = lock.written;
    let mut report = PruneReport {
        dry_run: true,
        grace_seconds: grace.as_secs(),
        ..PruneReport::default()
    };

    progress.set_label("reading snapshots");
    let referenced = referenced_blobs(repo, &mut report)?;
    report.referenced_blobs = referenced.len() as u64;

    progress.set_label("listing blobs");
    let blobs = repo.stored_blobs()?;
    report.blobs = blobs.len() as u64;
    let unreferenced: HashSet<&String> =
        blobs.keys().filter(|h| !referenced.contains(*h)).collect();
    report.unreferenced_blobs = unreferenced.len() as u64;

    let swept = sweep(repo, (&blobs, &unreferenced), (now, grace), &mut report)?;
    let Swept {
        delete,
        done_marks,
        mut pending,
    } = swept;
    // Mark: every unreferenced blob not deleted now and not in a mark still waiting.
    let deleted: HashSet<&String> = delete.iter().collect();
    let mark: Vec<String> = unreferenced
        .iter()
        .filter(|h| !deleted.contains(**h) && !pending.contains(**h))
        .map(|h| (*h).clone())
        .collect();
    report.marked_blobs = mark.len() as u64;
    pending.extend(mark.iter().cloned());
    report.pending_blobs = pending.len() as u64;
    report.pending_bytes = pending
        .iter()
        .filter_map(|h| blobs.get(h).map(|b| b.0))
        .sum();

    let leftovers = crate::lock::leftovers(repo, now)?;
    report.removed_leftovers = leftovers.len() as u64;
    // Run records are named by their runs' clocks, not the store's.
    let runs = super::status::expired_runs(repo, None, keep_runs, crate::sys::now())?;
    report.removed_runs = runs.len() as u64;
    Ok(PrunePlan {
        _lock: lock,
        delete,
        done_marks,
        mark,
        leftovers,
        runs,
        report,
    })
}

/// Carries a prune plan out: deletes the blobs whose grace period is over, writes the
/// new mark, removes the leftovers; then releases the lock.
pub fn prune(repo: &Repository, plan: PrunePlan, progress: &Progress) -> Result<PruneReport> {
    for name in &plan.delete {
        progress.set_label(format!("deleting {}", &name[..name.len().min(12)]));
        repo.delete_blob(name)?;
    }
    // Their blobs are deleted, referenced again, or marked again below.
    for m in &plan.done_marks {
        repo.delete_prune_mark(m)?;
    }
    if !plan.mark.is_empty() {
        repo.write_prune_mark(plan.mark)?;
    }
    for key in &plan.leftovers {
        crate::lock::remove_leftover(repo, key)?;
    }
    for r in &plan.runs {
        repo.delete_run(r)?;
    }
    let mut report = plan.report;
    report.dry_run = false;
    Ok(report)
}

/// What the sweep of the marks decided.
struct Swept {
    delete: Vec<String>,
    done_marks: Vec<PruneMark>,
    /// Blobs of marks still in their grace period.
    pending: HashSet<String>,
}

/// Sweeps the marks older than the grace period: their blobs still unreferenced and not
/// written again since are to be deleted (a freeze that uploads the same content again
/// refreshes a blob; it is marked again, in a fresh mark).
fn sweep(
    repo: &Repository,
    (blobs, unreferenced): (&StoredBlobs, &HashSet<&String>),
    (now, grace): (SystemTime, Duration),
    report: &mut PruneReport,
) -> Result<Swept> {
    let mut swept = Swept {
        delete: vec![],
        done_marks: vec![],
        pending: HashSet::new(),
    };
    let mut deleted: HashSet<String> = HashSet::new();
    for m in repo.prune_marks()? {
        let marked = m.marked.unwrap_or(now);
        let ripe = marked + grace <= now;
        for name in &m.blobs {
            let Some((size, modified)) = blobs.get(name) else {
                continue; // already gone
            };
            if !unreferenced.contains(name) {
                continue; // referenced again: kept, and no longer marked
            }
            let rewritten = modified.is_some_and(|t| t > marked);
            if !ripe {
                swept.pending.insert(name.clone());
            } else if !rewritten && deleted.insert(name.clone()) {
                report.deleted_blobs += 1;
                report.freed_bytes += size;
                swept.delete.push(name.clone());
            }
        }
        if ripe {
            swept.done_marks.push(m);
        }
    }
    Ok(swept)
}

fn referenced_blobs(repo: &Repository, report: &mut PruneReport) -> Result<HashSet<String>> {
    let mut out = HashSet::new();
    for r in repo.list_snapshots(None)? {
        report.snapshots += 1;
        let unreadable = |e: Error| {
            Error::new(
                e.kind,
                format!(
                    "prune stopped before deleting anything: snapshot {}:{} cannot be read: {e}",
                    r.site, r.id
                ),
            )
            .with_hint("run `freezer verify` to see what is damaged; remove the snapshot with `freezer forget` if it is lost")
        };
        let snap = repo.read_snapshot(&r).map_err(unreadable)?;
        for m in &snap.record.manifests {
            // Stored names: in an encrypted repository, keyed names of the digests.
            out.insert(repo.blob_name(&m.digest));
            let manifest: ImageManifest = repo
                .read_blob(&m.digest)
                .and_then(|d| from_json(&d, &m.digest.key()))
                .map_err(unreadable)?;
            let (blobs, err) = crate::format::image_blobs(&manifest);
            if let Some(e) = err {
                return Err(unreadable(e));
            }
            out.extend(blobs.iter().map(|b| repo.blob_name(&b.digest)));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::Kit;

    fn plan(kit: &Kit) -> PrunePlan {
        plan_prune(
            &kit.repo,
            (Duration::ZERO, crate::ops::status::DEFAULT_KEEP_RUNS),
            &Progress::default(),
        )
        .unwrap()
    }

    fn run(kit: &Kit) -> PruneReport {
        prune(&kit.repo, plan(kit), &Progress::default()).unwrap()
    }

    /// Every blob a snapshot names can be read, and matches its digest.
    fn readable(kit: &Kit, snap: &crate::repo::Snapshot) {
        for m in &snap.record.manifests {
            let manifest: ImageManifest =
                from_json(&kit.repo.read_blob(&m.digest).unwrap(), "manifest").unwrap();
            let (blobs, err) = image_blobs(&manifest);
            assert!(err.is_none());
            for b in blobs {
                kit.repo.read_blob(&b.digest).unwrap();
            }
        }
    }

    fn forget(kit: &Kit, snap: &crate::repo::Snapshot) {
        (kit.repo)
            .delete_record(&crate::repo::SnapshotRef {
                site: snap.site.clone(),
                id: snap.id.clone(),
            })
            .unwrap();
    }

    #[test]
    fn unreferenced_blobs_are_marked_then_deleted_after_the_grace_period() {
        let kit = Kit::new(&[]);
        let old = kit.freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "only in a")]));
        let kept = kit.freeze_dir("shop", &kit.dir_with("b", &[("b.txt", "only in b")]));
        forget(&kit, &old);
        let first = run(&kit);
        assert_eq!(first.snapshots, 1);
        assert_eq!(first.deleted_blobs, 0);
        assert!(first.marked_blobs > 0, "{first:?}");
        let second = run(&kit);
        assert_eq!(second.deleted_blobs, first.marked_blobs, "{second:?}");
        assert!(second.freed_bytes > 0);
        assert_eq!(second.unreferenced_blobs, second.deleted_blobs);
        readable(&kit, &kept);
        let third = run(&kit);
        assert_eq!((third.unreferenced_blobs, third.deleted_blobs), (0, 0));
    }

    #[test]
    fn a_blob_referenced_again_before_the_sweep_is_kept() {
        let kit = Kit::new(&[]);
        let dir = kit.dir_with("a", &[("a.txt", "the same bytes")]);
        let old = kit.freeze_dir("shop", &dir);
        forget(&kit, &old);
        assert!(run(&kit).marked_blobs > 0);
        // The same content frozen again names the marked blobs.
        let again = kit.freeze_dir("shop", &dir);
        let r = run(&kit);
        assert_eq!(r.deleted_blobs, 0, "{r:?}");
        readable(&kit, &again);
    }

    #[test]
    fn a_dry_run_decides_and_changes_nothing() {
        let kit = Kit::new(&[]);
        let old = kit.freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "x")]));
        forget(&kit, &old);
        let p = plan(&kit);
        assert!(p.report.dry_run && p.report.marked_blobs > 0);
        drop(p);
        assert!(kit.repo.prune_marks().unwrap().is_empty());
        // Nor does a dry run after the mark delete anything.
        run(&kit);
        let p = plan(&kit);
        assert!(p.report.deleted_blobs > 0);
        let would = p.report.deleted_blobs;
        drop(p);
        assert_eq!(run(&kit).deleted_blobs, would);
    }

    #[test]
    fn a_freeze_in_progress_keeps_a_prune_out() {
        let kit = Kit::new(&[]);
        kit.freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "x")]));
        let progress = Progress::default();
        let _freeze = crate::lock::acquire(&kit.repo, "freeze", Some("shop"), &progress).unwrap();
        let err = plan_prune(
            &kit.repo,
            (Duration::ZERO, crate::ops::status::DEFAULT_KEEP_RUNS),
            &progress,
        )
        .expect_err("refused");
        assert_eq!(err.kind, crate::error::ErrorKind::Locked, "{err}");
    }

    #[test]
    fn a_snapshot_that_cannot_be_read_stops_the_prune_before_anything_is_deleted() {
        let kit = Kit::new(&[]);
        let old = kit.freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "x")]));
        let damaged = kit.freeze_dir("shop", &kit.dir_with("b", &[("b.txt", "y")]));
        forget(&kit, &old);
        run(&kit);
        let manifest = kit.repo.blob_name(&damaged.record.manifests[0].digest);
        kit.repo.delete_blob(&manifest).unwrap();
        let before = kit.repo.stored_blobs().unwrap().len();
        let err = plan_prune(
            &kit.repo,
            (Duration::ZERO, crate::ops::status::DEFAULT_KEEP_RUNS),
            &Progress::default(),
        )
        .expect_err("refused");
        assert!(
            err.message
                .contains("prune stopped before deleting anything"),
            "{err}"
        );
        assert_eq!(kit.repo.stored_blobs().unwrap().len(), before);
    }
}
