//! `freezer freeze`.

use super::args::{split_host, ExcludeArgs, FreezeArgs};
use super::{jobs, print_json, Ctx};
use crate::docker::capture::{Consistency, HoldMode};
use crate::error::Result;
use crate::ops::hooks::{self, When};
use crate::ops::{self, FreezePlan, FreezeReport, FreezeRequest};
use crate::progress::bytes;
use crate::tree::exclude::Excludes;
use crate::tree::sqlite::{How, Sqlite};

/// The `--exclude…` flags as rules.
fn excludes(a: &ExcludeArgs) -> Result<Excludes> {
    let mut patterns = Vec::new();
    for f in &a.files {
        patterns.extend(Excludes::patterns_from_file(f)?);
    }
    patterns.extend(a.patterns.iter().cloned());
    Ok(Excludes {
        patterns,
        caches: a.exclude_caches,
        if_present: a.if_present.clone(),
    })
}

pub fn run(ctx: &Ctx, a: FreezeArgs) -> Result<i32> {
    let (site, host) = split_host(&a.site);
    let (trees, databases) = ctx.settings.sources(site, &a.paths, &a.dbs)?;
    let req = FreezeRequest {
        site: site.to_string(),
        trees,
        databases,
        host: host.map(str::to_string),
        engine: ctx.settings.host(host)?.docker,
        mode: a.mode.map(Into::into),
        stop: a.stop,
        with_images: a.with_images,
        with_writable_layer: a.with_writable_layer,
        db_jobs: jobs(a.jobs),
        db_chunk_bytes: a.chunk_size,
        db_with_users: a.with_users || ctx.settings.database_users(site),
        lock_wait: a.lock_wait,
        excludes: ctx
            .settings
            .site_excludes(site)
            .merged(&excludes(&a.excludes)?),
        hooks: ctx.settings.site_hooks(site)?,
        sqlite: ctx.settings.site_sqlite(site)?,
        consistency: ctx.settings.site_consistency(site)?,
    };
    let repo = ctx.open_repo()?;
    let plan = ops::plan_site(&repo, req)?;
    if a.dry_run {
        let excluded = ops::preview_excludes(&plan)?;
        if ctx.json() {
            #[derive(serde::Serialize)]
            struct DryRun<'a> {
                #[serde(flatten)]
                plan: &'a FreezePlan,
                excluded: &'a [ops::TreeExcluded],
            }
            print_json(&DryRun {
                plan: &plan,
                excluded: &excluded,
            });
        } else {
            outln!("{}", plan_text(&plan).trim_end());
            outln!("{}", excluded_text(&excluded).trim_end());
        }
        return Ok(0);
    }
    let report = ctx.with_progress(|p| ops::freeze(&repo, &plan, p))?;
    ctx.note(crate::monitor::RunNote {
        snapshot: Some(report.snapshot.clone()),
        mode: Some(report.mode.as_str().to_string()),
        bytes: crate::format::RunBytes {
            read: report.trees.iter().map(|t| t.stats.bytes).sum::<u64>()
                + report.databases.iter().map(|d| d.sql_bytes).sum::<u64>(),
            stored: report
                .trees
                .iter()
                .map(|t| t.stats.stored_bytes)
                .sum::<u64>()
                + report.databases.iter().map(|d| d.stored_bytes).sum::<u64>(),
            added: report.bytes_uploaded,
            reused: report.bytes_reused,
            deleted: 0,
        },
        warnings: report.warnings.len() as u64,
        ..Default::default()
    });
    for w in &report.warnings {
        ctx.warn(w);
    }
    if ctx.json() {
        print_json(&report);
    } else if !ctx.global.quiet {
        outln!("{}:{}", report.site, report.snapshot);
        summary(ctx, &report);
    }
    Ok(0)
}

/// What `freeze --dry-run` prints.
pub(super) fn plan_text(plan: &FreezePlan) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    w!(out, "freeze site {} into {}", plan.site, plan.repo);
    match &plan.parent {
        Some(p) => w!(
            out,
            "  previous snapshot {p}: unchanged files are not read again"
        ),
        None => w!(out, "  no previous snapshot: every file is read"),
    }
    if let Some(d) = &plan.docker {
        w!(
            out,
            "  Docker site on {}: {} containers, {}{}",
            d.engine_host,
            d.site.containers.len(),
            match (d.hold, d.stop) {
                (false, _) => "running while the files are copied",
                (true, true) => "stopped while the volumes are copied",
                (true, false) => "paused while the volumes are copied",
            },
            if d.with_images { "; images stored" } else { "" }
        );
        for c in &d.site.containers {
            let held = match d.consistency.get(&c.name) {
                Some(Consistency::Stop) => ", stopped for the copy of its own volumes",
                Some(Consistency::Pause) => ", paused for the copy of its own volumes",
                _ => "",
            };
            w!(
                out,
                "  container {:<16} {} ({}){held}",
                c.name,
                c.image,
                c.state
            );
        }
    }
    for t in &plan.trees {
        w!(out, "  tree {:<16} {}", t.name, t.path.display());
        if t.sqlite_as_files || plan.sqlite == Sqlite::AsFiles {
            w!(
                out,
                "    SQLite databases copied as files (the rule is off)"
            );
        }
        let x = &t.excludes;
        if !x.patterns.is_empty() {
            w!(out, "    exclude {}", x.patterns.join(" "));
        }
        if x.caches {
            w!(
                out,
                "    exclude the contents of directories with a CACHEDIR.TAG"
            );
        }
        for n in &x.if_present {
            w!(out, "    exclude the contents of directories holding {n}");
        }
    }
    for when in [When::BeforeFreeze, When::AfterFreeze, When::OnError] {
        if let Some(cmd) = plan.hooks.command(when) {
            w!(out, "  hook {} on the host: {cmd}", when.as_str());
        }
        if let Some(d) = &plan.docker {
            for h in hooks::container_hooks(&d.site.containers, when).unwrap_or_default() {
                w!(
                    out,
                    "  hook {} in {}: {}",
                    when.as_str(),
                    h.container,
                    h.command
                );
            }
        }
    }
    for d in &plan.databases {
        w!(
            out,
            "  database {:<12} {d} ({} connections, consistent snapshot)",
            d.database,
            plan.db_jobs
        );
    }
    out
}

/// What `freeze --dry-run` prints about what the excludes leave out.
pub(super) fn excluded_text(trees: &[ops::TreeExcluded]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for t in trees {
        let files: u64 = t.excluded.iter().map(|e| e.files).sum();
        let size: u64 = t.excluded.iter().map(|e| e.bytes).sum();
        w!(
            out,
            "  tree {} leaves out {} paths ({} files, {}):",
            t.tree,
            t.excluded.len(),
            files,
            bytes(size)
        );
        for e in &t.excluded {
            let what = match e.by {
                "marker" => "contents (marked)",
                _ => "excluded",
            };
            w!(
                out,
                "    {:<40} {what}, {} files, {}",
                e.path,
                e.files,
                bytes(e.bytes)
            );
        }
    }
    out
}

/// How a window held its containers, as the summary says it.
fn held(mode: HoldMode) -> &'static str {
    match mode {
        HoldMode::Stop => "stopped",
        HoldMode::Pause => "paused",
    }
}

fn summary(ctx: &Ctx, r: &FreezeReport) {
    ctx.say(format!(
        "froze {} as snapshot {} in {:.1}s",
        r.site, r.snapshot, r.seconds
    ));
    if let Some(w) = &r.window {
        ctx.say(format!(
            "  {} containers ({}), {} for {} ms while the volumes were copied",
            r.containers.len(),
            r.containers.join(", "),
            held(w.mode),
            w.ms
        ));
    }
    for t in &r.trees {
        let s = &t.stats;
        ctx.say(format!(
            "  {:<12} {} files, {}; read {} files ({}), {} deleted; {} layers ({} new){}",
            t.name,
            s.files,
            bytes(s.bytes),
            s.files_read,
            bytes(s.bytes_read),
            s.deleted,
            s.layers,
            s.new_layers,
            if s.rebased { ", rebased" } else { "" }
        ));
        for f in &s.sqlite {
            let how = match f.how {
                How::Consistent => "copied through SQLite",
                How::AsFiles => "copied as files",
                How::Locked => "locked: copied as files",
                How::Unreadable => "unreadable to SQLite: copied as files",
            };
            ctx.say(format!("    SQLite {}: {how}", f.path));
        }
        if s.pages_new_bytes > 0 {
            ctx.say(format!(
                "    {} of databases stored by their units changed",
                bytes(s.pages_new_bytes)
            ));
        }
    }
    for w in &r.windows {
        ctx.say(format!(
            "  {} {} for {} ms while its volumes were copied",
            w.containers.join(", "),
            held(w.mode),
            w.ms
        ));
    }
    for s in &r.redis {
        ctx.say(format!(
            "  Redis in {} saved {} keys in {} ms before its volume was copied",
            s.container, s.keys, s.ms
        ));
    }
    for d in &r.databases {
        ctx.say(format!(
            "  database {:<12} {} tables, {} rows, {} chunks ({} of SQL, {} stored); tables locked {} ms",
            d.database,
            d.tables,
            d.rows,
            d.chunks,
            bytes(d.sql_bytes),
            bytes(d.stored_bytes),
            d.lock_ms
        ));
        if let Some(by) = &d.schema_by {
            ctx.say(format!("    schema by {by}"));
        }
    }
    ctx.say(format!(
        "  uploaded {} blobs ({}), reused {} ({})",
        r.blobs_uploaded,
        bytes(r.bytes_uploaded),
        r.blobs_reused,
        bytes(r.bytes_reused)
    ));
}
