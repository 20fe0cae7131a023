//! A container's stored form (SPEC.md §13): its configuration as an OCI image config and
//! manifest, and with `--with-images` its image's layers, each stored once and reused by
//! the next freeze ([`KnownImages`]). The engine is only asked (`docker::images`).

use std::collections::HashMap;
use std::path::Path;

use serde_json::Value;

use crate::docker::capture::{ContainerSpec, A_CONTAINER_WITH_IMAGE, CONFIG_KEY, IMAGE_CONFIG_KEY};
use crate::docker::{canonical, Engine};
use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::repo::Repository;
use crate::tree::freeze::HashCount;

/// Layers of the images already stored, by diff_id: a parent snapshot's images are not
/// read from the engine again.
/// What earlier snapshots stored of images, for the next freeze to reuse: layers by
/// diff_id, and images' own configs (their exact text) by image id.
#[derive(Default)]
pub struct KnownImages {
    pub layers: HashMap<Digest, Descriptor>,
    pub configs: HashMap<String, String>,
}

impl KnownImages {
    /// What a container manifest of an earlier snapshot stored.
    pub fn read(repo: &Repository, manifest: &ImageManifest) -> Result<KnownImages> {
        let config: Value = from_json(
            &repo.read_blob(&manifest.config.digest)?,
            &manifest.config.digest.key(),
        )?;
        let diff_ids: Vec<Digest> =
            serde_json::from_value(config["rootfs"]["diff_ids"].clone()).unwrap_or_default();
        let mut known = KnownImages {
            layers: diff_ids
                .into_iter()
                .zip(manifest.layers.iter().cloned())
                .collect(),
            configs: HashMap::new(),
        };
        if let (Some(id), Some(text)) = (
            config[CONFIG_KEY]["image_id"].as_str(),
            config[IMAGE_CONFIG_KEY].as_str(),
        ) {
            known.configs.insert(id.to_string(), text.to_string());
        }
        Ok(known)
    }

    pub fn extend(&mut self, other: KnownImages) {
        self.layers.extend(other.layers);
        self.configs.extend(other.configs);
    }
}

/// Stores one container as an OCI image: the config carries its configuration (the
/// standard runtime fields, and all of it under [`CONFIG_KEY`]); with `with_image` the
/// layers are its image's layers, so a host without the image can still run it.
pub fn store_container(
    repo: &Repository,
    engine: &Engine,
    spec: &ContainerSpec,
    with_image: bool,
    known: &mut KnownImages,
) -> Result<Descriptor> {
    let mut layers = Vec::new();
    let mut diff_ids: Vec<Digest> = Vec::new();
    let mut history = Value::Null;
    let mut image_config = None;
    if with_image {
        let ids = engine.image_layers(&spec.image_id, &spec.image)?;
        if !ids.iter().all(|d| known.layers.contains_key(d))
            || !known.configs.contains_key(&spec.image_id)
        {
            let dir = crate::sys::temp_dir("a directory for the image archive")?;
            let saved = engine.save_image(&spec.image_id, &spec.image, dir.path())?;
            for l in &saved.layers {
                let (diff_id, desc) = store_layer(repo, l)?;
                known.layers.insert(diff_id, desc);
            }
            known.configs.insert(spec.image_id.clone(), saved.config);
        }
        image_config = known.configs.get(&spec.image_id).cloned();
        for d in &ids {
            let desc = known.layers.get(d).ok_or_else(|| {
                Error::other(format!(
                    "image {} lists layer {d}, which `docker save` did not return",
                    spec.image
                ))
            })?;
            repo.count_reused(0);
            layers.push(desc.clone());
        }
        diff_ids = ids;
        history = engine.image_history(&spec.image_id, &spec.image);
    }
    let image = StoredImage {
        with_image,
        layers,
        diff_ids,
        history,
        defaults: image_config,
    };
    container_manifest(repo, spec, image)
}

/// What of a container's image a snapshot holds: its layers (none without
/// `--with-images`) and the engine's record of it.
#[derive(Default)]
pub struct StoredImage {
    /// Stored with `--with-images`: the layers are the whole image.
    pub with_image: bool,
    pub layers: Vec<Descriptor>,
    pub diff_ids: Vec<Digest>,
    /// The engine's history of the build (Null when it cannot say).
    pub history: Value,
    /// The image's own defaults as JSON text (`IMAGE_CONFIG_KEY`).
    pub defaults: Option<String>,
}

/// Stores a container as an OCI image manifest: its configuration (the spec, under
/// `CONFIG_KEY`) and `image`'s layers. Needs no engine: what the engine said is in
/// `spec` and `image` by now.
pub fn container_manifest(
    repo: &Repository,
    spec: &ContainerSpec,
    image: StoredImage,
) -> Result<Descriptor> {
    let StoredImage {
        with_image,
        layers,
        diff_ids,
        history,
        defaults: image_config,
    } = image;
    let mut oci = serde_json::Map::new();
    for key in [
        "User",
        "ExposedPorts",
        "Env",
        "Entrypoint",
        "Cmd",
        "Volumes",
        "WorkingDir",
        "Labels",
        "StopSignal",
    ] {
        if let Some(v) = spec.config.get(key).filter(|v| !v.is_null()) {
            oci.insert(key.into(), v.clone());
        }
    }
    let mut config = serde_json::json!({
        "architecture": spec.platform.architecture,
        "os": spec.platform.os,
        "config": oci,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        CONFIG_KEY: spec,
    });
    if !history.is_null() {
        config["history"] = history;
    }
    if let Some(text) = image_config {
        config[IMAGE_CONFIG_KEY] = Value::String(text);
    }
    let (config_digest, config_size) = repo.put_blob(&to_json(&canonical(config)))?;
    let mut manifest = ImageManifest {
        schema_version: 2,
        media_type: MT_MANIFEST.into(),
        config: Descriptor::new(MT_CONFIG, config_digest, config_size),
        layers,
        annotations: Annotations::new(),
    };
    let a = &mut manifest.annotations;
    a.insert(A_CONTAINER_NAME.into(), spec.name.clone());
    a.insert(A_TITLE.into(), spec.name.clone());
    if with_image {
        a.insert(A_CONTAINER_WITH_IMAGE.into(), "true".into());
    }
    let (digest, size) = repo.put_blob(&to_json(&manifest))?;
    let mut desc = Descriptor::new(MT_MANIFEST, digest, size);
    desc.platform = Some(spec.platform.clone());
    desc.annotations = Part::container_annotations(&spec.name, &spec.image, &spec.state);
    Ok(desc)
}

/// Compresses one uncompressed layer tar into a blob (sealed as it is written in an
/// encrypted repository); returns its diff_id and descriptor.
fn store_layer(repo: &Repository, tar: &Path) -> Result<(Digest, Descriptor)> {
    let mut input = std::fs::File::open(tar).ctx(|| format!("reading {}", tar.display()))?;
    let mut out = repo.blob_writer()?;
    let diff = {
        let z = zstd::Encoder::new(&mut out, 3).ctx(|| "starting zstd".into())?;
        let mut plain = HashCount::new(z);
        std::io::copy(&mut input, &mut plain).ctx(|| format!("compressing {}", tar.display()))?;
        plain.inner.finish().ctx(|| "compressing a layer".into())?;
        plain.hasher
    };
    let (digest, size) = repo.put_written(out)?;
    Ok((
        Digest::from_hasher(diff),
        Descriptor::new(MT_LAYER_ZSTD, digest, size),
    ))
}
