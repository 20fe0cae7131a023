//! Encrypted repositories (SPEC.md §14): round trips with age recipients and passphrases,
//! key changes, tamper detection on every object type, no plaintext at rest, and
//! deduplication as good as without encryption.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::*;

/// A fresh age identity: (identity file, recipient).
pub(crate) fn keygen(dir: &Path, name: &str) -> (PathBuf, String) {
    let path = dir.join(name);
    let out = Command::new("age-keygen")
        .arg("-o")
        .arg(&path)
        .output()
        .expect("age-keygen (installed by scripts/services)");
    assert!(out.status.success());
    let out = Command::new("age-keygen")
        .arg("-y")
        .arg(&path)
        .output()
        .unwrap();
    (
        path,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// freezer against `repo`, with extra environment.
fn run(repo: &TestRepo, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut all = args.to_vec();
    all.extend(["--repo", repo.url.as_str()]);
    freezer_env(&all, env)
}

fn with_id<'a>(args: &[&'a str], id: &'a Path) -> Vec<&'a str> {
    let mut v = args.to_vec();
    v.extend(["--identity", id.to_str().unwrap()]);
    v
}

/// Every file under `dir` (a local repository), with its bytes.
pub(crate) fn stored_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = vec![];
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push((p.clone(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

const MARKER: &[u8] = b"CONFIDENTIAL-7c1e5a-customer-list";
const NAME_MARKER: &str = "payroll-7c1e5a.csv";

fn site_tree(root: &Path) {
    every_case_tree(root);
    fs::write(root.join(NAME_MARKER), MARKER).unwrap();
}

#[test]
fn encrypted_round_trips_with_a_recipient_and_with_a_passphrase() {
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let (id2, _) = keygen(keys.path(), "id2.txt");
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("site");
    site_tree(&tree);
    for repo in TestRepo::both() {
        let pw = [("FREEZER_PASSPHRASE", "correct horse battery staple")];
        assert_ok(&run(&repo, &["init", "--encrypt", "--recipient", &r1], &pw));
        let site = "secret-shop-7c1e5a";
        assert_ok(&run(
            &repo,
            &with_id(&["freeze", site, "--path", tree.to_str().unwrap()], &id1),
            &[],
        ));
        // With the identity, and with the passphrase alone.
        for (how, args, env) in [
            ("identity", with_id(&["thaw", site, "--into"], &id1), vec![]),
            ("passphrase", vec!["thaw", site, "--into"], pw.to_vec()),
        ] {
            let into = tempfile::tempdir().unwrap();
            let mut args = args.clone();
            args.insert(3, into.path().to_str().unwrap());
            assert_ok(&run(&repo, &args, &env));
            assert_same_tree(&tree, &under(into.path(), &tree));
            eprintln!("restored with the {how}");
        }
        assert_ok(&run(&repo, &with_id(&["verify"], &id1), &[]));

        // No key, a wrong identity, a wrong passphrase: clear errors, nothing read.
        let out = run(&repo, &["snapshots"], &[]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains("encrypted"), "{}", stderr(&out));
        let out = run(&repo, &with_id(&["snapshots"], &id2), &[]);
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        let out = run(
            &repo,
            &["snapshots"],
            &[("FREEZER_PASSPHRASE", "wrong-pass-7c1e5a")],
        );
        assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
        assert!(
            !stderr(&out).contains("wrong-pass-7c1e5a"),
            "a passphrase was printed"
        );

        // Export writes a plain, decrypted layout that stock tools read, and says so.
        let exp = tempfile::tempdir().unwrap();
        let oci = exp.path().join("oci");
        let report = json(&run(
            &repo,
            &with_id(
                &["export", site, "--oci", oci.to_str().unwrap(), "--json"],
                &id1,
            ),
            &[],
        ));
        assert_eq!(report["decrypted"], true);
        let out = Command::new("skopeo")
            .args(["inspect", &format!("oci:{}:site", oci.display())])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for (path, bytes) in stored_files(&oci.join("blobs/sha256")) {
            let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes));
            assert_eq!(path.file_name().unwrap().to_string_lossy(), hex);
        }

        // Nothing stored reveals the content, the file names or the site.
        if let Some(dir) = &repo.local {
            for (path, bytes) in stored_files(dir) {
                for needle in [MARKER, NAME_MARKER.as_bytes(), site.as_bytes()] {
                    assert!(
                        !contains(&bytes, needle) && !path.to_string_lossy().contains(site),
                        "{} reveals {:?}",
                        path.display(),
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
    }
}

#[test]
fn keys_are_added_and_removed_without_uploading_the_data_again() {
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let (id2, r2) = keygen(keys.path(), "id2.txt");
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("site");
    site_tree(&tree);
    let repo = TestRepo::local().init_encrypted(&r1);
    let dir = repo.local.clone().unwrap();
    let freeze = |id: &Path| {
        let out = run(
            &repo,
            &with_id(
                &["freeze", "shop", "--path", tree.to_str().unwrap(), "--json"],
                id,
            ),
            &[],
        );
        json(&out)["snapshot"].as_str().unwrap().to_string()
    };
    let first = freeze(&id1);
    let blobs = || fs::read_dir(dir.join("blobs/sha256")).unwrap().count();
    let before = blobs();

    // A second recipient: the keyring is wrapped again, no data is uploaded again.
    let out = run(
        &repo,
        &with_id(&["key", "add", "--recipient", &r2, "--json"], &id1),
        &[],
    );
    let listed = json(&out);
    assert_eq!(listed["recipients"].as_array().unwrap().len(), 2);
    assert_eq!(blobs(), before);
    let into = tempfile::tempdir().unwrap();
    assert_ok(&run(
        &repo,
        &with_id(
            &[
                "thaw",
                &format!("shop:{first}"),
                "--into",
                into.path().to_str().unwrap(),
            ],
            &id2,
        ),
        &[],
    ));
    assert_same_tree(&tree, &under(into.path(), &tree));

    // What the second party could keep: the keyring as it was.
    let kept = fs::read(dir.join("keys/recipients.age")).unwrap();
    let out = run(
        &repo,
        &with_id(&["key", "remove", &r2, "--json"], &id1),
        &[],
    );
    assert_eq!(json(&out)["epoch"], 1);
    let out = run(&repo, &with_id(&["snapshots"], &id2), &[]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));

    fs::write(tree.join("after-removal.txt"), b"new").unwrap();
    let second = freeze(&id1);
    // Even with the old keyring, the removed key opens only what was written before (on
    // its own machine: a cache of its own).
    let current = fs::read(dir.join("keys/recipients.age")).unwrap();
    fs::write(dir.join("keys/recipients.age"), &kept).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let elsewhere = [("FREEZER_CACHE_DIR", elsewhere.path().to_str().unwrap())];
    let into = tempfile::tempdir().unwrap();
    let thaw_second = |id: &Path, env: &[(&str, &str)]| {
        run(
            &repo,
            &with_id(
                &[
                    "thaw",
                    &format!("shop:{second}"),
                    "--into",
                    into.path().to_str().unwrap(),
                ],
                id,
            ),
            env,
        )
    };
    let out = thaw_second(&id2, &elsewhere);
    assert_ne!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("sealed in key epoch 1"),
        "{}",
        stderr(&out)
    );
    assert!(!under(into.path(), &tree).exists());
    // The old keyring put back (a replay by whoever runs the store) is refused on a machine
    // that has used the newer one, before anything is sealed under the old data key.
    let before = blobs();
    fs::write(tree.join("after-replay.txt"), b"secret").unwrap();
    let out = run(
        &repo,
        &with_id(&["freeze", "shop", "--path", tree.to_str().unwrap()], &id1),
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("replaced by an older copy") && stderr(&out).contains("epoch 1"),
        "{}",
        stderr(&out)
    );
    assert_eq!(blobs(), before, "nothing was written under the old keyring");
    fs::remove_file(tree.join("after-replay.txt")).unwrap();
    fs::write(dir.join("keys/recipients.age"), &current).unwrap();
    // The remaining key reads both.
    for id in [&first, &second] {
        let into = tempfile::tempdir().unwrap();
        assert_ok(&run(
            &repo,
            &with_id(
                &[
                    "thaw",
                    &format!("shop:{id}"),
                    "--into",
                    into.path().to_str().unwrap(),
                ],
                &id1,
            ),
            &[],
        ));
    }
    // The last key cannot be removed.
    let out = run(&repo, &with_id(&["key", "remove", &r1], &id1), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

/// Every stored object, of every kind (layers, tree indexes, configs, manifests, dump
/// chunks, the record): a flipped bit, a truncation or a swap is refused, naming it.
#[test]
fn a_flipped_bit_in_any_object_is_refused() {
    services();
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let server = std::env::var("FREEZER_TEST_MYSQL_URL").expect("set by scripts/services");
    let db = unique("encdb").replace('-', "_");
    let admin = |sql: &str| {
        let out = Command::new("mariadb")
            .args(["--protocol=socket", "-e", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    admin(&format!(
        "CREATE DATABASE {db}; CREATE TABLE {db}.customers (id INT PRIMARY KEY, note TEXT); INSERT INTO {db}.customers VALUES (1, '{}')",
        String::from_utf8_lossy(MARKER)
    ));
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("site");
    site_tree(&tree);
    let repo = TestRepo::local().init_encrypted(&r1);
    let dir = repo.local.clone().unwrap();
    assert_ok(&run(
        &repo,
        &with_id(
            &[
                "freeze",
                "shop",
                "--path",
                tree.to_str().unwrap(),
                "--db",
                &format!("{server}/{db}"),
            ],
            &id1,
        ),
        &[],
    ));
    admin(&format!("DROP DATABASE {db}"));
    // The dump is encrypted too.
    for (path, bytes) in stored_files(&dir) {
        assert!(
            !contains(&bytes, MARKER),
            "{} holds the marker",
            path.display()
        );
    }

    let objects: Vec<PathBuf> = stored_files(&dir.join("blobs"))
        .into_iter()
        .chain(stored_files(&dir.join("snapshots")))
        .map(|(p, _)| p)
        .collect();
    assert!(objects.len() >= 8, "{objects:?}");
    let verify = || run(&repo, &with_id(&["verify", "--json"], &id1), &[]);
    assert_ok(&verify());
    for path in &objects {
        let original = fs::read(path).unwrap();
        let name = path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .replace(".json", "");
        let mut bad = original.clone();
        let at = bad.len() / 2;
        bad[at] ^= 0x08;
        for (what, bytes) in [
            ("flipped bit", bad),
            ("truncation", original[..original.len() - 1].to_vec()),
        ] {
            fs::write(path, &bytes).unwrap();
            let out = verify();
            assert_ne!(
                out.status.code(),
                Some(0),
                "{what} in {} went unnoticed",
                path.display()
            );
            let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
            assert!(
                all.contains(&name),
                "{what} in {}: the report does not name it: {all}",
                path.display()
            );
        }
        fs::write(path, &original).unwrap();
    }
    // A swap: one object's bytes under another's name.
    let (a, b) = (&objects[0], &objects[1]);
    let original = fs::read(b).unwrap();
    fs::copy(a, b).unwrap();
    assert_ne!(verify().status.code(), Some(0));
    fs::write(b, original).unwrap();
    assert_ok(&verify());

    // A damaged layer refuses the thaw before the destination is touched.
    let layer = stored_files(&dir.join("blobs"))
        .into_iter()
        .max_by_key(|(_, b)| b.len())
        .unwrap()
        .0;
    let original = fs::read(&layer).unwrap();
    let mut bad = original.clone();
    bad[100] ^= 1;
    fs::write(&layer, bad).unwrap();
    let into = tempfile::tempdir().unwrap();
    let out = run(
        &repo,
        &with_id(
            &[
                "thaw",
                "shop",
                "--no-db",
                "--into",
                into.path().to_str().unwrap(),
            ],
            &id1,
        ),
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(!under(into.path(), &tree).exists());
}

/// The same data, frozen twice with a small change between, uploads the same number of
/// blobs and plaintext bytes into an encrypted repository as into a plain one.
#[test]
fn deduplication_is_as_good_with_encryption_as_without() {
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let src = tempfile::tempdir().unwrap();
    let tree = src.path().join("site");
    site_tree(&tree);
    let plain = TestRepo::local().init();
    let sealed = TestRepo::local().init_encrypted(&r1);
    let freeze = |repo: &TestRepo| {
        let out = run(
            repo,
            &with_id(
                &["freeze", "shop", "--path", tree.to_str().unwrap(), "--json"],
                &id1,
            ),
            &[],
        );
        let r = json(&out);
        (
            r["blobs_uploaded"].as_u64().unwrap(),
            r["bytes_uploaded"].as_u64().unwrap(),
            r["blobs_reused"].as_u64().unwrap(),
        )
    };
    let first = (freeze(&plain), freeze(&sealed));
    fs::write(tree.join("changed.txt"), b"one more file").unwrap();
    let second = (freeze(&plain), freeze(&sealed));
    assert_eq!(first.0, first.1);
    assert_eq!(second.0, second.1);
    // And it is incremental: the second night uploads a fraction of the first.
    assert!(second.1 .1 * 4 < first.1 .1, "{first:?} then {second:?}");
}

/// A Docker site's container configuration (its environment holds secrets) is sealed
/// like everything else, and thaws from the encrypted repository.
#[test]
fn a_docker_site_s_configuration_is_sealed() {
    use crate::hydrated::*;
    let keys = tempfile::tempdir().unwrap();
    let (id1, r1) = keygen(keys.path(), "id1.txt");
    let a = host_a();
    let repo = TestRepo::local().init_encrypted(&r1);
    let name = unique("ec");
    let port = free_port();
    let site = start_site(&a, &name, &image(), port);
    // start_site gives the web container SITE_MARKER=<name> in its environment.
    let env = [("DOCKER_HOST", a.as_str())];
    assert_ok(&run(&repo, &with_id(&["freeze", &name], &id1), &env));
    for (path, bytes) in stored_files(repo.local.as_ref().unwrap()) {
        assert!(
            !contains(&bytes, format!("SITE_MARKER={name}").as_bytes()),
            "{} holds the container's environment in the clear",
            path.display()
        );
    }
    remove_site(&a, &name);
    fs::remove_dir_all(site.bind.path().join("conf")).unwrap();
    assert_ok(&run(&repo, &with_id(&["thaw", &name], &id1), &env));
    assert_eq!(http_get(port, "/index.html"), site.marker());
}
