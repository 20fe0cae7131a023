//! Shared helpers: the real services' environment, running the binary, building trees
//! with every case a restore must get right, and comparing trees exactly.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Once;

use sha2::{Digest, Sha256};

/// Loads `target/services.env` (written by scripts/services) into the environment once,
/// unless the variables are already set (scripts/test sources it itself).
pub fn services() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("FREEZER_TEST_S3_BUCKET").is_some() {
            return;
        }
        let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/services.env");
        let text = fs::read_to_string(&file).unwrap_or_else(|_| {
            panic!("the test services are not set up: run scripts/services (or scripts/test), which writes {}", file.display())
        });
        for line in text.lines() {
            if let Some((k, v)) = line.trim().strip_prefix("export ").and_then(|l| l.split_once('=')) {
                std::env::set_var(k, v);
            }
        }
    });
}

pub fn bucket() -> String {
    services();
    std::env::var("FREEZER_TEST_S3_BUCKET")
        .expect("FREEZER_TEST_S3_BUCKET is set by scripts/services")
}

pub fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    format!("{prefix}-{}", hex::encode(b))
}

/// A repository for one test: a fresh local directory or a fresh prefix in the Garage bucket.
pub struct TestRepo {
    pub url: String,
    pub local: Option<PathBuf>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRepo {
    pub fn local() -> TestRepo {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("repo");
        TestRepo {
            url: path.display().to_string(),
            local: Some(path),
            _dir: Some(dir),
        }
    }
    pub fn s3() -> TestRepo {
        TestRepo {
            url: format!("s3://{}/{}", bucket(), unique("test")),
            local: None,
            _dir: None,
        }
    }
    pub fn both() -> Vec<TestRepo> {
        vec![TestRepo::local(), TestRepo::s3()]
    }
    pub fn init(self) -> TestRepo {
        let out = freezer(&["init", "--repo", &self.url]);
        assert_ok(&out);
        self
    }
    /// An encrypted repository that the age `recipient` opens.
    pub fn init_encrypted(self, recipient: &str) -> TestRepo {
        let out = freezer(&[
            "init",
            "--repo",
            &self.url,
            "--encrypt",
            "--recipient",
            recipient,
        ]);
        assert_ok(&out);
        self
    }
    /// The store behind this repository, for tests that reach into objects.
    pub fn store(&self) -> Box<dyn freezer::store::Store> {
        let url = freezer::store::StoreUrl::parse(&self.url).unwrap();
        let settings =
            freezer::settings::Settings::load(Some(Path::new("/dev/null")), None, None).unwrap();
        freezer::store::open(&url, &settings.s3).unwrap()
    }
}

pub fn freezer(args: &[&str]) -> Output {
    freezer_env(args, &[])
}

pub fn freezer_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    services();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freezer"));
    cmd.args(args)
        .env_remove("FREEZER_REPO")
        .env("FREEZER_CONFIG", "/dev/null");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("running freezer")
}

pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "freezer failed with {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The JSON report of a run that must succeed (its stderr in the failure).
pub fn ok_report(out: &Output) -> serde_json::Value {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    result_line(&out.stdout)
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn json(out: &Output) -> serde_json::Value {
    assert_ok(out);
    result_line(&out.stdout)
}

/// The result of a `--json` run: stdout is JSON lines, progress events first, the
/// result last (SPEC.md §9). Checks that every line is JSON and every earlier one an event.
pub fn result_line(stdout: &[u8]) -> serde_json::Value {
    let text = String::from_utf8_lossy(stdout);
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line ({e}): {l}")))
        .collect();
    let (last, events) = lines
        .split_last()
        .unwrap_or_else(|| panic!("no JSON on stdout"));
    for e in events {
        assert!(
            e["event"] == "progress" || e["event"] == "retry" || e["event"] == "hook",
            "a line before the result is not an event: {e}"
        );
    }
    last.clone()
}

/// Freezes `paths` as `site` and returns the JSON report.
pub fn freeze(repo: &TestRepo, site: &str, paths: &[&Path]) -> serde_json::Value {
    let mut args = vec![
        "freeze".to_string(),
        site.to_string(),
        "--repo".into(),
        repo.url.clone(),
        "--json".into(),
    ];
    for p in paths {
        args.push("--path".into());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    json(&freezer(&args))
}

/// Where `thaw --into root` puts a tree frozen from `original`.
pub fn under(root: &Path, original: &Path) -> PathBuf {
    root.join(original.strip_prefix("/").unwrap())
}

pub fn is_root() -> bool {
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

pub fn xattrs_supported(dir: &Path) -> bool {
    let probe = dir.join(".xattr-probe");
    fs::write(&probe, b"").unwrap();
    let ok = xattr::set(&probe, "user.probe", b"1").is_ok();
    fs::remove_file(&probe).unwrap();
    ok
}

fn set_mtime(p: &Path, secs: i64, nanos: u32) {
    filetime::set_symlink_file_times(
        p,
        filetime::FileTime::from_unix_time(secs, nanos),
        filetime::FileTime::from_unix_time(secs, nanos),
    )
    .unwrap();
}

/// Builds a tree with every case the foundation issue lists: contents, modes (setuid,
/// sticky), numeric ownership, nanosecond mtimes, symlinks (relative, absolute, dangling,
/// pointing outside), hard links, empty directories, names with spaces, newlines,
/// non-UTF-8 bytes and unicode, long names and paths, a large file, a sparse file, a FIFO,
/// a device node (as root) and xattrs where the file system has them.
pub fn every_case_tree(root: &Path) {
    fs::create_dir_all(root).unwrap();
    let w = |rel: &[u8], data: &[u8]| {
        let p = root.join(OsStr::from_bytes(rel));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        p
    };
    w(b"index.html", b"<h1>hello</h1>\n");
    w(b"empty-file", b"");
    w(b"with space.txt", b"space\n");
    w(b"new\nline", b"newline in name\n");
    w(b"bad-utf8-\xff\xfe", b"not utf-8\n");
    w("ünïcødé-日本語-🧊".as_bytes(), "unicode ✓\n".as_bytes());
    w(b"sub/dir/deep.txt", b"deep\n");
    // A 255-byte name and a path far beyond 100 bytes (tar's old limit).
    let long_name = vec![b'n'; 255];
    w(&long_name, b"long name\n");
    let mut long_path = Vec::new();
    for i in 0..12 {
        long_path.extend_from_slice(format!("level-{i:02}-{}/", "x".repeat(40)).as_bytes());
    }
    long_path.extend_from_slice(b"file-at-the-bottom.txt");
    w(&long_path, b"long path\n");

    // A large file with varied content (several MiB, more than one zstd block and buffer).
    let mut big = Vec::with_capacity(12 << 20);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while big.len() < 12 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        big.extend_from_slice(&x.to_le_bytes()[..if x % 3 == 0 { 8 } else { 3 }]);
        if x % 5 == 0 {
            big.extend_from_slice(b"compressible text compressible text ");
        }
    }
    w(b"uploads/big.bin", &big);

    // A sparse file: 256 MiB apparent size, two small data regions.
    let sparse = root.join("uploads/sparse.img");
    {
        let f = fs::File::create(&sparse).unwrap();
        f.set_len(256 << 20).unwrap();
        let mut f = fs::OpenOptions::new().write(true).open(&sparse).unwrap();
        use std::io::Seek;
        f.seek(std::io::SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"data in the middle").unwrap();
        f.seek(std::io::SeekFrom::Start((256 << 20) - 5)).unwrap();
        f.write_all(b"tail!").unwrap();
    }

    // Empty directories, nested.
    fs::create_dir_all(root.join("empty/nested/deeper")).unwrap();

    // Modes.
    let exe = w(b"bin/setuid-tool", b"#!/bin/sh\necho hi\n");
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o4755)).unwrap();
    let private = w(b"private/secret.txt", b"secret\n");
    fs::set_permissions(&private, fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("private"), fs::Permissions::from_mode(0o700)).unwrap();
    fs::create_dir(root.join("tmp-sticky")).unwrap();
    fs::set_permissions(root.join("tmp-sticky"), fs::Permissions::from_mode(0o1777)).unwrap();
    let ro = w(b"readonly-dir/file", b"in a read-only dir\n");
    let _ = ro;
    fs::set_permissions(root.join("readonly-dir"), fs::Permissions::from_mode(0o555)).unwrap();

    // Symlinks: never followed, restored as links.
    std::os::unix::fs::symlink("index.html", root.join("link-relative")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("link-absolute-outside")).unwrap();
    std::os::unix::fs::symlink("../../outside/of/tree", root.join("sub/link-escaping")).unwrap();
    std::os::unix::fs::symlink("does-not-exist", root.join("link-dangling")).unwrap();
    std::os::unix::fs::symlink("sub/dir", root.join("link-to-dir")).unwrap();

    // Hard links: three names, one inode, across directories.
    let h = w(b"hard/original", b"shared inode\n");
    fs::hard_link(&h, root.join("hard/second")).unwrap();
    fs::create_dir_all(root.join("sub/hard")).unwrap();
    fs::hard_link(&h, root.join("sub/hard/third")).unwrap();

    // A FIFO.
    let fifo = root.join("pipe");
    let st = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(st.success());

    if is_root() {
        // Ownership by numeric ids that exist nowhere.
        std::os::unix::fs::chown(root.join("index.html"), Some(4321), Some(8765)).unwrap();
        std::os::unix::fs::chown(root.join("uploads"), Some(33), Some(33)).unwrap();
        std::os::unix::fs::lchown(root.join("link-relative"), Some(1001), Some(1002)).unwrap();
        // A character device (like /dev/null).
        let st = Command::new("mknod")
            .arg(root.join("devnull"))
            .args(["c", "1", "3"])
            .status()
            .unwrap();
        assert!(st.success());
    }
    if xattrs_supported(root) {
        xattr::set(
            root.join("index.html"),
            "user.freezer.test",
            b"value \x00\xff",
        )
        .unwrap();
        xattr::set(root.join("sub"), "user.dir-attr", b"on a directory").unwrap();
    }

    // Nanosecond mtimes everywhere, set last (creating entries changes directory mtimes),
    // children before parents.
    let mut all = Vec::new();
    collect(root, &mut all);
    all.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for (i, p) in all.iter().enumerate() {
        set_mtime(p, 1_600_000_000 + i as i64 * 7, 123_456_789 + i as u32);
    }
    set_mtime(root, 1_500_000_000, 987_654_321);
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let meta = fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            collect(&p, out);
        }
        out.push(p);
    }
}

/// Everything a restore must reproduce about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Facts {
    kind: String,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
    size: u64,
    content: String,
    link: Vec<u8>,
    rdev: u64,
    xattrs: BTreeMap<String, Vec<u8>>,
    /// The first path (in sorted order) sharing this entry's inode, for hard links.
    inode_group: Vec<u8>,
    /// Sparse files stay sparse: true when fewer blocks are allocated than the size needs.
    sparse: bool,
}

/// Trees equal to whole seconds of mtime, the root's mtime aside: what travels through
/// the Docker Engine API's archives (they carry no sub-second times).
pub fn assert_same_tree_to_seconds(expected: &Path, actual: &Path) {
    let facts = |p: &Path| {
        let mut f = tree_facts(p);
        for v in f.values_mut() {
            v.mtime.1 = 0;
        }
        if let Some(root) = f.get_mut(b".".as_slice()) {
            root.mtime = (0, 0);
        }
        f
    };
    let (a, b) = (facts(expected), facts(actual));
    assert!(
        a == b,
        "trees {} and {} differ:\n{a:#?}\n{b:#?}",
        expected.display(),
        actual.display()
    );
}

/// Reads a whole tree into path -> facts (symlinks are never followed).
pub fn tree_facts(root: &Path) -> BTreeMap<Vec<u8>, Facts> {
    let mut paths = Vec::new();
    collect(root, &mut paths);
    paths.push(root.to_path_buf());
    let rel = |p: &Path| -> Vec<u8> {
        let r = p
            .strip_prefix(root)
            .unwrap()
            .as_os_str()
            .as_bytes()
            .to_vec();
        if r.is_empty() {
            b".".to_vec()
        } else {
            r
        }
    };
    let mut sorted: Vec<(Vec<u8>, PathBuf)> = paths.into_iter().map(|p| (rel(&p), p)).collect();
    sorted.sort();
    let mut inode_first: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut out = BTreeMap::new();
    for (r, p) in sorted {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_file() {
            "file"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "chardev"
        } else {
            "other"
        };
        let content = if ft.is_file() {
            let mut h = Sha256::new();
            let mut f = fs::File::open(&p).unwrap();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
            }
            hex::encode(h.finalize())
        } else {
            String::new()
        };
        let link = if ft.is_symlink() {
            fs::read_link(&p).unwrap().as_os_str().as_bytes().to_vec()
        } else {
            vec![]
        };
        let mut xattrs = BTreeMap::new();
        if !ft.is_symlink() {
            if let Ok(names) = xattr::list(&p) {
                for n in names {
                    let name = n.to_string_lossy().into_owned();
                    if let Ok(Some(v)) = xattr::get(&p, &n) {
                        xattrs.insert(name, v);
                    }
                }
            }
        }
        let group = if ft.is_file() && m.nlink() > 1 {
            inode_first
                .entry(m.ino())
                .or_insert_with(|| r.clone())
                .clone()
        } else {
            vec![]
        };
        out.insert(
            r,
            Facts {
                kind: kind.into(),
                mode: m.mode() & 0o7777,
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if ft.is_file() { m.size() } else { 0 },
                content,
                link,
                rdev: if ft.is_char_device() { m.rdev() } else { 0 },
                xattrs,
                inode_group: group,
                sparse: ft.is_file() && m.size() > (1 << 20) && m.blocks() * 512 < m.size() / 2,
            },
        );
    }
    out
}

/// Asserts two trees are identical in every fact, with a readable report of differences.
pub fn assert_same_tree(expected: &Path, actual: &Path) {
    compare_trees(expected, actual, tree_facts(expected), tree_facts(actual));
}

/// As [`assert_same_tree`], but holes need not be holes (a FUSE view has no sparse files).
pub fn assert_same_tree_but_sparseness(expected: &Path, actual: &Path) {
    let dense = |p: &Path| {
        let mut f = tree_facts(p);
        for v in f.values_mut() {
            v.sparse = false;
        }
        f
    };
    compare_trees(expected, actual, dense(expected), dense(actual));
}

fn compare_trees(
    expected: &Path,
    actual: &Path,
    a: BTreeMap<Vec<u8>, Facts>,
    b: BTreeMap<Vec<u8>, Facts>,
) {
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing: {:?}", String::from_utf8_lossy(k))),
            Some(w) if w != v => diffs.push(format!(
                "differs: {:?}\n  expected {v:?}\n  actual   {w:?}",
                String::from_utf8_lossy(k)
            )),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("unexpected: {:?}", String::from_utf8_lossy(k)));
        }
    }
    assert!(
        diffs.is_empty(),
        "trees {} and {} differ:\n{}",
        expected.display(),
        actual.display(),
        diffs.join("\n")
    );
}

/// Copies a tree exactly, with GNU tar (used to keep a reference copy of a past state).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "tar -C '{}' --xattrs --xattrs-include='*' --numeric-owner -cpf - . | tar -C '{}' --xattrs --xattrs-include='*' --numeric-owner -xpf -",
            from.display(),
            to.display()
        ))
        .status()
        .unwrap();
    assert!(st.success());
}

/// `freezer thaw TARGET --into INTO` against a test repository.
pub fn thaw_into(repo: &TestRepo, target: &str, into: &Path) -> Output {
    freezer(&[
        "thaw",
        target,
        "--repo",
        &repo.url,
        "--into",
        into.to_str().unwrap(),
    ])
}

/// `n` bytes that do not compress (xorshift from `seed`): data that costs its size to
/// store and move.
pub fn noise(n: usize, mut seed: u64) -> Vec<u8> {
    (0..n)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect()
}

/// Runs freezer in the background (to interrupt it, or to fault what it talks to).
pub fn spawn_freezer(args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    services();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_freezer"));
    cmd.args(args)
        .env_remove("FREEZER_REPO")
        .env("FREEZER_CONFIG", "/dev/null")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.spawn().expect("starting freezer")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(path).unwrap()).unwrap()
}

/// Stores a JSON document as a blob of a local repository; returns (digest, size).
pub fn put_json(repo: &Path, v: &serde_json::Value) -> (String, u64) {
    let bytes = serde_json::to_vec(v).unwrap();
    let hex = hex::encode(Sha256::digest(&bytes));
    fs::write(repo.join("blobs/sha256").join(&hex), &bytes).unwrap();
    (format!("sha256:{hex}"), bytes.len() as u64)
}

pub fn blob(repo: &Path, digest: &str) -> std::path::PathBuf {
    repo.join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// A snapshot that is intact (every digest right) but whose database manifest records a
/// checksum the data does not have, as a faulty writer might leave it. Returns its id and
/// the name of the table whose checksum it changed.
pub fn forge_table_checksum(repo: &Path, site: &str, id: &str) -> (String, String) {
    let mut record = read_json(&repo.join(format!("snapshots/{site}/{id}.json")));
    let desc = record["manifests"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .find(|m| m["annotations"]["dev.freezer.db.name"].is_string())
        .expect("a database image");
    let mut manifest = read_json(&blob(repo, desc["digest"].as_str().unwrap()));
    let mut config = read_json(&blob(repo, manifest["config"]["digest"].as_str().unwrap()));
    let sum = config["tables"][0]["checksum"]
        .as_str()
        .unwrap()
        .to_string();
    let flipped: String = sum
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    config["tables"][0]["checksum"] = serde_json::json!(flipped);
    let (d, n) = put_json(repo, &config);
    manifest["config"]["digest"] = serde_json::json!(d);
    manifest["config"]["size"] = serde_json::json!(n);
    let (d, n) = put_json(repo, &manifest);
    desc["digest"] = serde_json::json!(d);
    desc["size"] = serde_json::json!(n);
    let bytes = serde_json::to_vec(&record).unwrap();
    let new_id = format!(
        "{}-{}",
        id.split('-').next().unwrap(),
        &hex::encode(Sha256::digest(&bytes))[..12]
    );
    fs::write(repo.join(format!("snapshots/{site}/{new_id}.json")), bytes).unwrap();
    let table = config["tables"][0]["name"].as_str().unwrap().to_string();
    (new_id, table)
}

/// Neither output of a run holds any of `secrets`.
pub fn assert_no_secret(out: &std::process::Output, secrets: &[&str]) {
    for text in [
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    ] {
        for s in secrets {
            assert!(!text.contains(s), "a secret was printed: {text}");
        }
    }
}

/// Relays every TCP connection to `listen` to `upstream`, byte for byte, for the rest of
/// the test process: an engine on a well-known port without moving the engine. Counts
/// the connections it took.
pub fn tcp_relay(listen: &str, upstream: &str) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    let listener = std::net::TcpListener::bind(listen).unwrap_or_else(|e| {
        panic!("binding {listen} for a relay: {e} (does something else listen there?)")
    });
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = taken.clone();
    let upstream = upstream.to_string();
    std::thread::spawn(move || {
        for client in listener.incoming().flatten() {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Ok(server) = std::net::TcpStream::connect(&upstream) {
                splice(client, server);
            }
        }
    });
    taken
}

/// Copies bytes both ways between two connections, a thread each way, until either
/// side closes; then closes both.
pub fn splice(client: std::net::TcpStream, server: std::net::TcpStream) {
    for (mut from, mut into) in [
        (client.try_clone().unwrap(), server.try_clone().unwrap()),
        (server, client),
    ] {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut from, &mut into);
            let _ = into.shutdown(std::net::Shutdown::Both);
        });
    }
}
