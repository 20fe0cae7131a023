//! `freezer ls` and `freezer diff` read the tree indexes and database configs only: with
//! every layer blob deleted from the repository they still answer, and their answers
//! match the trees on disk.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use crate::common::*;

/// Every file and directory under `root`, relative, `/`-separated.
fn walk(root: &Path) -> BTreeSet<String> {
    fn go(root: &Path, dir: &Path, out: &mut BTreeSet<String>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(p.strip_prefix(root).unwrap().display().to_string());
            if p.is_dir() {
                go(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    go(root, root, &mut out);
    out
}

/// Deletes every layer blob of the repository's tree images.
fn delete_layers(repo: &TestRepo) -> usize {
    let dir = repo.local.as_ref().unwrap();
    let blob = |digest: &str| {
        dir.join("blobs/sha256")
            .join(digest.trim_start_matches("sha256:"))
    };
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    let mut deleted = 0;
    for s in snaps.as_array().unwrap() {
        for t in s["trees"].as_array().unwrap() {
            let manifest: serde_json::Value =
                serde_json::from_slice(&fs::read(blob(t["manifest"].as_str().unwrap())).unwrap())
                    .unwrap();
            for l in manifest["layers"].as_array().unwrap() {
                if fs::remove_file(blob(l["digest"].as_str().unwrap())).is_ok() {
                    deleted += 1;
                }
            }
        }
    }
    deleted
}

#[test]
fn ls_and_diff_of_a_50000_file_snapshot_pair_read_no_layer() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
    let repo = TestRepo::local().init();
    let first = freeze(&repo, "big", &[&src])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // The next night: 3 files changed, 2 deleted, a directory and 2 files added.
    fs::write(src.join("d000/f000"), "changed, longer").unwrap();
    fs::write(src.join("d050/f001"), "changed, longer too").unwrap();
    fs::write(src.join("d099/f499"), "changed and longer still").unwrap();
    fs::remove_file(src.join("d001/f000")).unwrap();
    fs::remove_file(src.join("d002/f000")).unwrap();
    fs::create_dir(src.join("new")).unwrap();
    fs::write(src.join("new/a"), "a").unwrap();
    fs::write(src.join("d003/z"), "z").unwrap();
    let second = freeze(&repo, "big", &[&src])["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(delete_layers(&repo) >= 2);

    // ls -R: exactly the tree on disk, with sizes.
    let listing = json(&freezer(&[
        "ls",
        &format!("big:{second}"),
        "www",
        "-R",
        "--repo",
        &repo.url,
        "--json",
    ]));
    let entries = listing["entries"].as_array().unwrap();
    let listed: BTreeSet<String> = entries
        .iter()
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, walk(&src));
    assert_eq!(listed.len(), 100 + 50_000 - 2 + 1 + 1 + 1);
    let f = entries.iter().find(|e| e["path"] == "d000/f000").unwrap();
    assert_eq!(f["type"], "file");
    assert_eq!(f["size"], 15);
    // One directory: only its entries.
    let one = json(&freezer(&[
        "ls",
        &format!("big:{second}"),
        "www/new",
        "--repo",
        &repo.url,
        "--json",
    ]));
    assert_eq!(one["entries"].as_array().unwrap().len(), 1);
    assert_eq!(one["entries"][0]["path"], "new/a");
    // The snapshot's parts.
    let parts = json(&freezer(&["ls", "big", "--repo", &repo.url, "--json"]));
    assert_eq!(parts["trees"][0]["name"], "www");
    assert_eq!(parts["trees"][0]["files"], 50_000 - 2 + 2);

    // diff: exactly the night's changes.
    let d = json(&freezer(&[
        "diff",
        &format!("big:{first}"),
        &second,
        "--repo",
        &repo.url,
        "--json",
    ]));
    let changes: BTreeSet<(String, String)> = d["trees"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["change"].as_str().unwrap().to_string(),
                c["path"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let expected: BTreeSet<(String, String)> = [
        ("modified", "d000/f000"),
        ("modified", "d050/f001"),
        ("modified", "d099/f499"),
        ("removed", "d001/f000"),
        ("removed", "d002/f000"),
        ("added", "new"),
        ("added", "new/a"),
        ("added", "d003/z"),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    // Directories whose entries changed have a new mtime: those are metadata changes.
    let content: BTreeSet<(String, String)> = changes
        .into_iter()
        .filter(|(c, p)| c != "modified" || !p.starts_with('d') || p.contains('/'))
        .collect();
    assert_eq!(content, expected, "{d:#}");
    let m = d["trees"][0]["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "d000/f000")
        .unwrap()
        .clone();
    assert!(
        m["what"].as_array().unwrap().contains(&"content".into()),
        "{m}"
    );
    // A layer read would have failed: they are gone, and a thaw says so.
    let out = thaw_into(&repo, "big", &work.path().join("out"));
    assert!(!out.status.success());
}

/// `cat` writes one file's exact bytes, from the one layer that holds it.
#[test]
fn cat_writes_one_file_byte_for_byte() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    fs::create_dir_all(src.join("img")).unwrap();
    let photo = noise(2 << 20, 7);
    fs::write(src.join("img/photo.jpg"), &photo).unwrap();
    fs::write(src.join("index.php"), "<?php").unwrap();
    fs::hard_link(src.join("index.php"), src.join("alias.php")).unwrap();
    let repo = TestRepo::local().init();
    freeze(&repo, "c", &[&src]);
    // The next night adds a file: it lives in a second layer.
    fs::write(src.join("img/new.png"), "new").unwrap();
    freeze(&repo, "c", &[&src]);

    let cat = |path: &str| freezer(&["cat", "c", path, "--repo", &repo.url]);
    let out = cat("www/img/photo.jpg");
    assert_ok(&out);
    assert!(out.stdout == photo, "the bytes differ");
    assert_eq!(cat("www/img/new.png").stdout, b"new");
    let alias = cat("www/alias.php");
    assert_ok(&alias);
    assert_eq!(alias.stdout, b"<?php");
    assert_eq!(cat("www/img").status.code(), Some(2));
    assert_eq!(cat("www/nothing").status.code(), Some(6));
    // The first layer gone: the new file still comes from its own layer; the photo
    // cannot, and nothing is written.
    let layers = {
        let dir = repo.local.as_ref().unwrap();
        let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
        let digest = snaps[1]["trees"][0]["manifest"]
            .as_str()
            .unwrap()
            .to_string();
        let blob = |d: &str| {
            dir.join("blobs/sha256")
                .join(d.trim_start_matches("sha256:"))
        };
        let manifest: serde_json::Value =
            serde_json::from_slice(&fs::read(blob(&digest)).unwrap()).unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| blob(l["digest"].as_str().unwrap()))
            .collect::<Vec<_>>()
    };
    assert_eq!(layers.len(), 2);
    // A damaged byte in the frame that holds a file: refused, nothing written.
    let bytes = fs::read(&layers[1]).unwrap();
    let mut bad = bytes.clone();
    let at = bad.len() - 20;
    bad[at] ^= 0x55;
    fs::write(&layers[1], &bad).unwrap();
    let damaged = cat("www/img/new.png");
    assert_eq!(damaged.status.code(), Some(4), "{}", stderr(&damaged));
    assert!(damaged.stdout.is_empty());
    assert!(stderr(&damaged).contains("damaged"), "{}", stderr(&damaged));
    fs::write(&layers[1], &bytes).unwrap();
    fs::remove_file(&layers[0]).unwrap();
    assert_eq!(cat("www/img/new.png").stdout, b"new");
    let gone = cat("www/img/photo.jpg");
    assert!(!gone.status.success());
    assert!(gone.stdout.is_empty());
}

/// `cat` of one 2 MiB file of a 1 GiB snapshot on Garage reads the frame that holds it,
/// not its layer: measured at a proxy in front of the server, every byte of every
/// request and answer counted.
#[test]
fn cat_from_garage_transfers_little_more_than_the_file() {
    services();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    fs::create_dir_all(src.join("uploads")).unwrap();
    fs::create_dir_all(src.join("docs")).unwrap();
    for i in 0..500u64 {
        fs::write(
            src.join(format!("uploads/{i:03}.jpg")),
            noise(2 << 20, 100 + i),
        )
        .unwrap();
    }
    // Text, compressible as a config or document is.
    let mut text = String::new();
    let mut n = 0u64;
    while text.len() < 2 << 20 {
        n += 1;
        text.push_str(&format!(
            "{n:08} define('SETTING_{}', '{:x}'); // {}\n",
            n % 97,
            n.wrapping_mul(0x9e3779b97f4a7c15),
            ["cache", "uploads", "mail", "cron", "debug"][n as usize % 5]
        ));
    }
    text.truncate(2 << 20);
    fs::write(src.join("docs/manual.txt"), &text).unwrap();
    let compressed = zstd::encode_all(text.as_bytes(), 3).unwrap().len();

    let repo = TestRepo::s3().init();
    freeze(&repo, "big", &[&src]);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = crate::faults::proxy::FaultProxy::start(endpoint.trim_start_matches("http://"));
    let through = format!("http://{}", proxy.endpoint());
    let out = freezer_env(
        &["cat", "big", "www/docs/manual.txt", "--repo", &repo.url],
        &[("AWS_ENDPOINT_URL", &through)],
    );
    assert_ok(&out);
    assert!(out.stdout == text.as_bytes(), "the bytes differ");
    let moved = proxy.bytes();
    eprintln!(
        "cat of a 2 MiB file (zstd: {compressed} bytes) from a 1 GiB snapshot: {moved} bytes in {} requests",
        proxy.requests()
    );
    assert!(
        moved < 3 * compressed,
        "{moved} bytes moved for a file of {compressed} compressed bytes"
    );
    // A large file the same way: its own frame, little more than its size.
    let out = freezer_env(
        &["cat", "big", "www/uploads/250.jpg", "--repo", &repo.url],
        &[("AWS_ENDPOINT_URL", &through)],
    );
    assert_ok(&out);
    assert!(out.stdout == noise(2 << 20, 350), "the bytes differ");
    let second = proxy.bytes() - moved;
    assert!(second < 3 << 20, "{second} bytes moved for a 2 MiB file");
}

/// Every file of a tree, read alone through the frame its index names, is the file:
/// small ones sharing frames, ones that fill several frames' worth, ones with frames
/// of their own, odd names, hard links.
#[test]
fn every_file_cats_through_its_frame() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("t");
    every_case_tree(&src);
    for i in 0..40u64 {
        fs::write(src.join(format!("shared-{i:02}.bin")), noise(300 << 10, i)).unwrap();
    }
    for i in 0..3u64 {
        fs::write(src.join(format!("own-{i}.bin")), noise(1536 << 10, 50 + i)).unwrap();
    }
    let repo = TestRepo::local().init();
    freeze(&repo, "f", &[&src]);
    let listing = json(&freezer(&[
        "ls", "f", "t", "-R", "--repo", &repo.url, "--json",
    ]));
    let mut n = 0;
    for e in listing["entries"].as_array().unwrap() {
        if e["type"] != "file" && e["type"] != "hardlink" {
            continue;
        }
        let path = e["path"].as_str().unwrap();
        if path.contains('\u{fffd}') {
            continue; // not UTF-8: `cat` takes the path as an argument, this test as JSON
        }
        let out = freezer(&["cat", "f", &format!("t/{path}"), "--repo", &repo.url]);
        assert_ok(&out);
        assert!(
            out.stdout == fs::read(src.join(path)).unwrap(),
            "{path} differs"
        );
        n += 1;
    }
    assert!(n > 45, "{n} files read");
}

/// In an encrypted repository `cat` reads the sealed segments that hold the file's frame
/// (each authenticated), not the layer.
#[test]
fn cat_from_an_encrypted_repository_reads_the_segments_of_its_frame() {
    let keys = tempfile::tempdir().unwrap();
    let (id, recipient) = crate::encryption::keygen(keys.path(), "id.txt");
    let id = id.display().to_string();
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    fs::create_dir_all(&src).unwrap();
    for i in 0..30u64 {
        fs::write(src.join(format!("{i:02}.bin")), noise(2 << 20, 900 + i)).unwrap();
    }
    let repo = TestRepo::s3().init_encrypted(&recipient);
    let path = src.display().to_string();
    let env = [("FREEZER_IDENTITY", id.as_str())];
    assert_ok(&freezer_env(
        &["freeze", "e", "--repo", &repo.url, "--path", &path, "-q"],
        &env,
    ));
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = crate::faults::proxy::FaultProxy::start(endpoint.trim_start_matches("http://"));
    let through = format!("http://{}", proxy.endpoint());
    let out = freezer_env(
        &["cat", "e", "www/17.bin", "--repo", &repo.url],
        &[
            ("FREEZER_IDENTITY", id.as_str()),
            ("AWS_ENDPOINT_URL", &through),
        ],
    );
    assert_ok(&out);
    assert!(out.stdout == noise(2 << 20, 917), "the bytes differ");
    let moved = proxy.bytes();
    eprintln!("encrypted cat of a 2 MiB file from a 60 MiB snapshot: {moved} bytes");
    assert!(
        moved < 3 * (2 << 20),
        "{moved} bytes moved for a 2 MiB file"
    );
}
