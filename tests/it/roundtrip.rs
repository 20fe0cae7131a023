//! Freeze and thaw: exactness, incremental nights, deletions, replace, dry runs, export.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::common::*;

#[test]
fn every_case_round_trips_through_local_and_garage() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site/www");
    every_case_tree(&src);
    for repo in TestRepo::both() {
        let repo = repo.init();
        let report = freeze(&repo, "every-case", &[&src]);
        assert_eq!(
            report["trees"][0]["files_read"], report["trees"][0]["files"],
            "first freeze reads everything"
        );
        let out = work.path().join(format!("out-{}", unique("r")));
        assert_ok(&thaw_into(&repo, "every-case", &out));
        assert_same_tree(&src, &under(&out, &src));
    }
}

#[test]
fn unchanged_tree_uploads_no_new_blob_data() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    every_case_tree(&src);
    for repo in TestRepo::both() {
        let repo = repo.init();
        let first = freeze(&repo, "steady", &[&src]);
        assert!(first["bytes_uploaded"].as_u64().unwrap() > 1_000_000);
        let second = freeze(&repo, "steady", &[&src]);
        assert_eq!(second["blobs_uploaded"], 0, "second freeze: {second:#}");
        assert_eq!(second["bytes_uploaded"], 0);
        assert_eq!(
            second["trees"][0]["files_read"], 0,
            "unchanged files are not read"
        );
        assert_eq!(second["parent"], first["snapshot"]);
        // Both snapshots are listed and the second thaws exactly.
        let list = json(&freezer(&[
            "snapshots",
            "steady",
            "--repo",
            &repo.url,
            "--json",
        ]));
        assert_eq!(list.as_array().unwrap().len(), 2);
        let out = work.path().join(unique("out"));
        assert_ok(&thaw_into(&repo, "steady", &out));
        assert_same_tree(&src, &under(&out, &src));
    }
}

/// A night where little changed: only the changed files are read and uploaded, deletions
/// come back as deletions, and every earlier snapshot still thaws as it was.
#[test]
fn incremental_freeze_reads_only_changes_and_restores_deletions() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    for d in 0..20 {
        for f in 0..25 {
            let p = src.join(format!("d{d:02}/f{f:02}.txt"));
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            // Incompressible content, so upload sizes measure file data, not metadata.
            let mut data = vec![0u8; 4096 + 64 * (d * 25 + f)];
            rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
            fs::write(&p, data).unwrap();
        }
    }
    let repo = TestRepo::s3().init();
    let first = freeze(&repo, "nightly", &[&src]);
    let before = work.path().join("before");
    copy_tree(&src, &before);

    // Edit two files, delete a file and a whole directory, add a file and a directory.
    fs::write(src.join("d03/f04.txt"), "changed\n").unwrap();
    fs::write(src.join("d11/f00.txt"), "changed too\n").unwrap();
    fs::remove_file(src.join("d05/f05.txt")).unwrap();
    fs::remove_dir_all(src.join("d07")).unwrap();
    fs::write(src.join("d00/new.txt"), "new\n").unwrap();
    fs::create_dir(src.join("added")).unwrap();
    fs::write(src.join("added/x"), "x\n").unwrap();

    let second = freeze(&repo, "nightly", &[&src]);
    let t = &second["trees"][0];
    assert_eq!(t["files_read"], 4, "{second:#}");
    assert_eq!(t["deleted"], 2, "a file and a directory: {second:#}");
    assert_eq!(t["new_layers"], 1);
    let up1 = first["bytes_uploaded"].as_u64().unwrap();
    let up2 = second["bytes_uploaded"].as_u64().unwrap();
    assert!(
        up2 * 5 < up1,
        "second night uploaded {up2} bytes, first {up1}"
    );

    let latest = work.path().join("latest");
    assert_ok(&thaw_into(&repo, "nightly", &latest));
    assert_same_tree(&src, &under(&latest, &src));
    assert!(!under(&latest, &src).join("d07").exists());

    let old_id = first["snapshot"].as_str().unwrap();
    let old = work.path().join("old");
    let target = format!("nightly:{old_id}");
    assert_ok(&thaw_into(&repo, &target, &old));
    assert_same_tree(&before, &under(&old, &src));

    // The changeset is a valid OCI layer chain too: stock tools see both layers.
    let oci = work.path().join("oci");
    assert_ok(&freezer(&[
        "export",
        "nightly",
        "--repo",
        &repo.url,
        "--oci",
        oci.to_str().unwrap(),
    ]));
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!("oci:{}:site", oci.display()))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["Layers"].as_array().unwrap().len(), 2);
}

#[test]
fn export_is_accepted_by_skopeo_inspect_and_copy() {
    let work = tempfile::tempdir().unwrap();
    let www = work.path().join("www");
    let files = work.path().join("files");
    every_case_tree(&www);
    fs::create_dir_all(files.join("a")).unwrap();
    fs::write(files.join("a/b.txt"), "b\n").unwrap();
    let repo = TestRepo::local().init();
    let report = freeze(&repo, "exported", &[&www, &files]);
    let oci = work.path().join("layout");
    let out = freezer(&[
        "export",
        "exported",
        "--repo",
        &repo.url,
        "--oci",
        oci.to_str().unwrap(),
    ]);
    assert_ok(&out);
    for tree in ["www", "files"] {
        let r = format!("oci:{}:{tree}", oci.display());
        let inspect = Command::new("skopeo")
            .args(["inspect", &r])
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "skopeo inspect {r}: {}",
            String::from_utf8_lossy(&inspect.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
        assert_eq!(v["Architecture"], "amd64");
        // The sparse file makes www larger than one layer part: more than one layer.
        let expected = if tree == "www" { 2 } else { 1 };
        assert_eq!(v["Layers"].as_array().unwrap().len(), expected, "{v:#}");
        // skopeo copy re-reads and verifies every blob, zstd layers included.
        let copy = work.path().join(format!("copy-{tree}"));
        let dest = format!("oci:{}:{tree}", copy.display());
        let c = Command::new("skopeo")
            .args(["copy", &r, &dest])
            .output()
            .unwrap();
        assert!(
            c.status.success(),
            "skopeo copy {r}: {}",
            String::from_utf8_lossy(&c.stderr)
        );
    }
    // The exported layer is the plain tar+zstd that GNU tar reads, with the same bytes.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(oci.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"][0]["annotations"]["dev.freezer.snapshot"],
        report["snapshot"]
    );
    let m = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == "files")
        .unwrap();
    let manifest_path = oci
        .join("blobs/sha256")
        .join(&m["digest"].as_str().unwrap()[7..]);
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(manifest_path).unwrap()).unwrap();
    let layer = oci
        .join("blobs/sha256")
        .join(&manifest["layers"][0]["digest"].as_str().unwrap()[7..]);
    let untar = work.path().join("untar");
    fs::create_dir(&untar).unwrap();
    let st = Command::new("tar")
        .arg("--zstd")
        .arg("-xf")
        .arg(&layer)
        .arg("-C")
        .arg(&untar)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(fs::read(untar.join("a/b.txt")).unwrap(), b"b\n");
}

#[test]
fn thaw_refuses_a_non_empty_target_and_replace_swaps_it() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("src");
    fs::create_dir_all(src.join("d")).unwrap();
    fs::write(src.join("d/file"), "new contents\n").unwrap();
    let repo = TestRepo::local().init();
    freeze(&repo, "replace-me", &[&src]);

    // Thaw onto the original path, which still has content: refused, nothing touched.
    fs::write(src.join("local-edit"), "keep me\n").unwrap();
    let out = freezer(&["thaw", "replace-me", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("exists and is not empty"),
        "{}",
        stderr(&out)
    );
    assert!(src.join("local-edit").exists());

    // --dry-run prints the plan and writes nothing.
    let out = freezer(&[
        "thaw",
        "replace-me",
        "--repo",
        &repo.url,
        "--replace",
        "--dry-run",
        "--json",
    ]);
    let plan = json(&out);
    assert_eq!(plan["trees"][0]["action"], "replace");
    assert!(src.join("local-edit").exists());

    // --replace: the snapshot's contents, and only those.
    assert_ok(&freezer(&[
        "thaw",
        "replace-me",
        "--repo",
        &repo.url,
        "--replace",
    ]));
    assert!(!src.join("local-edit").exists());
    assert_eq!(
        fs::read_to_string(src.join("d/file")).unwrap(),
        "new contents\n"
    );
    let leftovers: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".freezer"))
        .collect();
    assert!(leftovers.is_empty(), "staging left behind: {leftovers:?}");

    // An empty existing directory is fine without --replace.
    let empty = work.path().join("empty-target");
    fs::create_dir(&empty).unwrap();
    assert_ok(&thaw_into(&repo, "replace-me", &empty));
    assert!(under(&empty, &src).join("d/file").exists());
}

#[test]
fn sites_from_the_config_file_and_freezer_repo_env() {
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    fs::write(a.join("1"), "1").unwrap();
    fs::write(b.join("2"), "2").unwrap();
    let repo = TestRepo::local().init();
    let config = work.path().join("freezer.toml");
    fs::write(
        &config,
        format!(
            "[sites.blog]\npaths = [\"{}\"]\n[sites.blog.trees]\nuploads = \"{}\"\n",
            a.display(),
            b.display()
        ),
    )
    .unwrap();
    let out = freezer_env(
        &[
            "freeze",
            "blog",
            "--json",
            "--config",
            config.to_str().unwrap(),
        ],
        &[("FREEZER_REPO", &repo.url)],
    );
    let report = json(&out);
    let names: Vec<&str> = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a", "uploads"]);
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(snaps[0]["site"], "blog");
    assert_eq!(
        snaps[0]["trees"][1]["path"],
        b.canonicalize().unwrap().display().to_string()
    );
    let _ = Path::new("");
}

#[test]
fn freeze_dry_run_prints_the_plan_and_writes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), "f").unwrap();
    let repo = TestRepo::local().init();
    let plan = json(&freezer(&[
        "freeze",
        "dry",
        "--repo",
        &repo.url,
        "--path",
        src.to_str().unwrap(),
        "--dry-run",
        "--json",
    ]));
    assert_eq!(plan["site"], "dry");
    assert_eq!(plan["trees"][0]["name"], "www");
    assert!(plan["parent"].is_null());
    assert!(repo.store().list("blobs/").unwrap().is_empty());
    assert!(repo.store().list("snapshots/").unwrap().is_empty());
}

/// What a stock OCI tool does with a tree image: apply its layers in order, each
/// `.wh.NAME` removing NAME beside it. Whatever the changes between snapshots (top-level
/// and nested deletions, a directory removed, a type change), the result is the tree.
#[test]
fn layers_applied_in_order_with_their_whiteouts_give_the_tree() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    let w = |rel: &str, data: &str| {
        let p = src.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
    };
    w("abc", "top level");
    w(
        "bc",
        "a name that is the top-level one without its first letter",
    );
    w("keep.txt", "kept");
    w("sub/xyz", "nested");
    w("sub/stay", "stays");
    w("gone/inner/file", "in a directory that goes");
    w("was-file", "becomes a directory");
    let repo = TestRepo::local().init();
    freeze(&repo, "wh", &[&src]);
    fs::remove_file(src.join("abc")).unwrap();
    fs::remove_file(src.join("sub/xyz")).unwrap();
    fs::remove_dir_all(src.join("gone")).unwrap();
    fs::remove_file(src.join("was-file")).unwrap();
    w("was-file/now", "inside");
    w("keep.txt", "changed");
    freeze(&repo, "wh", &[&src]);

    let dir = repo.local.as_ref().unwrap();
    let blob = |d: &str| {
        dir.join("blobs/sha256")
            .join(d.trim_start_matches("sha256:"))
    };
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(blob(snaps[1]["trees"][0]["manifest"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "an incremental second layer");
    let out = work.path().join("applied");
    fs::create_dir(&out).unwrap();
    for l in layers {
        let data =
            zstd::decode_all(&fs::read(blob(l["digest"].as_str().unwrap())).unwrap()[..]).unwrap();
        let mut archive = tar::Archive::new(&data[..]);
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            if let Some(victim) = name.strip_prefix(".wh.") {
                let target = out.join(path.parent().unwrap()).join(victim);
                let meta = fs::symlink_metadata(&target)
                    .unwrap_or_else(|_| panic!("whiteout {} names nothing", path.display()));
                if meta.is_dir() {
                    fs::remove_dir_all(&target).unwrap();
                } else {
                    fs::remove_file(&target).unwrap();
                }
                continue;
            }
            entry.unpack_in(&out).unwrap();
        }
    }
    let st = Command::new("diff")
        .args(["-r", "--no-dereference"])
        .arg(&src)
        .arg(&out)
        .status()
        .unwrap();
    assert!(st.success(), "the applied layers differ from the tree");
}
