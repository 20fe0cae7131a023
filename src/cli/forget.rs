//! `freezer forget`.

use super::args::ForgetArgs;
use super::{print_json, Ctx};
use crate::error::Result;
use crate::ops;
use crate::retention::Policy;

pub fn run(ctx: &Ctx, a: ForgetArgs) -> Result<i32> {
    let repo = ctx.open_repo()?;
    let policy = Policy {
        last: a.keep_last,
        daily: a.keep_daily,
        weekly: a.keep_weekly,
        monthly: a.keep_monthly,
    };
    let plan = ops::plan_forget(&repo, &a.site, &policy, ctx.settings.keep_runs()?)?;
    let report = match a.dry_run {
        true => plan,
        false => ops::forget(&repo, plan)?,
    };
    if ctx.json() {
        print_json(&report);
        return Ok(0);
    }
    let site = &a.site;
    let would = if a.dry_run { "would remove" } else { "remove" };
    for k in &report.kept {
        ctx.say(format!(
            "keep   {site}:{}  ({})",
            k.id,
            k.reasons.join(", ")
        ));
    }
    for r in &report.removed {
        ctx.say(format!("{would} {site}:{}", r.id));
    }
    ctx.say(format!(
        "{} {} snapshots of {site}, kept {}{}",
        if a.dry_run { "would remove" } else { "removed" },
        report.removed.len(),
        report.kept.len(),
        if report.removed.is_empty() || a.dry_run {
            ""
        } else {
            "; `freezer prune` frees the data only they used"
        }
    ));
    Ok(0)
}
