//! Freezing one directory tree into the repository.
//!
//! The walk is merged with the previous snapshot's index of the same tree. An entry whose
//! stat data (type, mode, owner, size, mtime, ctime, inode) is unchanged is carried over
//! without reading it; everything else goes into a new changeset layer, and entries that
//! disappeared become whiteouts. When the chain of layers gets long, or most bytes in it
//! are superseded, the tree is written afresh as a full layer ("rebase").
//!
//! Layers are cut into parts of [`PART_BYTES`] so the local spool stays small, and each
//! finished part is uploaded on a second thread while the next one is being compressed.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use sha2::{Digest as _, Sha256};

use super::exclude::Matcher;
use super::frames::{ClosedFrame, Compressor, FRAME_BYTES, OWN_FRAME};
use super::index::{cmp_paths, is_within, Entry, Frame, IndexReader, IndexWriter, Kind, Trailer};
use super::pages;
use super::sqlite::{self, Sqlite};
use super::walk::{Walked, Walker};
use crate::error::{Error, IoContext, Result};
use crate::format::*;
use crate::progress::Progress;
use crate::repo::{BlobWriter, Repository, StagedBlob};

/// Uncompressed tar bytes per layer part.
pub const PART_BYTES: u64 = 256 << 20;
/// Rebase when the chain is longer than this...
pub const MAX_LAYERS: usize = 24;
/// ...or when less than this share of the content bytes in the layers is still live.
pub const MIN_LIVE_RATIO: f64 = 0.6;

/// What the previous snapshot of this tree left, verified and ready to merge against.
pub struct PrevTree {
    pub manifest: ImageManifest,
    pub config: ImageConfig,
    pub index: tempfile::NamedTempFile,
    pub trailer: Trailer,
}

impl PrevTree {
    /// Loads and verifies the manifest, config and index of a tree from an earlier snapshot.
    pub fn load(repo: &Repository, manifest_digest: &Digest) -> Result<PrevTree> {
        let manifest: ImageManifest =
            from_json(&repo.read_blob(manifest_digest)?, &manifest_digest.key())?;
        let config: ImageConfig = from_json(
            &repo.read_blob(&manifest.config.digest)?,
            &manifest.config.digest.key(),
        )?;
        let index_digest = tree_index_digest(&manifest)?;
        let index = repo.fetch_blob(&index_digest)?;
        let trailer = IndexReader::new(
            File::open(index.path()).ctx(|| "reopening the index".into())?,
            &index_digest.key(),
        )?
        .trailer()?;
        if trailer.layer_content.len() != manifest.layers.len()
            || config.rootfs.diff_ids.len() != manifest.layers.len()
        {
            return Err(Error::integrity(format!(
                "tree manifest {} disagrees with its index about its layers",
                manifest_digest.key()
            )));
        }
        Ok(PrevTree {
            manifest,
            config,
            index,
            trailer,
        })
    }

    fn needs_rebase(&self) -> bool {
        let content: u64 = self.trailer.layer_content.iter().sum();
        self.manifest.layers.len() >= MAX_LAYERS
            || (content > 0 && (self.trailer.bytes as f64) < MIN_LIVE_RATIO * content as f64)
    }
}

pub use crate::format::tree_index_digest;

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct FreezeStats {
    pub entries: u64,
    pub files: u64,
    pub bytes: u64,
    /// Files (and bytes) read because they were new or changed.
    pub files_read: u64,
    pub bytes_read: u64,
    pub deleted: u64,
    pub new_layers: u64,
    pub layers: u64,
    pub rebased: bool,
    /// Entries that changed while being read or vanished during the walk.
    pub changed_during_read: u64,
    pub vanished: u64,
    pub skipped_sockets: u64,
    /// Paths the exclusion rules left out (the top-most of each excluded subtree).
    pub excluded: u64,
    /// The SQLite databases found, and how each was copied ([`sqlite`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sqlite: Vec<sqlite::Found>,
    /// Of the files stored by their units ([`pages`]): the bytes of the units that
    /// changed, and so were stored (the rest point into earlier packs).
    #[serde(skip_serializing_if = "is_zero")]
    pub pages_new_bytes: u64,
    /// What the tree's snapshot takes in the repository (its layers, index and page
    /// blobs, compressed; blobs it shares with earlier snapshots counted whole).
    pub stored_bytes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// How a tree is read: what is left out, and how its SQLite databases are copied.
#[derive(Default)]
pub struct ReadRules<'a> {
    pub excludes: Option<&'a Matcher>,
    pub sqlite: Sqlite,
}

/// Freezes `root`, returning the descriptor of the tree's image manifest (already stored).
pub fn freeze_tree(
    repo: &Repository,
    root: &Path,
    prev: Option<&PrevTree>,
    rules: &ReadRules,
    annotations: Annotations,
    progress: &Progress,
) -> Result<(Descriptor, FreezeStats)> {
    let mut stats = FreezeStats::default();
    let incremental = prev.filter(|p| !p.needs_rebase());
    stats.rebased = prev.is_some() && incremental.is_none();

    let (mut layers, mut diff_ids, mut layer_content) = match incremental {
        Some(p) => (
            p.manifest.layers.clone(),
            p.config.rootfs.diff_ids.clone(),
            p.trailer.layer_content.clone(),
        ),
        None => (Vec::new(), Vec::new(), Vec::new()),
    };
    let base = layers.len() as u32;

    // Hashed as it is written, so the index is never read back just to name it.
    let mut index = IndexWriter::new(repo.blob_writer()?)?;

    let walk = Walk {
        root,
        incremental,
        excludes: rules.excludes,
        sqlite: rules.sqlite,
        base,
    };
    let (finished, page_blobs) = walk_and_upload(repo, walk, &mut index, &mut stats, progress)?;

    stats.new_layers = finished.len() as u64;
    for part in finished {
        let blob = &part.staged;
        let mut d = Descriptor::new(MT_LAYER_ZSTD, blob.digest.clone(), blob.size);
        d.annotations.insert(
            A_LAYER_KIND.into(),
            if base == 0 && part.ordinal == 0 {
                "full"
            } else {
                "changes"
            }
            .into(),
        );
        layers.push(d);
        diff_ids.push(part.diff_id);
        layer_content.push(part.content);
    }
    stats.layers = layers.len() as u64;

    let (w, trailer) = index.finish(layer_content)?;
    let (index_digest, index_size) = repo.put_written(w)?;
    stats.entries = trailer.entries;
    stats.files = trailer.files;
    stats.bytes = trailer.bytes;

    let index = Descriptor::new(MT_TREE_INDEX, index_digest, index_size);
    stats.stored_bytes =
        layers.iter().map(|l| l.size).sum::<u64>() + index_size + page_blobs.values().sum::<u64>();
    let mut annotations = annotations;
    if !page_blobs.is_empty() {
        let list: Vec<(&Digest, &u64)> = page_blobs.iter().collect();
        annotations.insert(
            A_TREE_PAGES.into(),
            serde_json::to_string(&list).expect("digests serialize"),
        );
    }
    let manifest = store_tree_image(repo, layers, diff_ids, &index, annotations)?;
    Ok((manifest, stats))
}

/// What a freeze walks: the tree, the previous snapshot's when incremental, what is
/// excluded, and the first new layer's ordinal.
struct Walk<'a> {
    root: &'a Path,
    incremental: Option<&'a PrevTree>,
    excludes: Option<&'a Matcher>,
    sqlite: Sqlite,
    base: u32,
}

/// Walks the tree into new layer parts and the index; each finished part is uploaded on
/// a thread of its own while the next is written. Returns the parts, in order.
fn walk_and_upload(
    repo: &Repository,
    walk: Walk,
    index: &mut IndexWriter<BlobWriter>,
    stats: &mut FreezeStats,
    progress: &Progress,
) -> Result<(Vec<FinishedPart>, PageBlobs)> {
    std::thread::scope(|scope| -> Result<(Vec<FinishedPart>, PageBlobs)> {
        // Parts travel to the uploader through a one-slot channel: at most one finished
        // part waits on local disk while the next is written.
        let (tx, rx) = mpsc::sync_channel::<FinishedPart>(1);
        let uploader = scope.spawn(move || -> Result<Vec<FinishedPart>> {
            let mut done = Vec::new();
            for part in rx {
                repo.put_staged(&part.staged)?;
                done.push(part);
            }
            Ok(done)
        });
        let mut m = Merge {
            layers: LayerSink {
                repo,
                current: None,
                next_ordinal: walk.base,
                tx,
                done_frames: Default::default(),
            },
            index,
            stats,
            gone_dir: None,
            leaders: Default::default(),
            progress,
            pending: Default::default(),
            sqlite: walk.sqlite,
            copied_dbs: Default::default(),
            page_blobs: Default::default(),
        };
        let walk_result = m.run(walk.root, walk.incremental, walk.excludes);
        let close_result = walk_result
            .and_then(|()| m.layers.finish_part())
            .and_then(|()| m.drain());
        debug_assert!(close_result.is_err() || m.pending.is_empty());
        let page_blobs = std::mem::take(&mut m.page_blobs);
        drop(m);
        let uploaded = uploader
            .join()
            .map_err(|_| Error::other("the upload thread panicked"))?;
        // An upload error explains the walk's "upload thread stopped", so it comes first.
        let uploaded = uploaded?;
        close_result?;
        Ok((uploaded, page_blobs))
    })
}

/// Stores a tree's OCI config and manifest (§5 of SPEC.md) for layers and an index that
/// are already stored. Returns the manifest's descriptor.
pub fn store_tree_image(
    repo: &Repository,
    layers: Vec<Descriptor>,
    diff_ids: Vec<Digest>,
    index: &Descriptor,
    mut annotations: Annotations,
) -> Result<Descriptor> {
    let platform = Platform::host();
    let config = ImageConfig {
        architecture: platform.architecture,
        os: platform.os,
        rootfs: RootFs {
            kind: "layers".into(),
            diff_ids,
        },
    };
    let (config_digest, config_size) = repo.put_blob(&to_json(&config))?;
    annotations.insert(A_TREE_INDEX.into(), index.digest.to_string());
    annotations.insert(A_TREE_INDEX_SIZE.into(), index.size.to_string());
    let manifest = ImageManifest {
        schema_version: 2,
        media_type: MT_MANIFEST.into(),
        config: Descriptor::new(MT_CONFIG, config_digest, config_size),
        layers,
        annotations,
    };
    let (digest, size) = repo.put_blob(&to_json(&manifest))?;
    Ok(Descriptor::new(MT_MANIFEST, digest, size))
}

struct Merge<'a> {
    layers: LayerSink<'a>,
    index: &'a mut IndexWriter<BlobWriter>,
    stats: &'a mut FreezeStats,
    /// A directory of the previous snapshot that is gone: its old children need no whiteouts.
    gone_dir: Option<Vec<u8>>,
    /// Inode -> path of the first name of each multiply-linked file seen so far.
    leaders: std::collections::HashMap<(u64, u64), Vec<u8>>,
    progress: &'a Progress,
    /// Entries waiting for the frame of a file among them to close, in index order.
    pending: std::collections::VecDeque<(Entry, Option<FrameRef>)>,
    sqlite: Sqlite,
    /// The databases stored as copies made through SQLite: their `-wal`, `-shm` and
    /// `-journal`, which come after them in the walk, are not stored.
    copied_dbs: std::collections::HashSet<Vec<u8>>,
    /// The page maps and packs of the files stored by their units, with their sizes.
    page_blobs: PageBlobs,
}

/// Blobs of files stored by their units ([`pages`]): digest and size.
type PageBlobs = std::collections::BTreeMap<Digest, u64>;

/// Entries held back for an open frame before it is closed early: bounds the memory a
/// frame of many unchanged (carried-over) entries can take.
const MAX_PENDING: usize = 10_000;

impl Merge<'_> {
    /// Adds an entry to the index, in order, once the frame of its file (`at`) is closed.
    fn push(&mut self, e: Entry, at: Option<FrameRef>) -> Result<()> {
        if self.pending.is_empty() && at.is_none() {
            return self.index.push(&e);
        }
        self.pending.push_back((e, at));
        if self.pending.len() > MAX_PENDING {
            // Close the frame the oldest waiting entry is in, and wait for it.
            self.layers.end_frame()?;
            return self.drain_waiting(true);
        }
        self.drain()
    }

    /// Moves the waiting entries whose frames are closed into the index.
    fn drain(&mut self) -> Result<()> {
        self.drain_waiting(false)
    }

    fn drain_waiting(&mut self, wait: bool) -> Result<()> {
        while let Some((_, at)) = self.pending.front() {
            let frame = match at {
                None => None,
                Some(r) => match self.layers.closed(*r, wait) {
                    Some(f) => Some(Frame {
                        offset: f.offset,
                        len: f.len,
                        skip: r.skip,
                        sha256: f.sha256,
                    }),
                    None => break,
                },
            };
            let (mut e, _) = self.pending.pop_front().expect("front exists");
            e.frame = frame;
            self.index.push(&e)?;
        }
        if self.pending.is_empty() {
            self.layers.done_frames.clear();
        }
        Ok(())
    }

    fn run(
        &mut self,
        root: &Path,
        prev: Option<&PrevTree>,
        excludes: Option<&Matcher>,
    ) -> Result<()> {
        let mut old = match prev {
            Some(p) => Some(IndexReader::new(
                File::open(p.index.path()).ctx(|| "reopening the index".into())?,
                "previous",
            )?),
            None => None,
        };
        let mut next_old = match &mut old {
            Some(r) => r.next_entry()?,
            None => None,
        };
        // What the rules leave out is not walked: to the merge below it looks deleted, so
        // a path excluded tonight leaves the snapshot, and one included again comes back.
        let mut walker = Walker::with_excludes(root, excludes);
        while let Some(w) = walker.next_entry()? {
            while let Some(o) = next_old.take_if(|o| cmp_paths(&o.path, &w.rel).is_lt()) {
                self.deleted(&o)?;
                next_old = old.as_mut().map_or(Ok(None), |r| r.next_entry())?;
            }
            let same = next_old.take_if(|o| o.path == w.rel);
            if same.is_some() {
                next_old = old.as_mut().map_or(Ok(None), |r| r.next_entry())?;
            }
            self.entry(w, same)?;
        }
        while let Some(o) = next_old {
            self.deleted(&o)?;
            next_old = old.as_mut().map_or(Ok(None), |r| r.next_entry())?;
        }
        self.stats.vanished = walker.vanished;
        self.stats.excluded = walker.excluded.len() as u64;
        Ok(())
    }

    /// `X-wal`, `X-shm` or `X-journal` of a database `X` this walk copied through SQLite.
    fn is_companion_of_copy(&self, path: &[u8]) -> bool {
        let name = super::index::file_name(path);
        sqlite::database_of(name).is_some_and(|db| {
            let parent = super::index::parent(path);
            let db_path = match parent {
                b"." => db.to_vec(),
                p => super::index::join(p, db),
            };
            self.copied_dbs.contains(&db_path)
        })
    }

    /// Stores the database copy at `copy` by its units, reusing those of its previous
    /// page map `prev` that did not change; `e` becomes its entry.
    fn store_pages(&mut self, e: &mut Entry, copy: &Path, prev: Option<&Digest>) -> Result<()> {
        let repo = self.layers.repo;
        // A previous map that cannot be read only costs the reuse.
        let prev = prev.and_then(|d| pages::PageMap::load(repo, d).ok());
        let stored = pages::store(repo, copy, prev.as_ref(), self.progress)
            .map_err(|err| crate::error::prefix(err, &format!("storing {}", e.display_path())))?;
        self.stats.pages_new_bytes += stored.new_bytes;
        self.page_blobs
            .insert(stored.map_digest.clone(), stored.map_size);
        for p in stored.map.blobs() {
            self.page_blobs.insert(p.digest.clone(), p.size);
        }
        e.pages = Some(stored.map_digest);
        e.layer = None;
        e.frame = None;
        Ok(())
    }

    /// An unchanged file stored by its units: its map and packs stay in the tree.
    fn keep_pages(&mut self, map: &Digest) -> Result<()> {
        let repo = self.layers.repo;
        let (m, size) = pages::PageMap::load_sized(repo, map)?;
        self.page_blobs.insert(map.clone(), size);
        for p in m.blobs() {
            self.page_blobs.insert(p.digest.clone(), p.size);
        }
        Ok(())
    }

    fn found(&mut self, path: &[u8], how: sqlite::How) {
        let path = String::from_utf8_lossy(path).into_owned();
        self.stats.sqlite.push(sqlite::Found {
            path,
            how,
            error: None,
        });
    }

    /// For a file that is a SQLite database, read while its site runs: a copy of it made
    /// through SQLite, with `e` made its entry (size, stamp). None: the file is read as
    /// it is (not a database, copied as files, or locked beyond the wait with
    /// [`sqlite::OnLocked::Copy`]).
    fn database_copy(
        &mut self,
        e: &mut Entry,
        w: &Walked,
        f: &File,
    ) -> Result<Option<tempfile::NamedTempFile>> {
        if !sqlite::is_database(&w.abs, &w.meta, f) {
            return Ok(None);
        }
        let Sqlite::Consistent { wait, locked } = self.sqlite else {
            self.found(&e.path, sqlite::How::AsFiles);
            return Ok(None);
        };
        if w.meta.nlink() > 1 {
            self.found(&e.path, sqlite::How::AsFiles);
            return Ok(None);
        }
        let copied = match sqlite::backup(&w.abs, wait, self.progress) {
            Err(err) if err.kind == crate::error::ErrorKind::Interrupted => return Err(err),
            // Its bytes are still worth keeping (a damaged database, one this user may
            // read but SQLite may not open): copied as files, and said.
            Err(err) => {
                self.found(&e.path, sqlite::How::Unreadable);
                if let Some(f) = self.stats.sqlite.last_mut() {
                    f.error = Some(err.message);
                }
                return Ok(None);
            }
            Ok(c) => c,
        };
        match copied {
            Some(sqlite::Copy { file: copy, stamp }) => {
                e.size = copy
                    .as_file()
                    .metadata()
                    .ctx(|| format!("reading the copy of {}", w.abs.display()))?
                    .len();
                e.sqlite = Some(stamp);
                self.found(&e.path, sqlite::How::Consistent);
                self.copied_dbs.insert(e.path.clone());
                Ok(Some(copy))
            }
            None if locked == sqlite::OnLocked::Fail => Err(Error::new(
                crate::error::ErrorKind::Locked,
                format!(
                    "SQLite database {} stayed locked for {} s; nothing was recorded",
                    w.abs.display(),
                    wait.as_secs()
                ),
            )
            .with_hint("freeze again when its writer is done, or let a locked database be copied as files with a warning (sqlite_locked = \"copy\")")),
            None => {
                self.found(&e.path, sqlite::How::Locked);
                Ok(None)
            }
        }
    }

    fn deleted(&mut self, o: &Entry) -> Result<()> {
        if self
            .gone_dir
            .as_deref()
            .is_some_and(|d| is_within(&o.path, d))
        {
            return Ok(());
        }
        self.stats.deleted += 1;
        self.layers.whiteout(&o.path)?;
        if o.kind == Kind::Dir {
            self.gone_dir = Some(o.path.clone());
        }
        Ok(())
    }

    fn entry(&mut self, mut w: Walked, old: Option<Entry>) -> Result<()> {
        let Some(mut e) = entry_of(&w.meta, std::mem::take(&mut w.rel)) else {
            // Sockets belong to a running process and cannot be restored meaningfully.
            self.stats.skipped_sockets += 1;
            return Ok(());
        };
        let (kind, m) = (e.kind, &w.meta);
        let multi = kind == Kind::File && m.nlink() > 1;
        let inode = (m.dev(), m.ino());
        if self.is_companion_of_copy(&e.path) {
            // In the database's copy; an earlier snapshot's raw copy of it goes.
            return match old {
                Some(o) => self.deleted(&o),
                None => Ok(()),
            };
        }
        let old_pages = old.as_ref().and_then(|o| o.pages.clone());
        if let Some(o) = old {
            let same_kind = o.kind == kind || (o.kind == Kind::HardLink && kind == Kind::File);
            if same_kind && self.still_the_same(&o, &e, &w, multi) {
                return self.carry_over(o, inode);
            }
            if !same_kind {
                // A type change: remove the old entry (and, for a directory, its contents).
                self.deleted(&o)?;
                self.stats.deleted -= 1;
            }
        }

        e.xattrs = read_xattrs(&w.abs);
        let mut frame = None;
        match kind {
            Kind::Dir => {
                if e.path != b"." {
                    self.layers.header(&e, tar::EntryType::Directory, &[])?;
                }
            }
            Kind::Symlink => {
                let target = std::fs::read_link(&w.abs)
                    .ctx(|| format!("reading link {}", w.abs.display()))?;
                e.link = target.as_os_str().as_bytes().to_vec();
                self.layers.header(&e, tar::EntryType::Symlink, &e.link)?;
            }
            Kind::Fifo => self.layers.header(&e, tar::EntryType::Fifo, &[])?,
            Kind::CharDev => self.layers.header(&e, tar::EntryType::Char, &[])?,
            Kind::BlockDev => self.layers.header(&e, tar::EntryType::Block, &[])?,
            Kind::File if multi && self.leaders.contains_key(&inode) => {
                e.kind = Kind::HardLink;
                e.link = self.leaders[&inode].clone();
                e.size = 0;
                self.layers.header(&e, tar::EntryType::Link, &e.link)?;
            }
            Kind::File => {
                if multi {
                    e.leader = true;
                    self.leaders.insert(inode, e.path.clone());
                }
                frame = self.regular_file(&mut e, &w, old_pages.as_ref())?;
            }
            Kind::HardLink => unreachable!("the walk never yields hard links"),
        }
        self.push(e, frame)?;
        self.layers.maybe_cut()?;
        self.drain()
    }

    /// Whether the previous snapshot's entry `o` (of the same kind) stands for what the
    /// walk found (`e`, at `w`) without reading it. A SQLite database copied through
    /// SQLite compares its stamp instead of its size; one copied as files beside a
    /// `-wal` is read again (the raw copy may be torn).
    fn still_the_same(&self, o: &Entry, e: &Entry, w: &Walked, multi: bool) -> bool {
        let live_db = e.kind == Kind::File && !multi && self.sqlite != Sqlite::AsFiles;
        match (&o.sqlite, live_db) {
            (Some(stamp), true) => {
                let same_size = Entry {
                    size: o.size,
                    ..e.clone()
                };
                unchanged(o, &same_size) && *stamp == sqlite::stamp(&w.abs, &w.meta)
            }
            (None, true) => {
                unchanged(o, e)
                    && (!sqlite::could_be_database(o.size)
                        || !sqlite::companion(&w.abs, "-wal").exists())
            }
            (Some(_), false) => false,
            (None, false) => unchanged(o, e),
        }
    }

    /// Keeps the previous snapshot's entry `o` as it is: nothing is read.
    fn carry_over(&mut self, o: Entry, inode: (u64, u64)) -> Result<()> {
        if o.leader {
            self.leaders.insert(inode, o.path.clone());
        }
        if o.kind == Kind::File {
            self.progress.add_done(o.size);
        }
        if o.sqlite.is_some() {
            self.found(&o.path, sqlite::How::Consistent);
            self.copied_dbs.insert(o.path.clone());
        }
        if let Some(map) = &o.pages {
            self.keep_pages(map)?;
        }
        self.push(o, None)
    }

    /// Reads a regular file into the current layer (a SQLite database through a copy made
    /// by SQLite, a large one by its units instead); returns its frame, None for a file
    /// stored by its units.
    fn regular_file(
        &mut self,
        e: &mut Entry,
        w: &Walked,
        old_pages: Option<&Digest>,
    ) -> Result<Option<FrameRef>> {
        self.progress
            .check(|| format!("reading {}", w.abs.display()))?;
        let f = open_noatime(&w.abs).ctx(|| format!("opening {}", w.abs.display()))?;
        let copy = self.database_copy(e, w, &f)?;
        self.stats.files_read += 1;
        if let Some(c) = copy.as_ref().filter(|_| e.size >= pages::MIN_SIZE) {
            self.store_pages(e, c.path(), old_pages)?;
            self.stats.bytes_read += e.size;
            return Ok(None);
        }
        let (at, changed) = match &copy {
            Some(c) => {
                let f = File::open(c.path())
                    .ctx(|| format!("reading the copy of {}", w.abs.display()))?;
                self.layers.file(e, &w.abs, f, self.progress)?
            }
            None => self.layers.file(e, &w.abs, f, self.progress)?,
        };
        e.layer = Some(at.ordinal);
        self.stats.bytes_read += e.size;
        if changed {
            self.stats.changed_during_read += 1;
        }
        Ok(Some(at))
    }
}

/// The index entry of what the walk found, as it is on disk now (not yet compared with
/// the previous snapshot, no xattrs or link target read yet). None for a socket.
fn entry_of(m: &std::fs::Metadata, path: Vec<u8>) -> Option<Entry> {
    let ft = m.file_type();
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_file() {
        Kind::File
    } else if ft.is_symlink() {
        Kind::Symlink
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_char_device() {
        Kind::CharDev
    } else if ft.is_block_device() {
        Kind::BlockDev
    } else {
        return None;
    };
    Some(Entry {
        path,
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime: (m.mtime(), m.mtime_nsec() as u32),
        size: if kind == Kind::File { m.size() } else { 0 },
        layer: None,
        link: Vec::new(),
        rdev: if matches!(kind, Kind::CharDev | Kind::BlockDev) {
            m.rdev()
        } else {
            0
        },
        xattrs: Vec::new(),
        leader: false,
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec() as u32),
        frame: None,
        sqlite: None,
        pages: None,
    })
}

/// Nothing about the file changed since the previous snapshot's entry `o` (of the same
/// kind): its metadata, size, times and inode are the same.
fn unchanged(o: &Entry, e: &Entry) -> bool {
    o.mode == e.mode
        && o.uid == e.uid
        && o.gid == e.gid
        && (o.kind == Kind::HardLink || o.size == e.size)
        && o.mtime == e.mtime
        && o.ctime == e.ctime
        && o.ino == e.ino
        && o.rdev == e.rdev
}

/// Extended attributes worth keeping. overlayfs' own `trusted.overlay.*` describe the
/// host's storage, not the data, and would be wrong anywhere else.
fn read_xattrs(path: &Path) -> Vec<(String, Vec<u8>)> {
    let Ok(names) = xattr::list(path) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for name in names {
        let Some(n) = name.to_str() else { continue };
        if n.starts_with("trusted.overlay.") {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(path, &name) {
            out.push((n.to_string(), v));
        }
    }
    out.sort();
    out
}

struct FinishedPart {
    ordinal: u32,
    /// The compressed layer, staged for upload.
    staged: StagedBlob,
    diff_id: Digest,
    content: u64,
}

/// Counts and hashes what passes through.
pub struct HashCount<W> {
    pub inner: W,
    pub hasher: Sha256,
    pub count: u64,
}

impl<W> HashCount<W> {
    pub fn new(inner: W) -> Self {
        HashCount {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }
}

impl<W: Write> Write for HashCount<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// What a layer part's tar is written into: hashed (its diff_id), compressed, then a
/// blob of its own.
type TarOut = BufWriter<HashCount<Compressor<BlobWriter>>>;

struct Part {
    ordinal: u32,
    tar: tar::Builder<TarOut>,
    content: u64,
    /// The frames compressed so far, in order.
    closed: Vec<ClosedFrame>,
}

impl Part {
    /// The current frame's number and how many uncompressed bytes it holds, counting
    /// what tar's buffer holds: all of that goes into the current frame, since a frame
    /// ends only after a flush. (Flushing here, once per entry, cost 9% of a freeze.)
    fn frame_position(&self) -> (usize, u64) {
        let buffered = self.tar.get_ref();
        let c = &buffered.get_ref().inner;
        (
            c.frame_no(),
            c.frame_plain() + buffered.buffer().len() as u64,
        )
    }

    /// Uncompressed bytes in the current frame, tar's buffer included.
    fn frame_plain(&self) -> u64 {
        self.frame_position().1
    }

    /// Ends the current frame; it is closed once compressed ([`Part::poll`]).
    fn end_frame(&mut self) -> Result<()> {
        let buffered = self.tar.get_mut();
        buffered.flush().ctx(|| "writing a layer".into())?;
        buffered
            .get_mut()
            .inner
            .end_frame()
            .ctx(|| "ending a zstd frame".into())
    }

    /// Collects the frames compressed since the last call; with `wait`, waits for one.
    fn poll(&mut self, wait: bool) {
        let closed = self.tar.get_mut().get_mut().inner.closed(wait);
        self.closed.extend(closed);
    }
}

/// Where a file written into a layer is, before its frame is closed: the layer ordinal,
/// the frame's number in it, and where its entry starts in the frame.
#[derive(Debug, Clone, Copy)]
struct FrameRef {
    ordinal: u32,
    frame: usize,
    skip: u64,
}

struct LayerSink<'r> {
    repo: &'r Repository,
    current: Option<Part>,
    next_ordinal: u32,
    tx: mpsc::SyncSender<FinishedPart>,
    /// The frames of finished parts, until the entries in them are in the index.
    done_frames: std::collections::HashMap<u32, Vec<ClosedFrame>>,
}

impl LayerSink<'_> {
    fn part(&mut self) -> Result<&mut Part> {
        if self.current.is_none() {
            let compressed = self.repo.blob_writer()?;
            let enc = Compressor::new(compressed, 3).ctx(|| "starting zstd".into())?;
            let plain = HashCount {
                inner: enc,
                hasher: Sha256::new(),
                count: 0,
            };
            let mut tar = tar::Builder::new(BufWriter::with_capacity(1 << 20, plain));
            tar.mode(tar::HeaderMode::Complete);
            self.current = Some(Part {
                ordinal: self.next_ordinal,
                tar,
                content: 0,
                closed: Vec::new(),
            });
            self.next_ordinal += 1;
        }
        Ok(self.current.as_mut().expect("just set"))
    }

    /// Starts a new part once the current one is big enough. Called between entries only,
    /// so a file never spans two layers.
    fn maybe_cut(&mut self) -> Result<()> {
        let full = self
            .current
            .as_ref()
            .is_some_and(|p| p.tar.get_ref().get_ref().count >= PART_BYTES);
        if full {
            return self.finish_part();
        }
        match &mut self.current {
            Some(p) => match p.frame_plain() >= FRAME_BYTES {
                true => p.end_frame(),
                false => Ok(()),
            },
            None => Ok(()),
        }
    }

    /// Ends the current frame (so the entries in it can be indexed).
    fn end_frame(&mut self) -> Result<()> {
        match &mut self.current {
            Some(p) => p.end_frame(),
            None => Ok(()),
        }
    }

    /// The frame a file went into, once it is closed; with `wait`, waits until it is
    /// (the frame must have been ended).
    fn closed(&mut self, r: FrameRef, wait: bool) -> Option<&ClosedFrame> {
        if let Some(p) = self.current.as_mut().filter(|p| p.ordinal == r.ordinal) {
            p.poll(false);
            while wait && p.closed.len() <= r.frame {
                let before = p.closed.len();
                p.poll(true);
                if p.closed.len() == before {
                    break; // the compressing thread stopped; its error comes at finish
                }
            }
            return p.closed.get(r.frame);
        }
        self.done_frames.get(&r.ordinal)?.get(r.frame)
    }

    fn finish_part(&mut self) -> Result<()> {
        let Some(mut part) = self.current.take() else {
            return Ok(());
        };
        let plain = part
            .tar
            .into_inner()
            .ctx(|| "finishing a layer".into())?
            .into_inner()
            .map_err(|e| Error::io("finishing a layer", e.into_error()))?;
        let diff_id = Digest::from_hasher(plain.hasher);
        let (compressed, rest) = plain.inner.finish().ctx(|| "finishing zstd".into())?;
        part.closed.extend(rest);
        self.done_frames.insert(part.ordinal, part.closed);
        let finished = FinishedPart {
            ordinal: part.ordinal,
            staged: compressed.stage()?,
            diff_id,
            content: part.content,
        };
        self.tx
            .send(finished)
            .map_err(|_| Error::other("the upload thread stopped"))
    }

    fn header(&mut self, e: &Entry, kind: tar::EntryType, link: &[u8]) -> Result<()> {
        let mut h = header_for(e, kind);
        let part = self.part()?;
        write_xattrs(&mut part.tar, &e.xattrs)?;
        let path = tar_path(&e.path, kind == tar::EntryType::Directory);
        if kind == tar::EntryType::Symlink || kind == tar::EntryType::Link {
            let target = std::path::Path::new(OsStr::from_bytes(link));
            part.tar.append_link(&mut h, &path, target)
        } else {
            part.tar.append_data(&mut h, &path, std::io::empty())
        }
        .ctx(|| format!("adding {} to a layer", e.display_path()))
    }

    fn whiteout(&mut self, path: &[u8]) -> Result<()> {
        // `.wh.NAME` beside the entry it removes (SPEC.md §5.1).
        let parent = super::index::parent(path);
        let name = super::index::file_name(path);
        let mut wh = Vec::new();
        if parent != b"." {
            wh.extend_from_slice(parent);
            wh.push(b'/');
        }
        wh.extend_from_slice(b".wh.");
        wh.extend_from_slice(name);
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(0);
        let part = self.part()?;
        part.tar
            .append_data(&mut h, tar_path(&wh, false), std::io::empty())
            .ctx(|| {
                format!(
                    "adding a whiteout for {} to a layer",
                    String::from_utf8_lossy(path)
                )
            })
    }

    /// Appends a regular file read from `f` (the file at `abs`, or the copy made of it),
    /// reading exactly the size the entry says. Returns where it went and whether the
    /// file changed while it was read.
    fn file(
        &mut self,
        e: &Entry,
        abs: &Path,
        f: File,
        progress: &Progress,
    ) -> Result<(FrameRef, bool)> {
        // Fewer blocks than bytes: holes, which are skipped instead of read.
        let sparse = f
            .metadata()
            .is_ok_and(|m| m.blocks().saturating_mul(512) < m.len());
        let mut h = header_for(e, tar::EntryType::Regular);
        let part = self.part()?;
        let own_frame = e.size >= OWN_FRAME;
        if own_frame {
            part.end_frame()?;
        }
        let (frame, skip) = part.frame_position();
        let at = FrameRef {
            ordinal: part.ordinal,
            frame,
            skip,
        };
        write_xattrs(&mut part.tar, &e.xattrs)?;
        let mut reader = ExactReader {
            inner: f,
            left: e.size,
            short: false,
            progress,
            sparse,
            pos: 0,
            data_end: 0,
        };
        part.tar
            .append_data(&mut h, tar_path(&e.path, false), &mut reader)
            .ctx(|| format!("reading {}", abs.display()))?;
        part.content += e.size;
        let mut probe = [0u8; 1];
        let grew = reader
            .inner
            .read(&mut probe)
            .map(|n| n > 0)
            .unwrap_or(false);
        let changed = reader.short || grew;
        if own_frame {
            part.end_frame()?;
        }
        Ok((at, changed))
    }
}

fn open_noatime(path: &Path) -> std::io::Result<File> {
    // O_NOATIME keeps a backup from touching every file's atime; only the owner or root
    // may use it, so fall back to a plain open.
    match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOATIME)
        .open(path)
    {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => File::open(path),
        r => r,
    }
}

/// Yields exactly `left` bytes: a file that shrank while being read is padded with zeros
/// (and flagged), one that grew is cut, so the tar entry always matches its header.
/// The holes of a sparse file are yielded as zeros without being read (a 10 GiB sparse
/// disk image is mostly holes: reading them is most of its cost).
struct ExactReader<'a> {
    inner: File,
    left: u64,
    short: bool,
    progress: &'a Progress,
    /// Whether to look for holes (the file has fewer blocks than bytes).
    sparse: bool,
    /// Bytes yielded so far: the file offset.
    pos: u64,
    /// Where the data segment that `pos` is in ends (a hole or the end of the file).
    data_end: u64,
}

impl ExactReader<'_> {
    /// Before reading at `pos` in a sparse file: how many zeros of a hole come first (0
    /// when `pos` is in data, whose end is then known).
    fn hole_ahead(&mut self, want: usize) -> std::io::Result<usize> {
        if self.pos < self.data_end {
            return Ok(0);
        }
        let data = match crate::sys::seek_data(&self.inner, self.pos) {
            Ok(d) => d,
            Err(_) => {
                // No SEEK_DATA here: read everything.
                self.sparse = false;
                self.inner.seek(SeekFrom::Start(self.pos))?;
                return Ok(0);
            }
        };
        let zeros = match data {
            Some(d) if d > self.pos => (d - self.pos).min(want as u64) as usize,
            Some(_) => {
                let hole = crate::sys::seek_hole(&self.inner, self.pos)?;
                self.data_end = hole.unwrap_or(u64::MAX);
                0
            }
            // Only a hole up to the end: zeros, unless the file shrank below `pos`.
            None => {
                let size = self.inner.metadata()?.len();
                if size <= self.pos {
                    self.short = true;
                }
                (size.saturating_sub(self.pos)).min(want as u64) as usize
            }
        };
        self.inner.seek(SeekFrom::Start(self.pos))?;
        Ok(zeros)
    }
}

impl Read for ExactReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let mut want = buf.len().min(self.left.min(usize::MAX as u64) as usize);
        if self.sparse && !self.short {
            let zeros = self.hole_ahead(want)?;
            if zeros > 0 {
                buf[..zeros].fill(0);
                self.pos += zeros as u64;
                self.left -= zeros as u64;
                self.progress.add_done(zeros as u64);
                return Ok(zeros);
            }
            if self.sparse {
                want = want.min(self.data_end.saturating_sub(self.pos).max(1) as usize);
            }
        }
        let mut n = if self.short {
            0
        } else {
            self.inner.read(&mut buf[..want])?
        };
        if n == 0 {
            self.short = true;
            buf[..want].fill(0);
            n = want;
        }
        self.pos += n as u64;
        self.left -= n as u64;
        self.progress.add_done(n as u64);
        Ok(n)
    }
}

fn header_for(e: &Entry, kind: tar::EntryType) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(e.mode);
    h.set_uid(u64::from(e.uid));
    h.set_gid(u64::from(e.gid));
    h.set_mtime(e.mtime.0.max(0) as u64);
    h.set_size(if kind == tar::EntryType::Regular {
        e.size
    } else {
        0
    });
    if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
        let _ = h.set_device_major(libc::major(e.rdev as libc::dev_t));
        let _ = h.set_device_minor(libc::minor(e.rdev as libc::dev_t));
    }
    h
}

fn tar_path(path: &[u8], dir: bool) -> PathBuf {
    let mut p = path.to_vec();
    if dir {
        p.push(b'/');
    }
    PathBuf::from(OsString::from_vec(p))
}

/// Writes a PAX extended header carrying xattrs (`SCHILY.xattr.NAME`, as GNU tar does)
/// in front of the next entry, so stock tools can restore them too.
fn write_xattrs<W: Write>(tar: &mut tar::Builder<W>, xattrs: &[(String, Vec<u8>)]) -> Result<()> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let mut data = Vec::new();
    for (name, value) in xattrs {
        let mut rec = Vec::new();
        rec.extend_from_slice(b" SCHILY.xattr.");
        rec.extend_from_slice(name.as_bytes());
        rec.push(b'=');
        rec.extend_from_slice(value);
        rec.push(b'\n');
        // The length prefix counts itself.
        let mut len = rec.len() + 1;
        while len.to_string().len() + rec.len() != len {
            len = len.to_string().len() + rec.len();
        }
        data.extend_from_slice(len.to_string().as_bytes());
        data.extend_from_slice(&rec);
    }
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(tar::EntryType::XHeader);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_path("PaxHeader").ctx(|| "writing xattrs".into())?;
    h.set_cksum();
    tar.append(&h, &data[..]).ctx(|| "writing xattrs".into())
}
