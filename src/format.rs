//! The repository's wire formats: OCI documents and freezer's own records.
//!
//! SPEC.md is the prose version of this file; `formats/` holds the fixtures that pin it.
//!
//! The OCI types are written here rather than taken from the oci-spec crate because
//! freezer needs byte-for-byte deterministic JSON: the same tree must produce the same
//! manifest digest on every run (that is what makes an unchanged night free), and
//! oci-spec keeps annotations in a `HashMap`, whose order changes from run to run.
//! Here annotations are a `BTreeMap` and field order is fixed by the struct.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};

/// Version of the repository layout and of every freezer record in it.
pub const REPO_FORMAT_VERSION: u32 = 1;
pub const REPO_CONFIG_KEY: &str = "freezer.json";
pub const OCI_LAYOUT_KEY: &str = "oci-layout";
pub const OCI_INDEX_KEY: &str = "index.json";
pub const SNAPSHOTS_PREFIX: &str = "snapshots/";
/// Run records (SPEC.md §15): `runs/<site>/<time>-<command>-<exit>-<rand>.json`.
pub const RUNS_PREFIX: &str = "runs/";

pub const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MT_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MT_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MT_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// Only in exports made with `--compression gzip`, for tools that cannot read zstd.
pub const MT_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// freezer's per-tree file index: zstd-compressed JSON lines (see `tree::index`).
pub const MT_TREE_INDEX: &str = "application/vnd.freezer.tree.index.v1.jsonl+zstd";
/// A page map or a pack of a file stored by its units (SPEC.md §5.6).
pub const MT_TREE_PAGES: &str = "application/vnd.freezer.tree.pages.v1+zstd";

pub const A_CREATED: &str = "org.opencontainers.image.created";
pub const A_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const A_TITLE: &str = "org.opencontainers.image.title";
pub const A_FORMAT: &str = "dev.freezer.format";
pub const A_SITE: &str = "dev.freezer.site";
pub const A_MODE: &str = "dev.freezer.mode";
pub const A_HOST: &str = "dev.freezer.host";
pub const A_PARENT: &str = "dev.freezer.parent";
pub const A_NONCE: &str = "dev.freezer.nonce";
pub const A_TREE_NAME: &str = "dev.freezer.tree.name";
pub const A_TREE_PATH: &str = "dev.freezer.tree.path";
pub const A_TREE_INDEX: &str = "dev.freezer.tree.index";
pub const A_TREE_INDEX_SIZE: &str = "dev.freezer.tree.index.size";
/// The page maps and packs of the tree's files stored by their units (SPEC.md §5.6), as
/// compact JSON `[["sha256:…", size], …]`.
pub const A_TREE_PAGES: &str = "dev.freezer.tree.pages";
pub const A_LAYER_KIND: &str = "dev.freezer.layer.kind";
pub const A_TREE_FILES: &str = "dev.freezer.tree.files";
/// The exclusion rules a tree was frozen with (JSON, SPEC.md §6); absent when none.
pub const A_TREE_EXCLUDES: &str = "dev.freezer.tree.excludes";
pub const A_TREE_BYTES: &str = "dev.freezer.tree.bytes";
/// The config media type of a database image (SPEC.md §7).
pub const MT_DB_CONFIG: &str = "application/vnd.freezer.db.config.v1+json";
/// The config of a PostgreSQL database image (SPEC.md §10.7).
pub const MT_PG_CONFIG: &str = "application/vnd.freezer.pg.config.v1+json";
/// Names the database a record's database image holds.
pub const A_DB_NAME: &str = "dev.freezer.db.name";
/// Names the container a record's container image holds.
pub const A_CONTAINER_NAME: &str = "dev.freezer.container.name";
/// On a record's database image: its tables and rows.
pub const A_DB_TABLES: &str = "dev.freezer.db.tables";
pub const A_DB_ROWS: &str = "dev.freezer.db.rows";
/// On a record's container image: the container's image reference and state.
pub const A_CONTAINER_IMAGE: &str = "dev.freezer.container.image";
pub const A_CONTAINER_STATE: &str = "dev.freezer.container.state";

/// A `sha256:<64 hex>` content digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    pub fn of(data: &[u8]) -> Digest {
        Digest::from_hasher(Sha256::new_with_prefix(data))
    }
    pub fn from_hasher(h: Sha256) -> Digest {
        Digest(format!("sha256:{}", hex::encode(h.finalize())))
    }
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Where the blob lives, in the repository and in an OCI image layout alike.
    pub fn key(&self) -> String {
        format!("blobs/sha256/{}", self.hex())
    }
}

impl FromStr for Digest {
    type Err = Error;
    fn from_str(s: &str) -> Result<Digest> {
        let ok = s.len() == 71
            && s.starts_with("sha256:")
            && s[7..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !ok {
            return Err(Error::integrity(format!(
                "invalid digest {s:?}: expected sha256:<64 lowercase hex>"
            )));
        }
        Ok(Digest(s.to_string()))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}
impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse()
            .map_err(|e: Error| serde::de::Error::custom(e.message))
    }
}

pub type Annotations = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
}

impl Platform {
    /// The platform of this machine, in OCI (Go) names.
    pub fn host() -> Platform {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            other => other,
        };
        Platform {
            architecture: architecture.to_string(),
            os: "linux".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Descriptor {
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
}

impl Descriptor {
    pub fn new(media_type: &str, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.to_string(),
            digest,
            size,
            platform: None,
            annotations: Annotations::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageManifest {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageIndex {
    #[serde(rename = "schemaVersion")]
    pub schema_version: u32,
    #[serde(
        rename = "mediaType",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub media_type: String,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: Annotations,
}

/// The OCI image configuration of a tree. Stock tools need `rootfs.diff_ids` (the
/// sha256 of each *uncompressed* layer) to accept the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageConfig {
    pub architecture: String,
    pub os: String,
    pub rootfs: RootFs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootFs {
    #[serde(rename = "type")]
    pub kind: String,
    pub diff_ids: Vec<Digest>,
}

/// `freezer.json` at the root of a repository.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoConfig {
    /// Always "freezer-repository"; tells a freezer repository from any other JSON file.
    pub format: String,
    pub version: u32,
    /// Random, fixed at init. Lets tools tell two repositories apart.
    pub id: String,
    pub created: String,
    /// How objects are protected. Version 1 knows only `{"scheme": "none"}`; an encrypted
    /// repository will carry its scheme and wrapped keys here, and an older freezer will
    /// refuse it instead of writing plaintext into it.
    pub encryption: Encryption,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Encryption {
    pub scheme: String,
}

/// Serializes a document the way freezer stores it: compact JSON, fields in struct order.
pub fn to_json<T: Serialize>(doc: &T) -> Vec<u8> {
    serde_json::to_vec(doc).expect("freezer documents always serialize")
}

pub fn from_json<T: serde::de::DeserializeOwned>(data: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(data)
        .map_err(|e| Error::integrity(format!("{what} is not a valid document: {e}")))
}

/// RFC 3339 UTC time with nanoseconds, e.g. `2026-11-22T03:41:05.123456789Z`.
pub fn rfc3339(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs() as i64);
    format!(
        "{y:04}-{mo:02}-{da:02}T{h:02}:{mi:02}:{s:02}.{:09}Z",
        d.subsec_nanos()
    )
}

/// Compact form used in snapshot ids: `20261122T034105Z`.
pub fn compact_time(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let (y, mo, da, h, mi, s) = civil(d.as_secs() as i64);
    format!("{y:04}{mo:02}{da:02}T{h:02}{mi:02}{s:02}Z")
}

/// The time a [`compact_time`] text names (None: not one).
pub fn parse_compact_time(s: &str) -> Option<std::time::SystemTime> {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| -> Option<u32> {
        let t = s.get(r)?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let (y, mo, d) = (digits(0..4)?, digits(4..6)?, digits(6..8)?);
    let (h, mi, sec) = (digits(9..11)?, digits(11..13)?, digits(13..15)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
        return None;
    }
    let days = days_from_civil(i64::from(y), mo, d);
    let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
    let secs = u64::try_from(secs).ok()?;
    Some(std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs))
}

/// Days since 1970-01-01 (Howard Hinnant's days_from_civil).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Seconds since the epoch to (year, month, day, hour, minute, second), UTC.
/// Howard Hinnant's days-from-civil inverse; avoids a date crate for one function.
fn civil(secs: i64) -> (i64, u32, u32, u32, u32, u32) {
    let days = secs.div_euclid(86400);
    let rem = secs.rem_euclid(86400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (
        y,
        m,
        d,
        (rem / 3600) as u32,
        (rem % 3600 / 60) as u32,
        (rem % 60) as u32,
    )
}

/// What a snapshot holds, as its record's `dev.freezer.mode` says (SPEC.md §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// File trees only.
    Files,
    /// SQL dumps of the databases, and the file trees.
    Dehydrated,
    /// A Docker site's containers, with their volumes and bind mounts as trees.
    Hydrated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Files => "files",
            Mode::Dehydrated => "dehydrated",
            Mode::Hydrated => "hydrated",
        }
    }

    pub fn parse(s: &str) -> Option<Mode> {
        [Mode::Files, Mode::Dehydrated, Mode::Hydrated]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One image of a snapshot record, by what it holds: the record's descriptors say it in
/// their annotations, and this is the one place that reads them for that.
#[derive(Debug, Clone, Copy)]
pub enum Part<'a> {
    /// A file tree: its name and the absolute path it was frozen from.
    Tree {
        name: &'a str,
        path: &'a str,
        image: &'a Descriptor,
    },
    /// A database dump (SPEC.md §7).
    Database {
        name: &'a str,
        image: &'a Descriptor,
    },
    /// A container's configuration, and with `--with-images` its image's layers.
    Container {
        name: &'a str,
        image: &'a Descriptor,
    },
}

impl<'a> Part<'a> {
    pub fn of(d: &'a Descriptor) -> Part<'a> {
        let get = |k: &str| d.annotations.get(k).map(String::as_str);
        if let Some(name) = get(A_DB_NAME) {
            Part::Database { name, image: d }
        } else if let Some(name) = get(A_CONTAINER_NAME) {
            Part::Container { name, image: d }
        } else {
            Part::Tree {
                name: get(A_TREE_NAME).unwrap_or(""),
                path: get(A_TREE_PATH).unwrap_or(""),
                image: d,
            }
        }
    }

    /// What a record's descriptor of a tree image says of it, for [`Part::of`].
    pub fn tree_annotations(name: &str, path: &str, files: u64, bytes: u64) -> Annotations {
        Annotations::from([
            (A_REF_NAME.into(), name.to_string()),
            (A_TREE_NAME.into(), name.to_string()),
            (A_TREE_PATH.into(), path.to_string()),
            (A_TREE_FILES.into(), files.to_string()),
            (A_TREE_BYTES.into(), bytes.to_string()),
        ])
    }

    /// What a record's descriptor of a database image says of it.
    pub fn database_annotations(name: &str, tables: usize, rows: u64) -> Annotations {
        Annotations::from([
            (A_DB_NAME.into(), name.to_string()),
            (A_DB_TABLES.into(), tables.to_string()),
            (A_DB_ROWS.into(), rows.to_string()),
            (A_REF_NAME.into(), format!("db-{name}")),
        ])
    }

    /// What a record's descriptor of a container image says of it.
    pub fn container_annotations(name: &str, image: &str, state: &str) -> Annotations {
        Annotations::from([
            (A_REF_NAME.into(), name.to_string()),
            (A_CONTAINER_NAME.into(), name.to_string()),
            (A_CONTAINER_IMAGE.into(), image.to_string()),
            (A_CONTAINER_STATE.into(), state.to_string()),
        ])
    }

    /// The descriptor of the part's image manifest.
    pub fn image(&self) -> &'a Descriptor {
        match self {
            Part::Tree { image, .. }
            | Part::Database { image, .. }
            | Part::Container { image, .. } => image,
        }
    }
}

/// Every blob an image manifest references besides itself: its config, the tree index
/// of a tree image, and its layers. A tree image whose index cannot be named yields the
/// error alongside the blobs that can be named.
pub fn image_blobs(manifest: &ImageManifest) -> (Vec<Descriptor>, Option<Error>) {
    let mut blobs = vec![manifest.config.clone()];
    let mut err = None;
    // Database and container images have no tree index.
    let database = [MT_DB_CONFIG, MT_PG_CONFIG].contains(&manifest.config.media_type.as_str());
    if !database && !manifest.annotations.contains_key(A_CONTAINER_NAME) {
        match tree_index_digest(manifest) {
            Ok(d) => {
                let size = manifest
                    .annotations
                    .get(A_TREE_INDEX_SIZE)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
                blobs.push(Descriptor::new(MT_TREE_INDEX, d, size));
            }
            Err(e) => err = Some(e),
        }
        if let Some(list) = manifest.annotations.get(A_TREE_PAGES) {
            match serde_json::from_str::<Vec<(Digest, u64)>>(list) {
                Ok(pages) => blobs.extend(
                    pages
                        .into_iter()
                        .map(|(d, size)| Descriptor::new(MT_TREE_PAGES, d, size)),
                ),
                Err(e) => {
                    err = Some(Error::integrity(format!(
                        "tree manifest: bad {A_TREE_PAGES} annotation: {e}"
                    )))
                }
            }
        }
    }
    blobs.extend(manifest.layers.iter().cloned());
    (blobs, err)
}

/// The tree index blob a tree image's manifest names.
pub fn tree_index_digest(manifest: &ImageManifest) -> Result<Digest> {
    manifest
        .annotations
        .get(A_TREE_INDEX)
        .ok_or_else(|| Error::integrity(format!("tree manifest has no {A_TREE_INDEX} annotation")))?
        .parse()
}

/// A run record (SPEC.md §15): what one run of a command did to a site, written into
/// the repository when the run ends, failed runs included. Never holds a secret: the
/// error message is the one the run printed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// Always [`RUN_FORMAT`]; a reader skips a record of a version it does not know.
    pub format: u32,
    /// The site; empty for a run over the whole repository (`prune`, `verify`).
    pub site: String,
    /// `freeze`, `thaw`, `drill`, `verify`, `copy`, `prune` or `forget`.
    pub command: String,
    /// The machine it ran on.
    pub host: String,
    /// RFC 3339 UTC.
    pub started: String,
    pub ended: String,
    /// Its exit status (SPEC.md §9).
    pub exit: i32,
    /// Why it failed: the error's kind (`store`, `usage`, …) and message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<RunError>,
    /// The snapshot it wrote (freeze) or read (thaw, drill).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// A freeze's mode: `files`, `dehydrated` or `hydrated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// What it read, added to and removed from the repository.
    #[serde(default, skip_serializing_if = "RunBytes::is_empty")]
    pub bytes: RunBytes,
    /// A drill's checks and timings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drill: Option<RunDrill>,
    /// How many warnings it printed.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub warnings: u64,
}

/// The version of [`RunRecord`] this freezer writes.
pub const RUN_FORMAT: u32 = 1;

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunError {
    pub kind: String,
    pub message: String,
    /// What to do about it, as the run said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

/// Byte counts of a run; absent fields are zero.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunBytes {
    /// Bytes of the site's files and dumps that the snapshot holds (freeze: what a
    /// restore gives back; thaw, drill: what was restored).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub read: u64,
    /// Bytes the snapshot takes in the repository, compressed, counting whole the blobs
    /// it shares with earlier snapshots (freeze).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub stored: u64,
    /// Bytes uploaded that the repository did not hold (after compression).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub added: u64,
    /// Bytes of blobs the snapshot shares with earlier ones (not uploaded again).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reused: u64,
    /// Bytes deleted from the store (prune).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub deleted: u64,
}

impl RunBytes {
    pub fn is_empty(&self) -> bool {
        *self == RunBytes::default()
    }
}

/// What a drill found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunDrill {
    pub ok: bool,
    /// How long the restore took, and the whole drill.
    pub restore_seconds: f64,
    pub seconds: f64,
    pub checks: Vec<RunCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCheck {
    pub name: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn times_format_as_utc() {
        let t = UNIX_EPOCH + Duration::new(1_795_318_865, 5);
        assert_eq!(rfc3339(t), "2026-11-22T03:41:05.000000005Z");
        assert_eq!(compact_time(t), "20261122T034105Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00.000000000Z"
        );
    }

    #[test]
    fn digests_are_validated() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert!(d.as_str().parse::<Digest>().is_ok());
        assert!("sha256:../../etc".parse::<Digest>().is_err());
        assert!("md5:abc".parse::<Digest>().is_err());
    }
}
