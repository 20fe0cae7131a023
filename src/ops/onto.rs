//! `thaw SITE --onto PROJECT`: a snapshot's state loaded into the containers of another,
//! existing site (a developer's compose project, a staging copy) instead of new ones.
//!
//! Each container of the snapshot is matched to the target's container of the same
//! compose service (`--map OLD=NEW` where the names differ); each of its volumes and bind
//! mounts to what the target container mounts at the same path. Databases go in through
//! SQL, so the target keeps its own server, users and credentials: a dehydrated
//! snapshot's dump is loaded as it is; for a hydrated one, the snapshot's database
//! container is first brought up as an isolated scratch copy and its database dumped from
//! there. The target's other containers are stopped while their files are swapped and
//! put back in their state afterwards.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use super::recreate::{self, SiteOptions, SitePlan};
use super::{Action, ThawTree};
use crate::db::{Dump, LoadReport, Prepared};
use crate::docker::capture::{CapturedSite, ContainerSpec, MountSpec};
use crate::docker::{ContainerEngine, Engine};
use crate::error::{Error, ErrorKind, Result};
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};
use crate::tree::thaw::TreePlan;

/// `--onto` and `--map` as asked for.
#[derive(Debug, Clone, Default)]
pub struct OntoOptions {
    /// The existing site (compose project or freezer label) that receives the state.
    pub project: String,
    /// `--map SNAPSHOT_SERVICE=TARGET_SERVICE`.
    pub map: Vec<(String, String)>,
    /// Non-empty volumes, directories and databases of the target are replaced (after a
    /// safety snapshot of the target).
    pub replace: bool,
}

/// What an `--onto` thaw will do; printed by `--dry-run`.
#[derive(Serialize)]
pub struct OntoPlan {
    pub site: String,
    pub snapshot: String,
    /// `hydrated` or `dehydrated`.
    pub mode: String,
    pub target: String,
    pub engine: String,
    /// Each service of the snapshot and where its state goes.
    pub services: Vec<ServiceMap>,
    /// Services of the snapshot without state and without a match: nothing to load.
    pub skipped: Vec<String>,
    /// Containers of the target stopped while their files are swapped, then started.
    pub stops: Vec<String>,
    /// What is replaced (only with --replace; the target is frozen first).
    pub replaces: Vec<String>,
    /// `--replace` was given.
    #[serde(skip)]
    replace: bool,
    pub checks: Vec<String>,
    #[serde(skip)]
    snap: Snapshot,
    #[serde(skip)]
    trees: Vec<ThawTree>,
    #[serde(skip)]
    dumps: Vec<Dump>,
    /// Hydrated: the scratch copy of the snapshot's database containers.
    #[serde(skip)]
    scratch: Option<SitePlan>,
    /// Where the scratch copy's bind-mounted directories go (removed with the plan).
    #[serde(skip)]
    scratch_binds: Option<tempfile::TempDir>,
    #[serde(skip)]
    captured: CapturedSite,
}

#[derive(Debug, Serialize)]
pub struct ServiceMap {
    pub service: String,
    /// The snapshot's container.
    pub container: String,
    pub target_service: String,
    pub target_container: String,
    pub mounts: Vec<MountMap>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<DbMap>,
}

#[derive(Debug, Serialize)]
pub struct MountMap {
    /// The path inside both containers.
    pub destination: String,
    pub tree: String,
    /// `volume NAME` or `directory PATH` of the target.
    pub target: String,
    /// Where it is on this machine (a local engine).
    #[serde(skip)]
    path: PathBuf,
    /// A remote engine: the image of the target container and the mount, for a helper
    /// container that writes it through the engine.
    #[serde(skip)]
    helper: Option<(String, serde_json::Value)>,
    /// `create` (the target is empty) or `replace`.
    pub action: Action,
}

#[derive(Debug, Serialize)]
pub struct DbMap {
    /// The snapshot's database.
    pub database: String,
    /// The target container's database (from its environment), loaded through SQL with
    /// the target's own credentials.
    pub into: String,
    /// `dump` (the snapshot's) or `scratch` (dumped from a scratch copy of the
    /// snapshot's database container).
    pub from: String,
    #[serde(skip)]
    source_container: String,
    /// Whether it has objects now (None: its server is not running to ask).
    #[serde(skip)]
    occupied: Option<bool>,
}

#[derive(Debug, Serialize)]
pub struct OntoReport {
    pub site: String,
    pub snapshot: String,
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,
    pub trees: Vec<super::ThawTreeReport>,
    pub databases: Vec<LoadReport>,
    /// Containers stopped for the swap and started again.
    pub stopped: Vec<String>,
    pub seconds: f64,
    /// The after-thaw hooks that ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<super::hooks::HookReport>,
}

impl OntoPlan {
    /// The target's containers and the state each was in, which they are back in after.
    pub fn target_states(&self) -> Vec<(String, String)> {
        self.captured
            .containers
            .iter()
            .map(|c| (c.name.clone(), c.state.clone()))
            .collect()
    }
}

/// Matches the snapshot's services to the target's and checks everything. Changes nothing.
/// Every service `--map` names exists: OLD in the snapshot (`ours`), NEW in the target
/// (`theirs`).
fn check_map(
    snap: &Snapshot,
    opts: &OntoOptions,
    ours: &[String],
    theirs: &[String],
) -> Result<()> {
    for (from, to) in &opts.map {
        if !ours.contains(from) {
            return Err(Error::usage(format!(
                "--map names service {from}, which snapshot {}:{} does not have; its services are {}",
                snap.site,
                snap.id,
                ours.join(", ")
            )));
        }
        if !theirs.contains(to) {
            return Err(Error::usage(format!(
                "--map names service {to}, which site {} does not have; its services are {}",
                opts.project,
                theirs.join(", ")
            )));
        }
    }
    Ok(())
}

pub fn plan(
    repo: &Repository,
    engine: &Engine,
    snap: Snapshot,
    opts: &OntoOptions,
) -> Result<OntoPlan> {
    let captured = super::sources::capture_dirs(engine, &opts.project).map_err(|e| {
        match e.kind {
            ErrorKind::NotFound => e.with_hint(format!(
                "--onto loads into a site that exists; to create one from the snapshot, thaw it --as {}",
                opts.project
            )),
            _ => e,
        }
    })?;
    plan_captured(repo, engine, snap, captured, opts)
}

/// [`plan`], once the target site is captured: the engine is only asked, never changed.
fn plan_captured(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    snap: Snapshot,
    captured: CapturedSite,
    opts: &OntoOptions,
) -> Result<OntoPlan> {
    let parts = recreate::read_parts(repo, &snap)?;
    let services = |specs: &mut dyn Iterator<Item = &ContainerSpec>| {
        specs.map(|s| s.service().to_string()).collect::<Vec<_>>()
    };
    let ours = services(&mut parts.specs.iter().map(|(s, _, _)| s));
    let theirs = services(&mut captured.containers.iter());
    check_map(&snap, opts, &ours, &theirs)?;
    let mut plan = OntoPlan {
        site: snap.site.clone(),
        snapshot: snap.id.clone(),
        mode: snap.mode_name().to_string(),
        target: opts.project.clone(),
        engine: engine.endpoint().host.clone(),
        services: vec![],
        skipped: vec![],
        stops: vec![],
        replaces: vec![],
        replace: opts.replace,
        checks: vec![],
        snap: snap.clone(),
        trees: vec![],
        dumps: vec![],
        scratch: None,
        scratch_binds: None,
        captured,
    };
    let mut trees = parts.trees;
    let dumps = parts.dumps;
    let mut scratch_of = Vec::new();
    for (spec, _, _) in &parts.specs {
        let scratch = plan_service(engine, &mut plan, spec, &dumps, &mut trees, opts, &theirs)?;
        scratch_of.extend(scratch);
    }
    if !scratch_of.is_empty() {
        let (scratch, binds) = scratch_plan(repo, engine, snap, scratch_of)?;
        plan.scratch = Some(scratch);
        plan.scratch_binds = Some(binds);
    }
    if let Some(t) = plan.trees.first() {
        engine.refuse_rootless_files(&format!("restoring into {}", t.dest.display()))?;
    }
    // Room for the trees where they go (through a remote engine, the engine's to find).
    if engine.is_local() {
        let mut need: HashMap<PathBuf, u64> = HashMap::new();
        for t in &plan.trees {
            *need
                .entry(crate::sys::existing_ancestor(&t.dest))
                .or_default() += t.plan.trailer.bytes;
        }
        crate::sys::check_free_space(&need)?;
    }
    // Stopped for the swap: the target's running containers, but for the database
    // servers, which must run to be loaded.
    plan.stops = (plan.captured.containers)
        .iter()
        .filter(|c| c.state == "running" && !serves_load(&plan, &c.name))
        .map(|c| c.name.clone())
        .collect();
    plan.checks = vec![
        format!(
            "site {} on the engine at {}: {}",
            opts.project,
            engine.endpoint().host,
            theirs.join(", ")
        ),
        "every service with state matched, every mount path found in its target".into(),
    ];
    if let Some(s) = &plan.scratch {
        plan.checks.push(format!(
            "the snapshot's database containers can run as the scratch copy {}",
            s.target
        ));
    }
    Ok(plan)
}

/// Where one container's state goes: its service's counterpart in the target, each of
/// its mounts, its database. Returns the container's name when its database comes from a
/// scratch copy.
fn plan_service(
    engine: &dyn ContainerEngine,
    plan: &mut OntoPlan,
    spec: &ContainerSpec,
    dumps: &[Dump],
    trees: &mut HashMap<String, TreePlan>,
    opts: &OntoOptions,
    theirs: &[String],
) -> Result<Option<String>> {
    let dump = spec
        .database
        .as_ref()
        .and_then(|db| dumps.iter().find(|d| d.database() == db));
    // A hydrated database container's files stand for its database: they go in through
    // SQL, from a scratch copy, never over the target's server files.
    let scratch = dumps.is_empty() && spec.database.is_some();
    let has_state = dump.is_some()
        || spec
            .mounts
            .iter()
            .any(|m| !m.tree.is_empty() && m.file.is_none());
    let service = spec.service().to_string();
    let target_service = opts
        .map
        .iter()
        .find(|(from, _)| *from == service)
        .map_or(service.clone(), |(_, to)| to.clone());
    let Some(target) = plan
        .captured
        .containers
        .iter()
        .find(|c| c.service() == target_service)
        .cloned()
    else {
        if !has_state {
            plan.skipped.push(service);
            return Ok(None);
        }
        return Err(Error::usage(format!(
            "service {service} of snapshot {}:{} (container {}) holds {}, and site {} has no service {target_service} to load it into; its services are {}",
            plan.site,
            plan.snapshot,
            spec.name,
            state_of(spec, dump.is_some()),
            opts.project,
            theirs.join(", ")
        ))
        .with_hint(format!("name the service it goes to with --map {service}=SERVICE")));
    };
    let mut map = ServiceMap {
        service,
        container: spec.name.clone(),
        target_service,
        target_container: target.name.clone(),
        mounts: vec![],
        database: None,
    };
    if dump.is_some() || scratch {
        let d = plan_database(engine, spec, &target, dump, opts.replace)?;
        if opts.replace && d.occupied != Some(false) {
            plan.replaces
                .push(format!("database {} of container {}", d.into, target.name));
        }
        map.database = Some(d);
        plan.dumps.extend(dump.cloned());
    }
    if !scratch {
        // The target project keeps its own single files (configuration, secrets).
        for m in spec
            .mounts
            .iter()
            .filter(|m| !m.tree.is_empty() && m.file.is_none())
        {
            let step = plan_mount(engine, spec, m, &target, opts.replace)?;
            add_tree(plan, trees, spec, m, &step)?;
            map.mounts.push(step);
        }
    }
    plan.services.push(map);
    Ok(scratch.then(|| spec.name.clone()))
}

/// The tree a mount holds, restored onto where its counterpart is (once, if mounted twice).
fn add_tree(
    plan: &mut OntoPlan,
    trees: &mut HashMap<String, TreePlan>,
    spec: &ContainerSpec,
    m: &MountSpec,
    step: &MountMap,
) -> Result<()> {
    if plan.trees.iter().any(|t| t.name == m.tree) {
        return Ok(());
    }
    let tp = trees.remove(&m.tree).ok_or_else(|| {
        Error::integrity(format!(
            "snapshot {}:{}: container {} mounts tree {}, which the snapshot does not hold",
            plan.site, plan.snapshot, spec.name, m.tree
        ))
    })?;
    let replaces = step.action == Action::Replace;
    if replaces {
        plan.replaces
            .push(format!("{} ({})", step.target, step.path.display()));
    }
    plan.trees.push(ThawTree {
        name: m.tree.clone(),
        source: step.path.clone(),
        dest: step.path.clone(),
        replaces,
        keep: match replaces {
            true => super::excluded_by(&tp, &m.tree)?,
            false => None,
        },
        plan: tp,
        only: None,
    });
    Ok(())
}

/// What a container holds, for messages.
fn state_of(spec: &ContainerSpec, dump: bool) -> String {
    let mut what: Vec<String> = spec
        .mounts
        .iter()
        .filter(|m| !m.tree.is_empty())
        .map(|m| format!("{} {}", m.kind, m.destination))
        .collect();
    if dump {
        what.push(format!(
            "database {}",
            spec.database.as_deref().unwrap_or("")
        ));
    }
    what.join(", ")
}

/// Whether the target container is a database server a dump is loaded into.
fn serves_load(plan: &OntoPlan, container: &str) -> bool {
    plan.services
        .iter()
        .any(|s| s.target_container == container && s.database.is_some())
}

/// Where a mount of the snapshot's container goes: what the target container mounts at
/// the same path.
fn plan_mount(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    m: &MountSpec,
    target: &ContainerSpec,
    replace: bool,
) -> Result<MountMap> {
    let Some(t) = target
        .mounts
        .iter()
        .find(|t| t.destination == m.destination)
    else {
        return Err(Error::usage(format!(
            "container {} mounts {} {} (tree {}); container {} has nothing mounted there",
            spec.name, m.kind, m.destination, m.tree, target.name
        ))
        .with_hint(format!(
            "mount a volume or directory at {} in {}, or map the service to another with --map",
            m.destination, target.name
        )));
    };
    let (label, path, source) = match t.kind.as_str() {
        "volume" => {
            let name = t.name.clone().unwrap_or_default();
            let path = engine.volume_mountpoint(&name)?;
            (format!("volume {name}"), path, name)
        }
        _ => (
            format!("directory {}", t.source),
            PathBuf::from(&t.source),
            t.source.clone(),
        ),
    };
    let (empty, helper) = match engine.is_local() {
        true => (recreate::dir_is_empty(&path), None),
        false => (
            crate::docker::remote::is_empty(engine, &target.name, &t.destination)?,
            Some((
                target.image.clone(),
                serde_json::json!({"Type": t.kind, "Source": source}),
            )),
        ),
    };
    let action = if empty {
        Action::Create
    } else if replace {
        Action::Replace
    } else {
        return Err(Error::conflict(format!(
            "{label} ({}), mounted at {} by container {}, is not empty",
            path.display(),
            t.destination,
            target.name
        ))
        .with_hint(
            "pass --replace to replace it (the target site is frozen first, as a safety snapshot)",
        ));
    };
    Ok(MountMap {
        destination: m.destination.clone(),
        tree: m.tree.clone(),
        target: label,
        path,
        helper,
        action,
    })
}

/// The target container's database, which must be named and reachable with the
/// credentials in its environment.
fn plan_database(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    target: &ContainerSpec,
    dump: Option<&Dump>,
    replace: bool,
) -> Result<DbMap> {
    let db = spec.database.clone().unwrap_or_default();
    let into = target.database.clone().ok_or_else(|| {
        Error::usage(format!(
            "container {} holds database {db}; its counterpart {} names no database in its environment (MARIADB_DATABASE, MYSQL_DATABASE or POSTGRES_DB)",
            spec.name, target.name
        ))
        .with_hint("map the service to the target's database service with --map")
    })?;
    if !super::sources::has_database_login(target) {
        return Err(Error::usage(format!(
            "container {} holds database {into}, but its environment has no credentials (MARIADB_USER/MARIADB_PASSWORD, MARIADB_ROOT_PASSWORD or POSTGRES_PASSWORD, or their _FILE forms) to load it with",
            target.name
        )));
    }
    // A running server is asked now whether its database is empty; a stopped one when it
    // has been started for the load (databases load before any file is swapped).
    let mut occupied = None;
    if target.state == "running" {
        let url = recreate::container_database(engine, target)?.expect("has credentials");
        occupied = Some(match dump {
            Some(m) => {
                let what = format!("the dump of {db}");
                m.clone().check_target(&what, &url, None, replace)?.1
            }
            None => {
                let objects = crate::db::target_objects(&url)?;
                if objects > 0 && !replace {
                    return Err(Error::conflict(format!(
                        "database {into} of container {} has {objects} tables or other objects",
                        target.name
                    ))
                    .with_hint("pass --replace to replace it (the target site is frozen first, as a safety snapshot)"));
                }
                objects > 0
            }
        });
    }
    Ok(DbMap {
        database: db,
        into,
        from: if dump.is_some() { "dump" } else { "scratch" }.into(),
        source_container: spec.name.clone(),
        occupied,
    })
}

/// The scratch copy of a hydrated snapshot's database containers: restored isolated under
/// a name of its own, dumped, removed.
fn scratch_plan(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    snap: Snapshot,
    containers: Vec<String>,
) -> Result<(SitePlan, tempfile::TempDir)> {
    let binds = crate::sys::temp_dir("a directory for the scratch copy's bind mounts")?;
    let opts = SiteOptions {
        rename: Some(recreate::scratch_name("onto", &snap.site)),
        isolated: true,
        bind_root: Some(binds.path().to_path_buf()),
        only: Some(containers),
        ..Default::default()
    };
    Ok((recreate::plan(repo, engine, snap, &opts)?, binds))
}

/// Runs an `--onto` plan. `safety` freezes the target site before anything of it is
/// replaced and returns the snapshot id.
pub fn execute(
    repo: &Repository,
    engine: &Engine,
    mut plan: OntoPlan,
    progress: &Progress,
    safety: impl FnOnce() -> Result<String>,
) -> Result<OntoReport> {
    let started = Instant::now();
    // Everything read and verified before the target is touched.
    let mut prepared: Vec<Prepared> = Vec::new();
    for m in &plan.dumps {
        prepared.push(m.fetch(repo, progress)?);
    }
    if let Some(s) = plan.scratch.take() {
        prepared.extend(dump_scratch(repo, engine, s, &plan.services, progress)?);
        plan.scratch_binds = None;
    }
    let safety_snapshot = match plan.replaces.is_empty() {
        true => None,
        false => {
            progress.set_label(format!(
                "freezing {} before replacing its state",
                plan.target
            ));
            Some(safety()?)
        }
    };
    let partial = |mut e: Error| {
        if let Some(id) = &safety_snapshot {
            e.kind = ErrorKind::Partial;
            e.hint = Some(format!(
                "site {} may be partly loaded; its state before is frozen as {}:{id} (thaw it with --replace to go back)",
                plan.target, plan.target
            ));
        }
        e
    };
    // Held: the target's running containers but its database servers, stopped.
    let mut held = plan.captured.clone();
    let keep: Vec<bool> = held
        .containers
        .iter()
        .map(|c| plan.stops.contains(&c.name))
        .collect();
    let mut k = keep.iter();
    held.ids.retain(|_| *k.next().unwrap());
    let mut k = keep.iter();
    held.containers.retain(|_| *k.next().unwrap());
    let trees = std::mem::take(&mut plan.trees);
    let ((trees, databases), _) =
        crate::docker::capture::hold(engine, &held, true, progress.cancel(), || {
            // Databases first: a stopped server's database is found full only now.
            let databases = load_databases(engine, &plan, &prepared, progress)?;
            let trees = restore_trees(repo, engine, &plan, trees, progress)?;
            Ok((trees, databases))
        })
        .map_err(partial)?;
    Ok(OntoReport {
        site: plan.site,
        snapshot: plan.snapshot,
        target: plan.target,
        safety_snapshot,
        trees,
        databases,
        stopped: plan.stops,
        seconds: started.elapsed().as_secs_f64(),
        hooks: vec![],
    })
}

/// The trees, onto the target's volumes and directories: in place on a local engine;
/// through the engine (staged here, then written by a helper container) on a remote one.
fn restore_trees(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &OntoPlan,
    mut trees: Vec<ThawTree>,
    progress: &Progress,
) -> Result<Vec<super::ThawTreeReport>> {
    if trees.is_empty() {
        return Ok(vec![]);
    }
    let stage = crate::sys::temp_dir("a staging directory")?;
    let remote = !engine.is_local();
    if remote {
        for t in &mut trees {
            t.dest = stage.path().join(&t.name);
            t.source = t.dest.clone();
            t.replaces = false;
            t.keep = None;
        }
    }
    let mut reports = super::restore::trees(repo, &plan.snap, trees, progress)?.trees;
    if remote {
        for r in &mut reports {
            let m = plan
                .services
                .iter()
                .flat_map(|s| &s.mounts)
                .find(|m| m.tree == r.name)
                .expect("a planned tree");
            let (image, mount) = m.helper.clone().expect("remote");
            progress.set_label(format!("writing {} through the engine", m.target));
            crate::docker::remote::write_through_helper(
                engine,
                &image,
                mount,
                &r.dest,
                m.action == Action::Replace,
            )
            .map_err(|e| crate::error::prefix(e, &format!("writing {}", m.target)))?;
            r.dest = PathBuf::from(&m.target);
        }
    }
    Ok(reports)
}

/// Loads each database into its target container (started for the load if it was not
/// running, and stopped again after).
fn load_databases(
    engine: &dyn ContainerEngine,
    plan: &OntoPlan,
    prepared: &[Prepared],
    progress: &Progress,
) -> Result<Vec<LoadReport>> {
    let mut reports = Vec::new();
    for s in &plan.services {
        let Some(d) = &s.database else { continue };
        let p = prepared
            .iter()
            .find(|p| p.database() == d.database)
            .expect("prepared for every database step");
        let target = plan
            .captured
            .containers
            .iter()
            .find(|c| c.name == s.target_container)
            .expect("planned");
        let was_running = target.state == "running";
        if !was_running {
            engine.start_container(&target.name)?;
        }
        let r = super::restore::database_into_container(engine, target, p, plan.replace, progress);
        if !was_running {
            let _ = engine.stop_container(&target.name);
        }
        reports.push(r?);
    }
    Ok(reports)
}

/// Hydrated: brings the snapshot's database containers up as an isolated scratch copy,
/// dumps each database into a temporary repository and prepares it for loading; the copy
/// is removed in any case.
fn dump_scratch(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    scratch: SitePlan,
    services: &[ServiceMap],
    progress: &Progress,
) -> Result<Vec<Prepared>> {
    let name = scratch.target.clone();
    let specs: Vec<ContainerSpec> = scratch.container_specs().cloned().collect();
    let report = recreate::execute(repo, engine, scratch, progress, || {
        Err(Error::other("a scratch copy never replaces anything"))
    })?;
    let copy = recreate::CopyGuard::new(engine, &report, progress.cancel());
    let result = (|| {
        let tmp = crate::sys::temp_dir("a temporary repository")?;
        let store = crate::store::LocalStore::new(tmp.path().to_path_buf());
        let scratch_repo = Repository::init(Box::new(store))?;
        let mut out = Vec::new();
        for s in services
            .iter()
            .filter(|s| s.database.as_ref().is_some_and(|d| d.from == "scratch"))
        {
            let d = s.database.as_ref().expect("filtered");
            let spec = specs
                .iter()
                .find(|c| c.database.as_deref() == Some(d.database.as_str()))
                .ok_or_else(|| {
                    Error::other(format!(
                        "the scratch copy of container {} was not created",
                        d.source_container
                    ))
                })?;
            let url = recreate::container_database(engine, spec)?
                .ok_or_else(|| {
                    Error::usage(format!(
                        "container {} of the snapshot holds database {}, but its environment has no credentials to dump it with",
                        d.source_container, d.database
                    ))
                })?;
            progress.set_label(format!(
                "waiting for the database in the scratch copy {}",
                spec.name
            ));
            recreate::wait_for_database(engine, &url, &spec.name)?;
            // With the scratch container's own tools (PostgreSQL: its pg_dump).
            let exec = super::freeze::exec_in(engine, &spec.name);
            let at = crate::db::ToolsAt::Container {
                name: spec.name.clone(),
                exec: &exec,
            };
            let (desc, _) = crate::db::freeze_database(
                &scratch_repo,
                &url,
                &at,
                None,
                &Default::default(),
                progress,
            )?;
            let dump = Dump::read(&scratch_repo, &desc.digest)?;
            out.push(dump.fetch(&scratch_repo, progress)?);
        }
        Ok(out)
    })();
    progress.set_label(format!("removing the scratch copy {name}"));
    copy.remove(engine);
    result.map_err(|e| {
        crate::error::prefix(
            e,
            &format!("dumping the snapshot's database from the scratch copy {name}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::{failed, service, with_volume, Kit};

    const WEB: &str = "shop/web:1";

    /// The target site as a capture finds it: `containers`, all running.
    fn target(containers: Vec<ContainerSpec>) -> CapturedSite {
        let n = containers.len();
        CapturedSite {
            ids: containers.iter().map(|c| c.name.clone()).collect(),
            containers,
            trees: vec![],
            addresses: vec![None; n],
            upper_dirs: vec![None; n],
            healthy: vec![None; n],
            recovered: vec![],
        }
    }

    fn options(map: &[(&str, &str)]) -> OntoOptions {
        OntoOptions {
            project: "other".into(),
            map: map
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            replace: false,
        }
    }

    /// A shop with uploads, and a target project whose web service has a volume there.
    fn shop_and_other(kit: &Kit) -> (Snapshot, CapturedSite) {
        let web = with_volume(service("shop", "web", WEB), "shop_www", "/var/www/uploads");
        let snap = kit.freeze("shop", &[web], &[("volume.shop_www", "cat.jpg", "a cat")]);
        kit.engine.add_volume("other_www");
        let theirs = with_volume(
            service("other", "app", WEB),
            "other_www",
            "/var/www/uploads",
        );
        let other = target(vec![theirs, service("other", "cache", WEB)]);
        (snap, other)
    }

    #[test]
    fn a_volume_goes_into_the_matching_service_s_volume_and_its_containers_stop() {
        let kit = Kit::new(&[WEB]);
        let (snap, other) = shop_and_other(&kit);
        let plan = plan_captured(
            &kit.repo,
            &kit.engine,
            snap,
            other,
            &options(&[("web", "app")]),
        )
        .unwrap();
        assert_eq!(plan.services.len(), 1, "{:?}", plan.services);
        let s = &plan.services[0];
        assert_eq!(
            (s.service.as_str(), s.target_container.as_str()),
            ("web", "other-app-1")
        );
        assert_eq!(plan.trees.len(), 1);
        assert_eq!(plan.trees[0].dest, kit.volume("other_www"));
        assert_eq!(plan.stops, ["other-app-1", "other-cache-1"]);
    }

    #[test]
    fn a_map_that_names_a_service_neither_side_has_is_refused() {
        let kit = Kit::new(&[WEB]);
        let (snap, other) = shop_and_other(&kit);
        let err = failed(plan_captured(
            &kit.repo,
            &kit.engine,
            snap.clone(),
            other,
            &options(&[("web", "nope")]),
        ));
        assert_eq!(err.kind, ErrorKind::Usage, "{err}");
        assert!(err.message.contains("app, cache"), "{err}");
        let (_, other) = shop_and_other(&Kit::new(&[WEB]));
        let err = failed(plan_captured(
            &kit.repo,
            &kit.engine,
            snap,
            other,
            &options(&[("nope", "app")]),
        ));
        assert!(
            err.message.contains("does not have; its services are web"),
            "{err}"
        );
    }

    #[test]
    fn a_target_volume_with_data_is_refused_without_replace() {
        let kit = Kit::new(&[WEB]);
        let (snap, other) = shop_and_other(&kit);
        std::fs::write(kit.volume("other_www").join("theirs.jpg"), "x").unwrap();
        let err = failed(plan_captured(
            &kit.repo,
            &kit.engine,
            snap,
            other,
            &options(&[("web", "app")]),
        ));
        assert!(
            err.message.contains("other_www") || err.message.contains("not empty"),
            "{err}"
        );
        assert!(
            err.hint.as_deref().unwrap_or("").contains("--replace"),
            "{err:?}"
        );
    }
}
