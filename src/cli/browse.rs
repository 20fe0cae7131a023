//! `freezer ls` and `freezer diff`.

use super::args::{split_target, CatArgs, DiffArgs, LsArgs};
use super::{print_json, Ctx};
use crate::error::{Error, Result};
use crate::ops::{self, EntryInfo, Listing};
use crate::progress::bytes;

pub fn ls(ctx: &Ctx, a: LsArgs) -> Result<i32> {
    let (site, snap) = split_target(&a.target);
    let repo = ctx.open_repo()?;
    let snapshot = repo.find_snapshot(site, snap)?;
    let listing = ops::ls(&repo, &snapshot, a.path.as_deref(), a.recursive)?;
    if ctx.json() {
        print_json(&listing);
        return Ok(0);
    }
    match &listing {
        Listing::Snapshot(s) => {
            outln!("{}:{}  {}  {}  {}", s.site, s.id, s.mode, s.created, s.host);
            for t in &s.trees {
                outln!(
                    "tree      {:<24} {:>8} files {:>10}  {}",
                    t.name,
                    t.files,
                    bytes(t.bytes),
                    t.path
                );
            }
            for d in &s.databases {
                outln!(
                    "database  {:<24} {:>8} tables {:>9} rows",
                    d.name,
                    d.tables,
                    d.rows
                );
            }
            for c in &s.containers {
                outln!("container {c}");
            }
        }
        Listing::Tree { entries, .. } => {
            for e in entries {
                outln!("{}", long(e));
            }
        }
        Listing::Database { tables, .. } => {
            outln!(
                "{:<32} {:>12} {:>10} {:>7}",
                "TABLE",
                "ROWS",
                "STORED",
                "CHUNKS"
            );
            for t in tables {
                outln!(
                    "{:<32} {:>12} {:>10} {:>7}",
                    t.name,
                    t.rows,
                    bytes(t.bytes),
                    t.chunks
                );
            }
        }
    }
    Ok(0)
}

/// One entry as `ls -l` writes it, the time in UTC.
fn long(e: &EntryInfo) -> String {
    let t = match e.kind {
        "dir" => 'd',
        "symlink" => 'l',
        "fifo" => 'p',
        "chardev" => 'c',
        "blockdev" => 'b',
        _ => '-',
    };
    let mut mode = String::from(t);
    for (i, c) in "rwxrwxrwx".chars().enumerate() {
        mode.push(if e.mode & (0o400 >> i) != 0 { c } else { '-' });
    }
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_secs(e.mtime.max(0) as u64);
    let time = crate::format::rfc3339(time);
    let link = match e.kind {
        "symlink" => format!(" -> {}", e.link),
        "hardlink" => format!(" => {}", e.link),
        _ => String::new(),
    };
    format!(
        "{mode} {:>5}/{:<5} {:>12} {} {}{link}",
        e.uid,
        e.gid,
        e.size,
        time.get(..16).unwrap_or(&time).replace('T', " "),
        e.path
    )
}

pub fn diff(ctx: &Ctx, a: DiffArgs) -> Result<i32> {
    let (site, from) = split_target(&a.from);
    let from = from.ok_or_else(|| {
        Error::usage(format!(
            "{}: name the older snapshot as SITE:SNAPSHOT",
            a.from
        ))
    })?;
    let (to_site, to) = match split_target(&a.to) {
        (s, Some(snap)) => (s, snap),
        (snap, None) => (site, snap),
    };
    let repo = ctx.open_repo()?;
    let older = repo.find_snapshot(site, Some(from))?;
    let newer = repo.find_snapshot(to_site, Some(to))?;
    let report = ops::diff(&repo, &older, &newer)?;
    if ctx.json() {
        print_json(&report);
        return Ok(0);
    }
    for t in &report.trees {
        for c in &t.changes {
            let sign = match c.change {
                "added" => '+',
                "removed" => '-',
                _ => 'M',
            };
            let what = match c.what.is_empty() {
                true => String::new(),
                false => format!(" ({})", c.what.join(", ")),
            };
            outln!("{sign} {}/{}  {}{what}", t.tree, c.path, bytes(c.size));
        }
    }
    for t in &report.tables {
        outln!(
            "{} table {}.{}  rows {} -> {}",
            match t.change {
                "added" => '+',
                "removed" => '-',
                _ => 'M',
            },
            t.database,
            t.table,
            t.rows_before,
            t.rows_after
        );
    }
    for (c, change) in &report.containers {
        outln!("{change} container {c}");
    }
    Ok(0)
}

pub fn cat(ctx: &Ctx, a: CatArgs) -> Result<i32> {
    let (site, snap) = split_target(&a.target);
    let repo = ctx.open_repo()?;
    let snapshot = repo.find_snapshot(site, snap)?;
    // No progress display: stdout carries the file's bytes, even with --json.
    let progress = crate::progress::Progress::with_cancel(ctx.cancel.clone());
    let mut out = std::io::stdout().lock();
    ops::cat(&repo, &snapshot, &a.path, &mut out, &progress)?;
    Ok(0)
}
