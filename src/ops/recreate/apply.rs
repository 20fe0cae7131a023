//! Applying a plan: create, fill and start; undo on failure or interrupt.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde_json::{json, Value};

use super::*;
use crate::docker::capture::ContainerSpec;
use crate::docker::{ContainerEngine, Engine};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::ops::ThawTree;
use crate::progress::Progress;
use crate::repo::Repository;

#[derive(Debug, Serialize)]
pub struct SiteReport {
    pub site: String,
    pub snapshot: String,
    pub target: String,
    /// The snapshot of what --replace replaced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub safety_snapshot: Option<String>,
    pub images_loaded: Vec<String>,
    pub containers: Vec<String>,
    /// Each container's state as captured, which thaw brought it back to.
    #[serde(skip)]
    pub states: Vec<(String, String)>,
    pub trees: Vec<crate::ops::ThawTreeReport>,
    pub databases: Vec<crate::db::LoadReport>,
    /// Volumes and networks this thaw created.
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    pub seconds: f64,
    /// The after-thaw hooks that ran.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<crate::ops::hooks::HookReport>,
}

type Applied = (
    Vec<String>,
    Vec<crate::ops::ThawTreeReport>,
    Vec<crate::db::LoadReport>,
);

/// Things created so far, removed again if the thaw fails.
#[derive(Default)]
struct Created {
    containers: Vec<String>,
    volumes: Vec<String>,
    networks: Vec<String>,
    /// Bind-mounted directories restored where there was nothing: (path, an empty
    /// directory was there before).
    dirs: Vec<(PathBuf, bool)>,
    /// Bind-mounted single files restored where there was none, into a directory that
    /// was there.
    files: Vec<PathBuf>,
    /// Images loaded from the snapshot (the engine lacked them).
    images: Vec<String>,
    /// Single files written on a remote engine's host where there were none: named, not
    /// removed, when the thaw fails.
    remote_files: Vec<PathBuf>,
}

/// Applies a plan. `safety` freezes the existing site before it is replaced and returns
/// the snapshot id (the caller owns freezing, which needs the repository's lock).
pub fn execute(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    mut plan: SitePlan,
    progress: &Progress,
    safety: impl FnOnce() -> Result<String>,
) -> Result<SiteReport> {
    let started = std::time::Instant::now();
    let mut safety_snapshot = None;
    if !plan.replaces.is_empty() || !plan.replaced_paths.is_empty() {
        progress.set_label(format!("freezing {} before replacing it", plan.target));
        let id = safety()?;
        safety_snapshot = Some(id.clone());
        for name in &plan.replaces {
            engine.remove_container(name, false).map_err(|e| {
                let mut e = e.with_hint(format!(
                    "site {} is frozen as {}:{id}; thaw that to get it back",
                    plan.target, plan.target
                ));
                e.kind = ErrorKind::Partial;
                e
            })?;
        }
    }
    // What this thaw creates is removed again if it fails or is interrupted.
    let created: Arc<Mutex<Created>> = Arc::default();
    let cleanup = {
        let created = created.clone();
        let target = plan.target.clone();
        let endpoint = engine.endpoint().clone();
        progress.cancel().scope().on_interrupt(Box::new(move || {
            // Taken: the main thread, unwinding after this, finds nothing left to undo.
            let created = std::mem::take(&mut *created.lock().unwrap_or_else(|e| e.into_inner()));
            if let Ok(engine) = Engine::connect_to(&endpoint) {
                undo(&engine, &created);
                eprintln!(
                    "freezer: removed what the thaw of site {target} had created on the engine"
                );
            }
        }))
    };
    let result = apply(repo, engine, &mut plan, progress, &created);
    drop(cleanup);
    let created = std::mem::take(&mut *created.lock().unwrap_or_else(|e| e.into_inner()));
    match result {
        Ok((images_loaded, trees, databases)) => Ok(SiteReport {
            site: plan.site.clone(),
            snapshot: plan.snapshot.clone(),
            target: plan.target.clone(),
            safety_snapshot,
            images_loaded,
            containers: plan.containers.iter().map(|c| c.name.clone()).collect(),
            states: plan
                .containers
                .iter()
                .map(|c| (c.name.clone(), c.state.clone()))
                .collect(),
            trees,
            databases,
            volumes: created.volumes.clone(),
            networks: created.networks.clone(),
            seconds: started.elapsed().as_secs_f64(),
            hooks: vec![],
        }),
        Err(mut e) => {
            undo(engine, &created);
            match &safety_snapshot {
                Some(id) => {
                    e.kind = ErrorKind::Partial;
                    e.hint = Some(format!(
                        "the previous site {} was removed and is frozen as {}:{id}; thaw that to get it back (what this thaw created was removed)",
                        plan.target, plan.target
                    ));
                }
                None => {
                    e.hint = Some(format!(
                        "what this thaw created on {} was removed; nothing else was changed",
                        engine.endpoint().host
                    ))
                }
            }
            if !created.remote_files.is_empty() {
                let files: Vec<String> = created
                    .remote_files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect();
                e.hint = Some(format!(
                    "{}; but these files it wrote on the engine's host stay: {}",
                    e.hint.unwrap_or_default(),
                    files.join(", ")
                ));
            }
            Err(e)
        }
    }
}

fn apply(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    progress: &Progress,
    created: &Mutex<Created>,
) -> Result<Applied> {
    let target = plan.target.clone();
    let track = Tracker {
        created,
        progress,
        target: &target,
    };
    // 0. Every dump downloaded and verified before the engine is touched.
    let mut prepared = Vec::new();
    for d in &plan.dumps {
        prepared.push(d.fetch(repo, progress)?);
    }
    let loaded = load_images(repo, engine, plan, &track)?;
    create_networks(engine, plan, &track)?;
    // Through a remote engine, trees are restored here first, then written into the
    // created containers.
    let stage = crate::sys::temp_dir("a staging directory")?;
    let mountpoints = create_volumes(engine, plan, &track, stage.path())?;
    let mut report = restore_trees(repo, engine, plan, &mountpoints, stage.path(), &track)?;
    rewrite_project(plan)?;
    let written = match engine.is_local() {
        true => vec![],
        false => write_files_first(engine, plan, &mut report.trees, &track)?,
    };
    create_containers(engine, plan, &track)?;
    report
        .trees
        .extend(fill_anonymous(repo, engine, plan, progress)?);
    if !engine.is_local() {
        for t in report
            .trees
            .iter_mut()
            .filter(|t| !written.contains(&t.name))
        {
            progress.set_label(format!("writing {} through the engine", t.name));
            t.dest = match writer(plan, &t.name) {
                Some((container, dest)) => {
                    crate::docker::remote::push(engine, &container, &dest, &t.dest)?;
                    PathBuf::from(format!("{container}:{dest}"))
                }
                None => push_through_helper(engine, plan, &t.name, &t.dest)?,
            };
        }
    }
    report
        .trees
        .extend(restore_writable_layers(repo, engine, plan, progress)?);
    crate::fault::pause(crate::fault::Pause::ThawCreated, progress.cancel());
    let db_reports = load_databases(engine, plan, &prepared, &track)?;
    start_containers(engine, plan, &track)?;
    Ok((loaded, report.trees, db_reports))
}

/// Takes the list of what was created, for the next creation. Each creation holds it
/// while the engine call runs, so an interrupt's cleanup sees everything created, and
/// nothing is created after it ran.
struct Tracker<'a> {
    created: &'a Mutex<Created>,
    progress: &'a Progress,
    target: &'a str,
}

impl Tracker<'_> {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Created>> {
        let list = self.created.lock().unwrap_or_else(|e| e.into_inner());
        self.progress
            .check(|| format!("creating site {}", self.target))?;
        Ok(list)
    }
}

/// Step 1: Images the engine lacks, from the snapshot.
fn load_images(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    track: &Tracker,
) -> Result<Vec<String>> {
    let progress = track.progress;
    let mut loaded = Vec::new();
    for step in &plan.images {
        if step.action != Action::Load {
            continue;
        }
        let (spec, manifest, _) = plan
            .specs
            .iter()
            .find(|(s, m, _)| s.image == step.image && !m.layers.is_empty())
            .expect("planned from a container with layers");
        progress.set_label(format!("loading image {}", spec.image));
        // Recorded first: a load that fails halfway may have left the image behind.
        track.lock()?.images.push(spec.image.clone());
        load_image(repo, engine, spec, manifest)?;
        loaded.push(spec.image.clone());
    }
    Ok(loaded)
}

/// Step 2: Networks.
fn create_networks(engine: &dyn ContainerEngine, plan: &SitePlan, track: &Tracker) -> Result<()> {
    for step in &plan.networks {
        if step.action != Action::Create {
            continue;
        }
        let ns = &plan.network_specs[&step.name];
        let mut list = track.lock()?;
        engine.create_network(&step.name, ns)?;
        list.networks.push(step.name.clone());
    }
    Ok(())
}

/// Step 2: Volumes; returns where each is filled (its mount point, or for a remote engine a
/// directory under `stage`).
fn create_volumes(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    track: &Tracker,
    stage: &Path,
) -> Result<HashMap<String, PathBuf>> {
    let mut mountpoints: HashMap<String, PathBuf> = HashMap::new();
    for step in &plan.volumes {
        let m = plan
            .specs
            .iter()
            .flat_map(|(s, _, _)| &s.mounts)
            .find(|m| m.name.as_deref() == Some(step.name.as_str()))
            .expect("planned from a mount");
        if step.action == Action::Recreate {
            engine.remove_volume(&step.name)?;
        }
        if step.action == Action::Create || step.action == Action::Recreate {
            let driver = m.driver.as_deref().unwrap_or("local");
            let mut list = track.lock()?;
            engine.create_volume(&step.name, driver, &m.options, &m.labels)?;
            list.volumes.push(step.name.clone());
        }
        let v = engine.volume_mountpoint(&step.name)?;
        mountpoints.insert(step.name.clone(), v);
        if !engine.is_local() {
            mountpoints.insert(step.name.clone(), stage.join(&step.name));
        }
    }
    Ok(mountpoints)
}

/// Step 3: Contents: every volume and bind mount through the tree thaw (staged, verified,
/// then moved into place all together).
fn restore_trees(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    mountpoints: &HashMap<String, PathBuf>,
    stage: &Path,
    track: &Tracker,
) -> Result<crate::ops::ThawReport> {
    let mut trees = Vec::new();
    // Trees of single files go into their directory, only the files touched.
    let selections: HashMap<String, crate::tree::exclude::Selection> = plan
        .binds
        .iter()
        .filter(|s| !s.files.is_empty())
        .filter_map(|s| {
            let files = s.files.iter().map(|f| f.as_bytes().to_vec());
            Some((s.tree.clone()?, crate::tree::exclude::Selection::of(files)))
        })
        .collect();
    let dests: Vec<(String, PathBuf, bool)> = plan
        .volumes
        .iter()
        .filter_map(|s| {
            Some((
                s.tree.clone()?,
                mountpoints[&s.name].clone(),
                s.action == Action::Replace,
            ))
        })
        .chain(plan.binds.iter().map(|s| {
            let path = s.path.clone().unwrap_or_default();
            let dest = if engine.is_local() {
                path
            } else {
                stage.join(crate::docker::capture::tree_name(
                    "bind",
                    &path.display().to_string(),
                ))
            };
            (
                s.tree.clone().unwrap_or_default(),
                dest,
                s.action == Action::Replace,
            )
        }))
        .collect();
    for (tree, dest, replaces) in dests {
        let Some(tp) = plan.trees.remove(&tree) else {
            continue; // mounted twice: restored once
        };
        if let Some(only) = selections.get(&tree) {
            // Into the directory as it is: only the files are created or replaced (also
            // when it is missing now: a bind directory inside it may be staged there).
            trees.push(ThawTree {
                replaces: true,
                name: tree,
                source: dest.clone(),
                dest,
                plan: tp,
                keep: None,
                only: Some(only.clone()),
            });
            continue;
        }
        // A replaced volume or directory keeps what the snapshot excluded, as in §7.
        let keep = match replaces {
            true => crate::ops::excluded_by(&tp, &tree)?,
            false => None,
        };
        trees.push(ThawTree {
            name: tree,
            source: dest.clone(),
            dest,
            replaces,
            plan: tp,
            keep,
            only: None,
        });
    }
    let (new_dirs, new_files) = created_by_binds(plan);
    let report = thaw_trees(repo, plan, trees, track.progress)?;
    let mut created = track.lock()?;
    created.dirs.extend(new_dirs);
    created.files.extend(new_files);
    Ok(report)
}

/// Step 3b: A compose project that moved: its compose and env files named the old
/// directory; they name the new one (only whole paths: `/srv/shop` in `/srv/shop/x`,
/// never in `/srv/shop2`). Files that are not UTF-8 text are left as they are.
fn rewrite_project(plan: &SitePlan) -> Result<()> {
    let Some(p) = plan.project.as_ref().filter(|p| p.written) else {
        return Ok(());
    };
    let to = p.to.display().to_string();
    for f in &p.rewrite {
        let Ok(text) = std::fs::read_to_string(f) else {
            continue;
        };
        let new = replace_path(&text, &p.from, &to);
        if new != text {
            std::fs::write(f, new).ctx(|| format!("rewriting {}", f.display()))?;
        }
    }
    Ok(())
}

/// `text` with every whole-path occurrence of `from` replaced by `to`.
fn replace_path(text: &str, from: &str, to: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(from) {
        let after = &rest[i + from.len()..];
        let whole = !after
            .chars()
            .next()
            .is_some_and(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | '.'));
        out.push_str(&rest[..i]);
        out.push_str(if whole { to } else { from });
        rest = after;
    }
    out.push_str(rest);
    out
}

/// Step 4b: Each created container's new anonymous volumes, filled from their trees (a
/// local engine: written where the engine keeps the volume, as named ones are).
fn fill_anonymous(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    progress: &Progress,
) -> Result<Vec<crate::ops::ThawTreeReport>> {
    let mut trees = Vec::new();
    for step in &plan.anonymous {
        let Some(tree) = &step.tree else { continue };
        let Some(tp) = plan.trees.remove(tree) else {
            continue;
        };
        let source = engine
            .container(&step.container)?
            .mounts
            .into_iter()
            .find(|(dest, _)| *dest == step.destination)
            .map(|(_, source)| source)
            .ok_or_else(|| {
                Error::other(format!(
                    "container {} has no volume at {} after it was created",
                    step.container, step.destination
                ))
            })?;
        let dest = PathBuf::from(source);
        trees.push(ThawTree {
            // The engine may have copied the image's files at that path into it.
            replaces: !super::dir_is_empty(&dest),
            name: tree.clone(),
            source: dest.clone(),
            dest,
            plan: tp,
            keep: None,
            only: None,
        });
    }
    if trees.is_empty() {
        return Ok(vec![]);
    }
    Ok(thaw_trees(repo, plan, trees, progress)?.trees)
}

/// Restores `trees` of the plan's snapshot (staged, verified, then moved into place).
fn thaw_trees(
    repo: &Repository,
    plan: &SitePlan,
    trees: Vec<ThawTree>,
    progress: &Progress,
) -> Result<crate::ops::ThawReport> {
    crate::ops::restore::trees(repo, &plan.snap, trees, progress)
}

/// What the bind steps will create, for a failed thaw to remove: directories where there
/// were none or empty ones (path, an empty one was there), and single files put into a
/// directory that was there. That directory (the project's own, with everything else
/// in it) is never one of the first.
fn created_by_binds(plan: &SitePlan) -> (Vec<(PathBuf, bool)>, Vec<PathBuf>) {
    let created = plan.binds.iter().filter(|b| b.action == Action::Create);
    let dirs = created
        .clone()
        .filter_map(|b| Some((b, b.path.clone()?)))
        .filter(|(b, p)| b.files.is_empty() || !p.exists())
        .map(|(_, p)| {
            let existed = p.exists();
            (p, existed)
        })
        .collect();
    let files = created
        .filter_map(|b| Some((b, b.path.clone()?)))
        .filter(|(b, p)| !b.files.is_empty() && p.exists())
        .flat_map(|(b, dir)| b.files.iter().map(move |f| dir.join(f)))
        .collect();
    (dirs, files)
}

/// Step 4: Containers, created (not started) and attached to their networks.
fn create_containers(engine: &dyn ContainerEngine, plan: &SitePlan, track: &Tracker) -> Result<()> {
    for (spec, _, _) in &plan.specs {
        track
            .progress
            .set_label(format!("creating container {}", spec.name));
        let body = create_body(spec)?;
        let mut list = track.lock()?;
        engine.create_container(&spec.name, &body)?;
        list.containers.push(spec.name.clone());
        drop(list);
        for (net, ns) in spec.networks.iter().skip(1) {
            engine.connect_network(&spec.name, net, &ns.aliases)?;
        }
    }
    Ok(())
}

/// Writable layers into the created containers' own (not yet started) upper directories.
fn restore_writable_layers(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    progress: &Progress,
) -> Result<Vec<crate::ops::ThawTreeReport>> {
    let mut layers = Vec::new();
    for (spec, _, _) in &plan.specs {
        let Some(tree) = &spec.writable_layer else {
            continue;
        };
        let Some(tp) = plan.trees.remove(tree) else {
            continue;
        };
        let upper = engine.container(&spec.name)?.upper_dir.ok_or_else(|| {
            Error::usage(format!(
                "container {} has no overlay2 upper directory to restore its writable layer into",
                spec.name
            ))
        })?;
        layers.push(ThawTree {
            name: tree.clone(),
            source: PathBuf::from(&upper),
            dest: PathBuf::from(upper),
            replaces: true,
            plan: tp,
            keep: None,
            only: None,
        });
    }
    if layers.is_empty() {
        return Ok(Vec::new());
    }
    Ok(thaw_trees(repo, plan, layers, progress)?.trees)
}

/// Step 5: Database containers first: started, waited for, loaded with their dumps.
fn load_databases(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    prepared: &[crate::db::Prepared],
    track: &Tracker,
) -> Result<Vec<crate::db::LoadReport>> {
    let mut db_reports = Vec::new();
    for (step, p) in plan.databases.iter().zip(prepared) {
        let (spec, _, _) = plan
            .specs
            .iter()
            .find(|(s, _, _)| s.name == step.container)
            .expect("planned");
        let name = spec.name.clone();
        // Started under the list's lock, like the creations: an interrupt's cleanup
        // either ran before (and this stops) or removes it after.
        let held = track.lock()?;
        engine.start_container(&name)?;
        drop(held);
        let r =
            crate::ops::restore::database_into_container(engine, spec, p, false, track.progress)?;
        db_reports.push(r);
    }
    Ok(db_reports)
}

/// Step 6: The other containers, in their captured state, each after what it depends
/// on (see `join_order`), waiting as compose does for a dependency that must be healthy.
fn start_containers(engine: &dyn ContainerEngine, plan: &SitePlan, track: &Tracker) -> Result<()> {
    for (spec, _, _) in &plan.specs {
        if !matches!(spec.state.as_str(), "running" | "paused")
            || plan.databases.iter().any(|d| d.container == spec.name)
        {
            continue;
        }
        for (service, condition) in spec.depends_on() {
            let healthy = match condition.as_str() {
                "service_healthy" => true,
                "service_completed_successfully" => false,
                _ => continue,
            };
            // Those of the service this thaw started (an exited one is left as it was:
            // what a finished one-shot did is in the restored data).
            let started = plan.specs.iter().filter(|(o, _, _)| {
                o.service() == service
                    && o.name != spec.name
                    && matches!(o.state.as_str(), "running" | "paused")
            });
            for (dep, _, _) in started {
                let until = if healthy { "healthy" } else { "done" };
                track.progress.set_label(format!(
                    "waiting for {} to be {until} before starting {}",
                    dep.name, spec.name
                ));
                match healthy {
                    true => wait_healthy(engine, &dep.name, &spec.name)?,
                    false => wait_completed(engine, &dep.name, &spec.name)?,
                }
            }
        }
        let name = spec.name.clone();
        let _held = track.lock()?;
        engine.start_container(&name)?;
        if spec.state == "paused" {
            engine.pause_container(&spec.name)?;
        }
    }
    Ok(())
}

/// Waits until `container` (with a health check) is healthy, as compose's
/// `condition: service_healthy` does before starting `dependent`; up to 5 minutes. One
/// that stops or turns unhealthy fails it; one without a check is not waited for
/// (compose refuses such a project before it starts anything).
fn wait_healthy(engine: &dyn ContainerEngine, container: &str, dependent: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let what = format!("before {dependent}, which depends on it being healthy, could start");
        if let Some(e) = engine.not_running(container, &what)? {
            return Err(e);
        }
        let c = engine.container(container)?;
        let waited = match c.health.as_deref() {
            Some("healthy") | None => return Ok(()),
            Some("unhealthy") => "is unhealthy",
            _ if std::time::Instant::now() > deadline => "was not healthy within 5 minutes",
            _ => {
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
        };
        // In the message: the thaw removes the container, and its health log with it.
        let said = match c.last_check.filter(|o| !o.is_empty()) {
            Some(o) => format!("; its last health check said: {o}"),
            None => String::new(),
        };
        return Err(Error::other(format!(
            "container {container} {waited}, and {dependent} depends on it being healthy (compose depends_on: service_healthy){said}"
        ))
        .with_hint(format!("`{} inspect {container}` shows its last health checks", engine.flavor().cli())));
    }
}

/// Waits until `container` has exited with status 0, as compose's `condition:
/// service_completed_successfully` does before starting `dependent` (a one-shot such as
/// a migration); up to 5 minutes. Another status fails it, with the last log lines.
fn wait_completed(engine: &dyn ContainerEngine, container: &str, dependent: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        let state = engine.container(container)?;
        let code = state.exit_code;
        let failed = match (state.running, code) {
            (false, 0) => return Ok(()),
            (false, _) => format!("exited with status {code}"),
            _ if std::time::Instant::now() > deadline => "did not finish within 5 minutes".into(),
            _ => {
                std::thread::sleep(std::time::Duration::from_millis(250));
                continue;
            }
        };
        return Err(Error::other(format!(
            "container {container} {failed}, and {dependent} depends on it completing successfully (compose depends_on: service_completed_successfully); its last lines:\n{}",
            engine.log_tail(container, 20)
        )));
    }
}

/// A created container that mounts `tree` writable, and where.
fn writer(plan: &SitePlan, tree: &str) -> Option<(String, String)> {
    plan.specs.iter().find_map(|(s, _, _)| {
        s.mounts
            .iter()
            .find(|m| m.tree == tree && !m.read_only)
            .map(|m| (s.name.clone(), m.destination.clone()))
    })
}

/// Writes a tree that every container mounts read-only: through a helper container of
/// the same image that mounts it writable (see [`crate::docker::remote::write_through_helper`]).
fn push_through_helper(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    tree: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let (spec, m) = plan
        .specs
        .iter()
        .find_map(|(s, _, _)| s.mounts.iter().find(|m| m.tree == tree).map(|m| (s, m)))
        .expect("a planned tree is mounted");
    let mount = match m.kind.as_str() {
        "volume" => json!({"Type": "volume", "Source": m.name}),
        _ => json!({"Type": "bind", "Source": m.source}),
    };
    crate::docker::remote::write_through_helper(engine, &spec.image, mount, dir, false)?;
    Ok(PathBuf::from(format!("{}:{}", spec.name, m.destination)))
}

/// Through a remote engine, the single files containers bind must be on the engine's
/// host before those containers are created (the engine would make a missing bind
/// source a directory): each tree of files goes into its directory there, through a
/// helper container of an image that mounts one of them. A file that is there already
/// is refused unless --replace. Returns the trees written.
fn write_files_first(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    trees: &mut [crate::ops::ThawTreeReport],
    track: &Tracker,
) -> Result<Vec<String>> {
    let mut written = Vec::new();
    for step in plan.binds.iter().filter(|b| !b.files.is_empty()) {
        let (Some(tree), Some(dir)) = (&step.tree, &step.path) else {
            continue;
        };
        let Some(t) = trees.iter_mut().find(|t| &t.name == tree) else {
            continue;
        };
        let (spec, _, _) = plan
            .specs
            .iter()
            .find(|(s, _, _)| s.mounts.iter().any(|m| &m.tree == tree))
            .expect("a planned tree is mounted");
        track
            .progress
            .set_label(format!("writing {tree} through the engine"));
        let host_dir = dir.display().to_string();
        let there =
            crate::docker::remote::existing_on_host(engine, &spec.image, &host_dir, &step.files)?;
        if let (Some(f), false) = (there.first(), step.action == Action::Replace) {
            return Err(Error::conflict(format!(
                "{} exists on the engine's host ({})",
                dir.join(f).display(),
                engine.endpoint().host
            ))
            .with_hint("pass --replace to replace it, or thaw with --as NAME"));
        }
        let new = step.files.iter().filter(|f| !there.contains(f));
        track.lock()?.remote_files.extend(new.map(|f| dir.join(f)));
        let mount = json!({"Type": "bind", "Source": host_dir});
        crate::docker::remote::write_through_helper(engine, &spec.image, mount, &t.dest, false)
            .map_err(|e| {
                crate::error::prefix(
                    e,
                    &format!("writing {} on the engine's host", dir.display()),
                )
            })?;
        t.dest = PathBuf::from(format!("{}:{}", engine.endpoint().host, dir.display()));
        written.push(tree.clone());
    }
    Ok(written)
}

/// The container's address on its first network and its hostname, as the engine has
/// them now.
fn container_endpoint(engine: &dyn ContainerEngine, name: &str) -> Result<(String, String)> {
    let info = engine.container(name)?;
    match info.addresses.into_iter().next() {
        Some(a) => Ok((a, info.hostname)),
        None => Err(exited_or(
            engine,
            name,
            Error::other(format!("container {name} has no network address")),
        )),
    }
}

/// `e`, or when container `name` is no longer running (it exited while it was being
/// set up: a wrong setting, a missing secret), that, with its last log lines.
fn exited_or(engine: &dyn ContainerEngine, name: &str, e: Error) -> Error {
    // The failure may come a moment before the engine has seen the exit.
    for _ in 0..5 {
        match engine.not_running(name, "where its database should be running") {
            Ok(Some(exited)) => return exited,
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(200)),
            Err(_) => break,
        }
    }
    e
}

/// The database endpoint of `spec`'s container as it runs now (None: its environment
/// has no credentials): its address, and its hostname, which the server must report
/// (a connection that lands on another server is refused, see [`crate::db::DbUrl`]).
pub(crate) fn container_database(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
) -> Result<Option<crate::db::DbUrl>> {
    let (address, hostname) = container_endpoint(engine, &spec.name)?;
    let read = |path: &str| crate::docker::capture::read_file_in(engine, &spec.name, path);
    let url = crate::ops::sources::database_url(spec, &address, &read)
        .map_err(|e| exited_or(engine, &spec.name, e))?;
    Ok(url.map(|u| u.expecting_hostname(&hostname)))
}

/// Waits until the database server in a new container accepts the application's login
/// (its first start initializes the data directory; that takes seconds to minutes).
pub(crate) fn wait_for_database(
    engine: &dyn ContainerEngine,
    url: &crate::db::DbUrl,
    container: &str,
) -> Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        match crate::db::try_connect(url) {
            Ok(()) => return Ok(()),
            Err(e) if crate::db::is_wrong_server(&e) => return Err(e),
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.with_hint(format!(
                    "the database in container {container} did not accept connections within 5 minutes; `docker logs {container}` says why"
                )))
            }
            Err(_) => {
                // A server that exited (a wrong setting, a missing secret) never will.
                let what = "before its database accepted connections";
                if let Some(exited) = engine.not_running(container, what)? {
                    return Err(exited);
                }
                std::thread::sleep(std::time::Duration::from_millis(500))
            }
        }
    }
}

/// The engine's create request for a captured container: its `Config`, its `HostConfig`
/// with the mounts pointing at the (renamed) volumes and directories, and its first
/// network (the others are connected after creation, as API 1.41 requires).
fn create_body(spec: &ContainerSpec) -> Result<Value> {
    let mut body = spec.config.clone();
    body["Image"] = Value::String(spec.image.clone());
    // In another container's network namespace the hostname is that container's: the
    // engine refuses one of its own (its capture may have recorded the other's).
    let joins = spec.host_config["NetworkMode"]
        .as_str()
        .is_some_and(|m| m.starts_with("container:"));
    if let (true, Some(o)) = (joins, body.as_object_mut()) {
        o.remove("Hostname");
        o.remove("Domainname");
    }
    let mut hc = spec.host_config.clone();
    let mut mounts: Vec<Value> = hc["Mounts"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !matches!(m["Type"].as_str(), Some("volume" | "bind")))
        .collect();
    let mut binds = Vec::new();
    for m in &spec.mounts {
        if m.anonymous {
            // No source: the engine makes a new anonymous volume.
            mounts.push(json!({
                "Type": "volume",
                "Target": m.destination,
                "ReadOnly": m.read_only,
            }));
            continue;
        }
        let (source, kind) = match m.kind.as_str() {
            "volume" => (m.name.clone().unwrap_or_default(), "volume"),
            _ => (m.source.clone(), "bind"),
        };
        // A bind as a Binds string: the engine creates a missing directory (a remote
        // host's, written through the engine after creation).
        if kind == "bind" && !source.contains(':') && !m.destination.contains(':') {
            let ro = if m.read_only { ":ro" } else { "" };
            binds.push(Value::String(format!("{source}:{}{ro}", m.destination)));
            continue;
        }
        mounts.push(json!({
            "Type": kind,
            "Source": source,
            "Target": m.destination,
            "ReadOnly": m.read_only,
        }));
    }
    if let Some(o) = hc.as_object_mut() {
        o.insert("Binds".into(), Value::Array(binds));
        o.insert("Mounts".into(), Value::Array(mounts));
        // The engine's default OCI runtime under its own name (Docker: `runc`; Podman
        // reports `oci`, which Docker does not know, and may run `crun`): left to the
        // engine the site goes to. A runtime chosen by name (kata, runsc, nvidia) is kept.
        if matches!(
            o.get("Runtime").and_then(Value::as_str),
            Some("" | "oci" | "runc" | "crun")
        ) {
            o.remove("Runtime");
        }
    }
    body["HostConfig"] = hc;
    if let Some((net, ns)) = spec.networks.iter().next() {
        body["NetworkingConfig"] = json!({"EndpointsConfig": {net: {"Aliases": ns.aliases}}});
    }
    Ok(body)
}

/// Loads a container's image from the snapshot into the engine (`docker load` of a
/// docker-archive built from the stored layers), tagged with the container's reference.
fn load_image(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    manifest: &ImageManifest,
) -> Result<()> {
    let dir = crate::sys::temp_dir("a directory for the image archive")?;
    let archive = dir.path().join("image.tar");
    {
        let file =
            std::fs::File::create(&archive).ctx(|| format!("creating {}", archive.display()))?;
        let mut tar = tar::Builder::new(std::io::BufWriter::new(file));
        let mut layer_names = Vec::new();
        for (i, l) in manifest.layers.iter().enumerate() {
            // The layer uncompressed, checked against the blob's digest as it streams.
            let staged = dir.path().join(format!("{i}.tar"));
            let mut out =
                std::fs::File::create(&staged).ctx(|| format!("creating {}", staged.display()))?;
            let mut r = repo.open_blob(&l.digest)?;
            {
                let mut z =
                    zstd::Decoder::new(&mut r).ctx(|| format!("reading {}", l.digest.key()))?;
                std::io::copy(&mut z, &mut out)
                    .ctx(|| format!("decompressing {}", l.digest.key()))?;
            }
            std::io::copy(&mut r, &mut std::io::sink())
                .ctx(|| format!("reading {}", l.digest.key()))?;
            r.finish()?;
            let name = format!("{i}/layer.tar");
            tar.append_path_with_name(&staged, &name)
                .ctx(|| format!("writing {}", archive.display()))?;
            std::fs::remove_file(&staged).ctx(|| format!("removing {}", staged.display()))?;
            layer_names.push(name);
        }
        let config = image_config(&repo.read_blob(&manifest.config.digest)?)?;
        append_bytes(&mut tar, "config.json", &config)?;
        let tag = if spec.image.starts_with("sha256:") {
            vec![]
        } else if spec
            .image
            .rsplit('/')
            .next()
            .is_some_and(|last| last.contains(':') || last.contains('@'))
        {
            vec![spec.image.clone()]
        } else {
            vec![format!("{}:latest", spec.image)]
        };
        let docker_manifest =
            json!([{"Config": "config.json", "RepoTags": tag, "Layers": layer_names}]);
        append_bytes(
            &mut tar,
            "manifest.json",
            &serde_json::to_vec(&docker_manifest).expect("json"),
        )?;
        tar.into_inner()
            .and_then(|mut w| w.flush())
            .ctx(|| format!("writing {}", archive.display()))?;
    }
    engine.load_image(&archive, &spec.image)
}

/// The config of the image to load, from the container image's config: the image's own
/// (its exact text, so the loaded image has the id it had where it was frozen). Snapshots
/// written before that was kept give the defaults the image gave the container
/// (`image_config`) and the layers; the oldest the container's own configuration.
fn image_config(container_config: &[u8]) -> Result<Vec<u8>> {
    use crate::docker::capture::{CONFIG_KEY, IMAGE_CONFIG_KEY};
    let v: serde_json::Value = crate::format::from_json(container_config, "a container config")?;
    if let Some(text) = v[IMAGE_CONFIG_KEY].as_str() {
        return Ok(text.as_bytes().to_vec());
    }
    let defaults = &v[CONFIG_KEY]["image_config"];
    if defaults.is_object() {
        let mut c = json!({
            "architecture": v["architecture"],
            "os": v["os"],
            "config": defaults,
            "rootfs": v["rootfs"],
        });
        if !v["history"].is_null() {
            c["history"] = v["history"].clone();
        }
        return Ok(crate::format::to_json(&c));
    }
    Ok(container_config.to_vec())
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, data)
        .ctx(|| format!("writing {name} of an image archive"))
}

/// A thawed copy (a drill's, a scratch one) that is removed when the run is
/// interrupted, or when its work is done; whichever comes first removes it while the other
/// waits, so the run never ends with the copy half removed.
pub struct CopyGuard {
    copy: Arc<Mutex<Option<Created>>>,
    target: String,
    cleanup: crate::interrupt::Registered,
    /// A signal came: removing the copy is then said on stderr.
    cancel: crate::progress::Cancel,
}

impl CopyGuard {
    pub fn new(
        engine: &dyn ContainerEngine,
        report: &SiteReport,
        cancel: &crate::progress::Cancel,
    ) -> CopyGuard {
        let copy = Arc::new(Mutex::new(Some(Created {
            containers: report.containers.clone(),
            volumes: report.volumes.clone(),
            networks: report.networks.clone(),
            ..Default::default()
        })));
        let endpoint = engine.endpoint().clone();
        let target = report.target.clone();
        let shared = copy.clone();
        let cleanup = cancel.scope().on_interrupt(Box::new(move || {
            let mut held = shared.lock().unwrap_or_else(|e| e.into_inner());
            if let (Some(created), Ok(engine)) = (held.take(), Engine::connect_to(&endpoint)) {
                undo(&engine, &created);
                eprintln!("freezer: removed the copy {target}");
            }
        }));
        CopyGuard {
            copy,
            target: report.target.clone(),
            cleanup,
            cancel: cancel.clone(),
        }
    }

    /// Removes the copy now (unless an interrupt's cleanup did).
    pub fn remove(self, engine: &dyn ContainerEngine) {
        let mut held = self.copy.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(created) = held.take() {
            undo(engine, &created);
            if self.cancel.scope().interrupted() {
                eprintln!("freezer: removed the copy {}", self.target);
            }
        }
        drop(held);
        drop(self.cleanup);
    }

    /// Leaves the copy in place (`drill --keep`).
    pub fn keep(self) {
        drop(self.cleanup);
    }
}

/// Removes what a failed thaw created, newest first; best effort.
fn undo(engine: &dyn ContainerEngine, created: &Created) {
    for f in &created.files {
        let _ = std::fs::remove_file(f);
    }
    for (dir, existed) in &created.dirs {
        let _ = std::fs::remove_dir_all(dir);
        if *existed {
            let _ = std::fs::create_dir(dir);
        }
    }
    for c in created.containers.iter().rev() {
        // With the anonymous volumes the engine made for it.
        let _ = engine.remove_container(c, true);
    }
    for v in created.volumes.iter().rev() {
        let _ = engine.remove_volume(v);
    }
    for image in &created.images {
        let _ = engine.remove_image(image);
    }
    for net in created.networks.iter().rev() {
        let _ = engine.remove_network(net);
    }
}

#[cfg(test)]
mod tests {
    use super::{rename, replace_path};

    #[test]
    fn project_paths_are_replaced_whole() {
        let text = "a: /srv/shop/x\nb: /srv/shop\nc: /srv/shop2/y\nd: /srv/shop.bak\n";
        assert_eq!(
            replace_path(text, "/srv/shop", "/new/dir"),
            "a: /new/dir/x\nb: /new/dir\nc: /srv/shop2/y\nd: /srv/shop.bak\n"
        );
    }

    #[test]
    fn renames_follow_compose_prefixes() {
        assert_eq!(rename("shop-web-1", "shop", "copy"), "copy-web-1");
        assert_eq!(rename("shop_data", "shop", "copy"), "copy_data");
        assert_eq!(rename("shop", "shop", "copy"), "copy");
        assert_eq!(rename("shopping", "shop", "copy"), "copy-shopping");
        assert_eq!(rename("db", "shop", "copy"), "copy-db");
        assert_eq!(rename("db", "shop", "shop"), "db");
    }

    #[test]
    fn renamed_sites_get_their_own_bind_directories() {
        use super::rename_path;
        assert_eq!(
            rename_path("/srv/shop/files", "shop", "copy"),
            "/srv/copy/files"
        );
        assert_eq!(
            rename_path("/srv/shop_data", "shop", "copy"),
            "/srv/copy_data"
        );
        assert_eq!(rename_path("/srv/files", "shop", "copy"), "/srv/files.copy");
        assert_eq!(rename_path("/srv/files", "shop", "shop"), "/srv/files");
    }
}
