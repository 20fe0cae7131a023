//! `freezer snapshots` and `freezer sites`: listings, printed under `-q` too.

use super::args::{SitesArgs, SnapshotsArgs};
use super::{print_json, Ctx};
use crate::error::Result;
use crate::ops;
use crate::progress::bytes;

pub fn snapshots(ctx: &Ctx, a: SnapshotsArgs) -> Result<i32> {
    let repo = ctx.open_repo()?;
    let list = ops::snapshots(&repo, a.site.as_deref())?;
    if ctx.json() {
        print_json(&list);
        return Ok(0);
    }
    outln!(
        "{:<16} {:<30} {:<20} {:<16} {:<10} {:>8} {:>10} {:>12}",
        "SITE",
        "SNAPSHOT",
        "CREATED",
        "HOST",
        "MODE",
        "FILES",
        "SIZE",
        "DB ROWS"
    );
    for s in &list {
        let files: u64 = s.trees.iter().map(|t| t.files).sum();
        let size: u64 = s.trees.iter().map(|t| t.bytes).sum();
        let rows: u64 = s.databases.iter().map(|d| d.rows).sum();
        outln!(
            "{:<16} {:<30} {:<20} {:<16} {:<10} {:>8} {:>10} {:>12}",
            s.site,
            s.id,
            s.created.get(..19).unwrap_or(&s.created),
            s.host,
            s.mode,
            files,
            bytes(size),
            if s.databases.is_empty() {
                "-".to_string()
            } else {
                rows.to_string()
            }
        );
    }
    Ok(0)
}

pub fn sites(ctx: &Ctx, a: SitesArgs) -> Result<i32> {
    let host = ctx.settings.host(a.host.as_deref())?;
    let sites = crate::docker::Engine::connect_to(&host.docker)?.list_sites()?;
    if ctx.json() {
        print_json(&sites);
        return Ok(0);
    }
    outln!("{:<24} {:<8} CONTAINERS", "SITE", "SOURCE");
    for s in &sites {
        let list: Vec<String> = s
            .containers
            .iter()
            .map(|c| format!("{} ({})", c.name, c.state))
            .collect();
        outln!("{:<24} {:<8} {}", s.name, s.source, list.join(", "));
    }
    Ok(0)
}
