//! Sites as a Docker engine sees them: containers grouped by freezer's site label, else by
//! their docker compose project. The engine is the one `DOCKER_HOST` names (default: the
//! local socket). This is where Docker sites and hydrated snapshots (issue 4) start.

use std::collections::BTreeMap;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};

/// A label that puts a container in a site explicitly; it wins over the compose project.
pub const SITE_LABEL: &str = "dev.freezer.site";
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";

#[derive(Debug, Serialize)]
pub struct DockerSite {
    pub name: String,
    /// `label` (freezer's site label) or `compose` (the compose project).
    pub source: &'static str,
    pub containers: Vec<ContainerInfo>,
}

#[derive(Debug, Serialize)]
pub struct ContainerInfo {
    pub name: String,
    pub id: String,
    pub image: String,
    /// `running`, `paused`, `exited`, `created`, …
    pub state: String,
    /// The compose service, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

fn engine() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

fn unreachable(e: bollard::errors::Error) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        format!("the Docker engine at {} did not answer: {e}", engine()),
    )
    .with_hint(
        "is dockerd running, and may this user use its socket? DOCKER_HOST selects another engine",
    )
}

/// Every site on the engine, by name.
pub fn list_sites() -> Result<Vec<DockerSite>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the Docker client", e))?;
    let containers = rt.block_on(async {
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        docker
            .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
            .await
            .map_err(unreachable)
    })?;
    let mut sites: BTreeMap<String, DockerSite> = BTreeMap::new();
    for c in containers {
        let labels = c.labels.clone().unwrap_or_default();
        let (name, source) = match (labels.get(SITE_LABEL), labels.get(COMPOSE_PROJECT)) {
            (Some(s), _) => (s.clone(), "label"),
            (None, Some(p)) => (p.clone(), "compose"),
            (None, None) => continue,
        };
        let site = sites.entry(name.clone()).or_insert(DockerSite {
            name,
            source,
            containers: vec![],
        });
        site.containers.push(ContainerInfo {
            name: c
                .names
                .as_ref()
                .and_then(|n| n.first())
                .map(|n| n.trim_start_matches('/').to_string())
                .unwrap_or_default(),
            id: c.id.clone().unwrap_or_default(),
            image: c.image.clone().unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            service: labels.get(COMPOSE_SERVICE).cloned(),
        });
    }
    let mut out: Vec<DockerSite> = sites.into_values().collect();
    for s in &mut out {
        s.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Ok(out)
}
