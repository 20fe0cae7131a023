//! `freezer forget`: remove snapshot records by a retention policy (blobs go with prune).

use serde::Serialize;

use crate::error::{Error, Result};
use crate::repo::{Repository, SnapshotRef};
use crate::retention::Policy;

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    pub site: String,
    pub policy: Policy,
    pub dry_run: bool,
    pub kept: Vec<ForgetEntry>,
    pub removed: Vec<ForgetEntry>,
    /// Run records of the site older than the time they are kept (SPEC.md §15).
    pub removed_runs: usize,
    #[serde(skip)]
    runs: Vec<crate::repo::RunRef>,
}

#[derive(Debug, Serialize)]
pub struct ForgetEntry {
    pub id: String,
    /// The rules that keep it (empty for removed snapshots).
    pub reasons: Vec<&'static str>,
}

/// What a forget will do: the snapshots of `site` that `policy` keeps (with the rules
/// that keep them) and those whose records it removes, and the site's run records older
/// than `keep_runs`. Nothing is changed.
pub fn plan_forget(
    repo: &Repository,
    site: &str,
    policy: &Policy,
    keep_runs: std::time::Duration,
) -> Result<ForgetReport> {
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
        let created = repo.read_snapshot(r)?.created().to_string();
        snapshots.push((r.id.clone(), created));
    }
    let mut plan = ForgetReport {
        site: site.to_string(),
        policy: *policy,
        dry_run: true,
        kept: vec![],
        removed: vec![],
        removed_runs: 0,
        runs: super::status::expired_runs(repo, Some(site), keep_runs, crate::sys::now())?,
    };
    plan.removed_runs = plan.runs.len();
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
    for r in &plan.runs {
        repo.delete_run(r)?;
    }
    plan.dry_run = false;
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::Kit;

    const KEEP: std::time::Duration = crate::ops::status::DEFAULT_KEEP_RUNS;

    #[test]
    fn a_policy_that_keeps_nothing_is_refused() {
        let kit = Kit::new(&[]);
        kit.freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "x")]));
        let err = plan_forget(&kit.repo, "shop", &Policy::default(), KEEP).expect_err("refused");
        assert_eq!(err.kind, crate::error::ErrorKind::Usage, "{err}");
        assert_eq!(kit.repo.list_snapshots(Some("shop")).unwrap().len(), 1);
    }

    #[test]
    fn the_plan_names_what_goes_and_only_carrying_it_out_removes_it() {
        let kit = Kit::new(&[]);
        let dir = kit.dir_with("a", &[("a.txt", "x")]);
        let snaps: Vec<String> = (0..3).map(|_| kit.freeze_dir("shop", &dir).id).collect();
        let policy = Policy {
            last: 1,
            ..Default::default()
        };
        let plan = plan_forget(&kit.repo, "shop", &policy, KEEP).unwrap();
        assert!(plan.dry_run);
        let kept: Vec<&str> = plan.kept.iter().map(|e| e.id.as_str()).collect();
        let removed: Vec<&str> = plan.removed.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(kept, [snaps[2].as_str()]);
        assert_eq!(removed.len(), 2);
        assert_eq!(kit.repo.list_snapshots(Some("shop")).unwrap().len(), 3);
        let report = forget(&kit.repo, plan).unwrap();
        assert!(!report.dry_run);
        let left: Vec<String> = (kit.repo.list_snapshots(Some("shop")).unwrap())
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(left, [snaps[2].clone()]);
    }

    #[test]
    fn a_site_without_snapshots_is_named() {
        let kit = Kit::new(&[]);
        let policy = Policy {
            last: 1,
            ..Default::default()
        };
        let err = plan_forget(&kit.repo, "nope", &policy, KEEP).expect_err("refused");
        assert!(err.message.contains("nope"), "{err}");
    }
}
