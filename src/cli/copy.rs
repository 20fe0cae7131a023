//! `freezer copy`.

use super::args::{split_target, CopyArgs};
use super::{print_json, Ctx};
use crate::error::Result;
use crate::ops;
use crate::progress::bytes;
use crate::repo::Repository;

pub fn run(ctx: &Ctx, a: CopyArgs) -> Result<i32> {
    let creds = ctx.credentials()?;
    let src = ctx.settings.open_repo(&creds)?;
    let to_creds = crate::settings::target_credentials(
        a.to_identity.as_deref(),
        a.to_passphrase_file.as_deref(),
    )?
    .unwrap_or(creds);
    let dst = Repository::open_with(ctx.settings.other_store(&a.to)?, &to_creds)?;
    let req = ops::CopyRequest {
        targets: a
            .targets
            .iter()
            .map(|t| {
                let (site, snap) = split_target(t);
                (site.to_string(), snap.map(str::to_string))
            })
            .collect(),
        all: a.all,
        lock_wait: a.lock_wait,
    };
    let plan = ops::plan_copy(&src, &dst, &req)?;
    let report = match a.dry_run {
        true => ctx.with_progress(|p| ops::preview_copy(&src, &dst, plan, p))?,
        false => ctx.with_progress(|p| ops::copy(&src, &dst, plan, p))?,
    };
    if ctx.json() {
        print_json(&report);
        return Ok(0);
    }
    let verb = if report.dry_run {
        "would copy"
    } else {
        "copied"
    };
    for s in &report.snapshots {
        match s.status {
            "present" if !ctx.global.quiet => ctx.say(format!(
                "{}:{}  already in {}",
                s.site, s.snapshot, report.to
            )),
            "present" => {}
            _ if ctx.global.quiet && !report.dry_run => {}
            _ => outln!(
                "{}:{}  {verb} {} blobs, {}",
                s.site,
                s.snapshot,
                s.blobs_copied,
                bytes(s.bytes_copied)
            ),
        }
    }
    if !ctx.global.quiet {
        let copied = report
            .snapshots
            .iter()
            .filter(|s| s.status != "present")
            .count();
        ctx.say(format!(
            "{verb} {copied} of {} snapshots to {}: {} blobs ({}) uploaded, {} blobs ({}) already there{}",
            report.snapshots.len(),
            report.to,
            report.blobs_copied,
            bytes(report.bytes_copied),
            report.blobs_present,
            bytes(report.bytes_present),
            if report.encrypted { "; sealed with the target's keys" } else { "" }
        ));
    }
    Ok(0)
}
