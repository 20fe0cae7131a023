//! The entry points that decide by what a snapshot holds: a Docker site's snapshot thaws
//! (and drills) onto an engine, any other onto directories and database servers.

use std::path::PathBuf;

use serde::Serialize;

use super::drill::{self, DrillOptions, DrillReport};
use super::hooks::{self, HookEnv, HostHooks, When};
use super::onto::{self, OntoOptions, OntoPlan, OntoReport};
use super::recreate::{self, SiteOptions, SitePlan, SiteReport};
use super::{DbThawFlags, ThawPlan, ThawReport};
use crate::docker::{Endpoint, Engine};
use crate::error::{Error, Result};
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};

/// A thaw as asked for.
#[derive(Debug, Clone, Default)]
pub struct ThawRequest {
    pub site: String,
    /// A snapshot id or its start; None: the latest.
    pub snapshot: Option<String>,
    /// `SITE@HOST`: the host named, if any.
    pub host: Option<String>,
    /// The Docker engine of that host (this machine's when none is named).
    pub engine: Endpoint,
    /// Where the host puts bind-mounted directories of thawed sites (config file).
    pub host_bind_root: Option<PathBuf>,
    /// `--into DIR`.
    pub into: Option<PathBuf>,
    /// `--replace`: existing destinations are replaced (a Docker site is frozen first).
    pub replace: bool,
    /// `--replace-excluded`: replaced destinations lose what the snapshot excluded too.
    pub replace_excluded: bool,
    pub db: DbThawFlags,
    /// Docker sites: `--as NAME` and `--publish OLD=NEW`.
    pub rename: Option<String>,
    pub publish: Vec<(String, String)>,
    /// Docker sites: `--project-dir DIR`.
    pub project_dir: Option<PathBuf>,
    /// Docker sites: `--onto PROJECT` and `--map OLD=NEW`: the state loaded into an
    /// existing site's containers.
    pub onto: Option<String>,
    pub map: Vec<(String, String)>,
    /// Docker sites: `--image SERVICE=IMAGE` and `--env SERVICE:KEY=VALUE`.
    pub images: Vec<(String, String)>,
    pub env: Vec<(String, String, String)>,
    /// The site's host hooks (after_thaw runs once the thaw is done).
    pub hooks: HostHooks,
    /// `--include PATTERN`: restore only the matching paths of the trees.
    pub include: Vec<String>,
}

/// A checked thaw, ready to run; `--dry-run` prints it.
pub struct SiteThawPlan {
    pub kind: ThawKind,
    /// Host hooks; the containers' come from their labels.
    pub hooks: HostHooks,
}

impl SiteThawPlan {
    /// The id of the snapshot it restores.
    pub fn snapshot(&self) -> &str {
        match &self.kind {
            ThawKind::Files(p) => &p.snapshot.id,
            ThawKind::Docker(d) => &d.plan.snapshot,
            ThawKind::Onto(o) => &o.plan.snapshot,
        }
    }
}

/// What a thaw restores onto.
pub enum ThawKind {
    /// Trees and databases onto this machine.
    Files(Box<ThawPlan>),
    /// A Docker site recreated on an engine.
    Docker(Box<DockerThaw>),
    /// A Docker site's state loaded into another site's containers.
    Onto(Box<OntoThaw>),
}

/// `thaw --onto`: the plan, and the engine it runs on.
pub struct OntoThaw {
    pub plan: OntoPlan,
    pub engine: Engine,
    pub endpoint: Endpoint,
}

/// The thaw of a Docker site: the plan, and the engine it runs on.
pub struct DockerThaw {
    pub plan: SitePlan,
    pub engine: Engine,
    /// How to reach the engine again (the safety snapshot connects on its own).
    pub endpoint: Endpoint,
}

/// What a thaw did.
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum SiteThawReport {
    Files(ThawReport),
    Docker(SiteReport),
    Onto(OntoReport),
}

/// Reads the snapshot and plans its thaw by what it holds. Changes nothing.
pub fn plan_site_thaw(repo: &Repository, req: ThawRequest) -> Result<SiteThawPlan> {
    let snapshot = repo.find_snapshot(&req.site, req.snapshot.as_deref())?;
    if snapshot.has_containers() && !req.include.is_empty() {
        return Err(Error::usage(format!(
            "--include restores paths of trees onto this machine; snapshot {}:{} is a Docker site's",
            snapshot.site, snapshot.id
        ))
        .with_hint("thaw it --as a copy and take the files from there, or get one file with `freezer cat`"));
    }
    // `--table` loads tables of a Docker site's dump into the database `--db` names;
    // no container is recreated.
    let tables_only = !req.db.tables.is_empty();
    if snapshot.has_containers() && tables_only && req.host.as_deref().is_some_and(|h| h != "local")
    {
        return Err(Error::usage(
            "--table loads tables into the database --db names; leave out @HOST",
        ));
    }
    if let Some(project) = req.onto.clone() {
        if !snapshot.has_containers() {
            return Err(Error::usage(format!(
                "--onto loads a Docker site's state into another site; snapshot {}:{} holds no containers",
                snapshot.site, snapshot.id
            ))
            .with_hint("thaw it with --into DIR and --db URL"));
        }
        let engine = Engine::connect_to(&req.engine)?;
        let opts = OntoOptions {
            project,
            map: req.map,
            replace: req.replace,
        };
        let plan = onto::plan(repo, &engine, snapshot, &opts)?;
        return Ok(SiteThawPlan {
            kind: ThawKind::Onto(Box::new(OntoThaw {
                plan,
                engine,
                endpoint: req.engine,
            })),
            hooks: req.hooks,
        });
    }
    if snapshot.has_containers() && !tables_only {
        let opts = SiteOptions {
            rename: req.rename,
            publish: req.publish,
            replace: req.replace,
            bind_root: req.into.or(req.host_bind_root),
            project_dir: req.project_dir,
            isolated: false,
            images: req.images,
            env: req.env,
            only: None,
        };
        let engine = Engine::connect_to(&req.engine)?;
        let plan = recreate::plan(repo, &engine, snapshot, &opts)?;
        return Ok(SiteThawPlan {
            kind: ThawKind::Docker(Box::new(DockerThaw {
                plan,
                engine,
                endpoint: req.engine,
            })),
            hooks: req.hooks,
        });
    }
    plan_files_thaw(repo, snapshot, req)
}

/// A thaw of a snapshot of directories and databases (no containers), onto this machine.
fn plan_files_thaw(
    repo: &Repository,
    snapshot: Snapshot,
    req: ThawRequest,
) -> Result<SiteThawPlan> {
    if let Some(h) = req.host.filter(|h| h != "local") {
        return Err(Error::usage(format!(
            "snapshot {}:{} holds no containers; only Docker sites thaw onto a host (@{h})",
            snapshot.site, snapshot.id
        ))
        .with_hint("thaw it on that machine, or here with --into DIR"));
    }
    if req.rename.is_some()
        || req.project_dir.is_some()
        || !req.publish.is_empty()
        || !req.images.is_empty()
        || !req.env.is_empty()
    {
        return Err(Error::usage(format!(
            "--as, --project-dir, --publish, --image and --env apply to Docker sites; snapshot {}:{} is a {} snapshot",
            snapshot.site,
            snapshot.id,
            snapshot.mode_name()
        )));
    }
    let replace = match (req.replace, req.replace_excluded) {
        (false, _) => super::Replace::No,
        (true, false) => super::Replace::KeepExcluded,
        (true, true) => super::Replace::All,
    };
    let plan = super::plan_thaw(
        repo,
        snapshot,
        req.into.as_deref(),
        replace,
        &req.include,
        &req.db,
    )?;
    Ok(SiteThawPlan {
        kind: ThawKind::Files(Box::new(plan)),
        hooks: req.hooks,
    })
}

/// Runs a planned thaw. A Docker site that `--replace` replaces is frozen first (the
/// safety snapshot, named in the report).
pub fn thaw_site(
    repo: &Repository,
    plan: SiteThawPlan,
    progress: &Progress,
) -> Result<SiteThawReport> {
    let hooks = plan.hooks;
    let mut env = HookEnv {
        repo: repo.location(),
        ..Default::default()
    };
    let after_thaw = |env: &HookEnv| {
        let cmd = hooks.command(When::AfterThaw)?;
        progress.set_label("running the after-thaw hook".to_string());
        let r = hooks::run_host(When::AfterThaw, cmd, env, hooks.timeout);
        progress.announce("hook", &r);
        Some(r)
    };
    match plan.kind {
        ThawKind::Files(plan) => {
            let mut report = super::thaw(repo, &plan, progress)?;
            env.site = report.site.clone();
            env.snapshot = Some(report.snapshot.clone());
            env.mode = Some(plan.snapshot.mode_name().to_string());
            report.hooks.extend(after_thaw(&env));
            Ok(SiteThawReport::Files(report))
        }
        ThawKind::Docker(d) => {
            let DockerThaw {
                plan,
                engine,
                endpoint,
            } = *d;
            let target = plan.target.clone();
            let replaced = plan.replaced_paths.clone();
            let mode = plan.mode();
            let mut report = recreate::execute(repo, &engine, plan, progress, || {
                super::freeze_before_replace(repo, &endpoint, &target, &replaced, progress)
            })?;
            report.hooks = hooks::after_thaw_in_containers(
                &engine,
                &report.states,
                hooks::READY_TIMEOUT,
                progress,
            );
            env.site = report.target.clone();
            env.snapshot = Some(report.snapshot.clone());
            env.mode = Some(mode);
            report.hooks.extend(after_thaw(&env));
            Ok(SiteThawReport::Docker(report))
        }
        ThawKind::Onto(o) => {
            let OntoThaw {
                plan,
                engine,
                endpoint,
            } = *o;
            let target = plan.target.clone();
            let states = plan.target_states();
            env.mode = Some(plan.mode.clone());
            let mut report = onto::execute(repo, &engine, plan, progress, || {
                super::freeze_before_replace(repo, &endpoint, &target, &[], progress)
            })?;
            report.hooks =
                hooks::after_thaw_in_containers(&engine, &states, hooks::READY_TIMEOUT, progress);
            env.site = report.target.clone();
            env.snapshot = Some(report.snapshot.clone());
            report.hooks.extend(after_thaw(&env));
            Ok(SiteThawReport::Onto(report))
        }
    }
}

/// Drills a snapshot: a Docker site's on `engine`, any other into scratch directories and
/// databases.
pub fn drill_site(
    repo: &Repository,
    snapshot: Snapshot,
    engine: &Endpoint,
    opts: &DrillOptions,
    progress: &Progress,
) -> Result<DrillReport> {
    if snapshot.has_containers() {
        let engine = Engine::connect_to(engine)?;
        drill::drill_docker(repo, &engine, snapshot, opts, progress)
    } else {
        if !opts.probes.is_empty() || !opts.images.is_empty() || !opts.env.is_empty() {
            return Err(Error::usage(
                "--probe, --image and --env apply to Docker sites",
            ));
        }
        drill::drill_files(repo, snapshot, opts, progress)
    }
}
