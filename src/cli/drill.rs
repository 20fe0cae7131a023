//! `freezer drill`.

use super::args::{split_host, split_target, DrillArgs};
use super::{jobs, print_json, Ctx};
use crate::error::Result;
use crate::ops::{self, drill::DrillOptions, drill::DrillReport};

pub fn run(ctx: &Ctx, a: DrillArgs) -> Result<i32> {
    let (target, host) = split_host(&a.target);
    let (site, snap) = split_target(target);
    let engine = ctx.settings.host(host)?.docker;
    let repo = ctx.open_repo()?;
    let snapshot = repo.find_snapshot(site, snap)?;
    ctx.note(crate::monitor::RunNote {
        snapshot: Some(snapshot.id.clone()),
        ..Default::default()
    });
    let opts = DrillOptions {
        probes: a.probes,
        images: a.images.images,
        env: a.images.env,
        keep: a.keep,
        timeout: a.timeout,
        db_server: a.db,
        jobs: jobs(a.jobs),
        hooks: ctx.settings.site_hooks(site)?,
    };
    let report = ctx.with_progress(|p| ops::drill_site(&repo, snapshot, &engine, &opts, p))?;
    ctx.note(crate::monitor::RunNote {
        drill: Some(crate::format::RunDrill {
            ok: report.ok,
            restore_seconds: report.restore_seconds,
            seconds: report.seconds,
            checks: (report.checks.iter())
                .map(|c| crate::format::RunCheck {
                    name: c.name.clone(),
                    ok: c.ok,
                    detail: c.detail.clone(),
                })
                .collect(),
        }),
        error: match &report.error {
            Some(e) => Some(crate::format::RunError {
                kind: e.kind.clone(),
                message: e.message.clone(),
                hint: e.hint.clone(),
            }),
            None => (!report.ok).then(|| crate::format::RunError {
                kind: crate::error::ErrorKind::Integrity.name(),
                message: (report.checks.iter().filter(|c| !c.ok))
                    .map(|c| format!("{}: {}", c.name, c.detail))
                    .collect::<Vec<_>>()
                    .join("; "),
                hint: None,
            }),
        },
        ..Default::default()
    });
    if ctx.json() {
        print_json(&report);
    } else if !ctx.global.quiet || !report.ok || report.kept {
        show(&report);
    }
    Ok(report.exit_code())
}

fn show(r: &DrillReport) {
    outln!(
        "drill {}:{} as {}: {} in {:.1}s (restore {:.1}s)",
        r.site,
        r.snapshot,
        r.target,
        if r.ok { "PASSED" } else { "FAILED" },
        r.seconds,
        r.restore_seconds
    );
    for c in &r.checks {
        outln!(
            "  {:<4}  {}: {}",
            if c.ok { "ok" } else { "FAIL" },
            c.name,
            c.detail
        );
    }
    if let Some(e) = r.error.as_ref().and_then(|e| e.hint.as_ref()) {
        outln!("  hint: {e}");
    }
    if r.kept {
        outln!("  kept: site {} is left in place", r.target);
    }
}
