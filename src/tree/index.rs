//! The tree index: one line of JSON per file system entry, zstd-compressed.
//!
//! The index is what makes a tree snapshot exact and cheap:
//! - it records what tar cannot carry faithfully everywhere (nanosecond mtimes, xattrs,
//!   hard-link groups, non-UTF-8 names) and thaw restores metadata from it;
//! - it says which layer holds each file's bytes, so thaw writes every file once even
//!   when older layers hold superseded copies;
//! - it keeps the stat data (inode, ctime) that lets the next freeze skip unchanged files
//!   without reading them.
//!
//! Entries are in depth-first order with each directory's children sorted by name bytes
//! ([`cmp_paths`]), so two indexes (or an index and a walk) can be merged in one pass with
//! memory bounded by the tree's depth, not its size. See SPEC.md, "Tree index".

use std::cmp::Ordering;
use std::io::{BufRead, BufReader, Read, Write};

use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};

pub const INDEX_FORMAT: &str = "freezer-tree-index";
pub const INDEX_VERSION: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    Symlink,
    /// A further name for a file earlier in the index (`link` is that file's path).
    HardLink,
    Fifo,
    CharDev,
    BlockDev,
}

impl Kind {
    fn code(self) -> &'static str {
        match self {
            Kind::Dir => "d",
            Kind::File => "f",
            Kind::Symlink => "l",
            Kind::HardLink => "h",
            Kind::Fifo => "p",
            Kind::CharDev => "c",
            Kind::BlockDev => "b",
        }
    }
    fn from_code(c: &str) -> Option<Kind> {
        Some(match c {
            "d" => Kind::Dir,
            "f" => Kind::File,
            "l" => Kind::Symlink,
            "h" => Kind::HardLink,
            "p" => Kind::Fifo,
            "c" => Kind::CharDev,
            "b" => Kind::BlockDev,
            _ => return None,
        })
    }
}

/// One file system entry. `path` is relative to the tree root, `/`-separated raw bytes,
/// and `.` for the root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub path: Vec<u8>,
    pub kind: Kind,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, u32),
    /// Content size of regular files; 0 otherwise.
    pub size: u64,
    /// For regular files: the index of the layer (in the manifest) that holds the bytes.
    pub layer: Option<u32>,
    /// Symlink target, or the path of the file a hard link shares its inode with.
    pub link: Vec<u8>,
    pub rdev: u64,
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// A regular file other entries hard-link to.
    pub leader: bool,
    /// Stat data for change detection on the next freeze; not restored.
    pub ino: u64,
    pub ctime: (i64, u32),
    /// For regular files: the zstd frame of the layer that holds the file's tar entry,
    /// so one file can be read without the rest of its layer (SPEC.md §6).
    pub frame: Option<Frame>,
    /// For a SQLite database copied through SQLite ([`super::sqlite`]): the state of its
    /// files when it was copied, which change detection compares instead of the size
    /// (the copy's size is not the file's). Not restored.
    pub sqlite: Option<String>,
    /// For a regular file stored by its units outside the layers ([`super::pages`]): its
    /// page map. Such a file has no `layer` and no `frame`.
    pub pages: Option<crate::format::Digest>,
}

/// Where a file's tar entry is in its layer: the layer is a sequence of independent
/// zstd frames, and this one, decompressed, holds the entry (headers and data) from
/// `skip` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Byte offset and length of the frame in the (compressed) layer blob.
    pub offset: u64,
    pub len: u64,
    /// Where the entry's first header starts in the decompressed frame.
    pub skip: u64,
    /// SHA-256 of the frame's compressed bytes: what a ranged read checks.
    pub sha256: [u8; 32],
}

/// Totals written as the last line: a truncated index is detected even before its digest.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    pub entries: u64,
    pub files: u64,
    /// Sum of regular file sizes in the tree.
    pub bytes: u64,
    /// Per layer of the manifest: the file content bytes it holds (live or superseded).
    pub layer_content: Vec<u64>,
}

#[derive(Serialize, Deserialize)]
struct Header {
    format: String,
    version: u32,
}

/// The JSON shape of a line. Short keys: an index has one line per file.
#[derive(Serialize, Deserialize, Default)]
struct Line {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p: Option<String>,
    /// The path as hex, when it is not valid UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    px: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    t: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero32")]
    m: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    u: u32,
    #[serde(default, skip_serializing_if = "is_zero32")]
    g: u32,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    mt: i64,
    #[serde(default, skip_serializing_if = "is_zero32")]
    mn: u32,
    #[serde(default, skip_serializing_if = "is_zero64")]
    s: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    k: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kx: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero64")]
    rd: u64,
    /// xattrs as [name, hex value] pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    x: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "is_false")]
    hl: bool,
    /// The file's frame: [offset, length, skip] (see [`Frame`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    z: Option<[u64; 3]>,
    /// The frame's SHA-256, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    zd: Option<String>,
    #[serde(default, skip_serializing_if = "is_zero64")]
    ino: u64,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    ct: i64,
    #[serde(default, skip_serializing_if = "is_zero32")]
    cn: u32,
    /// A SQLite database's stamp (see [`Entry::sqlite`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sq: Option<String>,
    /// The page map of a file stored by its units (see [`Entry::pages`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pg: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    end: Option<Trailer>,
}

fn is_zero32(v: &u32) -> bool {
    *v == 0
}
fn is_zero64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
fn is_false(v: &bool) -> bool {
    !*v
}

fn encode_bytes(b: &[u8]) -> (Option<String>, Option<String>) {
    match std::str::from_utf8(b) {
        Ok(s) => (Some(s.to_string()), None),
        Err(_) => (None, Some(hex::encode(b))),
    }
}

fn decode_bytes(s: Option<String>, x: Option<String>) -> Result<Vec<u8>> {
    match (s, x) {
        (Some(s), None) => Ok(s.into_bytes()),
        (None, Some(x)) => {
            hex::decode(x).map_err(|e| Error::integrity(format!("tree index: bad hex: {e}")))
        }
        (None, None) => Ok(Vec::new()),
        _ => Err(Error::integrity("tree index: a field is given twice")),
    }
}

impl Entry {
    fn to_line(&self) -> Line {
        let (p, px) = encode_bytes(&self.path);
        let (k, kx) = if self.link.is_empty() {
            (None, None)
        } else {
            encode_bytes(&self.link)
        };
        Line {
            p,
            px,
            t: Some(self.kind.code().to_string()),
            m: self.mode,
            u: self.uid,
            g: self.gid,
            mt: self.mtime.0,
            mn: self.mtime.1,
            s: self.size,
            l: self.layer,
            k,
            kx,
            rd: self.rdev,
            x: self
                .xattrs
                .iter()
                .map(|(n, v)| (n.clone(), hex::encode(v)))
                .collect(),
            hl: self.leader,
            z: self.frame.as_ref().map(|f| [f.offset, f.len, f.skip]),
            zd: self.frame.as_ref().map(|f| hex::encode(f.sha256)),
            ino: self.ino,
            ct: self.ctime.0,
            cn: self.ctime.1,
            sq: self.sqlite.clone(),
            pg: self.pages.as_ref().map(|d| d.to_string()),
            end: None,
        }
    }

    fn from_line(line: Line) -> Result<Entry> {
        let t = line.t.as_deref().unwrap_or("");
        let kind = Kind::from_code(t)
            .ok_or_else(|| Error::integrity(format!("tree index: unknown entry type {t:?}")))?;
        let mut xattrs = Vec::with_capacity(line.x.len());
        for (n, v) in line.x {
            let v = hex::decode(v)
                .map_err(|e| Error::integrity(format!("tree index: bad xattr value: {e}")))?;
            xattrs.push((n, v));
        }
        let path = decode_bytes(line.p, line.px)?;
        let link = decode_bytes(line.k, line.kx)?;
        let frame = match (line.z, line.zd) {
            (None, None) => None,
            (Some([offset, len, skip]), Some(d)) => {
                let mut sha256 = [0u8; 32];
                hex::decode_to_slice(&d, &mut sha256).map_err(|e| {
                    Error::integrity(format!("tree index: bad frame digest {d:?}: {e}"))
                })?;
                Some(Frame {
                    offset,
                    len,
                    skip,
                    sha256,
                })
            }
            _ => return Err(Error::integrity("tree index: a frame without its digest")),
        };
        let pages =
            match line.pg {
                None => None,
                Some(d) => Some(d.parse().map_err(|_| {
                    Error::integrity(format!("tree index: bad page map digest {d:?}"))
                })?),
            };
        // Every reader gets only paths that stay under a root: an index may be hostile.
        check_relative(&path)?;
        if kind == Kind::HardLink {
            check_relative(&link)?;
        }
        Ok(Entry {
            path,
            kind,
            mode: line.m,
            uid: line.u,
            gid: line.g,
            mtime: (line.mt, line.mn),
            size: line.s,
            layer: line.l,
            link,
            rdev: line.rd,
            xattrs,
            leader: line.hl,
            ino: line.ino,
            ctime: (line.ct, line.cn),
            frame,
            sqlite: line.sq,
            pages,
        })
    }

    pub fn display_path(&self) -> String {
        String::from_utf8_lossy(&self.path).into_owned()
    }
}

/// The components of an index path; the root `.` has none.
pub fn components(path: &[u8]) -> impl Iterator<Item = &[u8]> {
    let p: &[u8] = if path == b"." { b"" } else { path };
    p.split(|&b| b == b'/').filter(|c| !c.is_empty())
}

/// Depth-first order: compare component by component, bytes within a component.
/// A directory sorts before everything inside it, and `a/b` before `a-c`.
pub fn cmp_paths(a: &[u8], b: &[u8]) -> Ordering {
    components(a).cmp(components(b))
}

/// `child` joined under `parent` (which may be the root `.`).
pub fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    if parent == b"." {
        name.to_vec()
    } else {
        let mut p = Vec::with_capacity(parent.len() + 1 + name.len());
        p.extend_from_slice(parent);
        p.push(b'/');
        p.extend_from_slice(name);
        p
    }
}

/// The parent of an index path (`.` for top-level entries).
pub fn parent(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[..i],
        None => b".",
    }
}

/// The last component of an index path (its name in its directory).
pub fn file_name(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}

/// Is `path` inside (or equal to) `dir`?
pub fn is_within(path: &[u8], dir: &[u8]) -> bool {
    dir == b"." || path == dir || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// A path from an index or an archive is safe to create under a root when it is
/// relative, has no `.`/`..`/empty components and no NUL.
pub fn check_relative(path: &[u8]) -> Result<()> {
    if path == b"." {
        return Ok(());
    }
    let bad = path.is_empty()
        || path[0] == b'/'
        || path.contains(&0)
        || path
            .split(|&b| b == b'/')
            .any(|c| c.is_empty() || c == b"." || c == b"..");
    if bad {
        return Err(Error::integrity(format!(
            "refusing entry {:?}: it would be written outside the target (absolute path, '..' or empty component)",
            String::from_utf8_lossy(path)
        )));
    }
    Ok(())
}

pub struct IndexWriter<W: Write> {
    out: zstd::Encoder<'static, W>,
    trailer: Trailer,
    buf: Vec<u8>,
}

impl<W: Write> IndexWriter<W> {
    pub fn new(w: W) -> Result<Self> {
        let mut out = zstd::Encoder::new(w, 3).ctx(|| "starting the tree index".into())?;
        let header = Header {
            format: INDEX_FORMAT.into(),
            version: INDEX_VERSION,
        };
        serde_json::to_writer(&mut out, &header)
            .map_err(|e| Error::other(format!("writing the tree index: {e}")))?;
        out.write_all(b"\n")
            .ctx(|| "writing the tree index".into())?;
        Ok(IndexWriter {
            out,
            trailer: Trailer::default(),
            buf: Vec::with_capacity(256),
        })
    }

    pub fn push(&mut self, e: &Entry) -> Result<()> {
        self.trailer.entries += 1;
        if e.kind == Kind::File {
            self.trailer.files += 1;
            self.trailer.bytes += e.size;
        }
        self.buf.clear();
        serde_json::to_writer(&mut self.buf, &e.to_line()).expect("index lines serialize");
        self.buf.push(b'\n');
        self.out
            .write_all(&self.buf)
            .ctx(|| "writing the tree index".into())
    }

    pub fn finish(mut self, layer_content: Vec<u64>) -> Result<(W, Trailer)> {
        self.trailer.layer_content = layer_content;
        let line = Line {
            end: Some(self.trailer.clone()),
            ..Default::default()
        };
        serde_json::to_writer(&mut self.out, &line)
            .map_err(|e| Error::other(format!("writing the tree index: {e}")))?;
        self.out
            .write_all(b"\n")
            .ctx(|| "writing the tree index".into())?;
        let w = self
            .out
            .finish()
            .ctx(|| "finishing the tree index".into())?;
        Ok((w, self.trailer))
    }
}

/// Reads entries one at a time; the trailer becomes available once every entry is read.
pub struct IndexReader<R: Read> {
    lines: std::io::Split<BufReader<zstd::Decoder<'static, BufReader<R>>>>,
    trailer: Option<Trailer>,
    seen: u64,
    name: String,
}

impl<R: Read> IndexReader<R> {
    pub fn new(r: R, name: &str) -> Result<Self> {
        let dec = zstd::Decoder::new(r).ctx(|| format!("reading tree index {name}"))?;
        let mut lines = BufReader::with_capacity(256 << 10, dec).split(b'\n');
        let first = lines
            .next()
            .ok_or_else(|| Error::integrity(format!("tree index {name} is empty")))?
            .ctx(|| format!("reading tree index {name}"))?;
        let header: Header = serde_json::from_slice(&first)
            .map_err(|e| Error::integrity(format!("tree index {name} has a bad header: {e}")))?;
        if header.format != INDEX_FORMAT || header.version != INDEX_VERSION {
            return Err(Error::usage(format!(
                "tree index {name} is {} version {}; this freezer reads {INDEX_FORMAT} version {INDEX_VERSION}",
                header.format, header.version
            )));
        }
        Ok(IndexReader {
            lines,
            trailer: None,
            seen: 0,
            name: name.to_string(),
        })
    }

    /// The next entry, or None after the trailer. A missing trailer is an error.
    pub fn next_entry(&mut self) -> Result<Option<Entry>> {
        if self.trailer.is_some() {
            return Ok(None);
        }
        let raw = match self.lines.next() {
            None => {
                return Err(Error::integrity(format!(
                    "tree index {} is truncated",
                    self.name
                )))
            }
            Some(r) => r.ctx(|| format!("reading tree index {}", self.name))?,
        };
        let line: Line = serde_json::from_slice(&raw).map_err(|e| {
            Error::integrity(format!("tree index {} has a bad line: {e}", self.name))
        })?;
        if let Some(t) = line.end {
            if t.entries != self.seen {
                return Err(Error::integrity(format!(
                    "tree index {} lists {} entries but says {}",
                    self.name, self.seen, t.entries
                )));
            }
            self.trailer = Some(t);
            return Ok(None);
        }
        self.seen += 1;
        Entry::from_line(line).map(Some)
    }

    /// Reads to the end and returns the totals.
    pub fn trailer(mut self) -> Result<Trailer> {
        while self.next_entry()?.is_some() {}
        Ok(self.trailer.take().expect("set at the end"))
    }
}

impl<R: Read> Iterator for IndexReader<R> {
    type Item = Result<Entry>;
    fn next(&mut self) -> Option<Result<Entry>> {
        self.next_entry().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &[u8]) -> Entry {
        Entry {
            path: path.to_vec(),
            kind: Kind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: (1, 2),
            size: 3,
            layer: Some(0),
            link: vec![],
            rdev: 0,
            xattrs: vec![("user.a".into(), vec![0, 255])],
            leader: false,
            ino: 7,
            ctime: (5, 6),
            frame: None,
            sqlite: None,
            pages: None,
        }
    }

    #[test]
    fn depth_first_order() {
        let mut v: Vec<&[u8]> = vec![b"a-c", b"a/b", b".", b"a", b"b", b"a/b/c", b"\xff"];
        v.sort_by(|a, b| cmp_paths(a, b));
        assert_eq!(
            v,
            vec![&b"."[..], b"a", b"a/b", b"a/b/c", b"a-c", b"b", b"\xff"]
        );
    }

    #[test]
    fn round_trips_odd_names() {
        let entries = vec![
            entry(b"."),
            entry(b"new\nline"),
            entry(b"bad\xffutf8"),
            entry("ünï €".as_bytes()),
        ];
        let mut w = IndexWriter::new(Vec::new()).unwrap();
        for e in &entries {
            w.push(e).unwrap();
        }
        let (bytes, t) = w.finish(vec![12]).unwrap();
        assert_eq!(t.entries, 4);
        let r = IndexReader::new(&bytes[..], "test").unwrap();
        let back: Vec<Entry> = r.map(|e| e.unwrap()).collect();
        assert_eq!(back, entries);
    }

    #[test]
    fn truncation_is_detected() {
        let mut w = IndexWriter::new(Vec::new()).unwrap();
        w.push(&entry(b"a")).unwrap();
        w.out.flush().unwrap();
        let partial = w.out.finish().unwrap();
        let r = IndexReader::new(&partial[..], "test").unwrap();
        assert!(r.trailer().unwrap_err().message.contains("truncated"));
    }

    #[test]
    fn unsafe_paths_are_refused() {
        for p in [
            &b"../x"[..],
            b"/etc/passwd",
            b"a/../../x",
            b"a//b",
            b"",
            b"a/./b",
        ] {
            assert!(
                check_relative(p).is_err(),
                "{:?}",
                String::from_utf8_lossy(p)
            );
        }
        assert!(check_relative(b"a/b..c/.hidden").is_ok());
    }

    /// Found by fuzzing: the reader handed out `a/` (an empty last component); it now
    /// refuses any path that could leave the root, whoever reads the index.
    #[test]
    fn the_reader_refuses_unsafe_paths() {
        for p in [&b"a/"[..], b"../x", b"/abs", b"a//b"] {
            let mut w = IndexWriter::new(Vec::new()).unwrap();
            w.push(&entry(b".")).unwrap();
            w.push(&entry(p)).unwrap();
            let (bytes, _) = w.finish(vec![0]).unwrap();
            let mut r = IndexReader::new(&bytes[..], "test").unwrap();
            assert!(r.next_entry().unwrap().is_some());
            let e = r.next_entry().unwrap_err();
            assert!(e.message.contains("refusing entry"), "{e}");
        }
    }

    use proptest::collection::vec;
    use proptest::prelude::*;

    /// One path component: any bytes but `/` and NUL, never `.` or `..`.
    fn component() -> impl Strategy<Value = Vec<u8>> {
        vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..12,
        )
        .prop_filter("not . or ..", |c| c != b"." && c != b"..")
    }

    fn path() -> impl Strategy<Value = Vec<u8>> {
        vec(component(), 1..5).prop_map(|cs| cs.join(&b'/'))
    }

    fn kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Dir),
            Just(Kind::File),
            Just(Kind::Symlink),
            Just(Kind::HardLink),
            Just(Kind::Fifo),
            Just(Kind::CharDev),
            Just(Kind::BlockDev),
        ]
    }

    prop_compose! {
        fn any_entry()(
            path in path(),
            kind in kind(),
            mode in 0u32..0o10000,
            uid in any::<u32>(),
            gid in any::<u32>(),
            mtime in (any::<i64>(), 0u32..1_000_000_000),
            size in 0u64..1 << 50,
            layer in proptest::option::of(any::<u32>()),
            link in vec(any::<u8>(), 0..20),
            rdev in any::<u64>(),
            xattrs in vec(("[a-z.]{1,10}", vec(any::<u8>(), 0..10)), 0..3),
            leader in any::<bool>(),
            ino in any::<u64>(),
            ctime in (any::<i64>(), 0u32..1_000_000_000),
            target in path(),
            frame in proptest::option::of((any::<u64>(), any::<u64>(), any::<u64>(), any::<[u8; 32]>())),
            sqlite in proptest::option::of("[0-9a-z:. -]{0,40}"),
            pages in proptest::option::of(any::<[u8; 32]>()),
        ) -> Entry {
            // A hard link names the file it shares an inode with: a path in the tree.
            let link = if kind == Kind::HardLink { target } else { link };
            let frame = frame.map(|(offset, len, skip, sha256)| Frame { offset, len, skip, sha256 });
            let pages = pages.map(|h| format!("sha256:{}", hex::encode(h)).parse().unwrap());
            Entry { path, kind, mode, uid, gid, mtime, size, layer, link, rdev, xattrs, leader, ino, ctime, frame, sqlite, pages }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn any_index_reads_back_as_written(entries in vec(any_entry(), 0..40), content in vec(any::<u64>(), 0..4)) {
            let mut w = IndexWriter::new(Vec::new()).unwrap();
            for e in &entries {
                w.push(e).unwrap();
            }
            let (bytes, t) = w.finish(content.clone()).unwrap();
            let mut r = IndexReader::new(&bytes[..], "test").unwrap();
            let mut back = Vec::new();
            while let Some(e) = r.next_entry().unwrap() {
                back.push(e);
            }
            prop_assert_eq!(&back, &entries);
            let read = r.trailer().unwrap();
            prop_assert_eq!(&read, &t);
            prop_assert_eq!(read.layer_content, content);
            prop_assert_eq!(read.entries, entries.len() as u64);
        }

        #[test]
        fn paths_sort_depth_first(a in path(), b in path(), name in component()) {
            // The order is the components' order, and total.
            let ca: Vec<&[u8]> = components(&a).collect();
            let cb: Vec<&[u8]> = components(&b).collect();
            prop_assert_eq!(cmp_paths(&a, &b), ca.cmp(&cb));
            prop_assert_eq!(cmp_paths(&a, &b), cmp_paths(&b, &a).reverse());
            // A directory sorts before what is inside it, and that before its next
            // sibling; the root before everything.
            let child = join(&a, &name);
            prop_assert_eq!(cmp_paths(&a, &child), Ordering::Less);
            prop_assert_eq!(cmp_paths(b".", &a), Ordering::Less);
            prop_assert_eq!(parent(&child), &a[..]);
            prop_assert!(is_within(&child, &a));
            if cmp_paths(&a, &b) == Ordering::Less && !is_within(&b, &a) {
                prop_assert_eq!(cmp_paths(&child, &b), Ordering::Less);
            }
        }

        #[test]
        fn accepted_paths_stay_under_the_root(p in vec(prop_oneof![
            Just(b"..".to_vec()), Just(b".".to_vec()), Just(vec![]), Just(b"/".to_vec()),
            Just(vec![0]), component()], 1..6))
        {
            let joined = p.join(&b'/');
            let accepted = check_relative(&joined).is_ok();
            // Refused whenever a component could leave the root or name nothing.
            let bad_component = joined
                .split(|&b| b == b'/')
                .any(|c| c.is_empty() || c == b"." || c == b".." || c.contains(&0));
            if joined != b"." {
                prop_assert_eq!(accepted, !bad_component, "{:?}", String::from_utf8_lossy(&joined));
            }
            use std::os::unix::ffi::OsStrExt;
            let rel = std::path::Path::new(std::ffi::OsStr::from_bytes(&joined));
            if accepted {
                let under = std::path::Path::new("/root").join(rel);
                prop_assert!(under.starts_with("/root"));
                prop_assert!(under.components().all(|c| !matches!(c, std::path::Component::ParentDir)));
            }
        }
    }
}
