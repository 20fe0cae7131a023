//! `freezer forget`: remove snapshot records by a retention policy (blobs go with prune).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::*;
use crate::repo::{Repository, SnapshotRef};
use crate::retention::Policy;

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    pub site: String,
    pub policy: Policy,
    pub dry_run: bool,
    pub kept: Vec<ForgetEntry>,
    pub removed: Vec<ForgetEntry>,
}

#[derive(Debug, Serialize)]
pub struct ForgetEntry {
    pub id: String,
    /// The rules that keep it (empty for removed snapshots).
    pub reasons: Vec<&'static str>,
}

/// What a forget will do: the snapshots of `site` that `policy` keeps (with the rules
/// that keep them) and those whose records it removes. Nothing is changed.
pub fn plan_forget(repo: &Repository, site: &str, policy: &Policy) -> Result<ForgetReport> {
    if policy.is_empty() {
        return Err(Error::usage(format!(
            "refusing to forget every snapshot of {site}: no --keep-* option was given"
        ))
        .with_hint(
            "say what to keep, e.g. --keep-last 3 --keep-daily 7 --keep-weekly 5 --keep-monthly 12",
        ));
    }
    let refs = repo.list_snapshots(Some(site))?;
    if refs.is_empty() {
        return Err(repo.no_snapshots_of(site));
    }
    // The creation time (nanoseconds) orders snapshots taken within the same second.
    let mut snapshots = Vec::new();
    for r in &refs {
        let created = repo.read_snapshot(r)?.annotation(A_CREATED).to_string();
        snapshots.push((r.id.clone(), created));
    }
    let mut plan = ForgetReport {
        site: site.to_string(),
        policy: *policy,
        dry_run: true,
        kept: vec![],
        removed: vec![],
    };
    for (id, reasons) in crate::retention::apply(policy, &snapshots) {
        match reasons.is_empty() {
            true => plan.removed.push(ForgetEntry { id, reasons }),
            false => plan.kept.push(ForgetEntry { id, reasons }),
        }
    }
    Ok(plan)
}

/// Removes the records a forget plan names (SPEC.md §11). The blobs stay until `prune`,
/// so a forget is cheap and a mistaken one is undone by writing the record back.
pub fn forget(repo: &Repository, mut plan: ForgetReport) -> Result<ForgetReport> {
    for e in &plan.removed {
        repo.delete_record(&SnapshotRef {
            site: plan.site.clone(),
            id: e.id.clone(),
        })?;
    }
    plan.dry_run = false;
    Ok(plan)
}
