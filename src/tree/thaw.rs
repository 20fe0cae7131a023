//! Thawing one tree into an empty staging directory.
//!
//! The index drives everything: it is read in full first, and every path in it is checked
//! (relative, no `..`, every parent a directory of the index, hard links only to earlier
//! files) before anything is created. Then:
//! 1. directories, symlinks, FIFOs and devices are created from the index;
//! 2. each layer is streamed once and the files the index assigns to it are written,
//!    their metadata set through the open file descriptor;
//! 3. hard links are made;
//! 4. directory metadata is applied deepest first (creating entries changes mtimes).
//!
//! Nothing is ever resolved through a symlink from the archive: parents are directories
//! this code created itself. The caller renames the staging directory into place only
//! after every layer has been verified against its digest.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use filetime::FileTime;

use super::freeze::tree_index_digest;
use super::index::{
    check_relative, cmp_paths, is_within, parent, Entry, IndexReader, Kind, Trailer,
};
use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::Repository;
use crate::sys;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ThawStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    pub layers: u64,
}

/// The verified, pre-checked plan for one tree: its index on local disk and its totals.
pub struct TreePlan {
    pub manifest: ImageManifest,
    index: tempfile::NamedTempFile,
    pub trailer: Trailer,
}

impl TreePlan {
    /// Fetches and verifies the manifest and index and checks every index entry, so that a
    /// hostile or damaged index is refused before anything is written.
    pub fn load(repo: &Repository, manifest_digest: &Digest) -> Result<TreePlan> {
        let manifest: ImageManifest =
            from_json(&repo.read_blob(manifest_digest)?, &manifest_digest.key())?;
        for l in &manifest.layers {
            if l.media_type != MT_LAYER_ZSTD {
                return Err(Error::integrity(format!(
                    "layer {} has media type {}, expected {MT_LAYER_ZSTD}",
                    l.digest.key(),
                    l.media_type
                )));
            }
        }
        // The config is not needed to restore, but a damaged one would make the snapshot
        // unusable to stock tools: refuse it like any other damaged blob.
        let config: ImageConfig = from_json(
            &repo.read_blob(&manifest.config.digest)?,
            &manifest.config.digest.key(),
        )?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::integrity(format!(
                "config {} lists {} layers, its manifest {}",
                manifest.config.digest.key(),
                config.rootfs.diff_ids.len(),
                manifest.layers.len()
            )));
        }
        let index_digest = tree_index_digest(&manifest)?;
        let index = repo.fetch_blob(&index_digest)?;
        let trailer = check_index(open_index(&index, &index_digest)?, manifest.layers.len())?;
        Ok(TreePlan {
            manifest,
            index,
            trailer,
        })
    }

    /// The paths `includes` select in this tree (`thaw --include`).
    pub fn select(&self, includes: &super::exclude::Matcher) -> Result<super::exclude::Selection> {
        let mut sel = super::exclude::Selection::default();
        let mut links = Vec::new();
        let mut r = self.entries()?;
        while let Some(e) = r.next_entry()? {
            if e.path != b"." && includes.selects(&e.path, e.kind == Kind::Dir) {
                if e.kind == Kind::HardLink {
                    links.push(e.link.clone());
                }
                sel.selected.insert(e.path);
            }
        }
        // A selected hard link needs the file it shares an inode with.
        for l in links {
            sel.selected.insert(l);
        }
        sel.add_ancestors();
        Ok(sel)
    }

    /// The tree's index, entry by entry (already checked by [`TreePlan::load`]).
    pub fn entries(&self) -> Result<IndexReader<File>> {
        let digest = tree_index_digest(&self.manifest)?;
        open_index(&self.index, &digest)
    }
}

fn open_index(file: &tempfile::NamedTempFile, digest: &Digest) -> Result<IndexReader<File>> {
    IndexReader::new(
        File::open(file.path()).ctx(|| "reopening the index".into())?,
        &digest.key(),
    )
}

/// One pass over the index: order, safe paths, parents that are directories, hard links to
/// earlier files, layers that exist.
fn check_index(mut r: IndexReader<File>, layers: usize) -> Result<Trailer> {
    // The chain of directories from the root to the current entry.
    let mut dirs: Vec<Vec<u8>> = Vec::new();
    let mut leaders: HashSet<Vec<u8>> = HashSet::new();
    let mut last: Option<Vec<u8>> = None;
    // Paths are checked by the reader (IndexReader refuses any that would leave the root).
    while let Some(e) = r.next_entry()? {
        let name = e.display_path();
        match &last {
            None if e.path != b"." || e.kind != Kind::Dir => {
                return Err(Error::integrity(
                    "tree index does not start with its root directory",
                ));
            }
            Some(prev) if !cmp_paths(prev, &e.path).is_lt() => {
                return Err(Error::integrity(format!(
                    "tree index is out of order at {name:?}"
                )));
            }
            _ => {}
        }
        if e.path != b"." {
            let p = parent(&e.path);
            while dirs.last().is_some_and(|d| !is_within(p, d)) {
                dirs.pop();
            }
            if dirs.last().map(Vec::as_slice) != Some(p) {
                return Err(Error::integrity(format!(
                    "refusing entry {name:?}: its parent is not a directory in the snapshot (a link may not be a parent)"
                )));
            }
        }
        match e.kind {
            Kind::Dir => dirs.push(e.path.clone()),
            // Stored by its units outside the layers (SPEC.md §5.6).
            Kind::File if e.pages.is_some() && e.layer.is_none() => {}
            Kind::File => {
                let l = e.layer.unwrap_or(u32::MAX) as usize;
                if l >= layers {
                    return Err(Error::integrity(format!(
                        "tree index puts {name:?} in layer {l}, which does not exist"
                    )));
                }
                if e.leader {
                    leaders.insert(e.path.clone());
                }
            }
            Kind::HardLink if !leaders.contains(&e.link) => {
                return Err(Error::integrity(format!(
                    "refusing hard link {name:?}: its target {:?} is not a file earlier in the snapshot",
                    String::from_utf8_lossy(&e.link)
                )));
            }
            _ => {}
        }
        last = Some(e.path);
    }
    r.trailer()
}

fn os(p: &[u8]) -> &OsStr {
    OsStr::from_bytes(p)
}

fn at(root: &Path, rel: &[u8]) -> PathBuf {
    if rel == b"." {
        root.to_path_buf()
    } else {
        root.join(os(rel))
    }
}

fn ftime(t: (i64, u32)) -> FileTime {
    FileTime::from_unix_time(t.0, t.1)
}

/// Restores a tree into `staging`, an empty directory the caller created.
pub fn thaw_tree(
    repo: &Repository,
    plan: &TreePlan,
    staging: &Path,
    only: Option<&super::exclude::Selection>,
    progress: &Progress,
) -> Result<ThawStats> {
    let wanted = |e: &Entry| only.is_none_or(|s| s.has(&e.path));
    let root_owner = sys::is_root();
    let mut stats = ThawStats {
        layers: plan.manifest.layers.len() as u64,
        ..Default::default()
    };

    // 1. Directories and the entries that carry no data.
    create_entries(plan, staging, &wanted, root_owner, &mut stats)?;
    // 2. File contents, one pass per layer.
    extract_files(repo, plan, staging, only, &wanted, root_owner, progress)?;
    // 3. Hard links, to files that now exist.
    link_hard_links(plan, staging, &wanted)?;
    // 4. Directory metadata, children before parents.
    apply_dir_meta(plan, staging, &wanted, root_owner)?;
    Ok(stats)
}

/// Which entries of the index a thaw restores.
type Wanted<'a> = dyn Fn(&Entry) -> bool + 'a;

/// Creates the directories and the entries that carry no data (links, devices), and
/// counts the files.
fn create_entries(
    plan: &TreePlan,
    staging: &Path,
    wanted: &Wanted,
    root_owner: bool,
    stats: &mut ThawStats,
) -> Result<()> {
    for e in plan.entries()? {
        let e = e?;
        if !wanted(&e) {
            continue;
        }
        stats.entries += 1;
        let path = at(staging, &e.path);
        let ctx = || format!("creating {}", path.display());
        match e.kind {
            Kind::Dir if e.path == b"." => {}
            Kind::Dir => fs::create_dir(&path).ctx(ctx)?,
            Kind::Symlink => {
                std::os::unix::fs::symlink(os(&e.link), &path).ctx(ctx)?;
                if root_owner {
                    std::os::unix::fs::lchown(&path, Some(e.uid), Some(e.gid)).ctx(ctx)?;
                }
                set_xattrs_path(&path, &e.xattrs)?;
                filetime::set_symlink_file_times(&path, ftime(e.mtime), ftime(e.mtime)).ctx(ctx)?;
            }
            Kind::Fifo | Kind::CharDev | Kind::BlockDev => {
                let kind = match e.kind {
                    Kind::Fifo => libc::S_IFIFO,
                    Kind::CharDev => libc::S_IFCHR,
                    _ => libc::S_IFBLK,
                };
                sys::mknod(&path, kind, e.mode, e.rdev).ctx(ctx)?;
                apply_path_meta(&path, &e, root_owner)?;
            }
            Kind::File => {
                stats.files += 1;
                stats.bytes += e.size;
            }
            Kind::HardLink => {}
        }
    }

    Ok(())
}

/// Writes the files' contents, one pass per layer.
fn extract_files(
    repo: &Repository,
    plan: &TreePlan,
    staging: &Path,
    only: Option<&super::exclude::Selection>,
    wanted: &Wanted,
    root_owner: bool,
    progress: &Progress,
) -> Result<()> {
    // Creating files is what costs most (a create on ext4 takes far longer than writing
    // a small file's bytes), so small files go to a pool of writer threads, each owning a
    // share of the directories (creates in one directory serialize on its lock in the
    // kernel anyway).
    let owner = Owner::current(root_owner);
    // A partial thaw reads only the layers that hold something it restores: found in one
    // pass over the index, not one per layer.
    let mut needed = std::collections::HashSet::new();
    if only.is_some() {
        for e in plan.entries()? {
            let e = e?;
            if e.kind == Kind::File && wanted(&e) {
                needed.extend(e.layer);
            }
        }
    }
    with_writers(WRITERS, &owner, progress, |writers| {
        for (k, layer) in plan.manifest.layers.iter().enumerate() {
            let in_layer =
                |e: &Entry| e.kind == Kind::File && e.layer == Some(k as u32) && wanted(e);
            if only.is_some() && !needed.contains(&(k as u32)) {
                continue;
            }
            let files = plan
                .entries()?
                .filter(|e| e.as_ref().map_or(true, in_layer));
            extract_layer(repo, layer, files, staging, &owner, progress, writers)?;
        }
        Ok(())
    })?;
    // Files stored by their units, each from its page map and packs.
    for e in plan.entries()? {
        let e = e?;
        let Some(map) = e
            .pages
            .as_ref()
            .filter(|_| e.kind == Kind::File && wanted(&e))
        else {
            continue;
        };
        let name = e.display_path();
        let map = super::pages::PageMap::load(repo, map)?;
        if map.size != e.size {
            return Err(Error::integrity(format!(
                "{name}: its page map holds {} bytes, its index says {}",
                map.size, e.size
            )));
        }
        let mut r = super::pages::Reader::open(repo, map, &name)?;
        let damaged = |err: std::io::Error| Error::integrity(format!("{name}: {err}"));
        write_file(
            &mut r,
            &at(staging, &e.path),
            &e,
            &owner,
            progress,
            &damaged,
        )?;
    }
    Ok(())
}

/// Hard links, to files that exist by now.
fn link_hard_links(plan: &TreePlan, staging: &Path, wanted: &Wanted) -> Result<()> {
    for e in plan.entries()? {
        let e = e?;
        if e.kind == Kind::HardLink && wanted(&e) {
            let path = at(staging, &e.path);
            fs::hard_link(at(staging, &e.link), &path)
                .ctx(|| format!("creating hard link {}", path.display()))?;
        }
    }

    Ok(())
}

/// Directory metadata (modes, owners, times), children before parents: creating a
/// child changes its parent's times.
fn apply_dir_meta(
    plan: &TreePlan,
    staging: &Path,
    wanted: &Wanted,
    root_owner: bool,
) -> Result<()> {
    let mut open: Vec<Entry> = Vec::new();
    for e in plan.entries()? {
        let e = e?;
        if !wanted(&e) {
            continue;
        }
        while open.last().is_some_and(|d| !is_within(&e.path, &d.path)) {
            let d = open.pop().expect("checked");
            apply_path_meta(&at(staging, &d.path), &d, root_owner)?;
        }
        if e.kind == Kind::Dir {
            open.push(e);
        }
    }
    while let Some(d) = open.pop() {
        apply_path_meta(&at(staging, &d.path), &d, root_owner)?;
    }
    Ok(())
}

/// Files up to this size are read into memory and handed to a writer thread.
const SMALL_FILE: u64 = 1 << 20;
const WRITERS: usize = 3;

struct Job {
    path: PathBuf,
    entry: Entry,
    data: Vec<u8>,
}

fn extract_layer(
    repo: &Repository,
    layer: &Descriptor,
    wanted: impl Iterator<Item = Result<Entry>>,
    staging: &Path,
    owner: &Owner,
    progress: &Progress,
    writers: &[mpsc::SyncSender<Job>],
) -> Result<()> {
    let name = layer.digest.key();
    let mut blob = repo.open_blob(&layer.digest)?;
    extract_stream(&mut blob, &name, wanted, staging, owner, progress, writers)?;
    // The tar end marker comes before the end of the blob: read the rest to check the digest.
    blob.finish()?;
    Ok(())
}

/// Extracts the `wanted` files (in index order) from one layer's bytes (tar+zstd) into
/// `staging`. The bytes may be hostile: every path is checked, every size compared with
/// the index, and anything that cannot be parsed is damage (exit 4).
fn extract_stream(
    blob: &mut impl Read,
    name: &str,
    mut wanted: impl Iterator<Item = Result<Entry>>,
    staging: &Path,
    owner: &Owner,
    progress: &Progress,
    writers: &[mpsc::SyncSender<Job>],
) -> Result<()> {
    let mut next = wanted.next().transpose()?;
    let damaged = |e| layer_damaged(name, e);
    let dec = zstd::stream::read::Decoder::new(blob).map_err(damaged)?;
    let mut archive = tar::Archive::new(dec);
    for entry in archive.entries().map_err(damaged)? {
        let mut entry = entry.map_err(damaged)?;
        let raw = entry.path_bytes().into_owned();
        let path = normalize_tar_path(&raw)?;
        // Only regular files carry data freezer restores from the archive; everything
        // else (directories, links, whiteouts) comes from the index.
        if entry.header().entry_type() != tar::EntryType::Regular
            && entry.header().entry_type() != tar::EntryType::Continuous
        {
            continue;
        }
        let Some(want) = &next else { continue };
        match cmp_paths(&path, &want.path) {
            std::cmp::Ordering::Less => continue,
            std::cmp::Ordering::Greater if !is_whiteout(&path) => {
                return Err(missing(name, want));
            }
            std::cmp::Ordering::Greater => continue,
            std::cmp::Ordering::Equal => {}
        }
        let want = next.take().expect("checked");
        if entry.size() != want.size {
            return Err(Error::integrity(format!(
                "layer {name}: {} has {} bytes, the index says {}",
                want.display_path(),
                entry.size(),
                want.size
            )));
        }
        let path = at(staging, &want.path);
        if want.size <= SMALL_FILE {
            let mut data = vec![0u8; want.size as usize];
            entry.read_exact(&mut data).map_err(damaged)?;
            let w = &writers[dir_hash(parent(&want.path)) % writers.len()];
            w.send(Job {
                path,
                entry: want,
                data,
            })
            .map_err(|_| Error::other("a writer thread stopped"))?;
        } else {
            write_file(&mut entry, &path, &want, owner, progress, &damaged)?;
        }
        next = wanted.next().transpose()?;
    }
    if let Some(want) = next {
        return Err(missing(name, &want));
    }
    Ok(())
}

/// Runs `read` with `n` writer threads taking small files off it, and returns its result,
/// or the first writer's error (which explains a reader's "writer stopped").
fn with_writers(
    n: usize,
    owner: &Owner,
    progress: &Progress,
    read: impl FnOnce(&[mpsc::SyncSender<Job>]) -> Result<()>,
) -> Result<()> {
    std::thread::scope(|scope| {
        let mut writers = Vec::new();
        let mut handles = Vec::new();
        for _ in 0..n {
            let (tx, rx) = mpsc::sync_channel::<Job>(64);
            writers.push(tx);
            handles.push(scope.spawn(move || -> Result<()> {
                for job in rx {
                    write_file(
                        &mut &job.data[..],
                        &job.path,
                        &job.entry,
                        owner,
                        progress,
                        &|e| Error::io("reading a file held in memory", e),
                    )?;
                }
                Ok(())
            }));
        }
        let result = read(&writers);
        drop(writers);
        let mut failed = None;
        for h in handles {
            if let Err(e) = h
                .join()
                .map_err(|_| Error::other("a writer thread panicked"))?
            {
                failed.get_or_insert(e);
            }
        }
        match failed {
            Some(e) => Err(e),
            None => result,
        }
    })
}

/// For fuzzing (fuzz/fuzz_targets/tar_layer.rs): extracts `files` (paths in index order,
/// and sizes) from `layer` bytes into `staging`, whose parent directories the caller
/// made, as a thaw would. Always compiled, so that a change that breaks it breaks the
/// build, not only the next fuzzing run.
#[doc(hidden)]
pub fn fuzz_extract(layer: &[u8], files: &[(&[u8], u64)], staging: &Path) -> Result<()> {
    let owner = Owner::current(false);
    let progress = Progress::default();
    let wanted = files.iter().map(|(p, size)| {
        Ok(Entry {
            path: p.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: (0, 0),
            size: *size,
            layer: Some(0),
            link: Vec::new(),
            rdev: 0,
            xattrs: Vec::new(),
            leader: false,
            ino: 0,
            ctime: (0, 0),
            frame: None,
            sqlite: None,
            pages: None,
        })
    });
    with_writers(1, &owner, &progress, |writers| {
        extract_stream(
            &mut &layer[..],
            "fuzz",
            wanted,
            staging,
            &owner,
            &progress,
            writers,
        )
    })
}

/// A layer that cannot be decompressed or parsed is damaged repository data (exit 4), not
/// a local failure; an error of the store underneath (the network, a digest mismatch)
/// travels intact inside the I/O error and is kept as it is.
fn layer_damaged(layer: &str, e: std::io::Error) -> Error {
    if e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
        return *e.into_inner().unwrap().downcast::<Error>().unwrap();
    }
    Error::integrity(format!("layer {layer} is damaged: {e}"))
        .with_hint("`freezer verify` lists every damaged object; thaw an older snapshot, or restore the object from a copy of the repository")
}

fn missing(layer: &str, want: &Entry) -> Error {
    Error::integrity(format!(
        "layer {layer} lacks {}, which the tree index places in it",
        want.display_path()
    ))
}

fn is_whiteout(path: &[u8]) -> bool {
    let name = &path[path.iter().rposition(|&b| b == b'/').map_or(0, |i| i + 1)..];
    name.starts_with(b".wh.")
}

/// `./a/b/` -> `a/b`; refuses anything that could leave the target.
fn normalize_tar_path(raw: &[u8]) -> Result<Vec<u8>> {
    let mut p: &[u8] = raw;
    while let Some(rest) = p.strip_prefix(b"./") {
        p = rest;
    }
    while let Some(rest) = p.strip_suffix(b"/") {
        p = rest;
    }
    if p.is_empty() || p == b"." {
        return Ok(b".".to_vec());
    }
    check_relative(p)?;
    Ok(p.to_vec())
}

const CHUNK: usize = 256 << 10;

/// Writes a file's bytes, leaving holes where whole blocks are zero (so sparse files stay
/// sparse), then sets owner, mode, xattrs and mtime through the open descriptor.
fn write_file(
    src: &mut impl Read,
    path: &Path,
    e: &Entry,
    owner: &Owner,
    progress: &Progress,
    damaged: &dyn Fn(std::io::Error) -> Error,
) -> Result<()> {
    let ctx = || format!("writing {}", path.display());
    progress.check(ctx)?;
    // Create with the final mode when the umask leaves it intact, saving an fchmod per file.
    let direct = e.mode & 0o7000 == 0 && e.mode & owner.umask == 0;
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if direct { e.mode } else { 0o600 })
        .open(path)
        .ctx(ctx)?;
    let mut buf = vec![0u8; CHUNK];
    let mut left = e.size;
    let mut hole = false;
    while left > 0 {
        let want = CHUNK.min(left as usize);
        src.read_exact(&mut buf[..want]).map_err(damaged)?;
        if want % 4096 == 0 && is_zero(&buf[..want]) {
            f.seek(SeekFrom::Current(want as i64)).ctx(ctx)?;
            hole = true;
        } else {
            f.write_all(&buf[..want]).ctx(ctx)?;
            hole = false;
        }
        left -= want as u64;
        progress.add_done(want as u64);
    }
    if hole {
        f.set_len(e.size).ctx(ctx)?;
    }
    if owner.chown && (e.uid, e.gid) != (owner.uid, owner.gid) {
        std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid)).ctx(ctx)?;
    }
    // After chown, which clears setuid/setgid bits. A file created with its final mode
    // has none of those, so chown cannot have changed it.
    if !direct {
        f.set_permissions(Permissions::from_mode(e.mode)).ctx(ctx)?;
    }
    for (name, value) in &e.xattrs {
        xattr::FileExt::set_xattr(&f, name, value)
            .ctx(|| format!("setting xattr {name} on {}", path.display()))?;
    }
    filetime::set_file_handle_times(&f, None, Some(ftime(e.mtime))).ctx(ctx)?;
    Ok(())
}

/// Who we are, to skip ownership and mode calls that would change nothing.
struct Owner {
    chown: bool,
    uid: u32,
    gid: u32,
    umask: u32,
}

impl Owner {
    fn current(root: bool) -> Owner {
        let (uid, gid, umask) = sys::ids_and_umask();
        Owner {
            chown: root,
            uid,
            gid,
            umask,
        }
    }
}

fn dir_hash(dir: &[u8]) -> usize {
    // FNV-1a: spreads directories over writers, stable within a run.
    dir.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }) as usize
}

fn is_zero(buf: &[u8]) -> bool {
    buf.chunks_exact(16)
        .all(|c| u128::from_ne_bytes(c.try_into().expect("16 bytes")) == 0)
}

fn set_xattrs_path(path: &Path, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    for (name, value) in xattrs {
        xattr::set(path, name, value)
            .ctx(|| format!("setting xattr {name} on {}", path.display()))?;
    }
    Ok(())
}

fn apply_path_meta(path: &Path, e: &Entry, root_owner: bool) -> Result<()> {
    let ctx = || format!("setting metadata of {}", path.display());
    if root_owner {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid)).ctx(ctx)?;
    }
    fs::set_permissions(path, Permissions::from_mode(e.mode)).ctx(ctx)?;
    set_xattrs_path(path, &e.xattrs)?;
    // Path-based and without following links: opening a FIFO to set its time would block.
    filetime::set_symlink_file_times(path, ftime(e.mtime), ftime(e.mtime)).ctx(ctx)
}
