//! Bringing a hydrated snapshot back on a Docker engine: images, networks, volumes (their
//! contents restored as trees), then containers in their captured state.
//!
//! [`plan`] reads and checks everything first and changes nothing (`--dry-run` prints
//! it); [`execute`] applies it and, on failure, removes what it created.

mod apply;
mod plan;
mod retarget;

pub use apply::*;
pub use plan::*;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;

use serde::Serialize;

use crate::docker::capture::{ContainerSpec, NetworkSpec};
use crate::format::*;
use crate::ops::Action;
use crate::repo::Snapshot;
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
    /// `--project-dir DIR`: the compose project (and the bind sources inside it) goes
    /// into DIR.
    pub project_dir: Option<PathBuf>,
    /// A restore drill: no published ports, no restart policy.
    pub isolated: bool,
    /// `--image SERVICE=IMAGE`: those containers recreated from another image.
    pub images: Vec<(String, String)>,
    /// `--env SERVICE:KEY=VALUE`: environment variables set in those containers.
    pub env: Vec<(String, String, String)>,
    /// Only these of the snapshot's containers (by captured name), with what they mount.
    pub only: Option<Vec<String>>,
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
    /// The compose project, when the snapshot holds one (SPEC.md §13.5).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<ProjectStep>,
    /// Anonymous volumes: each container gets a new one, filled once it is created.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub anonymous: Vec<AnonStep>,
    pub containers: Vec<ContainerStep>,
    /// What the pre-flight checked, for the printed plan.
    pub checks: Vec<String>,
    /// Dumps loaded into database containers (dehydrated snapshots).
    pub databases: Vec<DbStep>,
    #[serde(skip)]
    specs: Vec<(ContainerSpec, ImageManifest, Digest)>,
    #[serde(skip)]
    dumps: Vec<crate::db::Dump>,
    #[serde(skip)]
    trees: HashMap<String, TreePlan>,
    #[serde(skip)]
    snap: Snapshot,
    #[serde(skip)]
    network_specs: BTreeMap<String, NetworkSpec>,
}

/// An anonymous volume of a container: created with it, then filled from `tree`.
#[derive(Debug, Serialize)]
pub struct AnonStep {
    pub container: String,
    pub destination: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Step {
    pub name: String,
    /// `create`, `reuse` (networks), `replace` (contents of an existing volume or
    /// directory, with --replace).
    pub action: Action,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A tree of single files (`files.<dir>`): the files restored into `path`, the only
    /// entries of it that are created or replaced.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// The compose project's directory.
#[derive(Debug, Serialize)]
pub struct ProjectStep {
    /// Where it was at freeze time.
    pub from: String,
    /// Where it goes (the containers' compose labels name it).
    pub to: PathBuf,
    /// Written from the snapshot's tree `project`; false: left as it is (it is there,
    /// or the engine is remote).
    pub written: bool,
    /// Compose and env files whose text names `from`: rewritten to name `to`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rewrite: Vec<PathBuf>,
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
    pub action: Action,
}

#[derive(Debug, Serialize)]
pub struct ContainerStep {
    pub name: String,
    pub image: String,
    /// The state it is brought back to: `running`, `paused`, `exited`, `created`.
    pub state: String,
    /// Published ports as HOST_IP:HOST_PORT->PORT/PROTO.
    pub ports: Vec<String>,
    /// What `--image` and `--env` change in its configuration.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<crate::docker::rebase::FieldChange>,
}

impl SitePlan {
    /// The containers it creates, as they will be created.
    pub fn container_specs(&self) -> impl Iterator<Item = &ContainerSpec> {
        self.specs.iter().map(|(s, _, _)| s)
    }

    /// What the snapshot holds, as its record says (`hydrated`, `dehydrated`).
    pub fn mode(&self) -> String {
        self.snap.mode_name().to_string()
    }
}

/// A scratch site name: `KIND-SITE-<6 hex>` (`drill-shop-1f2e3d`), within the 63
/// characters site names allow.
pub fn scratch_name(kind: &str, site: &str) -> String {
    let mut b = [0u8; 3];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    let keep: String = site.chars().take(63 - 8 - kind.len()).collect();
    format!("{kind}-{keep}-{}", hex::encode(b))
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

#[cfg(test)]
mod tests;
