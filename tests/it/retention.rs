//! Retention: `forget` over a synthetic history keeps exactly what the policy says.

use std::time::{Duration, UNIX_EPOCH};

use freezer::repo::Repository;

use crate::common::*;

#[test]
fn forget_keeps_exactly_what_the_policy_says_over_90_days() {
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), b"hello").unwrap();
    freeze(&repo, "hist", &[dir.path()]);

    // 90 nightly snapshots at 03:00 UTC from 2026-08-01 to 2026-10-29, and two more on
    // the last day at 13:00 and 18:00: the records of one real freeze, written under
    // those times.
    let r = Repository::open(repo.store()).unwrap();
    let real = r.find_snapshot("hist", None).unwrap();
    let first = 1_785_553_200u64; // 2026-08-01T03:00:00Z
    let mut times: Vec<u64> = (0..90).map(|d| first + d * 86_400).collect();
    let last_day = 1_793_232_000u64; // 2026-10-29T00:00:00Z
    times.extend([last_day + 13 * 3600, last_day + 18 * 3600]);
    for t in &times {
        let at = UNIX_EPOCH + Duration::from_secs(*t);
        let mut record = real.record.clone();
        record.annotations.insert(
            "org.opencontainers.image.created".into(),
            freezer::format::rfc3339(at),
        );
        r.write_record("hist", &record, at).unwrap();
    }

    r.store()
        .delete(&format!("snapshots/hist/{}.json", real.id))
        .unwrap();

    let args = [
        "forget",
        "hist",
        "--repo",
        &repo.url,
        "--keep-last",
        "3",
        "--keep-daily",
        "7",
        "--keep-weekly",
        "4",
        "--keep-monthly",
        "3",
        "--json",
    ];
    // A dry run removes nothing.
    let mut dry = args.to_vec();
    dry.push("--dry-run");
    let plan = json(&freezer(&dry));
    assert_eq!(plan["removed"].as_array().unwrap().len(), 79);
    assert_eq!(
        json(&freezer(&[
            "snapshots",
            "hist",
            "--repo",
            &repo.url,
            "--json"
        ]))
        .as_array()
        .unwrap()
        .len(),
        92
    );

    let report = json(&freezer(&args));
    let kept: Vec<String> = report["kept"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["id"].as_str().unwrap()[..16].to_string())
        .collect();
    // Worked out by hand: the last 3; the newest of each of 7 days (10-23..10-29); of 4
    // ISO weeks (44: 10-29, 43: 10-25, 42: 10-18, 41: 10-11); of 3 months (10-29, 09-30,
    // 08-31).
    let expected = [
        "20261029T180000Z",
        "20261029T130000Z",
        "20261029T030000Z",
        "20261028T030000Z",
        "20261027T030000Z",
        "20261026T030000Z",
        "20261025T030000Z",
        "20261024T030000Z",
        "20261023T030000Z",
        "20261018T030000Z",
        "20261011T030000Z",
        "20260930T030000Z",
        "20260831T030000Z",
    ];
    assert_eq!(kept, expected);
    assert_eq!(
        report["kept"][0]["reasons"],
        serde_json::json!(["last", "daily", "weekly", "monthly"])
    );
    assert_eq!(report["removed"].as_array().unwrap().len(), 79);
    let left = json(&freezer(&[
        "snapshots",
        "hist",
        "--repo",
        &repo.url,
        "--json",
    ]));
    assert_eq!(left.as_array().unwrap().len(), 13);
    assert_ok(&freezer(&["verify", "hist", "--repo", &repo.url]));
}

#[test]
fn forget_without_a_policy_removes_nothing() {
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a"), b"a").unwrap();
    freeze(&repo, "site", &[dir.path()]);
    let out = freezer(&["forget", "site", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--keep"), "{}", stderr(&out));
    let left = json(&freezer(&[
        "snapshots",
        "site",
        "--repo",
        &repo.url,
        "--json",
    ]));
    assert_eq!(left.as_array().unwrap().len(), 1);
}

fn random_file(path: &std::path::Path, len: usize) {
    let mut data = vec![0u8; len];
    rand::Rng::fill(&mut rand::thread_rng(), &mut data[..]);
    std::fs::write(path, data).unwrap();
}

fn snapshot_count(repo: &TestRepo, site: &str) -> usize {
    json(&freezer(&[
        "snapshots",
        site,
        "--repo",
        &repo.url,
        "--json",
    ]))
    .as_array()
    .unwrap()
    .len()
}

#[test]
fn prune_frees_what_forget_released_and_every_snapshot_still_verifies() {
    let shop = unique("pruneshop").replace('-', "_");
    crate::database::sql(
        None,
        &format!("DROP DATABASE IF EXISTS `{shop}`; CREATE DATABASE `{shop}`;"),
    );
    let script =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/shop.sql")).unwrap();
    crate::database::sql(Some(&shop), &script);
    for repo in TestRepo::both() {
        let repo = repo.init();
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("site");
        std::fs::create_dir(&tree).unwrap();
        random_file(&tree.join("a.bin"), 1 << 20);
        random_file(&tree.join("b.bin"), 1 << 20);
        let db = crate::database::db_url(&shop);
        let site_args = ["--path", tree.to_str().unwrap(), "--db", db.as_str()];
        let freeze_site = || {
            let mut a = vec!["freeze", "site", "--repo", &repo.url, "--json"];
            a.extend(site_args);
            json(&freezer(&a))
        };
        // Every byte changes twice: the third freeze finds the chain mostly dead and
        // writes a new full layer, so the old layers belong to forgotten snapshots only.
        freeze_site();
        for _ in 0..2 {
            random_file(&tree.join("a.bin"), 1 << 20);
            random_file(&tree.join("b.bin"), 1 << 20);
            freeze_site();
        }
        assert_ok(&freezer(&[
            "forget",
            "site",
            "--repo",
            &repo.url,
            "--keep-last",
            "1",
        ]));

        // Phase one marks and deletes nothing; phase two (grace 0) deletes.
        let mark = json(&freezer(&[
            "prune", "--repo", &repo.url, "--grace", "0", "--json",
        ]));
        assert_eq!(mark["deleted_blobs"], 0, "{mark}");
        assert!(mark["marked_blobs"].as_u64().unwrap() >= 3, "{mark}");
        let sweep = json(&freezer(&[
            "prune", "--repo", &repo.url, "--grace", "0", "--json",
        ]));
        assert_eq!(sweep["deleted_blobs"], mark["marked_blobs"], "{sweep}");
        assert!(sweep["freed_bytes"].as_u64().unwrap() >= 2 << 20, "{sweep}");
        assert_eq!(sweep["unreferenced_blobs"], mark["marked_blobs"]);
        let after = json(&freezer(&[
            "prune", "--repo", &repo.url, "--grace", "0", "--json",
        ]));
        assert_eq!(after["unreferenced_blobs"], 0, "{after}");

        assert_ok(&freezer(&["verify", "--repo", &repo.url]));
        let out = tempfile::tempdir().unwrap();
        let copy = unique("prunecopy").replace('-', "_");
        let thaw = freezer(&[
            "thaw",
            "site",
            "--repo",
            &repo.url,
            "--into",
            out.path().to_str().unwrap(),
            "--db",
            &crate::database::db_url(&copy),
        ]);
        assert_ok(&thaw);
        assert_same_tree(&tree, &under(out.path(), &tree));
        crate::database::sql(None, &format!("DROP DATABASE `{copy}`;"));
    }
    crate::database::sql(None, &format!("DROP DATABASE `{shop}`;"));
}

#[test]
fn locks_keep_prune_and_freezes_of_one_site_apart() {
    let repo = TestRepo::local().init();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("f"), b"x").unwrap();
    let path = dir.path().to_str().unwrap();
    let store = repo.store();
    let lock = |kind: &str, site: Option<&str>, released: bool| {
        serde_json::to_vec(&serde_json::json!({
            "kind": kind, "site": site, "host": "other-host", "pid": 42,
            "started": "2026-11-22T00:00:00Z", "released": released
        }))
        .unwrap()
    };
    // A freeze of site x is running elsewhere: prune and a freeze of x wait; y goes ahead.
    store
        .put(
            "locks/freeze-x-aaaa.json",
            &lock("freeze", Some("x"), false),
        )
        .unwrap();
    let out = freezer(&["prune", "--repo", &repo.url]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("freeze of site x"),
        "{}",
        stderr(&out)
    );
    let out = freezer(&["freeze", "x", "--repo", &repo.url, "--path", path]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert_ok(&freezer(&[
        "freeze", "y", "--repo", &repo.url, "--path", path,
    ]));
    // A freeze lists only the locks of its own site and the prunes' by key prefix. Keys
    // of site y-2 begin like y's, yet its lock stops y-2 alone; x's lock does not stop x-2.
    store
        .put(
            "locks/freeze-y-2-cccc.json",
            &lock("freeze", Some("y-2"), false),
        )
        .unwrap();
    assert_ok(&freezer(&[
        "freeze", "y", "--repo", &repo.url, "--path", path,
    ]));
    assert_ok(&freezer(&[
        "freeze", "x-2", "--repo", &repo.url, "--path", path,
    ]));
    let out = freezer(&["freeze", "y-2", "--repo", &repo.url, "--path", path]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    store.delete("locks/freeze-y-2-cccc.json").unwrap();
    // A copy into this repository holds site y as a freeze would.
    store
        .put("locks/copy-y-dddd.json", &lock("copy", Some("y"), false))
        .unwrap();
    let out = freezer(&["freeze", "y", "--repo", &repo.url, "--path", path]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("copy"), "{}", stderr(&out));
    store.delete("locks/copy-y-dddd.json").unwrap();
    // Released: both proceed, and prune removes the released lock object.
    store
        .put("locks/freeze-x-aaaa.json", &lock("freeze", Some("x"), true))
        .unwrap();
    assert_ok(&freezer(&[
        "freeze", "x", "--repo", &repo.url, "--path", path,
    ]));
    let p = json(&freezer(&["prune", "--repo", &repo.url, "--json"]));
    assert!(p["removed_leftovers"].as_u64().unwrap() >= 1, "{p}");
    assert!(
        store.list("locks/").unwrap().is_empty(),
        "released locks were left behind"
    );

    // A prune running elsewhere stops freezes; once its lock is stale (a dead run), not.
    store
        .put(
            "locks/prune-repository-bbbb.json",
            &lock("prune", None, false),
        )
        .unwrap();
    let out = freezer(&[
        "freeze",
        "x",
        "--repo",
        &repo.url,
        "--path",
        path,
        "--lock-wait",
        "2s",
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("prune"), "{}", stderr(&out));
    let file = repo
        .local
        .as_ref()
        .unwrap()
        .join("locks/prune-repository-bbbb.json");
    let old =
        filetime::FileTime::from_unix_time(filetime::FileTime::now().unix_seconds() - 3 * 3600, 0);
    filetime::set_file_mtime(&file, old).unwrap();
    assert_ok(&freezer(&[
        "freeze", "x", "--repo", &repo.url, "--path", path,
    ]));
    assert_eq!(snapshot_count(&repo, "x"), 2);
}

/// The dangerous case for a prune: a freeze that reuses blobs which an earlier prune
/// marked. Prunes run in a loop while the freeze runs; whatever the interleaving, the
/// snapshot must be complete.
#[test]
fn prune_racing_a_freeze_loses_nothing() {
    let repo = TestRepo::s3().init();
    let dir = tempfile::tempdir().unwrap();
    let tree = dir.path().join("t");
    std::fs::create_dir(&tree).unwrap();
    for i in 0..40 {
        random_file(&tree.join(format!("f{i}")), 1 << 20);
    }
    let path = tree.to_str().unwrap();
    assert_ok(&freezer(&[
        "freeze", "old", "--repo", &repo.url, "--path", path,
    ]));
    // Forget it by hand (forget keeps at least one): its blobs become unreferenced, then marked.
    for r in repo.store().list("snapshots/old/").unwrap() {
        repo.store().delete(&r.key).unwrap();
    }
    let mark = json(&freezer(&[
        "prune", "--repo", &repo.url, "--grace", "0", "--json",
    ]));
    assert!(mark["marked_blobs"].as_u64().unwrap() >= 3, "{mark}");

    let bin = env!("CARGO_BIN_EXE_freezer");
    let mut child = std::process::Command::new(bin)
        .args(["freeze", "new", "--repo", &repo.url, "--path", path, "-q"])
        .env("FREEZER_CONFIG", "/dev/null")
        .spawn()
        .unwrap();
    let mut prunes = (0, 0);
    let status = loop {
        let out = freezer(&["prune", "--repo", &repo.url, "--grace", "0"]);
        match out.status.code() {
            Some(0) => prunes.0 += 1,
            Some(5) => prunes.1 += 1,
            other => panic!("prune failed with {other:?}: {}", stderr(&out)),
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        // Gaps between prunes, as between real runs: the freeze waits for one to pass.
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert!(status.success(), "the freeze failed");
    assert!(
        prunes.0 + prunes.1 >= 1,
        "the prunes did not overlap the freeze: {prunes:?}"
    );
    assert_ok(&freezer(&["verify", "--repo", &repo.url]));
    let out = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, "new", out.path()));
    assert_same_tree(&tree, &under(out.path(), &tree));
}

#[test]
fn concurrent_freezes_of_two_sites_both_land_and_one_site_runs_once() {
    let repo = TestRepo::s3().init();
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    for t in [&a, &b] {
        std::fs::create_dir(t).unwrap();
        for i in 0..48 {
            random_file(&t.join(format!("f{i}")), 1 << 20);
        }
    }
    let bin = env!("CARGO_BIN_EXE_freezer");
    let spawn = |site: &str, path: &std::path::Path| {
        std::process::Command::new(bin)
            .args([
                "freeze",
                site,
                "--repo",
                &repo.url,
                "--path",
                path.to_str().unwrap(),
            ])
            .env("FREEZER_CONFIG", "/dev/null")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (pa, pb) = (spawn("site-a", &a), spawn("site-b", &b));
    let (oa, ob) = (
        pa.wait_with_output().unwrap(),
        pb.wait_with_output().unwrap(),
    );
    assert_ok(&oa);
    assert_ok(&ob);
    assert_eq!(snapshot_count(&repo, "site-a"), 1);
    assert_eq!(snapshot_count(&repo, "site-b"), 1);

    // The same site twice at once: one freezes, the other is told the site is busy.
    for t in [&a, &b] {
        for i in 0..48 {
            random_file(&t.join(format!("f{i}")), 1 << 20);
        }
    }
    let (p1, p2) = (spawn("site-a", &a), spawn("site-a", &b));
    let (o1, o2) = (
        p1.wait_with_output().unwrap(),
        p2.wait_with_output().unwrap(),
    );
    // Never both refused, never both at once: one freezes and the other is told the site
    // is busy, or (when the two took their locks in the same tick of the store's clock and
    // both backed off) the one that retried later ran after the first had finished.
    let mut codes = [o1.status.code(), o2.status.code()];
    codes.sort();
    assert!(
        codes == [Some(0), Some(0)] || codes == [Some(0), Some(5)],
        "{codes:?}\n{}\n{}",
        stderr(&o1),
        stderr(&o2)
    );
    if codes[1] == Some(5) {
        let busy = if o1.status.code() == Some(5) {
            &o1
        } else {
            &o2
        };
        assert!(
            stderr(busy).contains("freeze of site site-a"),
            "{}",
            stderr(busy)
        );
        assert_eq!(snapshot_count(&repo, "site-a"), 2);
    } else {
        assert_eq!(snapshot_count(&repo, "site-a"), 3);
    }
    assert_ok(&freezer(&["verify", "--repo", &repo.url]));
}
