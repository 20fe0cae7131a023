//! Bringing a hydrated snapshot back on a Docker engine: images, networks, volumes (their
//! contents restored as trees), then containers in their captured state.
//!
//! [`plan`] reads and checks everything first and changes nothing (`--dry-run` prints
//! it); [`execute`] applies it and, on failure, removes what it created.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard::models::{ContainerCreateBody, EndpointSettings, NetworkConnectRequest};
use bollard::query_parameters::{CreateContainerOptionsBuilder, ImportImageOptionsBuilder};
use serde::Serialize;
use serde_json::{json, Value};

use super::capture::{ContainerSpec, NetworkSpec, CONFIG_KEY};
use super::{Engine, COMPOSE_PROJECT, SITE_LABEL};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;
use crate::ops::{ThawPlan, ThawTree};
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};
use crate::tree::thaw::TreePlan;

/// `thaw`'s options for a Docker site.
#[derive(Debug, Default, Clone)]
pub struct SiteOptions {
    /// `--as NAME`: the site's new name (containers, volumes, networks, labels).
    pub rename: Option<String>,
    /// `--publish OLD=NEW`: host ports to publish elsewhere.
    pub publish: Vec<(String, String)>,
    /// `--replace`: an existing site of the same name is frozen, then replaced.
    pub replace: bool,
    /// `--into DIR`: bind-mounted directories are restored under DIR.
    pub bind_root: Option<PathBuf>,
    /// A restore drill: no published ports, no restart policy.
    pub isolated: bool,
}

/// What a thaw will do on the engine; printed by `--dry-run`.
#[derive(Serialize)]
pub struct SitePlan {
    pub site: String,
    pub snapshot: String,
    /// The name the site gets on the engine.
    pub target: String,
    pub engine: String,
    /// Containers of the target site on the engine now: frozen as a safety snapshot,
    /// then removed (only with --replace).
    pub replaces: Vec<String>,
    /// Volumes and directories whose contents are replaced (only with --replace), as
    /// (tree name, path): frozen first when there are no containers to freeze them with.
    pub replaced_paths: Vec<(String, PathBuf)>,
    pub images: Vec<ImageStep>,
    pub networks: Vec<Step>,
    pub volumes: Vec<Step>,
    /// Bind-mounted directories: tree, destination.
    pub binds: Vec<Step>,
    pub containers: Vec<ContainerStep>,
    /// What the pre-flight checked, for the printed plan.
    pub checks: Vec<String>,
    /// Dumps loaded into database containers (dehydrated snapshots).
    pub databases: Vec<DbStep>,
    #[serde(skip)]
    specs: Vec<(ContainerSpec, ImageManifest, Digest)>,
    #[serde(skip)]
    dumps: Vec<crate::db::DbManifest>,
    #[serde(skip)]
    trees: HashMap<String, TreePlan>,
    #[serde(skip)]
    snap: Snapshot,
    #[serde(skip)]
    network_specs: BTreeMap<String, NetworkSpec>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub name: String,
    /// `create`, `reuse` (networks), `replace` (contents of an existing volume or
    /// directory, with --replace).
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
}

#[derive(Debug, Serialize)]
pub struct DbStep {
    pub database: String,
    /// The container whose server gets it, once it accepts connections.
    pub container: String,
    pub tables: usize,
    pub rows: u64,
}

#[derive(Debug, Serialize)]
pub struct ImageStep {
    pub image: String,
    /// `present` (the engine has it) or `load` (from the snapshot).
    pub action: &'static str,
}

#[derive(Debug, Serialize)]
pub struct ContainerStep {
    pub name: String,
    pub image: String,
    /// The state it is brought back to: `running`, `paused`, `exited`, `created`.
    pub state: String,
    /// Published ports as HOST_IP:HOST_PORT->PORT/PROTO.
    pub ports: Vec<String>,
}

/// Renames a container, volume or network of site `old` for site `new`: the site prefix
/// compose puts on names is replaced, other names get the new site's name in front.
pub fn rename(name: &str, old: &str, new: &str) -> String {
    if old == new {
        return name.to_string();
    }
    if name == old {
        return new.to_string();
    }
    match name.strip_prefix(old) {
        Some(rest) if rest.starts_with(['-', '_', '.']) => format!("{new}{rest}"),
        _ => format!("{new}-{name}"),
    }
}

/// Where a renamed site's bind-mounted directory goes, so the copy never shares the
/// original's: the last path component named after the site is renamed
/// (`/srv/shop/files` → `/srv/copy/files`); without one, the directory gets the new name
/// as a suffix (`/srv/files` → `/srv/files.copy`).
pub fn rename_path(path: &str, old: &str, new: &str) -> String {
    if old == new {
        return path.to_string();
    }
    let mut parts: Vec<String> = path.split('/').map(str::to_string).collect();
    let named = parts.iter().rposition(|p| {
        p == old
            || p.strip_prefix(old)
                .is_some_and(|r| r.starts_with(['-', '_', '.']))
    });
    match named {
        Some(i) => parts[i] = rename(&parts[i], old, new),
        None => {
            let last = parts.len() - 1;
            parts[last] = format!("{}.{new}", parts[last]);
        }
    }
    parts.join("/")
}

/// Reads the snapshot's containers and trees and checks the engine: nothing is changed.
pub fn plan(
    repo: &Repository,
    engine: &Engine,
    snap: Snapshot,
    opts: &SiteOptions,
) -> Result<SitePlan> {
    // A local engine's volumes are written where they are; a remote one's through the
    // engine, after the containers are created (see `remote`).
    let local = engine.is_local();
    let site = snap.site.clone();
    let target = opts.rename.clone().unwrap_or_else(|| site.clone());
    crate::repo::check_site_name(&target)?;
    let mut specs = Vec::new();
    let mut trees = HashMap::new();
    let mut dumps = Vec::new();
    for m in &snap.record.manifests {
        let what = format!("snapshot {site}:{}", snap.id);
        if let Some(db) = m.annotations.get(crate::db::A_DB_NAME) {
            let (_, manifest) = crate::db::load::read_manifest(repo, &m.digest)
                .map_err(|e| crate::ops::prefix(e, &format!("{what} database {db}")))?;
            dumps.push(manifest);
            continue;
        }
        let manifest: ImageManifest = from_json(&repo.read_blob(&m.digest)?, &m.digest.key())?;
        if m.annotations.contains_key(super::capture::A_CONTAINER_NAME) {
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
            specs.push((spec, manifest, m.digest.clone()));
        } else if let Some(tree) = m.annotations.get(A_TREE_NAME) {
            let plan = TreePlan::load(repo, &m.digest)
                .map_err(|e| crate::ops::prefix(e, &format!("{what} tree {tree}")))?;
            trees.insert(tree.clone(), plan);
        }
    }
    if specs.is_empty() {
        return Err(Error::usage(format!(
            "snapshot {site}:{} holds no containers",
            snap.id
        )));
    }

    // The engine: reachable, and of the architecture the containers were built for.
    let info = engine.call("asking the engine for its properties", |d| async move {
        d.info().await
    })?;
    let arch = match info.architecture.as_deref().unwrap_or("") {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
    .to_string();
    let root = info.docker_root_dir.clone().unwrap_or_default();
    let mut checks = vec![format!(
        "engine {} answers: Docker {}, {arch}, data in {root}",
        engine.host,
        info.server_version.as_deref().unwrap_or("?"),
    )];
    if let Some((spec, _, _)) = specs
        .iter()
        .find(|(s, _, _)| !arch.is_empty() && s.platform.architecture != arch)
    {
        return Err(Error::conflict(format!(
            "container {} was frozen on {}; the Docker engine at {} runs {arch}",
            spec.name, spec.platform.architecture, engine.host
        ))
        .with_hint("thaw onto a host of the same CPU architecture"));
    }

    // What is on the engine now.
    let existing = engine.site_containers(&target)?;
    if !existing.is_empty() && !opts.replace {
        return Err(Error::conflict(format!(
            "site {target} exists on the Docker engine at {} ({})",
            engine.host,
            existing.iter().map(|c| c.name.as_str()).collect::<Vec<_>>().join(", ")
        ))
        .with_hint(
            "pass --replace to replace it (it is frozen first, as a safety snapshot), or --as NAME to run a copy beside it",
        ));
    }

    let mut plan = SitePlan {
        site: site.clone(),
        snapshot: snap.id.clone(),
        target: target.clone(),
        engine: engine.host.clone(),
        replaces: existing.iter().map(|c| c.name.clone()).collect(),
        replaced_paths: vec![],
        images: vec![],
        networks: vec![],
        volumes: vec![],
        binds: vec![],
        containers: vec![],
        checks: vec![],
        databases: vec![],
        specs: vec![],
        dumps: vec![],
        trees: HashMap::new(),
        snap: snap.clone(),
        network_specs: BTreeMap::new(),
    };
    for (mut spec, manifest, digest) in specs {
        rename_spec(&mut spec, &site, &target, opts);
        // A container of another site with this name is never touched.
        if !existing.iter().any(|c| c.name == spec.name) {
            let name = spec.name.clone();
            match engine.inspect_container(&name) {
                Ok(_) => {
                    return Err(Error::conflict(format!(
                        "a container named {} exists on the Docker engine at {} and is not part of site {target}",
                        spec.name, engine.host
                    ))
                    .with_hint("remove or rename it, or thaw with --as NAME"))
                }
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        if !plan.images.iter().any(|i| i.image == spec.image) {
            let image = spec.image.clone();
            let action = match engine.call(&format!("inspecting image {image}"), |d| async move {
                d.inspect_image(&image).await
            }) {
                Ok(_) => "present",
                Err(e) if e.kind == ErrorKind::NotFound => {
                    if manifest.layers.is_empty() {
                        return Err(Error::not_found(format!(
                            "image {} of container {} is not on the Docker engine at {}, and snapshot {site}:{} does not hold it",
                            spec.image, spec.name, engine.host, snap.id
                        ))
                        .with_hint("pull or load the image on that engine first, or freeze the site with --with-images"));
                    }
                    "load"
                }
                Err(e) => return Err(e),
            };
            plan.images.push(ImageStep {
                image: spec.image.clone(),
                action,
            });
        }
        for (net, ns) in &spec.networks {
            if plan.network_specs.contains_key(net) {
                continue;
            }
            let n = net.clone();
            let action = match engine.call(&format!("inspecting network {net}"), |d| async move {
                d.inspect_network(&n, None::<bollard::query_parameters::InspectNetworkOptions>)
                    .await
            }) {
                Ok(_) => "reuse",
                Err(e) if e.kind == ErrorKind::NotFound => "create",
                Err(e) => return Err(e),
            };
            plan.networks.push(Step {
                name: net.clone(),
                action,
                tree: None,
                path: None,
            });
            plan.network_specs.insert(net.clone(), ns.clone());
        }
        for m in &spec.mounts {
            if !m.tree.is_empty() && !trees.contains_key(&m.tree) {
                return Err(Error::integrity(format!(
                    "snapshot {site}:{}: container {} mounts tree {}, which the snapshot does not hold",
                    snap.id, spec.name, m.tree
                )));
            }
            if m.kind == "volume" {
                let name = m.name.clone().unwrap_or_default();
                if plan.volumes.iter().any(|v| v.name == name) {
                    continue;
                }
                let action = match engine.inspect_volume(&name) {
                    Ok(v) if local && dir_is_empty(Path::new(&v.mountpoint)) => "reuse",
                    // Through a remote engine a volume is replaced whole, and only when
                    // the containers it belongs to are frozen first.
                    Ok(_) if !local && opts.replace && !existing.is_empty() => "recreate",
                    Ok(_) if !local => {
                        return Err(Error::conflict(format!(
                            "volume {name} exists on the Docker engine at {}",
                            engine.host
                        ))
                        .with_hint("remove it, or thaw with --as NAME"))
                    }
                    Ok(v) if opts.replace => {
                        plan.replaced_paths.push((
                            super::capture::tree_name("volume", &name),
                            PathBuf::from(&v.mountpoint),
                        ));
                        if m.tree.is_empty() {
                            "recreate"
                        } else {
                            "replace"
                        }
                    }
                    Ok(_) => {
                        return Err(Error::conflict(format!(
                            "volume {name} exists on the Docker engine at {} and is not empty",
                            engine.host
                        ))
                        .with_hint(
                            "pass --replace to replace its contents, or thaw with --as NAME",
                        ))
                    }
                    Err(e) if e.kind == ErrorKind::NotFound => "create",
                    Err(e) => return Err(e),
                };
                plan.volumes.push(Step {
                    name,
                    action,
                    tree: Some(m.tree.clone()).filter(|t| !t.is_empty()),
                    path: None,
                });
            } else {
                let path = PathBuf::from(&m.source);
                if plan.binds.iter().any(|b| b.path.as_ref() == Some(&path)) {
                    continue;
                }
                let action = if !local {
                    // Written through the engine into the (created) directory.
                    "write"
                } else if dir_is_empty(&path) {
                    "create"
                } else if opts.replace {
                    plan.replaced_paths.push((
                        super::capture::tree_name("bind", m.source.trim_start_matches('/')),
                        path.clone(),
                    ));
                    "replace"
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
                });
            }
        }
        // Pre-flight: a host port that is taken would fail the start after everything
        // else is created. (A replaced site's own ports are freed when it is removed.)
        if existing.is_empty() && local {
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
        }
        if spec.writable_layer.is_some() && !local {
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
        });
        if let Some(db) = &spec.database {
            if let Some(d) = dumps.iter().find(|d| &d.database == db) {
                if spec.database_url("127.0.0.1").is_none() {
                    return Err(Error::usage(format!(
                        "container {} holds database {db}, but its environment has no credentials (MARIADB_USER/MARIADB_PASSWORD or MARIADB_ROOT_PASSWORD) to load it with",
                        spec.name
                    )));
                }
                plan.databases.push(DbStep {
                    database: db.clone(),
                    container: spec.name.clone(),
                    tables: d.tables.len(),
                    rows: d.tables.iter().map(|t| t.rows).sum(),
                });
            }
        }
        plan.specs.push((spec, manifest, digest));
    }
    // In load order: the plan's database steps, each with its dump.
    let mut ordered = Vec::new();
    for step in &plan.databases {
        let i = dumps
            .iter()
            .position(|d| d.database == step.database)
            .expect("matched above");
        ordered.push(dumps.remove(i));
    }
    if let Some(d) = dumps.first() {
        return Err(Error::usage(format!(
            "snapshot {site}:{} holds database {}, which no container of the site serves",
            snap.id, d.database
        ))
        .with_hint("freeze the site hydrated, or dump that database on its own with --db"));
    }
    plan.dumps = ordered;
    // Room for every tree: volumes under the engine's data root, directories where they go.
    let mut need: HashMap<PathBuf, u64> = HashMap::new();
    for v in &plan.volumes {
        if let Some(t) = v.tree.as_ref().and_then(|t| trees.get(t)) {
            *need.entry(PathBuf::from(&root)).or_default() += t.trailer.bytes;
        }
    }
    for b in &plan.binds {
        if let (Some(t), Some(p)) = (b.tree.as_ref().and_then(|t| trees.get(t)), &b.path) {
            *need.entry(crate::ops::existing_ancestor(p)).or_default() += t.trailer.bytes;
        }
    }
    if local {
        crate::ops::check_free_space(&need)?;
    }
    let total: u64 = need.values().sum();
    checks.push(format!(
        "space for {} of files",
        crate::progress::bytes(total)
    ));
    let loads = plan.images.iter().filter(|i| i.action == "load").count();
    checks.push(format!(
        "images: {} on the engine, {loads} to load from the snapshot",
        plan.images.len() - loads
    ));
    checks.push("no name, volume, directory or published port in the way".into());
    plan.checks = checks;
    plan.trees = trees;
    Ok(plan)
}

fn dir_is_empty(p: &Path) -> bool {
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
        if !matches!(mode, "default" | "bridge" | "host" | "none")
            && !mode.starts_with("container:")
        {
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
        } else if let Some(root) = &opts.bind_root {
            m.source = root
                .join(m.source.trim_start_matches('/'))
                .display()
                .to_string();
        } else {
            m.source = rename_path(&m.source, old, new);
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

/// What a thaw did on the engine.
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
    pub databases: Vec<crate::db::load::LoadReport>,
    /// Volumes and networks this thaw created.
    pub volumes: Vec<String>,
    pub networks: Vec<String>,
    pub seconds: f64,
}

type Applied = (
    Vec<String>,
    Vec<crate::ops::ThawTreeReport>,
    Vec<crate::db::load::LoadReport>,
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
}

/// Applies a plan. `safety` freezes the existing site before it is replaced and returns
/// the snapshot id (the caller owns freezing, which needs the repository's lock).
pub fn execute(
    repo: &Repository,
    engine: &Engine,
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
            engine.remove_container(name).map_err(|e| {
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
        let host = engine.host.clone();
        crate::interrupt::on_interrupt(Box::new(move || {
            let created = created.lock().unwrap_or_else(|e| e.into_inner());
            if let Ok(engine) = Engine::connect_to(&host) {
                undo(&engine, &created);
                eprintln!(
                    "freezer: removed what the thaw of site {target} had created on the engine"
                );
            }
        }))
    };
    let result = apply(repo, engine, &mut plan, progress, &created);
    crate::interrupt::remove_cleanup(cleanup);
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
                        engine.host
                    ))
                }
            }
            Err(e)
        }
    }
}

fn apply(
    repo: &Repository,
    engine: &Engine,
    plan: &mut SitePlan,
    progress: &Progress,
    created: &Mutex<Created>,
) -> Result<Applied> {
    // Each creation holds the list while the engine call runs, so an interrupt's cleanup
    // sees everything created, and nothing is created after it ran.
    let track = || {
        let list = created.lock().unwrap_or_else(|e| e.into_inner());
        if crate::interrupt::interrupted() {
            return Err(Error::other("interrupted"));
        }
        Ok(list)
    };
    // 0. Every dump downloaded and verified before the engine is touched.
    let mut prepared = Vec::new();
    for m in &plan.dumps {
        prepared.push(crate::db::load::fetch(repo, m.clone(), progress)?);
    }
    // 1. Images the engine lacks, from the snapshot.
    let mut loaded = Vec::new();
    for step in &plan.images {
        if step.action != "load" {
            continue;
        }
        let (spec, manifest, _) = plan
            .specs
            .iter()
            .find(|(s, m, _)| s.image == step.image && !m.layers.is_empty())
            .expect("planned from a container with layers");
        progress.set_label(format!("loading image {}", spec.image));
        load_image(repo, engine, spec, manifest)?;
        loaded.push(spec.image.clone());
    }
    // 2. Networks and volumes.
    for step in &plan.networks {
        if step.action != "create" {
            continue;
        }
        let ns = &plan.network_specs[&step.name];
        let body: bollard::models::NetworkCreateRequest = serde_json::from_value(json!({
            "Name": step.name,
            "Driver": ns.driver,
            "Internal": ns.internal,
            "Attachable": ns.attachable,
            "Labels": ns.labels,
            "Options": ns.options,
        }))
        .map_err(|e| Error::other(format!("network {}: {e}", step.name)))?;
        let mut list = track()?;
        engine.call(&format!("creating network {}", step.name), |d| async move {
            d.create_network(body).await
        })?;
        list.networks.push(step.name.clone());
    }
    let mut mountpoints: HashMap<String, PathBuf> = HashMap::new();
    // Through a remote engine, trees are restored here first, then written into the
    // created containers.
    let stage = tempfile::Builder::new()
        .prefix("freezer-thaw.")
        .tempdir()
        .ctx(|| "creating a staging directory".into())?;
    for step in &plan.volumes {
        let m = plan
            .specs
            .iter()
            .flat_map(|(s, _, _)| &s.mounts)
            .find(|m| m.name.as_deref() == Some(step.name.as_str()))
            .expect("planned from a mount");
        if step.action == "recreate" {
            let n = step.name.clone();
            engine.call(&format!("removing volume {}", step.name), |d| async move {
                d.remove_volume(&n, None::<bollard::query_parameters::RemoveVolumeOptions>)
                    .await
            })?;
        }
        if step.action == "create" || step.action == "recreate" {
            let body: bollard::models::VolumeCreateOptions = serde_json::from_value(json!({
                "Name": step.name,
                "Driver": m.driver.clone().unwrap_or_else(|| "local".into()),
                "DriverOpts": m.options,
                "Labels": m.labels,
            }))
            .map_err(|e| Error::other(format!("volume {}: {e}", step.name)))?;
            let mut list = track()?;
            engine.call(&format!("creating volume {}", step.name), |d| async move {
                d.create_volume(body).await
            })?;
            list.volumes.push(step.name.clone());
        }
        let v = engine.inspect_volume(&step.name)?;
        mountpoints.insert(step.name.clone(), PathBuf::from(v.mountpoint));
        if !engine.is_local() {
            mountpoints.insert(step.name.clone(), stage.path().join(&step.name));
        }
    }
    // 3. Contents: every volume and bind mount through the tree thaw (staged, verified,
    // then moved into place all together).
    let mut trees = Vec::new();
    let dests: Vec<(String, PathBuf, bool)> = plan
        .volumes
        .iter()
        .filter_map(|s| {
            Some((
                s.tree.clone()?,
                mountpoints[&s.name].clone(),
                s.action == "replace",
            ))
        })
        .chain(plan.binds.iter().map(|s| {
            let path = s.path.clone().unwrap_or_default();
            let dest = if engine.is_local() {
                path
            } else {
                stage.path().join(super::capture::tree_name(
                    "bind",
                    &path.display().to_string(),
                ))
            };
            (
                s.tree.clone().unwrap_or_default(),
                dest,
                s.action == "replace",
            )
        }))
        .collect();
    for (tree, dest, replaces) in dests {
        let Some(tp) = plan.trees.remove(&tree) else {
            continue; // mounted twice: restored once
        };
        trees.push(ThawTree {
            name: tree,
            source: dest.clone(),
            dest,
            replaces,
            plan: tp,
        });
    }
    let thaw = ThawPlan {
        snapshot: plan.snap.clone(),
        trees,
        databases: vec![],
        db_jobs: 1,
        db_with_users: false,
    };
    let new_dirs: Vec<(PathBuf, bool)> = plan
        .binds
        .iter()
        .filter(|b| b.action == "create")
        .filter_map(|b| b.path.clone())
        .map(|p| {
            let existed = p.exists();
            (p, existed)
        })
        .collect();
    let report = crate::ops::thaw(repo, &thaw, progress)?;
    track()?.dirs.extend(new_dirs);
    // 4. Containers, in their captured state.
    for (spec, _, _) in &plan.specs {
        progress.set_label(format!("creating container {}", spec.name));
        let body = create_body(spec)?;
        let name = spec.name.clone();
        let mut list = track()?;
        engine.call(
            &format!("creating container {}", spec.name),
            |d| async move {
                d.create_container(
                    Some(CreateContainerOptionsBuilder::new().name(&name).build()),
                    body,
                )
                .await
            },
        )?;
        list.containers.push(spec.name.clone());
        drop(list);
        for (net, ns) in spec.networks.iter().skip(1) {
            let req = NetworkConnectRequest {
                container: Some(spec.name.clone()),
                endpoint_config: Some(EndpointSettings {
                    aliases: Some(ns.aliases.clone()),
                    ..Default::default()
                }),
            };
            let n = net.clone();
            engine.call(
                &format!("connecting {} to network {net}", spec.name),
                |d| async move { d.connect_network(&n, req).await },
            )?;
        }
    }
    let mut report = report;
    if !engine.is_local() {
        for t in &mut report.trees {
            progress.set_label(format!("writing {} through the engine", t.name));
            t.dest = match writer(plan, &t.name) {
                Some((container, dest)) => {
                    super::remote::push(engine, &container, &dest, &t.dest)?;
                    PathBuf::from(format!("{container}:{dest}"))
                }
                None => push_through_helper(engine, plan, &t.name, &t.dest)?,
            };
        }
    }
    // Writable layers into the created containers' own (not yet started) upper directories.
    let mut layers = Vec::new();
    for (spec, _, _) in &plan.specs {
        let Some(tree) = &spec.writable_layer else {
            continue;
        };
        let Some(tp) = plan.trees.remove(tree) else {
            continue;
        };
        let info = engine.inspect_container(&spec.name)?;
        let upper = info
            .graph_driver
            .filter(|g| g.name == "overlay2")
            .and_then(|g| g.data.get("UpperDir").cloned())
            .ok_or_else(|| {
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
        });
    }
    if !layers.is_empty() {
        let r = crate::ops::thaw(
            repo,
            &ThawPlan {
                snapshot: plan.snap.clone(),
                trees: layers,
                databases: vec![],
                db_jobs: 1,
                db_with_users: false,
            },
            progress,
        )?;
        report.trees.extend(r.trees);
    }
    crate::sys::fault_sleep("FREEZER_FAULT_THAW_CREATED_MS");
    // 5. Database containers first: started, waited for, loaded with their dumps.
    let mut db_reports = Vec::new();
    for (step, p) in plan.databases.iter().zip(&prepared) {
        let (spec, _, _) = plan
            .specs
            .iter()
            .find(|(s, _, _)| s.name == step.container)
            .expect("planned");
        let name = spec.name.clone();
        engine.start_container(&name)?;
        let address = container_address(engine, &spec.name)?;
        let url = spec.database_url(&address).expect("checked by plan");
        progress.set_label(format!("waiting for the database in {}", spec.name));
        wait_for_database(&url, &spec.name)?;
        let opts = crate::db::load::LoadOptions {
            jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
            replace: false,
            with_users: false,
        };
        let r = crate::db::load::load_database(p, &url, &opts, progress).map_err(|e| {
            crate::ops::prefix(
                e,
                &format!(
                    "loading database {} into container {}",
                    step.database, spec.name
                ),
            )
        })?;
        db_reports.push(r);
    }
    for (spec, _, _) in &plan.specs {
        if !matches!(spec.state.as_str(), "running" | "paused")
            || plan.databases.iter().any(|d| d.container == spec.name)
        {
            continue;
        }
        let name = spec.name.clone();
        engine.start_container(&name)?;
        if spec.state == "paused" {
            let name = spec.name.clone();
            engine.call(
                &format!("pausing container {}", spec.name),
                |d| async move { d.pause_container(&name).await },
            )?;
        }
    }
    Ok((loaded, report.trees, db_reports))
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
/// the same image that mounts it writable, created (never started) and removed again.
fn push_through_helper(
    engine: &Engine,
    plan: &SitePlan,
    tree: &str,
    dir: &Path,
) -> Result<PathBuf> {
    let (spec, m) = plan
        .specs
        .iter()
        .find_map(|(s, _, _)| s.mounts.iter().find(|m| m.tree == tree).map(|m| (s, m)))
        .expect("a planned tree is mounted");
    let mut b = [0u8; 4];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    let helper = format!("freezer-restore-{}", hex::encode(b));
    let mount = match m.kind.as_str() {
        "volume" => json!({"Type": "volume", "Source": m.name, "Target": "/freezer-restore"}),
        _ => json!({"Type": "bind", "Source": m.source, "Target": "/freezer-restore"}),
    };
    let body: ContainerCreateBody = serde_json::from_value(json!({
        "Image": spec.image,
        "Cmd": ["true"],
        "Entrypoint": [],
        "HostConfig": {"Mounts": [mount]},
    }))
    .map_err(|e| Error::other(format!("a helper container: {e}")))?;
    let name = helper.clone();
    engine.call("creating a helper container", |d| async move {
        d.create_container(
            Some(CreateContainerOptionsBuilder::new().name(&name).build()),
            body,
        )
        .await
    })?;
    let result = super::remote::push(engine, &helper, "/freezer-restore", dir);
    let name = helper.clone();
    let _ = engine.remove_container(&name);
    result?;
    Ok(PathBuf::from(format!("{}:{}", spec.name, m.destination)))
}

/// The container's address on its first network.
fn container_address(engine: &Engine, name: &str) -> Result<String> {
    let n = name.to_string();
    let info = engine.inspect_container(&n)?;
    info.network_settings
        .and_then(|n| n.networks)
        .and_then(|n| {
            n.into_values()
                .find_map(|e| e.ip_address.filter(|a| !a.is_empty()))
        })
        .ok_or_else(|| Error::other(format!("container {name} has no network address")))
}

/// Waits until the database server in a new container accepts the application's login
/// (its first start initializes the data directory; that takes seconds to minutes).
fn wait_for_database(url: &crate::db::DbUrl, container: &str) -> Result<()> {
    let rt = crate::db::conn::runtime(1)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    loop {
        match rt.block_on(url.connect()) {
            Ok(c) => {
                let _ = rt.block_on(c.disconnect());
                return Ok(());
            }
            Err(e) if std::time::Instant::now() > deadline => {
                return Err(e.with_hint(format!(
                    "the database in container {container} did not accept connections within 5 minutes; `docker logs {container}` says why"
                )))
            }
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
        }
    }
}

/// The engine's create request for a captured container: its `Config`, its `HostConfig`
/// with the mounts pointing at the (renamed) volumes and directories, and its first
/// network (the others are connected after creation, as API 1.41 requires).
fn create_body(spec: &ContainerSpec) -> Result<ContainerCreateBody> {
    let mut body = spec.config.clone();
    body["Image"] = Value::String(spec.image.clone());
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
    }
    body["HostConfig"] = hc;
    if let Some((net, ns)) = spec.networks.iter().next() {
        body["NetworkingConfig"] = json!({"EndpointsConfig": {net: {"Aliases": ns.aliases}}});
    }
    serde_json::from_value(body).map_err(|e| {
        Error::integrity(format!(
            "the configuration of container {} cannot be used: {e}",
            spec.name
        ))
    })
}

/// Loads a container's image from the snapshot into the engine (`docker load` of a
/// docker-archive built from the stored layers), tagged with the container's reference.
fn load_image(
    repo: &Repository,
    engine: &Engine,
    spec: &ContainerSpec,
    manifest: &ImageManifest,
) -> Result<()> {
    let dir = tempfile::tempdir().ctx(|| "creating a temporary directory".into())?;
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
        let config = repo.read_blob(&manifest.config.digest)?;
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
    let file = std::fs::File::open(&archive).ctx(|| format!("reading {}", archive.display()))?;
    let body = bollard::body_try_stream(super::file_stream(file));
    engine.block_on(async {
        use futures::StreamExt;
        let mut s = engine.docker.import_image(
            ImportImageOptionsBuilder::new().quiet(true).build(),
            body,
            None,
        );
        while let Some(item) = s.next().await {
            let item =
                item.map_err(|e| engine.error(&format!("loading image {}", spec.image), e))?;
            if let Some(err) = item.error {
                return Err(Error::other(format!(
                    "loading image {} into the Docker engine at {}: {err}",
                    spec.image, engine.host
                )));
            }
        }
        Ok(())
    })
}

fn append_bytes<W: Write>(tar: &mut tar::Builder<W>, name: &str, data: &[u8]) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, name, data)
        .ctx(|| format!("writing {name} of an image archive"))
}

/// Removes a thawed site: its containers, and the volumes and networks the thaw created
/// (a drill's teardown); best effort.
pub fn remove(engine: &Engine, report: &SiteReport) {
    undo(
        engine,
        &Created {
            containers: report.containers.clone(),
            volumes: report.volumes.clone(),
            networks: report.networks.clone(),
            dirs: vec![],
        },
    );
}

/// Removes what a failed thaw created, newest first; best effort.
fn undo(engine: &Engine, created: &Created) {
    for (dir, existed) in &created.dirs {
        let _ = std::fs::remove_dir_all(dir);
        if *existed {
            let _ = std::fs::create_dir(dir);
        }
    }
    for c in created.containers.iter().rev() {
        let _ = engine.remove_container(c);
    }
    for v in created.volumes.iter().rev() {
        let n = v.clone();
        let _ = engine.call("removing a volume", |d| async move {
            d.remove_volume(&n, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
        });
    }
    for net in created.networks.iter().rev() {
        let n = net.clone();
        let _ = engine.call("removing a network", |d| async move {
            d.remove_network(&n).await
        });
    }
}

#[cfg(test)]
mod tests {
    use super::rename;

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
