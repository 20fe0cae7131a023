//! Large SQLite databases stored by their pages (SPEC.md §5.6).
//!
//! A SQLite database is rewritten in place, page by page: a night's changes touch a few
//! percent of its pages, scattered. Stored in a tar layer like any file, the whole file
//! would be uploaded again each night it changed. So a database copied through SQLite
//! ([`super::sqlite`]) of at least [`MIN_SIZE`] is stored outside the tree's layers: cut
//! into units of [`UNIT`] bytes (a multiple of every page size up to 16 KiB), each unit
//! compressed as a zstd frame of its own and appended to a *pack* blob, and a *page map*
//! blob that lists, for every unit, its pack, where its frame is and the SHA-256 of its
//! bytes. The next night, units whose SHA-256 is unchanged point into the packs they are
//! already in; only changed units go into a new pack. When the packs get many or mostly
//! dead, the units are written into one fresh pack ("rewrite"), as the tree's own chain
//! is rebased: a thaw never reads much more than the database.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::format::Digest;
use crate::progress::Progress;
use crate::repo::Repository;

/// Bytes per unit.
pub const UNIT: u64 = 16 << 10;
/// Databases smaller than this stay in the tar layers: cheap to upload again, and there
/// stock tools restore them.
pub const MIN_SIZE: u64 = 8 << 20;
/// A map spread over more packs than this is rewritten into one...
const MAX_PACKS: usize = 16;
/// ...as is one whose live units are less than this share of its packs' bytes.
const MIN_LIVE: f64 = 0.6;

const FORMAT: &str = "freezer-sqlite-pages";

/// A pack: a blob of concatenated zstd frames, one per unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pack {
    pub digest: Digest,
    pub size: u64,
}

/// Where each unit of a file is (the page map blob, SPEC.md §5.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageMap {
    pub format: String,
    pub version: u32,
    /// The file's size.
    pub size: u64,
    pub unit: u64,
    pub packs: Vec<Pack>,
    /// Per unit, in order: `[pack, offset, length, sha256]`, the frame at `offset` of
    /// `length` bytes in pack `pack` decompressing to the unit, whose SHA-256 (hex) is
    /// `sha256`.
    pub units: Vec<(u32, u64, u64, String)>,
}

impl PageMap {
    /// Reads and checks the page map `digest`.
    pub fn load(repo: &Repository, digest: &Digest) -> Result<PageMap> {
        Ok(Self::load_sized(repo, digest)?.0)
    }

    /// [`PageMap::load`], with the map blob's size.
    pub fn load_sized(repo: &Repository, digest: &Digest) -> Result<(PageMap, u64)> {
        let data = repo.read_blob(digest)?;
        let json = zstd::decode_all(&data[..])
            .map_err(|e| Error::integrity(format!("page map {}: not zstd: {e}", digest.key())))?;
        Ok((Self::parse(&json, &digest.key())?, data.len() as u64))
    }

    /// A page map from its JSON, checked: every unit in a listed pack, within it, and as
    /// many units as the size needs. `name` names it in errors.
    pub fn parse(json: &[u8], name: &str) -> Result<PageMap> {
        let bad = |why: String| Error::integrity(format!("page map {name}: {why}"));
        let map: PageMap = crate::format::from_json(json, name)?;
        if map.format != FORMAT || map.version != 1 {
            return Err(bad(format!(
                "format {} version {} is not {FORMAT} version 1",
                map.format, map.version
            )));
        }
        if map.unit == 0 || map.units.len() as u64 != map.size.div_ceil(map.unit) {
            return Err(bad(format!(
                "{} units of {} bytes do not make {} bytes",
                map.units.len(),
                map.unit,
                map.size
            )));
        }
        for (pack, offset, len, _) in &map.units {
            let p = map
                .packs
                .get(*pack as usize)
                .ok_or_else(|| bad(format!("a unit is in pack {pack}, which it does not list")))?;
            if offset.checked_add(*len).is_none_or(|end| end > p.size) {
                return Err(bad(format!("a unit lies beyond the end of pack {pack}")));
            }
        }
        Ok(map)
    }

    /// The blobs a file stored this way needs besides its map: its packs.
    pub fn blobs(&self) -> impl Iterator<Item = &Pack> {
        self.packs.iter()
    }
}

/// A file stored by its units: its page map (digest, size), the map, and how many of
/// its bytes were new (written into a new pack).
pub struct Stored {
    pub map_digest: Digest,
    pub map_size: u64,
    pub map: PageMap,
    pub new_bytes: u64,
}

/// Stores the file at `path` by its units, reusing the units of `prev` (the map of the
/// same file in the previous snapshot) that did not change.
pub fn store(
    repo: &Repository,
    path: &Path,
    prev: Option<&PageMap>,
    progress: &Progress,
) -> Result<Stored> {
    let ctx = || format!("reading {}", path.display());
    let mut f = File::open(path).ctx(ctx)?;
    let size = f.metadata().ctx(ctx)?.len();
    let prev = prev.filter(|p| p.unit == UNIT);
    // Read once for each unit's hash; then only the changed units again.
    let mut hashes = Vec::with_capacity(size.div_ceil(UNIT) as usize);
    let mut buf = vec![0u8; UNIT as usize];
    for i in 0..size.div_ceil(UNIT) {
        progress.check(ctx)?;
        let n = (size - i * UNIT).min(UNIT) as usize;
        f.read_exact(&mut buf[..n]).ctx(ctx)?;
        hashes.push(hex::encode(Sha256::digest(&buf[..n])));
    }
    let reused = |i: usize| -> Option<&(u32, u64, u64, String)> {
        prev?.units.get(i).filter(|u| u.3 == hashes[i])
    };
    let rewrite = prev.is_none_or(|p| needs_rewrite(p, (0..hashes.len()).filter_map(reused)));
    // The packs still used keep their order, so an unchanged file maps the same.
    let mut old_to_new: BTreeMap<u32, u32> = BTreeMap::new();
    let mut packs: Vec<Pack> = Vec::new();
    if let Some(prev) = prev.filter(|_| !rewrite) {
        for i in 0..hashes.len() {
            if let Some(u) = reused(i) {
                old_to_new.insert(u.0, 0);
            }
        }
        for (n, (old, new)) in old_to_new.iter_mut().enumerate() {
            *new = n as u32;
            packs.push(prev.packs[*old as usize].clone());
        }
    }
    let mut units = Vec::with_capacity(hashes.len());
    let mut pack: Option<(crate::repo::BlobWriter, u64)> = None;
    let mut new_bytes = 0;
    for (i, hash) in hashes.iter().enumerate() {
        if let Some(u) = reused(i).filter(|_| !rewrite) {
            units.push((old_to_new[&u.0], u.1, u.2, hash.clone()));
            continue;
        }
        progress.check(ctx)?;
        let n = (size - i as u64 * UNIT).min(UNIT) as usize;
        read_at(&f, &mut buf[..n], i as u64 * UNIT).ctx(ctx)?;
        let frame = zstd::bulk::compress(&buf[..n], 3).ctx(|| "compressing a unit".into())?;
        if pack.is_none() {
            pack = Some((repo.blob_writer()?, 0));
        }
        let (w, at) = pack.as_mut().expect("just made");
        w.write_all(&frame).ctx(|| "writing a pack".into())?;
        // The new pack's index is known once the reused packs are all listed: fixed up
        // below.
        units.push((u32::MAX, *at, frame.len() as u64, hash.clone()));
        *at += frame.len() as u64;
        new_bytes += n as u64;
        progress.add_done(n as u64);
    }
    if let Some((w, _)) = pack {
        let (digest, size) = repo.put_written(w)?;
        packs.push(Pack { digest, size });
        let k = packs.len() as u32 - 1;
        for u in units.iter_mut().filter(|u| u.0 == u32::MAX) {
            u.0 = k;
        }
    }
    let map = PageMap {
        format: FORMAT.into(),
        version: 1,
        size,
        unit: UNIT,
        packs,
        units,
    };
    let json = crate::format::to_json(&map);
    let data = zstd::encode_all(&json[..], 3).ctx(|| "compressing a page map".into())?;
    let mut w = repo.blob_writer()?;
    w.write_all(&data).ctx(|| "writing a page map".into())?;
    let (map_digest, map_size) = repo.put_written(w)?;
    Ok(Stored {
        map_digest,
        map_size,
        map,
        new_bytes,
    })
}

/// Whether keeping the units `kept` of map `p` where they are would leave the file on
/// too many packs, or on packs mostly dead: then every unit goes into one new pack.
fn needs_rewrite<'a>(p: &PageMap, kept: impl Iterator<Item = &'a (u32, u64, u64, String)>) -> bool {
    let mut live = vec![0u64; p.packs.len()];
    for u in kept {
        live[u.0 as usize] += u.2;
    }
    let used: Vec<usize> = (0..live.len()).filter(|&k| live[k] > 0).collect();
    let total: u64 = used.iter().map(|&k| p.packs[k].size).sum();
    let live: u64 = live.iter().sum();
    used.len() + 1 > MAX_PACKS || (live as f64) < MIN_LIVE * total as f64
}

fn read_at(f: &File, buf: &mut [u8], at: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, at)
}

/// The bytes of a file stored by its units, in order: each pack fetched once, whole, and
/// every unit checked against its SHA-256 before it is yielded.
pub struct Reader {
    map: PageMap,
    packs: Vec<tempfile::NamedTempFile>,
    next: usize,
    unit: Vec<u8>,
    pos: usize,
    name: String,
}

impl Reader {
    pub fn open(repo: &Repository, map: PageMap, name: &str) -> Result<Reader> {
        let packs = map
            .packs
            .iter()
            .map(|p| repo.fetch_blob(&p.digest))
            .collect::<Result<Vec<_>>>()?;
        Ok(Reader {
            map,
            packs,
            next: 0,
            unit: Vec::new(),
            pos: 0,
            name: name.to_string(),
        })
    }

    fn load_next(&mut self) -> Result<()> {
        let (pack, offset, len, hash) = &self.map.units[self.next];
        let mut frame = vec![0u8; *len as usize];
        read_at(self.packs[*pack as usize].as_file(), &mut frame, *offset)
            .ctx(|| format!("reading a pack of {}", self.name))?;
        let want = (self.map.size - self.next as u64 * self.map.unit).min(self.map.unit);
        let damaged = || {
            Error::integrity(format!(
                "unit {} of {} is damaged in pack {}",
                self.next,
                self.name,
                self.map.packs[*pack as usize].digest.key()
            ))
        };
        let plain = zstd::bulk::decompress(&frame, want as usize).map_err(|_| damaged())?;
        if plain.len() as u64 != want || hex::encode(Sha256::digest(&plain)) != *hash {
            return Err(damaged());
        }
        self.unit = plain;
        self.pos = 0;
        self.next += 1;
        Ok(())
    }
}

impl Read for Reader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.unit.len() {
            if self.next == self.map.units.len() {
                return Ok(0);
            }
            self.load_next().map_err(crate::error::into_io)?;
        }
        let n = out.len().min(self.unit.len() - self.pos);
        out[..n].copy_from_slice(&self.unit[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> Repository {
        Repository::init(Box::new(crate::store::MemoryStore::default())).unwrap()
    }

    fn read_all(repo: &Repository, s: &Stored) -> Vec<u8> {
        let map = PageMap::load(repo, &s.map_digest).unwrap();
        assert_eq!(map, s.map);
        let mut out = Vec::new();
        Reader::open(repo, map, "f")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn changed_units_alone_go_into_a_new_pack_and_the_file_reads_back() {
        let repo = repo();
        let file = tempfile::NamedTempFile::new().unwrap();
        let mut data: Vec<u8> = (0..(UNIT * 40 + 123))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(file.path(), &data).unwrap();
        let p = Progress::default();
        let first = store(&repo, file.path(), None, &p).unwrap();
        assert_eq!(first.new_bytes, data.len() as u64);
        assert_eq!(first.map.packs.len(), 1);
        assert_eq!(read_all(&repo, &first), data);

        // Two units change: only they are new, in a second pack.
        data[5] ^= 1;
        data[(UNIT * 30) as usize] ^= 1;
        std::fs::write(file.path(), &data).unwrap();
        let second = store(&repo, file.path(), Some(&first.map), &p).unwrap();
        assert_eq!(second.new_bytes, 2 * UNIT);
        assert_eq!(second.map.packs.len(), 2);
        assert_eq!(read_all(&repo, &second), data);

        // Unchanged: nothing new, the same map.
        let third = store(&repo, file.path(), Some(&second.map), &p).unwrap();
        assert_eq!(third.new_bytes, 0);
        assert_eq!(third.map_digest, second.map_digest);

        // Mostly changed: one fresh pack holds it all.
        for b in data.iter_mut().step_by(1000) {
            *b ^= 0xff;
        }
        std::fs::write(file.path(), &data).unwrap();
        let fourth = store(&repo, file.path(), Some(&third.map), &p).unwrap();
        assert_eq!(fourth.map.packs.len(), 1);
        assert_eq!(read_all(&repo, &fourth), data);
    }

    #[test]
    fn a_damaged_unit_is_refused() {
        let repo = repo();
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), vec![9u8; (UNIT * 3) as usize]).unwrap();
        let s = store(&repo, file.path(), None, &Progress::default()).unwrap();
        let mut map = s.map.clone();
        map.units[1].3 = hex::encode([0u8; 32]);
        let mut out = Vec::new();
        let err = Reader::open(&repo, map, "f")
            .unwrap()
            .read_to_end(&mut out)
            .unwrap_err();
        assert!(err.to_string().contains("unit 1 of f is damaged"), "{err}");
    }
}
