//! `freezer mount`: a read-only FUSE view of a repository, compared with a thaw of the
//! same snapshot, metadata included; a 50,000-file tree listed; Ctrl-C unmounts.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::*;

/// Whether `dir` is a mount point now (listed in /proc/mounts).
pub(crate) fn mounted(dir: &Path) -> bool {
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let dir = dir.display().to_string();
    mounts
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(dir.as_str()))
}

/// A running `freezer mount`. Dropped (a failed test) it is stopped and unmounted, so
/// no mount outlives the test.
pub(crate) struct Mounted {
    child: Option<std::process::Child>,
    at: std::path::PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if mounted(&self.at) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.at)
                .status();
        }
    }
}

/// `freezer mount` in the background; returns once the view is up.
pub(crate) fn mount(repo: &TestRepo, at: &Path) -> Mounted {
    mount_with(repo, at, &[])
}

fn mount_with(repo: &TestRepo, at: &Path, env: &[(&str, &str)]) -> Mounted {
    let child = spawn_freezer(&["mount", at.to_str().unwrap(), "--repo", &repo.url], env);
    let mut m = Mounted {
        child: Some(child),
        at: at.to_path_buf(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !mounted(at) {
        let ended = m.child.as_mut().unwrap().try_wait().unwrap();
        assert!(ended.is_none(), "freezer mount ended: {ended:?}");
        assert!(Instant::now() < deadline, "the mount did not come up");
        std::thread::sleep(Duration::from_millis(50));
    }
    m
}

/// Ctrl-C: the view is unmounted and the process is gone, having said so.
fn interrupt(mut m: Mounted) {
    let mut child = m.child.take().unwrap();
    let at = m.at.clone();
    let st = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "freezer mount did not end on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    assert!(
        status.success(),
        "exit {status}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("unmounted"));
    assert!(!mounted(&at), "still mounted after the process ended");
    assert_eq!(
        fs::read_dir(&at).unwrap().count(),
        0,
        "the mount point is not empty"
    );
}

#[test]
fn a_mounted_snapshot_is_the_thawed_snapshot_and_ctrl_c_unmounts() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    every_case_tree(&src);
    let repo = TestRepo::local().init();
    freeze(&repo, "shop", &[&src]);
    fs::write(src.join("index.html"), "changed the next day\n").unwrap();
    let second = freeze(&repo, "shop", &[&src]);
    let id = second["snapshot"].as_str().unwrap().to_string();

    let thawed = work.path().join("thawed");
    assert_ok(&thaw_into(&repo, &format!("shop:{id}"), &thawed));
    let at = work.path().join("mnt");
    fs::create_dir(&at).unwrap();
    let child = mount(&repo, &at);
    let site = at.join("shop");
    let ids: Vec<String> = fs::read_dir(&site)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert_eq!(fs::read_link(site.join("latest")).unwrap(), Path::new(&id));
    let view = site.join(&id).join("www");
    // Every entry, its bytes and its metadata (mode, owner, ns mtime, xattrs, links,
    // hard-link groups) as a thaw restores them.
    assert_same_tree_but_sparseness(&under(&thawed, &src), &view);
    // And what `diff -r` sees (which calls any two FIFOs or devices different, so
    // those, compared above, are left to the comparison above).
    let st = std::process::Command::new("diff")
        .args(["-r", "--no-dereference", "-x", "pipe", "-x", "devnull"])
        .arg(under(&thawed, &src))
        .arg(&view)
        .status()
        .unwrap();
    assert!(st.success(), "diff -r found differences");
    // Read-only.
    assert!(fs::write(view.join("index.html"), "x").is_err());
    assert!(fs::create_dir(view.join("new")).is_err());
    interrupt(child);
}

/// 50,000 small files on Garage, through a proxy that counts requests: listing them
/// reads only the index, and reading every one reads each frame once.
#[test]
fn a_50000_file_tree_lists_and_reads_through_the_mount() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("many");
    for d in 0..100 {
        let dir = src.join(format!("d{d:03}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..500 {
            fs::write(dir.join(format!("f{f:03}")), format!("{d}/{f}\n")).unwrap();
        }
    }
    let repo = TestRepo::s3().init();
    freeze(&repo, "many", &[&src]);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
    let proxy = crate::faults::proxy::FaultProxy::start(endpoint.trim_start_matches("http://"));
    let through = format!("http://{}", proxy.endpoint());
    let at = work.path().join("mnt");
    fs::create_dir(&at).unwrap();
    let m = mount_with(&repo, &at, &[("AWS_ENDPOINT_URL", &through)]);
    let tree = at.join("many/latest/many");
    let started = Instant::now();
    let out = std::process::Command::new("find")
        .arg(&tree)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    let list_secs = started.elapsed().as_secs_f64();
    let listing_requests = proxy.requests();
    assert_eq!(listed, 1 + 100 + 50_000);

    // The expected bytes: every file's content in the same order.
    let mut expected = Vec::new();
    let mut paths: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("/f"))
        .map(|l| l.to_string())
        .collect();
    paths.sort();
    for p in &paths {
        expected.extend_from_slice(
            &fs::read(src.join(Path::new(p).strip_prefix(&tree).unwrap())).unwrap(),
        );
    }
    fs::write(work.path().join("expected"), &expected).unwrap();
    let started = Instant::now();
    let st = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "find '{}' -type f | sort | xargs cat | cmp - '{}'",
            tree.display(),
            work.path().join("expected").display()
        ))
        .status()
        .unwrap();
    assert!(st.success(), "the files read through the mount differ");
    let read_requests = proxy.requests() - listing_requests;
    eprintln!(
        "mount of 50,000 files on Garage: find {listed} paths in {list_secs:.2}s ({listing_requests} requests); read all in {:.2}s with {read_requests} requests",
        started.elapsed().as_secs_f64()
    );
    assert!(
        read_requests < 200,
        "{read_requests} requests to read 50,000 small files"
    );
    interrupt(m);
}

/// On Garage and encrypted: files are read (whole layers, opened with the key) and the
/// view is the thawed tree.
#[test]
fn an_encrypted_repository_on_garage_mounts_too() {
    let keys = tempfile::tempdir().unwrap();
    let (id, recipient) = crate::encryption::keygen(keys.path(), "id.txt");
    let id = id.display().to_string();
    let env = [("FREEZER_IDENTITY", id.as_str())];
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("www");
    fs::create_dir_all(src.join("img")).unwrap();
    fs::write(src.join("index.php"), "<?php echo 1;").unwrap();
    fs::write(src.join("img/photo.jpg"), noise(3 << 20, 11)).unwrap();
    let repo = TestRepo::s3().init_encrypted(&recipient);
    let path = src.display().to_string();
    assert_ok(&freezer_env(
        &["freeze", "enc", "--repo", &repo.url, "--path", &path, "-q"],
        &env,
    ));
    let thawed = work.path().join("thawed");
    let into = thawed.display().to_string();
    assert_ok(&freezer_env(
        &["thaw", "enc", "--repo", &repo.url, "--into", &into],
        &env,
    ));
    let at = work.path().join("mnt");
    fs::create_dir(&at).unwrap();
    let m = mount_with(&repo, &at, &env);
    assert_same_tree_but_sparseness(&under(&thawed, &src), &at.join("enc/latest/www"));
    interrupt(m);
}
