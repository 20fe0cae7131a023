//! `freezer copy`: snapshots into a second repository, the off-site copy of 3-2-1.
//!
//! A copy is a freeze whose source is another repository: under the target's lock for
//! the site, every blob a snapshot references is read from the source (checked against
//! its digest, and opened when the source is encrypted), written to the target unless it
//! is there already (sealed with the target's keys when the target is encrypted), and the
//! record goes last, byte for byte, under the same name. So a copy killed at any point
//! leaves no snapshot visible in the target, a re-run uploads only what is still missing,
//! and a snapshot the target already has costs one request.

use std::collections::HashSet;
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::{Repository, SnapshotRef};

/// Blobs up to this size are copied in memory; larger ones are staged in a spool file.
const SMALL_BLOB: u64 = 4 << 20;
/// Blobs copied side by side: enough to hide a store's latency, few enough that the
/// spooled copies of large layers stay small.
const WORKERS: usize = 4;

/// What to copy.
#[derive(Debug, Clone, Default)]
pub struct CopyRequest {
    /// `SITE` (all its snapshots) or `SITE:SNAPSHOT` (one; `latest` for the newest).
    pub targets: Vec<(String, Option<String>)>,
    /// Every snapshot of every site.
    pub all: bool,
    /// How long to wait for a prune of the target to finish.
    pub lock_wait: Duration,
}

/// What a copy will do: the snapshots it names, grouped by site (each site's copied
/// under the target's lock for it). Carried out by [`copy`], or counted without writing
/// by [`preview_copy`] (`--dry-run`). What the target lacks is decided as each snapshot
/// is copied, under its site's lock: the target may change until then.
#[derive(Debug)]
pub struct CopyPlan {
    pub sites: Vec<(String, Vec<SnapshotRef>)>,
    lock_wait: Duration,
}

#[derive(Debug, Default, Serialize)]
pub struct CopyReport {
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    /// The target seals what it stores with keys of its own.
    pub encrypted: bool,
    pub snapshots: Vec<CopiedSnapshot>,
    /// Blobs written to the target (with `--dry-run`: that would be).
    pub blobs_copied: u64,
    pub bytes_copied: u64,
    /// Blobs the target already had.
    pub blobs_present: u64,
    pub bytes_present: u64,
}

#[derive(Debug, Serialize)]
pub struct CopiedSnapshot {
    pub site: String,
    pub snapshot: String,
    /// `copied`, `present` (the target had it), or with `--dry-run` `missing`.
    pub status: &'static str,
    pub blobs_copied: u64,
    pub bytes_copied: u64,
}

/// The snapshots a request names, oldest first per site, each once.
pub fn select(src: &Repository, req: &CopyRequest) -> Result<Vec<SnapshotRef>> {
    let mut out: Vec<SnapshotRef> = Vec::new();
    if req.all {
        out = src.list_snapshots(None)?;
    }
    for (site, snap) in &req.targets {
        let found = match snap {
            Some(s) => {
                let snap = src.find_snapshot(site, Some(s))?;
                vec![SnapshotRef {
                    site: snap.site,
                    id: snap.id,
                }]
            }
            None => src.list_snapshots(Some(site))?,
        };
        if found.is_empty() {
            return Err(src.no_snapshots_of(site));
        }
        out.extend(found);
    }
    if out.is_empty() && !req.all {
        return Err(Error::usage(
            "name what to copy: SITE, SITE:SNAPSHOT, or --all",
        ));
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Refuses copies that would lose a promise the source makes.
fn check_pair(src: &Repository, dst: &Repository) -> Result<()> {
    if src.config.id == dst.config.id {
        return Err(Error::usage(format!(
            "{} and {} are the same repository",
            src.location(),
            dst.location()
        ))
        .with_hint("--to names the repository to copy into"));
    }
    if src.is_encrypted() && !dst.is_encrypted() {
        return Err(Error::usage(format!(
            "refusing to copy from the encrypted repository {} into {}, which is not encrypted: the snapshots would be stored there in plaintext",
            src.location(),
            dst.location()
        ))
        .with_hint(format!(
            "create an encrypted target with: freezer init --encrypt --repo {}  (or, to get plaintext on purpose, use freezer export)",
            dst.location()
        )));
    }
    Ok(())
}

/// Plans a copy from `src` into `dst`: refuses a pair that would lose a promise of the
/// source, and names the snapshots.
pub fn plan_copy(src: &Repository, dst: &Repository, req: &CopyRequest) -> Result<CopyPlan> {
    check_pair(src, dst)?;
    let mut sites: Vec<(String, Vec<SnapshotRef>)> = Vec::new();
    for r in select(src, req)? {
        match sites.last_mut() {
            Some((site, list)) if *site == r.site => list.push(r),
            _ => sites.push((r.site.clone(), vec![r])),
        }
    }
    Ok(CopyPlan {
        sites,
        lock_wait: req.lock_wait,
    })
}

/// Copies what `plan` names: each site under the target's lock for it.
pub fn copy(
    src: &Repository,
    dst: &Repository,
    plan: CopyPlan,
    progress: &Progress,
) -> Result<CopyReport> {
    run(src, dst, plan, true, progress)
}

/// What [`copy`] would copy of `plan`, counted; the target is not written to.
pub fn preview_copy(
    src: &Repository,
    dst: &Repository,
    plan: CopyPlan,
    progress: &Progress,
) -> Result<CopyReport> {
    run(src, dst, plan, false, progress)
}

fn run(
    src: &Repository,
    dst: &Repository,
    plan: CopyPlan,
    write: bool,
    progress: &Progress,
) -> Result<CopyReport> {
    let mut report = CopyReport {
        from: src.location(),
        to: dst.location(),
        dry_run: !write,
        encrypted: dst.is_encrypted(),
        ..Default::default()
    };
    // Blobs this run has seen in the target (copied or present), across snapshots.
    let mut done: HashSet<Digest> = HashSet::new();
    for (site, list) in &plan.sites {
        // As for a freeze: no prune of the target and no other write of this site while
        // blobs are in the target that no record references yet.
        let _lock = match write {
            false => None,
            true => Some(crate::lock::acquire_waiting(
                dst,
                "copy",
                Some(site),
                plan.lock_wait,
                progress,
            )?),
        };
        for r in list {
            let one = copy_snapshot(src, dst, r, write, &mut done, progress)?;
            report.blobs_copied += one.blobs_copied;
            report.bytes_copied += one.bytes_copied;
            report.snapshots.push(one);
        }
    }
    report.blobs_present = dst.stats.blobs_reused.load(Ordering::Relaxed);
    report.bytes_present = dst.stats.bytes_reused.load(Ordering::Relaxed);
    Ok(report)
}

fn copy_snapshot(
    src: &Repository,
    dst: &Repository,
    r: &SnapshotRef,
    write: bool,
    done: &mut HashSet<Digest>,
    progress: &Progress,
) -> Result<CopiedSnapshot> {
    let name = format!("{}:{}", r.site, r.id);
    progress.check(|| format!("copying {name}"))?;
    let mut out = CopiedSnapshot {
        site: r.site.clone(),
        snapshot: r.id.clone(),
        status: "present",
        blobs_copied: 0,
        bytes_copied: 0,
    };
    if dst.has_record(r)? {
        return Ok(out);
    }
    progress.set_label(format!("copying {name}"));
    let record_bytes = src.read_record(r)?;
    let record: ImageIndex = from_json(&record_bytes, &src.record_key(r))?;

    // Every blob but the image manifests first, then the manifests: nothing in the
    // target names a blob that is not there yet.
    let mut manifests: Vec<(Descriptor, Vec<u8>)> = Vec::new();
    let mut blobs: Vec<Descriptor> = Vec::new();
    for m in &record.manifests {
        let data = src.read_blob(&m.digest)?;
        let manifest: ImageManifest = from_json(&data, &m.digest.key())?;
        let (refs, err) = image_blobs(&manifest);
        if let Some(e) = err {
            return Err(e);
        }
        blobs.extend(refs.into_iter().filter(|b| done.insert(b.digest.clone())));
        if done.insert(m.digest.clone()) {
            manifests.push((m.clone(), data));
        }
    }
    // What the target lacks (one HEAD each; in parallel, as they cost a round trip).
    let present = parallel(&blobs, progress, |b| dst.has_blob(b))?;
    let mut missing: Vec<&Descriptor> = Vec::new();
    for (b, present) in blobs.iter().zip(present) {
        match present {
            true => dst.count_reused(b.size),
            false => missing.push(b),
        }
    }
    out.blobs_copied = missing.len() as u64;
    out.bytes_copied = missing.iter().map(|b| b.size).sum();
    if !write {
        for (m, _) in &manifests {
            if !dst.has_blob(m)? {
                out.blobs_copied += 1;
                out.bytes_copied += m.size;
            }
        }
        out.status = "missing";
        return Ok(out);
    }
    progress.add_total(out.bytes_copied);
    parallel(&missing, progress, |b| copy_blob(src, dst, b, progress))?;
    for (m, data) in &manifests {
        let before = dst.stats.blobs_uploaded.load(Ordering::Relaxed);
        dst.put_blob(data)?;
        if dst.stats.blobs_uploaded.load(Ordering::Relaxed) > before {
            out.blobs_copied += 1;
            out.bytes_copied += m.size;
        }
    }
    progress.check(|| format!("copying {name}"))?;
    dst.put_record(r, &record_bytes)?;
    out.status = "copied";
    Ok(out)
}

/// Runs `f` on every item, [`WORKERS`] at a time; the first error stops the others
/// before their next item and is returned.
fn parallel<'a, T: Sync, R: Send>(
    items: &'a [T],
    progress: &Progress,
    f: impl Fn(&'a T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed: Mutex<Option<Error>> = Mutex::new(None);
    let results: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(items.len()) {
            s.spawn(|| loop {
                if failed.lock().unwrap().is_some() || progress.cancel().is_cancelled() {
                    return;
                }
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { return };
                match f(item) {
                    Ok(r) => results.lock().unwrap().push((i, r)),
                    Err(e) => {
                        failed.lock().unwrap().get_or_insert(e);
                        return;
                    }
                }
            });
        }
    });
    if let Some(e) = failed.into_inner().unwrap() {
        return Err(e);
    }
    progress.check(|| "copying".into())?;
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|(i, _)| *i);
    Ok(results.into_iter().map(|(_, r)| r).collect())
}

/// Copies one blob the target lacks: read from the source and checked against its digest
/// to the last byte before the target is given it.
fn copy_blob(
    src: &Repository,
    dst: &Repository,
    b: &Descriptor,
    progress: &Progress,
) -> Result<()> {
    if b.size <= SMALL_BLOB {
        let data = src.read_blob(&b.digest)?;
        dst.put_blob(&data)?;
        progress.add_done(b.size);
        return Ok(());
    }
    let mut w = dst.blob_writer_for(&b.digest)?;
    let mut r = src.open_blob(&b.digest)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        progress.check(|| format!("copying {}", b.digest.key()))?;
        // A digest mismatch surfaces here, at the end of the stream.
        let n = r
            .read(&mut buf)
            .ctx(|| format!("reading {} from {}", r.name, src.location()))?;
        if n == 0 {
            break;
        }
        w.write_all(&buf[..n])
            .ctx(|| format!("staging {}", b.digest.key()))?;
        progress.add_done(n as u64);
    }
    // The reader checks the digest at the end of the stream, before this.
    dst.put_written(w)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::Kit;

    fn request() -> CopyRequest {
        CopyRequest {
            targets: vec![("shop".into(), None)],
            all: false,
            lock_wait: Duration::ZERO,
        }
    }

    fn copy_all(src: &Kit, dst: &Kit) -> CopyReport {
        let plan = plan_copy(&src.repo, &dst.repo, &request()).unwrap();
        copy(&src.repo, &dst.repo, plan, &Progress::default()).unwrap()
    }

    #[test]
    fn a_copy_holds_the_same_snapshots_and_a_second_one_copies_nothing() {
        let src = Kit::new(&[]);
        let dir = src.dir_with("site", &[("a.txt", "x"), ("b.bin", &"y".repeat(5 << 20))]);
        let snap = src.freeze_dir("shop", &dir);
        let dst = Kit::new(&[]);
        let r = copy_all(&src, &dst);
        assert_eq!(r.snapshots.len(), 1);
        assert_eq!(r.snapshots[0].status, "copied");
        assert!(r.blobs_copied >= 3, "{r:?}");
        let copied = dst.repo.find_snapshot("shop", Some(&snap.id)).unwrap();
        assert_eq!(copied.record, snap.record);
        let r = copy_all(&src, &dst);
        assert_eq!(r.snapshots[0].status, "present");
        assert_eq!(r.blobs_copied, 0);
    }

    #[test]
    fn a_dry_run_counts_what_it_would_copy_and_writes_nothing() {
        let src = Kit::new(&[]);
        src.freeze_dir("shop", &src.dir_with("site", &[("a.txt", "x")]));
        let dst = Kit::new(&[]);
        let plan = plan_copy(&src.repo, &dst.repo, &request()).unwrap();
        let r = preview_copy(&src.repo, &dst.repo, plan, &Progress::default()).unwrap();
        assert_eq!(r.snapshots[0].status, "missing");
        assert!(r.blobs_copied >= 3);
        assert!(dst.repo.list_snapshots(None).unwrap().is_empty());
        assert!(dst.repo.stored_blobs().unwrap().is_empty());
    }
}
