//! `freezer verify` and `freezer prune`: the repository's upkeep.

use super::args::{split_target, PruneArgs, VerifyArgs};
use super::{print_json, Ctx};
use crate::error::{ErrorKind, Result};
use crate::ops;
use crate::progress::bytes;

pub fn verify(ctx: &Ctx, a: VerifyArgs) -> Result<i32> {
    let (site, snap) = match &a.target {
        Some(t) => {
            let (s, n) = split_target(t);
            (Some(s), n)
        }
        None => (None, None),
    };
    let repo = ctx.open_repo()?;
    let report = ctx.with_progress(|p| ops::verify(&repo, site, snap, p))?;
    if ctx.json() {
        print_json(&report);
    }
    for p in &report.problems {
        eprintln!(
            "freezer: damaged: {} (snapshot {}): {}",
            p.object, p.snapshot, p.error
        );
    }
    if !report.ok {
        ctx.note(crate::monitor::RunNote {
            error: Some(crate::format::RunError {
                kind: ErrorKind::Integrity.name(),
                message: format!(
                    "{} problems in {} snapshots",
                    report.problems.len(),
                    report.snapshots
                ),
                hint: None,
            }),
            ..Default::default()
        });
        eprintln!(
            "freezer: verification failed: {} problems in {} snapshots",
            report.problems.len(),
            report.snapshots
        );
        return Ok(ErrorKind::Integrity.exit_code());
    }
    ctx.say(format!(
        "verified {} snapshots: {} blobs, {}, all intact",
        report.snapshots,
        report.blobs,
        bytes(report.bytes)
    ));
    Ok(0)
}

pub fn prune(ctx: &Ctx, a: PruneArgs) -> Result<i32> {
    let repo = ctx.open_repo()?;
    let report = ctx.with_progress(|p| {
        let plan = ops::prune::plan_prune(&repo, (a.grace, ctx.settings.keep_runs()?), p)?;
        match a.dry_run {
            true => Ok(plan.report),
            false => ops::prune::prune(&repo, plan, p),
        }
    })?;
    ctx.note(crate::monitor::RunNote {
        bytes: crate::format::RunBytes {
            deleted: report.freed_bytes,
            ..Default::default()
        },
        ..Default::default()
    });
    if ctx.json() {
        print_json(&report);
        return Ok(0);
    }
    let would = if a.dry_run { "would be " } else { "" };
    ctx.say(format!(
        "{} snapshots reference {} of {} blobs; {} unreferenced",
        report.snapshots, report.referenced_blobs, report.blobs, report.unreferenced_blobs
    ));
    ctx.say(format!(
        "{would}deleted {} blobs, freeing {}; {} marked now; {} blobs ({}) wait for their grace period",
        report.deleted_blobs,
        bytes(report.freed_bytes),
        report.marked_blobs,
        report.pending_blobs,
        bytes(report.pending_bytes)
    ));
    Ok(0)
}
