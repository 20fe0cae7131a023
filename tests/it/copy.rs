//! `freezer copy`: snapshots into a second repository, local and on Garage, plain and
//! encrypted; what a second copy uploads, what a killed copy leaves, and that the copy
//! restores the same bytes.

use std::fs;
use std::path::Path;
use std::process::Output;

use crate::common::*;
use crate::encryption::{keygen, stored_files};

/// `freezer copy ARGS --repo FROM --to TO --json`, with extra arguments and environment.
fn copy(from: &TestRepo, to: &TestRepo, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = vec!["copy"];
    all.extend(args);
    all.extend(["--repo", &from.url, "--to", &to.url, "--json"]);
    freezer_env(&all, env)
}

/// The snapshot ids of a repository, oldest first.
fn ids(repo: &TestRepo, env: &[(&str, &str)]) -> Vec<String> {
    let out = freezer_env(&["snapshots", "--repo", &repo.url, "--json"], env);
    json(&out)
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            format!(
                "{}:{}",
                s["site"].as_str().unwrap(),
                s["id"].as_str().unwrap()
            )
        })
        .collect()
}

fn blob_count(repo: &TestRepo) -> usize {
    repo.store().list("blobs/").unwrap().len()
}

/// A site tree with every case a restore must get right and a file large enough to be
/// copied through a spool file; frozen twice into `repo` (the second time changed).
fn two_snapshots(repo: &TestRepo, root: &Path, env: &[(&str, &str)]) -> std::path::PathBuf {
    let tree = root.join("site");
    every_case_tree(&tree);
    fs::write(tree.join("big.bin"), noise(9 << 20, 0x9e3779b97f4a7c15)).unwrap();
    let path = tree.display().to_string();
    let args = ["freeze", "shop", "--repo", &repo.url, "--path", &path, "-q"];
    assert_ok(&freezer_env(&args, env));
    fs::write(tree.join("new.txt"), b"written after the first freeze").unwrap();
    assert_ok(&freezer_env(&args, env));
    tree
}

fn assert_thaws_to(repo: &TestRepo, tree: &Path, env: &[(&str, &str)]) {
    let out = tempfile::tempdir().unwrap();
    let into = out.path().display().to_string();
    let args = ["thaw", "shop", "--repo", &repo.url, "--into", &into];
    assert_ok(&freezer_env(&args, env));
    assert_same_tree(tree, &under(out.path(), tree));
}

#[test]
fn copy_goes_local_to_garage_to_a_second_prefix_and_a_second_copy_uploads_nothing() {
    let work = tempfile::tempdir().unwrap();
    let local = TestRepo::local().init();
    let tree = two_snapshots(&local, work.path(), &[]);
    let (a, b) = (TestRepo::s3().init(), TestRepo::s3().init());

    let r = json(&copy(&local, &a, &["--all"], &[]));
    assert_eq!(r["snapshots"].as_array().unwrap().len(), 2, "{r}");
    assert!(r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "copied"));
    let r = json(&copy(&a, &b, &["shop"], &[]));
    assert!(r["bytes_copied"].as_u64().unwrap() > 9 << 20, "{r}");
    assert_eq!(ids(&b, &[]), ids(&local, &[]));

    // Again: every snapshot is there already; nothing is uploaded or even looked at.
    let before = blob_count(&b);
    let r = json(&copy(&a, &b, &["shop"], &[]));
    assert_eq!(r["blobs_copied"], 0, "{r}");
    assert!(r["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .all(|s| s["status"] == "present"));
    assert_eq!(blob_count(&b), before);

    let v = json(&freezer(&["verify", "--repo", &b.url, "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["snapshots"], 2);
    assert_thaws_to(&b, &tree, &[]);

    // A new snapshot at the source: only what it adds goes up.
    fs::write(tree.join("newer.txt"), b"one more file").unwrap();
    let path = tree.display().to_string();
    assert_ok(&freezer(&[
        "freeze", "shop", "--repo", &local.url, "--path", &path, "-q",
    ]));
    let r = json(&copy(&local, &b, &["shop:latest"], &[]));
    assert_eq!(r["snapshots"][0]["status"], "copied", "{r}");
    assert!(r["bytes_copied"].as_u64().unwrap() < 1 << 20, "{r}");
    assert!(r["blobs_present"].as_u64().unwrap() >= 1, "{r}");
    assert_thaws_to(&b, &tree, &[]);

    // The target's locks are a freeze's: a prune running there stops the copy.
    let lock = serde_json::json!({
        "kind": "prune", "host": "other-host", "pid": 42,
        "started": "2026-11-22T00:00:00Z", "released": false
    });
    let key = "locks/prune-repository-cccc.json";
    b.store()
        .put(key, &serde_json::to_vec(&lock).unwrap())
        .unwrap();
    let out = copy(&local, &b, &["--all", "--lock-wait", "1s"], &[]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("prune"), "{}", stderr(&out));
    b.store().delete(key).unwrap();
}

#[test]
fn copy_reseals_for_an_encrypted_target_and_refuses_to_decrypt_into_a_plain_one() {
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let (id2, r2) = keygen(keys.path(), "id2.txt");
    let (id1, id2) = (id1.display().to_string(), id2.display().to_string());
    let work = tempfile::tempdir().unwrap();
    let plain = TestRepo::local().init();
    let tree = two_snapshots(&plain, work.path(), &[]);
    // The records of a plain repository name the site's directory as it is.
    let needle = tree.display().to_string();
    let holds = |bytes: &[u8]| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(stored_files(plain.local.as_ref().unwrap())
        .iter()
        .any(|(_, b)| holds(b)));

    // plain -> encrypted: sealed with the target's keys, nothing readable at rest.
    let enc1 = TestRepo::local().init_encrypted(&r1);
    let r = json(&copy(&plain, &enc1, &["--all", "--to-identity", &id1], &[]));
    assert_eq!(r["encrypted"], true, "{r}");
    for (path, bytes) in stored_files(enc1.local.as_ref().unwrap()) {
        let name = path.display().to_string();
        assert!(!name.contains("shop"), "{name} names the site");
        assert!(!holds(&bytes), "{name} holds plaintext");
    }
    let with1 = [("FREEZER_IDENTITY", id1.as_str())];
    assert_eq!(ids(&enc1, &with1), ids(&plain, &[]));
    assert_eq!(
        blob_count(&enc1),
        blob_count(&plain),
        "deduplication is kept"
    );
    assert_thaws_to(&enc1, &tree, &with1);

    // encrypted -> plain: refused before anything is written.
    let plain2 = TestRepo::local().init();
    let out = copy(&enc1, &plain2, &["--all"], &with1);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("plaintext"), "{}", stderr(&out));
    assert!(ids(&plain2, &[]).is_empty());
    assert_eq!(blob_count(&plain2), 0);

    // encrypted -> encrypted with other keys: opened with one, sealed with the other.
    let enc2 = TestRepo::local().init_encrypted(&r2);
    let out = copy(&enc1, &enc2, &["shop", "--to-identity", &id2], &with1);
    json(&out);
    let with2 = [("FREEZER_IDENTITY", id2.as_str())];
    assert_eq!(ids(&enc2, &with2), ids(&plain, &[]));
    assert_eq!(blob_count(&enc2), blob_count(&plain));
    let v = json(&freezer_env(
        &["verify", "--repo", &enc2.url, "--json"],
        &with2,
    ));
    assert_eq!(v["ok"], true, "{v}");
    assert_thaws_to(&enc2, &tree, &with2);
    // The first key does not open the copy: its keyring is its own.
    let out = freezer_env(&["snapshots", "--repo", &enc2.url], &with1);
    assert!(!out.status.success());

    // encrypted -> encrypted with the same key (no --to-identity: the source's opens it).
    let enc3 = TestRepo::s3().init_encrypted(&r1);
    json(&copy(&enc1, &enc3, &["--all"], &with1));
    assert_thaws_to(&enc3, &tree, &with1);
}

#[test]
fn a_copy_killed_midway_shows_nothing_and_a_rerun_completes() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("site");
    fs::create_dir_all(&tree).unwrap();
    for i in 0..3u64 {
        fs::write(tree.join(format!("part{i}.bin")), noise(120 << 20, 7 + i)).unwrap();
    }
    let local = TestRepo::local().init();
    let path = tree.display().to_string();
    assert_ok(&freezer(&[
        "freeze", "shop", "--repo", &local.url, "--path", &path, "-q",
    ]));
    let target = TestRepo::s3().init();

    let mut child = spawn_freezer(
        &["copy", "--all", "--repo", &local.url, "--to", &target.url],
        &[],
    );
    let store = target.store();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if !store.list("blobs/").unwrap().is_empty() {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the copy ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "no blob reached the target"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no cleanup of any kind
    child.wait().unwrap();
    assert!(
        ids(&target, &[]).is_empty(),
        "a killed copy left a snapshot"
    );
    let uploaded = blob_count(&target);
    assert!(uploaded >= 1);

    let r = json(&copy(&local, &target, &["--all"], &[]));
    assert_eq!(r["snapshots"][0]["status"], "copied", "{r}");
    assert!(
        r["blobs_present"].as_u64().unwrap() >= 1,
        "the re-run started over: {r}"
    );
    let v = json(&freezer(&["verify", "--repo", &target.url, "--json"]));
    assert_eq!(v["ok"], true, "{v}");
    assert_thaws_to(&target, &tree, &[]);
}
