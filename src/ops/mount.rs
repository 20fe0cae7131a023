//! `freezer mount`: a read-only FUSE view of a repository.
//!
//! ```text
//! MOUNTPOINT/SITE/SNAPSHOT/TREE/…     the tree as frozen, with its exact metadata
//! MOUNTPOINT/SITE/latest -> SNAPSHOT
//! ```
//!
//! Directories come from the records and the tree indexes alone: a snapshot's indexes are
//! read when it is first looked into, and nothing else until a file is read. A file is
//! fetched whole on its first read (one frame of its layer where the index says where,
//! [`crate::tree::frames`]; else a one-file thaw), checked, and kept in a cache of
//! bounded size on local disk, from which reads are served; the least recently read
//! files leave it first.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen, ReplyXattr, Request,
};

use crate::error::{Error, Result};
use crate::format::Part;
use crate::progress::{Cancel, Progress};
use crate::repo::{Repository, SnapshotRef};
use crate::tree::index::{Entry, Kind};
use crate::tree::thaw::TreePlan;

/// Attributes and entries do not change while mounted; the kernel may keep them.
const TTL: Duration = Duration::from_secs(3600);

pub struct MountOptions {
    /// Bytes of file content kept on local disk.
    pub cache_bytes: u64,
}

/// Mounts the repository at `mountpoint` and serves it until `cancel` is set (a signal)
/// or the file system is unmounted from outside; unmounts before returning.
pub fn mount(
    repo: Repository,
    mountpoint: &Path,
    opts: MountOptions,
    cancel: &Cancel,
    on_ready: impl FnOnce(usize),
) -> Result<()> {
    let refs = repo.list_snapshots(None)?;
    let fs = View::new(repo, &refs, opts.cache_bytes)?;
    let sites = fs.state.lock().unwrap().nodes[0]
        .children
        .as_ref()
        .map_or(0, Vec::len);
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::RO,
        fuser::MountOption::NoDev,
        fuser::MountOption::NoSuid,
        fuser::MountOption::DefaultPermissions,
        fuser::MountOption::FSName("freezer".into()),
        fuser::MountOption::Subtype("freezer".into()),
    ];
    let session = fuser::spawn_mount(fs, mountpoint, &config).map_err(|e| {
        Error::io(format!("mounting {}", mountpoint.display()), e).with_hint(
            "the mount point must be an existing empty directory, /dev/fuse must exist, and mounting needs root or fusermount3 (Debian: fuse3)",
        )
    })?;
    on_ready(sites);
    while !cancel.is_cancelled() && !session.guard.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    session
        .umount_and_join()
        .map_err(|e| Error::io(format!("unmounting {}", mountpoint.display()), e))
}

/// One node of the view: the root, a site, a snapshot, `latest`, or an entry of a tree.
struct Node {
    parent: u64,
    what: What,
    /// Directories: their entries, once known.
    children: Option<Vec<(OsString, u64)>>,
}

// Nearly every node is an entry of a tree: boxing the large variant would only add an
// allocation per entry.
#[allow(clippy::large_enum_variant)]
enum What {
    Root,
    Site,
    Snapshot(SnapshotRef),
    Latest(OsString),
    /// An entry of a tree (`tree_no` numbers the trees loaded); `names` is how many
    /// names (hard links) it has.
    Entry {
        tree: Arc<TreePlan>,
        tree_no: usize,
        entry: Entry,
        names: u32,
    },
}

struct State {
    /// Inode N is `nodes[N - 1]`.
    nodes: Vec<Node>,
    cache: Cache,
    /// The files of each frame, by (tree, layer, frame offset): one read of a frame
    /// fills the cache with all of them (a directory of small files costs a read per
    /// frame, not one per file).
    frames: HashMap<(usize, u32, u64), Vec<u64>>,
    /// Trees loaded so far (numbers the trees in `frames`).
    trees: usize,
}

struct View {
    repo: Repository,
    state: Mutex<State>,
    /// Owner and time of the directories freezer makes up (root, sites, snapshots).
    uid: u32,
    gid: u32,
    mounted: SystemTime,
}

impl View {
    fn new(repo: Repository, refs: &[SnapshotRef], cache_bytes: u64) -> Result<View> {
        let mut nodes = vec![Node {
            parent: 1,
            what: What::Root,
            children: Some(Vec::new()),
        }];
        let mut by_site: Vec<(&str, Vec<&SnapshotRef>)> = Vec::new();
        for r in refs {
            match by_site.last_mut() {
                Some((s, list)) if *s == r.site => list.push(r),
                _ => by_site.push((&r.site, vec![r])),
            }
        }
        for (site, list) in by_site {
            let site_ino = nodes.len() as u64 + 1;
            nodes.push(Node {
                parent: 1,
                what: What::Site,
                children: Some(Vec::new()),
            });
            nodes[0]
                .children
                .as_mut()
                .expect("root")
                .push((site.into(), site_ino));
            let mut children = Vec::new();
            for r in &list {
                nodes.push(Node {
                    parent: site_ino,
                    what: What::Snapshot((*r).clone()),
                    children: None,
                });
                children.push((OsString::from(&r.id), nodes.len() as u64));
            }
            let owned: Vec<SnapshotRef> = list.iter().map(|r| (*r).clone()).collect();
            let last = repo.latest(&owned)?;
            nodes.push(Node {
                parent: site_ino,
                what: What::Latest(OsString::from(&last.id)),
                children: None,
            });
            children.push(("latest".into(), nodes.len() as u64));
            nodes[site_ino as usize - 1].children = Some(children);
        }
        let dir = crate::sys::temp_dir("the mount's cache directory")?;
        Ok(View {
            repo,
            state: Mutex::new(State {
                nodes,
                cache: Cache {
                    dir,
                    limit: cache_bytes,
                    blobs: HashMap::new(),
                    files: HashMap::new(),
                    used: 0,
                    clock: 0,
                },
                frames: HashMap::new(),
                trees: 0,
            }),
            uid: process_uid(),
            gid: process_gid(),
            mounted: SystemTime::now(),
        })
    }

    fn attr(&self, state: &State, ino: u64) -> Option<FileAttr> {
        let node = state.nodes.get(ino as usize - 1)?;
        let dir = |nlink: u32| FileAttr {
            ino: INodeNo(ino),
            size: 0,
            blocks: 0,
            atime: self.mounted,
            mtime: self.mounted,
            ctime: self.mounted,
            crtime: self.mounted,
            kind: FileType::Directory,
            perm: 0o555,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        };
        Some(match &node.what {
            What::Root | What::Site | What::Snapshot(_) => dir(2),
            What::Latest(target) => FileAttr {
                kind: FileType::Symlink,
                perm: 0o777,
                size: target.len() as u64,
                nlink: 1,
                ..dir(1)
            },
            What::Entry {
                entry: e, names, ..
            } => {
                let t = UNIX_EPOCH
                    .checked_add(Duration::new(e.mtime.0.max(0) as u64, e.mtime.1))
                    .unwrap_or(UNIX_EPOCH);
                let (kind, size) = match e.kind {
                    Kind::Dir => (FileType::Directory, 0),
                    Kind::File | Kind::HardLink => (FileType::RegularFile, e.size),
                    Kind::Symlink => (FileType::Symlink, e.link.len() as u64),
                    Kind::Fifo => (FileType::NamedPipe, 0),
                    Kind::CharDev => (FileType::CharDevice, 0),
                    Kind::BlockDev => (FileType::BlockDevice, 0),
                };
                FileAttr {
                    ino: INodeNo(ino),
                    size,
                    blocks: size.div_ceil(512),
                    atime: t,
                    mtime: t,
                    ctime: t,
                    crtime: t,
                    kind,
                    perm: (e.mode & 0o7777) as u16,
                    nlink: if e.kind == Kind::Dir { 2 } else { *names },
                    uid: e.uid,
                    gid: e.gid,
                    rdev: e.rdev as u32,
                    blksize: 4096,
                    flags: 0,
                }
            }
        })
    }

    /// The entries of a directory node, loading a snapshot's trees on first use.
    fn children(&self, state: &mut State, ino: u64) -> Result<Vec<(OsString, u64)>> {
        let node = state
            .nodes
            .get(ino as usize - 1)
            .ok_or_else(|| Error::not_found(format!("inode {ino}")))?;
        if let Some(c) = &node.children {
            return Ok(c.clone());
        }
        let What::Snapshot(r) = &node.what else {
            return Ok(Vec::new());
        };
        let r = r.clone();
        self.load_snapshot(state, ino, &r)?;
        Ok(state.nodes[ino as usize - 1]
            .children
            .clone()
            .unwrap_or_default())
    }

    /// Reads a snapshot's record and tree indexes into nodes under `ino`.
    fn load_snapshot(&self, state: &mut State, ino: u64, r: &SnapshotRef) -> Result<()> {
        let snap = self.repo.read_snapshot(r)?;
        let mut trees = Vec::new();
        for part in snap.parts() {
            let Part::Tree { name, image, .. } = part else {
                continue;
            };
            let plan = Arc::new(TreePlan::load(&self.repo, &image.digest)?);
            let tree_ino = self.load_tree(state, ino, plan)?;
            trees.push((OsString::from(name), tree_ino));
        }
        state.nodes[ino as usize - 1].children = Some(trees);
        Ok(())
    }

    /// Adds a tree's entries as nodes; returns the inode of its root.
    fn load_tree(&self, state: &mut State, parent: u64, plan: Arc<TreePlan>) -> Result<u64> {
        state.trees += 1;
        let tree_no = state.trees;
        let nodes = &mut state.nodes;
        let frames = &mut state.frames;
        let mut by_path: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut entries = plan.entries()?;
        let mut root = None;
        while let Some(e) = entries.next_entry()? {
            if e.path == b"." {
                nodes.push(Node {
                    parent,
                    what: What::Entry {
                        tree: plan.clone(),
                        tree_no,
                        entry: e,
                        names: 2,
                    },
                    children: Some(Vec::new()),
                });
                let ino = nodes.len() as u64;
                by_path.insert(b".".to_vec(), ino);
                root = Some(ino);
                continue;
            }
            let parent_path = crate::tree::index::parent(&e.path).to_vec();
            let name = OsStr::from_bytes(crate::tree::index::file_name(&e.path)).to_os_string();
            let dir_ino = *by_path.get(&parent_path).ok_or_else(|| {
                Error::integrity(format!(
                    "tree index: {} comes before its directory",
                    e.display_path()
                ))
            })?;
            let ino = if e.kind == Kind::HardLink {
                // Another name for the file it names: the same inode.
                let target = *by_path.get(&e.link).ok_or_else(|| {
                    Error::integrity(format!(
                        "tree index: hard link {} names {}, which comes later",
                        e.display_path(),
                        String::from_utf8_lossy(&e.link)
                    ))
                })?;
                if let What::Entry { names, .. } = &mut nodes[target as usize - 1].what {
                    *names += 1;
                }
                target
            } else {
                let dir = e.kind == Kind::Dir;
                let path = e.path.clone();
                let frame = match (&e.frame, e.layer) {
                    (Some(f), Some(l)) => Some((tree_no, l, f.offset)),
                    _ => None,
                };
                nodes.push(Node {
                    parent: dir_ino,
                    what: What::Entry {
                        tree: plan.clone(),
                        tree_no,
                        entry: e,
                        names: 1,
                    },
                    children: dir.then(Vec::new),
                });
                let ino = nodes.len() as u64;
                by_path.insert(path, ino);
                if let Some(key) = frame {
                    frames.entry(key).or_default().push(ino);
                }
                ino
            };
            if let Some(c) = nodes[dir_ino as usize - 1].children.as_mut() {
                c.push((name, ino));
            }
        }
        root.ok_or_else(|| Error::integrity("tree index has no root entry"))
    }

    /// Where a file's content is in the cache, fetched on first use: (cached blob, the
    /// offset of the content in it, its size).
    fn content(&self, ino: u64) -> Result<(Arc<std::fs::File>, u64, u64)> {
        let mut state = self.state.lock().unwrap();
        state.cache.clock += 1;
        if let Some(hit) = state.cache.get(ino) {
            return Ok(hit);
        }
        let (tree, tree_no, entry) = match &state.nodes.get(ino as usize - 1).map(|n| &n.what) {
            Some(What::Entry {
                tree,
                tree_no,
                entry,
                ..
            }) if entry.kind == Kind::File => (tree.clone(), *tree_no, entry.clone()),
            _ => return Err(Error::not_found(format!("inode {ino} is not a file"))),
        };
        if let (Some(f), Some(l)) = (&entry.frame, entry.layer) {
            // The whole frame, once, for every file in it.
            let key = Blob::Frame(tree_no, l, f.offset);
            let mut file = state.cache.new_file()?;
            let listed = crate::tree::frames::unpack_frame(
                &self.repo,
                &tree.manifest,
                l,
                f,
                &entry.display_path(),
                &mut file,
            )?;
            if let Some(listed) = listed {
                let inos = state
                    .frames
                    .get(&(tree_no, l, f.offset))
                    .cloned()
                    .unwrap_or_default();
                let by_path: HashMap<&[u8], (u64, u64)> = inos
                    .iter()
                    .filter_map(
                        |i| match state.nodes.get(*i as usize - 1).map(|n| &n.what) {
                            Some(What::Entry { entry: e, .. }) => {
                                Some((e.path.as_slice(), (*i, e.size)))
                            }
                            _ => None,
                        },
                    )
                    .collect();
                let mut placed = Vec::new();
                for (path, pos, size) in listed {
                    if let Some(&(i, want)) = by_path.get(path.as_slice()) {
                        if size != want {
                            return Err(Error::integrity(format!(
                                "{} has {size} bytes in its frame, its index says {want}",
                                String::from_utf8_lossy(&path)
                            )));
                        }
                        placed.push((i, pos, size));
                    }
                }
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                state.cache.insert(key, Arc::new(file), len, placed);
                return state.cache.get(ino).ok_or_else(|| {
                    Error::integrity(format!(
                        "{} is not in the frame its index names",
                        entry.display_path()
                    ))
                });
            }
        }
        // No frame to read alone (an older snapshot, an encrypted repository).
        let mut file = state.cache.new_file()?;
        super::write_file(&self.repo, &tree, &entry, &mut file, &Progress::default())?;
        state.cache.insert(
            Blob::File(ino),
            Arc::new(file),
            entry.size,
            vec![(ino, 0, entry.size)],
        );
        state
            .cache
            .get(ino)
            .ok_or_else(|| Error::other("the mount's cache lost a file"))
    }
}

/// What the cache holds: decompressed frames, and files fetched alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Blob {
    /// (tree, layer, frame offset)
    Frame(usize, u32, u64),
    File(u64),
}

/// Cached blobs (unlinked files on local disk), up to `limit` bytes and [`MAX_BLOBS`]
/// open files; the least recently read leave first.
struct Cache {
    dir: tempfile::TempDir,
    limit: u64,
    blobs: HashMap<Blob, Cached>,
    /// Each file read so far: its blob, and where its content is in it.
    files: HashMap<u64, (Blob, u64, u64)>,
    used: u64,
    clock: u64,
}

struct Cached {
    file: Arc<std::fs::File>,
    size: u64,
    used: u64,
}

/// Open files the cache may hold.
const MAX_BLOBS: usize = 256;

impl Cache {
    fn get(&mut self, ino: u64) -> Option<(Arc<std::fs::File>, u64, u64)> {
        let (blob, pos, size) = *self.files.get(&ino)?;
        let clock = self.clock;
        let c = self.blobs.get_mut(&blob)?;
        c.used = clock;
        Some((c.file.clone(), pos, size))
    }

    /// A new file in the cache directory, unlinked at once (its handle keeps it while it
    /// is read, and nothing is left behind however the mount ends).
    fn new_file(&self) -> Result<std::fs::File> {
        tempfile::tempfile_in(self.dir.path()).map_err(|e| {
            Error::io(
                format!("creating a file in {}", self.dir.path().display()),
                e,
            )
        })
    }

    fn insert(
        &mut self,
        blob: Blob,
        file: Arc<std::fs::File>,
        size: u64,
        files: Vec<(u64, u64, u64)>,
    ) {
        while !self.blobs.is_empty()
            && (self.used + size > self.limit || self.blobs.len() >= MAX_BLOBS)
        {
            let Some((&old, _)) = self.blobs.iter().min_by_key(|(_, c)| c.used) else {
                break;
            };
            if let Some(c) = self.blobs.remove(&old) {
                self.used -= c.size;
            }
            self.files.retain(|_, (b, _, _)| *b != old);
        }
        self.used += size;
        self.blobs.insert(
            blob,
            Cached {
                file,
                size,
                used: self.clock,
            },
        );
        for (ino, pos, len) in files {
            self.files.insert(ino, (blob, pos, len));
        }
    }
}

fn errno(e: &Error) -> Errno {
    match e.kind {
        crate::error::ErrorKind::NotFound => Errno::ENOENT,
        _ => Errno::EIO,
    }
}

impl Filesystem for View {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.state.lock().unwrap();
        let found = match self.children(&mut state, parent.0) {
            Ok(c) => c.into_iter().find(|(n, _)| n == name).map(|(_, i)| i),
            Err(e) => {
                eprintln!("freezer: mount: {e}");
                return reply.error(errno(&e));
            }
        };
        match found.and_then(|ino| self.attr(&state, ino)) {
            Some(a) => reply.entry(&TTL, &a, Generation(0)),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let state = self.state.lock().unwrap();
        match self.attr(&state, ino.0) {
            Some(a) => reply.attr(&TTL, &a),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let state = self.state.lock().unwrap();
        match state.nodes.get(ino.0 as usize - 1).map(|n| &n.what) {
            Some(What::Latest(target)) => reply.data(target.as_bytes()),
            Some(What::Entry { entry, .. }) if entry.kind == Kind::Symlink => {
                reply.data(&entry.link)
            }
            _ => reply.error(Errno::EINVAL),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if flags.0 & (libc::O_WRONLY | libc::O_RDWR) != 0 {
            return reply.error(Errno::EROFS);
        }
        let state = self.state.lock().unwrap();
        match state.nodes.get(ino.0 as usize - 1).map(|n| &n.what) {
            Some(What::Entry { entry, .. }) if entry.kind == Kind::File => {
                reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE)
            }
            _ => reply.error(Errno::EACCES),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let (file, start, len) = match self.content(ino.0) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("freezer: mount: {e}");
                return reply.error(errno(&e));
            }
        };
        let want = (size as u64).min(len.saturating_sub(offset));
        let mut buf = vec![0u8; want as usize];
        let mut n = 0;
        while n < buf.len() {
            match file.read_at(&mut buf[n..], start + offset + n as u64) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(_) => return reply.error(Errno::EIO),
            }
        }
        reply.data(&buf[..n]);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let mut state = self.state.lock().unwrap();
        let children = match self.children(&mut state, ino.0) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("freezer: mount: {e}");
                return reply.error(errno(&e));
            }
        };
        let parent = state.nodes.get(ino.0 as usize - 1).map_or(1, |n| n.parent);
        let kind_of = |i: u64| {
            self.attr(&state, i)
                .map_or(FileType::RegularFile, |a| a.kind)
        };
        let all = [(OsString::from("."), ino.0), (OsString::from(".."), parent)]
            .into_iter()
            .chain(children);
        for (i, (name, child)) in all.enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind_of(child), &name) {
                break;
            }
        }
        reply.ok();
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let state = self.state.lock().unwrap();
        let value = match state.nodes.get(ino.0 as usize - 1).map(|n| &n.what) {
            Some(What::Entry { entry, .. }) => entry
                .xattrs
                .iter()
                .find(|(n, _)| n.as_bytes() == name.as_bytes())
                .map(|(_, v)| v.clone()),
            _ => None,
        };
        match value {
            None => reply.error(Errno::NO_XATTR),
            Some(v) => xattr_reply(reply, &v, size),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let state = self.state.lock().unwrap();
        let mut list = Vec::new();
        if let Some(What::Entry { entry, .. }) =
            state.nodes.get(ino.0 as usize - 1).map(|n| &n.what)
        {
            for (n, _) in &entry.xattrs {
                list.extend_from_slice(n.as_bytes());
                list.push(0);
            }
        }
        xattr_reply(reply, &list, size)
    }
}

fn xattr_reply(reply: ReplyXattr, value: &[u8], size: u32) {
    if size == 0 {
        reply.size(value.len() as u32)
    } else if (size as usize) < value.len() {
        reply.error(Errno::ERANGE)
    } else {
        reply.data(value)
    }
}

fn process_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::uid(&m))
}

fn process_gid() -> u32 {
    std::fs::metadata("/proc/self").map_or(0, |m| std::os::unix::fs::MetadataExt::gid(&m))
}

/// Where a mount point is: an existing empty directory.
/// A mount point whose FUSE server is gone (a `freezer mount` that was killed) answers
/// every access with ENOTCONN until it is unmounted. freezer's own is unmounted here
/// (lazily, so a shell still inside it does not keep it); another file system's is left
/// for its owner, with the command that would do it.
fn unmount_stale(p: &Path) -> Result<()> {
    let how = format!("fusermount3 -u {0}  (as root: umount -l {0})", p.display());
    let ours = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| {
        let at = p.display().to_string();
        m.lines().any(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            // Mounted by root the type is plain `fuse`; the source is freezer's name.
            f.len() > 2 && f[0] == "freezer" && f[1] == at && f[2].starts_with("fuse")
        })
    });
    if !ours {
        return Err(Error::usage(format!(
            "{} is a mount point whose file system no longer answers (Transport endpoint is not connected)",
            p.display()
        ))
        .with_hint(format!("unmount it, then mount again: {how}")));
    }
    let unmounted = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .arg(p)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if unmounted("fusermount3", &["-u", "-z"]) || unmounted("umount", &["-l"]) {
        return Ok(());
    }
    Err(Error::usage(format!(
        "{} is still mounted by a freezer mount that is gone, and unmounting it failed",
        p.display()
    ))
    .with_hint(format!("unmount it, then mount again: {how}")))
}

pub fn check_mountpoint(p: &Path) -> Result<PathBuf> {
    let meta = match std::fs::metadata(p) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            unmount_stale(p)?;
            std::fs::metadata(p)
        }
        other => other,
    };
    let meta = meta.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            Error::usage(format!("mount point {} does not exist", p.display()))
                .with_hint(format!("create it first: mkdir -p {}", p.display()))
        }
        _ => Error::io(format!("reading {}", p.display()), e),
    })?;
    if !meta.is_dir() {
        return Err(
            Error::usage(format!("mount point {} is not a directory", p.display()))
                .with_hint("mount on an empty directory"),
        );
    }
    let empty = std::fs::read_dir(p)
        .map_err(|e| Error::io(format!("reading {}", p.display()), e))?
        .next()
        .is_none();
    if !empty {
        return Err(Error::conflict(format!("{} is not empty", p.display()))
            .with_hint("mount on an empty directory"));
    }
    std::path::absolute(p).map_err(|e| Error::io(format!("resolving {}", p.display()), e))
}
