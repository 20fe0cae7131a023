//! What a freeze leaves out (`--exclude`, `--exclude-file`, `--exclude-caches`,
//! `--exclude-if-present`, the config file's `exclude`): exactly the expected set is
//! frozen, changing the rules between nights loses and resurrects nothing, `--dry-run`
//! lists what is left out, and `thaw --replace` keeps what the snapshot never covered.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::common::*;

const CACHEDIR_TAG: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55\n# a cache\n";

/// A WordPress-like tree: caches, logs, a tagged cache directory, a fake tag, a marked
/// directory, nested negations and a name that is not UTF-8.
fn site_tree(root: &Path) {
    let files: &[(&[u8], &[u8])] = &[
        (b"index.php", b"<?php"),
        (b"wp-content/uploads/2024/photo.jpg", b"jpeg"),
        (b"wp-content/uploads/2024/debug.log", b"log in uploads"),
        (b"wp-content/cache/page/a.html", b"cached"),
        (b"wp-content/cache/page/b.html", b"cached too"),
        (b"logs/access.log", b"GET /"),
        (b"logs/keep.log", b"kept by a negation"),
        (b"logs/sub/old.log", b"old"),
        (b"tmp/session/sess_1", b"session"),
        (b"thumbs/CACHEDIR.TAG", CACHEDIR_TAG),
        (b"thumbs/t1.png", b"thumb"),
        (b"fake/CACHEDIR.TAG", b"not a cache directory tag"),
        (b"fake/data.bin", b"kept: the tag is not valid"),
        (b"private/.nobackup", b""),
        (b"private/secret.txt", b"left out by a marker"),
        (b"node_modules/x/index.js", b"module"),
        (b"app/node_modules/y/index.js", b"nested module"),
        (b"caf\xe9.tmp", b"latin-1 name, excluded by *.tmp"),
        (b"caf\xe9.txt", b"latin-1 name, kept"),
    ];
    for (rel, data) in files {
        let path = root.join(OsStr::from_bytes(rel));
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(&path, data).unwrap();
    }
}

/// Every path (files and directories) under `root`, relative, as bytes.
fn listing(root: &Path) -> BTreeSet<Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeSet<Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            out.insert(
                p.strip_prefix(root)
                    .unwrap()
                    .as_os_str()
                    .as_bytes()
                    .to_vec(),
            );
            if fs::symlink_metadata(&p).unwrap().is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, &mut out);
    out
}

fn set(paths: &[&[u8]]) -> BTreeSet<Vec<u8>> {
    paths.iter().map(|p| p.to_vec()).collect()
}

/// Freezes `src` as `site` with `flags`, thaws it into a new directory, and returns what
/// the thaw restored.
fn night(repo: &TestRepo, site: &str, src: &Path, flags: &[&str]) -> BTreeSet<Vec<u8>> {
    let mut args = vec!["freeze", site, "--repo", &repo.url, "--json"];
    let path = src.to_str().unwrap();
    args.extend(["--path", path]);
    args.extend(flags);
    json(&freezer(&args));
    let out = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(repo, site, out.path()));
    listing(&under(out.path(), src))
}

const RULES: &[&str] = &[
    "--exclude",
    "*.log",
    "--exclude",
    "!keep.log",
    "--exclude",
    "wp-content/cache/",
    "--exclude",
    "/tmp",
    "--exclude",
    "**/node_modules",
    "--exclude",
    "*.tmp",
    "--exclude-caches",
    "--exclude-if-present",
    ".nobackup",
];

/// What RULES leave in the site tree.
fn expected_with_rules() -> BTreeSet<Vec<u8>> {
    set(&[
        b"index.php",
        b"wp-content",
        b"wp-content/uploads",
        b"wp-content/uploads/2024",
        b"wp-content/uploads/2024/photo.jpg",
        b"logs",
        b"logs/keep.log",
        b"logs/sub",
        // Marked directories stay, empty.
        b"thumbs",
        b"fake",
        b"fake/CACHEDIR.TAG",
        b"fake/data.bin",
        b"private",
        b"app",
        b"caf\xe9.txt",
    ])
}

#[test]
fn exactly_the_expected_set_is_frozen_and_rules_can_change_between_nights() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    site_tree(&src);
    let everything = listing(&src);
    let repo = TestRepo::local().init();

    // Night 1: the rules. Exactly the reference set.
    let first = night(&repo, "wp", &src, RULES);
    assert_eq!(first, expected_with_rules());

    // Night 2: the same rules from a file and the config file's rules for the site; the
    // cache and logs rules dropped, node_modules still out. What was excluded comes back,
    // read for the first time.
    let rules = work.path().join("rules");
    fs::write(&rules, "# what stays out\n**/node_modules\n\n*.tmp\n").unwrap();
    let config = work.path().join("freezer.toml");
    fs::write(
        &config,
        "[sites.wp]\nexclude = [\"/tmp\"]\nexclude_if_present = [\".nobackup\"]\n",
    )
    .unwrap();
    let mut args = vec![
        "freeze",
        "wp",
        "--repo",
        &repo.url,
        "--json",
        "--path",
        src.to_str().unwrap(),
        "--exclude-file",
        rules.to_str().unwrap(),
    ];
    args.extend(["--config", config.to_str().unwrap()]);
    let report = json(&freezer(&args));
    assert!(
        report["trees"][0]["files_read"].as_u64().unwrap() >= 7,
        "{report:#}"
    );
    let out = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, "wp", out.path()));
    let second = listing(&under(out.path(), &src));
    let mut expected = everything.clone();
    for gone in [
        &b"tmp"[..],
        b"tmp/session",
        b"tmp/session/sess_1",
        b"private/.nobackup",
        b"private/secret.txt",
        b"node_modules",
        b"node_modules/x",
        b"node_modules/x/index.js",
        b"app/node_modules",
        b"app/node_modules/y",
        b"app/node_modules/y/index.js",
        b"caf\xe9.tmp",
    ] {
        assert!(expected.remove(gone), "{}", String::from_utf8_lossy(gone));
    }
    assert_eq!(second, expected);

    // Night 3: no rules. Everything, as on disk; and night 1's snapshot still thaws to
    // exactly its set (nothing was lost to the later nights).
    let third = night(&repo, "wp", &src, &[]);
    assert_eq!(third, everything);
    let snaps = json(&freezer(&[
        "snapshots",
        "wp",
        "--repo",
        &repo.url,
        "--json",
    ]));
    let first_id = snaps[0]["id"].as_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, &format!("wp:{first_id}"), out.path()));
    assert_eq!(listing(&under(out.path(), &src)), expected_with_rules());
    // The bytes of what came back are the source's.
    let out = tempfile::tempdir().unwrap();
    assert_ok(&thaw_into(&repo, "wp", out.path()));
    assert_same_tree(&src, &under(out.path(), &src));
}

#[test]
fn dry_run_lists_what_is_left_out() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    site_tree(&src);
    let repo = TestRepo::local().init();
    let path = src.to_str().unwrap();
    let mut args = vec![
        "freeze",
        "wp",
        "--repo",
        &repo.url,
        "--path",
        path,
        "--dry-run",
    ];
    args.extend(RULES);
    let out = freezer(&args);
    assert_ok(&out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("tree site leaves out 10 paths (13 files, "),
        "{text}"
    );
    for line in [
        "wp-content/cache ",
        "thumbs ",
        "private ",
        "node_modules ",
        "app/node_modules ",
        "logs/access.log ",
    ] {
        assert!(text.contains(line), "{line:?} missing in:\n{text}");
    }
    args.push("--json");
    let plan = json(&freezer(&args));
    let excluded = plan["excluded"][0]["excluded"].as_array().unwrap();
    let cache = excluded
        .iter()
        .find(|e| e["path"] == "wp-content/cache")
        .unwrap();
    assert_eq!(cache["files"], 2);
    assert_eq!(cache["bytes"], 16);
    assert_eq!(cache["by"], "pattern");
    let thumbs = excluded.iter().find(|e| e["path"] == "thumbs").unwrap();
    assert_eq!(thumbs["by"], "marker");
    assert_eq!(thumbs["files"], 2, "the tag and the thumbnail");
    // A dry run writes nothing.
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0);
}

#[test]
fn thaw_replace_keeps_what_the_snapshot_excluded_unless_asked() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    site_tree(&src);
    let repo = TestRepo::local().init();
    let path = src.to_str().unwrap();
    let mut args = vec![
        "freeze", "wp", "--repo", &repo.url, "--path", path, "--json",
    ];
    args.extend(RULES);
    json(&freezer(&args));

    // The live site moves on: a changed file, a new cache entry, a new session.
    fs::write(src.join("index.php"), b"<?php // edited").unwrap();
    fs::write(src.join("wp-content/cache/page/c.html"), b"new cache").unwrap();
    fs::write(src.join("thumbs/t2.png"), b"new thumb").unwrap();
    let before = listing(&src);

    let replace = |extra: &[&str]| {
        let mut args = vec!["thaw", "wp", "--repo", &repo.url, "--replace"];
        args.extend(extra);
        freezer(&args)
    };
    let plan = replace(&["--dry-run"]);
    assert_ok(&plan);
    assert!(
        String::from_utf8_lossy(&plan.stdout).contains("keeps what the snapshot excluded"),
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    assert_ok(&replace(&[]));
    // The frozen file is back; everything excluded is as it was at the destination.
    assert_eq!(fs::read(src.join("index.php")).unwrap(), b"<?php");
    assert_eq!(listing(&src), before);
    assert_eq!(
        fs::read(src.join("wp-content/cache/page/c.html")).unwrap(),
        b"new cache"
    );
    assert_eq!(fs::read(src.join("thumbs/t2.png")).unwrap(), b"new thumb");
    assert_eq!(
        fs::read(src.join(OsStr::from_bytes(b"caf\xe9.tmp"))).unwrap(),
        b"latin-1 name, excluded by *.tmp"
    );

    // --replace-excluded: the destination becomes exactly the snapshot.
    assert_ok(&replace(&["--replace-excluded"]));
    assert_eq!(listing(&src), expected_with_rules());
    let staging: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".freezer"))
        .collect();
    assert!(
        staging.is_empty(),
        "left beside the destination: {staging:?}"
    );
}

#[test]
fn a_bad_pattern_is_a_usage_error_before_anything_is_written() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("site");
    site_tree(&src);
    let repo = TestRepo::local().init();
    let out = freezer(&[
        "freeze",
        "wp",
        "--repo",
        &repo.url,
        "--path",
        src.to_str().unwrap(),
        "--exclude",
        "wp-content/{cache,tmp",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("exclude pattern"), "{}", stderr(&out));
    let snaps = json(&freezer(&["snapshots", "--repo", &repo.url, "--json"]));
    assert_eq!(snaps.as_array().unwrap().len(), 0);
}

/// A Docker site's container labels leave things out of its volumes.
#[test]
fn container_labels_exclude_from_a_docker_site_s_volumes() {
    use crate::hydrated::{docker, freezer_on, host_a, image, mountpoint, remove_site};
    let a = host_a();
    let name = unique("xl");
    struct Cleanup(String, String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_site(&self.0, &self.1);
        }
    }
    let _cleanup = Cleanup(a.clone(), name.clone());
    let project = format!("com.docker.compose.project={name}");
    let volume = format!("{name}_www");
    docker(&a, &["volume", "create", "--label", &project, &volume]);
    let www = mountpoint(&a, &volume);
    fs::write(www.join("index.html"), b"<h1>x</h1>").unwrap();
    fs::create_dir_all(www.join("cache/page")).unwrap();
    fs::write(www.join("cache/page/a.html"), b"cached").unwrap();
    fs::write(www.join("debug.tmp"), b"scratch").unwrap();
    fs::create_dir_all(www.join("thumbs")).unwrap();
    fs::write(www.join("thumbs/CACHEDIR.TAG"), CACHEDIR_TAG).unwrap();
    fs::write(www.join("thumbs/t.png"), b"thumb").unwrap();
    #[rustfmt::skip]
    docker(&a, &[
        "run", "-d", "--name", &format!("{name}-web-1"), "--label", &project,
        "--label", "com.docker.compose.service=web",
        "--label", "dev.freezer.exclude=cache/,*.tmp", "--label", "dev.freezer.exclude-caches=true",
        "-v", &format!("{volume}:/www"), &image(), "httpd", "-f", "-p", "80", "-h", "/www",
    ]);
    let repo = TestRepo::local().init();
    let plan = freezer_on(&a, &["freeze", &name, "--repo", &repo.url, "--dry-run"]);
    assert_ok(&plan);
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("exclude cache/ *.tmp"), "{text}");
    assert!(text.contains("leaves out 3 paths (4 files, "), "{text}");

    let report = json(&freezer_on(
        &a,
        &["freeze", &name, "--repo", &repo.url, "--json"],
    ));
    let tree = report["trees"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == format!("volume.{volume}"))
        .unwrap_or_else(|| panic!("no tree of {volume}: {report:#}"));
    assert_eq!(tree["files"], 1, "only index.html: {tree:#}");
    assert_eq!(tree["excluded"], 3, "{tree:#}");
    // The rules are in the snapshot, for a thaw to honour.
    let snaps = json(&freezer(&[
        "snapshots",
        &name,
        "--repo",
        &repo.url,
        "--json",
    ]));
    assert_eq!(snaps[0]["trees"][0]["files"], 1, "{snaps:#}");
}

/// `thaw --include` restores exactly the matching set; with `--replace` onto the live
/// tree it replaces only those paths, and every other file keeps its inode and mtime.
#[test]
fn thaw_include_restores_exactly_the_matching_set() {
    use std::os::unix::fs::MetadataExt;
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    for (p, d) in [
        ("a.txt", "a"),
        ("img/1.png", "one"),
        ("img/2.png", "two"),
        ("img/sub/3.png", "three"),
        ("css/x.css", "css"),
        ("docs/readme", "docs"),
    ] {
        let f = src.join(p);
        fs::create_dir_all(f.parent().unwrap()).unwrap();
        fs::write(&f, d).unwrap();
    }
    fs::hard_link(src.join("a.txt"), src.join("img/a-link")).unwrap();
    let repo = TestRepo::local().init();
    json(&freezer(&[
        "freeze",
        "inc",
        "--repo",
        &repo.url,
        "--path",
        src.to_str().unwrap(),
        "--json",
    ]));
    let thaw = |into: &Path, patterns: &[&str], extra: &[&str]| {
        let mut args = vec!["thaw", "inc", "--repo", &repo.url];
        if !into.as_os_str().is_empty() {
            args.extend(["--into", into.to_str().unwrap()]);
        }
        for p in patterns {
            args.extend(["--include", p]);
        }
        args.extend(extra);
        freezer(&args)
    };
    let out = work.path().join("one");
    assert_ok(&thaw(&out, &["img/"], &[]));
    // The hard link brings the file it shares an inode with.
    assert_eq!(
        listing(&under(&out, &src)),
        set(&[
            b"a.txt",
            b"img",
            b"img/1.png",
            b"img/2.png",
            b"img/sub",
            b"img/sub/3.png",
            b"img/a-link",
        ])
    );
    let out = work.path().join("two");
    assert_ok(&thaw(&out, &["*.css", "/docs/readme"], &[]));
    assert_eq!(
        listing(&under(&out, &src)),
        set(&[b"css", b"css/x.css", b"docs", b"docs/readme"])
    );
    let nothing = thaw(&work.path().join("three"), &["*.gif"], &[]);
    assert_eq!(nothing.status.code(), Some(6), "{}", stderr(&nothing));

    // In place: only img/1.png comes back; the rest of the live tree is untouched.
    fs::write(src.join("img/1.png"), "edited").unwrap();
    fs::write(src.join("docs/readme"), "edited docs").unwrap();
    fs::write(src.join("new.txt"), "new").unwrap();
    let facts = |p: &str| {
        let m = fs::metadata(src.join(p)).unwrap();
        (m.ino(), m.mtime(), m.mtime_nsec())
    };
    let before: Vec<_> = ["docs/readme", "img/2.png", "a.txt", "new.txt"]
        .iter()
        .map(|p| facts(p))
        .collect();
    let refused = thaw(Path::new(""), &["img/1.png"], &[]);
    assert_eq!(refused.status.code(), Some(7), "{}", stderr(&refused));
    assert_ok(&thaw(Path::new(""), &["img/1.png"], &["--replace"]));
    assert_eq!(fs::read(src.join("img/1.png")).unwrap(), b"one");
    assert_eq!(fs::read(src.join("docs/readme")).unwrap(), b"edited docs");
    let after: Vec<_> = ["docs/readme", "img/2.png", "a.txt", "new.txt"]
        .iter()
        .map(|p| facts(p))
        .collect();
    assert_eq!(before, after, "other files keep their inode and mtime");
    let left: Vec<_> = fs::read_dir(work.path())
        .unwrap()
        .chain(fs::read_dir(src.join("img")).unwrap())
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().starts_with(".freezer"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
