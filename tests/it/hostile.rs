//! Hostile snapshots, crafted by hand with the library's format types: thaw refuses every
//! entry that would escape its target, and nothing is written outside it.

use std::fs;
use std::io::Write;
use std::path::Path;

use freezer::format::*;
use freezer::repo::Repository;
use freezer::tree::freeze::store_tree_image;
use freezer::tree::index::{Entry, IndexWriter, Kind};

use crate::common::*;

fn entry(path: &[u8], kind: Kind) -> Entry {
    Entry {
        path: path.to_vec(),
        kind,
        mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
        uid: 0,
        gid: 0,
        mtime: (1_700_000_000, 0),
        size: 0,
        layer: None,
        link: vec![],
        rdev: 0,
        xattrs: vec![],
        leader: false,
        ino: 0,
        ctime: (0, 0),
        frame: None,
        sqlite: None,
        pages: None,
    }
}

fn file(path: &[u8], size: u64) -> Entry {
    Entry {
        size,
        layer: Some(0),
        ..entry(path, Kind::File)
    }
}

/// A tar archive whose entry names are written raw, bypassing the tar crate's own checks,
/// the way an attacker would.
/// (name, type, link target, data)
type RawEntry<'a> = (&'a [u8], tar::EntryType, &'a [u8], &'a [u8]);

fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, kind, link, data) in entries {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.as_old_mut().linkname[..link.len()].copy_from_slice(link);
        h.set_entry_type(*kind);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

/// Stores a one-tree snapshot of site `evil` whose tree claims to live at `tree_path`.
fn craft(repo: &TestRepo, tree_path: &Path, index: &[Entry], tar: Vec<u8>) {
    let store = freezer::store::open(
        &freezer::store::StoreUrl::parse(&repo.url).unwrap(),
        &Default::default(),
    )
    .unwrap();
    let r = Repository::open(store).unwrap();
    let layer = zstd::encode_all(&tar[..], 3).unwrap();
    let (layer_digest, layer_size) = r.put_blob(&layer).unwrap();
    let mut w = IndexWriter::new(Vec::new()).unwrap();
    for e in index {
        w.push(e).unwrap();
    }
    let (index_bytes, _) = w.finish(vec![0]).unwrap();
    let (index_digest, index_size) = r.put_blob(&index_bytes).unwrap();
    let mut desc = store_tree_image(
        &r,
        vec![Descriptor::new(MT_LAYER_ZSTD, layer_digest, layer_size)],
        vec![Digest::of(&tar)],
        &Descriptor::new(MT_TREE_INDEX, index_digest, index_size),
        Default::default(),
    )
    .unwrap();
    desc.annotations.insert(A_TREE_NAME.into(), "www".into());
    desc.annotations
        .insert(A_TREE_PATH.into(), tree_path.display().to_string());
    let mut record = ImageIndex {
        schema_version: 2,
        media_type: MT_INDEX.into(),
        manifests: vec![desc],
        annotations: Default::default(),
    };
    record.annotations.insert(A_FORMAT.into(), "1".into());
    record
        .annotations
        .insert(A_CREATED.into(), rfc3339(std::time::SystemTime::now()));
    r.write_record("evil", &record, std::time::SystemTime::now())
        .unwrap();
}

fn thaw_refused(repo: &TestRepo, into: &Path, expect: &str) {
    let out = thaw_into(repo, "evil", into);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(expect),
        "expected {expect:?} in: {}",
        stderr(&out)
    );
    assert!(!into.exists(), "nothing may be left at the target");
}

fn assert_empty_dir(dir: &Path) {
    let entries: Vec<_> = fs::read_dir(dir).unwrap().collect();
    assert!(
        entries.is_empty(),
        "{} was written to: {entries:?}",
        dir.display()
    );
}

#[test]
fn tar_entries_that_escape_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let tree = Path::new("/srv/site/www");
    let cases: Vec<(&[u8], &str)> = vec![
        (b"../../../../escaped.txt", "outside the target"),
        (b"/tmp/absolute-escape.txt", "outside the target"),
        (b"ok/../../escaped.txt", "outside the target"),
    ];
    for (name, expect) in cases {
        let repo = TestRepo::local().init();
        let tar = raw_tar(&[(name, tar::EntryType::Regular, b"", b"pwned\n")]);
        craft(&repo, tree, &[entry(b".", Kind::Dir)], tar);
        let into = work.path().join(unique("into"));
        thaw_refused(&repo, &into, expect);
    }
    assert!(!work.path().join("escaped.txt").exists());
    assert!(!Path::new("/tmp/absolute-escape.txt").exists());
    assert!(!Path::new("/escaped.txt").exists());
}

#[test]
fn index_entries_that_escape_are_refused() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let tree = Path::new("/srv/site/www");

    // A path with '..'.
    let repo = TestRepo::local().init();
    let tar = raw_tar(&[(b"x", tar::EntryType::Regular, b"", b"pwned\n")]);
    craft(
        &repo,
        tree,
        &[entry(b".", Kind::Dir), file(b"../x", 6)],
        tar,
    );
    thaw_refused(
        &repo,
        &work.path().join(unique("into")),
        "outside the target",
    );

    // A symlink to a directory outside, then a file "through" it.
    let repo = TestRepo::local().init();
    let mut link = entry(b"link", Kind::Symlink);
    link.link = outside.as_os_str().as_encoded_bytes().to_vec();
    let tar = raw_tar(&[
        (
            b"link",
            tar::EntryType::Symlink,
            outside.as_os_str().as_encoded_bytes(),
            b"",
        ),
        (b"link/evil", tar::EntryType::Regular, b"", b"pwned\n"),
    ]);
    craft(
        &repo,
        tree,
        &[entry(b".", Kind::Dir), link, file(b"link/evil", 6)],
        tar,
    );
    thaw_refused(
        &repo,
        &work.path().join(unique("into")),
        "parent is not a directory",
    );
    assert_empty_dir(&outside);

    // A hard link to a file outside the tree.
    let repo = TestRepo::local().init();
    let mut hard = entry(b"passwd", Kind::HardLink);
    hard.link = b"../../../../etc/passwd".to_vec();
    craft(&repo, tree, &[entry(b".", Kind::Dir), hard], raw_tar(&[]));
    thaw_refused(
        &repo,
        &work.path().join(unique("into")),
        "outside the target",
    );

    // A hard link to a path inside the tree that is not an earlier file (a symlink's target).
    let repo = TestRepo::local().init();
    let mut hard = entry(b"h", Kind::HardLink);
    hard.link = b"link/passwd".to_vec();
    let mut link = entry(b"link", Kind::Symlink);
    link.link = b"/etc".to_vec();
    craft(
        &repo,
        tree,
        &[entry(b".", Kind::Dir), hard, link],
        raw_tar(&[]),
    );
    thaw_refused(
        &repo,
        &work.path().join(unique("into")),
        "not a file earlier in the snapshot",
    );
    assert_empty_dir(&outside);
}

/// A symlink pointing outside is data (sites have them): restored as a link, never followed.
#[test]
fn symlinks_pointing_outside_are_restored_as_links() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    fs::create_dir(&outside).unwrap();
    let repo = TestRepo::local().init();
    let mut link = entry(b"link", Kind::Symlink);
    link.link = outside.as_os_str().as_encoded_bytes().to_vec();
    craft(
        &repo,
        Path::new("/srv/site/www"),
        &[entry(b".", Kind::Dir), link],
        raw_tar(&[]),
    );
    let into = work.path().join("into");
    assert_ok(&thaw_into(&repo, "evil", &into));
    let restored = into.join("srv/site/www/link");
    assert_eq!(fs::read_link(&restored).unwrap(), outside);
    assert_empty_dir(&outside);
    let _ = std::io::stdout().flush();
}
