//! `freezer freeze`: plan what a site is made of (trees, databases, containers), then
//! store it as one snapshot record.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use super::hooks::{self, HookEnv, HookReport, HostHooks, When};
use super::images::{store_container, KnownImages};
use super::*;
use crate::db::model::{DbReport, DumpOptions};
use crate::db::ToolsAt;
use crate::db::{DbUrl, Dump};
use crate::docker::capture::{CapturedSite, Consistency, WindowReport, LABEL_CONSISTENCY};
use crate::docker::ContainerEngine;
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::{Repository, SnapshotRef};
use crate::sys::hostname;
use crate::tree::freeze::ReadRules;
use crate::tree::sqlite::{How, Sqlite};
use crate::tree::{freeze_tree, FreezeStats, PrevTree, TreeSpec};

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
    /// The site's host commands around the freeze (its containers' come from labels).
    pub hooks: HostHooks,
    /// How SQLite databases in trees read while the site runs are copied.
    #[serde(serialize_with = "sqlite_rule")]
    pub sqlite: Sqlite,
}

fn sqlite_rule<S: serde::Serializer>(r: &Sqlite, s: S) -> std::result::Result<S::Ok, S::Error> {
    match r {
        Sqlite::AsFiles => s.serialize_str("as-files"),
        Sqlite::Consistent { .. } => s.serialize_str("consistent"),
    }
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
    /// Dehydrated: the containers paused or stopped for the copy of their own volumes
    /// while the rest of the site runs (by name; the others are copied live).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub consistency: BTreeMap<String, Consistency>,
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

impl FreezePlan {
    /// What the snapshot will hold.
    pub fn mode(&self) -> Mode {
        if self.docker.as_ref().is_some_and(|d| d.hold) {
            Mode::Hydrated
        } else if self.databases.is_empty() {
            Mode::Files
        } else {
            Mode::Dehydrated
        }
    }
}

/// A freeze as asked for: the site's trees and databases as the command line and the
/// config file name them, and the options. [`plan_site`] decides what that means.
#[derive(Debug, Clone)]
pub struct FreezeRequest {
    pub site: String,
    /// From `--path`, else the config file.
    pub trees: Vec<TreeSpec>,
    /// From `--db`, else the config file.
    pub databases: Vec<DbUrl>,
    /// `SITE@HOST`: the host named, if any, and the Docker engine of the host (this
    /// machine's when none is named).
    pub host: Option<String>,
    pub engine: crate::docker::Endpoint,
    /// `--mode`; None: decided by what the site has.
    pub mode: Option<Mode>,
    /// Hydrated: stop the containers for the copy instead of pausing them.
    pub stop: bool,
    /// Docker sites: also store each container's image.
    pub with_images: bool,
    /// Hydrated: also store each container's writable layer.
    pub with_writable_layer: bool,
    pub db_jobs: usize,
    pub db_chunk_bytes: Option<u64>,
    pub db_with_users: bool,
    pub lock_wait: std::time::Duration,
    /// Left out of every tree (`--exclude…` and the config file), after each tree's own
    /// (a Docker container's labels).
    pub excludes: crate::tree::exclude::Excludes,
    /// The site's host hooks (freezer.toml).
    pub hooks: HostHooks,
    /// How SQLite databases are copied from a running site (freezer.toml).
    pub sqlite: Sqlite,
    /// Per service or container name: how its volumes are copied in a dehydrated freeze
    /// (freezer.toml; the container label `dev.freezer.consistency` otherwise).
    pub consistency: BTreeMap<String, Consistency>,
}

/// The containers of a dehydrated freeze that are held for the copy of their own
/// volumes: the site's setting for the service (or container), else the label.
fn consistency_of(
    site: &CapturedSite,
    settings: &BTreeMap<String, Consistency>,
) -> Result<BTreeMap<String, Consistency>> {
    let mut out = BTreeMap::new();
    for c in &site.containers {
        let label = c.config["Labels"][LABEL_CONSISTENCY].as_str();
        let mode = match settings.get(c.service()).or(settings.get(&c.name)) {
            Some(m) => *m,
            None => match label {
                None => Consistency::Live,
                Some(v) => Consistency::parse(v).ok_or_else(|| {
                    Error::usage(format!(
                        "container {} has label {LABEL_CONSISTENCY}={v:?}: expected live, pause, stop or hook",
                        c.name
                    ))
                })?,
            },
        };
        if matches!(mode, Consistency::Pause | Consistency::Stop) {
            out.insert(c.name.clone(), mode);
        }
    }
    Ok(out)
}

/// Decides how a site is frozen and plans it. A site with neither trees nor databases
/// configured is a Docker site: hydrated unless a dehydrated freeze is asked for (its
/// database containers dumped, their volumes left out, the other mounts copied live).
pub fn plan_site(repo: &Repository, req: FreezeRequest) -> Result<FreezePlan> {
    // A pattern that does not parse fails the plan, not the night's freeze halfway.
    req.excludes.matcher()?;
    let FreezeRequest {
        site,
        mut trees,
        mut databases,
        ..
    } = req.clone();
    let unconfigured = trees.is_empty() && databases.is_empty();
    // Some(hydrated) for a Docker site, None for a site of directories and databases.
    let docker_mode = match req.mode {
        Some(Mode::Hydrated) => Some(true),
        Some(Mode::Dehydrated) if unconfigured => Some(false),
        None if unconfigured => Some(true),
        _ => None,
    };
    if ((req.stop || req.with_writable_layer) && docker_mode != Some(true))
        || (req.with_images && docker_mode.is_none())
    {
        return Err(Error::usage(
            "--stop and --with-writable-layer apply to hydrated freezes of Docker sites, --with-images to Docker sites",
        ));
    }
    if req.host.is_some() && docker_mode.is_none() {
        return Err(Error::usage(format!(
            "site {site} is a site of directories and databases on this machine; SITE@HOST applies to Docker sites"
        )));
    }
    let mut docker = None;
    if let Some(hydrated) = docker_mode {
        let engine = crate::docker::Engine::connect_to(&req.engine)?;
        let mut captured = super::sources::capture(&engine, &site)?;
        if hydrated {
            databases.clear();
            if !req.stop && !engine.flavor.can_pause {
                return Err(Error::usage(format!(
                    "the engine at {} is rootless on cgroup v1, where it cannot pause containers",
                    engine.endpoint.host
                ))
                .with_hint("freeze with --stop (the containers are stopped for the copy and started again), or move the host to cgroup v2"));
            }
            if req.with_writable_layer {
                captured.include_writable_layers()?;
            }
        } else {
            databases = super::sources::databases(&engine, &captured)?;
            if databases.is_empty() {
                return Err(Error::usage(format!(
                    "Docker site {site} has no database container (MariaDB or MySQL whose environment names MARIADB_DATABASE or MYSQL_DATABASE, PostgreSQL with POSTGRES_PASSWORD) to dump"
                ))
                .with_hint("freeze it hydrated (--mode hydrated), or pass --db URL"));
            }
            super::sources::drop_database_data(&mut captured);
        }
        if let Some(t) = captured.trees.first() {
            engine.refuse_rootless_files(&format!("copying {} of site {site}", t.name))?;
        }
        trees = super::sources::trees(&captured)?;
        let consistency = match hydrated {
            true => BTreeMap::new(),
            false => consistency_of(&captured, &req.consistency)?,
        };
        docker = Some(DockerFreeze {
            engine_host: engine.endpoint.host.clone(),
            engine,
            site: captured,
            hold: hydrated,
            stop: req.stop,
            with_images: req.with_images,
            consistency,
        });
    }
    match req.mode {
        Some(Mode::Files) => databases.clear(),
        Some(Mode::Dehydrated) if databases.is_empty() => {
            return Err(Error::usage(format!("site {site} has no database to dump"))
                .with_hint("pass --db mysql://USER@HOST/DB, or list databases under [sites.NAME] in freezer.toml"));
        }
        _ => {}
    }
    for t in &mut trees {
        t.excludes = t.excludes.merged(&req.excludes);
        t.excludes.matcher()?;
    }
    let mut plan = plan_freeze(repo, &site, trees, databases, req.db_jobs, docker)?;
    if let Some(c) = req.db_chunk_bytes {
        plan.db_chunk_bytes = c;
    }
    plan.db_with_users = req.db_with_users;
    plan.lock_wait = req.lock_wait;
    plan.hooks = req.hooks;
    plan.sqlite = req.sqlite;
    Ok(plan)
}

/// What a freeze would leave out of one tree (`--dry-run`).
#[derive(Debug, Serialize)]
pub struct TreeExcluded {
    pub tree: String,
    pub excluded: Vec<crate::tree::walk::ExcludedPath>,
}

/// Walks the plan's trees as the freeze will and lists what their rules leave out, with
/// the files and bytes under each excluded path. Reads only metadata.
pub fn preview_excludes(plan: &FreezePlan) -> Result<Vec<TreeExcluded>> {
    let mut out = Vec::new();
    for t in plan.trees.iter().filter(|t| !t.excludes.is_empty()) {
        let excluded = crate::tree::walk::excluded_paths(&t.path, &t.excludes.matcher()?)
            .map_err(|e| prefix(e, &format!("walking {}", t.path.display())))?;
        out.push(TreeExcluded {
            tree: t.name.clone(),
            excluded,
        });
    }
    Ok(out)
}

/// A safety snapshot of a site about to be replaced by a thaw: the Docker site `target`
/// as it runs (hydrated); when it has no containers left, the volumes and directories
/// `replaced` (name, path) that the thaw will overwrite (volumes, directories and single
/// files).
pub fn freeze_before_replace(
    repo: &Repository,
    engine: &crate::docker::Endpoint,
    target: &str,
    replaced: &[(String, PathBuf)],
    progress: &Progress,
) -> Result<String> {
    let engine = crate::docker::Engine::connect_to(engine)?;
    let captured = super::sources::capture(&engine, target);
    let plan = match captured {
        Ok(captured) => {
            let trees = super::sources::trees(&captured)?;
            let docker = DockerFreeze {
                engine_host: engine.endpoint.host.clone(),
                engine,
                site: captured,
                hold: true,
                stop: false,
                with_images: false,
                consistency: BTreeMap::new(),
            };
            plan_freeze(repo, target, trees, vec![], 1, Some(docker))?
        }
        Err(e) if e.kind == ErrorKind::NotFound => {
            let mut trees: Vec<TreeSpec> = Vec::new();
            for (name, path) in replaced {
                if path.is_dir() {
                    trees.push(TreeSpec::new(name.clone(), path.clone()));
                    continue;
                }
                // A replaced file: kept in a tree of its directory that holds only the
                // replaced files of it.
                let (Some(dir), Some(file)) = (path.parent(), path.file_name()) else {
                    continue;
                };
                let file = file.to_string_lossy();
                match trees.iter_mut().find(|t| t.name == *name && t.path == dir) {
                    Some(t) => t.excludes.keep_file(&file),
                    None => trees.push(TreeSpec {
                        excludes: crate::tree::exclude::Excludes::only_files([&*file]),
                        ..TreeSpec::new(name.clone(), dir.to_path_buf())
                    }),
                }
            }
            plan_freeze(repo, target, trees, vec![], 1, None)?
        }
        Err(e) => return Err(e),
    };
    Ok(freeze(repo, &plan, progress)?.snapshot)
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
        hooks: HostHooks::default(),
        sqlite: Sqlite::default(),
    })
}

#[derive(Debug, Serialize)]
pub struct FreezeReport {
    pub site: String,
    pub snapshot: String,
    pub parent: Option<String>,
    pub seconds: f64,
    pub mode: Mode,
    /// The containers of a Docker site.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<String>,
    /// How long the site was paused or stopped (Docker sites).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowReport>,
    /// A dehydrated freeze: how long the containers held by their consistency setting
    /// were paused or stopped, for the copy of their own volumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub windows: Vec<WindowReport>,
    pub trees: Vec<TreeReport>,
    pub databases: Vec<DbReport>,
    /// The Redis servers that saved a point-in-time copy before their volumes were copied.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub redis: Vec<crate::db::redis::Saved>,
    pub blobs_uploaded: u64,
    pub bytes_uploaded: u64,
    pub blobs_reused: u64,
    pub bytes_reused: u64,
    pub warnings: Vec<String>,
    /// The hooks that ran, in order (SPEC.md §9, "Hooks").
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<HookReport>,
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
    // Taken before any hook runs: a freeze that cannot start puts no site in maintenance.
    let _lock =
        crate::lock::acquire_waiting(repo, "freeze", Some(&plan.site), plan.lock_wait, progress)?;
    let mut env = HookEnv {
        site: plan.site.clone(),
        mode: Some(plan.mode().as_str().into()),
        repo: repo.location(),
        ..Default::default()
    };
    // Hooks run in the containers that run (a stopped one cannot exec).
    let container_hooks = |when: When| match &plan.docker {
        Some(d) => {
            let running: Vec<_> = d
                .site
                .containers
                .iter()
                .filter(|c| c.state == "running")
                .cloned()
                .collect();
            hooks::container_hooks(&running, when)
        }
        None => Ok(vec![]),
    };
    let mut ran: Vec<HookReport> = Vec::new();
    let mut note = |r: HookReport, progress: &Progress| {
        progress.announce("hook", &r);
        ran.push(r.clone());
        r
    };
    // The failure of a before-hook that may not fail.
    let mut stopped: Option<Error> = None;
    // Before: the host's, then the containers'; the first that fails (and may not) stops.
    if let Some(cmd) = plan.hooks.command(When::BeforeFreeze) {
        progress.set_label("running the before-freeze hook".to_string());
        let r = note(
            hooks::run_host(When::BeforeFreeze, cmd, &env, plan.hooks.timeout),
            progress,
        );
        if !r.ok && !plan.hooks.continue_on_error {
            stopped = Some(r.failure());
        }
    }
    let engine = plan.docker.as_ref().map(|d| &d.engine);
    if stopped.is_none() {
        for h in container_hooks(When::BeforeFreeze)? {
            progress.set_label(format!("running the before-freeze hook in {}", h.container));
            let r = note(
                hooks::run_in_container(
                    engine.expect("container hooks need a site"),
                    When::BeforeFreeze,
                    &h,
                ),
                progress,
            );
            if !r.ok && !h.may_fail {
                stopped = Some(r.failure());
                break;
            }
        }
    }
    let result = match stopped {
        None => freeze_locked(repo, plan, progress),
        Some(e) => Err(e),
    };
    // After: whatever happened, as the pause window is always undone.
    for h in container_hooks(When::AfterFreeze)? {
        progress.set_label(format!("running the after-freeze hook in {}", h.container));
        note(
            hooks::run_in_container(
                engine.expect("container hooks need a site"),
                When::AfterFreeze,
                &h,
            ),
            progress,
        );
    }
    match &result {
        Ok(r) => env.snapshot = Some(r.snapshot.clone()),
        Err(e) => env.error = Some(e.to_string()),
    }
    if let Some(cmd) = plan.hooks.command(When::AfterFreeze) {
        note(
            hooks::run_host(When::AfterFreeze, cmd, &env, plan.hooks.timeout),
            progress,
        );
    }
    if let (Err(_), Some(cmd)) = (&result, plan.hooks.command(When::OnError)) {
        note(
            hooks::run_host(When::OnError, cmd, &env, plan.hooks.timeout),
            progress,
        );
    }
    let mut report = result?;
    report.hooks = ran;
    Ok(report)
}

/// What tonight's freeze reuses from the parent snapshot.
struct Parent {
    /// Its trees, by path.
    trees: HashMap<PathBuf, PrevTree>,
    /// Its database manifests (their chunk sizes are kept), by database.
    databases: HashMap<String, Dump>,
    /// Its container images (with --with-images, their layers are not read again).
    containers: Vec<ImageManifest>,
}

/// Reads the parent snapshot's parts that this freeze reuses. A damaged or unreadable
/// one is no reason to skip tonight's backup: that part is frozen in full, with a warning.
fn read_parent(repo: &Repository, plan: &FreezePlan, warnings: &mut Vec<String>) -> Result<Parent> {
    let mut prev: HashMap<PathBuf, PrevTree> = HashMap::new();
    let mut prev_db: HashMap<String, Dump> = HashMap::new();
    let mut parent_containers: Vec<ImageManifest> = Vec::new();
    if let Some(id) = &plan.parent {
        let snap = repo.read_snapshot(&SnapshotRef {
            site: plan.site.clone(),
            id: id.clone(),
        })?;
        for part in snap.parts() {
            let m = part.image();
            if let Part::Container { .. } = part {
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
            if let Part::Database { name: db, .. } = part {
                if plan.databases.iter().any(|d| d.database == db) {
                    match Dump::read(repo, &m.digest) {
                        Ok(manifest) => {
                            prev_db.insert(db.to_string(), manifest);
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
    Ok(Parent {
        trees: prev,
        databases: prev_db,
        containers: parent_containers,
    })
}

/// The freeze itself, under the lock, between the hooks.
/// The snapshot's record: its manifests and the annotations that describe it.
/// The record that makes a snapshot of `site` out of its parts' manifests.
pub(crate) fn snapshot_record(
    (site, mode, parent): (&str, Mode, Option<&str>),
    manifests: Vec<Descriptor>,
    created: SystemTime,
) -> ImageIndex {
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
    a.insert(A_SITE.into(), site.to_string());
    a.insert(A_MODE.into(), mode.as_str().into());
    a.insert(A_HOST.into(), hostname());
    a.insert(A_CREATED.into(), rfc3339(created));
    a.insert(A_NONCE.into(), hex::encode(nonce));
    if let Some(p) = parent {
        a.insert(A_PARENT.into(), p.to_string());
    }
    record
}

/// A Docker site: the containers' images first (outside the window), then the volumes
/// while the site is held still (a remote engine's mirrored here first, inside it).
fn freeze_docker(
    repo: &Repository,
    plan: &FreezePlan,
    d: &DockerFreeze,
    (prev, parent_containers): (&HashMap<PathBuf, PrevTree>, &[ImageManifest]),
    progress: &Progress,
    warnings: &mut Vec<String>,
    manifests: &mut Vec<Descriptor>,
) -> Result<SiteCopy> {
    progress.set_label("storing container configurations".to_string());
    let mut known = KnownImages::default();
    for m in parent_containers {
        if let Ok(k) = KnownImages::read(repo, m) {
            known.extend(k);
        }
    }
    for spec in &d.site.containers {
        manifests.push(
            store_container(repo, &d.engine, spec, d.with_images, &mut known)
                .map_err(|e| prefix(e, &format!("storing container {}", spec.name)))?,
        );
    }
    // Redis servers write a point-in-time copy first, which the volumes' copy then holds.
    let redis = save_redis(d, progress, warnings)?;
    let pull = || -> Result<()> {
        if !d.engine.is_local() {
            progress.set_label("copying the volumes through the engine".to_string());
            d.site.pull_mirrors(&d.engine)?;
        }
        Ok(())
    };
    if !d.hold {
        let (trees, windows) = copy_live(repo, plan, d, prev, &pull, (progress, warnings))?;
        return Ok(SiteCopy {
            trees: in_plan_order(trees, manifests),
            window: None,
            windows,
            redis,
        });
    }
    let all: Vec<usize> = (0..plan.trees.len()).collect();
    let (trees, w) =
        crate::docker::capture::hold(&d.engine, &d.site, d.stop, progress.cancel(), || {
            pull()?;
            freeze_trees(repo, plan, &all, true, prev, progress, warnings)
        })?;
    Ok(SiteCopy {
        trees: in_plan_order(trees, manifests),
        window: Some(w),
        windows: vec![],
        redis,
    })
}

/// What the copy of a site's trees did.
#[derive(Default)]
struct SiteCopy {
    trees: Vec<TreeReport>,
    window: Option<WindowReport>,
    windows: Vec<WindowReport>,
    redis: Vec<crate::db::redis::Saved>,
}

/// Trees copied, each with its place in the plan.
type Copied = Vec<(usize, Descriptor, TreeReport)>;

/// The trees' reports in the plan's order; their descriptors appended to `manifests`.
fn in_plan_order(mut copied: Copied, manifests: &mut Vec<Descriptor>) -> Vec<TreeReport> {
    copied.sort_by_key(|(i, _, _)| *i);
    let mut reports = Vec::new();
    for (_, desc, report) in copied {
        manifests.push(desc);
        reports.push(report);
    }
    reports
}

/// Copies a running site's trees: those of containers held by their consistency
/// setting ([`DockerFreeze::consistency`]) while only those containers are paused or
/// stopped (one window each group that shares trees), the others live. A remote engine's
/// mirrors are pulled in one go, so there the held containers are held for all of it.
fn copy_live(
    repo: &Repository,
    plan: &FreezePlan,
    d: &DockerFreeze,
    prev: &HashMap<PathBuf, PrevTree>,
    pull: &dyn Fn() -> Result<()>,
    (progress, warnings): (&Progress, &mut Vec<String>),
) -> Result<(Copied, Vec<WindowReport>)> {
    let all: Vec<usize> = (0..plan.trees.len()).collect();
    if d.consistency.is_empty() {
        pull()?;
        let copied = freeze_trees(repo, plan, &all, false, prev, progress, warnings)?;
        return Ok((copied, vec![]));
    }
    // The held containers that mount each tree; trees grouped by that set.
    let holders = |t: &TreeSpec| -> Vec<&str> {
        d.site
            .containers
            .iter()
            .filter(|c| c.state == "running" && d.consistency.contains_key(&c.name))
            .filter(|c| c.mounts.iter().any(|m| m.tree == t.name))
            .map(|c| c.name.as_str())
            .collect()
    };
    let mut groups: Vec<(Vec<&str>, Vec<usize>)> = Vec::new();
    if d.engine.is_local() {
        for (i, t) in plan.trees.iter().enumerate() {
            let h = holders(t);
            match groups.iter_mut().find(|g| g.0 == h) {
                Some(g) => g.1.push(i),
                None => groups.push((h, vec![i])),
            }
        }
    } else {
        let mut h: Vec<&str> = plan.trees.iter().flat_map(holders).collect();
        h.sort();
        h.dedup();
        groups.push((h, all));
    }
    let mut copied = Vec::new();
    let mut windows = Vec::new();
    for (held, trees) in groups {
        let held_still = !held.is_empty();
        let copy = |warnings: &mut Vec<String>| -> Result<Copied> {
            if !d.engine.is_local() {
                pull()?;
            }
            freeze_trees(repo, plan, &trees, held_still, prev, progress, warnings)
        };
        if held.is_empty() {
            copied.extend(copy(warnings)?);
            continue;
        }
        let by = |m: Consistency| -> Vec<&str> {
            held.iter()
                .copied()
                .filter(|n| d.consistency[*n] == m)
                .collect()
        };
        let (paused, stopped) = (by(Consistency::Pause), by(Consistency::Stop));
        let cancel = progress.cancel();
        use crate::docker::capture::hold;
        // Stopped ones first (a clean shutdown), then the paused ones: one window each.
        let (stop_site, pause_site) = (d.site.only(&stopped), d.site.only(&paused));
        let ((got, w_pause), w_stop) = hold(&d.engine, &stop_site, true, cancel, || {
            hold(&d.engine, &pause_site, false, cancel, || copy(warnings))
        })?;
        copied.extend(got);
        windows.extend(
            [w_stop, w_pause]
                .into_iter()
                .filter(|w| !w.containers.is_empty()),
        );
    }
    Ok((copied, windows))
}

/// How long a Redis server may take to save its data set.
const REDIS_SAVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(600);

/// Asks each running Redis server of the site for a point-in-time copy and waits for it
/// ([`crate::db::redis`]). A server that cannot save is named in a warning, and its
/// files are copied as they are.
fn save_redis(
    d: &DockerFreeze,
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Result<Vec<crate::db::redis::Saved>> {
    let mut saved = Vec::new();
    for spec in d.site.containers.iter().filter(|c| c.state == "running") {
        let read = |path: &str| crate::docker::capture::read_file_in(&d.engine, &spec.name, path);
        let env = |k: &str| spec.env(k);
        let Some(server) = crate::db::redis::detect(&spec.name, &spec.argv(), &env, &read) else {
            continue;
        };
        progress.check(|| format!("saving Redis in container {}", spec.name))?;
        progress.set_label(format!("saving Redis in container {}", spec.name));
        let exec = exec_in(&d.engine, &spec.name);
        match server.save(&exec, REDIS_SAVE_TIMEOUT) {
            Ok(s) => {
                let on_volume = s.file.as_deref().is_none_or(|f| {
                    spec.mounts.iter().any(|m| {
                        !m.tree.is_empty()
                            && f.starts_with(&format!("{}/", m.destination.trim_end_matches('/')))
                    })
                });
                if !on_volume {
                    warnings.push(format!(
                        "Redis in container {} saves to {}, which is on none of its volumes: the snapshot does not hold its data",
                        spec.name,
                        s.file.as_deref().unwrap_or_default()
                    ));
                }
                saved.push(s);
            }
            Err(e) => warnings.push(format!(
                "{}; its files are copied as they are, as of its last save",
                e.message
            )),
        }
    }
    Ok(saved)
}

fn freeze_locked(
    repo: &Repository,
    plan: &FreezePlan,
    progress: &Progress,
) -> Result<FreezeReport> {
    let started = Instant::now();
    let created = crate::sys::now();
    let mut warnings: Vec<String> = plan
        .docker
        .iter()
        .flat_map(|d| d.site.recovered.iter().cloned())
        .collect();

    let Parent {
        trees: prev,
        databases: prev_db,
        containers: parent_containers,
    } = read_parent(repo, plan, &mut warnings)?;

    // A Docker site: the containers' images first (outside the window), then the volumes
    // while the site is held still.
    let mut manifests = Vec::new();
    let SiteCopy {
        trees,
        mut window,
        mut windows,
        redis,
    } = match &plan.docker {
        None => {
            let all: Vec<usize> = (0..plan.trees.len()).collect();
            let copied = freeze_trees(repo, plan, &all, false, &prev, progress, &mut warnings)?;
            SiteCopy {
                trees: in_plan_order(copied, &mut manifests),
                ..Default::default()
            }
        }
        Some(d) => freeze_docker(
            repo,
            plan,
            d,
            (&prev, &parent_containers),
            progress,
            &mut warnings,
            &mut manifests,
        )?,
    };

    let databases = dump_databases(
        repo,
        plan,
        &prev_db,
        progress,
        &mut warnings,
        &mut manifests,
    )?;

    let mode = plan.mode();
    let record = snapshot_record(
        (&plan.site, mode, plan.parent.as_deref()),
        manifests,
        created,
    );
    // Last: the record makes the snapshot visible, and every blob it names exists by now.
    // Not after a signal: an interrupted freeze records nothing.
    progress.check(|| "recording the snapshot".into())?;
    let r = repo.write_record(&plan.site, &record, created)?;
    // The snapshot is safe; the site is given back as healthy as it was found.
    if let Some(d) = &plan.docker {
        for w in window.iter_mut().chain(windows.iter_mut()) {
            progress.set_label("waiting for the containers' health checks".to_string());
            warnings.extend(crate::docker::capture::await_health(&d.engine, &d.site, w));
        }
    }
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
        windows,
        trees,
        databases,
        redis,
        blobs_uploaded: s.blobs_uploaded.load(Ordering::Relaxed),
        bytes_uploaded: s.bytes_uploaded.load(Ordering::Relaxed),
        blobs_reused: s.blobs_reused.load(Ordering::Relaxed),
        bytes_reused: s.bytes_reused.load(Ordering::Relaxed),
        warnings,
        hooks: vec![],
    })
}

/// Freezes every tree of the plan; appends their image descriptors to `manifests`.
fn freeze_trees(
    repo: &Repository,
    plan: &FreezePlan,
    which: &[usize],
    held: bool,
    prev: &HashMap<PathBuf, PrevTree>,
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Result<Copied> {
    let mut trees = Vec::new();
    // A site held still is copied as files, its databases with it. A remote engine's
    // volumes are mirrored here through its archive API while the site runs, so no
    // SQLite lock guards that copy: its databases are copied as files, and named.
    let mirrored = plan.docker.as_ref().is_some_and(|d| !d.engine.is_local());
    for &i in which {
        let t = &plan.trees[i];
        progress.set_label(format!("freezing {}", t.name));
        progress.add_total(dir_size_hint(prev, &t.path));
        let sqlite = match held || mirrored || t.sqlite_as_files {
            true => Sqlite::AsFiles,
            false => plan.sqlite,
        };
        let (desc, report) =
            freeze_one_tree(repo, t, prev.get(&t.path), sqlite, progress, warnings)?;
        if mirrored && !held && !t.sqlite_as_files {
            for f in report.stats.sqlite.iter().filter(|f| f.how == How::AsFiles) {
                warnings.push(format!(
                    "SQLite database {} in {} was copied through the remote engine while the site ran, as files: the copy may be torn (freeze hydrated for a consistent copy)",
                    f.path, t.name
                ));
            }
        }
        trees.push((i, desc, report));
    }
    Ok(trees)
}

/// Freezes one tree: its manifest, annotated as a snapshot's tree, and what was read.
pub(crate) fn freeze_one_tree(
    repo: &Repository,
    t: &TreeSpec,
    prev: Option<&PrevTree>,
    sqlite: Sqlite,
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Result<(Descriptor, TreeReport)> {
    let mut ann = Annotations::new();
    ann.insert(A_TREE_NAME.into(), t.name.clone());
    ann.insert(A_TREE_PATH.into(), t.path.display().to_string());
    ann.insert(A_TITLE.into(), t.name.clone());
    let matcher = match t.excludes.is_empty() {
        true => None,
        false => {
            ann.insert(
                A_TREE_EXCLUDES.into(),
                serde_json::to_string(&t.excludes).expect("rules serialize"),
            );
            Some(t.excludes.matcher()?)
        }
    };
    let rules = ReadRules {
        excludes: matcher.as_ref(),
        sqlite,
    };
    let (mut desc, stats) = freeze_tree(repo, &t.path, prev, &rules, ann, progress)
        .map_err(|e| prefix(e, &format!("freezing {}", t.path.display())))?;
    for f in &stats.sqlite {
        let why = match (f.how, &f.error) {
            (How::Locked, _) => "stayed locked".to_string(),
            (How::Unreadable, Some(e)) => format!("could not be read by SQLite ({e})"),
            _ => continue,
        };
        warnings.push(format!(
            "SQLite database {} in {} {why}, so it was copied as files: the copy may be torn",
            f.path,
            t.path.display()
        ));
    }
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
    let path = t.path.display().to_string();
    desc.annotations = Part::tree_annotations(&t.name, &path, stats.files, stats.bytes);
    let report = TreeReport {
        name: t.name.clone(),
        path: t.path.clone(),
        stats,
    };
    Ok((desc, report))
}

/// A progress total: the size the tree had last time (0 on a first freeze, when the
/// progress line shows bytes and rate without ETA).
fn dir_size_hint(prev: &HashMap<PathBuf, PrevTree>, path: &Path) -> u64 {
    prev.get(path).map_or(0, |p| p.trailer.bytes)
}

/// Dumps the plan's databases (each after its previous snapshot's dump, so unchanged
/// chunks are reused): their images' descriptors go to `manifests`, their warnings to
/// `warnings`.
fn dump_databases(
    repo: &Repository,
    plan: &FreezePlan,
    prev_db: &HashMap<String, Dump>,
    progress: &Progress,
    warnings: &mut Vec<String>,
    manifests: &mut Vec<Descriptor>,
) -> Result<Vec<DbReport>> {
    let mut reports = Vec::new();
    let db_opts = DumpOptions {
        jobs: plan.db_jobs,
        chunk_bytes: plan.db_chunk_bytes,
        with_users: plan.db_with_users,
        ..DumpOptions::default()
    };
    for url in &plan.databases {
        let prev = prev_db.get(&url.database);
        // A Docker site's database is dumped with its container's own tools.
        let container = plan.docker.as_ref().and_then(|d| {
            let name = d.site.database_container(&url.database)?;
            Some((name.to_string(), exec_in(&d.engine, name)))
        });
        let at = match &container {
            Some((name, exec)) => ToolsAt::Container {
                name: name.clone(),
                exec,
            },
            None => ToolsAt::Host,
        };
        let (desc, report) = crate::db::freeze_database(repo, url, &at, prev, &db_opts, progress)
            .map_err(|e| prefix(e, &format!("dumping {url}")))?;
        warnings.extend(report.warnings.iter().cloned());
        manifests.push(desc);
        reports.push(report);
    }
    Ok(reports)
}

/// A program run in container `name` through the engine, for the database layer: exit
/// code, stdout, stderr.
pub(crate) fn exec_in<'a>(
    engine: &'a dyn ContainerEngine,
    name: &'a str,
) -> impl Fn(Vec<String>, Vec<String>) -> Result<crate::db::Ran> + 'a {
    move |argv, env| {
        let hour = std::time::Duration::from_secs(3600);
        let (code, output) = engine.exec_argv(name, argv, env, None, hour)?;
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        for (is_err, bytes) in output {
            if is_err { &mut stderr } else { &mut stdout }.extend(bytes);
        }
        Ok((code, stdout, stderr))
    }
}
