//! Damage, interruption and bad input: detected, named, and nothing lost.

use std::fs;
use std::path::Path;

use crate::common::*;

fn small_tree(root: &Path) {
    fs::create_dir_all(root.join("sub")).unwrap();
    fs::write(root.join("index.html"), "<p>hi</p>\n".repeat(1000)).unwrap();
    fs::write(
        root.join("sub/data.bin"),
        (0..200_000u32)
            .flat_map(|i| i.to_le_bytes())
            .collect::<Vec<u8>>(),
    )
    .unwrap();
}

fn flip_byte(store: &dyn freezer::store::Store, key: &str) -> Vec<u8> {
    let original = store.get(key).unwrap();
    let mut damaged = original.clone();
    let i = damaged.len() / 2;
    damaged[i] ^= 0x01;
    store.delete(key).unwrap();
    store.put(key, &damaged).unwrap();
    original
}

fn restore(store: &dyn freezer::store::Store, key: &str, original: &[u8]) {
    store.delete(key).unwrap();
    store.put(key, original).unwrap();
}

/// Every blob of a snapshot (manifest, config, tree index, layers), damaged one at a time:
/// `verify` exits 4 naming it, and `thaw` refuses without leaving anything at the target.
#[test]
fn a_flipped_byte_in_any_blob_is_caught_by_verify_and_thaw() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    small_tree(&src);
    for repo in TestRepo::both() {
        let repo = repo.init();
        freeze(&repo, "fragile", &[&src]);
        let store = repo.store();
        let blobs: Vec<String> = store
            .list("blobs/")
            .unwrap()
            .into_iter()
            .map(|o| o.key)
            .collect();
        assert!(
            blobs.len() >= 4,
            "manifest, config, index and a layer: {blobs:?}"
        );
        assert_ok(&freezer(&["verify", "--repo", &repo.url]));
        for key in &blobs {
            let original = flip_byte(store.as_ref(), key);

            let out = freezer(&["verify", "--repo", &repo.url, "--json"]);
            assert_eq!(
                out.status.code(),
                Some(4),
                "verify with {key} damaged: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(key.as_str()),
                "verify names {key}: {}",
                stderr(&out)
            );
            let report = result_line(&out.stdout);
            assert_eq!(report["ok"], false);
            assert!(report["problems"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["object"] == key.as_str()));

            let into = work.path().join(unique("thaw"));
            let out = thaw_into(&repo, "fragile", &into);
            assert_eq!(
                out.status.code(),
                Some(4),
                "thaw with {key} damaged: {}",
                stderr(&out)
            );
            assert!(
                stderr(&out).contains(key.as_str()),
                "thaw names {key}: {}",
                stderr(&out)
            );
            assert!(
                !into.exists(),
                "thaw wrote {} although {key} is damaged",
                into.display()
            );

            restore(store.as_ref(), key, &original);
        }
        assert_ok(&freezer(&["verify", "--repo", &repo.url]));

        // A missing blob is damage too, named the same way.
        let layer = blobs.iter().max_by_key(|k| store.size(k).unwrap()).unwrap();
        let original = store.get(layer).unwrap();
        store.delete(layer).unwrap();
        let out = freezer(&["verify", "--repo", &repo.url]);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(
            stderr(&out).contains(&format!("object {layer} is missing")),
            "{}",
            stderr(&out)
        );
        let into = work.path().join(unique("thaw"));
        let out = thaw_into(&repo, "fragile", &into);
        assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
        assert!(!into.exists());
        restore(store.as_ref(), layer, &original);
    }
}

/// A freeze killed right after an upload (as by kill -9 or a power cut) leaves no snapshot;
/// running it again completes and reuses what was already uploaded.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn an_interrupted_freeze_leaves_no_snapshot_and_resumes() {
    let work = tempfile::tempdir().unwrap();
    let a = work.path().join("a");
    let b = work.path().join("b");
    small_tree(&a);
    every_case_tree(&b);
    let repo = TestRepo::s3().init();
    let args = [
        "freeze",
        "interrupted",
        "--repo",
        &repo.url,
        "--path",
        a.to_str().unwrap(),
        "--path",
        b.to_str().unwrap(),
        "--json",
    ];
    let out = freezer_env(&args, &[("FREEZER_FAULT_ABORT_AFTER_UPLOADS", "3")]);
    assert!(
        !out.status.success(),
        "the fault hook should have killed the freeze"
    );
    let list = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(
        list.as_array().unwrap().len(),
        0,
        "no partial snapshot may be visible: {list:#}"
    );
    let uploaded_before = repo.store().list("blobs/").unwrap().len();
    assert_eq!(uploaded_before, 3);

    let report = json(&freezer(&args));
    assert!(
        report["blobs_reused"].as_u64().unwrap() >= 3,
        "the re-run reuses the uploaded blobs: {report:#}"
    );
    let list = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(list.as_array().unwrap().len(), 1);
    let out = work.path().join("out");
    assert_ok(&thaw_into(&repo, "interrupted", &out));
    assert_same_tree(&a, &under(&out, &a));
    assert_same_tree(&b, &under(&out, &b));
}

/// Killed in the middle of a multipart upload of a large layer: no snapshot, no blob at the
/// layer's key (S3 makes a multipart object visible only when completed), and the re-run
/// completes.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn a_freeze_killed_mid_multipart_upload_leaves_no_snapshot() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("big");
    fs::create_dir_all(&src).unwrap();
    let mut data = vec![0u8; 24 << 20];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
    fs::write(src.join("incompressible.bin"), &data).unwrap();
    let repo = TestRepo::s3().init();
    let args = [
        "freeze",
        "multipart",
        "--repo",
        &repo.url,
        "--path",
        src.to_str().unwrap(),
        "--json",
    ];
    let out = freezer_env(&args, &[("FREEZER_FAULT_ABORT_IN_MULTIPART", "1")]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("middle of a multipart upload"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]))
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        repo.store().list("blobs/").unwrap().len(),
        0,
        "no half-uploaded blob is visible"
    );
    let report = json(&freezer(&args));
    assert_eq!(report["blobs_uploaded"], 4);
    let out = work.path().join("out");
    assert_ok(&thaw_into(&repo, "multipart", &out));
    assert_same_tree(&src, &under(&out, &src));
}

#[test]
fn an_unknown_repository_version_is_refused() {
    let repo = TestRepo::local().init();
    let config = repo.local.as_ref().unwrap().join("freezer.json");
    let text = fs::read_to_string(&config)
        .unwrap()
        .replace("\"version\":1", "\"version\":99");
    fs::write(&config, text).unwrap();
    let out = freezer(&["snapshots", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("format version 99"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn missing_repository_and_unreachable_or_unauthorized_store_are_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let nowhere = work.path().join("nothing-here");
    let out = freezer(&["snapshots", "--repo", nowhere.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no freezer repository at"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("freezer init"), "{}", stderr(&out));

    // Nothing listens on port 9 here.
    let url = format!("s3://{}/x", bucket());
    let out = freezer_env(
        &["snapshots", "--repo", &url],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
            ("FREEZER_RETRY_FOR", "1s"),
        ],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("Connection refused"),
        "the cause is named: {}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("127.0.0.1:9") || stderr(&out).contains("s3://"),
        "{}",
        stderr(&out)
    );

    let secret = "wrong-secret-0123456789abcdef0123456789abcdef0123456789abcdef";
    let out = freezer_env(
        &["snapshots", "--repo", &url],
        &[("AWS_SECRET_ACCESS_KEY", secret)],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    assert!(
        !stderr(&out).contains(secret),
        "the secret must never be printed"
    );
}

#[test]
fn missing_credentials_a_missing_bucket_and_an_unknown_site_are_named() {
    // No keys: said at once, not as a refusal from an EC2 metadata address.
    let url = format!("s3://{}/{}", bucket(), unique("creds"));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_freezer"));
    cmd.args(["init", "--repo", &url])
        .env("FREEZER_CONFIG", "/dev/null")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY");
    services();
    let out = cmd.env_remove("AWS_ACCESS_KEY_ID").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no S3 credentials") && stderr(&out).contains("AWS_ACCESS_KEY_ID"),
        "{}",
        stderr(&out)
    );

    let url = format!("s3://{}/x", unique("no-such-bucket"));
    let out = freezer(&["init", "--repo", &url]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("does not exist"), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("create the bucket"),
        "{}",
        stderr(&out)
    );

    // A typo in a monitored verify must not pass.
    let repo = TestRepo::local().init();
    let work = tempfile::tempdir().unwrap();
    small_tree(work.path());
    freeze(&repo, "real", &[work.path()]);
    let out = freezer(&["verify", "nosuchsite", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(stderr(&out).contains("nosuchsite"), "{}", stderr(&out));
    assert_ok(&freezer(&["verify", "real", "--repo", &repo.url]));
}

/// The small layer of a second freeze (one changed file), damaged anywhere: the thaw
/// exits 4 (damaged data), never 1, and writes nothing.
#[test]
fn a_damaged_changeset_layer_exits_4_wherever_it_is_hit() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    small_tree(&src);
    let repo = TestRepo::local().init();
    freeze(&repo, "site", &[&src]);
    let store = repo.store();
    let before: std::collections::BTreeSet<String> = store
        .list("blobs/")
        .unwrap()
        .into_iter()
        .map(|o| o.key)
        .collect();
    fs::write(src.join("index.html"), "<p>changed</p>\n".repeat(300)).unwrap();
    freeze(&repo, "site", &[&src]);
    let new: Vec<(String, u64)> = store
        .list("blobs/")
        .unwrap()
        .into_iter()
        .filter(|o| !before.contains(&o.key))
        .map(|o| (o.key, o.size))
        .collect();
    // The changeset layer: a new blob that the new manifest lists as a tar+zstd layer.
    let layers: Vec<String> = new
        .iter()
        .filter_map(|(k, _)| {
            serde_json::from_slice::<serde_json::Value>(&store.get(k).unwrap()).ok()
        })
        .filter_map(|m| m["layers"].as_array().cloned())
        .flatten()
        .filter(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd")
        .map(|l| format!("blobs/{}", l["digest"].as_str().unwrap().replace(':', "/")))
        .collect();
    let (layer, size) = new
        .iter()
        .find(|(k, _)| layers.contains(k))
        .unwrap_or_else(|| panic!("no new layer among {new:?} (layers {layers:?})"))
        .clone();
    let original = store.get(&layer).unwrap();
    for i in 0..12u64 {
        let mut damaged = original.clone();
        let at = (i * 7919 + 13) % size;
        damaged[at as usize] ^= 1 << (i % 8);
        store.delete(&layer).unwrap();
        store.put(&layer, &damaged).unwrap();
        let into = work.path().join(unique("thaw"));
        let out = thaw_into(&repo, "site", &into);
        assert_eq!(
            out.status.code(),
            Some(4),
            "byte {at} of {size} flipped: {}",
            stderr(&out)
        );
        assert!(
            !into.exists(),
            "byte {at}: the thaw wrote {}",
            into.display()
        );
    }
    restore(store.as_ref(), &layer, &original);
    let into = work.path().join(unique("thaw"));
    assert_ok(&thaw_into(&repo, "site", &into));
}

#[test]
fn init_refuses_an_existing_repository() {
    let repo = TestRepo::local().init();
    let out = freezer(&["init", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(7));
    assert!(stderr(&out).contains("already holds a freezer repository"));
}

/// What a SIGKILLed run leaves (it cannot clean up) is removed by the next run on the
/// same repository or destination: a freeze's spooled files in the repository's tmp/, a
/// thaw's staging directory beside its destination, a dead process's lock.
#[test]
#[cfg_attr(
    not(feature = "fault-injection"),
    ignore = "needs the fault-injection feature (scripts/test)"
)]
fn leftovers_of_killed_runs_are_removed_by_the_next_run() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    small_tree(&src);
    // Enough data that a thaw is still writing when it is killed.
    fs::write(src.join("big.bin"), noise(96 << 20, 0x2545f4914f6cdd1d)).unwrap();
    let repo = TestRepo::local().init();
    let tmp = repo.local.as_ref().unwrap().join("tmp");
    let spooled = || -> Vec<String> {
        fs::read_dir(&tmp)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("freezer-spool+"))
                    .collect()
            })
            .unwrap_or_default()
    };

    // A freeze that dies after its first upload leaves spooled files (its tree index at
    // least) and its lock.
    let path = src.display().to_string();
    let out = freezer_env(
        &["freeze", "site", "--repo", &repo.url, "--path", &path],
        &[("FREEZER_FAULT_ABORT_AFTER_UPLOADS", "1")],
    );
    assert!(!out.status.success());
    assert!(
        !spooled().is_empty(),
        "the killed freeze left nothing to find"
    );
    let locks = repo.store().list("locks/").unwrap();
    assert_eq!(locks.len(), 1, "{locks:?}");
    let report = freeze(&repo, "site", &[&src]);
    assert!(report["snapshot"].is_string());
    assert_eq!(spooled(), Vec::<String>::new(), "left in {}", tmp.display());
    // The dead run's lock is gone too, and the finished run removed its own.
    let locks = repo.store().list("locks/").unwrap();
    assert_eq!(locks, vec![], "{locks:?}");

    // A thaw killed while it writes leaves its staging directory beside the destination.
    let parent = work.path().join("restore");
    fs::create_dir_all(&parent).unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_freezer"));
    cmd.args([
        "thaw",
        "site",
        "--repo",
        &repo.url,
        "--into",
        &parent.display().to_string(),
    ])
    .env("FREEZER_CONFIG", "/dev/null");
    // --into puts the tree at PARENT/<original path>; aim at that directory's parent.
    let into_dest = under(&parent, &src);
    let into_parent = into_dest.parent().unwrap().to_path_buf();
    let mut child = cmd.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let left = loop {
        let found: Vec<_> = fs::read_dir(&into_parent)
            .map(|d| {
                d.flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .starts_with(".freezer-thaw+")
                    })
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default();
        if !found.is_empty() {
            break found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no staging directory appeared"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        left[0].exists(),
        "the staging directory should be left by SIGKILL"
    );
    assert!(!into_dest.exists(), "the destination must not exist yet");
    let out = freezer(&[
        "thaw",
        "site",
        "--repo",
        &repo.url,
        "--into",
        &parent.display().to_string(),
        "--json",
    ]);
    let report = json(&out);
    assert_eq!(
        report["removed_leftovers"][0]["path"],
        left[0].display().to_string(),
        "{report}"
    );
    assert!(!left[0].exists());
    assert_same_tree(&src, &into_dest);
}
