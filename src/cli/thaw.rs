//! `freezer thaw`.

use super::args::{split_host, split_target, ThawArgs};
use super::{jobs, print_json, Ctx};
use crate::error::Result;
use crate::ops::recreate::{SitePlan, SiteReport};
use crate::ops::{self, DbThawFlags, SiteThawReport, ThawKind, ThawRequest};
use crate::progress::bytes;

pub fn run(ctx: &Ctx, a: ThawArgs) -> Result<i32> {
    if let Some(into) = a.into.as_deref().filter(|p| p.exists() && !p.is_dir()) {
        return Err(crate::error::Error::usage(format!(
            "--into {} is a file, not a directory",
            into.display()
        ))
        .with_hint("give a directory (made if it does not exist) to thaw into"));
    }
    let (target, host) = split_host(&a.target);
    let (site, snap) = split_target(target);
    let host_settings = ctx.settings.host(host)?;
    let req = ThawRequest {
        site: site.to_string(),
        snapshot: snap.map(str::to_string),
        host: host.map(str::to_string),
        engine: host_settings.docker,
        host_bind_root: host_settings.bind_root,
        into: a.into,
        replace: a.replace,
        replace_excluded: a.replace_excluded,
        db: DbThawFlags {
            targets: a.dbs,
            skip: a.no_db,
            jobs: jobs(a.jobs),
            with_users: a.with_users,
            tables: a.tables,
        },
        rename: a.rename,
        project_dir: a
            .project_dir
            .map(|d| {
                std::path::absolute(&d).map_err(|e| {
                    crate::error::Error::io(format!("--project-dir {}", d.display()), e)
                })
            })
            .transpose()?,
        publish: a.publish,
        onto: a.onto,
        map: a.map,
        images: a.images.images,
        env: a.images.env,
        hooks: ctx.settings.site_hooks(site)?,
        include: a.include,
    };
    let repo = ctx.open_repo()?;
    let plan = ops::plan_site_thaw(&repo, req)?;
    if a.dry_run {
        match &plan.kind {
            ThawKind::Files(p) if ctx.json() => print_json(&p.view()),
            ThawKind::Files(p) => {
                outln!(
                    "{}",
                    files_plan_text(&p.view(), &repo.location()).trim_end()
                )
            }
            ThawKind::Docker(d) if ctx.json() => print_json(&d.plan),
            ThawKind::Docker(d) => outln!("{}", site_plan_text(&d.plan).trim_end()),
            ThawKind::Onto(o) if ctx.json() => print_json(&o.plan),
            ThawKind::Onto(o) => outln!("{}", onto_plan_text(&o.plan).trim_end()),
        }
        return Ok(0);
    }
    ctx.note(crate::monitor::RunNote {
        snapshot: Some(plan.snapshot().to_string()),
        ..Default::default()
    });
    let report = ctx.with_progress(|p| ops::thaw_site(&repo, plan, p))?;
    let hooks = match &report {
        SiteThawReport::Files(r) => &r.hooks,
        SiteThawReport::Docker(r) => &r.hooks,
        SiteThawReport::Onto(r) => &r.hooks,
    };
    let hook_failed = hooks.iter().any(|h| !h.ok);
    show_report(ctx, &report);
    if hook_failed {
        eprintln!("freezer: the thaw is complete, but an after-thaw hook failed (above)");
        return Ok(1);
    }
    Ok(0)
}

/// What a thaw prints when it is done.
fn show_report(ctx: &Ctx, report: &SiteThawReport) {
    if ctx.json() {
        print_json(report);
    }
    match report {
        SiteThawReport::Files(r) => {
            if !ctx.json() {
                ctx.say(format!(
                    "thawed {}:{} in {:.1}s",
                    r.site, r.snapshot, r.seconds
                ));
                say_restored(ctx, &r.trees, &r.databases);
            }
            for l in &r.removed_leftovers {
                ctx.say(format!(
                    "freezer: {} {} ({}), left by a thaw that was killed",
                    l.action,
                    l.path.display(),
                    bytes(l.bytes)
                ));
            }
            for w in r.databases.iter().flat_map(|d| &d.warnings) {
                ctx.warn(w);
            }
        }
        SiteThawReport::Docker(r) if !ctx.json() => say_site(ctx, r),
        SiteThawReport::Onto(r) if !ctx.json() => {
            if let Some(s) = &r.safety_snapshot {
                ctx.say(format!(
                    "froze site {} before replacing its state, as {}:{s}",
                    r.target, r.target
                ));
            }
            ctx.say(format!(
                "thawed {}:{} onto site {} in {:.1}s",
                r.site, r.snapshot, r.target, r.seconds
            ));
            say_restored(ctx, &r.trees, &r.databases);
            if !r.stopped.is_empty() {
                ctx.say(format!(
                    "  stopped and started again: {}",
                    r.stopped.join(", ")
                ));
            }
        }
        SiteThawReport::Docker(_) | SiteThawReport::Onto(_) => {}
    }
}

/// What `thaw --onto --dry-run` prints: the mapping and what is replaced.
fn onto_plan_text(plan: &crate::ops::onto::OntoPlan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    w!(
        out,
        "thaw {}:{} ({}) onto site {} on the Docker engine at {}",
        plan.site,
        plan.snapshot,
        plan.mode,
        plan.target,
        plan.engine
    );
    for c in &plan.checks {
        w!(out, "  checked: {c}");
    }
    if !plan.replaces.is_empty() {
        w!(
            out,
            "  freeze site {} (safety snapshot), then replace: {}",
            plan.target,
            plan.replaces.join("; ")
        );
    }
    for s in &plan.services {
        w!(
            out,
            "  service {} ({}) -> {} ({})",
            s.service,
            s.container,
            s.target_service,
            s.target_container
        );
        for m in &s.mounts {
            w!(
                out,
                "    {:<24} tree {} -> {} ({})",
                m.destination,
                m.tree,
                m.target,
                m.action
            );
        }
        if let Some(d) = &s.database {
            let from = match d.from.as_str() {
                "dump" => "the snapshot's dump".to_string(),
                _ => "a scratch copy of the snapshot's database container".to_string(),
            };
            w!(
                out,
                "    database {} -> database {} of {}, from {from}, verified",
                d.database,
                d.into,
                s.target_container
            );
        }
    }
    for s in &plan.skipped {
        w!(
            out,
            "  service {s}: no state to load, no counterpart (skipped)"
        );
    }
    if !plan.stops.is_empty() {
        w!(
            out,
            "  stop {} for the swap, then start them again",
            plan.stops.join(", ")
        );
    }
    out
}

/// What `thaw --dry-run` prints for trees and databases.
pub(super) fn files_plan_text(view: &ops::ThawPlanView, repo: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    w!(out, "thaw {}:{} from {repo}", view.site, view.snapshot);
    for t in &view.trees {
        w!(
            out,
            "  {} {:<12} -> {}  ({} files, {}, {} layers)",
            t.action,
            t.name,
            t.dest.display(),
            t.files,
            bytes(t.bytes),
            t.layers
        );
        if let Some(n) = t.selected {
            w!(out, "    only the {n} paths --include selects");
        }
        if let Some(k) = &t.keeps {
            let mut rules = k.patterns.clone();
            if k.caches {
                rules.push("CACHEDIR.TAG directories".into());
            }
            rules.extend(
                k.if_present
                    .iter()
                    .map(|n| format!("directories holding {n}")),
            );
            w!(
                out,
                "    keeps what the snapshot excluded: {}",
                rules.join(", ")
            );
        }
    }
    for d in &view.databases {
        w!(
            out,
            "  {} database {:<12} -> {}  ({} tables, {} rows, {} chunks)",
            d.action,
            d.source,
            d.target,
            d.tables,
            d.rows,
            d.chunks
        );
    }
    out
}

/// What `thaw --dry-run` prints for a Docker site.
pub(super) fn site_plan_text(plan: &SitePlan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    w!(
        out,
        "thaw {}:{} as site {} on the Docker engine at {}",
        plan.site,
        plan.snapshot,
        plan.target,
        plan.engine
    );
    if !plan.replaces.is_empty() {
        w!(
            out,
            "  freeze site {} (safety snapshot), then remove {}",
            plan.target,
            plan.replaces.join(", ")
        );
    }
    for c in &plan.checks {
        w!(out, "  checked: {c}");
    }
    for i in &plan.images {
        w!(out, "  image     {:<24} {}", i.image, i.action);
    }
    for n in &plan.networks {
        w!(out, "  network   {:<24} {}", n.name, n.action);
    }
    mounts_text(plan, &mut out);
    if let Some(p) = &plan.project {
        match (p.written, p.rewrite.is_empty()) {
            (true, true) => w!(out, "  project   {} from {}", p.to.display(), p.from),
            (true, false) => w!(
                out,
                "  project   {} from {}; the old path rewritten in {}",
                p.to.display(),
                p.from,
                p.rewrite
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            (false, _) => w!(out, "  project   {} left as it is", p.to.display()),
        }
    }
    for d in &plan.databases {
        w!(
            out,
            "  database  {:<24} into container {} once it accepts connections ({} tables, {} rows)",
            d.database,
            d.container,
            d.tables,
            d.rows
        );
    }
    for c in &plan.containers {
        w!(
            out,
            "  container {:<24} {} -> {}{}",
            c.name,
            c.image,
            c.state,
            if c.ports.is_empty() {
                String::new()
            } else {
                format!(", ports {}", c.ports.join(" "))
            }
        );
        for ch in &c.changes {
            w!(out, "            {}: {} -> {}", ch.field, ch.from, ch.to);
        }
    }
    out
}

/// The plan's lines for what the containers mount: volumes, directories, anonymous
/// volumes.
fn mounts_text(plan: &SitePlan, out: &mut String) {
    use std::fmt::Write as _;
    for v in &plan.volumes {
        match &v.tree {
            Some(t) => w!(out, "  volume    {:<24} {} from tree {t}", v.name, v.action),
            None => w!(
                out,
                "  volume    {:<24} {} empty (its database is loaded from the dump)",
                v.name,
                v.action
            ),
        }
    }
    for b in &plan.binds {
        w!(
            out,
            "  directory {:<24} {} from tree {}",
            b.path
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            b.action,
            b.tree.as_deref().unwrap_or("")
        );
    }
    for a in &plan.anonymous {
        let what = format!("{}:{}", a.container, a.destination);
        match &a.tree {
            Some(t) => w!(out, "  anonymous {what:<24} new, from tree {t}"),
            None => w!(
                out,
                "  anonymous {what:<24} new, empty (its database is loaded from the dump)"
            ),
        }
    }
}

fn say_site(ctx: &Ctx, r: &SiteReport) {
    if let Some(s) = &r.safety_snapshot {
        ctx.say(format!(
            "froze the replaced site {} as {}:{s}",
            r.target, r.target
        ));
    }
    ctx.say(format!(
        "thawed {}:{} as site {} in {:.1}s",
        r.site, r.snapshot, r.target, r.seconds
    ));
    for i in &r.images_loaded {
        ctx.say(format!("  loaded image {i} from the snapshot"));
    }
    say_restored(ctx, &r.trees, &r.databases);
    ctx.say(format!("  containers: {}", r.containers.join(", ")));
}

/// The lines a thaw prints for what it restored.
fn say_restored(ctx: &Ctx, trees: &[ops::ThawTreeReport], databases: &[crate::db::LoadReport]) {
    for t in trees {
        ctx.say(format!(
            "  {:<12} -> {}  ({} files, {})",
            t.name,
            t.dest.display(),
            t.stats.files,
            bytes(t.stats.bytes)
        ));
    }
    for d in databases {
        let resumed = match d.resumed_chunks {
            0 => String::new(),
            n => format!(
                "; continued an interrupted thaw: {n} of {} chunks were in already",
                d.chunks
            ),
        };
        ctx.say(format!(
            "  database {:<12} -> {}  ({} tables, {} rows, {} objects; verified in {:.1}s{resumed})",
            d.source, d.target, d.tables, d.rows, d.objects, d.verify_seconds
        ));
    }
}
