//! What the engine says of a container's image, for `freeze --with-images`: its layers'
//! diff_ids, the record of its build, and the image itself as `docker save` writes it.
//! Storing it is the freeze's business (`ops::images`).

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use super::Engine;
use crate::error::{Error, IoContext, Result};
use crate::format::{from_json, Digest};

/// An image as `docker save` wrote it, unpacked: its config (the exact text) and its
/// layers' uncompressed tars, bottom first.
pub struct SavedImage {
    pub config: String,
    pub layers: Vec<PathBuf>,
}

impl Engine {
    /// The diff_ids of image `id`'s layers, bottom first; `name` names it in messages.
    pub fn image_layers(&self, id: &str, name: &str) -> Result<Vec<Digest>> {
        let i = id.to_string();
        let img = self.call(&format!("inspecting image {name}"), |d| async move {
            d.inspect_image(&i).await
        })?;
        img.root_fs
            .and_then(|r| r.layers)
            .unwrap_or_default()
            .iter()
            .map(|s| s.parse())
            .collect()
    }

    /// The image's history, for tools that show it; the engine's own record of the
    /// build. Null when the engine cannot say: Podman 4.3 fails on an image whose layers
    /// carry no creation time ("nil pointer dereference"), and nothing restores from it.
    pub fn image_history(&self, id: &str, name: &str) -> Value {
        let i = id.to_string();
        let Ok(h) = self.call(
            &format!("reading the history of image {name}"),
            |d| async move { d.image_history(&i).await },
        ) else {
            return Value::Null;
        };
        // Oldest first, as in an image config.
        let items: Vec<Value> = h
            .into_iter()
            .rev()
            .map(|i| {
                let mut v = serde_json::json!({"created_by": i.created_by});
                if i.size == 0 {
                    v["empty_layer"] = Value::Bool(true);
                }
                v
            })
            .collect();
        Value::Array(items)
    }

    /// `docker save`s image `id` into `dir` and unpacks it there.
    pub fn save_image(&self, id: &str, name: &str, dir: &Path) -> Result<SavedImage> {
        let archive = dir.join("image.tar");
        let mut file =
            std::fs::File::create(&archive).ctx(|| format!("creating {}", archive.display()))?;
        self.block_on(async {
            use futures::StreamExt;
            let mut s = self.docker.export_image(id);
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.error(&format!("saving image {name}"), e))?;
                file.write_all(&chunk)
                    .ctx(|| format!("writing {}", archive.display()))?;
            }
            Ok::<_, Error>(())
        })?;
        drop(file);
        let unpacked = dir.join("x");
        tar::Archive::new(
            std::fs::File::open(&archive).ctx(|| format!("reading {}", archive.display()))?,
        )
        .unpack(&unpacked)
        .ctx(|| format!("unpacking the saved image {name}"))?;
        #[derive(Deserialize)]
        struct Saved {
            #[serde(rename = "Config")]
            config: String,
            #[serde(rename = "Layers")]
            layers: Vec<String>,
        }
        let manifest: Vec<Saved> = from_json(
            &std::fs::read(unpacked.join("manifest.json"))
                .ctx(|| format!("reading the saved image {name}"))?,
            "manifest.json of a saved image",
        )?;
        let saved = manifest
            .into_iter()
            .next()
            .ok_or_else(|| Error::other(format!("`docker save {name}` returned no image")))?;
        let config = std::fs::read(unpacked.join(&saved.config))
            .ctx(|| format!("reading the config of the saved image {name}"))?;
        let config = String::from_utf8(config).map_err(|_| {
            Error::other(format!(
                "the config of the saved image {name} is not UTF-8 JSON"
            ))
        })?;
        Ok(SavedImage {
            config,
            layers: saved.layers.iter().map(|l| unpacked.join(l)).collect(),
        })
    }
}
