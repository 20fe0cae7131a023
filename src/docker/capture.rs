//! Reading a Docker site: each container's configuration as a [`ContainerSpec`], the
//! directories it mounts as [`SiteDir`]s (which `ops::sources` makes file trees with
//! their rules, and database endpoints of the database containers); and holding the
//! whole site still (paused or stopped) while the trees are copied.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bollard::query_parameters::StopContainerOptionsBuilder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use super::{ContainerEngine, Engine};
use crate::error::{Error, ErrorKind, IoContext, Result};
use crate::format::*;

/// Container labels that leave things out of the container's volumes and bind mounts:
/// patterns (separated by newlines or commas), CACHEDIR.TAG directories, and directories
/// marked by a file.
pub const LABEL_EXCLUDE: &str = "dev.freezer.exclude";
pub const LABEL_EXCLUDE_CACHES: &str = "dev.freezer.exclude-caches";
pub const LABEL_EXCLUDE_IF_PRESENT: &str = "dev.freezer.exclude-if-present";
/// `false`: the SQLite databases in the container's volumes and bind mounts are copied as
/// files, not through SQLite (SPEC.md §5.5).
pub const LABEL_SQLITE: &str = "dev.freezer.sqlite";
/// How a dehydrated freeze copies the container's volumes while the rest of the site
/// runs: `live` (the default), `pause` or `stop` it for the copy of its own volumes, or
/// `hook` (live; its freeze hooks make its files consistent). See [`Consistency`].
pub const LABEL_CONSISTENCY: &str = "dev.freezer.consistency";

/// How one container's volumes are copied in a freeze that does not hold the whole site.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Copied while it runs (its SQLite databases through SQLite, its Redis saved first).
    Live,
    /// Paused for the copy of its own volumes.
    Pause,
    /// Stopped for the copy of its own volumes, then started again.
    Stop,
    /// Copied while it runs; its own `dev.freezer.hook.before-freeze` makes it consistent.
    Hook,
}

impl Consistency {
    pub fn parse(s: &str) -> Option<Consistency> {
        match s.trim() {
            "live" => Some(Consistency::Live),
            "pause" => Some(Consistency::Pause),
            "stop" => Some(Consistency::Stop),
            "hook" => Some(Consistency::Hook),
            _ => None,
        }
    }
}

/// (Kept here for its callers.)
pub use super::canonical;
/// Manifest and record annotations of a container image.
pub use crate::format::{A_CONTAINER_IMAGE, A_CONTAINER_NAME, A_CONTAINER_STATE};
/// With `--with-images`: the image's own config, its exact text (so a host that loads the
/// image from the snapshot gets the same image, with the same id, and not one made of the
/// container's configuration: its labels and environment, secrets included).
pub const IMAGE_CONFIG_KEY: &str = "dev.freezer.image.config";
/// Set on a container image whose layers are its image's layers (`--with-images`).
pub const A_CONTAINER_WITH_IMAGE: &str = "dev.freezer.container.with-image";
/// The key of the container's full configuration inside its OCI image config.
pub const CONFIG_KEY: &str = "dev.freezer.container";
/// Tree images of a Docker site name the mount they hold.
pub const A_VOLUME_NAME: &str = "dev.freezer.volume.name";
pub const A_BIND_SOURCE: &str = "dev.freezer.bind.source";

/// Everything needed to create the container again (SPEC.md §13).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    /// The image reference the container was created from (`Config.Image`).
    pub image: String,
    /// The image's id (`sha256:…`) at freeze time.
    pub image_id: String,
    /// `running`, `paused`, `exited` or `created`: what thaw brings it back to.
    pub state: String,
    pub platform: Platform,
    /// The engine's `Config` of the container, as the engine reported it.
    pub config: Value,
    /// The engine's `HostConfig` (ports, restart policy, binds, tmpfs, limits, …).
    pub host_config: Value,
    /// User-defined networks it is attached to, by name.
    pub networks: BTreeMap<String, NetworkSpec>,
    /// Volumes and bind mounts, each stored as a tree of the snapshot.
    pub mounts: Vec<MountSpec>,
    /// A database container: the database its environment names, as the official
    /// images read it (MariaDB/MySQL: `MARIADB_DATABASE`/`MYSQL_DATABASE`; PostgreSQL:
    /// `POSTGRES_DB`, else `POSTGRES_USER`, else `postgres`, when `POSTGRES_PASSWORD` is set; set by `ops::sources::capture`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    /// The tree holding the container's writable layer (`--with-writable-layer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writable_layer: Option<String>,
    /// The defaults its image gave it (`Cmd`, `Entrypoint`, `Env`, `User`, …; see
    /// [`super::rebase`]), so `thaw --image` can tell them from what the container set.
    /// Absent in snapshots written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_config: Option<Value>,
}

impl ContainerSpec {
    /// Its compose service, or for a container without compose labels its name.
    pub fn service(&self) -> &str {
        self.config["Labels"][super::COMPOSE_SERVICE]
            .as_str()
            .unwrap_or(&self.name)
    }

    /// Compose's `depends_on` (label `com.docker.compose.depends_on`:
    /// `service:condition:restart,…`): each service and its condition
    /// (`service_started`, `service_healthy`, `service_completed_successfully`).
    pub fn depends_on(&self) -> Vec<(String, String)> {
        self.config["Labels"]["com.docker.compose.depends_on"]
            .as_str()
            .unwrap_or("")
            .split(',')
            .filter(|e| !e.trim().is_empty())
            .map(|e| {
                let mut parts = e.trim().split(':');
                let service = parts.next().unwrap_or("").to_string();
                let condition = parts.next().unwrap_or("service_started").to_string();
                (service, condition)
            })
            .collect()
    }

    /// The program it runs: its entrypoint followed by its command.
    pub fn argv(&self) -> Vec<String> {
        let list = |v: &Value| -> Vec<String> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|s| s.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut argv = list(&self.config["Entrypoint"]);
        argv.extend(list(&self.config["Cmd"]));
        argv
    }

    /// The value of an environment variable as the container has it.
    pub fn env(&self, key: &str) -> Option<String> {
        self.config["Env"].as_array()?.iter().find_map(|e| {
            e.as_str()?
                .strip_prefix(key)?
                .strip_prefix('=')
                .map(str::to_string)
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub aliases: Vec<String>,
    pub driver: String,
    pub internal: bool,
    pub attachable: bool,
    pub labels: BTreeMap<String, String>,
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MountSpec {
    /// `volume` or `bind`.
    pub kind: String,
    /// The volume's name (volumes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The host path at freeze time: the bind source, or the volume's mount point.
    pub source: String,
    pub destination: String,
    pub read_only: bool,
    /// The volume's driver, labels and options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    /// The snapshot tree that holds its contents; empty when they are not stored (a
    /// database container's volume in a dehydrated snapshot, a host file such as
    /// `/etc/localtime` or a socket, which is mounted again from the new host).
    #[serde(default)]
    pub tree: String,
    /// A bind mount of a single file: the file's path inside `tree` (`/`-separated), whose
    /// root is the directory the file is in or a bind-mounted directory above it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// A file of the host itself (`/etc/localtime`, a socket such as
    /// `/var/run/docker.sock`): not copied; a thaw mounts the new host's own.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub host: bool,
    /// An anonymous volume (an image's `VOLUME`, or `-v /path` without a name): the
    /// container gets a new anonymous volume at the same path, filled from `tree`; its
    /// `name` is the old one's, not used again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub anonymous: bool,
}

impl MountSpec {
    /// The host directory its tree's root stands for: the source itself, or for a file
    /// bind the directory `file` is relative to.
    pub fn tree_root(&self) -> &str {
        match &self.file {
            Some(rel) => self
                .source
                .strip_suffix(rel.as_str())
                .map_or(self.source.as_str(), |r| r.trim_end_matches('/')),
            None => &self.source,
        }
    }
}

/// A site as read from the engine.
#[derive(Clone)]
pub struct CapturedSite {
    pub containers: Vec<ContainerSpec>,
    /// Engine ids, in the order of `containers`.
    pub ids: Vec<String>,
    /// One directory per distinct volume or bind source (a tree of the snapshot each;
    /// `ops::sources` gives them their rules).
    pub trees: Vec<SiteDir>,
    /// Each container's address on its first network (for reaching its database).
    pub addresses: Vec<Option<String>>,
    /// Each container's writable layer on this machine (overlay2's upper directory).
    pub upper_dirs: Vec<Option<PathBuf>>,
    /// Each container's health check, when it has one and was healthy at capture.
    pub healthy: Vec<Option<HealthCheck>>,
    /// Containers a dead run had left paused or stopped, put back before they were read
    /// (one note each, for the run's warnings).
    pub recovered: Vec<String>,
}

/// A directory of the site, copied as one tree of the snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SiteDir {
    /// The tree's name ([`tree_name`]).
    pub name: String,
    /// Where it is read: the host path, or a remote engine's mirror of it.
    pub path: PathBuf,
    pub holds: Holds,
}

/// What of a [`SiteDir`] is copied.
#[derive(Clone, Debug, PartialEq)]
pub enum Holds {
    /// All of it (a volume or a bind-mounted directory), under the rules the labels of
    /// the container that mounts it declare ([`LABEL_EXCLUDE`], [`LABEL_SQLITE`], …).
    Mount { labels: Value },
    /// Only these files of it: the site's single-file binds in this directory.
    Files(Vec<String>),
    /// The compose project ([`super::project`]): the files it `named` (relative) kept
    /// whatever their size, and the bind-mounted directories `binds` left out.
    Project {
        named: Vec<PathBuf>,
        binds: Vec<PathBuf>,
    },
    /// A container's writable layer, all of it.
    WritableLayer,
}

/// A container's health check, as far as a freeze needs it.
#[derive(Clone, Debug)]
pub struct HealthCheck {
    /// How long the next check can take to pass once the container runs again: its
    /// interval and its timeout (Docker's defaults: 30 s each).
    pub recovers_within: std::time::Duration,
}

impl CapturedSite {
    /// The same site with only the containers named `names` (to hold those alone).
    pub fn only(&self, names: &[&str]) -> CapturedSite {
        let keep: Vec<usize> = (0..self.containers.len())
            .filter(|&i| names.contains(&self.containers[i].name.as_str()))
            .collect();
        CapturedSite {
            containers: keep.iter().map(|&i| self.containers[i].clone()).collect(),
            ids: keep.iter().map(|&i| self.ids[i].clone()).collect(),
            trees: vec![],
            addresses: keep.iter().map(|&i| self.addresses[i].clone()).collect(),
            upper_dirs: keep.iter().map(|&i| self.upper_dirs[i].clone()).collect(),
            healthy: keep.iter().map(|&i| self.healthy[i].clone()).collect(),
            recovered: vec![],
        }
    }

    /// Brings every tree's mirror up to date from the engine (the site is held still).
    pub fn pull_mirrors(&self, engine: &Engine) -> Result<()> {
        let site = self;
        for t in &site.trees {
            let mounts: Vec<(&ContainerSpec, &String, &MountSpec)> = site
                .containers
                .iter()
                .zip(&site.ids)
                .flat_map(|(c, id)| c.mounts.iter().map(move |m| (c, id, m)))
                .filter(|(_, _, m)| m.tree == t.name)
                .collect();
            let (spec, id, m) = mounts[0];
            let copied = match &m.file {
                // A directory's files, each once, through a container that mounts it.
                Some(_) => {
                    let mut seen = std::collections::HashSet::new();
                    mounts
                        .iter()
                        .filter(|(_, _, m)| seen.insert(m.file.clone()))
                        .try_for_each(|(spec, id, m)| {
                            let file = t.path.join(m.file.as_deref().unwrap_or_default());
                            super::remote::pull_file(engine, id, &spec.name, &m.destination, &file)
                        })
                }
                None => super::remote::pull(engine, id, &spec.name, &m.destination, &t.path),
            };
            copied.map_err(|e| {
                crate::error::prefix(
                    e,
                    &format!("copying {} of container {}", m.destination, spec.name),
                )
            })?;
        }
        Ok(())
    }

    /// The container that holds `database` (see [`ContainerSpec::database`]).
    pub fn database_container(&self, database: &str) -> Option<&str> {
        self.containers
            .iter()
            .find(|c| c.database.as_deref() == Some(database))
            .map(|c| c.name.as_str())
    }

    /// Also copies each container's writable layer (what it changed in its image's
    /// files), as a tree `writable.<container>`. Needs overlay2 on a local engine.
    pub fn include_writable_layers(&mut self) -> Result<()> {
        for (spec, upper) in self.containers.iter_mut().zip(&self.upper_dirs) {
            let Some(upper) = upper else {
                return Err(Error::usage(format!(
                    "the writable layer of container {} is not readable here: it needs a local engine with the overlay2 storage driver",
                    spec.name
                )));
            };
            let tree = tree_name("writable", &spec.name);
            self.trees.push(SiteDir {
                name: tree.clone(),
                path: upper.clone(),
                holds: Holds::WritableLayer,
            });
            spec.writable_layer = Some(tree);
        }
        self.trees.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }
}

/// The contents of the file at `path` in the running container `container` (a
/// credential: never printed; an error says only why it could not be read).
pub fn read_file_in(engine: &dyn ContainerEngine, container: &str, path: &str) -> Result<String> {
    let argv = ["cat", "--", path].map(str::to_string).to_vec();
    let timeout = std::time::Duration::from_secs(60);
    let (code, output) = engine.exec_argv(container, argv, vec![], None, timeout)?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for (is_err, bytes) in output {
        if is_err { &mut err } else { &mut out }.extend(bytes);
    }
    match code {
        Some(0) => String::from_utf8(out).map_err(|_| {
            Error::usage(format!("{path} in container {container} is not UTF-8 text"))
        }),
        _ => Err(Error::usage(format!(
            "could not read {path} in container {container}: {}",
            String::from_utf8_lossy(&err).trim()
        ))
        .with_hint(
            "the file must exist in the container (a compose secret is mounted under /run/secrets)",
        )),
    }
}

/// Reads every container of `site` and the mounts to copy.
pub fn capture(engine: &Engine, site: &str) -> Result<CapturedSite> {
    capture_with(engine, site, false)
}

/// As [`capture`], but bind mounts of single files (a compose project's `./php.ini`) are
/// left out instead of refused: for a site whose volumes and directories are what counts
/// (the target of `thaw --onto`, and its safety snapshot).
pub fn capture_dirs(engine: &Engine, site: &str) -> Result<CapturedSite> {
    capture_with(engine, site, true)
}

/// The site's containers, after what a dead run left paused or stopped was put back
/// ([`super::journal::recover`]): a snapshot never records a state that freezer caused.
/// Also returns a note for each container put back.
fn site_containers_as_they_are(
    engine: &Engine,
    site: &str,
) -> Result<(Vec<super::ContainerInfo>, Vec<String>)> {
    let list = engine.site_containers(site)?;
    let ids: Vec<(String, String)> = list
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    let recovered = super::journal::recover(engine, &ids)?;
    if recovered.is_empty() {
        return Ok((list, recovered));
    }
    Ok((engine.site_containers(site)?, recovered))
}

fn capture_with(engine: &Engine, site: &str, skip_file_binds: bool) -> Result<CapturedSite> {
    let (list, recovered) = site_containers_as_they_are(engine, site)?;
    if list.is_empty() {
        return Err(Error::not_found(format!(
            "the Docker engine at {} has no containers of site {site}",
            engine.endpoint.host
        ))
        .with_hint(format!(
            "`freezer sites` lists the Docker sites (containers labelled {}={site}, or of compose project {site}); for a site of directories and databases pass --path DIR or --db URL, or define [sites.{site}] in freezer.toml",
            super::SITE_LABEL
        )));
    }
    // A local engine's volumes are read where they are; a remote one's are mirrored here
    // through the engine (see `remote`).
    let local = engine.is_local();
    let mut networks: HashMap<String, NetworkSpec> = HashMap::new();
    let mut containers = Vec::new();
    let mut ids = Vec::new();
    let mut addresses = Vec::new();
    let mut upper_dirs = Vec::new();
    let mut healthy = Vec::new();
    let mut trees: Vec<SiteDir> = Vec::new();
    let names_by_id: Vec<(String, String)> = list
        .iter()
        .map(|c| (c.id.clone(), c.name.clone()))
        .collect();
    for c in list {
        let info = engine.inspect_container(&c.id)?;
        let config = info.config.clone().unwrap_or_default();
        let image = config.image.clone().unwrap_or_default();
        let image_id = info.image.clone().unwrap_or_default();
        let iid = image_id.clone();
        let img = engine.call(&format!("inspecting image {image}"), |d| async move {
            d.inspect_image(&iid).await
        })?;
        let short = &c.id[..12.min(c.id.len())];
        let mut config = canonical(serde_json::to_value(&config).unwrap_or(Value::Null));
        // The default hostname is the old container's id; a new container gets its own.
        if config["Hostname"].as_str() == Some(short) {
            config.as_object_mut().map(|o| o.remove("Hostname"));
        }
        let mut host_config = canonical(
            serde_json::to_value(info.host_config.clone().unwrap_or_default())
                .unwrap_or(Value::Null),
        );
        name_joined_container(&mut host_config, &names_by_id);
        let (nets, address) = capture_networks(engine, &info, short, &mut networks)?;
        let mut mounts =
            capture_mounts(engine, &info, &c.name, &config, &mut trees, skip_file_binds)?;
        mounts.sort_by(|a, b| a.destination.cmp(&b.destination));
        let image_config = Some(super::rebase::defaults_of(&img));
        let spec = ContainerSpec {
            name: c.name.clone(),
            image,
            image_id,
            state: c.state.clone(),
            platform: Platform {
                architecture: img
                    .architecture
                    .unwrap_or_else(|| Platform::host().architecture),
                os: img.os.unwrap_or_else(|| "linux".into()),
            },
            config,
            host_config,
            networks: nets,
            mounts,
            database: None,
            writable_layer: None,
            image_config,
        };
        containers.push(spec);
        ids.push(c.id);
        addresses.push(address);
        healthy.push(health_check(&info));
        upper_dirs.push(
            info.graph_driver
                .as_ref()
                .filter(|g| g.name == "overlay2" && local)
                .and_then(|g| g.data.get("UpperDir"))
                .map(PathBuf::from),
        );
    }
    add_project_and_files(engine, &mut containers, &mut trees, skip_file_binds)?;
    Ok(CapturedSite {
        containers,
        ids,
        trees,
        addresses,
        upper_dirs,
        healthy,
        recovered,
    })
}

/// The trees of the site's single files and, when its directory is on this host (a
/// local engine), of its compose project; `trees` sorted by name after.
fn add_project_and_files(
    engine: &Engine,
    containers: &mut [ContainerSpec],
    trees: &mut Vec<SiteDir>,
    skip_file_binds: bool,
) -> Result<()> {
    let local = engine.is_local();
    let mounts = || containers.iter().flat_map(|c| &c.mounts);
    let binds: Vec<PathBuf> = mounts()
        .filter(|m| m.kind == "bind" && m.file.is_none() && !m.host)
        .map(|m| PathBuf::from(&m.source))
        .collect();
    let files: Vec<PathBuf> = mounts()
        .filter(|m| m.file.as_deref() == Some(FILE_PENDING))
        .map(|m| PathBuf::from(&m.source))
        .collect();
    let project = containers
        .iter()
        .filter(|_| local && !skip_file_binds)
        .find_map(|c| super::project::find(&c.config["Labels"], &binds, &files));
    let mirror_of = (!local).then_some(engine.endpoint.host.as_str());
    place_files(containers, trees, project.as_ref(), mirror_of)?;
    if let Some(p) = &project {
        trees.push(SiteDir {
            name: super::project::PROJECT_TREE.into(),
            path: p.dir.clone(),
            holds: Holds::Project {
                named: p.named.clone(),
                binds,
            },
        });
    }
    trees.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(())
}

/// The health check of a container that is healthy now.
fn health_check(info: &bollard::models::ContainerInspectResponse) -> Option<HealthCheck> {
    use bollard::models::HealthStatusEnum;
    let status = info.state.as_ref()?.health.as_ref()?.status?;
    if status != HealthStatusEnum::HEALTHY {
        return None;
    }
    let hc = info.config.as_ref()?.healthcheck.as_ref()?;
    let ns = |v: Option<i64>| {
        std::time::Duration::from_nanos(v.filter(|n| *n > 0).unwrap_or(30_000_000_000) as u64)
    };
    let start = std::time::Duration::from_nanos(hc.start_period.unwrap_or(0).max(0) as u64);
    Some(HealthCheck {
        recovers_within: ns(hc.interval) + ns(hc.timeout) + start,
    })
}

/// `NetworkMode: container:<id>` (compose's `network_mode: service:X`) as
/// `container:<name>` when that container is of the site (`names_by_id`), which a thaw
/// renames with the site: an id means nothing on another host.
fn name_joined_container(host_config: &mut Value, names_by_id: &[(String, String)]) {
    let joined = host_config["NetworkMode"]
        .as_str()
        .and_then(|m| m.strip_prefix("container:"))
        .and_then(|t| {
            names_by_id
                .iter()
                .find(|(id, name)| id.starts_with(t) || name == t)
        });
    if let Some((_, name)) = joined {
        host_config["NetworkMode"] = Value::String(format!("container:{name}"));
    }
}

/// The user-defined networks a container is attached to (each network inspected once,
/// into `networks`), and its address on the first one.
fn capture_networks(
    engine: &Engine,
    info: &bollard::models::ContainerInspectResponse,
    short: &str,
    networks: &mut HashMap<String, NetworkSpec>,
) -> Result<(BTreeMap<String, NetworkSpec>, Option<String>)> {
    let mut nets = BTreeMap::new();
    let endpoints = info
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let mut address = None;
    for (net, ep) in endpoints {
        if address.is_none() {
            address = ep.ip_address.clone().filter(|a| !a.is_empty());
        }
        if matches!(net.as_str(), "bridge" | "host" | "none") {
            continue;
        }
        if !networks.contains_key(&net) {
            let n = net.clone();
            let info = engine.call(&format!("inspecting network {net}"), |d| async move {
                d.inspect_network(&n, None::<bollard::query_parameters::InspectNetworkOptions>)
                    .await
            })?;
            networks.insert(
                net.clone(),
                NetworkSpec {
                    aliases: vec![],
                    driver: info.driver.unwrap_or_else(|| "bridge".into()),
                    internal: info.internal.unwrap_or(false),
                    attachable: info.attachable.unwrap_or(false),
                    labels: info.labels.unwrap_or_default().into_iter().collect(),
                    options: info.options.unwrap_or_default().into_iter().collect(),
                },
            );
        }
        let mut spec = networks[&net].clone();
        // The engine adds the container's short id as an alias; a new container gets
        // its own.
        spec.aliases = ep
            .aliases
            .unwrap_or_default()
            .into_iter()
            .filter(|a| a != short)
            .collect();
        spec.aliases.sort();
        spec.aliases.dedup();
        nets.insert(net, spec);
    }
    Ok((nets, address))
}

/// A container's volumes and bind mounts, each added to `trees` once.
fn capture_mounts(
    engine: &Engine,
    info: &bollard::models::ContainerInspectResponse,
    container: &str,
    config: &Value,
    trees: &mut Vec<SiteDir>,
    skip_file_binds: bool,
) -> Result<Vec<MountSpec>> {
    let local = engine.is_local();
    let mut mounts = Vec::new();
    for m in info.mounts.clone().unwrap_or_default() {
        let kind = m.typ.map(|t| t.to_string()).unwrap_or_default();
        let source = m.source.clone().unwrap_or_default();
        let destination = m.destination.clone().unwrap_or_default();
        let mut anonymous = false;
        let (tree, name, driver, labels, options) = match kind.as_str() {
            "volume" => {
                let name = m.name.clone().unwrap_or_default();
                let v = engine.inspect_volume(&name)?;
                anonymous = is_anonymous(&name, info);
                // An anonymous volume's tree is named after where it is mounted: its own
                // name changes with every container that gets one.
                let tree = match anonymous {
                    true => tree_name("anon", &format!("{container}{destination}")),
                    false => tree_name("volume", &name),
                };
                (
                    tree,
                    Some(name),
                    Some(v.driver),
                    v.labels.into_iter().collect(),
                    v.options.into_iter().collect(),
                )
            }
            "bind" => (
                tree_name("bind", source.trim_start_matches('/')),
                None,
                None,
                BTreeMap::new(),
                BTreeMap::new(),
            ),
            // tmpfs and the like hold nothing to keep; HostConfig recreates them.
            _ => continue,
        };
        if kind == "volume" && m.driver.as_deref().is_some_and(|d| d != "local") {
            return Err(Error::usage(format!(
                "container {} mounts volume {} of driver {}; freezer copies only local volumes",
                container,
                name.as_deref().unwrap_or(""),
                m.driver.as_deref().unwrap_or("")
            )));
        }
        let path = if local {
            PathBuf::from(&source)
        } else {
            let mirror = super::remote::mirror_path(&engine.endpoint.host, &source, &tree);
            std::fs::create_dir_all(&mirror).ctx(|| format!("creating {}", mirror.display()))?;
            mirror
        };
        if kind == "bind" && !skip_file_binds {
            let read_only = !m.rw.unwrap_or(true);
            if let Some(f) = file_bind(engine, container, &source, &destination, &path, read_only)?
            {
                mounts.push(f);
                continue;
            }
        }
        let at = (container, destination.as_str());
        let skip = kind == "bind" && skip_file_binds;
        if !add_tree(engine, trees, &tree, path, at, skip, &config["Labels"])? {
            continue;
        }
        mounts.push(MountSpec {
            kind,
            name,
            source,
            destination,
            read_only: !m.rw.unwrap_or(true),
            driver,
            labels,
            options,
            tree,
            file: None,
            host: false,
            anonymous,
        });
    }
    Ok(mounts)
}

/// Whether the volume `name` a container mounts is anonymous: the engine named it (64
/// hex digits) and the container's configuration does not (Docker 20.10 has no label for
/// it; later versions add `com.docker.volume.anonymous`).
fn is_anonymous(name: &str, info: &bollard::models::ContainerInspectResponse) -> bool {
    if name.len() != 64 || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
        return false;
    }
    let hc = info.host_config.as_ref();
    let in_binds = hc
        .and_then(|h| h.binds.as_ref())
        .is_some_and(|b| b.iter().any(|s| s.split(':').next() == Some(name)));
    let in_mounts = hc
        .and_then(|h| h.mounts.as_ref())
        .is_some_and(|m| m.iter().any(|m| m.source.as_deref() == Some(name)));
    !in_binds && !in_mounts
}

/// Adds the tree of a volume or bind-mounted directory at `path` (mounted by
/// `container` at `destination`) to `trees` once; a path mounted twice under different
/// tree names is refused. False: a bind of a single file, left out when
/// `skip_file_binds` ([`capture_dirs`]).
fn add_tree(
    engine: &Engine,
    trees: &mut Vec<SiteDir>,
    tree: &str,
    path: PathBuf,
    (container, destination): (&str, &str),
    skip_file_binds: bool,
    labels: &Value,
) -> Result<bool> {
    let local = engine.is_local();
    match trees.iter().find(|t| t.path == path) {
        Some(t) if t.name != tree => {
            return Err(Error::usage(format!(
                "{} is mounted as {} and as {tree}",
                path.display(),
                t.name
            )))
        }
        Some(_) => return Ok(true),
        None => {}
    }
    if skip_file_binds {
        let dir = match local {
            true => path.is_dir(),
            false => super::remote::is_dir(engine, container, destination)?,
        };
        if !dir {
            return Ok(false);
        }
    }
    if local && !path.is_dir() {
        let what = match path.exists() {
            true => "which is neither a directory nor a file freezer can copy",
            false => "which does not exist on this host",
        };
        return Err(Error::usage(format!(
            "container {container} mounts {} at {destination}, {what}",
            path.display()
        )));
    }
    trees.push(SiteDir {
        name: tree.to_string(),
        path,
        holds: Holds::Mount {
            labels: labels.clone(),
        },
    });
    Ok(true)
}

/// A bind mount of something other than a directory, as a mount to record (None: a
/// directory, copied as a tree). A file of the project (a config file, a compose
/// secret) is copied once [`place_files`] gives it a tree; a file of the host's system,
/// a socket or a device is mounted again from the new host as it is.
fn file_bind(
    engine: &Engine,
    container: &str,
    source: &str,
    destination: &str,
    path: &Path,
    read_only: bool,
) -> Result<Option<MountSpec>> {
    // Through a remote engine the file is seen through the container (and read through
    // it: see `CapturedSite::pull_mirrors`).
    let copied = if engine.is_local() {
        let Some(meta) = std::fs::metadata(path).ok().filter(|m| !m.is_dir()) else {
            return Ok(None);
        };
        meta.is_file() && !is_host_file(source)
    } else {
        if super::remote::is_dir(engine, container, destination)? {
            return Ok(None);
        }
        !is_host_file(source)
    };
    Ok(Some(MountSpec {
        kind: "bind".into(),
        name: None,
        source: source.to_string(),
        destination: destination.to_string(),
        read_only,
        driver: None,
        labels: BTreeMap::new(),
        options: BTreeMap::new(),
        tree: String::new(),
        file: copied.then(|| FILE_PENDING.to_string()),
        host: !copied,
        anonymous: false,
    }))
}

/// What a file bind's `file` holds until [`place_files`] puts it in a tree.
const FILE_PENDING: &str = "";

/// Host files and directories a container mounts from the machine itself rather than
/// from its project: mounted again from the new host, never copied.
fn is_host_file(source: &str) -> bool {
    [
        "/etc/",
        "/proc/",
        "/sys/",
        "/dev/",
        "/run/",
        "/var/run/",
        "/usr/",
        "/lib/",
        "/boot/",
    ]
    .iter()
    .any(|p| source.starts_with(p))
}

/// Puts each copied file bind in a tree: the bind-mounted directory it lies under, if
/// the site has one, else the compose project's tree if it lies in the project, else a
/// tree of the directory it is in (`files.<dir>`) that holds just the site's bound files
/// of that directory (everything else excluded).
fn place_files(
    containers: &mut [ContainerSpec],
    trees: &mut Vec<SiteDir>,
    project: Option<&super::project::Project>,
    mirror_of: Option<&str>,
) -> Result<()> {
    for c in containers.iter_mut() {
        for m in c.mounts.iter_mut() {
            if m.file.as_deref() != Some(FILE_PENDING) {
                continue;
            }
            let path = Path::new(&m.source);
            // (Through a remote engine the trees are mirrors: each file gets a tree of
            // its directory's files.)
            let under = trees
                .iter()
                .filter(|t| mirror_of.is_none() && t.name.starts_with("bind."))
                .filter(|t| path.starts_with(&t.path))
                .max_by_key(|t| t.path.as_os_str().len());
            if let Some(t) = under {
                let rel = path.strip_prefix(&t.path).expect("checked above");
                m.tree = t.name.clone();
                m.file = Some(rel.to_string_lossy().into_owned());
                continue;
            }
            if let Some(rel) = project.and_then(|p| path.strip_prefix(&p.dir).ok()) {
                m.tree = super::project::PROJECT_TREE.into();
                m.file = Some(rel.to_string_lossy().into_owned());
                continue;
            }
            let dir = path.parent().unwrap_or(Path::new("/"));
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let tree = tree_name("files", dir.to_string_lossy().trim_start_matches('/'));
            let path = match mirror_of {
                Some(host) => {
                    let m = super::remote::mirror_path(host, &dir.to_string_lossy(), &tree);
                    std::fs::create_dir_all(&m).ctx(|| format!("creating {}", m.display()))?;
                    m
                }
                None => dir.to_path_buf(),
            };
            match trees.iter_mut().find(|t| t.name == tree) {
                Some(SiteDir {
                    holds: Holds::Files(names),
                    ..
                }) => {
                    if !names.contains(&name) {
                        names.push(name.clone())
                    }
                }
                _ => trees.push(SiteDir {
                    name: tree.clone(),
                    path,
                    holds: Holds::Files(vec![name.clone()]),
                }),
            }
            m.tree = tree;
            m.file = Some(name);
        }
    }
    Ok(())
}

/// A tree name (`[A-Za-z0-9._-]{1,63}`) for a volume or bind source; long or unusual
/// names keep a readable prefix and a hash that keeps them apart.
pub fn tree_name(kind: &str, s: &str) -> String {
    let clean: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '.'
            }
        })
        .collect();
    let name = format!("{kind}.{clean}");
    if name.len() <= 63 && clean == s.replace('/', ".") {
        return name;
    }
    let hash = hex::encode(&Sha256::digest(s.as_bytes())[..6]);
    let keep: String = name.chars().take(63 - 13).collect();
    format!("{keep}-{hash}")
}

// ---------------------------------------------------------------------------------------
// the window

/// How the site was held still while its volumes were copied.
#[derive(Debug, Clone, Serialize)]
pub struct WindowReport {
    pub mode: HoldMode,
    /// The containers paused or stopped for the copy.
    pub containers: Vec<String>,
    /// From the first pause (or stop) to the last container running again.
    pub ms: u64,
    /// How long after the window the freeze waited for the containers that were healthy
    /// before it to pass a health check again (see [`await_health`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_ms: Option<u64>,
    /// Those that did not, within their check's interval and timeout.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unhealthy: Vec<String>,
}

/// How a site is held still while its volumes are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMode {
    /// Paused (cgroup freezer): the default.
    Pause,
    /// Stopped and started again (`--stop`): a clean shutdown, e.g. for databases.
    Stop,
}

#[derive(Clone)]
struct Held {
    id: String,
    name: String,
    /// true: we stopped it (start it again); false: we paused it (unpause it).
    stopped: bool,
}

/// Registers the interrupt cleanup that resumes what `held` lists (or, when the engine
/// cannot be reached, says what to resume by hand), for as long as the guard lives.
fn resume_on_interrupt(
    engine: &Engine,
    held: Arc<Mutex<Vec<Held>>>,
    cancel: &crate::progress::Cancel,
) -> crate::interrupt::Registered {
    let endpoint = engine.endpoint.clone();
    let cli = engine.flavor.cli();
    cancel.scope().on_interrupt(Box::new(move || {
        // Held throughout: the main thread is not pausing or resuming meanwhile.
        let mut list = held.lock().unwrap_or_else(|e| e.into_inner());
        if list.is_empty() {
            return;
        }
        let Ok(engine) = Engine::connect_to(&endpoint) else {
            eprintln!("freezer: could not reach the Docker engine to resume the site; resume these containers by hand:");
            for h in list.iter() {
                let how = if h.stopped { "start" } else { "unpause" };
                eprintln!("freezer:   {} ({cli} {how})", h.name);
            }
            return;
        };
        for e in release(&engine, &list) {
            eprintln!("freezer: {e}");
        }
        let names: Vec<&str> = list.iter().map(|h| h.name.as_str()).collect();
        eprintln!("freezer: resumed {}", names.join(", "));
        list.clear();
    }))
}

/// Pauses one container, or with `stop` stops it (with its own stop timeout).
fn hold_one(engine: &Engine, spec: &ContainerSpec, id: &str, stop: bool) -> Result<()> {
    let (cid, name) = (id.to_string(), spec.name.clone());
    if stop {
        let timeout = spec.config["StopTimeout"].as_i64().unwrap_or(10) as i32;
        engine.call(&format!("stopping container {name}"), |d| async move {
            d.stop_container(
                &cid,
                Some(StopContainerOptionsBuilder::new().t(timeout).build()),
            )
            .await
        })?;
    } else {
        engine
            .call(&format!("pausing container {name}"), |d| async move {
                d.pause_container(&cid).await
            })
            .map_err(|e| changed_state(e, &spec.name))?;
    }
    Ok(())
}

/// A container that left `running` after the site was read (stopping, restarting, or
/// paused by something else) is a conflict a later run will not meet, not a broken
/// engine: exit 7, with what to do. Docker and Podman say so in these words.
fn changed_state(mut e: Error, name: &str) -> Error {
    const SAYS: [&str; 4] = [
        "is not running",
        "state improper",
        "is restarting",
        "is already paused",
    ];
    if SAYS.iter().any(|s| e.message.contains(s)) {
        e.kind = ErrorKind::Conflict;
        e.hint = Some(format!(
            "container {name} changed state as the freeze began (stopping, restarting, or paused by something else); nothing was recorded and the site's other containers run as before: wait until it runs or has stopped, then freeze again"
        ));
    }
    e
}

/// Pauses (or with `stop`, stops) every running container of the site, runs `copy`, and
/// returns every container to the state it had, also when `copy` fails or the run is
/// interrupted (SIGINT/SIGTERM).
pub fn hold<T>(
    engine: &Engine,
    site: &CapturedSite,
    stop: bool,
    cancel: &crate::progress::Cancel,
    copy: impl FnOnce() -> Result<T>,
) -> Result<(T, WindowReport)> {
    let held: Arc<Mutex<Vec<Held>>> = Arc::default();
    let cleanup = resume_on_interrupt(engine, held.clone(), cancel);
    let started = Instant::now();
    // Not even SIGKILL may leave the site paused: a watchdog process resumes what is
    // still held if this one dies (see guard.rs).
    let mut guard = None;
    let result = (|| {
        for (spec, id) in site.containers.iter().zip(&site.ids) {
            if spec.state != "running" {
                continue;
            }
            if guard.is_none() {
                guard = Some(super::guard::Guard::start(&engine.endpoint)?);
            }
            // Holding the list while the call runs: an interrupt's cleanup waits for it,
            // so no container is paused after the cleanup has resumed the others.
            let mut list = held.lock().unwrap_or_else(|e| e.into_inner());
            cancel.check(|| format!("pausing container {}", spec.name))?;
            // On disk first: if this run and its watchdog both die, the next run finds it.
            super::journal::record(engine, id, &spec.name, stop)?;
            if let Err(e) = hold_one(engine, spec, id, stop) {
                super::journal::clear(id);
                return Err(e);
            }
            if let Some(g) = guard.as_mut() {
                g.held(id, &spec.name, stop)?;
            }
            list.push(Held {
                id: id.clone(),
                name: spec.name.clone(),
                stopped: stop,
            });
        }
        crate::fault::pause(crate::fault::Pause::HoldWindow, cancel);
        copy()
    })();
    let (names, errors) = {
        let mut list = held.lock().unwrap_or_else(|e| e.into_inner());
        let errors = release(engine, &list);
        let names: Vec<String> = list.iter().map(|h| h.name.clone()).collect();
        list.clear();
        (names, errors)
    };
    drop(cleanup);
    if errors.is_empty() {
        if let Some(g) = guard {
            g.done();
        }
    }
    let report = WindowReport {
        mode: if stop {
            HoldMode::Stop
        } else {
            HoldMode::Pause
        },
        containers: names,
        ms: started.elapsed().as_millis() as u64,
        health_ms: None,
        unhealthy: vec![],
    };
    if !errors.is_empty() {
        let cli = engine.flavor.cli();
        let mut e = Error::other(errors.join("; ")).with_hint(format!(
            "the site is not fully running again: resume the containers named with `{cli} unpause` or `{cli} start`",
        ));
        if let Err(first) = result {
            e.message = format!("{}; then {}", first.message, e.message);
        }
        return Err(e);
    }
    Ok((result?, report))
}

/// Resumes what [`hold`] paused or stopped, in reverse order; returns what failed.
/// After a pause window: waits until every held container that was healthy before it
/// passes a health check again, each for at most its check's interval and timeout.
/// Docker marks a container `unhealthy` the moment it is paused, and keeps that until the
/// first check after it runs again (one interval later; nothing starts a check sooner),
/// however short the pause was: a freeze that returned at once would leave the site
/// looking unhealthy to `depends_on: service_healthy`, to restarters like autoheal and to
/// monitoring. Records the wait and the containers that did not recover in `window`;
/// returns a warning for each of those.
pub fn await_health(
    engine: &Engine,
    site: &CapturedSite,
    window: &mut WindowReport,
) -> Vec<String> {
    use bollard::models::HealthStatusEnum;
    let started = Instant::now();
    let mut waiting: Vec<(&str, &String, Instant)> = site
        .containers
        .iter()
        .zip(&site.ids)
        .zip(&site.healthy)
        .filter(|((c, _), _)| window.containers.contains(&c.name))
        .filter_map(|((c, id), h)| {
            Some((c.name.as_str(), id, started + h.as_ref()?.recovers_within))
        })
        .collect();
    if waiting.is_empty() {
        return vec![];
    }
    let mut warnings = Vec::new();
    while !waiting.is_empty() {
        let now = Instant::now();
        let mut still = Vec::new();
        for (name, id, deadline) in waiting {
            let status = engine
                .inspect_container(id)
                .ok()
                .and_then(|i| i.state?.health?.status);
            if status == Some(HealthStatusEnum::HEALTHY) {
                continue;
            }
            if now >= deadline {
                let status = status.map_or("unknown".to_string(), |s| s.to_string());
                warnings.push(format!(
                    "container {name} was healthy before the pause window and is {status} {:.0} s after it; `docker inspect {name}` shows its last health checks",
                    now.duration_since(started).as_secs_f64()
                ));
                window.unhealthy.push(name.to_string());
                continue;
            }
            still.push((name, id, deadline));
        }
        waiting = still;
        if !waiting.is_empty() {
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    }
    window.health_ms = Some(started.elapsed().as_millis() as u64);
    warnings
}

fn release(engine: &Engine, held: &[Held]) -> Vec<String> {
    let mut errors = Vec::new();
    for h in held.iter().rev() {
        let id = h.id.clone();
        let r = if h.stopped {
            engine.start_container(&id)
        } else {
            engine.call(&format!("unpausing container {}", h.name), |d| async move {
                d.unpause_container(&id).await
            })
        };
        match r {
            Ok(()) => super::journal::clear(&h.id),
            // Someone else resumed it already.
            Err(e) if e.kind == ErrorKind::Conflict && e.message.contains("not paused") => {
                super::journal::clear(&h.id)
            }
            // The journal keeps it: the next run resumes it.
            Err(e) => errors.push(e.message),
        }
    }
    errors
}

#[cfg(test)]
mod fixture {
    use super::ContainerSpec;
    use crate::docker::rebase::{merge, rebase};
    use serde_json::{json, Value};

    const FIXTURE: &str = include_str!("../../formats/v1/container-config.json");

    /// SPEC.md §13.1: a captured compose web container, with its image's defaults.
    #[test]
    fn the_container_config_fixture_reads_writes_back_and_moves_to_another_image() {
        let v: Value = serde_json::from_str(FIXTURE).unwrap();
        let mut spec: ContainerSpec = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(serde_json::to_value(&spec).unwrap(), v);
        assert_eq!(spec.service(), "web");
        // A host file is mounted again, not copied; a file bind's tree stands for the
        // directory its path is relative to.
        let m = |d: &str| spec.mounts.iter().find(|m| m.destination == d).unwrap();
        assert!(m("/etc/localtime").host && m("/etc/localtime").tree.is_empty());
        assert_eq!(m("/run/secrets/db-password").tree_root(), "/srv/fx");
        assert_eq!(
            m("/usr/local/etc/php/conf.d/uploads.ini").tree_root(),
            "/srv/fx/conf"
        );
        assert_eq!(m("/app/uploads").tree_root(), m("/app/uploads").source);
        let old = spec.image_config.clone().expect("recorded");
        let new = json!({"Cmd": ["php-fpm"], "Env": ["PATH=/usr/bin", "APP_VERSION=2"]});
        rebase(&mut spec.config, &old, &new, "web:2");
        let created = merge(&spec.config, &new);
        assert_eq!(created["Cmd"], json!(["php-fpm"]));
        assert_eq!(created["WorkingDir"], Value::Null);
        assert_eq!(
            created["Env"],
            json!(["SITE_MARKER=fx", "PATH=/usr/bin", "APP_VERSION=2"])
        );
        // Snapshots from before the field read as before.
        let mut old_format = v;
        old_format.as_object_mut().unwrap().remove("image_config");
        let spec: ContainerSpec = serde_json::from_value(old_format).unwrap();
        assert!(spec.image_config.is_none());
    }
}

#[cfg(test)]
mod changed_state_tests {
    use super::changed_state;
    use crate::error::{Error, ErrorKind};

    #[test]
    fn a_container_that_left_running_is_a_conflict_with_a_hint() {
        // As Docker and Podman word a pause refused for the container's state.
        for says in [
            "pausing container web on unix:///run/docker.sock: Container 0a1b is not running",
            "pausing container web on unix:///run/docker.sock: Container 0a1b is restarting, wait until the container is running",
            "pausing container web on unix:///run/podman.sock: \"stopping\" is not running, can't pause: container state improper",
        ] {
            let e = changed_state(Error::other(says), "web");
            assert_eq!(e.kind, ErrorKind::Conflict, "{says}");
            assert!(e.hint.unwrap().contains("container web changed state"));
        }
        // Anything else keeps its kind and has no such hint.
        let e = changed_state(
            Error::other("pausing container web: cgroups v1 cannot freeze"),
            "web",
        );
        assert_eq!(e.kind, ErrorKind::Other);
        assert!(e.hint.is_none());
    }
}
