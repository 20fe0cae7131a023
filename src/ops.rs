//! The operations behind the commands, over a whole site: plan, then execute.
//!
//! Each takes explicit arguments and returns a report; printing is the binary's job.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::db::dump::{freeze_database, DbReport, DumpOptions};
use crate::db::load::{load_database, LoadOptions, LoadReport};
use crate::db::{DbManifest, DbUrl, A_DB_NAME, A_DB_ROWS, A_DB_TABLES};
use crate::docker::capture::{
    store_container, CapturedSite, KnownLayers, WindowReport, A_CONTAINER_NAME,
};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot, SnapshotRef};
use crate::retention::Policy;
use crate::tree::freeze::tree_index_digest;
use crate::tree::thaw::TreePlan;
use crate::tree::{freeze_tree, thaw_tree, FreezeStats, PrevTree, ThawStats};

pub const A_TREE_FILES: &str = "dev.freezer.tree.files";
pub const A_TREE_BYTES: &str = "dev.freezer.tree.bytes";

/// One directory of a site.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TreeSpec {
    pub name: String,
    pub path: PathBuf,
}

// ---------------------------------------------------------------------------------------
// freeze

#[derive(Debug, Serialize)]
pub struct FreezePlan {
    pub site: String,
    pub repo: String,
    pub trees: Vec<TreeSpec>,
    pub databases: Vec<DbUrl>,
    /// Connections per database dump.
    pub db_jobs: usize,
    /// Target uncompressed size of a dump chunk.
    pub db_chunk_bytes: u64,
    /// Also dump the accounts with privileges on each database.
    pub db_with_users: bool,
    /// How long to wait for a running prune before giving up.
    #[serde(skip)]
    pub lock_wait: std::time::Duration,
    /// The snapshot whose indexes let unchanged files be skipped.
    pub parent: Option<String>,
    /// The containers of a Docker site (hydrated freeze); its trees are their mounts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub docker: Option<DockerFreeze>,
}

/// A Docker site to freeze hydrated.
#[derive(Serialize)]
pub struct DockerFreeze {
    #[serde(skip)]
    pub engine: crate::docker::Engine,
    pub engine_host: String,
    #[serde(rename = "containers", serialize_with = "container_names")]
    pub site: CapturedSite,
    /// Hold the site still (pause or stop) while its trees are copied: hydrated. A
    /// dehydrated freeze dumps the databases instead and copies the other trees live.
    pub hold: bool,
    /// Stop the containers for the copy instead of pausing them.
    pub stop: bool,
    /// Also store each container's image layers.
    pub with_images: bool,
}

impl std::fmt::Debug for DockerFreeze {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerFreeze")
            .field("engine", &self.engine_host)
            .field("containers", &self.site.containers.len())
            .finish()
    }
}

fn container_names<S: serde::Serializer>(
    site: &CapturedSite,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_seq(site.containers.iter().map(|c| &c.name))
}

pub fn plan_freeze(
    repo: &Repository,
    site: &str,
    trees: Vec<TreeSpec>,
    databases: Vec<DbUrl>,
    db_jobs: usize,
    docker: Option<DockerFreeze>,
) -> Result<FreezePlan> {
    crate::repo::check_site_name(site)?;
    if trees.is_empty() && databases.is_empty() && docker.is_none() {
        return Err(
            Error::usage(format!("site {site} has nothing to freeze")).with_hint(format!(
                "pass --path DIR or --db URL, or list paths and databases under [sites.{site}] in freezer.toml"
            )),
        );
    }
    let mut db_names = BTreeSet::new();
    for d in &databases {
        if !db_names.insert(d.database.clone()) {
            return Err(Error::usage(format!(
                "database {} is named twice; a snapshot holds each database name once",
                d.database
            )));
        }
    }
    let mut seen = HashMap::new();
    for t in &trees {
        let meta = fs::metadata(&t.path).ctx(|| format!("reading {}", t.path.display()))?;
        if !meta.is_dir() {
            return Err(Error::usage(format!(
                "{} is not a directory",
                t.path.display()
            )));
        }
        if let Some(other) = seen.insert(t.name.clone(), t.path.clone()) {
            return Err(Error::usage(format!(
                "tree name {} is used for {} and {}",
                t.name,
                other.display(),
                t.path.display()
            )));
        }
    }
    let parent = match repo.find_snapshot(site, None) {
        Ok(s) => Some(s.id),
        Err(e) if e.kind == ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    Ok(FreezePlan {
        site: site.to_string(),
        repo: repo.location(),
        trees,
        databases,
        db_jobs: db_jobs.max(1),
        db_chunk_bytes: DumpOptions::default().chunk_bytes,
        db_with_users: false,
        lock_wait: std::time::Duration::from_secs(1800),
        parent,
        docker,
    })
}

#[derive(Debug, Serialize)]
pub struct FreezeReport {
    pub site: String,
    pub snapshot: String,
    pub parent: Option<String>,
    pub seconds: f64,
    /// `files`, `dehydrated` or `hydrated`.
    pub mode: &'static str,
    /// The containers of a Docker site.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// How long the site was paused or stopped (Docker sites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowReport>,
    pub trees: Vec<TreeReport>,
    pub databases: Vec<DbReport>,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_reused: u64,
    pub bytes_reused: u64,
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct TreeReport {
    pub name: String,
    pub path: PathBuf,
    #[serde(flatten)]
    pub stats: FreezeStats,
}

pub fn freeze(repo: &Repository, plan: &FreezePlan, progress: &Progress) -> Result<FreezeReport> {
    // Held until the record is written: no prune may delete a blob this freeze reuses.
    let _lock =
        crate::lock::acquire_waiting(repo, "freeze", Some(&plan.site), plan.lock_wait, progress)?;
    let started = Instant::now();
    let created = SystemTime::now();
    let mut warnings = Vec::new();

    // The previous snapshot's trees, by path. A damaged or unreadable one is no reason to
    // skip tonight's backup: freeze that tree in full and say so.
    let mut prev: HashMap<PathBuf, PrevTree> = HashMap::new();
    let mut prev_db: HashMap<String, DbManifest> = HashMap::new();
    let mut parent_containers: Vec<ImageManifest> = Vec::new();
    if let Some(id) = &plan.parent {
        let snap = repo.read_snapshot(&SnapshotRef {
            site: plan.site.clone(),
            id: id.clone(),
        })?;
        for m in &snap.record.manifests {
            if m.annotations.contains_key(A_CONTAINER_NAME) {
                // Only image layers are reused from a parent container image.
                let with_images = plan.docker.as_ref().is_some_and(|d| d.with_images);
                if let Some(manifest) = with_images
                    .then(|| repo.read_blob(&m.digest))
                    .and_then(|r| r.ok())
                    .and_then(|b| from_json::<ImageManifest>(&b, &m.digest.key()).ok())
                {
                    parent_containers.push(manifest);
                }
                continue;
            }
            if let Some(db) = m.annotations.get(A_DB_NAME) {
                if plan.databases.iter().any(|d| &d.database == db) {
                    match crate::db::load::read_manifest(repo, &m.digest) {
                        Ok((_, manifest)) => {
                            prev_db.insert(db.clone(), manifest);
                        }
                        Err(e) => warnings.push(format!(
                            "previous snapshot {id} of database {db} is unreadable ({e}); chunk sizes start afresh"
                        )),
                    }
                }
                continue;
            }
            let Some(path) = m.annotations.get(A_TREE_PATH) else {
                continue;
            };
            let path = PathBuf::from(path);
            if !plan.trees.iter().any(|t| t.path == path) {
                continue;
            }
            match PrevTree::load(repo, &m.digest) {
                Ok(p) => {
                    prev.insert(path, p);
                }
                Err(e) => warnings.push(format!(
                    "previous snapshot {id} of {} is unreadable ({e}); freezing it in full",
                    path.display()
                )),
            }
        }
    }

    // A Docker site: the containers' images first (outside the window), then the volumes
    // while the site is held still.
    let mut manifests = Vec::new();
    let mut window = None;
    let trees = match &plan.docker {
        None => freeze_trees(repo, plan, &prev, progress, &mut warnings, &mut manifests)?,
        Some(d) => {
            progress.set_label("storing container configurations".to_string());
            let mut known = KnownLayers::new();
            for m in &parent_containers {
                if let Ok(k) = crate::docker::capture::known_layers(repo, m) {
                    known.extend(k);
                }
            }
            for spec in &d.site.containers {
                manifests.push(
                    store_container(repo, &d.engine, spec, d.with_images, &mut known)
                        .map_err(|e| prefix(e, &format!("storing container {}", spec.name)))?,
                );
            }
            // A remote engine's volumes are mirrored here first (inside the window).
            let pull = || -> Result<()> {
                if !d.engine.is_local() {
                    progress.set_label("copying the volumes through the engine".to_string());
                    crate::docker::remote::pull_all(&d.engine, &d.site)?;
                }
                Ok(())
            };
            if d.hold {
                let mut tree_manifests = Vec::new();
                let (trees, w) = crate::docker::capture::hold(&d.engine, &d.site, d.stop, || {
                    pull()?;
                    freeze_trees(
                        repo,
                        plan,
                        &prev,
                        progress,
                        &mut warnings,
                        &mut tree_manifests,
                    )
                })?;
                manifests.extend(tree_manifests);
                window = Some(w);
                trees
            } else {
                pull()?;
                freeze_trees(repo, plan, &prev, progress, &mut warnings, &mut manifests)?
            }
        }
    };

    let mut databases = Vec::new();
    let db_opts = DumpOptions {
        jobs: plan.db_jobs,
        chunk_bytes: plan.db_chunk_bytes,
        with_users: plan.db_with_users,
        ..DumpOptions::default()
    };
    for url in &plan.databases {
        let (desc, report) =
            freeze_database(repo, url, prev_db.get(&url.database), &db_opts, progress)
                .map_err(|e| prefix(e, &format!("dumping {url}")))?;
        warnings.extend(report.warnings.iter().cloned());
        manifests.push(desc);
        databases.push(report);
    }

    let mut record = ImageIndex {
        schema_version: 2,
        media_type: MT_INDEX.into(),
        manifests,
        annotations: Annotations::new(),
    };
    let mut nonce = [0u8; 8];
    rand::Rng::fill(&mut rand::thread_rng(), &mut nonce);
    let a = &mut record.annotations;
    a.insert(A_FORMAT.into(), REPO_FORMAT_VERSION.to_string());
    a.insert(A_SITE.into(), plan.site.clone());
    let mode = if plan.docker.as_ref().is_some_and(|d| d.hold) {
        "hydrated"
    } else if plan.databases.is_empty() {
        "files"
    } else {
        "dehydrated"
    };
    a.insert(A_MODE.into(), mode.into());
    a.insert(A_HOST.into(), hostname());
    a.insert(A_CREATED.into(), rfc3339(created));
    a.insert(A_NONCE.into(), hex::encode(nonce));
    if let Some(p) = &plan.parent {
        a.insert(A_PARENT.into(), p.clone());
    }
    // Last: the record makes the snapshot visible, and every blob it names exists by now.
    let r = repo.write_record(&plan.site, &record, created)?;
    let s = &repo.stats;
    Ok(FreezeReport {
        site: plan.site.clone(),
        snapshot: r.id,
        parent: plan.parent.clone(),
        seconds: started.elapsed().as_secs_f64(),
        mode,
        containers: plan
            .docker
            .as_ref()
            .map(|d| d.site.containers.iter().map(|c| c.name.clone()).collect())
            .unwrap_or_default(),
        window,
        trees,
        databases,
        blobs_uploaded: s.blobs_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
        blobs_reused: s.blobs_reused.load(Ordering::Relaxed),
        bytes_reused: s.bytes_reused.load(Ordering::Relaxed),
        warnings,
    })
}

/// Freezes every tree of the plan; appends their image descriptors to `manifests`.
fn freeze_trees(
    repo: &Repository,
    plan: &FreezePlan,
    prev: &HashMap<PathBuf, PrevTree>,
    progress: &Progress,
    warnings: &mut Vec<String>,
    manifests: &mut Vec<Descriptor>,
) -> Result<Vec<TreeReport>> {
    let mut trees = Vec::new();
    for t in &plan.trees {
        progress.set_label(format!("freezing {}", t.name));
        progress.add_total(dir_size_hint(prev, &t.path));
        let mut ann = Annotations::new();
        ann.insert(A_TREE_NAME.into(), t.name.clone());
        ann.insert(A_TREE_PATH.into(), t.path.display().to_string());
        ann.insert(A_TITLE.into(), t.name.clone());
        let (mut desc, stats) = freeze_tree(repo, &t.path, prev.get(&t.path), ann, progress)
            .map_err(|e| prefix(e, &format!("freezing {}", t.path.display())))?;
        if stats.changed_during_read > 0 {
            warnings.push(format!(
                "{} files in {} changed while being read; they are stored as read and will be read again next time",
                stats.changed_during_read,
                t.path.display()
            ));
        }
        if stats.skipped_sockets > 0 {
            warnings.push(format!(
                "{} sockets in {} were skipped",
                stats.skipped_sockets,
                t.path.display()
            ));
        }
        desc.platform = Some(Platform::host());
        desc.annotations.insert(A_REF_NAME.into(), t.name.clone());
        desc.annotations.insert(A_TREE_NAME.into(), t.name.clone());
        desc.annotations
            .insert(A_TREE_PATH.into(), t.path.display().to_string());
        desc.annotations
            .insert(A_TREE_FILES.into(), stats.files.to_string());
        desc.annotations
            .insert(A_TREE_BYTES.into(), stats.bytes.to_string());
        manifests.push(desc);
        trees.push(TreeReport {
            name: t.name.clone(),
            path: t.path.clone(),
            stats,
        });
    }
    Ok(trees)
}

/// A progress total: the size the tree had last time (0 on a first freeze, when the
/// progress line shows bytes and rate without ETA).
fn dir_size_hint(prev: &HashMap<PathBuf, PrevTree>, path: &Path) -> u64 {
    prev.get(path).map_or(0, |p| p.trailer.bytes)
}

pub fn prefix(mut e: Error, what: &str) -> Error {
    if !e.message.contains(what) {
        e.message = format!("{what}: {}", e.message);
    }
    e
}

pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------
// snapshots

#[derive(Debug, Serialize)]
pub struct SnapshotInfo {
    pub site: String,
    pub id: String,
    pub created: String,
    pub host: String,
    pub mode: String,
    pub parent: Option<String>,
    pub trees: Vec<TreeInfo>,
    pub databases: Vec<DbInfo>,
}

#[derive(Debug, Serialize)]
pub struct DbInfo {
    pub name: String,
    pub tables: u64,
    pub rows: u64,
    pub manifest: Digest,
}

#[derive(Debug, Serialize)]
pub struct TreeInfo {
    pub name: String,
    pub path: String,
    pub files: u64,
    pub bytes: u64,
    pub manifest: Digest,
}

impl From<&Snapshot> for SnapshotInfo {
    fn from(s: &Snapshot) -> Self {
        let num = |d: &Descriptor, k: &str| {
            d.annotations
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        SnapshotInfo {
            site: s.site.clone(),
            id: s.id.clone(),
            created: s.annotation(A_CREATED).into(),
            host: s.annotation(A_HOST).into(),
            mode: s.annotation(A_MODE).into(),
            parent: s.record.annotations.get(A_PARENT).cloned(),
            databases: s
                .record
                .manifests
                .iter()
                .filter_map(|d| {
                    Some(DbInfo {
                        name: d.annotations.get(A_DB_NAME)?.clone(),
                        tables: num(d, A_DB_TABLES),
                        rows: num(d, A_DB_ROWS),
                        manifest: d.digest.clone(),
                    })
                })
                .collect(),
            trees: s
                .record
                .manifests
                .iter()
                .filter(|d| !d.annotations.contains_key(A_DB_NAME))
                .map(|d| TreeInfo {
                    name: d.annotations.get(A_TREE_NAME).cloned().unwrap_or_default(),
                    path: d.annotations.get(A_TREE_PATH).cloned().unwrap_or_default(),
                    files: num(d, A_TREE_FILES),
                    bytes: num(d, A_TREE_BYTES),
                    manifest: d.digest.clone(),
                })
                .collect(),
        }
    }
}

pub fn snapshots(repo: &Repository, site: Option<&str>) -> Result<Vec<SnapshotInfo>> {
    let mut out = Vec::new();
    for r in repo.list_snapshots(site)? {
        out.push(SnapshotInfo::from(&repo.read_snapshot(&r)?));
    }
    out.sort_by(|a, b| (&a.site, &a.created).cmp(&(&b.site, &b.created)));
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// thaw

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
    /// The target database exists with objects in it and will be dropped (--replace).
    pub replaces: bool,
    pub manifest: DbManifest,
}

#[derive(Debug, Serialize)]
pub struct ThawDbView {
    pub source: String,
    pub target: DbUrl,
    pub action: &'static str,
    pub tables: usize,
    pub rows: u64,
    pub chunks: usize,
}

pub struct ThawTree {
    pub name: String,
    pub source: PathBuf,
    pub dest: PathBuf,
    /// The destination exists and is not empty: it will be replaced (only with --replace).
    pub replaces: bool,
    pub plan: TreePlan,
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
    pub action: &'static str,
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
                    action: if t.replaces { "replace" } else { "create" },
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
                    action: if d.replaces { "replace" } else { "create" },
                    tables: d.manifest.tables.len(),
                    rows: d.manifest.tables.iter().map(|t| t.rows).sum(),
                    chunks: d.manifest.tables.iter().map(|t| t.chunks.len()).sum(),
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
) -> Result<Vec<(String, Digest, DbUrl)>> {
    let in_snapshot: Vec<(String, Digest)> = snapshot
        .record
        .manifests
        .iter()
        .filter_map(|m| Some((m.annotations.get(A_DB_NAME)?.clone(), m.digest.clone())))
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

/// Resolves the snapshot, verifies manifests and indexes, checks every destination and the
/// free space. Nothing is written.
pub fn plan_thaw(
    repo: &Repository,
    site: &str,
    snap: Option<&str>,
    into: Option<&Path>,
    replace: bool,
    db: &DbThawFlags,
) -> Result<ThawPlan> {
    let snapshot = repo.find_snapshot(site, snap)?;
    let mut databases = Vec::new();
    for (source, digest, target) in db_targets(&snapshot, &db.targets, db.skip)? {
        let (_, manifest) = crate::db::load::read_manifest(repo, &digest).map_err(|e| {
            prefix(
                e,
                &format!("snapshot {site}:{} database {source}", snapshot.id),
            )
        })?;
        let replaces = crate::db::load::check_target(&target, &manifest, replace)?;
        databases.push(ThawDb {
            source,
            target,
            replaces,
            manifest,
        });
    }
    let into = match into {
        Some(p) => Some(std::path::absolute(p).ctx(|| format!("resolving {}", p.display()))?),
        None => None,
    };
    let mut trees = Vec::new();
    let mut need: HashMap<PathBuf, u64> = HashMap::new();
    for m in &snapshot.record.manifests {
        if m.annotations.contains_key(A_DB_NAME) {
            continue;
        }
        let name = m.annotations.get(A_TREE_NAME).cloned().unwrap_or_default();
        let source = PathBuf::from(m.annotations.get(A_TREE_PATH).cloned().unwrap_or_default());
        if !source.is_absolute() {
            return Err(Error::integrity(format!(
                "snapshot {site}:{} names tree path {source:?}, which is not absolute",
                snapshot.id
            )));
        }
        let dest = match &into {
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
        if replaces && !replace {
            return Err(Error::conflict(format!("{} exists and is not empty", dest.display())).with_hint(
                "thaw into a new directory with --into DIR, or pass --replace to replace it (the old contents are removed only after the new ones are complete)",
            ));
        }
        let plan = TreePlan::load(repo, &m.digest)
            .map_err(|e| prefix(e, &format!("snapshot {site}:{} tree {name}", snapshot.id)))?;
        *need.entry(existing_ancestor(&dest)).or_default() += plan.trailer.bytes;
        trees.push(ThawTree {
            name,
            source,
            dest,
            replaces,
            plan,
        });
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

/// Refuses a thaw whose trees do not fit: bytes needed per existing directory (the
/// nearest existing ancestor of each destination).
pub fn check_free_space(need: &HashMap<PathBuf, u64>) -> Result<()> {
    for (fs_path, bytes) in need {
        if let Ok(free) = crate::sys::free_space(fs_path) {
            if free < bytes + bytes / 100 {
                return Err(Error::other(format!(
                    "not enough space at {}: the snapshot needs {}, {} is free",
                    fs_path.display(),
                    crate::progress::bytes(*bytes),
                    crate::progress::bytes(free)
                ))
                .with_hint("free space there, or thaw elsewhere"));
            }
        }
    }
    Ok(())
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
}

/// The nearest of `p` and its ancestors that exists.
pub fn existing_ancestor(p: &Path) -> PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return PathBuf::from("/");
        }
    }
    p
}

#[derive(Debug, Serialize)]
pub struct ThawReport {
    pub site: String,
    pub snapshot: String,
    pub seconds: f64,
    pub trees: Vec<ThawTreeReport>,
    pub databases: Vec<LoadReport>,
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
    let mut staged: Vec<PathBuf> = Vec::new();
    let mut created_dirs: Vec<PathBuf> = Vec::new();
    // Every file of every dump is downloaded and verified before any target is touched.
    let mut prepared = Vec::new();
    for d in &plan.databases {
        prepared.push(
            crate::db::load::fetch(repo, d.manifest.clone(), progress).map_err(|e| {
                prefix(
                    e,
                    &format!(
                        "snapshot {}:{} database {}",
                        plan.snapshot.site, plan.snapshot.id, d.source
                    ),
                )
                .with_hint("nothing was changed at the destination")
            })?,
        );
    }
    let mut db_reports = Vec::new();
    let result = (|| -> Result<Vec<ThawTreeReport>> {
        let mut reports = Vec::new();
        for t in &plan.trees {
            progress.add_total(t.plan.trailer.bytes);
        }
        for t in &plan.trees {
            progress.set_label(format!("thawing {}", t.name));
            let parent = t
                .dest
                .parent()
                .ok_or_else(|| Error::usage(format!("cannot thaw onto {}", t.dest.display())))?;
            create_parents(parent, &mut created_dirs)?;
            let staging = parent.join(format!(".freezer-thaw.{}.{}", t.name, random_suffix()));
            // Private while it fills; the snapshot's root mode is applied at the end.
            std::os::unix::fs::DirBuilderExt::mode(&mut fs::DirBuilder::new(), 0o700)
                .create(&staging)
                .ctx(|| format!("creating {}", staging.display()))?;
            staged.push(staging.clone());
            crate::interrupt::track(staging.clone());
            let stats = thaw_tree(repo, &t.plan, &staging, progress).map_err(|e| {
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
        let opts = LoadOptions {
            jobs: plan.db_jobs,
            replace: false,
            with_users: plan.db_with_users,
        };
        for (d, p) in plan.databases.iter().zip(&prepared) {
            let opts = LoadOptions {
                replace: d.replaces,
                ..opts.clone()
            };
            let r = load_database(p, &d.target, &opts, progress).map_err(|e| {
                prefix(
                    e,
                    &format!("loading database {} into {}", d.source, d.target),
                )
            })?;
            db_reports.push(r);
        }
        Ok(reports)
    })();
    let reports = match result {
        Ok(r) => r,
        Err(mut e) => {
            for s in &staged {
                let _ = fs::remove_dir_all(s);
                crate::interrupt::untrack(s);
            }
            for d in created_dirs.iter().rev() {
                let _ = fs::remove_dir(d);
            }
            if e.hint.is_none() {
                e.hint = Some("nothing was changed at the destination".into());
            }
            return Err(e);
        }
    };
    // Every tree is complete and verified; now move them into place. This step can still
    // fail (a destination that is a mount point, permissions); then say exactly which
    // trees are restored and which are not, and leave no staging directory behind.
    let mut installed: Vec<String> = Vec::new();
    for (i, (t, staging)) in plan.trees.iter().zip(&staged).enumerate() {
        if let Err(mut e) = install(staging, &t.dest) {
            for s in &staged[i..] {
                let _ = fs::remove_dir_all(s);
            }
            let rest: Vec<String> = plan.trees[i..]
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
            return Err(e);
        }
        crate::interrupt::untrack(staging);
        installed.push(t.dest.display().to_string());
    }
    Ok(ThawReport {
        site: plan.snapshot.site.clone(),
        snapshot: plan.snapshot.id.clone(),
        seconds: started.elapsed().as_secs_f64(),
        trees: reports,
        databases: db_reports,
    })
}

fn create_parents(dir: &Path, created: &mut Vec<PathBuf>) -> Result<()> {
    let mut missing = Vec::new();
    let mut p = dir.to_path_buf();
    while !p.exists() {
        missing.push(p.clone());
        if !p.pop() {
            break;
        }
    }
    for d in missing.into_iter().rev() {
        fs::create_dir(&d).ctx(|| format!("creating {}", d.display()))?;
        crate::interrupt::track_if_empty(d.clone());
        created.push(d);
    }
    Ok(())
}

/// Moves a complete staging directory to its destination. An existing destination is
/// swapped out atomically where the file system allows it, then removed.
fn install(staging: &Path, dest: &Path) -> Result<()> {
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
            ".freezer-old.{}.{}",
            dest.file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
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
    if meta.is_dir() {
        fs::remove_dir_all(&old).ctx(|| format!("removing the replaced {}", old.display()))
    } else {
        fs::remove_file(&old).ctx(|| format!("removing the replaced {}", old.display()))
    }
}

fn random_suffix() -> String {
    let mut b = [0u8; 4];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
}

// ---------------------------------------------------------------------------------------
// verify

#[derive(Debug, Default, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    pub snapshots: u64,
    pub blobs: u64,
    pub bytes: u64,
    pub problems: Vec<Problem>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Problem {
    pub snapshot: String,
    pub object: String,
    pub error: String,
}

/// Re-reads and hashes every blob the selected snapshots reference. Each blob is read once
/// even when many snapshots share it; every problem is reported, not just the first.
pub fn verify(
    repo: &Repository,
    site: Option<&str>,
    snap: Option<&str>,
    progress: &Progress,
) -> Result<VerifyReport> {
    let refs: Vec<SnapshotRef> = match (site, snap) {
        (Some(site), Some(_)) => {
            let s = repo.find_snapshot(site, snap)?;
            vec![SnapshotRef {
                site: s.site,
                id: s.id,
            }]
        }
        (site, _) => repo.list_snapshots(site)?,
    };
    let mut report = VerifyReport::default();
    let mut checked: HashMap<Digest, Option<String>> = HashMap::new();
    for r in &refs {
        report.snapshots += 1;
        let name = format!("{}:{}", r.site, r.id);
        let problem = |object: String, error: String| Problem {
            snapshot: name.clone(),
            object,
            error,
        };
        let snap = match repo.read_snapshot(r) {
            Ok(s) => s,
            Err(e) => {
                report
                    .problems
                    .push(problem(repo.record_key(r), e.to_string()));
                continue;
            }
        };
        for m in &snap.record.manifests {
            let mut blobs: Vec<Descriptor> = vec![m.clone()];
            match repo
                .read_blob(&m.digest)
                .and_then(|d| from_json::<ImageManifest>(&d, &m.digest.key()))
            {
                Ok(manifest) => {
                    let (more, err) = image_blobs(&manifest);
                    blobs.extend(more);
                    if let Some(e) = err {
                        report.problems.push(problem(m.digest.key(), e.to_string()));
                    }
                }
                Err(e) => report.problems.push(problem(m.digest.key(), e.to_string())),
            }
            for b in blobs {
                if !checked.contains_key(&b.digest) {
                    progress.set_label(format!("verifying {}", &b.digest.hex()[..12]));
                    let outcome = check_blob(repo, &b, progress);
                    if let Ok(n) = outcome {
                        report.blobs += 1;
                        report.bytes += n;
                    }
                    checked.insert(b.digest.clone(), outcome.err().map(|e| e.to_string()));
                }
                if let Some(err) = checked[&b.digest].clone() {
                    report.problems.push(problem(b.digest.key(), err));
                }
            }
        }
    }
    report.ok = report.problems.is_empty();
    Ok(report)
}

/// Every blob an image manifest references besides itself: its config, the tree index
/// of a tree image, and its layers. A tree image whose index cannot be named yields the
/// error alongside the blobs that can be named.
pub fn image_blobs(manifest: &ImageManifest) -> (Vec<Descriptor>, Option<Error>) {
    let mut blobs = vec![manifest.config.clone()];
    let mut err = None;
    // Database and container images have no tree index.
    if manifest.config.media_type != crate::db::MT_DB_CONFIG
        && !manifest.annotations.contains_key(A_CONTAINER_NAME)
    {
        match tree_index_digest(manifest) {
            Ok(d) => {
                let size = manifest
                    .annotations
                    .get(A_TREE_INDEX_SIZE)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                blobs.push(Descriptor::new(MT_TREE_INDEX, d, size));
            }
            Err(e) => err = Some(e),
        }
    }
    blobs.extend(manifest.layers.iter().cloned());
    (blobs, err)
}

fn check_blob(repo: &Repository, d: &Descriptor, progress: &Progress) -> Result<u64> {
    let mut r = repo.open_blob(&d.digest)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n =
            std::io::Read::read(&mut r, &mut buf).ctx(|| format!("reading {}", d.digest.key()))?;
        if n == 0 {
            break;
        }
        progress.add_done(n as u64);
    }
    let n = r.bytes_read();
    if d.size != 0 && n != d.size {
        return Err(Error::integrity(format!(
            "object {} has {n} bytes, its descriptor says {}",
            d.digest.key(),
            d.size
        )));
    }
    Ok(n)
}

// ---------------------------------------------------------------------------------------
// export

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub site: String,
    pub snapshot: String,
    /// The repository is encrypted and the layout was written decrypted (plaintext).
    pub decrypted: bool,
    pub dir: PathBuf,
    pub refs: Vec<String>,
    pub blobs: u64,
    pub bytes: u64,
}

/// Writes one snapshot as a standalone OCI image layout, one image per tree, each named
/// by its tree name (`skopeo inspect oci:DIR:NAME`).
pub fn export(
    repo: &Repository,
    site: &str,
    snap: Option<&str>,
    dir: &Path,
    gzip: bool,
) -> Result<ExportReport> {
    let snapshot = repo.find_snapshot(site, snap)?;
    if dir.exists()
        && fs::read_dir(dir)
            .ctx(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(
            Error::conflict(format!("{} exists and is not empty", dir.display()))
                .with_hint("export into a new directory"),
        );
    }
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).ctx(|| format!("creating {}", blob_dir.display()))?;
    let mut report = ExportReport {
        site: site.into(),
        snapshot: snapshot.id.clone(),
        decrypted: repo.keys().is_some(),
        dir: dir.to_path_buf(),
        refs: vec![],
        blobs: 0,
        bytes: 0,
    };
    let mut copied: BTreeSet<Digest> = BTreeSet::new();
    let (blobs, bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let count = |n: u64| {
        blobs.fetch_add(1, Ordering::Relaxed);
        bytes.fetch_add(n, Ordering::Relaxed);
    };
    let mut copy = |d: &Digest| -> Result<()> {
        if !copied.insert(d.clone()) {
            return Ok(());
        }
        let dest = blob_dir.join(d.hex());
        let mut tmp = tempfile::NamedTempFile::new_in(&blob_dir)
            .ctx(|| format!("creating a file in {}", blob_dir.display()))?;
        let mut r = repo.open_blob(d)?;
        let n =
            std::io::copy(&mut r, tmp.as_file_mut()).ctx(|| format!("exporting {}", d.key()))?;
        tmp.as_file_mut()
            .flush()
            .ctx(|| format!("writing {}", dest.display()))?;
        tmp.persist(&dest)
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error))?;
        count(n);
        Ok(())
    };
    let mut index = ImageIndex {
        schema_version: 2,
        media_type: MT_INDEX.into(),
        manifests: vec![],
        annotations: Annotations::new(),
    };
    for m in &snapshot.record.manifests {
        let mut manifest: ImageManifest = from_json(&repo.read_blob(&m.digest)?, &m.digest.key())?;
        let (blobs, err) = image_blobs(&manifest);
        if let Some(e) = err {
            return Err(e);
        }
        let mut d = m.clone();
        if gzip && !manifest.layers.is_empty() {
            // The same layers (same diff_ids, so the config stays), compressed anew: a new
            // manifest names them.
            for l in &mut manifest.layers {
                if l.media_type == MT_LAYER_ZSTD {
                    *l = regzip(repo, l, &blob_dir)?;
                    count(l.size);
                }
            }
            for b in blobs.iter().filter(|b| b.media_type != MT_LAYER_ZSTD) {
                copy(&b.digest)?;
            }
            let data = to_json(&manifest);
            let digest = Digest::of(&data);
            fs::write(blob_dir.join(digest.hex()), &data)
                .ctx(|| format!("writing {}", blob_dir.join(digest.hex()).display()))?;
            count(data.len() as u64);
            d.digest = digest;
            d.size = data.len() as u64;
        } else {
            copy(&m.digest)?;
            for b in &blobs {
                copy(&b.digest)?;
            }
        }
        d.annotations.insert(A_SITE.into(), site.into());
        d.annotations
            .insert("dev.freezer.snapshot".into(), snapshot.id.clone());
        if let Some(c) = snapshot.record.annotations.get(A_CREATED) {
            d.annotations.insert(A_CREATED.into(), c.clone());
        }
        if let Some(name) = d.annotations.get(A_REF_NAME) {
            report.refs.push(name.clone());
        }
        index.manifests.push(d);
    }
    report.blobs = blobs.into_inner();
    report.bytes = bytes.into_inner();
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .ctx(|| format!("writing {}/oci-layout", dir.display()))?;
    fs::write(dir.join("index.json"), to_json(&index))
        .ctx(|| format!("writing {}/index.json", dir.display()))?;
    Ok(report)
}

/// Writes a zstd layer of the repository into `blob_dir` as a gzip layer (verified as it
/// streams); returns its descriptor.
fn regzip(repo: &Repository, layer: &Descriptor, blob_dir: &Path) -> Result<Descriptor> {
    let mut tmp = tempfile::NamedTempFile::new_in(blob_dir)
        .ctx(|| format!("creating a file in {}", blob_dir.display()))?;
    let mut r = repo.open_blob(&layer.digest)?;
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    let mut size = 0u64;
    {
        struct Tee<'a, W> {
            w: W,
            hash: &'a mut sha2::Sha256,
            size: &'a mut u64,
        }
        impl<W: Write> Write for Tee<'_, W> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.w.write(b)?;
                sha2::Digest::update(self.hash, &b[..n]);
                *self.size += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.w.flush()
            }
        }
        let tee = Tee {
            w: std::io::BufWriter::new(tmp.as_file_mut()),
            hash: &mut hash,
            size: &mut size,
        };
        let mut gz = flate2::write::GzEncoder::new(tee, flate2::Compression::fast());
        let mut z = zstd::Decoder::new(&mut r).ctx(|| format!("reading {}", layer.digest.key()))?;
        std::io::copy(&mut z, &mut gz).ctx(|| format!("recompressing {}", layer.digest.key()))?;
        gz.finish()
            .and_then(|mut t| t.flush())
            .ctx(|| format!("writing {}", blob_dir.display()))?;
    }
    std::io::copy(&mut r, &mut std::io::sink())
        .ctx(|| format!("reading {}", layer.digest.key()))?;
    r.finish()?;
    let digest = Digest::from_hasher(hash);
    let dest = blob_dir.join(digest.hex());
    tmp.persist(&dest)
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error))?;
    let mut d = Descriptor::new(MT_LAYER_GZIP, digest, size);
    d.annotations = layer.annotations.clone();
    Ok(d)
}

// ---------------------------------------------------------------------------------------
// forget

#[derive(Debug, Serialize)]
pub struct ForgetReport {
    pub site: String,
    pub policy: Policy,
    pub dry_run: bool,
    pub kept: Vec<ForgetEntry>,
    pub removed: Vec<ForgetEntry>,
}

#[derive(Debug, Serialize)]
pub struct ForgetEntry {
    pub id: String,
    /// The rules that keep it (empty for removed snapshots).
    pub reasons: Vec<&'static str>,
}

/// Removes the snapshot records of `site` that `policy` does not keep (SPEC.md §11). The
/// blobs stay until `prune`, so a forget is cheap and a mistaken one is undone by
/// writing the record back.
pub fn forget(
    repo: &Repository,
    site: &str,
    policy: &Policy,
    dry_run: bool,
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
        return Err(Error::not_found(format!(
            "site {site} has no snapshots in {}",
            repo.location()
        )));
    }
    // The creation time (nanoseconds) orders snapshots taken within the same second.
    let mut snapshots = Vec::new();
    for r in &refs {
        let created = repo.read_snapshot(r)?.annotation(A_CREATED).to_string();
        snapshots.push((r.id.clone(), created));
    }
    let mut report = ForgetReport {
        site: site.to_string(),
        policy: *policy,
        dry_run,
        kept: vec![],
        removed: vec![],
    };
    for (id, reasons) in crate::retention::apply(policy, &snapshots) {
        if reasons.is_empty() {
            if !dry_run {
                let r = SnapshotRef {
                    site: site.to_string(),
                    id: id.clone(),
                };
                repo.store().delete(&repo.record_key(&r))?;
            }
            report.removed.push(ForgetEntry { id, reasons });
        } else {
            report.kept.push(ForgetEntry { id, reasons });
        }
    }
    Ok(report)
}
