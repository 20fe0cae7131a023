//! `freezer ls` and `freezer diff`: what a snapshot holds, and what changed between two,
//! from the tree indexes and database configs alone; no layer is read.

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::format::*;
use crate::repo::{Repository, Snapshot};
use crate::tree::index::{cmp_paths, is_within, Entry, Kind};
use crate::tree::thaw::TreePlan;

/// One entry of a tree, as `ls -l` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct EntryInfo {
    /// Relative to the tree root.
    pub path: String,
    /// `dir`, `file`, `symlink`, `hardlink`, `fifo`, `chardev`, `blockdev`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// Seconds since the epoch.
    pub mtime: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub link: String,
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Dir => "dir",
        Kind::File => "file",
        Kind::Symlink => "symlink",
        Kind::HardLink => "hardlink",
        Kind::Fifo => "fifo",
        Kind::CharDev => "chardev",
        Kind::BlockDev => "blockdev",
    }
}

impl From<&Entry> for EntryInfo {
    fn from(e: &Entry) -> Self {
        EntryInfo {
            path: e.display_path(),
            kind: kind_name(e.kind),
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            mtime: e.mtime.0,
            link: String::from_utf8_lossy(&e.link).into_owned(),
        }
    }
}

/// A table of a database snapshot.
#[derive(Debug, Clone, Serialize)]
pub struct TableInfo {
    pub name: String,
    pub rows: u64,
    /// Stored (compressed) bytes of its chunks.
    pub bytes: u64,
    pub chunks: usize,
}

/// What `ls` lists.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum Listing {
    /// The snapshot's parts.
    Snapshot(super::SnapshotInfo),
    /// A directory of a tree (its children, or with `recursive` everything below it).
    Tree {
        tree: String,
        path: String,
        entries: Vec<EntryInfo>,
    },
    /// A database's tables.
    Database {
        database: String,
        tables: Vec<TableInfo>,
    },
}

/// The tree or database `what` names in `snapshot`: `TREE[/PATH]` or a database name.
pub fn ls(
    repo: &Repository,
    snapshot: &Snapshot,
    what: Option<&str>,
    recursive: bool,
) -> Result<Listing> {
    let Some(what) = what.map(|w| w.trim_matches('/')) else {
        return Ok(Listing::Snapshot(super::SnapshotInfo::from(snapshot)));
    };
    let (first, rest) = what.split_once('/').unwrap_or((what, ""));
    for part in snapshot.parts() {
        match part {
            Part::Tree { name, image, .. } if name == first => {
                let plan = TreePlan::load(repo, &image.digest)?;
                let dir = if rest.is_empty() { "." } else { rest };
                return Ok(Listing::Tree {
                    tree: name.to_string(),
                    path: dir.to_string(),
                    entries: list_dir(&plan, dir.as_bytes(), recursive)?,
                });
            }
            Part::Database { name, image } if name == first && rest.is_empty() => {
                let m = crate::db::Dump::read(repo, &image.digest)?;
                return Ok(Listing::Database {
                    database: name.to_string(),
                    tables: m
                        .table_summaries()
                        .iter()
                        .map(|t| TableInfo {
                            name: t.name.clone(),
                            rows: t.rows,
                            bytes: t.chunks.iter().map(|c| c.size).sum(),
                            chunks: t.chunks.len(),
                        })
                        .collect(),
                });
            }
            _ => {}
        }
    }
    Err(Error::not_found(format!(
        "snapshot {}:{} has no tree or database {first}",
        snapshot.site, snapshot.id
    ))
    .with_hint(format!(
        "list what it holds with: freezer ls {}:{}",
        snapshot.site, snapshot.id
    )))
}

fn list_dir(plan: &TreePlan, dir: &[u8], recursive: bool) -> Result<Vec<EntryInfo>> {
    let mut r = plan.entries()?;
    let mut out = Vec::new();
    let mut found = false;
    // Depth-first order: what is inside `dir` comes right after it, contiguous.
    while let Some(e) = r.next_entry()? {
        if e.path == dir {
            if e.kind != Kind::Dir {
                return Ok(vec![EntryInfo::from(&e)]); // `ls FILE` shows the file
            }
            found = true;
        } else if found && is_within(&e.path, dir) {
            if recursive || crate::tree::index::parent(&e.path) == dir {
                out.push(EntryInfo::from(&e));
            }
        } else if found {
            break;
        }
    }
    if !found {
        return Err(Error::not_found(format!(
            "{} is not in the tree",
            String::from_utf8_lossy(dir)
        )));
    }
    Ok(out)
}

/// Writes one regular file of a snapshot (`TREE/PATH`) to `out`. Only the layer that
/// holds it is read, and its digest is checked before a byte is written: the file is
/// restored into a private temporary directory first, as a one-file thaw.
pub fn cat(
    repo: &Repository,
    snapshot: &Snapshot,
    path: &str,
    out: &mut dyn std::io::Write,
    progress: &crate::progress::Progress,
) -> Result<u64> {
    let path = path.trim_matches('/');
    let Some((tree, rel)) = path.split_once('/') else {
        return Err(Error::usage(format!("{path}: name a file as TREE/PATH")));
    };
    let Some(image) = snapshot.parts().find_map(|p| match p {
        Part::Tree { name, image, .. } if name == tree => Some(image.clone()),
        _ => None,
    }) else {
        return Err(Error::not_found(format!(
            "snapshot {}:{} has no tree {tree}",
            snapshot.site, snapshot.id
        )));
    };
    let plan = TreePlan::load(repo, &image.digest)?;
    let mut r = plan.entries()?;
    let mut found = None;
    while let Some(e) = r.next_entry()? {
        if e.path == rel.as_bytes() {
            found = Some(e);
            break;
        }
    }
    let file = match found {
        Some(e) if e.kind == Kind::File => e,
        Some(e) if e.kind == Kind::HardLink => {
            // The file it names comes earlier in the index.
            let mut r = plan.entries()?;
            loop {
                match r.next_entry()? {
                    Some(f) if f.path == e.link && f.kind == Kind::File => break f,
                    Some(_) => {}
                    None => {
                        return Err(Error::integrity(format!(
                            "tree index: hard link {path} names {}, which is not a file before it",
                            String::from_utf8_lossy(&e.link)
                        )))
                    }
                }
            }
        }
        Some(e) => {
            return Err(Error::usage(format!(
                "{path} is a {} in the snapshot, not a file",
                kind_name(e.kind)
            )))
        }
        None => {
            return Err(Error::not_found(format!(
                "{path} is not in snapshot {}:{}",
                snapshot.site, snapshot.id
            ))
            .with_hint(format!(
                "list the tree with: freezer ls {}:{} {tree} -R",
                snapshot.site, snapshot.id
            )))
        }
    };
    write_file(repo, &plan, &file, out, progress)
}

/// Writes the bytes of a regular file of a tree (its index entry) to `out`, checked
/// before a byte is written: one frame of one layer when the index says where, else a
/// one-file thaw that reads the whole layer holding it.
pub fn write_file(
    repo: &Repository,
    plan: &TreePlan,
    file: &Entry,
    out: &mut dyn std::io::Write,
    progress: &crate::progress::Progress,
) -> Result<u64> {
    if let Some(n) = crate::tree::frames::read_file(repo, &plan.manifest, file, out)? {
        return Ok(n);
    }
    let file = file.path.clone();
    let dir = crate::sys::temp_dir("a temporary directory")?;
    let only = crate::tree::exclude::Selection::of([file.clone()]);
    crate::tree::thaw_tree(repo, plan, dir.path(), Some(&only), progress)?;
    let restored = dir.path().join(std::ffi::OsStr::from_bytes(&file));
    let mut f = std::fs::File::open(&restored)
        .map_err(|e| Error::io(format!("reading {}", restored.display()), e))?;
    std::io::copy(&mut f, out).map_err(|e| Error::io("writing the file", e))
}

/// One path that differs between two snapshots of a tree.
#[derive(Debug, Clone, Serialize)]
pub struct Change {
    pub path: String,
    /// `added`, `removed` or `modified`.
    pub change: &'static str,
    /// For `modified`: what changed (`type`, `content`, `mode`, `owner`, `mtime`,
    /// `link`, `xattrs`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub what: Vec<&'static str>,
    /// The size in the newer snapshot (the older one's for `removed`).
    pub size: u64,
}

#[derive(Debug, Serialize)]
pub struct TreeDiff {
    pub tree: String,
    pub changes: Vec<Change>,
}

#[derive(Debug, Serialize)]
pub struct TableDiff {
    pub database: String,
    pub table: String,
    /// `added`, `removed` or `modified` (its rows: the checksum or a chunk differs).
    pub change: &'static str,
    pub rows_before: u64,
    pub rows_after: u64,
}

#[derive(Debug, Serialize)]
pub struct DiffReport {
    pub site: String,
    pub from: String,
    pub to: String,
    pub trees: Vec<TreeDiff>,
    pub tables: Vec<TableDiff>,
    /// Containers added, removed or whose configuration changed: (name, change).
    pub containers: Vec<(String, &'static str)>,
}

/// What changed from snapshot `a` to snapshot `b` (of the same or another site).
pub fn diff(repo: &Repository, a: &Snapshot, b: &Snapshot) -> Result<DiffReport> {
    let mut report = DiffReport {
        site: b.site.clone(),
        from: a.id.clone(),
        to: b.id.clone(),
        trees: vec![],
        tables: vec![],
        containers: vec![],
    };
    let by_name = |s: &Snapshot| -> BTreeMap<(u8, String), Descriptor> {
        s.parts()
            .map(|p| match p {
                Part::Tree { name, image, .. } => ((0, name.to_string()), image.clone()),
                Part::Database { name, image } => ((1, name.to_string()), image.clone()),
                Part::Container { name, image } => ((2, name.to_string()), image.clone()),
            })
            .collect()
    };
    let (pa, pb) = (by_name(a), by_name(b));
    let mut keys: Vec<&(u8, String)> = pa.keys().chain(pb.keys()).collect();
    keys.sort();
    keys.dedup();
    for key in keys {
        let (da, db) = (pa.get(key), pb.get(key));
        if da.map(|d| &d.digest) == db.map(|d| &d.digest) {
            continue; // the same image: nothing changed
        }
        let name = &key.1;
        match key.0 {
            0 => {
                let changes = diff_tree(repo, da, db)?;
                if !changes.is_empty() {
                    report.trees.push(TreeDiff {
                        tree: name.clone(),
                        changes,
                    });
                }
            }
            1 => report.tables.extend(diff_db(repo, name, da, db)?),
            _ => report.containers.push((
                name.clone(),
                match (da, db) {
                    (None, _) => "added",
                    (_, None) => "removed",
                    _ => "modified",
                },
            )),
        }
    }
    Ok(report)
}

fn entries(repo: &Repository, d: Option<&Descriptor>) -> Result<Vec<Entry>> {
    let Some(d) = d else { return Ok(vec![]) };
    let plan = TreePlan::load(repo, &d.digest)?;
    let mut r = plan.entries()?;
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok(out)
}

fn diff_tree(
    repo: &Repository,
    a: Option<&Descriptor>,
    b: Option<&Descriptor>,
) -> Result<Vec<Change>> {
    let (ea, eb) = (entries(repo, a)?, entries(repo, b)?);
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    let change = |e: &Entry, change, what| Change {
        path: e.display_path(),
        change,
        what,
        size: e.size,
    };
    while i < ea.len() || j < eb.len() {
        let ord = match (ea.get(i), eb.get(j)) {
            (Some(x), Some(y)) => cmp_paths(&x.path, &y.path),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        match ord {
            std::cmp::Ordering::Less => {
                out.push(change(&ea[i], "removed", vec![]));
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(change(&eb[j], "added", vec![]));
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                let (x, y) = (&ea[i], &eb[j]);
                let mut what = Vec::new();
                if x.kind != y.kind {
                    what.push("type");
                } else if x.kind == Kind::File
                    && (x.size != y.size
                        || x.ctime != y.ctime
                        || x.ino != y.ino
                        || x.sqlite != y.sqlite
                        || x.pages != y.pages)
                {
                    // The stat data the freeze compares (SPEC.md §5.2, a SQLite
                    // database's stamp, §5.5): content may have changed; a file rewritten
                    // in place is stored again.
                    what.push("content");
                }
                if x.mode != y.mode {
                    what.push("mode");
                }
                if (x.uid, x.gid) != (y.uid, y.gid) {
                    what.push("owner");
                }
                if x.mtime != y.mtime && x.kind != Kind::Dir {
                    what.push("mtime");
                }
                if x.link != y.link {
                    what.push("link");
                }
                if x.xattrs != y.xattrs {
                    what.push("xattrs");
                }
                if !what.is_empty() && y.path != b"." {
                    out.push(change(y, "modified", what));
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(out)
}

fn diff_db(
    repo: &Repository,
    database: &str,
    a: Option<&Descriptor>,
    b: Option<&Descriptor>,
) -> Result<Vec<TableDiff>> {
    let tables = |d: Option<&Descriptor>| -> Result<BTreeMap<String, crate::db::TableSummary>> {
        let Some(d) = d else {
            return Ok(BTreeMap::new());
        };
        let m = crate::db::Dump::read(repo, &d.digest)?;
        Ok(m.table_summaries()
            .into_iter()
            .map(|t| (t.name.clone(), t))
            .collect())
    };
    let (ta, tb) = (tables(a)?, tables(b)?);
    let mut names: Vec<&String> = ta.keys().chain(tb.keys()).collect();
    names.sort();
    names.dedup();
    let mut out = Vec::new();
    for n in names {
        let (x, y) = (ta.get(n), tb.get(n));
        let change = match (x, y) {
            (None, Some(_)) => "added",
            (Some(_), None) => "removed",
            (Some(x), Some(y))
                if x.checksum != y.checksum || x.rows != y.rows || x.chunks != y.chunks =>
            {
                "modified"
            }
            _ => continue,
        };
        out.push(TableDiff {
            database: database.to_string(),
            table: n.clone(),
            change,
            rows_before: x.map_or(0, |t| t.rows),
            rows_after: y.map_or(0, |t| t.rows),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::{failed, Kit};
    use crate::progress::Progress;

    fn site(kit: &Kit, files: &[(&str, &str)]) -> Snapshot {
        kit.freeze_dir("shop", &kit.dir_with("site", files))
    }

    #[test]
    fn ls_lists_a_directory_or_everything_below_it() {
        let kit = Kit::new(&[]);
        let snap = site(
            &kit,
            &[("index.php", "1"), ("uploads/2026/cat.jpg", "a cat")],
        );
        let Listing::Tree { entries, .. } = ls(&kit.repo, &snap, Some("files"), false).unwrap()
        else {
            panic!("not a tree listing")
        };
        let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["index.php", "uploads"]);
        let Listing::Tree { entries, .. } =
            ls(&kit.repo, &snap, Some("files/uploads"), true).unwrap()
        else {
            panic!("not a tree listing")
        };
        let cat = entries
            .iter()
            .find(|e| e.path.ends_with("cat.jpg"))
            .unwrap();
        assert_eq!((cat.kind, cat.size), ("file", 5));
    }

    #[test]
    fn ls_of_something_the_snapshot_lacks_is_named() {
        let kit = Kit::new(&[]);
        let snap = site(&kit, &[("index.php", "1")]);
        let err = failed(ls(&kit.repo, &snap, Some("nothing"), false));
        assert!(err.message.contains("nothing"), "{err}");
    }

    #[test]
    fn cat_writes_one_file_s_bytes() {
        let kit = Kit::new(&[]);
        let snap = site(&kit, &[("a/b.txt", "the bytes"), ("c.txt", "other")]);
        let mut out = Vec::new();
        let n = cat(
            &kit.repo,
            &snap,
            "files/a/b.txt",
            &mut out,
            &Progress::default(),
        )
        .unwrap();
        assert_eq!((n, out.as_slice()), (9, &b"the bytes"[..]));
        let err = failed(cat(
            &kit.repo,
            &snap,
            "files/a",
            &mut out,
            &Progress::default(),
        ));
        assert!(err.message.contains("a"), "{err}");
    }

    #[test]
    fn diff_says_what_was_added_removed_and_modified() {
        let kit = Kit::new(&[]);
        let dir = kit.dir_with(
            "site",
            &[("same.txt", "same"), ("gone.txt", "x"), ("edit.txt", "1")],
        );
        let a = kit.freeze_dir("shop", &dir);
        std::fs::remove_file(dir.join("gone.txt")).unwrap();
        std::fs::write(dir.join("edit.txt"), "22").unwrap();
        std::fs::write(dir.join("new.txt"), "new").unwrap();
        let b = kit.freeze_dir("shop", &dir);
        let d = diff(&kit.repo, &a, &b).unwrap();
        let changes: Vec<(&str, &str)> = d.trees[0]
            .changes
            .iter()
            .map(|c| (c.path.as_str(), c.change))
            .collect();
        assert_eq!(
            changes,
            [
                ("edit.txt", "modified"),
                ("gone.txt", "removed"),
                ("new.txt", "added")
            ]
        );
        let edit = &d.trees[0].changes[0];
        assert!(edit.what.contains(&"content"), "{edit:?}");
    }
}
