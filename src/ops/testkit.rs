//! What the fast tests of operations stand on: a repository in memory, the in-memory
//! engine, and sites written into the repository as a hydrated freeze writes them
//! (the same functions store the containers, trees and record).

use std::path::PathBuf;
use std::time::SystemTime;

use serde_json::json;

use super::images::{container_manifest, StoredImage};
use crate::docker::capture::{ContainerSpec, MountSpec};
use crate::docker::fake::FakeEngine;
use crate::docker::{COMPOSE_PROJECT, COMPOSE_SERVICE};
use crate::format::{Descriptor, Mode};
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};
use crate::tree::TreeSpec;

pub struct Kit {
    pub repo: Repository,
    pub engine: FakeEngine,
    pub dir: tempfile::TempDir,
}

impl Kit {
    /// An empty repository and an engine that has `images`.
    pub fn new(images: &[&str]) -> Kit {
        Kit {
            repo: Repository::init(Box::new(crate::store::MemoryStore::default()))
                .expect("a repository in memory"),
            engine: FakeEngine::with_images(images),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A hydrated snapshot of `site` with `containers`, and `files` (tree, path, text)
    /// as the trees' contents. Every tree a mount names is stored, empty if no file
    /// is given for it.
    pub fn freeze(
        &self,
        site: &str,
        containers: &[ContainerSpec],
        files: &[(&str, &str, &str)],
    ) -> Snapshot {
        let mut manifests = Vec::new();
        for spec in containers {
            manifests.push(
                container_manifest(&self.repo, spec, StoredImage::default())
                    .expect("a stored container"),
            );
        }
        let mut trees: Vec<&str> = containers
            .iter()
            .flat_map(|c| c.mounts.iter().map(|m| m.tree.as_str()))
            .filter(|t| !t.is_empty())
            .collect();
        trees.sort();
        trees.dedup();
        for tree in trees {
            let root = self.dir.path().join("frozen").join(site).join(tree);
            std::fs::create_dir_all(&root).expect("a tree directory");
            for (_, path, text) in files.iter().filter(|(t, _, _)| *t == tree) {
                let p = root.join(path);
                std::fs::create_dir_all(p.parent().expect("a parent")).expect("a directory");
                std::fs::write(&p, text).expect("a file");
            }
            manifests.push(self.tree(tree, &root));
        }
        let created = SystemTime::now();
        let record =
            super::freeze::snapshot_record((site, Mode::Hydrated, None), manifests, created);
        let r = self
            .repo
            .write_record(site, &record, created)
            .expect("a snapshot record");
        self.repo
            .find_snapshot(site, Some(&r.id))
            .expect("the snapshot")
    }

    /// The directory `root` frozen as tree `name` (no previous snapshot).
    fn tree(&self, name: &str, root: &std::path::Path) -> Descriptor {
        let spec = TreeSpec::new(name.to_string(), root.to_path_buf());
        let (desc, _) = super::freeze::freeze_one_tree(
            &self.repo,
            &spec,
            None,
            Default::default(),
            &Progress::default(),
            &mut vec![],
        )
        .expect("a frozen tree");
        desc
    }

    /// A files snapshot of `site`: one tree, the directory `root` as it is now.
    pub fn freeze_dir(&self, site: &str, root: &std::path::Path) -> Snapshot {
        let desc = self.tree("files", root);
        let created = SystemTime::now();
        let record = super::freeze::snapshot_record((site, Mode::Files, None), vec![desc], created);
        let r = (self.repo)
            .write_record(site, &record, created)
            .expect("a snapshot record");
        self.repo
            .find_snapshot(site, Some(&r.id))
            .expect("the snapshot")
    }

    /// A directory under the kit's own, with `files` (path, text) in it.
    pub fn dir_with(&self, name: &str, files: &[(&str, &str)]) -> PathBuf {
        let root = self.dir.path().join(name);
        std::fs::create_dir_all(&root).expect("a directory");
        for (path, text) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().expect("a parent")).expect("a directory");
            std::fs::write(&p, text).expect("a file");
        }
        root
    }

    /// Where the engine keeps volume `name` (it must exist).
    pub fn volume(&self, name: &str) -> PathBuf {
        use crate::docker::ContainerEngine;
        self.engine.volume_mountpoint(name).expect("the volume")
    }
}

/// A compose service's container as a capture records it: `PROJECT-SERVICE-1` on the
/// network `PROJECT_default`, running `image`.
pub fn service(project: &str, service: &str, image: &str) -> ContainerSpec {
    let net = format!("{project}_default");
    serde_json::from_value(json!({
        "name": format!("{project}-{service}-1"),
        "image": image,
        "image_id": format!("sha256:{:0>64}", image.len()),
        "state": "running",
        "platform": {"architecture": "amd64", "os": "linux"},
        "config": {
            "Image": image,
            "Cmd": ["run"],
            "Env": [],
            "Labels": {COMPOSE_PROJECT: project, COMPOSE_SERVICE: service},
        },
        "host_config": {"NetworkMode": net, "RestartPolicy": {"Name": "unless-stopped"}},
        "networks": {net: {
            "aliases": [service], "driver": "bridge", "internal": false,
            "attachable": false, "labels": {COMPOSE_PROJECT: project}, "options": {},
        }},
        "mounts": [],
        "image_config": {"Cmd": ["run"]},
    }))
    .expect("a container spec")
}

/// `spec` with the named volume `name` mounted at `dest`, stored as tree `volume.NAME`.
pub fn with_volume(mut spec: ContainerSpec, name: &str, dest: &str) -> ContainerSpec {
    spec.mounts.push(MountSpec {
        kind: "volume".into(),
        name: Some(name.to_string()),
        source: format!("/var/lib/docker/volumes/{name}/_data"),
        destination: dest.to_string(),
        read_only: false,
        driver: Some("local".into()),
        labels: Default::default(),
        options: Default::default(),
        tree: format!("volume.{name}"),
        file: None,
        host: false,
        anonymous: false,
    });
    spec
}

/// `spec` with the host directory `source` bind-mounted at `dest`, stored as its tree.
pub fn with_bind(mut spec: ContainerSpec, source: &str, dest: &str) -> ContainerSpec {
    spec.mounts.push(MountSpec {
        kind: "bind".into(),
        name: None,
        source: source.to_string(),
        destination: dest.to_string(),
        read_only: false,
        driver: None,
        labels: Default::default(),
        options: Default::default(),
        tree: crate::docker::capture::tree_name("bind", source.trim_start_matches('/')),
        file: None,
        host: false,
        anonymous: false,
    });
    spec
}

/// `spec` whose compose file says it starts after `other` is `condition`
/// (`service_started`, `service_healthy`, `service_completed_successfully`).
pub fn depending_on(mut spec: ContainerSpec, other: &str, condition: &str) -> ContainerSpec {
    spec.config["Labels"]["com.docker.compose.depends_on"] =
        json!(format!("{other}:{condition}:false"));
    spec
}

/// The error of what had to fail.
pub fn failed<T>(r: crate::error::Result<T>) -> crate::error::Error {
    match r {
        Ok(_) => panic!("it did not fail"),
        Err(e) => e,
    }
}
