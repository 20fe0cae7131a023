//! `freezer export`: a snapshot as a standalone OCI image layout.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::repo::Repository;
use crate::tree::freeze::HashCount;

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub site: String,
    pub snapshot: String,
    /// The repository is encrypted and the layout was written decrypted (plaintext).
    pub decrypted: bool,
    pub dir: PathBuf,
    pub refs: Vec<String>,
    pub blobs: u64,
    pub bytes: u64,
}

/// The layer compression of an exported layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerCompression {
    /// As stored: layers are copied unchanged.
    #[default]
    Zstd,
    /// Recompressed, for Docker 20.10 and `skopeo copy … docker-daemon:`, which cannot
    /// read zstd layers.
    Gzip,
}

/// Writes one snapshot as a standalone OCI image layout, one image per tree, each named
/// by its tree name (`skopeo inspect oci:DIR:NAME`).
pub fn export(
    repo: &Repository,
    site: &str,
    snap: Option<&str>,
    dir: &Path,
    compression: LayerCompression,
) -> Result<ExportReport> {
    let snapshot = repo.find_snapshot(site, snap)?;
    if dir.exists()
        && fs::read_dir(dir)
            .ctx(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        return Err(
            Error::conflict(format!("{} exists and is not empty", dir.display()))
                .with_hint("export into a new directory"),
        );
    }
    let blob_dir = dir.join("blobs/sha256");
    fs::create_dir_all(&blob_dir).ctx(|| format!("creating {}", blob_dir.display()))?;
    let mut report = ExportReport {
        site: site.into(),
        snapshot: snapshot.id.clone(),
        decrypted: repo.keys().is_some(),
        dir: dir.to_path_buf(),
        refs: vec![],
        blobs: 0,
        bytes: 0,
    };
    let mut out = Exporter {
        repo,
        blob_dir,
        copied: BTreeSet::new(),
        blobs: 0,
        bytes: 0,
    };
    let mut index = ImageIndex {
        schema_version: 2,
        media_type: MT_INDEX.into(),
        manifests: vec![],
        annotations: Annotations::new(),
    };
    for m in &snapshot.record.manifests {
        let mut d = out.part(m, compression)?;
        d.annotations.insert(A_SITE.into(), site.into());
        d.annotations
            .insert("dev.freezer.snapshot".into(), snapshot.id.clone());
        if !snapshot.created().is_empty() {
            d.annotations
                .insert(A_CREATED.into(), snapshot.created().to_string());
        }
        if let Some(name) = d.annotations.get(A_REF_NAME) {
            report.refs.push(name.clone());
        }
        index.manifests.push(d);
    }
    report.blobs = out.blobs;
    report.bytes = out.bytes;
    fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .ctx(|| format!("writing {}/oci-layout", dir.display()))?;
    fs::write(dir.join("index.json"), to_json(&index))
        .ctx(|| format!("writing {}/index.json", dir.display()))?;
    Ok(report)
}

/// Copies a snapshot's blobs into an OCI layout's `blobs/sha256`, each once.
struct Exporter<'a> {
    repo: &'a Repository,
    blob_dir: PathBuf,
    copied: BTreeSet<Digest>,
    blobs: u64,
    bytes: u64,
}

impl Exporter<'_> {
    /// One part of the snapshot (its manifest and every blob it names); returns the
    /// descriptor the layout's index lists for it.
    fn part(&mut self, m: &Descriptor, compression: LayerCompression) -> Result<Descriptor> {
        let repo = self.repo;
        let mut manifest: ImageManifest = from_json(&repo.read_blob(&m.digest)?, &m.digest.key())?;
        let (blobs, err) = image_blobs(&manifest);
        if let Some(e) = err {
            return Err(e);
        }
        let mut d = m.clone();
        let regzipped = compression == LayerCompression::Gzip && !manifest.layers.is_empty();
        let paged = manifest.annotations.contains_key(A_TREE_PAGES);
        if regzipped || paged {
            // The same layers (same diff_ids, so the config stays), compressed anew: a new
            // manifest names them.
            for l in manifest.layers.iter_mut().filter(|_| regzipped) {
                if l.media_type == MT_LAYER_ZSTD {
                    *l = regzip(repo, l, &self.blob_dir)?;
                    self.count(l.size);
                }
            }
            for b in blobs
                .iter()
                .filter(|b| !regzipped || b.media_type != MT_LAYER_ZSTD)
            {
                self.copy(&b.digest)?;
            }
            if paged {
                self.add_pages_layer(m, &mut manifest, compression)?;
            }
            let data = to_json(&manifest);
            let digest = Digest::of(&data);
            let path = self.blob_dir.join(digest.hex());
            fs::write(&path, &data).ctx(|| format!("writing {}", path.display()))?;
            self.count(data.len() as u64);
            d.digest = digest;
            d.size = data.len() as u64;
        } else {
            self.copy(&m.digest)?;
            for b in &blobs {
                self.copy(&b.digest)?;
            }
        }
        Ok(d)
    }

    /// A tree with files stored by their units (SPEC.md §5.6): one more layer, last, that
    /// holds them whole, so stock tools applying the layers get the whole tree; a new
    /// config lists its diff_id.
    fn add_pages_layer(
        &mut self,
        m: &Descriptor,
        manifest: &mut ImageManifest,
        compression: LayerCompression,
    ) -> Result<()> {
        let repo = self.repo;
        let plan = crate::tree::thaw::TreePlan::load(repo, &m.digest)?;
        let packed = tempfile::NamedTempFile::new_in(&self.blob_dir)
            .ctx(|| format!("creating a file in {}", self.blob_dir.display()))?;
        // Hashed as it is written, plain (the diff_id) and compressed (the digest): the
        // layer is never read back.
        let out = HashCount {
            inner: std::io::BufWriter::new(
                packed
                    .as_file()
                    .try_clone()
                    .ctx(|| "writing the exported layer".into())?,
            ),
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            count: 0,
        };
        let compressing = || "compressing the exported layer".to_string();
        let (media_type, diff_id, out) = match compression {
            LayerCompression::Gzip => {
                let gz = flate2::write::GzEncoder::new(out, flate2::Compression::fast());
                let (diff_id, gz) = pages_tar(repo, &plan, gz)?;
                (MT_LAYER_GZIP, diff_id, gz.finish().ctx(compressing)?)
            }
            _ => {
                let z = zstd::Encoder::new(out, 3).ctx(compressing)?;
                let (diff_id, z) = pages_tar(repo, &plan, z)?;
                (MT_LAYER_ZSTD, diff_id, z.finish().ctx(compressing)?)
            }
        };
        let HashCount {
            inner,
            hasher,
            count: size,
        } = out;
        inner
            .into_inner()
            .map_err(|e| Error::io("writing the exported layer", e.into_error()))?;
        let digest = Digest::from_hasher(hasher);
        let dest = self.blob_dir.join(digest.hex());
        packed
            .persist(&dest)
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error))?;
        self.count(size);
        manifest
            .layers
            .push(Descriptor::new(media_type, digest, size));

        let mut config: ImageConfig = from_json(
            &repo.read_blob(&manifest.config.digest)?,
            &manifest.config.digest.key(),
        )?;
        config.rootfs.diff_ids.push(diff_id);
        let data = to_json(&config);
        let digest = Digest::of(&data);
        let path = self.blob_dir.join(digest.hex());
        fs::write(&path, &data).ctx(|| format!("writing {}", path.display()))?;
        self.count(data.len() as u64);
        manifest.config = Descriptor::new(&manifest.config.media_type, digest, data.len() as u64);
        Ok(())
    }

    fn count(&mut self, n: u64) {
        self.blobs += 1;
        self.bytes += n;
    }

    /// Blob `d`, verified as it streams, unless it was copied already.
    fn copy(&mut self, d: &Digest) -> Result<()> {
        if !self.copied.insert(d.clone()) {
            return Ok(());
        }
        let dest = self.blob_dir.join(d.hex());
        let mut tmp = tempfile::NamedTempFile::new_in(&self.blob_dir)
            .ctx(|| format!("creating a file in {}", self.blob_dir.display()))?;
        let mut r = self.repo.open_blob(d)?;
        let n =
            std::io::copy(&mut r, tmp.as_file_mut()).ctx(|| format!("exporting {}", d.key()))?;
        tmp.as_file_mut()
            .flush()
            .ctx(|| format!("writing {}", dest.display()))?;
        tmp.persist(&dest)
            .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error))?;
        self.count(n);
        Ok(())
    }
}

/// A tar of the files of `plan` stored by their units (SPEC.md §5.6), whole, written
/// into `out`; returns its SHA-256 (the layer's diff_id) and `out`.
fn pages_tar<W: Write>(
    repo: &Repository,
    plan: &crate::tree::thaw::TreePlan,
    out: W,
) -> Result<(Digest, W)> {
    let mut tar = tar::Builder::new(HashCount {
        inner: out,
        hasher: <sha2::Sha256 as sha2::Digest>::new(),
        count: 0,
    });
    for e in plan.entries()? {
        let e = e?;
        let Some(map) = &e.pages else { continue };
        let name = e.display_path();
        let map = crate::tree::pages::PageMap::load(repo, map)?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(e.mode);
        h.set_uid(u64::from(e.uid));
        h.set_gid(u64::from(e.gid));
        h.set_mtime(e.mtime.0.max(0) as u64);
        h.set_size(map.size);
        let r = crate::tree::pages::Reader::open(repo, map, &name)?;
        let path = std::ffi::OsStr::from_bytes(&e.path);
        tar.append_data(&mut h, path, r)
            .ctx(|| format!("exporting {name}"))?;
    }
    let plain = tar
        .into_inner()
        .ctx(|| "writing the exported layer".into())?;
    Ok((Digest::from_hasher(plain.hasher), plain.inner))
}

/// Writes a zstd layer of the repository into `blob_dir` as a gzip layer (verified as it
/// streams); returns its descriptor.
fn regzip(repo: &Repository, layer: &Descriptor, blob_dir: &Path) -> Result<Descriptor> {
    let mut tmp = tempfile::NamedTempFile::new_in(blob_dir)
        .ctx(|| format!("creating a file in {}", blob_dir.display()))?;
    let mut r = repo.open_blob(&layer.digest)?;
    let mut hash = <sha2::Sha256 as sha2::Digest>::new();
    let mut size = 0u64;
    {
        struct Tee<'a, W> {
            w: W,
            hash: &'a mut sha2::Sha256,
            size: &'a mut u64,
        }
        impl<W: Write> Write for Tee<'_, W> {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                let n = self.w.write(b)?;
                sha2::Digest::update(self.hash, &b[..n]);
                *self.size += n as u64;
                Ok(n)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                self.w.flush()
            }
        }
        let tee = Tee {
            w: std::io::BufWriter::new(tmp.as_file_mut()),
            hash: &mut hash,
            size: &mut size,
        };
        let mut gz = flate2::write::GzEncoder::new(tee, flate2::Compression::fast());
        let mut z = zstd::Decoder::new(&mut r).ctx(|| format!("reading {}", layer.digest.key()))?;
        std::io::copy(&mut z, &mut gz).ctx(|| format!("recompressing {}", layer.digest.key()))?;
        gz.finish()
            .and_then(|mut t| t.flush())
            .ctx(|| format!("writing {}", blob_dir.display()))?;
    }
    std::io::copy(&mut r, &mut std::io::sink())
        .ctx(|| format!("reading {}", layer.digest.key()))?;
    r.finish()?;
    let digest = Digest::from_hasher(hash);
    let dest = blob_dir.join(digest.hex());
    tmp.persist(&dest)
        .map_err(|e| Error::io(format!("writing {}", dest.display()), e.error))?;
    let mut d = Descriptor::new(MT_LAYER_GZIP, digest, size);
    d.annotations = layer.annotations.clone();
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::testkit::{failed, Kit};

    #[test]
    fn an_export_is_an_oci_layout_whose_blobs_match_their_names() {
        let kit = Kit::new(&[]);
        kit.freeze_dir("shop", &kit.dir_with("site", &[("a.txt", "x")]));
        let out = kit.dir.path().join("export");
        let r = export(&kit.repo, "shop", None, &out, LayerCompression::Zstd).unwrap();
        assert!(r.blobs >= 3, "{r:?}");
        assert!(out.join("oci-layout").is_file());
        let index: ImageIndex =
            from_json(&fs::read(out.join("index.json")).unwrap(), "index.json").unwrap();
        assert_eq!(index.manifests.len(), 1);
        for e in fs::read_dir(out.join("blobs/sha256")).unwrap() {
            let e = e.unwrap();
            let data = fs::read(e.path()).unwrap();
            assert_eq!(Digest::of(&data).hex(), e.file_name().to_string_lossy());
        }
    }

    #[test]
    fn an_export_never_writes_into_a_directory_with_data() {
        let kit = Kit::new(&[]);
        kit.freeze_dir("shop", &kit.dir_with("site", &[("a.txt", "x")]));
        let out = kit.dir_with("export", &[("mine.txt", "keep")]);
        let err = failed(export(
            &kit.repo,
            "shop",
            None,
            &out,
            LayerCompression::Zstd,
        ));
        assert_eq!(err.kind, crate::error::ErrorKind::Conflict, "{err}");
        assert_eq!(fs::read_to_string(out.join("mine.txt")).unwrap(), "keep");
    }
}
