//! An in-memory container engine for the fast tests: containers, volumes, networks and
//! images are kept in maps, every call is recorded in order, and any call can be made
//! to fail. Volumes are real directories under a temporary root, so what a thaw writes
//! into them can be read back; the engine counts as local.
//!
//! It answers as the Docker engine does where freezer relies on it: a missing thing is
//! `NotFound`, a taken name `Conflict`, a container needs its image, networks and named
//! volumes, and a volume or network in use cannot be removed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde_json::Value;

use super::api::{ContainerEngine, ContainerFacts, EngineInfo, ImageFacts};
use super::capture::NetworkSpec;
use super::{site_of_labels, ContainerInfo, Endpoint, Flavor, Output};
use crate::error::{Error, Result};

/// A container as the fake keeps it.
#[derive(Debug, Clone, Default)]
pub struct FakeContainer {
    /// The create body it was made from.
    pub body: Value,
    pub facts: ContainerFacts,
    pub networks: Vec<String>,
    /// Volumes the engine made for it (anonymous mounts).
    pub anonymous: Vec<String>,
    /// What it does when started: exits with this code at once (a one-shot, or a
    /// container that fails).
    pub exits_with: Option<i64>,
}

#[derive(Debug, Default)]
pub struct State {
    /// Every call, in order: `create_container web`, `start_container web`, …
    pub calls: Vec<String>,
    pub containers: BTreeMap<String, FakeContainer>,
    pub volumes: BTreeMap<String, PathBuf>,
    pub networks: BTreeSet<String>,
    pub images: BTreeMap<String, ImageFacts>,
    /// Calls that fail: a call fails when it starts with one of these.
    pub failing: Vec<String>,
    /// What `exec_argv` answers when its command line contains the key: exit code and
    /// output (else 0 and nothing).
    pub exec_answers: BTreeMap<String, (i64, String)>,
    /// Archives uploaded: container, destination, the entries' paths.
    pub uploads: Vec<(String, String, Vec<String>)>,
    /// Containers (by the end of their name, once created) that exit with this code
    /// when started.
    pub exits: BTreeMap<String, i64>,
    /// Containers (by the end of their name, once started) whose health check says this.
    pub health: BTreeMap<String, String>,
    next_volume: usize,
}

pub struct FakeEngine {
    endpoint: Endpoint,
    pub flavor: Flavor,
    root: tempfile::TempDir,
    state: Mutex<State>,
}

impl FakeEngine {
    /// An empty engine that has the images named.
    pub fn with_images(images: &[&str]) -> FakeEngine {
        let engine = FakeEngine {
            endpoint: Endpoint {
                host: "unix:///fake/docker.sock".into(),
                tls: None,
            },
            flavor: Flavor {
                can_pause: true,
                ..Flavor::default()
            },
            root: tempfile::tempdir().expect("a temporary directory"),
            state: Mutex::default(),
        };
        for image in images {
            engine.add_image(image);
        }
        engine
    }

    /// The same, as an engine on another machine (`tcp://`): its volumes are filled
    /// through the archive API, not on this host's disk.
    pub fn remote_with_images(images: &[&str]) -> FakeEngine {
        let mut engine = FakeEngine::with_images(images);
        engine.endpoint.host = "tcp://fake:2376".into();
        engine
    }

    pub fn add_image(&self, reference: &str) {
        self.state().images.insert(
            reference.to_string(),
            ImageFacts {
                id: format!("sha256:{:0>64}", reference.len()),
                architecture: "amd64".into(),
                config: serde_json::json!({"Cmd": ["run"]}),
            },
        );
    }

    /// A network the engine has already (made by someone else).
    pub fn add_network(&self, name: &str) {
        self.state().networks.insert(name.to_string());
    }

    /// A volume the engine has already; returns its directory.
    pub fn add_volume(&self, name: &str) -> PathBuf {
        let dir = self.root.path().join("volumes").join(name);
        std::fs::create_dir_all(&dir).expect("a volume directory");
        self.state().volumes.insert(name.to_string(), dir.clone());
        dir
    }

    /// A container whose name ends with `name`, once created, exits with `code` as soon
    /// as it is started.
    pub fn exit_on_start(&self, name: &str, code: i64) {
        self.state().exits.insert(name.to_string(), code);
    }

    /// The health check of a container whose name ends with `name` says `health` once it
    /// runs.
    pub fn health_on_start(&self, name: &str, health: &str) {
        self.state()
            .health
            .insert(name.to_string(), health.to_string());
    }

    /// Makes `exec` answer `code` and `output` when its command line contains `line`.
    pub fn answer(&self, line: &str, code: i64, output: &str) {
        (self.state().exec_answers).insert(line.to_string(), (code, output.to_string()));
    }

    /// Makes every later call starting with `call` fail (`create_container db`).
    pub fn fail(&self, call: &str) {
        self.state().failing.push(call.to_string());
    }

    pub fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The calls so far whose text starts with `prefix`.
    pub fn calls(&self, prefix: &str) -> Vec<String> {
        let st = self.state();
        st.calls
            .iter()
            .filter(|c| c.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Records a call; fails it when a test asked for that.
    fn enter(&self, call: String) -> Result<MutexGuard<'_, State>> {
        let mut st = self.state();
        st.calls.push(call.clone());
        if st.failing.iter().any(|f| call.starts_with(f.as_str())) {
            return Err(Error::other(format!(
                "{call}: the fake engine was told to fail"
            )));
        }
        Ok(st)
    }
}

/// The value whose key `name` ends with.
fn ends_with<'a, T>(map: &'a BTreeMap<String, T>, name: &str) -> Option<&'a T> {
    map.iter()
        .find(|(k, _)| name.ends_with(k.as_str()))
        .map(|(_, v)| v)
}

fn missing(what: &str, name: &str) -> Error {
    Error::not_found(format!("no such {what}: {name}"))
}

fn taken(what: &str, name: &str) -> Error {
    Error::conflict(format!("the {what} name {name} is already in use"))
}

impl State {
    fn container(&mut self, name: &str) -> Result<&mut FakeContainer> {
        self.containers
            .get_mut(name)
            .ok_or_else(|| missing("container", name))
    }

    /// The mounts of a create body: (destination, source), named volumes created as
    /// the engine does, anonymous ones made.
    fn mounts(
        &mut self,
        root: &Path,
        body: &Value,
        anonymous: &mut Vec<String>,
    ) -> Vec<(String, String)> {
        let hc = &body["HostConfig"];
        let mut out = Vec::new();
        for b in hc["Binds"].as_array().into_iter().flatten() {
            let b = b.as_str().unwrap_or_default();
            let mut parts = b.split(':');
            let (src, dst) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            out.push((dst.to_string(), src.to_string()));
        }
        for m in hc["Mounts"].as_array().into_iter().flatten() {
            let dst = m["Target"].as_str().unwrap_or_default().to_string();
            let src = m["Source"].as_str().unwrap_or_default().to_string();
            let src = match m["Type"].as_str() {
                Some("volume") => {
                    let name = if src.is_empty() {
                        self.next_volume += 1;
                        let n = format!("{:0>64}", self.next_volume);
                        anonymous.push(n.clone());
                        n
                    } else {
                        src
                    };
                    let dir = root.join("volumes").join(&name);
                    let _ = std::fs::create_dir_all(&dir);
                    self.volumes.insert(name, dir.clone());
                    dir.display().to_string()
                }
                _ => src,
            };
            out.push((dst, src));
        }
        out
    }
}

impl ContainerEngine for FakeEngine {
    fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    fn flavor(&self) -> Flavor {
        self.flavor
    }

    fn info(&self) -> Result<EngineInfo> {
        drop(self.enter("info".into())?);
        Ok(EngineInfo {
            architecture: "x86_64".into(),
            root: self.root.path().display().to_string(),
            version: "fake".into(),
        })
    }

    fn container(&self, name: &str) -> Result<ContainerFacts> {
        let mut st = self.enter(format!("container {name}"))?;
        Ok(st.container(name)?.facts.clone())
    }

    fn site_containers(&self, site: &str) -> Result<Vec<ContainerInfo>> {
        let st = self.enter(format!("site_containers {site}"))?;
        let mut out = Vec::new();
        for (name, c) in &st.containers {
            let labels = c.facts.labels.clone().into_iter().collect();
            if site_of_labels(&labels).is_some_and(|(s, _)| s == site) {
                out.push(ContainerInfo {
                    name: name.clone(),
                    id: name.clone(),
                    image: c.body["Image"].as_str().unwrap_or_default().to_string(),
                    state: c.facts.status.clone(),
                    service: labels.get(super::COMPOSE_SERVICE).cloned(),
                });
            }
        }
        Ok(out)
    }

    fn create_container(&self, name: &str, body: &Value) -> Result<()> {
        let mut st = self.enter(format!("create_container {name}"))?;
        if st.containers.contains_key(name) {
            return Err(taken("container", name));
        }
        let image = body["Image"].as_str().unwrap_or_default();
        if !st.images.contains_key(image) {
            return Err(missing("image", image));
        }
        let networks: Vec<String> = body["NetworkingConfig"]["EndpointsConfig"]
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        if let Some(n) = networks.iter().find(|n| !st.networks.contains(*n)) {
            return Err(missing("network", n));
        }
        let mut anonymous = Vec::new();
        let mounts = st.mounts(self.root.path(), body, &mut anonymous);
        let labels = body["Labels"]
            .as_object()
            .map(|o| {
                o.iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
                    .collect()
            })
            .unwrap_or_default();
        let facts = ContainerFacts {
            status: "created".into(),
            hostname: body["Hostname"].as_str().unwrap_or(name).to_string(),
            labels,
            mounts,
            upper_dir: None,
            ..ContainerFacts::default()
        };
        let exits_with = ends_with(&st.exits, name).copied();
        st.containers.insert(
            name.to_string(),
            FakeContainer {
                body: body.clone(),
                facts,
                networks,
                anonymous,
                exits_with,
            },
        );
        Ok(())
    }

    fn connect_network(&self, container: &str, network: &str, _aliases: &[String]) -> Result<()> {
        let mut st = self.enter(format!("connect_network {container} {network}"))?;
        if !st.networks.contains(network) {
            return Err(missing("network", network));
        }
        st.container(container)?.networks.push(network.to_string());
        Ok(())
    }

    fn start_container(&self, name: &str) -> Result<()> {
        let mut st = self.enter(format!("start_container {name}"))?;
        let health = ends_with(&st.health, name).cloned();
        let c = st.container(name)?;
        match c.exits_with {
            Some(code) => {
                c.facts.running = false;
                c.facts.status = "exited".into();
                c.facts.exit_code = code;
            }
            None => {
                c.facts.last_check = health.as_ref().map(|h| format!("the check says {h}"));
                c.facts.health = health;
                c.facts.running = true;
                c.facts.status = "running".into();
                c.facts.addresses = (0..c.networks.len())
                    .map(|i| format!("10.99.{i}.2"))
                    .collect();
            }
        }
        Ok(())
    }

    fn pause_container(&self, name: &str) -> Result<()> {
        let mut st = self.enter(format!("pause_container {name}"))?;
        st.container(name)?.facts.status = "paused".into();
        Ok(())
    }

    fn stop_container(&self, name: &str) -> Result<()> {
        let mut st = self.enter(format!("stop_container {name}"))?;
        let c = st.container(name)?;
        c.facts.running = false;
        c.facts.status = "exited".into();
        Ok(())
    }

    fn remove_container(&self, name: &str, anonymous_volumes: bool) -> Result<()> {
        let mut st = self.enter(format!("remove_container {name}"))?;
        let c = st
            .containers
            .remove(name)
            .ok_or_else(|| missing("container", name))?;
        if anonymous_volumes {
            for v in c.anonymous {
                st.volumes.remove(&v);
            }
        }
        Ok(())
    }

    fn wait_container(&self, name: &str) -> Result<i64> {
        let mut st = self.enter(format!("wait_container {name}"))?;
        let c = st.container(name)?;
        c.facts.running = false;
        c.facts.status = "exited".into();
        Ok(c.exits_with.unwrap_or(0))
    }

    fn log_tail(&self, name: &str, _lines: usize) -> String {
        format!("(the log of {name})")
    }

    fn exec_argv(
        &self,
        container: &str,
        argv: Vec<String>,
        _env: Vec<String>,
        _user: Option<&str>,
        _timeout: std::time::Duration,
    ) -> Result<(Option<i64>, Vec<Output>)> {
        let mut st = self.enter(format!("exec {container} {}", argv.join(" ")))?;
        if !st.container(container)?.facts.running {
            return Err(Error::conflict(format!(
                "container {container} is not running"
            )));
        }
        let line = argv.join(" ");
        let (code, out) = (st.exec_answers.iter())
            .find(|(k, _)| line.contains(k.as_str()))
            .map(|(_, a)| a.clone())
            .unwrap_or((0, String::new()));
        Ok((Some(code), vec![(false, out.into_bytes())]))
    }

    fn upload(&self, container: &str, dest: &str, archive: std::fs::File) -> Result<()> {
        let mut st = self.enter(format!("upload {container} {dest}"))?;
        st.container(container)?;
        let mut a = tar::Archive::new(archive);
        let entries = a
            .entries()
            .and_then(|es| {
                es.map(|e| Ok(e?.path()?.display().to_string()))
                    .collect::<std::io::Result<Vec<_>>>()
            })
            .map_err(|e| Error::integrity(format!("the archive for {container}: {e}")))?;
        st.uploads
            .push((container.to_string(), dest.to_string(), entries));
        Ok(())
    }

    fn archive_head(&self, container: &str, path: &str, _limit: usize) -> Result<Vec<u8>> {
        let mut st = self.enter(format!("archive_head {container} {path}"))?;
        st.container(container)?;
        // An empty directory.
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(0o755);
        h.set_size(0);
        b.append_data(&mut h, ".", std::io::empty())
            .and_then(|_| b.into_inner())
            .map_err(|e| Error::other(format!("a fake archive: {e}")))
    }

    fn volume_mountpoint(&self, name: &str) -> Result<PathBuf> {
        let st = self.enter(format!("volume {name}"))?;
        st.volumes
            .get(name)
            .cloned()
            .ok_or_else(|| missing("volume", name))
    }

    fn create_volume(
        &self,
        name: &str,
        _driver: &str,
        _options: &BTreeMap<String, String>,
        _labels: &BTreeMap<String, String>,
    ) -> Result<()> {
        let mut st = self.enter(format!("create_volume {name}"))?;
        if st.volumes.contains_key(name) {
            return Err(taken("volume", name));
        }
        let dir = self.root.path().join("volumes").join(name);
        std::fs::create_dir_all(&dir).map_err(|e| Error::other(e.to_string()))?;
        st.volumes.insert(name.to_string(), dir);
        Ok(())
    }

    fn remove_volume(&self, name: &str) -> Result<()> {
        let mut st = self.enter(format!("remove_volume {name}"))?;
        let dir = st
            .volumes
            .get(name)
            .cloned()
            .ok_or_else(|| missing("volume", name))?;
        let in_use = st
            .containers
            .values()
            .any(|c| c.facts.mounts.iter().any(|(_, s)| Path::new(s) == dir));
        if in_use {
            return Err(Error::conflict(format!("volume {name} is in use")));
        }
        st.volumes.remove(name);
        let _ = std::fs::remove_dir_all(dir);
        Ok(())
    }

    fn network_exists(&self, name: &str) -> Result<bool> {
        Ok(self
            .enter(format!("network {name}"))?
            .networks
            .contains(name))
    }

    fn create_network(&self, name: &str, _spec: &NetworkSpec) -> Result<()> {
        let mut st = self.enter(format!("create_network {name}"))?;
        if !st.networks.insert(name.to_string()) {
            return Err(taken("network", name));
        }
        Ok(())
    }

    fn remove_network(&self, name: &str) -> Result<()> {
        let mut st = self.enter(format!("remove_network {name}"))?;
        if st
            .containers
            .values()
            .any(|c| c.networks.iter().any(|n| n == name))
        {
            return Err(Error::conflict(format!(
                "network {name} has active endpoints"
            )));
        }
        if !st.networks.remove(name) {
            return Err(missing("network", name));
        }
        Ok(())
    }

    fn image(&self, reference: &str) -> Result<ImageFacts> {
        let st = self.enter(format!("image {reference}"))?;
        st.images
            .get(reference)
            .or_else(|| st.images.values().find(|i| i.id == reference))
            .cloned()
            .ok_or_else(|| missing("image", reference))
    }

    fn load_image(&self, archive: &Path, image: &str) -> Result<()> {
        drop(self.enter(format!("load_image {image}"))?);
        if !archive.is_file() {
            return Err(missing("archive", &archive.display().to_string()));
        }
        self.add_image(image);
        Ok(())
    }

    fn remove_image(&self, reference: &str) -> Result<()> {
        let mut st = self.enter(format!("remove_image {reference}"))?;
        st.images
            .remove(reference)
            .map(|_| ())
            .ok_or_else(|| missing("image", reference))
    }
}
