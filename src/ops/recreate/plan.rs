//! Planning a thaw onto an engine: read the snapshot, rename for `--as`, check the engine.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::*;
use crate::docker::capture::{ContainerSpec, CONFIG_KEY};
use crate::docker::project::{label_paths, rebase, PATH_LABELS, PROJECT_TREE};
use crate::docker::{ContainerEngine, COMPOSE_PROJECT, SITE_LABEL};
use crate::error::{Error, ErrorKind, Result};
use crate::format::*;
use crate::repo::{Repository, Snapshot};
use crate::tree::thaw::TreePlan;

/// What a snapshot of a Docker site holds, read and checked: containers (each with its
/// image manifest and digest), trees, and database dumps.
pub(crate) struct SnapshotParts {
    pub specs: Vec<(ContainerSpec, ImageManifest, Digest)>,
    pub trees: HashMap<String, TreePlan>,
    pub dumps: Vec<crate::db::Dump>,
}

/// Reads the snapshot's containers, trees and dumps.
pub(crate) fn read_parts(repo: &Repository, snap: &Snapshot) -> Result<SnapshotParts> {
    let site = &snap.site;
    let mut parts = SnapshotParts {
        specs: vec![],
        trees: HashMap::new(),
        dumps: vec![],
    };
    for part in snap.parts() {
        let what = format!("snapshot {site}:{}", snap.id);
        let m = part.image();
        if let Part::Database { name: db, .. } = part {
            let dump = crate::db::Dump::read(repo, &m.digest)
                .map_err(|e| crate::error::prefix(e, &format!("{what} database {db}")))?;
            parts.dumps.push(dump);
            continue;
        }
        if let Part::Container { .. } = part {
            let manifest: ImageManifest = from_json(&repo.read_blob(&m.digest)?, &m.digest.key())?;
            let config: Value = from_json(
                &repo.read_blob(&manifest.config.digest)?,
                &manifest.config.digest.key(),
            )?;
            let spec: ContainerSpec =
                serde_json::from_value(config[CONFIG_KEY].clone()).map_err(|e| {
                    Error::integrity(format!(
                        "{what}: container configuration {} is not valid: {e}",
                        manifest.config.digest.key()
                    ))
                })?;
            parts.specs.push((spec, manifest, m.digest.clone()));
        } else if let Part::Tree { name: tree, .. } = part {
            // Reads the manifest itself: each part's manifest is read once.
            let plan = TreePlan::load(repo, &m.digest)
                .map_err(|e| crate::error::prefix(e, &format!("{what} tree {tree}")))?;
            parts.trees.insert(tree.to_string(), plan);
        }
    }
    if parts.specs.is_empty() {
        return Err(Error::usage(format!(
            "snapshot {site}:{} holds no containers",
            snap.id
        )));
    }
    Ok(parts)
}

/// The engine as the pre-flight found it.
pub(super) struct EngineFacts {
    /// `amd64`, `arm64`, … (empty when the engine does not say).
    pub arch: String,
    /// Its data root (where volumes live).
    pub root: String,
    pub checks: Vec<String>,
}

/// Asks the engine for its properties: reachable, and of which architecture.
pub(super) fn engine_facts(engine: &dyn ContainerEngine) -> Result<EngineFacts> {
    let info = engine.info()?;
    let arch = docker_arch(&info.architecture);
    let root = info.root;
    let version = if info.version.is_empty() {
        "?"
    } else {
        &info.version
    };
    let checks = vec![format!(
        "engine {} answers: Docker {version}, {arch}, data in {root}",
        engine.endpoint().host,
    )];
    Ok(EngineFacts { arch, root, checks })
}

/// Docker's name for a CPU architecture the engine reports as the kernel names it.
fn docker_arch(kernel: &str) -> String {
    match kernel {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string()
}

/// Reads the snapshot's containers and trees and checks the engine: nothing is changed.
pub fn plan(
    repo: &Repository,
    engine: &dyn ContainerEngine,
    snap: Snapshot,
    opts: &SiteOptions,
) -> Result<SitePlan> {
    let site = snap.site.clone();
    let target = opts.rename.clone().unwrap_or_else(|| site.clone());
    crate::repo::check_site_name(&target)?;
    let SnapshotParts {
        specs,
        trees,
        dumps,
    } = read_parts(repo, &snap)?;
    let facts = engine_facts(engine)?;
    let arch = &facts.arch;
    let existing = check_engine(engine, &specs, arch, &target, opts)?;
    let mut plan = empty_plan(&snap, &target, engine, existing.clone());
    let project_from = specs
        .iter()
        .find_map(|(s, _, _)| label_paths(&s.config["Labels"]))
        .map(|(dir, _)| dir);
    let mut retargets = super::retarget::Retargets::new(opts, &specs)?;
    // Images the engine lacks and the snapshot does not hold: every one is named.
    let mut missing: Vec<(String, String)> = Vec::new();
    for (mut spec, manifest, digest) in specs {
        if opts.only.as_ref().is_some_and(|o| !o.contains(&spec.name)) {
            continue;
        }
        let changes = retargets.apply(engine, &mut spec, arch)?;
        rename_spec(&mut spec, &site, &target, opts);
        check_name_free(engine, &spec, &existing, &target)?;
        if !plan_image(engine, &mut plan, &spec, &manifest)? {
            missing.push((spec.service().to_string(), spec.image.clone()));
        }
        plan_networks(engine, &mut plan, &spec)?;
        if !engine.is_local() {
            // Filled through the engine as named volumes, as before anonymous ones were
            // told apart.
            spec.mounts.iter_mut().for_each(|m| m.anonymous = false);
        }
        plan_mounts(engine, &mut plan, &spec, &trees, &existing, opts)?;
        if spec.writable_layer.is_some() && !engine.is_local() {
            return Err(Error::usage(format!(
                "container {} has a stored writable layer, which can be restored only on a local engine with overlay2",
                spec.name
            )));
        }
        plan.containers.push(ContainerStep {
            name: spec.name.clone(),
            image: spec.image.clone(),
            state: spec.state.clone(),
            ports: ports(&spec.host_config),
            changes,
        });
        plan_database(&mut plan, &spec, &dumps)?;
        plan.specs.push((spec, manifest, digest));
    }
    plan_project(engine, &mut plan, &trees, project_from, opts)?;
    refuse_missing_images(engine, &plan, &missing)?;
    for (spec, _, _) in &plan.specs {
        check_ports(engine, spec, &existing)?;
    }
    join_order(&mut plan.specs);
    plan.dumps = dumps_in_load_order(&plan, dumps)?;
    let mut checks = facts.checks;
    checks.push(check_space(engine, &plan, &trees, &facts.root)?);
    checks.extend(retargets.checks());
    let loads = plan
        .images
        .iter()
        .filter(|i| i.action == Action::Load)
        .count();
    checks.push(format!(
        "images: {} on the engine, {loads} to load from the snapshot",
        plan.images.len() - loads
    ));
    checks.push("no name, volume, directory or published port in the way".into());
    plan.checks = checks;
    plan.trees = trees;
    Ok(plan)
}

/// A plan with nothing in it yet: `existing` are the target site's containers now.
fn empty_plan(
    snap: &Snapshot,
    target: &str,
    engine: &dyn ContainerEngine,
    existing: Vec<String>,
) -> SitePlan {
    SitePlan {
        site: snap.site.clone(),
        snapshot: snap.id.clone(),
        target: target.to_string(),
        engine: engine.endpoint().host.clone(),
        replaces: existing,
        replaced_paths: vec![],
        images: vec![],
        networks: vec![],
        volumes: vec![],
        binds: vec![],
        project: None,
        anonymous: vec![],
        containers: vec![],
        checks: vec![],
        databases: vec![],
        specs: vec![],
        dumps: vec![],
        trees: HashMap::new(),
        snap: snap.clone(),
        network_specs: BTreeMap::new(),
    }
}

/// The engine can take the site: the containers' CPU architecture (unless `--image`
/// moves them), and the target site not there unless `--replace`. Returns the target
/// site's containers on the engine now.
fn check_engine(
    engine: &dyn ContainerEngine,
    specs: &[(ContainerSpec, ImageManifest, Digest)],
    arch: &str,
    target: &str,
    opts: &SiteOptions,
) -> Result<Vec<String>> {
    if let Some((spec, _, _)) = specs
        .iter()
        .find(|(s, _, _)| !arch.is_empty() && s.platform.architecture != arch)
        .filter(|(s, _, _)| !super::retarget::is_retargeted(s, opts))
    {
        return Err(Error::conflict(format!(
            "container {} was frozen on {}; the Docker engine at {} runs {arch}",
            spec.name,
            spec.platform.architecture,
            engine.endpoint().host
        ))
        .with_hint("thaw onto a host of the same CPU architecture"));
    }
    let existing = engine.site_containers(target)?;
    if !existing.is_empty() && !opts.replace {
        return Err(Error::conflict(format!(
            "site {target} exists on the Docker engine at {} ({})",
            engine.endpoint().host,
            existing.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
        .with_hint(
            "pass --replace to replace it (it is frozen first, as a safety snapshot), or --as NAME to run a copy beside it",
        ));
    }
    Ok(existing.into_iter().map(|c| c.name).collect())
}

/// The snapshot's dumps in the order of the plan's database steps; a dump that no
/// container of the site serves is refused.
fn dumps_in_load_order(
    plan: &SitePlan,
    mut dumps: Vec<crate::db::Dump>,
) -> Result<Vec<crate::db::Dump>> {
    let mut ordered = Vec::new();
    for step in &plan.databases {
        let i = dumps
            .iter()
            .position(|d| d.database() == step.database)
            .expect("matched above");
        ordered.push(dumps.remove(i));
    }
    if let Some(d) = dumps.first() {
        return Err(Error::usage(format!(
            "snapshot {}:{} holds database {}, which no container of the site serves",
            plan.site,
            plan.snapshot,
            d.database()
        ))
        .with_hint("freeze the site hydrated, or dump that database on its own with --db"));
    }
    Ok(ordered)
}

/// Refuses a plan whose images (service, image) the engine lacks and the snapshot does
/// not hold, naming every one: images compose built, of a snapshot frozen without
/// `--with-images`.
fn refuse_missing_images(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    missing: &[(String, String)],
) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|(service, image)| format!("{service} ({image})"))
        .collect();
    Err(Error::not_found(format!(
        "the Docker engine at {} lacks the images of services {}, and snapshot {}:{} does not hold them",
        engine.endpoint().host,
        list.join(", "),
        plan.site,
        plan.snapshot
    ))
    .with_hint("freeze the site with --with-images, or build (docker compose build) or pull them on that engine first; nothing was created"))
}

/// Orders the containers so that each comes after those it needs: the one whose network
/// namespace it joins (`NetworkMode: container:NAME`, compose's `network_mode:
/// service:X`; the engine needs that one to exist when it creates, and to run when it
/// starts, the other) and the services it `depends_on` (compose's label). Otherwise the
/// snapshot's order is kept.
fn join_order(specs: &mut [(ContainerSpec, ImageManifest, Digest)]) {
    let needs: HashMap<String, Vec<String>> = specs
        .iter()
        .map(|(s, _, _)| {
            let mut n: Vec<String> = s.host_config["NetworkMode"]
                .as_str()
                .and_then(|m| m.strip_prefix("container:"))
                .map(str::to_string)
                .into_iter()
                .collect();
            for (service, _) in s.depends_on() {
                n.extend(
                    specs
                        .iter()
                        .filter(|(o, _, _)| o.service() == service && o.name != s.name)
                        .map(|(o, _, _)| o.name.clone()),
                );
            }
            (s.name.clone(), n)
        })
        .collect();
    // The longest chain of needs below each; bounded, as a cycle cannot start anyway.
    fn depth(name: &str, needs: &HashMap<String, Vec<String>>, left: usize) -> usize {
        match needs.get(name) {
            Some(n) if left > 0 => n
                .iter()
                .map(|m| 1 + depth(m, needs, left - 1))
                .max()
                .unwrap_or(0),
            _ => 0,
        }
    }
    let bound = specs.len();
    specs.sort_by_cached_key(|(s, _, _)| depth(&s.name, &needs, bound));
}

/// A container of another site with this name is never touched.
fn check_name_free(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    existing: &[String],
    target: &str,
) -> Result<()> {
    if existing.contains(&spec.name) {
        return Ok(());
    }
    match engine.container(&spec.name) {
        Ok(_) => Err(Error::conflict(format!(
            "a container named {} exists on the Docker engine at {} and is not part of site {target}",
            spec.name, engine.endpoint().host
        ))
        .with_hint("remove or rename it, or thaw with --as NAME")),
        Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The container's image: on the engine, or loaded from the snapshot. False: neither.
fn plan_image(
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    spec: &ContainerSpec,
    manifest: &ImageManifest,
) -> Result<bool> {
    if plan.images.iter().any(|i| i.image == spec.image) {
        return Ok(true);
    }
    let action = match engine.image(&spec.image) {
        Ok(_) => Action::Present,
        Err(e) if e.kind == ErrorKind::NotFound => {
            if manifest.layers.is_empty() {
                return Ok(false);
            }
            Action::Load
        }
        Err(e) => return Err(e),
    };
    plan.images.push(ImageStep {
        image: spec.image.clone(),
        action,
    });
    Ok(true)
}

/// Its networks: reused when the engine has them, else created.
fn plan_networks(
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    spec: &ContainerSpec,
) -> Result<()> {
    for (net, ns) in &spec.networks {
        if plan.network_specs.contains_key(net) {
            continue;
        }
        let action = match engine.network_exists(net)? {
            true => Action::Reuse,
            false => Action::Create,
        };
        plan.networks.push(Step {
            name: net.clone(),
            action,
            tree: None,
            path: None,
            files: vec![],
        });
        plan.network_specs.insert(net.clone(), ns.clone());
    }
    Ok(())
}

/// Its volumes and bind-mounted directories: created, reused when empty, replaced with
/// --replace, else refused.
fn plan_mounts(
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    spec: &ContainerSpec,
    trees: &HashMap<String, TreePlan>,
    existing: &[String],
    opts: &SiteOptions,
) -> Result<()> {
    // A local engine's volumes are written where they are; a remote one's through the
    // engine, after the containers are created (see `remote`).
    let local = engine.is_local();
    for m in &spec.mounts {
        if !m.tree.is_empty() {
            engine.refuse_rootless_files(&format!(
                "restoring {} of container {}",
                m.tree, spec.name
            ))?;
        }
        if !m.tree.is_empty() && !trees.contains_key(&m.tree) {
            return Err(Error::integrity(format!(
                "snapshot {}:{}: container {} mounts tree {}, which the snapshot does not hold",
                plan.site, plan.snapshot, spec.name, m.tree
            )));
        }
        if m.kind == "volume" && m.anonymous {
            plan.anonymous.push(AnonStep {
                container: spec.name.clone(),
                destination: m.destination.clone(),
                tree: Some(m.tree.clone()).filter(|t| !t.is_empty()),
            });
        } else if m.kind == "volume" {
            plan_volume(engine, plan, m, existing, opts)?;
        } else if m.host {
            // Mounted from the new host as it is: it must have it.
            if local && !Path::new(&m.source).exists() {
                return Err(Error::usage(format!(
                    "container {} mounts {} of the host at {}, which this host does not have",
                    spec.name, m.source, m.destination
                )));
            }
        } else if let Some(rel) = &m.file {
            plan_file(plan, spec, m, rel, local, opts)?;
        } else {
            let path = PathBuf::from(&m.source);
            if plan.binds.iter().any(|b| b.path.as_ref() == Some(&path)) {
                continue;
            }
            let action = if !local {
                // Written through the engine into the (created) directory.
                Action::Write
            } else if dir_is_empty(&path) {
                Action::Create
            } else if opts.replace {
                plan.replaced_paths.push((
                    crate::docker::capture::tree_name("bind", m.source.trim_start_matches('/')),
                    path.clone(),
                ));
                Action::Replace
            } else {
                return Err(Error::conflict(format!(
                    "{} (bind-mounted by container {}) exists and is not empty",
                    path.display(),
                    spec.name
                ))
                .with_hint("pass --replace to replace it, or --into DIR to restore bind-mounted directories under DIR"));
            };
            plan.binds.push(Step {
                name: m.destination.clone(),
                action,
                tree: Some(m.tree.clone()),
                path: Some(path),
                files: vec![],
            });
        }
    }
    Ok(())
}

/// A named volume: created, reused when empty, replaced with --replace, else refused.
fn plan_volume(
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    m: &crate::docker::capture::MountSpec,
    existing: &[String],
    opts: &SiteOptions,
) -> Result<()> {
    let local = engine.is_local();
    let name = m.name.clone().unwrap_or_default();
    if plan.volumes.iter().any(|v| v.name == name) {
        return Ok(());
    }
    let action = match engine.volume_mountpoint(&name) {
        Ok(v) if local && dir_is_empty(&v) => Action::Reuse,
        // Through a remote engine a volume is replaced whole, and only when
        // the containers it belongs to are frozen first.
        Ok(_) if !local && opts.replace && !existing.is_empty() => Action::Recreate,
        Ok(_) if !local => {
            return Err(Error::conflict(format!(
                "volume {name} exists on the Docker engine at {}",
                engine.endpoint().host
            ))
            .with_hint("remove it, or thaw with --as NAME"))
        }
        Ok(v) if opts.replace => {
            plan.replaced_paths
                .push((crate::docker::capture::tree_name("volume", &name), v));
            if m.tree.is_empty() {
                Action::Recreate
            } else {
                Action::Replace
            }
        }
        Ok(_) => {
            return Err(Error::conflict(format!(
                "volume {name} exists on the Docker engine at {} and is not empty",
                engine.endpoint().host
            ))
            .with_hint("pass --replace to replace its contents, or thaw with --as NAME"))
        }
        Err(e) if e.kind == ErrorKind::NotFound => Action::Create,
        Err(e) => return Err(e),
    };
    plan.volumes.push(Step {
        name,
        action,
        tree: Some(m.tree.clone()).filter(|t| !t.is_empty()),
        path: None,
        files: vec![],
    });
    Ok(())
}

/// A bind mount of a single file. A file inside a bind-mounted directory of the site
/// comes back with that directory. Otherwise its tree (`files.<dir>`) is restored into
/// the directory the file goes to, with only the site's files in it replaced: the
/// directory's other contents are never touched. A file that exists is replaced only
/// with --replace.
fn plan_file(
    plan: &mut SitePlan,
    spec: &ContainerSpec,
    m: &crate::docker::capture::MountSpec,
    rel: &str,
    local: bool,
    opts: &SiteOptions,
) -> Result<()> {
    if !m.tree.starts_with("files.") && m.tree != PROJECT_TREE {
        return Ok(()); // restored with its directory's own step
    }
    let dir = PathBuf::from(m.tree_root());
    let file = PathBuf::from(&m.source);
    let action = if !local {
        // Written on the engine's host through a helper container, before the
        // containers that mount it are created; whether one is there is seen then.
        match opts.replace {
            true => Action::Replace,
            false => Action::Write,
        }
    } else if !file.exists() {
        Action::Create
    } else if opts.replace {
        plan.replaced_paths.push((m.tree.clone(), file.clone()));
        Action::Replace
    } else {
        return Err(Error::conflict(format!(
            "{} (bind-mounted by container {} at {}) exists",
            file.display(),
            spec.name,
            m.destination
        ))
        .with_hint(
            "pass --replace to replace it, or --into DIR to restore bind-mounted files under DIR",
        ));
    };
    match plan
        .binds
        .iter_mut()
        .find(|b| b.path.as_ref() == Some(&dir) && b.tree.as_ref() == Some(&m.tree))
    {
        Some(step) => {
            if !step.files.iter().any(|f| f == rel) {
                step.files.push(rel.to_string());
            }
            if action == Action::Replace {
                step.action = Action::Replace;
            }
        }
        None => plan.binds.push(Step {
            name: m.destination.clone(),
            action,
            tree: Some(m.tree.clone()),
            path: Some(dir),
            files: vec![rel.to_string()],
        }),
    }
    Ok(())
}

/// Pre-flight: a host port that is taken would fail the start after everything else is
/// created. (A replaced site's own ports are freed when it is removed.)
fn check_ports(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    existing: &[String],
) -> Result<()> {
    if !existing.is_empty() || !engine.is_local() {
        return Ok(());
    }
    for (ip, port) in host_ports(&spec.host_config) {
        let addr = if ip.is_empty() {
            "0.0.0.0"
        } else {
            ip.as_str()
        };
        if std::net::TcpListener::bind((addr, port)).is_err() {
            return Err(Error::conflict(format!(
                "port {addr}:{port}, published by container {}, is in use on this host",
                spec.name
            ))
            .with_hint(format!(
                "publish it elsewhere with --publish {port}=OTHER, or stop what uses it"
            )));
        }
    }
    Ok(())
}

/// A database container of a dehydrated snapshot: its dump is loaded once it starts.
fn plan_database(
    plan: &mut SitePlan,
    spec: &ContainerSpec,
    dumps: &[crate::db::Dump],
) -> Result<()> {
    let Some(db) = &spec.database else {
        return Ok(());
    };
    let Some(d) = dumps.iter().find(|d| d.database() == db) else {
        return Ok(());
    };
    if !crate::ops::sources::has_database_login(spec) {
        return Err(Error::usage(format!(
            "container {} holds database {db}, but its environment has no credentials (MARIADB_USER/MARIADB_PASSWORD, MARIADB_ROOT_PASSWORD or POSTGRES_PASSWORD, or their _FILE forms) to load it with",
            spec.name
        )));
    }
    plan.databases.push(DbStep {
        database: db.clone(),
        container: spec.name.clone(),
        tables: d.tables(),
        rows: d.rows(),
    });
    Ok(())
}

/// Room for every tree: volumes under the engine's data root, directories where they go.
fn check_space(
    engine: &dyn ContainerEngine,
    plan: &SitePlan,
    trees: &HashMap<String, TreePlan>,
    root: &str,
) -> Result<String> {
    let mut need: HashMap<PathBuf, u64> = HashMap::new();
    for v in &plan.volumes {
        if let Some(t) = v.tree.as_ref().and_then(|t| trees.get(t)) {
            *need.entry(PathBuf::from(root)).or_default() += t.trailer.bytes;
        }
    }
    for b in &plan.binds {
        if let (Some(t), Some(p)) = (b.tree.as_ref().and_then(|t| trees.get(t)), &b.path) {
            *need.entry(crate::sys::existing_ancestor(p)).or_default() += t.trailer.bytes;
        }
    }
    if engine.is_local() {
        crate::sys::check_free_space(&need)?;
    }
    let total: u64 = need.values().sum();
    Ok(format!(
        "space for {} of files",
        crate::progress::bytes(total)
    ))
}

/// A directory that is missing or has nothing in it.
pub(crate) fn dir_is_empty(p: &Path) -> bool {
    std::fs::read_dir(p).map_or(true, |mut d| d.next().is_none())
}

/// Published TCP host ports: (host IP, port).
fn host_ports(host_config: &Value) -> Vec<(String, u16)> {
    let mut out = Vec::new();
    if let Some(map) = host_config["PortBindings"].as_object() {
        for (port, binds) in map {
            if !port.ends_with("/tcp") {
                continue;
            }
            for b in binds.as_array().into_iter().flatten() {
                if let Some(p) = b["HostPort"].as_str().and_then(|p| p.parse().ok()) {
                    out.push((b["HostIp"].as_str().unwrap_or("").to_string(), p));
                }
            }
        }
    }
    out
}

fn ports(host_config: &Value) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(map) = host_config["PortBindings"].as_object() {
        for (port, binds) in map {
            for b in binds.as_array().into_iter().flatten() {
                out.push(format!(
                    "{}:{}->{port}",
                    b["HostIp"].as_str().unwrap_or(""),
                    b["HostPort"].as_str().unwrap_or("")
                ));
            }
        }
    }
    out
}

/// Applies `--as`, `--publish` and `--into` to a captured container.
fn rename_spec(spec: &mut ContainerSpec, old: &str, new: &str, opts: &SiteOptions) {
    let project = project_move(spec, old, new, opts);
    if let (Some((from, to)), Some(labels)) = (&project, spec.config["Labels"].as_object_mut()) {
        for key in PATH_LABELS {
            if let Some(Value::String(v)) = labels.get_mut(key) {
                *v = v
                    .split(',')
                    .map(|p| rebase(p, from, to).unwrap_or_else(|| p.to_string()))
                    .collect::<Vec<_>>()
                    .join(",");
            }
        }
    }
    spec.name = rename(&spec.name, old, new);
    for key in [SITE_LABEL, COMPOSE_PROJECT] {
        if let Some(v) = spec.config["Labels"].get_mut(key) {
            *v = Value::String(new.to_string());
        }
    }
    if old != new && spec.config["Labels"].get(COMPOSE_PROJECT).is_none() {
        // Keep the copy findable as a site of its own.
        if let Some(labels) = spec.config["Labels"].as_object_mut() {
            labels.insert(SITE_LABEL.into(), Value::String(new.to_string()));
        } else {
            spec.config["Labels"] = json!({ SITE_LABEL: new });
        }
    }
    spec.networks = std::mem::take(&mut spec.networks)
        .into_iter()
        .map(|(n, mut ns)| {
            for key in [SITE_LABEL, COMPOSE_PROJECT] {
                if let Some(v) = ns.labels.get_mut(key) {
                    *v = new.to_string();
                }
            }
            (rename(&n, old, new), ns)
        })
        .collect();
    if let Some(mode) = spec.host_config["NetworkMode"].as_str() {
        if let Some(joined) = mode.strip_prefix("container:") {
            // Another container of the site, by name (see capture): its copy. An id is
            // a container outside the site, left as it is.
            let is_id = joined.len() == 64 && joined.bytes().all(|b| b.is_ascii_hexdigit());
            if !is_id {
                spec.host_config["NetworkMode"] =
                    Value::String(format!("container:{}", rename(joined, old, new)));
            }
        } else if !matches!(mode, "default" | "bridge" | "host" | "none") {
            spec.host_config["NetworkMode"] = Value::String(rename(mode, old, new));
        }
    }
    for m in &mut spec.mounts {
        if let Some(name) = &m.name {
            m.name = Some(rename(name, old, new));
            for key in [SITE_LABEL, COMPOSE_PROJECT] {
                if let Some(v) = m.labels.get_mut(key) {
                    *v = new.to_string();
                }
            }
        } else if m.host {
            // The new host's own file (`/etc/localtime`, a socket), never renamed.
        } else {
            // A file bind moves with the directory its tree stands for.
            // What lies in the compose project moves with it; the rest as before.
            let root = m.tree_root().to_string();
            let in_project = project.as_ref().and_then(|(f, t)| rebase(&root, f, t));
            let moved = match (in_project, &opts.bind_root) {
                (Some(p), _) => p,
                (None, Some(r)) => r.join(root.trim_start_matches('/')).display().to_string(),
                (None, None) => rename_path(&root, old, new),
            };
            m.source = match &m.file {
                Some(rel) => format!("{}/{rel}", moved.trim_end_matches('/')),
                None => moved,
            };
        }
    }
    if opts.isolated {
        spec.host_config["PortBindings"] = json!({});
        spec.host_config["PublishAllPorts"] = Value::Bool(false);
        spec.host_config["RestartPolicy"] = json!({"Name": "no"});
    }
    if let Some(map) = spec.host_config["PortBindings"].as_object_mut() {
        for binds in map.values_mut() {
            for b in binds.as_array_mut().into_iter().flatten() {
                if let Some(p) = b["HostPort"].as_str() {
                    if let Some((_, to)) = opts.publish.iter().find(|(from, _)| from == p) {
                        b["HostPort"] = Value::String(to.clone());
                    }
                }
            }
        }
    }
}

/// Where the compose project of `spec` goes, as (from, to): `--project-dir`, else under
/// `--into`, else renamed with the site as bind directories are. None: it stays.
fn project_move(
    spec: &ContainerSpec,
    old: &str,
    new: &str,
    opts: &SiteOptions,
) -> Option<(String, String)> {
    let (from, _) = label_paths(&spec.config["Labels"])?;
    let to = match (&opts.project_dir, &opts.bind_root) {
        (Some(d), _) => d.display().to_string(),
        (None, Some(r)) => r.join(from.trim_start_matches('/')).display().to_string(),
        (None, None) if old != new => rename_path(&from, old, new),
        (None, None) => return None,
    };
    Some((from, to.trim_end_matches('/').to_string()))
}

/// The compose project (tree `project`, SPEC.md §13.5): written where the project goes,
/// with the single files it binds; the bind-mounted directories inside it come with
/// their own steps. A project that moves needs its directory empty (or --replace); one
/// that stays is written only where it is missing, else left as it is. Through a remote
/// engine it is not written (its directory is on the other host).
fn plan_project(
    engine: &dyn ContainerEngine,
    plan: &mut SitePlan,
    trees: &HashMap<String, TreePlan>,
    from: Option<String>,
    opts: &SiteOptions,
) -> Result<()> {
    let (Some(tree), Some(from)) = (trees.get(PROJECT_TREE), from) else {
        if opts.project_dir.is_some() {
            return Err(Error::usage(format!(
                "--project-dir: snapshot {}:{} holds no compose project (its containers carry no compose labels, or it was frozen through a remote engine or before projects were kept)",
                plan.site, plan.snapshot
            )));
        }
        return Ok(());
    };
    let Some((to, files)) = plan
        .specs
        .iter()
        .find_map(|(s, _, _)| label_paths(&s.config["Labels"]))
    else {
        return Ok(());
    };
    let to_path = PathBuf::from(&to);
    let moved = from != to;
    let mut step = ProjectStep {
        from: from.clone(),
        to: to_path.clone(),
        written: false,
        rewrite: vec![],
    };
    if !engine.is_local() {
        if opts.project_dir.is_some() {
            return Err(Error::usage(format!(
                "--project-dir writes the compose project on this host; the engine at {} is remote",
                engine.endpoint().host
            ))
            .with_hint("thaw with freezer on the engine's own host, through its unix socket"));
        }
        plan.project = Some(step);
        return Ok(());
    }
    let empty = dir_is_empty(&to_path);
    let action = match (empty, moved, opts.replace) {
        (true, _, _) => Action::Create,
        (false, false, false) => {
            plan.project = Some(step); // where it is already: left as it is
            return Ok(());
        }
        (false, _, true) => Action::Replace,
        (false, true, false) => {
            return Err(Error::conflict(format!(
                "{to} (where the compose project goes) exists and is not empty"
            ))
            .with_hint("pass --project-dir with an empty or new directory, or --replace"));
        }
    };
    let mut entries = Vec::new();
    let mut r = tree.entries()?;
    while let Some(e) = r.next_entry()? {
        if e.path != b"." {
            entries.push(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
    match plan
        .binds
        .iter_mut()
        .find(|b| b.path.as_ref() == Some(&to_path) && b.tree.as_deref() == Some(PROJECT_TREE))
    {
        Some(b) => {
            b.files = entries;
            if action == Action::Replace {
                b.action = Action::Replace;
            }
        }
        None => plan.binds.push(Step {
            name: PROJECT_TREE.into(),
            action,
            tree: Some(PROJECT_TREE.into()),
            path: Some(to_path),
            files: entries,
        }),
    }
    if moved {
        step.rewrite = files
            .iter()
            .map(PathBuf::from)
            .filter(|f| f.starts_with(&to))
            .collect();
        step.rewrite.sort();
        step.rewrite.dedup();
    }
    step.written = true;
    plan.project = Some(step);
    Ok(())
}

#[cfg(test)]
mod project_tests {
    use super::*;

    fn fixture() -> ContainerSpec {
        serde_json::from_str(include_str!("../../../formats/v1/container-config.json")).unwrap()
    }

    fn source<'a>(spec: &'a ContainerSpec, destination: &str) -> &'a str {
        let m = spec.mounts.iter().find(|m| m.destination == destination);
        &m.unwrap().source
    }

    /// SPEC.md §13.4: what lies in the compose project moves with it, with compose's
    /// labels; what lies outside follows the rules for bind directories.
    #[test]
    fn binds_inside_the_project_move_with_it_and_its_labels_name_it() {
        let mut spec = fixture();
        let opts = SiteOptions {
            project_dir: Some(PathBuf::from("/new/shop/")),
            ..Default::default()
        };
        rename_spec(&mut spec, "fx", "fx", &opts);
        let labels = &spec.config["Labels"];
        assert_eq!(
            labels["com.docker.compose.project.working_dir"],
            "/new/shop"
        );
        assert_eq!(
            labels["com.docker.compose.project.config_files"],
            "compose.yaml"
        );
        assert_eq!(
            source(&spec, "/run/secrets/db-password"),
            "/new/shop/db-password.txt"
        );
        assert_eq!(
            source(&spec, "/usr/local/etc/php/conf.d/uploads.ini"),
            "/new/shop/conf/php/uploads.ini"
        );
        // Outside the project: where it was, as for a thaw under the same name.
        assert_eq!(
            source(&spec, "/usr/local/etc/php/conf.d/extra.ini"),
            "/srv/shared/php-extra.ini"
        );

        let mut spec = fixture();
        rename_spec(&mut spec, "fx", "copy", &SiteOptions::default());
        let labels = &spec.config["Labels"];
        assert_eq!(
            labels["com.docker.compose.project.working_dir"],
            "/srv/copy"
        );
        assert_eq!(labels["com.docker.compose.project"], "copy");
        assert_eq!(
            source(&spec, "/run/secrets/db-password"),
            "/srv/copy/db-password.txt"
        );
        assert_eq!(
            source(&spec, "/usr/local/etc/php/conf.d/extra.ini"),
            "/srv/shared.copy/php-extra.ini"
        );
    }
}
