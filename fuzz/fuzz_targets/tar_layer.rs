//! Extracting files from a layer (tar+zstd, SPEC.md §5.1) as a thaw does, on arbitrary
//! bytes: errors, never a panic, and nothing is ever written outside the staging
//! directory.
#![no_main]
use libfuzzer_sys::fuzz_target;

// What the index of the fuzzed layer lists: paths in index order, with sizes.
const FILES: &[(&[u8], u64)] = &[
    (b"a", 5),
    (b"dir/b", 0),
    (b"dir/c", 1000),
    (b"z", 1_572_864),
];

fuzz_target!(|data: &[u8]| {
    let root = tempfile::tempdir().unwrap();
    let staging = root.path().join("staging");
    std::fs::create_dir_all(staging.join("dir")).unwrap();
    let _ = freezer::tree::thaw::fuzz_extract(data, FILES, &staging);
    // Only the staging directory is in the root.
    let names: Vec<_> = std::fs::read_dir(root.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("staging")]);
    // And under it only what the index names.
    for e in walk(&staging) {
        let rel = e
            .strip_prefix(&staging)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(
            ["dir", "a", "dir/b", "dir/c", "z"].contains(&rel.as_str()),
            "wrote {rel}"
        );
    }
});

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}
