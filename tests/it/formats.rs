//! The fixtures in formats/ still read exactly as they were written.

use std::path::Path;

use freezer::tree::index::{IndexReader, IndexWriter};

use crate::common::*;

fn formats() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/formats/v1"))
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
    assert_eq!(entries.len(), 10);
    assert_eq!(entries[9].path, b"bad-\xff");
    assert_eq!(
        entries[7].xattrs,
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
    let work = tempfile::tempdir().unwrap();
    let repo = work.path().join("repo");
    copy_tree(&formats().join("example-repo"), &repo);
    let url = repo.to_str().unwrap();
    assert_ok(&freezer(&["verify", "--repo", url]));
    let list = json(&freezer(&["snapshots", "--repo", url, "--json"]));
    assert_eq!(list[0]["site"], "example");
    let out = work.path().join("out");
    assert_ok(&freezer(&[
        "thaw",
        "example",
        "--repo",
        url,
        "--into",
        out.to_str().unwrap(),
    ]));
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
