//! Sites as a Docker engine sees them, and the engine calls freezer makes.
//!
//! A site is the set of containers with freezer's site label, else with one docker compose
//! project. The engine is the one `DOCKER_HOST` names (default: the local socket).
//! [`capture`] reads a site's containers into [`ContainerSpec`]s and holds the site still
//! while its volumes are copied; [`recreate`] brings a captured site back on an engine.

pub mod api;
pub mod capture;
#[cfg(test)]
pub mod fake;
pub mod guard;
pub mod images;
pub mod journal;
pub mod project;
mod raw;
pub mod rebase;
pub mod remote;
mod ssh;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::PathBuf;

use bollard::query_parameters::ListContainersOptionsBuilder;
use bollard::Docker;
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
pub use api::ContainerEngine;

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

/// A piece of what a command run in a container wrote: true when it came on stderr.
pub type Output = (bool, Vec<u8>);

/// A connection to one Docker engine, with the runtime its async client needs. Every
/// method blocks; freezer's operations are sequential at this level.
pub struct Engine {
    rt: &'static tokio::runtime::Runtime,
    pub docker: Docker,
    /// Where the engine was reached (its host as given names it in messages).
    pub endpoint: Endpoint,
    /// What answers there: Docker or Podman, rootful or rootless.
    pub flavor: Flavor,
    /// How plain HTTP reads reach the engine (see [`raw`]); none behind TLS.
    raw: Option<raw::Route>,
    /// The SSH tunnel to an `ssh://` engine; last, so the client goes first.
    _tunnel: Option<ssh::Tunnel>,
}

/// What kind of engine answers at an endpoint; Podman serves the Docker API too, with
/// differences freezer checks before it changes anything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Flavor {
    /// Podman (`podman system service`), else Docker.
    pub podman: bool,
    /// Runs as an unprivileged user, in a user namespace.
    pub rootless: bool,
    /// Can pause containers: not rootless on cgroup v1 (the cgroup freezer needs
    /// privileges there; rootless engines pause only on cgroup v2).
    pub can_pause: bool,
}

impl Flavor {
    /// From the engine's `/version` and `/info` answers.
    fn of(version: &bollard::models::SystemVersion, info: &serde_json::Value) -> Flavor {
        let podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let rootless = info["Rootless"].as_bool() == Some(true)
            || info["SecurityOptions"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o.as_str())
                .any(|o| o.split(',').any(|kv| kv == "name=rootless"));
        let cgroup_v1 = info["CgroupVersion"].as_str() == Some("1");
        Flavor {
            podman,
            rootless,
            can_pause: !(rootless && cgroup_v1),
        }
    }

    /// The engine's own command line, for what a message tells a person to run.
    pub fn cli(&self) -> &'static str {
        if self.podman {
            "podman"
        } else {
            "docker"
        }
    }
}

/// How to reach an engine: `unix:///PATH`, `ssh://[USER@]HOST[:PORT][/SOCKET]` or
/// `tcp://HOST:PORT`, the latter with TLS when
/// `tls` names a directory of client certificates (`ca.pem`, `cert.pem`, `key.pem`, the
/// layout `docker --tlsverify` uses). The engine's certificate is verified against
/// `ca.pem`, and freezer authenticates with `cert.pem`.
#[derive(Debug, Clone, Default)]
pub struct Endpoint {
    pub host: String,
    pub tls: Option<PathBuf>,
}

impl Endpoint {
    /// The engine the environment names, the way the docker CLI reads it: `DOCKER_HOST`
    /// (default the local socket); TLS when `DOCKER_TLS_VERIFY` is set, with the
    /// certificates in `DOCKER_CERT_PATH` (default `~/.docker`).
    pub fn from_env() -> Endpoint {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let host = var("DOCKER_HOST").unwrap_or_else(|| "unix:///var/run/docker.sock".into());
        let tls = var("DOCKER_TLS_VERIFY").filter(|v| v != "0").map(|_| {
            var("DOCKER_CERT_PATH")
                .map(PathBuf::from)
                .or_else(|| var("HOME").map(|h| PathBuf::from(h).join(".docker")))
                .unwrap_or_else(|| PathBuf::from(".docker"))
        });
        Endpoint { host, tls }
    }

    /// `tcp://HOST` without a port is, as for the docker CLI, port 2376 with TLS and
    /// 2375 without (bollard would take HTTP's 80).
    fn with_default_port(&self) -> Endpoint {
        let mut out = self.clone();
        let Some(rest) = self.host.strip_prefix("tcp://") else {
            return out;
        };
        let authority = rest.split('/').next().unwrap_or_default();
        let has_port = match authority.rsplit_once(']') {
            Some((_, after)) => after.starts_with(':'),
            None => authority.contains(':'),
        };
        if !has_port && !authority.is_empty() {
            let port = if self.tls.is_some() { 2376 } else { 2375 };
            let path = &rest[authority.len()..];
            out.host = format!("tcp://{authority}:{port}{path}");
        }
        out
    }
}

impl Engine {
    /// Connects to the engine the environment names (`DOCKER_HOST`, and as the docker CLI
    /// does, `DOCKER_TLS_VERIFY` / `DOCKER_CERT_PATH`) and checks that it answers.
    pub fn connect() -> Result<Engine> {
        Engine::connect_to(&Endpoint::from_env())
    }

    /// Connects to the engine at `endpoint` and checks that it answers.
    pub fn connect_to(endpoint: &Endpoint) -> Result<Engine> {
        let endpoint = &endpoint.with_default_port();
        let rt = crate::sys::runtime()?;
        let host = endpoint.host.clone();
        // An ssh:// engine is reached through a tunnel to its socket, and then read and
        // written like any remote engine (its paths are not this machine's).
        let tunnel = host
            .starts_with("ssh://")
            .then(|| ssh::Tunnel::open(&host))
            .transpose()?;
        // bollard's request paths carry no version prefix, so the engine answers in its
        // own API version (Docker 20.10 refuses prefixes newer than 1.41).
        let docker = if let Some(t) = &tunnel {
            Docker::connect_with_unix(t.socket(), 300, bollard::API_DEFAULT_VERSION)
        } else if let Some(path) = host.strip_prefix("unix://") {
            Docker::connect_with_unix(path, 300, bollard::API_DEFAULT_VERSION)
        } else if let (true, Some(dir)) = (host.starts_with("tcp://"), &endpoint.tls) {
            let (ca, cert, key) = (dir.join("ca.pem"), dir.join("cert.pem"), dir.join("key.pem"));
            for f in [&ca, &cert, &key] {
                if !f.is_file() {
                    return Err(Error::usage(format!(
                        "the TLS certificates for {host} are incomplete: {} is missing",
                        f.display()
                    ))
                    .with_hint("the directory needs ca.pem, cert.pem and key.pem, as for `docker --tlsverify`"));
                }
            }
            Docker::connect_with_ssl(
                &host,
                &key,
                &cert,
                &ca,
                300,
                bollard::API_DEFAULT_VERSION,
            )
        } else if host.starts_with("tcp://") || host.starts_with("http://") {
            Docker::connect_with_http(&host, 300, bollard::API_DEFAULT_VERSION)
        } else {
            return Err(Error::usage(format!(
                "Docker endpoint {host} is not unix:///PATH, tcp://HOST[:PORT] or ssh://[USER@]HOST[:PORT]"
            )));
        }
        .map_err(|e| unreachable(&host, e))?;
        let raw = match (&tunnel, host.split_once("://")) {
            (Some(t), _) => Some(raw::Route::Unix(t.socket().into())),
            (None, Some(("unix", path))) => Some(raw::Route::Unix(path.into())),
            (None, Some(("tcp" | "http", addr))) if endpoint.tls.is_none() => {
                Some(raw::Route::Tcp(addr.trim_end_matches('/').to_string()))
            }
            _ => None,
        };
        let mut engine = Engine {
            rt,
            docker,
            endpoint: endpoint.clone(),
            flavor: Flavor::default(),
            raw,
            _tunnel: tunnel,
        };
        let version = engine.call("asking the engine for its version", |d| async move {
            d.version().await
        })?;
        // Podman says it is rootless only in a field of its own (`Rootless`), which the
        // client's typed answer drops; a plain read keeps it.
        let info: serde_json::Value = engine.get_lenient(
            "asking the engine about itself",
            "/info",
            |v| v,
            |d| async move {
                d.info()
                    .await
                    .map(|i| serde_json::to_value(i).unwrap_or_default())
            },
        )?;
        engine.flavor = Flavor::of(&version, &info);
        Ok(engine)
    }

    /// Runs one engine call; `what` names it in errors ("inspecting container web").
    pub fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = std::result::Result<T, bollard::errors::Error>>,
    {
        self.rt
            .block_on(f(self.docker.clone()))
            .map_err(|e| engine_error(&self.endpoint.host, what, e))
    }

    /// The engine's view of one container (by name or id).
    pub fn inspect_container(
        &self,
        name: &str,
    ) -> Result<bollard::models::ContainerInspectResponse> {
        let n = name.to_string();
        self.get_lenient(
            &format!("inspecting container {name}"),
            &format!("/containers/{}/json", raw::path_segment(name)),
            raw::normalize_inspection,
            |d| async move {
                d.inspect_container(
                    &n,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            },
        )
    }

    /// One GET as JSON: read plainly and put right by `normalize` where the engine has a
    /// plain route (see [`raw`]), else through bollard's `typed` call.
    fn get_lenient<T, F, Fut>(
        &self,
        what: &str,
        path: &str,
        normalize: fn(serde_json::Value) -> serde_json::Value,
        typed: F,
    ) -> Result<T>
    where
        T: serde::de::DeserializeOwned,
        F: FnOnce(Docker) -> Fut,
        Fut: Future<Output = std::result::Result<T, bollard::errors::Error>>,
    {
        let Some(route) = &self.raw else {
            return self.call(what, typed);
        };
        let host = &self.endpoint.host;
        let (status_code, body) = raw::get(route, path).map_err(|e| {
            Error::new(ErrorKind::Unreachable, format!("{what} on {host}: {e}"))
                .with_hint(reach_hint(host))
        })?;
        let json = serde_json::from_slice::<serde_json::Value>(&body);
        if status_code != 200 {
            let message = match json.as_ref().ok().and_then(|j| j["message"].as_str()) {
                Some(m) => m.to_string(),
                None => String::from_utf8_lossy(&body).trim().to_string(),
            };
            let e = bollard::errors::Error::DockerResponseServerError {
                status_code,
                message,
            };
            return Err(engine_error(host, what, e));
        }
        json.and_then(|j| serde_json::from_value(normalize(j)))
            .map_err(|e| Error::other(format!("{what} on {host}: unexpected answer: {e}")))
    }

    pub fn inspect_volume(&self, name: &str) -> Result<bollard::models::Volume> {
        let n = name.to_string();
        self.call(&format!("inspecting volume {name}"), |d| async move {
            d.inspect_volume(&n).await
        })
    }

    /// Runs an async block that makes several calls (streams, uploads).
    pub fn block_on<T>(&self, f: impl Future<Output = T>) -> T {
        self.rt.block_on(f)
    }

    pub fn error(&self, what: &str, e: bollard::errors::Error) -> Error {
        engine_error(&self.endpoint.host, what, e)
    }

    /// Every site on the engine, by name.
    pub fn list_sites(&self) -> Result<Vec<DockerSite>> {
        let containers: Vec<bollard::models::ContainerSummary> = self.get_lenient(
            "listing containers",
            "/containers/json?all=1",
            raw::normalize_listing,
            |d| async move {
                d.list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
                    .await
            },
        )?;
        let mut sites: BTreeMap<String, DockerSite> = BTreeMap::new();
        for c in containers {
            let labels = c.labels.clone().unwrap_or_default();
            let Some((name, source)) = site_of_labels(&labels) else {
                continue;
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
}

/// A request body's stream of a local file in 1 MiB pieces (image archives, volume
/// contents), so memory stays bounded whatever its size.
pub fn file_stream(
    mut file: std::fs::File,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use std::io::Read;
    futures::stream::iter(std::iter::from_fn(move || {
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf) {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some(Ok(bytes::Bytes::from(buf)))
            }
            Err(e) => Some(Err(e)),
        }
    }))
}

/// Which site labels put a container in: freezer's label wins over the compose project.
pub fn site_of_labels(labels: &HashMap<String, String>) -> Option<(String, &'static str)> {
    match (labels.get(SITE_LABEL), labels.get(COMPOSE_PROJECT)) {
        (Some(s), _) => Some((s.clone(), "label")),
        (None, Some(p)) => Some((p.clone(), "compose")),
        (None, None) => None,
    }
}

fn unreachable(host: &str, e: bollard::errors::Error) -> Error {
    Error::new(
        ErrorKind::Unreachable,
        format!("the Docker engine at {host} did not answer"),
    )
    .with_source(e)
    .with_hint(reach_hint(host))
}

fn reach_hint(host: &str) -> &'static str {
    if host.starts_with("tcp://") {
        "is dockerd listening there, and do tls_certs (or DOCKER_TLS_VERIFY and DOCKER_CERT_PATH) name certificates it accepts?"
    } else {
        "is dockerd running, and may this user use its socket? DOCKER_HOST selects another engine"
    }
}

fn engine_error(host: &str, what: &str, e: bollard::errors::Error) -> Error {
    use bollard::errors::Error as B;
    match e {
        B::DockerResponseServerError {
            status_code,
            message,
        } => {
            let kind = match status_code {
                404 => ErrorKind::NotFound,
                409 => ErrorKind::Conflict,
                400 => ErrorKind::Usage,
                _ => ErrorKind::Other,
            };
            let e = Error::new(kind, format!("{what} on {host}: {message}"));
            if message.contains("HTTP request to an HTTPS server") {
                return e.with_hint("the engine expects TLS: give the host's client certificates with tls_certs (or DOCKER_TLS_VERIFY and DOCKER_CERT_PATH)");
            }
            e
        }
        B::JsonDataError { .. } | B::JsonSerdeError { .. } => {
            Error::other(format!("{what} on {host}: unexpected answer: {e}"))
        }
        other => unreachable(host, other).with_hint(format!("{what} failed; {}", reach_hint(host))),
    }
}

/// JSON with every object's keys sorted, so the same configuration always serializes to
/// the same bytes (engine maps come back in random order).
pub fn canonical(v: serde_json::Value) -> serde_json::Value {
    use serde_json::Value;
    match v {
        Value::Object(o) => {
            let sorted: std::collections::BTreeMap<String, Value> =
                o.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        v => v,
    }
}

#[cfg(test)]
mod endpoint_tests {
    use super::Endpoint;

    #[test]
    fn a_tcp_endpoint_without_a_port_gets_the_docker_cli_s() {
        let port = |host: &str, tls: bool| {
            let e = Endpoint {
                host: host.into(),
                tls: tls.then(|| "/certs".into()),
            };
            e.with_default_port().host
        };
        assert_eq!(port("tcp://10.0.0.5", false), "tcp://10.0.0.5:2375");
        assert_eq!(
            port("tcp://docker.example", true),
            "tcp://docker.example:2376"
        );
        assert_eq!(port("tcp://[fd00::1]", true), "tcp://[fd00::1]:2376");
        assert_eq!(port("tcp://h/", false), "tcp://h:2375/");
        for kept in [
            "tcp://h:1234",
            "tcp://[fd00::1]:99",
            "unix:///run/docker.sock",
            "ssh://u@h",
            "tcp://",
        ] {
            assert_eq!(port(kept, true), kept);
        }
    }
}

#[cfg(test)]
mod flavor_tests {
    use super::Flavor;

    fn flavor(version: &str, info: &str) -> Flavor {
        Flavor::of(
            &serde_json::from_str(version).unwrap(),
            &serde_json::from_str::<serde_json::Value>(info).unwrap(),
        )
    }

    #[test]
    fn podman_and_rootless_engines_are_told_apart() {
        let docker = flavor(
            r#"{"Components":[{"Name":"Engine","Version":"20.10.24"}]}"#,
            r#"{"SecurityOptions":["name=seccomp,profile=default"],"CgroupVersion":"1"}"#,
        );
        assert_eq!(
            (docker.podman, docker.rootless, docker.can_pause),
            (false, false, true)
        );
        assert_eq!(docker.cli(), "docker");
        let podman = flavor(
            r#"{"Components":[{"Name":"Podman Engine","Version":"4.3.1"}]}"#,
            r#"{"SecurityOptions":["name=seccomp,profile=default","name=rootless"],"CgroupVersion":"2"}"#,
        );
        assert_eq!(
            (podman.podman, podman.rootless, podman.can_pause),
            (true, true, true)
        );
        assert_eq!(podman.cli(), "podman");
        let v1 = flavor(
            r#"{"Components":[{"Name":"Podman Engine","Version":"4.3.1"}]}"#,
            r#"{"SecurityOptions":["name=seccomp,profile=default"],"CgroupVersion":"1","Rootless":true}"#,
        );
        assert!(v1.rootless && !v1.can_pause);
    }
}
