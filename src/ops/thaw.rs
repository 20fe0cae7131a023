//! `freezer thaw` of trees and databases: plan and check the targets first, then restore
//! into staging and install, so a failure leaves the targets as they were.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Serialize;

use super::*;
use crate::db::{DbUrl, Dump};
use crate::db::{LoadOptions, LoadReport, Prepared};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::interrupt::Registered;
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};
use crate::sys::{check_free_space, existing_ancestor};
use crate::tree::exclude::{Excludes, Selection};
use crate::tree::thaw::TreePlan;
use crate::tree::{thaw_tree, ThawStats};

pub struct ThawPlan {
    pub snapshot: Snapshot,
    pub trees: Vec<ThawTree>,
    pub databases: Vec<ThawDb>,
    pub db_jobs: usize,
    pub db_with_users: bool,
}

pub struct ThawDb {
    /// The database's name in the snapshot.
    pub source: String,
    pub target: DbUrl,
    /// The target database exists with objects in it and will be dropped (--replace);
    /// with `tables`, some of those tables exist and will be dropped.
    pub replaces: bool,
    /// `--table`: only these tables are loaded (`manifest` is restricted to them).
    pub tables: Option<BTreeSet<String>>,
    pub manifest: Dump,
}

#[derive(Debug, Serialize)]
pub struct ThawDbView {
    pub source: String,
    pub target: DbUrl,
    pub action: Action,
    pub tables: usize,
    pub rows: u64,
    pub chunks: usize,
    /// `--table`: the tables loaded (and, when the action is replace, replaced).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub only: Option<Vec<String>>,
}

pub struct ThawTree {
    pub name: String,
    pub source: PathBuf,
    pub dest: PathBuf,
    /// The destination exists and is not empty: it will be replaced (only with --replace).
    pub replaces: bool,
    pub plan: TreePlan,
    /// Replacing: what the snapshot's exclusion rules left out, which stays as it is at
    /// the destination (unless `--replace-excluded`).
    pub keep: Option<Excludes>,
    /// `--include`: only these paths are restored; at an existing destination only they
    /// are replaced, and nothing else is touched.
    pub only: Option<Selection>,
}

#[derive(Debug, Serialize)]
pub struct ThawPlanView {
    pub site: String,
    pub snapshot: String,
    pub trees: Vec<ThawTreeView>,
    pub databases: Vec<ThawDbView>,
}

#[derive(Debug, Serialize)]
pub struct ThawTreeView {
    pub name: String,
    pub source: PathBuf,
    pub dest: PathBuf,
    pub action: Action,
    /// Replacing: the exclusion rules whose paths stay as they are at the destination.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub keeps: Option<Excludes>,
    /// `--include`: how many paths of the tree are restored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selected: Option<usize>,
    pub files: u64,
    pub bytes: u64,
    pub layers: usize,
}

impl ThawPlan {
    pub fn view(&self) -> ThawPlanView {
        ThawPlanView {
            site: self.snapshot.site.clone(),
            snapshot: self.snapshot.id.clone(),
            trees: self
                .trees
                .iter()
                .map(|t| ThawTreeView {
                    name: t.name.clone(),
                    source: t.source.clone(),
                    dest: t.dest.clone(),
                    action: if t.replaces {
                        Action::Replace
                    } else {
                        Action::Create
                    },
                    keeps: t.keep.clone(),
                    selected: t.only.as_ref().map(|s| s.selected.len()),
                    files: t.plan.trailer.files,
                    bytes: t.plan.trailer.bytes,
                    layers: t.plan.manifest.layers.len(),
                })
                .collect(),
            databases: self
                .databases
                .iter()
                .map(|d| ThawDbView {
                    source: d.source.clone(),
                    target: d.target.clone(),
                    action: if d.replaces {
                        Action::Replace
                    } else {
                        Action::Create
                    },
                    tables: d.manifest.tables(),
                    rows: d.manifest.rows(),
                    chunks: d.manifest.chunks(),
                    only: d.tables.as_ref().map(|t| t.iter().cloned().collect()),
                })
                .collect(),
        }
    }
}

/// Where each database of a snapshot is loaded: `--db SRC=URL` names the snapshot's
/// database, a bare `--db URL` is accepted when the snapshot has exactly one.
fn db_targets(
    snapshot: &Snapshot,
    flags: &[String],
    skip: bool,
    wanted: Option<&HashMap<String, BTreeSet<String>>>,
) -> Result<Vec<(String, Digest, DbUrl)>> {
    let in_snapshot: Vec<(String, Digest)> = snapshot
        .databases()
        .filter(|(name, _)| wanted.is_none_or(|w| w.contains_key(*name)))
        .map(|(name, d)| (name.to_string(), d.digest.clone()))
        .collect();
    if skip {
        return Ok(vec![]);
    }
    let mut named: HashMap<String, DbUrl> = HashMap::new();
    let mut bare = Vec::new();
    for f in flags {
        match f.split_once('=') {
            Some((src, url)) if !src.contains("://") => {
                named.insert(src.to_string(), DbUrl::parse(url)?);
            }
            _ => bare.push(DbUrl::parse(f)?),
        }
    }
    for src in named.keys() {
        if !in_snapshot.iter().any(|(n, _)| n == src) {
            return Err(Error::usage(format!(
                "snapshot {}:{} has no database {src}",
                snapshot.site, snapshot.id
            )));
        }
    }
    if bare.len() > 1 || (bare.len() == 1 && in_snapshot.len() > 1) {
        return Err(Error::usage(format!(
            "snapshot {}:{} has {} databases; say which goes where with --db SOURCE=URL",
            snapshot.site,
            snapshot.id,
            in_snapshot.len()
        )));
    }
    let mut out = Vec::new();
    for (name, digest) in in_snapshot {
        let url = match named.remove(&name) {
            Some(u) => u,
            None => bare.pop().ok_or_else(|| {
                Error::usage(format!(
                    "snapshot {}:{} holds database {name}; say where to load it",
                    snapshot.site, snapshot.id
                ))
                .with_hint(format!(
                    "pass --db mysql://USER@HOST/DB (or --db {name}=URL), or --no-db to restore only the files"
                ))
            })?,
        };
        out.push((name, digest, url));
    }
    Ok(out)
}

/// One database of the snapshot (`what` names it in errors) and where it goes: its dump,
/// checked to suit the target (a PostgreSQL dump goes into PostgreSQL), and the target's
/// pre-flight check.
fn plan_database(
    repo: &Repository,
    what: &str,
    digest: &Digest,
    (source, target, tables): (String, DbUrl, Option<BTreeSet<String>>),
    replace: bool,
) -> Result<ThawDb> {
    let dump = Dump::read(repo, digest).map_err(|e| prefix(e, what))?;
    let (manifest, replaces) = dump.check_target(what, &target, tables.as_ref(), replace)?;
    Ok(ThawDb {
        source,
        target,
        replaces,
        tables,
        manifest,
    })
}

/// Resolves the snapshot, verifies manifests and indexes, checks every destination and the
/// free space. Nothing is written.
pub fn plan_thaw(
    repo: &Repository,
    snapshot: Snapshot,
    into: Option<&Path>,
    replace: Replace,
    include: &[String],
    db: &DbThawFlags,
) -> Result<ThawPlan> {
    let include = match include.is_empty() {
        true => None,
        false => Some(
            Excludes {
                patterns: include.to_vec(),
                ..Default::default()
            }
            .matcher()?,
        ),
    };
    let (replace, replace_excluded) = (replace != Replace::No, replace == Replace::All);
    let site = snapshot.site.clone();
    let mut databases = Vec::new();
    let selected = table_selection(&snapshot, &db.tables)?;
    for (source, digest, target) in db_targets(&snapshot, &db.targets, db.skip, selected.as_ref())?
    {
        let tables = selected.as_ref().and_then(|s| s.get(&source).cloned());
        let what = format!("snapshot {site}:{} database {source}", snapshot.id);
        databases.push(plan_database(
            repo,
            &what,
            &digest,
            (source, target, tables),
            replace,
        )?);
    }
    let into = match into {
        Some(p) => Some(std::path::absolute(p).ctx(|| format!("resolving {}", p.display()))?),
        None => None,
    };
    let mut trees = Vec::new();
    let mut need: HashMap<PathBuf, u64> = HashMap::new();
    // `--table` alone restores tables only; with `--include`, those paths too.
    let trees_wanted = db.tables.is_empty() || include.is_some();
    let wanted = TreeWanted {
        into: into.as_deref(),
        include: include.as_ref(),
        replace,
        replace_excluded,
    };
    for part in snapshot.parts().filter(|_| trees_wanted) {
        let Part::Tree {
            name,
            path,
            image: m,
        } = part
        else {
            continue;
        };
        if let Some(t) = plan_tree(repo, &snapshot, (name, path, &m.digest), &wanted)? {
            *need.entry(existing_ancestor(&t.dest)).or_default() += t.plan.trailer.bytes;
            trees.push(t);
        }
    }
    if include.is_some() && trees.is_empty() {
        return Err(Error::not_found(format!(
            "no path of snapshot {site}:{} matches the --include patterns",
            snapshot.id
        ))
        .with_hint(format!(
            "patterns are matched on paths relative to each tree's root; list them with: freezer ls {site}:{} TREE -R",
            snapshot.id
        )));
    }
    check_free_space(&need)?;
    Ok(ThawPlan {
        snapshot,
        trees,
        databases,
        db_jobs: db.jobs.max(1),
        db_with_users: db.with_users,
    })
}

/// How a thaw wants the trees: where, which paths, and what it may replace.
struct TreeWanted<'a> {
    into: Option<&'a Path>,
    include: Option<&'a crate::tree::exclude::Matcher>,
    replace: bool,
    replace_excluded: bool,
}

/// One tree of the snapshot as the thaw will restore it; None when `--include` asks
/// for nothing of it.
fn plan_tree(
    repo: &Repository,
    snapshot: &Snapshot,
    (name, path, digest): (&str, &str, &Digest),
    wanted: &TreeWanted,
) -> Result<Option<ThawTree>> {
    let site = &snapshot.site;
    let name = name.to_string();
    let source = PathBuf::from(path);
    if !source.is_absolute() {
        return Err(Error::integrity(format!(
            "snapshot {site}:{} names tree path {source:?}, which is not absolute",
            snapshot.id
        )));
    }
    let dest = match wanted.into {
        Some(root) => root.join(source.strip_prefix("/").expect("absolute")),
        None => source.clone(),
    };
    let replaces = match fs::symlink_metadata(&dest) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(Error::io(format!("reading {}", dest.display()), e)),
        Ok(meta) if meta.is_dir() => fs::read_dir(&dest)
            .ctx(|| format!("reading {}", dest.display()))?
            .next()
            .is_some(),
        Ok(_) => true,
    };
    if replaces && !wanted.replace {
        return Err(Error::conflict(format!("{} exists and is not empty", dest.display())).with_hint(
            "thaw into a new directory with --into DIR, or pass --replace to replace it (the old contents are removed only after the new ones are complete)",
        ));
    }
    let plan = TreePlan::load(repo, digest)
        .map_err(|e| prefix(e, &format!("snapshot {site}:{} tree {name}", snapshot.id)))?;
    let only = match wanted.include {
        Some(m) => match plan.select(m)? {
            s if s.is_empty() => return Ok(None),
            s => Some(s),
        },
        None => None,
    };
    let keep = match replaces && !wanted.replace_excluded {
        true => excluded_by(&plan, &name)?,
        false => None,
    };
    Ok(Some(ThawTree {
        name,
        source,
        dest,
        replaces,
        plan,
        keep,
        only,
    }))
}

/// `--table [DB.]TABLE` flags by database of the snapshot; a bare TABLE is of the
/// snapshot's only database. None without flags.
fn table_selection(
    snapshot: &Snapshot,
    flags: &[String],
) -> Result<Option<HashMap<String, BTreeSet<String>>>> {
    if flags.is_empty() {
        return Ok(None);
    }
    let names: Vec<&str> = snapshot.databases().map(|(n, _)| n).collect();
    let mut out: HashMap<String, BTreeSet<String>> = HashMap::new();
    for f in flags {
        // A database name may itself hold a dot: the longest database prefix wins.
        let db = names
            .iter()
            .filter(|n| f.len() > n.len() + 1 && f.starts_with(*n) && f.as_bytes()[n.len()] == b'.')
            .max_by_key(|n| n.len());
        let (db, table) = match (db, names.as_slice()) {
            (Some(db), _) => (db.to_string(), f[db.len() + 1..].to_string()),
            (None, [only]) => (only.to_string(), f.clone()),
            (None, []) => {
                return Err(Error::usage(format!(
                    "snapshot {}:{} holds no database, so --table has nothing to load",
                    snapshot.site, snapshot.id
                )))
            }
            (None, _) => {
                return Err(Error::usage(format!(
                "--table {f}: snapshot {}:{} holds databases {}; name the table as DATABASE.TABLE",
                snapshot.site,
                snapshot.id,
                names.join(", ")
            )))
            }
        };
        out.entry(db).or_default().insert(table);
    }
    Ok(Some(out))
}

/// The database side of `thaw`'s command line.
#[derive(Debug, Default, Clone)]
pub struct DbThawFlags {
    /// `--db [SOURCE=]URL`.
    pub targets: Vec<String>,
    /// `--no-db`: restore only the file trees.
    pub skip: bool,
    pub jobs: usize,
    /// `--with-users`: create the dump's accounts and grant their privileges.
    pub with_users: bool,
    /// `--table [DB.]TABLE`: load only these tables (and no trees, unless `--include`).
    pub tables: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct ThawReport {
    pub site: String,
    pub snapshot: String,
    pub seconds: f64,
    pub trees: Vec<ThawTreeReport>,
    pub databases: Vec<LoadReport>,
    /// Staging directories of killed thaws found beside the destinations and removed.
    pub removed_leftovers: Vec<Leftover>,
    /// The after-thaw hooks that ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<super::hooks::HookReport>,
}

#[derive(Debug, Serialize)]
pub struct ThawTreeReport {
    pub name: String,
    pub dest: PathBuf,
    #[serde(flatten)]
    pub stats: ThawStats,
}

/// Restores every tree into a staging directory beside its destination, and only when all
/// of them are complete and verified moves them into place. On failure the staging
/// directories are removed and the destinations are exactly as they were.
pub fn thaw(repo: &Repository, plan: &ThawPlan, progress: &Progress) -> Result<ThawReport> {
    let started = Instant::now();
    // Every file of every dump is downloaded and verified before any target is touched.
    let prepared = fetch_dumps(repo, plan, progress)?;
    let mut staging = Staging::new(progress);
    let mut db_reports = Vec::new();
    let result = (|| -> Result<Vec<ThawTreeReport>> {
        let reports = staging.fill(repo, plan, progress)?;
        db_reports = load_databases(plan, &prepared, progress)?;
        Ok(reports)
    })();
    let reports = match result {
        Ok(r) => r,
        Err(mut e) => {
            staging.remove();
            // Said also beside another hint: whoever reads it wonders first about the site.
            const UNCHANGED: &str = "nothing was changed at the destination";
            e.hint = Some(match e.hint.take() {
                Some(h) if !h.contains(UNCHANGED) => format!("{h}; {UNCHANGED}"),
                Some(h) => h,
                None => UNCHANGED.into(),
            });
            return Err(e);
        }
    };
    staging.install(plan)?;
    Ok(ThawReport {
        site: plan.snapshot.site.clone(),
        snapshot: plan.snapshot.id.clone(),
        seconds: started.elapsed().as_secs_f64(),
        trees: reports,
        databases: db_reports,
        removed_leftovers: staging.removed_leftovers,
        hooks: vec![],
    })
}

/// Each dump of the plan, downloaded and verified.
fn fetch_dumps(repo: &Repository, plan: &ThawPlan, progress: &Progress) -> Result<Vec<Prepared>> {
    let mut prepared = Vec::new();
    for d in &plan.databases {
        prepared.push(d.manifest.fetch(repo, progress).map_err(|e| {
            prefix(
                e,
                &format!(
                    "snapshot {}:{} database {}",
                    plan.snapshot.site, plan.snapshot.id, d.source
                ),
            )
            .with_hint("nothing was changed at the destination")
        })?);
    }
    Ok(prepared)
}

/// Loads each dump into its target, in the plan's order.
fn load_databases(
    plan: &ThawPlan,
    prepared: &[Prepared],
    progress: &Progress,
) -> Result<Vec<LoadReport>> {
    let opts = LoadOptions {
        jobs: plan.db_jobs,
        replace: false,
        with_users: plan.db_with_users,
        tables: None,
    };
    let mut reports = Vec::new();
    for (d, p) in plan.databases.iter().zip(prepared) {
        let opts = LoadOptions {
            replace: d.replaces,
            tables: d.tables.clone(),
            ..opts.clone()
        };
        let r = p.load(&d.target, &opts, progress).map_err(|e| {
            prefix(
                e,
                &format!("loading database {} into {}", d.source, d.target),
            )
        })?;
        reports.push(r);
    }
    Ok(reports)
}

/// The staging directories of a thaw, one beside each destination, and the parent
/// directories made for them. Each is registered with the run's interrupt scope, so a
/// signal that ends the run first still removes them: a staging directory until it is
/// installed, a parent while it is empty.
struct Staging {
    scope: std::sync::Arc<crate::interrupt::Scope>,
    dirs: Vec<PathBuf>,
    registered: Vec<Option<Registered>>,
    created_dirs: Vec<PathBuf>,
    parents: Vec<Registered>,
    removed_leftovers: Vec<Leftover>,
}

impl Staging {
    fn new(progress: &Progress) -> Staging {
        Staging {
            scope: progress.cancel().scope().clone(),
            dirs: vec![],
            registered: vec![],
            created_dirs: vec![],
            parents: vec![],
            removed_leftovers: vec![],
        }
    }

    /// Restores every tree of the plan into a staging directory of its own.
    fn fill(
        &mut self,
        repo: &Repository,
        plan: &ThawPlan,
        progress: &Progress,
    ) -> Result<Vec<ThawTreeReport>> {
        let mut reports = Vec::new();
        for t in &plan.trees {
            progress.add_total(t.plan.trailer.bytes);
        }
        for t in &plan.trees {
            progress.set_label(format!("thawing {}", t.name));
            let staging = self.make_beside(&t.dest)?;
            let stats =
                thaw_tree(repo, &t.plan, &staging, t.only.as_ref(), progress).map_err(|e| {
                    prefix(
                        e,
                        &format!(
                            "thawing {} from {}:{}",
                            t.name, plan.snapshot.site, plan.snapshot.id
                        ),
                    )
                })?;
            reports.push(ThawTreeReport {
                name: t.name.clone(),
                dest: t.dest.clone(),
                stats,
            });
        }
        Ok(reports)
    }

    /// A new, private staging directory beside `dest` (its parents made as needed, and
    /// what a killed run left there dealt with).
    fn make_beside(&mut self, dest: &Path) -> Result<PathBuf> {
        let parent = dest
            .parent()
            .ok_or_else(|| Error::usage(format!("cannot thaw onto {}", dest.display())))?;
        for d in create_parents(parent, &mut self.created_dirs)? {
            self.parents.push(self.scope.created_dir(d));
        }
        sweep_leftovers(parent, dest, &mut self.removed_leftovers);
        let staging = parent.join(format!(
            "{}{}",
            crate::sys::owned_prefix(STAGING_TAG),
            random_suffix()
        ));
        // Private while it fills; the snapshot's root mode is applied at the end.
        std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
            .create(&staging)
            .ctx(|| format!("creating {}", staging.display()))?;
        self.dirs.push(staging.clone());
        self.registered
            .push(Some(self.scope.staging(staging.clone())));
        Ok(staging)
    }

    /// Removes the staging directories and the parents made for them: the destinations
    /// are as they were.
    fn remove(&mut self) {
        for s in &self.dirs {
            let _ = fs::remove_dir_all(s);
        }
        self.registered.clear();
        for d in self.created_dirs.iter().rev() {
            let _ = fs::remove_dir(d);
        }
    }

    /// Every tree is complete and verified; now moves them into place. This step can
    /// still fail (a destination that is a mount point, permissions); then it says
    /// exactly which trees are restored and which are not, and leaves no staging
    /// directory behind.
    fn install(&mut self, plan: &ThawPlan) -> Result<()> {
        let mut installed: Vec<String> = Vec::new();
        for (i, (t, staging)) in plan.trees.iter().zip(&self.dirs).enumerate() {
            let installed_one = match &t.only {
                Some(sel) if t.replaces => install_selected(staging, &t.dest, sel),
                _ => install(staging, &t.dest, t.keep.as_ref()),
            };
            if let Err(e) = installed_one {
                for s in &self.dirs[i..] {
                    let _ = fs::remove_dir_all(s);
                }
                return Err(partly_installed(e, plan, i, &installed));
            }
            self.registered[i].take();
            installed.push(t.dest.display().to_string());
        }
        Ok(())
    }
}

/// The error of an install that failed at tree `failed`, saying which trees are in
/// place (those in `installed`, and the databases) and which are not.
fn partly_installed(mut e: Error, plan: &ThawPlan, failed: usize, installed: &[String]) -> Error {
    let rest: Vec<String> = plan.trees[failed..]
        .iter()
        .map(|t| t.dest.display().to_string())
        .collect();
    if !installed.is_empty() || !plan.databases.is_empty() {
        // Some of the snapshot is in place (trees before this one, databases).
        e.kind = ErrorKind::Partial;
    }
    e.hint = Some(if installed.is_empty() && plan.databases.is_empty() {
        "nothing was changed at the destinations".to_string()
    } else if installed.is_empty() {
        format!(
            "partially restored: the databases are loaded; {} are not restored; run the thaw again with --replace",
            rest.join(", ")
        )
    } else {
        format!(
            "partially restored: {} are restored, {} are not; run the thaw again with --replace",
            installed.join(", "),
            rest.join(", ")
        )
    });
    e
}

/// Scratch directories beside a destination: a tree being restored, and the old
/// contents of a replaced destination until they are deleted. Their names carry the
/// owning process ([`crate::sys::owned_prefix`]).
const STAGING_TAG: &str = ".freezer-thaw";
const OLD_TAG: &str = ".freezer-old";

/// The tag of a destination's old contents while it is being replaced: it carries the
/// destination's name, so that they can be put back if the run dies between moving
/// them aside and moving the new tree in.
fn old_tag(dest: &Path) -> String {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("{OLD_TAG}.{name}")
}

/// Something a killed run had left at a destination, dealt with by this one.
#[derive(Debug, Serialize)]
pub struct Leftover {
    pub path: PathBuf,
    pub bytes: u64,
    pub action: LeftoverAction,
}

/// What was done with a killed run's leftover.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LeftoverAction {
    #[serde(rename = "removed")]
    Removed,
    /// Old contents moved back to a destination that a killed thaw had left missing.
    #[serde(rename = "put back")]
    PutBack,
}

impl std::fmt::Display for LeftoverAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LeftoverAction::Removed => "removed",
            LeftoverAction::PutBack => "put back",
        })
    }
}

/// Deals with what killed thaws left beside `dest`: staging directories (a partial or
/// complete restore, or after the swap the old contents) are removed; old contents
/// moved aside go back where they were if the destination is missing, else are removed.
fn sweep_leftovers(parent: &Path, dest: &Path, out: &mut Vec<Leftover>) {
    for (path, bytes) in crate::sys::remove_dead_leftovers(parent, STAGING_TAG) {
        out.push(Leftover {
            path,
            bytes,
            action: LeftoverAction::Removed,
        });
    }
    for path in crate::sys::dead_leftovers(parent, &old_tag(dest)) {
        let bytes = crate::sys::tree_size(&path);
        let action = if fs::symlink_metadata(dest).is_err() && fs::rename(&path, dest).is_ok() {
            LeftoverAction::PutBack
        } else if crate::sys::remove_any(&path).is_ok() {
            LeftoverAction::Removed
        } else {
            continue;
        };
        out.push(Leftover {
            path,
            bytes,
            action,
        });
    }
}

/// Creates `dir` and the parents it lacks, adding them to `created`; returns those.
fn create_parents(dir: &Path, created: &mut Vec<PathBuf>) -> Result<Vec<PathBuf>> {
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    let mut made = Vec::new();
    for d in missing.into_iter().rev() {
        fs::create_dir(&d).ctx(|| format!("creating {}", d.display()))?;
        made.push(d.clone());
        created.push(d);
    }
    Ok(made)
}

/// Moves a complete staging directory to its destination. An existing destination is
/// swapped out atomically where the file system allows it, then removed.
/// The exclusion rules a tree was frozen with (SPEC.md §5.4), if any.
pub fn excluded_by(plan: &TreePlan, name: &str) -> Result<Option<Excludes>> {
    match plan.manifest.annotations.get(A_TREE_EXCLUDES) {
        Some(json) => Ok(Some(from_json(
            json.as_bytes(),
            &format!("the exclusion rules of tree {name}"),
        )?)),
        None => Ok(None),
    }
}

/// How a thaw treats destinations that exist and are not empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Replace {
    /// Refuse them (the default).
    #[default]
    No,
    /// Replace them, keeping what the snapshot's exclusion rules left out (`--replace`).
    KeepExcluded,
    /// Replace them whole (`--replace --replace-excluded`).
    All,
}

fn install(staging: &Path, dest: &Path, keep: Option<&Excludes>) -> Result<()> {
    // Onto nothing or an empty directory, one rename does it atomically.
    match fs::rename(staging, dest) {
        Ok(()) => return Ok(()),
        Err(e) if fs::symlink_metadata(dest).is_err() => {
            return Err(Error::io(
                format!("moving {} to {}", staging.display(), dest.display()),
                e,
            ));
        }
        Err(_) => {}
    }
    // dest is a non-empty directory (or not a directory): swap, then remove the old contents.
    let old = if crate::sys::exchange(staging, dest).is_ok() {
        staging.to_path_buf()
    } else {
        let old = dest.with_file_name(format!(
            "{}{}",
            crate::sys::owned_prefix(&old_tag(dest)),
            random_suffix()
        ));
        fs::rename(dest, &old).ctx(|| format!("moving {} aside", dest.display()))?;
        if let Err(e) = fs::rename(staging, dest) {
            // Put the old contents back rather than leave the destination missing.
            let _ = fs::rename(&old, dest);
            return Err(Error::io(
                format!("moving {} to {}", staging.display(), dest.display()),
                e,
            ));
        }
        old
    };
    let meta = fs::symlink_metadata(&old).ctx(|| format!("reading {}", old.display()))?;
    if let (Some(rules), true) = (keep, meta.is_dir()) {
        // Until they are back in place, the replaced contents are the only copy of what
        // the snapshot excluded: on failure they stay where they are, named.
        keep_excluded(&old, dest, rules).map_err(|e| {
            e.with_hint(format!(
                "the replaced contents, with what the snapshot excluded, are still in {}",
                old.display()
            ))
        })?;
    }
    if meta.is_dir() {
        fs::remove_dir_all(&old).ctx(|| format!("removing the replaced {}", old.display()))
    } else {
        fs::remove_file(&old).ctx(|| format!("removing the replaced {}", old.display()))
    }
}

/// Installs a partial thaw into an existing destination: each selected path (the
/// top-most ones) replaces what is at its place; nothing else of the destination is
/// touched. The staging directory is removed afterwards.
fn install_selected(staging: &Path, dest: &Path, sel: &Selection) -> Result<()> {
    let rel = |p: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(p));
    for top in sel.tops() {
        let (from, to) = (staging.join(rel(&top)), dest.join(rel(&top)));
        if let Some(parent) = to.parent() {
            fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
        }
        // Swapped where the kernel can, else the old one moved aside first, so the path
        // is never missing and never half restored.
        if fs::symlink_metadata(&to).is_ok() {
            let aside = to.with_file_name(format!(
                "{}{}",
                crate::sys::owned_prefix(&old_tag(&to)),
                random_suffix()
            ));
            fs::rename(&to, &aside).ctx(|| format!("moving {} aside", to.display()))?;
            if let Err(e) = fs::rename(&from, &to) {
                let _ = fs::rename(&aside, &to);
                return Err(Error::io(
                    format!("moving {} to {}", from.display(), to.display()),
                    e,
                ));
            }
            crate::sys::remove_any(&aside)
                .ctx(|| format!("removing the replaced {}", aside.display()))?;
        } else {
            fs::rename(&from, &to)
                .ctx(|| format!("moving {} to {}", from.display(), to.display()))?;
        }
    }
    fs::remove_dir_all(staging).ctx(|| format!("removing {}", staging.display()))
}

/// Moves what the exclusion rules cover from the replaced contents `old` into the new
/// `dest`: the snapshot never held those paths, so a thaw must not delete them.
fn keep_excluded(old: &Path, dest: &Path, rules: &Excludes) -> Result<()> {
    use crate::tree::exclude::Excluded;
    let matcher = rules.matcher()?;
    let mut walker = crate::tree::walk::Walker::with_excludes(old, Some(&matcher));
    while walker.next_entry()?.is_some() {}
    let rel_path = |rel: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(rel));
    for (rel, abs, why) in walker.excluded {
        let target = dest.join(rel_path(&rel));
        let moves: Vec<(PathBuf, PathBuf)> = match why {
            Excluded::Pattern => vec![(abs, target)],
            // A marked directory is in the snapshot, empty: its old contents go into it.
            Excluded::Marked => fs::read_dir(&abs)
                .ctx(|| format!("listing {}", abs.display()))?
                .map(|e| {
                    let e = e.ctx(|| format!("listing {}", abs.display()))?;
                    Ok((e.path(), target.join(e.file_name())))
                })
                .collect::<Result<_>>()?,
        };
        for (from, to) in moves {
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
            }
            if fs::symlink_metadata(&to).is_ok() {
                // The snapshot has something there after all (rules changed between the
                // freeze and its parent): the restored version wins.
                continue;
            }
            fs::rename(&from, &to)
                .ctx(|| format!("keeping {} (excluded from the snapshot)", to.display()))?;
        }
    }
    Ok(())
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
}

#[cfg(test)]
mod plan_tests {
    use super::*;
    use crate::ops::testkit::{failed, Kit};

    fn plan(
        kit: &Kit,
        snap: &Snapshot,
        into: Option<&Path>,
        replace: Replace,
        include: &[&str],
    ) -> Result<ThawPlan> {
        let include: Vec<String> = include.iter().map(|s| s.to_string()).collect();
        let db = DbThawFlags::default();
        plan_thaw(&kit.repo, snap.clone(), into, replace, &include, &db)
    }

    /// The names in `dir`, sorted, with what a killed run would leave (staging, old).
    fn names(dir: &Path) -> Vec<String> {
        let mut n: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        n.sort();
        n
    }

    fn shop(kit: &Kit) -> (PathBuf, Snapshot) {
        let dir = kit.dir_with(
            "site",
            &[("index.php", "<?php echo 1;"), ("uploads/cat.jpg", "a cat")],
        );
        let snap = kit.freeze_dir("shop", &dir);
        (dir, snap)
    }

    #[test]
    fn a_destination_with_data_is_refused_without_replace_and_nothing_is_written() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        let err = failed(plan(&kit, &snap, None, Replace::No, &[]));
        assert_eq!(err.kind, ErrorKind::Conflict, "{err}");
        assert!(err.message.contains(&dir.display().to_string()), "{err}");
        assert!(
            err.hint.as_deref().unwrap_or("").contains("--into"),
            "{err:?}"
        );
        assert_eq!(names(&dir), ["index.php", "uploads"]);
    }

    #[test]
    fn into_restores_under_a_new_root_with_the_same_bytes() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        let root = kit.dir.path().join("restore");
        let p = plan(&kit, &snap, Some(&root), Replace::No, &[]).unwrap();
        let dest = root.join(dir.strip_prefix("/").unwrap());
        assert_eq!(p.trees[0].dest, dest);
        thaw(&kit.repo, &p, &Progress::default()).unwrap();
        assert_eq!(
            fs::read_to_string(dest.join("uploads/cat.jpg")).unwrap(),
            "a cat"
        );
        // Nothing of the thaw's own is left beside it.
        assert_eq!(names(dest.parent().unwrap()), ["site"]);
    }

    #[test]
    fn replace_swaps_the_old_contents_for_the_snapshot_s() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        fs::write(dir.join("uploads/cat.jpg"), "changed").unwrap();
        fs::write(dir.join("new.txt"), "not in the snapshot").unwrap();
        let p = plan(&kit, &snap, None, Replace::KeepExcluded, &[]).unwrap();
        assert!(p.trees[0].replaces);
        thaw(&kit.repo, &p, &Progress::default()).unwrap();
        assert_eq!(
            fs::read_to_string(dir.join("uploads/cat.jpg")).unwrap(),
            "a cat"
        );
        assert!(!dir.join("new.txt").exists());
        assert_eq!(names(dir.parent().unwrap()), ["site"]);
    }

    #[test]
    fn include_restores_only_the_paths_asked_for() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        let root = kit.dir.path().join("restore");
        let p = plan(&kit, &snap, Some(&root), Replace::No, &["uploads/**"]).unwrap();
        thaw(&kit.repo, &p, &Progress::default()).unwrap();
        let dest = root.join(dir.strip_prefix("/").unwrap());
        assert!(dest.join("uploads/cat.jpg").exists());
        assert!(!dest.join("index.php").exists());
    }

    #[test]
    fn include_that_matches_nothing_is_named_with_how_to_list_the_paths() {
        let kit = Kit::new(&[]);
        let (_, snap) = shop(&kit);
        let root = kit.dir.path().join("restore");
        let err = failed(plan(&kit, &snap, Some(&root), Replace::No, &["nothing/**"]));
        assert_eq!(err.kind, ErrorKind::NotFound, "{err}");
        assert!(
            err.hint.as_deref().unwrap_or("").contains("freezer ls"),
            "{err:?}"
        );
        assert!(!root.exists());
    }

    #[test]
    fn a_cancelled_thaw_stops_with_interrupted_and_leaves_no_staging() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        let p = plan(&kit, &snap, None, Replace::KeepExcluded, &[]).unwrap();
        let progress = Progress::default();
        progress.cancel().cancel();
        let err = failed(thaw(&kit.repo, &p, &progress));
        assert_eq!(err.kind, ErrorKind::Interrupted, "{err}");
        assert_eq!(names(dir.parent().unwrap()), ["site"]);
        assert_eq!(
            fs::read_to_string(dir.join("index.php")).unwrap(),
            "<?php echo 1;"
        );
    }

    #[test]
    fn a_thaw_that_cannot_finish_leaves_the_destination_as_it_was() {
        let kit = Kit::new(&[]);
        let (dir, snap) = shop(&kit);
        let p = plan(&kit, &snap, None, Replace::KeepExcluded, &[]).unwrap();
        // A layer of the snapshot lost after the plan: the thaw fails midway.
        let manifest: ImageManifest = from_json(
            &kit.repo
                .read_blob(&snap.record.manifests[0].digest)
                .unwrap(),
            "manifest",
        )
        .unwrap();
        let layer = kit.repo.blob_name(&manifest.layers[0].digest);
        kit.repo.delete_blob(&layer).unwrap();
        fs::write(dir.join("index.php"), "the live site").unwrap();
        let err = failed(thaw(&kit.repo, &p, &Progress::default()));
        assert!(
            err.hint
                .as_deref()
                .unwrap_or("")
                .contains("nothing was changed"),
            "{err:?}"
        );
        assert_eq!(
            fs::read_to_string(dir.join("index.php")).unwrap(),
            "the live site"
        );
        assert_eq!(names(dir.parent().unwrap()), ["site"]);
    }
}
