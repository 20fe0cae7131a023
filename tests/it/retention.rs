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
        r.write_record("hist", &real.record, UNIX_EPOCH + Duration::from_secs(*t))
            .unwrap();
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
