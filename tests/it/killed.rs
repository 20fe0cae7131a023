//! What a run killed with SIGKILL leaves behind, and what the next run does about it:
//! scratch files in TMPDIR, a FUSE mount point whose server is gone. And arguments that
//! name nothing usable, which must fail with exit 2 (or 6) naming the argument.

use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::common::*;
use crate::database::{assert_same_db, db_url, drop_db, fixture, freeze_db};
use crate::mount::mounted;

/// freezer's entries under `dir` (scratch files and directories, spooled uploads,
/// staging, replaced contents).
fn freezers(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for e in walkdir(dir) {
        let name = e.file_name().unwrap().to_string_lossy().into_owned();
        if name.contains("freezer-") {
            found.push(e.display().to_string());
        }
    }
    found
}

/// Everything in a TMPDIR that only freezer uses.
fn entries(tmp: &Path) -> Vec<String> {
    walkdir(tmp)
        .iter()
        .map(|p| p.display().to_string())
        .collect()
}

fn walkdir(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walkdir(&p));
        }
        out.push(p);
    }
    out
}

/// Starts `args` with TMPDIR=`tmp` and SIGKILLs it as soon as it has made a scratch
/// entry in TMPDIR; returns what it left there.
fn kill_once_it_has_scratch(args: &[&str], tmp: &Path) -> Vec<String> {
    let tmp_s = tmp.display().to_string();
    let mut child = spawn_freezer(args, &[("TMPDIR", &tmp_s)]);
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if !entries(tmp).is_empty() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            panic!(
                "{args:?} ended ({status}) before it made a scratch file: {}",
                stderr(&out)
            );
        }
        assert!(Instant::now() < deadline, "{args:?} made no scratch file");
        std::thread::sleep(Duration::from_millis(1));
    }
    sigkill(&mut child);
    let left = entries(tmp);
    assert!(
        !left.is_empty(),
        "the kill of {args:?} left nothing to sweep"
    );
    left
}

fn sigkill(child: &mut Child) {
    child.kill().unwrap();
    child.wait().unwrap();
}

/// The same command again, to completion, with TMPDIR=`tmp`; then neither TMPDIR nor
/// the repository holds anything of freezer's.
fn again_leaves_nothing(args: &[&str], tmp: &Path, repo: &TestRepo, left: &[String]) {
    let tmp_s = tmp.display().to_string();
    assert_ok(&freezer_env(args, &[("TMPDIR", &tmp_s)]));
    let still = entries(tmp);
    assert!(
        still.is_empty(),
        "after {args:?} again, TMPDIR holds {still:?} (the kill left {left:?})"
    );
    let in_repo = freezers(Path::new(&repo.url));
    assert!(in_repo.is_empty(), "the repository holds {in_repo:?}");
}

#[test]
fn what_killed_runs_leave_in_tmpdir_the_next_run_removes() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let repo = TestRepo::local().init();

    // A database thaw: its downloaded chunks are in TMPDIR while it loads.
    let src = unique("killtmp").replace('-', "_");
    fixture(&src);
    freeze_db(&repo, "db", &src);
    let copy = unique("killtmpcopy").replace('-', "_");
    let url = db_url(&copy);
    let args = ["thaw", "db", "--repo", &repo.url, "--db", &url];
    let left = kill_once_it_has_scratch(&args, tmp.path());
    again_leaves_nothing(&args, tmp.path(), &repo, &left);
    assert_same_db(&src, &copy);
    drop_db(&copy);
    drop_db(&src);

    // A tree freeze after a first one (it reads the parent's index into TMPDIR), and a
    // tree thaw (the index again).
    let site = work.path().join("site");
    std::fs::create_dir_all(&site).unwrap();
    for i in 0..40 {
        std::fs::write(site.join(format!("f{i}.bin")), noise(512 << 10, i)).unwrap();
    }
    freeze(&repo, "files", &[&site]);
    std::fs::write(site.join("f0.bin"), noise(512 << 10, 99)).unwrap();
    let path = site.display().to_string();
    let args = ["freeze", "files", "--repo", &repo.url, "--path", &path];
    let left = kill_once_it_has_scratch(&args, tmp.path());
    again_leaves_nothing(&args, tmp.path(), &repo, &left);

    let into = work.path().join("thawed").display().to_string();
    let args = ["thaw", "files", "--repo", &repo.url, "--into", &into];
    let left = kill_once_it_has_scratch(&args, tmp.path());
    again_leaves_nothing(&args, tmp.path(), &repo, &left);
    assert_same_tree(&site, &under(Path::new(&into), &site));
    let into_left = freezers(Path::new(&into));
    assert!(
        into_left.is_empty(),
        "the thaw's target holds {into_left:?}"
    );

    // A mount: its cache directory, and a mount point whose server is gone. The next
    // mount on it comes up.
    let at = work.path().join("mnt");
    std::fs::create_dir(&at).unwrap();
    let at_s = at.display().to_string();
    let tmp_s = tmp.path().display().to_string();
    let args = ["mount", &at_s, "--repo", &repo.url];
    let mut child = spawn_freezer(&args, &[("TMPDIR", &tmp_s)]);
    wait_mounted(&mut child, &at);
    sigkill(&mut child);
    assert!(mounted(&at), "the killed mount is gone from /proc/mounts");
    let left = entries(tmp.path());
    assert!(!left.is_empty(), "the mount had no cache in TMPDIR");
    let mut child = spawn_freezer(&args, &[("TMPDIR", &tmp_s)]);
    wait_mounted(&mut child, &at);
    assert!(
        std::fs::read_dir(at.join("files")).unwrap().count() >= 2,
        "the new mount does not show the site"
    );
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!mounted(&at));
    let still = entries(tmp.path());
    assert!(
        still.is_empty(),
        "after a second mount, TMPDIR holds {still:?} (the kill left {left:?})"
    );
}

/// Waits until the mount is up (its root lists the sites).
fn wait_mounted(child: &mut Child, at: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(mounted(at) && std::fs::read_dir(at).is_ok_and(|mut d| d.next().is_some())) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            panic!("freezer mount ended ({status}): {err}");
        }
        assert!(Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn arguments_that_name_nothing_usable_fail_with_exit_2_naming_them() {
    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("a-file");
    std::fs::write(&file, "not a directory\n").unwrap();
    let file_s = file.display().to_string();
    let missing = work.path().join("missing").display().to_string();
    let repo = TestRepo::local().init();
    let site = work.path().join("site");
    std::fs::create_dir(&site).unwrap();
    std::fs::write(site.join("index.html"), "hello\n").unwrap();
    freeze(&repo, "shop", &[&site]);

    let cases: [(&[&str], i32, &str); 6] = [
        (&["snapshots", "--repo", &file_s], 2, &file_s),
        (
            &["freeze", "shop", "--repo", &repo.url, "--path", &missing],
            2,
            "--path",
        ),
        (&["mount", &missing, "--repo", &repo.url], 2, &missing),
        (&["mount", &file_s, "--repo", &repo.url], 2, &file_s),
        (
            &["thaw", "shop", "--repo", &repo.url, "--into", &file_s],
            2,
            "--into",
        ),
        (
            &["snapshots", "nosuchsite", "--repo", &repo.url],
            6,
            "nosuchsite",
        ),
    ];
    for (args, code, named) in cases {
        let out = freezer(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(named), "{args:?} should name {named}: {err}");
        assert!(
            err.contains("hint:"),
            "{args:?} should say what to do: {err}"
        );
        assert!(!err.contains("os error"), "{args:?}: raw errno text: {err}");
    }
    // Nothing was made on the way.
    assert!(!Path::new(&missing).exists());
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory\n");
}
