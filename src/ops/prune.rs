//! `freezer prune`: delete the blobs no snapshot references, in two phases.
//!
//! Phase one *marks*: the unreferenced blobs are written to a plan object
//! `prune/<time>-<random>.json`. A later prune *sweeps* every plan older than the grace
//! period: it deletes the blobs of the plan that are still unreferenced and were not
//! written again after the plan (a freeze that uploads the same content again refreshes
//! it). Both run under the prune lock, which no freeze holds at the same time, and
//! everything is decided from a fresh listing of the records. A record that cannot be read
//! stops the prune before anything is deleted: prune never guesses.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::format::*;
use crate::lock::{LockInfo, LOCKS_PREFIX, STALE};
use crate::progress::Progress;
use crate::repo::Repository;

pub const PRUNE_PREFIX: &str = "prune/";
const BLOBS_PREFIX: &str = "blobs/sha256/";

#[derive(Debug, Serialize, Deserialize)]
struct Plan {
    format: u32,
    /// Hex digests of the marked blobs.
    blobs: Vec<String>,
}

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
}

pub fn prune(
    repo: &Repository,
    grace: Duration,
    dry_run: bool,
    progress: &Progress,
) -> Result<PruneReport> {
    let lock = crate::lock::acquire(repo, "prune", None, progress)?;
    // The store's clock, not this machine's, decides ages.
    let now = lock.written;
    let store = repo.store();
    let mut report = PruneReport {
        dry_run,
        grace_seconds: grace.as_secs(),
        ..PruneReport::default()
    };

    progress.set_label("reading snapshots");
    let referenced = referenced_blobs(repo, &mut report)?;
    report.referenced_blobs = referenced.len() as u64;

    progress.set_label("listing blobs");
    let blobs: Blobs = store
        .list(BLOBS_PREFIX)?
        .into_iter()
        .filter_map(|o| {
            let hex = o.key.strip_prefix(BLOBS_PREFIX)?.to_string();
            Some((hex, (o.size, o.modified)))
        })
        .collect();
    report.blobs = blobs.len() as u64;
    let unreferenced: HashSet<&String> =
        blobs.keys().filter(|h| !referenced.contains(*h)).collect();
    report.unreferenced_blobs = unreferenced.len() as u64;

    let (mut pending, deleted) = sweep(
        store,
        (&blobs, &unreferenced),
        (now, grace, dry_run),
        progress,
        &mut report,
    )?;
    // Mark: every unreferenced blob not deleted now and not in a plan still waiting.
    let fresh: Vec<String> = unreferenced
        .iter()
        .filter(|h| !deleted.contains(**h) && !pending.contains(**h))
        .map(|h| (*h).clone())
        .collect();
    report.marked_blobs = fresh.len() as u64;
    if !fresh.is_empty() && !dry_run {
        let mut rand = [0u8; 4];
        rand::Rng::fill(&mut rand::thread_rng(), &mut rand);
        let key = format!(
            "{PRUNE_PREFIX}{}-{}.json",
            compact_time(SystemTime::now()),
            hex::encode(rand)
        );
        let mut sorted = fresh.clone();
        sorted.sort();
        store.put(
            &key,
            &to_json(&Plan {
                format: 1,
                blobs: sorted,
            }),
        )?;
    }
    pending.extend(fresh);
    report.pending_blobs = pending.len() as u64;
    report.pending_bytes = pending
        .iter()
        .filter_map(|h| blobs.get(h).map(|b| b.0))
        .sum();

    remove_leftovers(store, now, dry_run, &mut report)?;
    drop(lock);
    Ok(report)
}

/// Blobs a prune found, by hex digest: (size, last modified).
type Blobs = HashMap<String, (u64, Option<SystemTime>)>;

/// Sweeps the prune plans older than the grace period: their blobs still unreferenced
/// and not rewritten since are deleted. Returns the blobs of plans still waiting, and
/// those deleted.
fn sweep(
    store: &dyn crate::store::Store,
    (blobs, unreferenced): (&Blobs, &HashSet<&String>),
    (now, grace, dry_run): (SystemTime, Duration, bool),
    progress: &Progress,
    report: &mut PruneReport,
) -> Result<(HashSet<String>, HashSet<String>)> {
    let mut pending: HashSet<String> = HashSet::new();
    let mut deleted: HashSet<String> = HashSet::new();
    for p in store.list(PRUNE_PREFIX)? {
        let plan: Plan = from_json(&store.get(&p.key)?, &p.key)?;
        let marked = p.modified.unwrap_or(now);
        let ripe = marked + grace <= now;
        for hex in plan.blobs {
            let Some((size, modified)) = blobs.get(&hex) else {
                continue; // already gone
            };
            if !unreferenced.contains(&hex) {
                continue; // referenced again: kept, and no longer marked
            }
            let rewritten = modified.is_some_and(|m| m > marked);
            if !ripe {
                pending.insert(hex);
            } else if !rewritten {
                if !dry_run {
                    progress.set_label(format!("deleting {}", &hex[..12]));
                    store.delete(&format!("{BLOBS_PREFIX}{hex}"))?;
                }
                report.deleted_blobs += 1;
                report.freed_bytes += size;
                deleted.insert(hex);
            }
            // A ripe plan's rewritten blob is marked again below, in a fresh plan.
        }
        if ripe && !dry_run {
            // Its blobs are deleted, referenced again, or re-marked below.
            store.delete(&p.key)?;
        }
    }

    Ok((pending, deleted))
}

/// Removes released or dead locks, and staging files of runs that died (local store).
fn remove_leftovers(
    store: &dyn crate::store::Store,
    now: SystemTime,
    dry_run: bool,
    report: &mut PruneReport,
) -> Result<()> {
    for o in store.list(LOCKS_PREFIX)? {
        let stale = o.modified.is_some_and(|m| m + STALE < now);
        let info = store
            .get(&o.key)
            .ok()
            .and_then(|d| serde_json::from_slice::<LockInfo>(&d).ok());
        let released = info
            .as_ref()
            .is_some_and(|l| l.released || l.is_dead_here());
        if stale || released {
            if !dry_run {
                store.delete(&o.key)?;
            }
            report.removed_leftovers += 1;
        }
    }
    for o in store.list("tmp/")? {
        if o.modified.is_some_and(|m| m + STALE < now) {
            if !dry_run {
                store.delete(&o.key)?;
            }
            report.removed_leftovers += 1;
        }
    }
    Ok(())
}

/// Every blob any snapshot references: manifests, configs, layers, tree indexes.
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
