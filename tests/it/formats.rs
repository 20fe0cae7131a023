//! The fixtures in formats/ still read exactly as they were written.

use std::path::Path;

use freezer::tree::index::{IndexReader, IndexWriter};

use crate::common::*;

fn formats() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/formats/v1"))
}

/// SPEC.md §5.6: a page map of a 20,480-byte file in two units, the first in the second
/// pack, the second at offset 515 of the first.
#[test]
fn sqlite_page_map_fixture_reads_and_writes_back_byte_for_byte() {
    let text = std::fs::read_to_string(formats().join("sqlite-pagemap.json")).unwrap();
    let map: freezer::tree::pages::PageMap = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (map.format.as_str(), map.version),
        ("freezer-sqlite-pages", 1)
    );
    assert_eq!((map.size, map.unit), (20480, 16384));
    assert_eq!(map.units.len() as u64, map.size.div_ceil(map.unit));
    assert_eq!(map.units[1].0, 0);
    assert_eq!((map.units[1].1, map.units[1].2), (515, 97));
    assert_eq!(map.packs[1].size, 97);
    assert_eq!(serde_json::to_string(&map).unwrap(), text.trim_end());
}

/// SPEC.md §15: the record of a failed drill.
#[test]
fn run_record_fixture_reads_and_writes_back_byte_for_byte() {
    let text = std::fs::read_to_string(formats().join("run-record.json")).unwrap();
    let run: freezer::format::RunRecord = serde_json::from_str(&text).unwrap();
    assert_eq!((run.format, run.site.as_str()), (1, "shop"));
    assert_eq!((run.command.as_str(), run.exit), ("drill", 4));
    assert_eq!(run.error.as_ref().unwrap().kind, "integrity");
    assert_eq!(run.bytes.read, 1_048_576);
    let drill = run.drill.as_ref().unwrap();
    assert_eq!((drill.ok, drill.checks.len()), (false, 2));
    assert!(run.mode.is_none(), "absent fields read as absent");
    assert_eq!(serde_json::to_string(&run).unwrap(), text.trim_end());
    // A record with a field a later version adds still reads.
    let later = text.replace("\"warnings\":1", "\"warnings\":1,\"new\":true");
    let _: freezer::format::RunRecord = serde_json::from_str(&later).unwrap();
}

#[test]
fn tree_index_fixture_reads_and_writes_back_byte_for_byte() {
    let text = std::fs::read(formats().join("tree-index.jsonl")).unwrap();
    let compressed = zstd::encode_all(&text[..], 3).unwrap();
    let mut r = IndexReader::new(&compressed[..], "fixture").unwrap();
    let mut entries = Vec::new();
    while let Some(e) = r.next_entry().unwrap() {
        entries.push(e);
    }
    let trailer = r.trailer().unwrap();
    assert_eq!(entries.len(), 11);
    assert_eq!(entries[10].path, b"bad-\xff");
    assert_eq!(
        entries[3].sqlite.as_deref(),
        Some("4096 -wal:32992:1700000010.5:12 -journal:-"),
        "a SQLite database's stamp"
    );
    let frame = entries[2].frame.as_ref().expect("bin/tool has a frame");
    assert_eq!((frame.offset, frame.len, frame.skip), (0, 96, 1024));
    assert_eq!(frame.sha256[..2], [0x5c, 0x4b]);
    assert!(
        entries[6].frame.is_none(),
        "an entry without a frame reads as one"
    );
    assert_eq!(
        entries[8].xattrs,
        vec![("user.note".to_string(), b"value".to_vec())]
    );
    let mut w = IndexWriter::new(Vec::new()).unwrap();
    for e in &entries {
        w.push(e).unwrap();
    }
    let (out, written) = w.finish(trailer.layer_content.clone()).unwrap();
    assert_eq!(written, trailer);
    let back = zstd::decode_all(&out[..]).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&back),
        String::from_utf8_lossy(&text)
    );
}

#[test]
fn example_repository_fixture_verifies_and_thaws() {
    verify_thaw_and_compare("example-repo", &[], &[]);
}

/// A repository written since layers are cut into zstd frames (SPEC.md §5.1, §6): it
/// thaws as before, and `cat` reads each file through the frame its index names.
#[test]
fn example_framed_repository_fixture_thaws_and_cats_through_frames() {
    verify_thaw_and_compare("example-framed-repo", &[], &[]);
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_tree(&formats().join("example-framed-repo"), &repo);
    let url = repo.to_str().unwrap();
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/site");
    let listing = json(&freezer(&[
        "ls", "example", "www", "-R", "--repo", url, "--json",
    ]));
    let mut files = 0;
    for e in listing["entries"].as_array().unwrap() {
        if e["type"] != "file" {
            continue;
        }
        let path = e["path"].as_str().unwrap();
        let out = freezer(&["cat", "example", &format!("www/{path}"), "--repo", url]);
        assert_ok(&out);
        assert_eq!(
            out.stdout,
            std::fs::read(bundled.join("www").join(path)).unwrap(),
            "{path}"
        );
        files += 1;
    }
    assert!(files >= 3, "{listing}");
    // Every file of the fixture's indexes names its frame.
    let mut framed = 0;
    for blob in std::fs::read_dir(repo.join("blobs/sha256")).unwrap() {
        let data = std::fs::read(blob.unwrap().path()).unwrap();
        let Ok(plain) = zstd::decode_all(&data[..]) else {
            continue;
        };
        if !plain.starts_with(b"{\"format\":\"freezer-tree-index\"") {
            continue;
        }
        let mut r = IndexReader::new(&data[..], "fixture").unwrap();
        while let Some(e) = r.next_entry().unwrap() {
            if e.kind == freezer::tree::index::Kind::File {
                assert!(e.frame.is_some(), "{} has no frame", e.display_path());
                framed += 1;
            }
        }
    }
    assert!(framed >= files, "{framed} framed files");
}

/// The encrypted fixture (SPEC.md §14; the same example site, sealed to the age identity
/// `example-encrypted.identity` and to the passphrase in `example-encrypted.passphrase`)
/// opens with either key, verifies (every object authenticated) and thaws.
#[test]
fn example_encrypted_repository_fixture_opens_with_either_key() {
    let identity = formats().join("example-encrypted.identity");
    let passphrase = formats().join("example-encrypted.passphrase");
    verify_thaw_and_compare(
        "example-encrypted-repo",
        &["--identity", identity.to_str().unwrap()],
        &["--passphrase-file", passphrase.to_str().unwrap()],
    );
}

/// Copies the fixture repository, verifies it with `verify_keys`, thaws its snapshot
/// with `thaw_keys` and compares the trees with the bundled example site.
fn verify_thaw_and_compare(fixture: &str, verify_keys: &[&str], thaw_keys: &[&str]) {
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_tree(&formats().join(fixture), &repo);
    let url = repo.to_str().unwrap();
    assert_ok(&freezer(
        &[&["verify", "--repo", url], verify_keys].concat(),
    ));
    let list = json(&freezer(
        &[&["snapshots", "--repo", url, "--json"], thaw_keys].concat(),
    ));
    assert_eq!(list[0]["site"], "example");
    let out = work.path().join("out");
    assert_ok(&freezer(
        &[
            &[
                "thaw",
                "example",
                "--repo",
                url,
                "--into",
                out.to_str().unwrap(),
            ],
            thaw_keys,
        ]
        .concat(),
    ));
    // The fixture was frozen from examples/site in the author's checkout; compare the
    // restored trees (wherever that was) with the bundled example's contents.
    for t in list[0]["trees"].as_array().unwrap() {
        let source = Path::new(t["path"].as_str().unwrap());
        let restored = under(&out, source);
        let bundled = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/site")
            .join(t["name"].as_str().unwrap());
        let st = std::process::Command::new("diff")
            .arg("-r")
            .arg("--no-dereference")
            .arg(&bundled)
            .arg(&restored)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "{} differs from {}",
            restored.display(),
            bundled.display()
        );
    }
}

/// The dehydrated fixture (examples/shop.sql frozen by freezer format 1) still verifies,
/// thaws into a database identical to one loaded from the same SQL today, and a freeze of
/// that database today writes byte-identical data chunks, so repositories keep
/// deduplicating across freezer versions.
#[test]
fn example_database_fixture_thaws_and_todays_chunks_are_identical() {
    use crate::database::{db_url, describe, sql};
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_tree(&formats().join("example-db-repo"), &repo);
    let url = repo.to_str().unwrap();
    assert_ok(&freezer(&["verify", "--repo", url]));

    let fresh = unique("shopfresh").replace('-', "_");
    sql(None, &format!("DROP DATABASE IF EXISTS `{fresh}`; CREATE DATABASE `{fresh}` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;"));
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop.sql")).unwrap();
    sql(Some(&fresh), &script);

    let thawed = unique("shopfixture").replace('-', "_");
    assert_ok(&freezer(&[
        "thaw",
        "shop",
        "--repo",
        url,
        "--db",
        &db_url(&thawed),
    ]));
    let (a, b) = (describe(&fresh), describe(&thawed));
    for (k, v) in &a {
        // Table definitions may be printed differently by another server version; the
        // data, views and triggers must match.
        if !k.ends_with(" create") {
            assert_eq!(v, &b[k], "{k}");
        }
    }

    let today = TestRepo::local().init();
    assert_ok(&freezer(&[
        "freeze",
        "shop",
        "--repo",
        &today.url,
        "--db",
        &db_url(&fresh),
    ]));
    let data_chunks = |dir: &Path| -> std::collections::BTreeSet<String> {
        let snaps = dir.join("snapshots/shop");
        let record = std::fs::read_dir(&snaps)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(record).unwrap()).unwrap();
        let m = record["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .replace("sha256:", "");
        let manifest: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(m)).unwrap())
                .unwrap();
        manifest["layers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["annotations"]["dev.freezer.sql.part"] == "data")
            .map(|l| l["digest"].as_str().unwrap().to_string())
            .collect()
    };
    let (old, new) = (
        data_chunks(&repo),
        data_chunks(today.local.as_ref().unwrap()),
    );
    assert_eq!(old.len(), 3);
    assert_eq!(
        old, new,
        "today's freeze writes different data chunks than format 1's fixture"
    );
    for db in [&fresh, &thawed] {
        sql(None, &format!("DROP DATABASE IF EXISTS `{db}`;"));
    }
}
