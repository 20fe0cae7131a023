//! Volumes of an engine on another machine, through the Engine API's archive endpoints.
//!
//! Freezing pulls each volume as a tar stream (`GET /containers/{id}/archive`) into a local
//! **mirror** that is only touched where the stream differs from it, so the tree freeze's
//! change detection (inode, ctime) still skips what did not change since last night; only
//! the reading travels again. Thawing restores each tree into a local staging directory
//! and pushes it as a tar stream into a created container (`PUT …/archive`).

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use bollard::query_parameters::DownloadFromContainerOptionsBuilder;
use sha2::{Digest as _, Sha256};

use super::{ContainerEngine, Engine};
use crate::error::{Error, IoContext, Result};

/// Where the mirror of one volume of one engine lives: `FREEZER_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/freezer`, else `~/.cache/freezer`, then `mirror/<hash>-<tree>`.
pub fn mirror_path(engine_host: &str, source: &str, tree: &str) -> PathBuf {
    let base = crate::sys::cache_dir();
    let key = hex::encode(&Sha256::digest(format!("{engine_host}\0{source}").as_bytes())[..8]);
    base.join("mirror").join(format!("{key}-{tree}"))
}

pub(super) fn pull(engine: &Engine, id: &str, name: &str, dest: &str, mirror: &Path) -> Result<()> {
    fs::create_dir_all(mirror).ctx(|| format!("creating {}", mirror.display()))?;
    let tmp = download(engine, id, name, dest)?;
    sync(tmp, mirror)
}

/// Brings the mirror `file` of the single file a container mounts at `dest` up to date
/// (the other files of its mirror directory are not touched).
pub(super) fn pull_file(
    engine: &Engine,
    id: &str,
    name: &str,
    dest: &str,
    file: &Path,
) -> Result<()> {
    let parent = file.parent().expect("a file in a mirror directory");
    fs::create_dir_all(parent).ctx(|| format!("creating {}", parent.display()))?;
    let tmp = download(engine, id, name, dest)?;
    let mut archive = tar::Archive::new(tmp);
    let mut entries = archive
        .entries()
        .ctx(|| format!("reading {dest} of container {name}"))?;
    let mut entry = match entries.next() {
        Some(e) => e.ctx(|| format!("reading {dest} of container {name}"))?,
        None => return Err(Error::other(format!("{dest} of container {name} is empty"))),
    };
    if !matches!(
        entry.header().entry_type(),
        tar::EntryType::Regular | tar::EntryType::Continuous
    ) {
        return Err(Error::usage(format!(
            "container {name} mounts {dest}, which is neither a directory nor a regular file"
        )));
    }
    mirror_file(&mut entry, file, crate::sys::is_root())
}

/// The archive of `dest` in container `id`, in a temporary file.
fn download(engine: &Engine, id: &str, name: &str, dest: &str) -> Result<fs::File> {
    let mut tmp = tempfile::tempfile().ctx(|| "creating a temporary file".into())?;
    engine.block_on(async {
        use futures::StreamExt;
        let mut s = engine.docker.download_from_container(
            id,
            Some(
                DownloadFromContainerOptionsBuilder::new()
                    .path(dest)
                    .build(),
            ),
        );
        while let Some(chunk) = s.next().await {
            let chunk = chunk
                .map_err(|e| engine.error(&format!("reading {dest} of container {name}"), e))?;
            tmp.write_all(&chunk)
                .ctx(|| "writing a temporary file".into())?;
        }
        Ok::<_, Error>(())
    })?;
    use std::io::Seek;
    tmp.rewind().ctx(|| "reading a temporary file".into())?;
    Ok(tmp)
}

/// Makes `mirror` equal to the tar stream (whose entries sit under one top directory, as
/// the archive endpoint sends them), touching only what differs.
fn sync(tar: impl Read, mirror: &Path) -> Result<()> {
    let mut archive = tar::Archive::new(tar);
    let mut seen: HashSet<PathBuf> = HashSet::new();
    let mut dirs: Vec<(PathBuf, u32, u64, u64, i64)> = Vec::new();
    let root_owner = crate::sys::is_root();
    for entry in archive
        .entries()
        .ctx(|| "reading the volume's archive".into())?
    {
        let mut entry = entry.ctx(|| "reading the volume's archive".into())?;
        let raw = entry
            .path()
            .ctx(|| "reading the volume's archive".into())?
            .into_owned();
        let rel: PathBuf = raw.components().skip(1).collect();
        if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(Error::integrity(format!(
                "the engine's archive holds the path {}, which leaves the volume",
                raw.display()
            )));
        }
        let h = entry.header();
        let mode = h.mode().unwrap_or(0o644) & 0o7777;
        let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
        let mtime = h.mtime().unwrap_or(0) as i64;
        let dst = mirror.join(&rel);
        seen.insert(rel.clone());
        let kind = h.entry_type();
        let existing = fs::symlink_metadata(&dst).ok();
        match kind {
            tar::EntryType::Directory => {
                if !existing.as_ref().is_some_and(|m| m.is_dir()) {
                    remove_any(&dst)?;
                    fs::create_dir_all(&dst).ctx(|| format!("creating {}", dst.display()))?;
                }
                dirs.push((dst, mode, uid, gid, mtime));
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                mirror_file(&mut entry, &dst, root_owner)?;
            }
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .ctx(|| "reading the volume's archive".into())?
                    .map(|t| t.into_owned())
                    .unwrap_or_default();
                if existing.is_some() && fs::read_link(&dst).ok().as_ref() == Some(&target) {
                    continue;
                }
                remove_any(&dst)?;
                std::os::unix::fs::symlink(&target, &dst)
                    .ctx(|| format!("creating {}", dst.display()))?;
                if root_owner {
                    let _ = std::os::unix::fs::lchown(&dst, Some(uid as u32), Some(gid as u32));
                }
                let t = filetime::FileTime::from_unix_time(mtime, 0);
                let _ = filetime::set_symlink_file_times(&dst, t, t);
            }
            tar::EntryType::Link => {
                let target: PathBuf = entry
                    .link_name()
                    .ctx(|| "reading the volume's archive".into())?
                    .map(|t| t.components().skip(1).collect())
                    .unwrap_or_default();
                let src = mirror.join(&target);
                let same = match (&existing, fs::symlink_metadata(&src)) {
                    (Some(a), Ok(b)) => a.ino() == b.ino() && a.dev() == b.dev(),
                    _ => false,
                };
                if !same {
                    remove_any(&dst)?;
                    fs::hard_link(&src, &dst).ctx(|| format!("linking {}", dst.display()))?;
                }
            }
            // FIFOs and devices in a volume are rare; they are not mirrored.
            _ => {
                seen.remove(&rel);
            }
        }
    }
    // What the volume no longer has.
    remove_unseen(mirror, Path::new(""), &seen)?;
    // Directory metadata last, deepest first (writing into a directory moves its mtime).
    set_dir_meta(dirs, root_owner)
}

/// Gives the mirror's directories the archive's modes, owners (as root) and mtimes,
/// deepest first, changing only what differs: (path, mode, uid, gid, mtime).
fn set_dir_meta(mut dirs: Vec<(PathBuf, u32, u64, u64, i64)>, root_owner: bool) -> Result<()> {
    dirs.sort_by(|a, b| b.0.cmp(&a.0));
    for (dir, mode, uid, gid, mtime) in dirs {
        let meta = fs::metadata(&dir).ctx(|| format!("reading {}", dir.display()))?;
        if meta.mode() & 0o7777 != mode {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode))
                .ctx(|| format!("setting the mode of {}", dir.display()))?;
        }
        if root_owner && (meta.uid() as u64 != uid || meta.gid() as u64 != gid) {
            std::os::unix::fs::chown(&dir, Some(uid as u32), Some(gid as u32))
                .ctx(|| format!("setting the owner of {}", dir.display()))?;
        }
        if meta.mtime() != mtime {
            filetime::set_file_mtime(&dir, filetime::FileTime::from_unix_time(mtime, 0))
                .ctx(|| format!("setting the mtime of {}", dir.display()))?;
        }
    }
    Ok(())
}

/// Makes the file `dst` equal to the archive's regular file `entry` (contents, mode,
/// owner when running as root, mtime), rewriting it only when they differ.
fn mirror_file<R: Read>(entry: &mut tar::Entry<R>, dst: &Path, root_owner: bool) -> Result<()> {
    let h = entry.header();
    let mode = h.mode().unwrap_or(0o644) & 0o7777;
    let (uid, gid) = (h.uid().unwrap_or(0), h.gid().unwrap_or(0));
    let mtime = h.mtime().unwrap_or(0) as i64;
    let same = fs::symlink_metadata(dst).is_ok_and(|m| {
        m.is_file()
            && m.len() == h.size().unwrap_or(u64::MAX)
            && m.mtime() == mtime
            && m.mode() & 0o7777 == mode
            && (!root_owner || (m.uid() as u64 == uid && m.gid() as u64 == gid))
    });
    if same {
        return Ok(());
    }
    remove_any(dst)?;
    let parent = dst.parent().expect("below the mirror");
    let mut t = tempfile::NamedTempFile::new_in(parent)
        .ctx(|| format!("creating a file in {}", parent.display()))?;
    std::io::copy(entry, t.as_file_mut()).ctx(|| format!("writing {}", dst.display()))?;
    let f = t.as_file();
    f.set_permissions(fs::Permissions::from_mode(mode))
        .ctx(|| format!("setting the mode of {}", dst.display()))?;
    if root_owner {
        std::os::unix::fs::fchown(f, Some(uid as u32), Some(gid as u32))
            .ctx(|| format!("setting the owner of {}", dst.display()))?;
    }
    filetime::set_file_handle_times(f, None, Some(filetime::FileTime::from_unix_time(mtime, 0)))
        .ctx(|| format!("setting the mtime of {}", dst.display()))?;
    t.persist(dst)
        .map_err(|e| Error::io(format!("writing {}", dst.display()), e.error))?;
    Ok(())
}

fn remove_any(p: &Path) -> Result<()> {
    match fs::symlink_metadata(p) {
        Err(_) => Ok(()),
        Ok(m) if m.is_dir() => fs::remove_dir_all(p).ctx(|| format!("removing {}", p.display())),
        Ok(_) => fs::remove_file(p).ctx(|| format!("removing {}", p.display())),
    }
}

fn remove_unseen(root: &Path, rel: &Path, seen: &HashSet<PathBuf>) -> Result<()> {
    let dir = root.join(rel);
    let Ok(read) = fs::read_dir(&dir) else {
        return Ok(());
    };
    for e in read {
        let e = e.ctx(|| format!("reading {}", dir.display()))?;
        let r = rel.join(e.file_name());
        if !seen.contains(&r) {
            remove_any(&e.path())?;
        } else if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_unseen(root, &r, seen)?;
        }
    }
    Ok(())
}

/// Appends `root/rel` and everything below it; a file with several names is stored once,
/// later names as hard links to the first (tar's `append_dir_all` would copy it).
fn pack<W: Write>(
    b: &mut tar::Builder<W>,
    root: &Path,
    rel: &Path,
    links: &mut std::collections::HashMap<(u64, u64), PathBuf>,
) -> std::io::Result<()> {
    let path = root.join(rel);
    let meta = fs::symlink_metadata(&path)?;
    if meta.is_file() && meta.nlink() > 1 {
        if let Some(first) = links.get(&(meta.dev(), meta.ino())) {
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            return b.append_link(&mut h, rel, first);
        }
        links.insert((meta.dev(), meta.ino()), rel.to_path_buf());
    }
    b.append_path_with_name(&path, rel)?;
    if meta.is_dir() {
        let mut names: Vec<_> = fs::read_dir(&path)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<std::io::Result<_>>()?;
        names.sort();
        for n in names {
            pack(b, root, &rel.join(n), links)?;
        }
    }
    Ok(())
}

/// Writes a restored directory into a created container at `dest` (a volume or bind
/// mount), as the archive endpoint extracts it: owners, modes and times kept.
pub fn push(engine: &dyn ContainerEngine, container: &str, dest: &str, dir: &Path) -> Result<()> {
    let mut tmp = tempfile::tempfile().ctx(|| "creating a temporary file".into())?;
    {
        let mut b = tar::Builder::new(&mut tmp);
        b.follow_symlinks(false);
        b.mode(tar::HeaderMode::Complete);
        // The engine's extractor refuses GNU sparse entries (type 'S'), which the tar crate
        // writes for files with holes (a database's data files): holes go as zeros.
        b.sparse(false);
        let mut links = std::collections::HashMap::new();
        pack(&mut b, dir, Path::new("."), &mut links)
            .ctx(|| format!("packing {}", dir.display()))?;
        b.finish().ctx(|| format!("packing {}", dir.display()))?;
    }
    use std::io::Seek;
    tmp.rewind().ctx(|| "reading a temporary file".into())?;
    engine.upload(container, dest, tmp)
}

/// The first entries of `dest`'s archive in a container (running or not): the path's own
/// entry, then the first inside it, if any. Only the start of the archive is read.
fn archive_head(
    engine: &dyn ContainerEngine,
    container: &str,
    dest: &str,
) -> Result<Vec<tar::EntryType>> {
    // Two headers, with room for extension headers (long names, PAX) before them.
    let head = engine.archive_head(container, dest, 64 << 10)?;
    let mut archive = tar::Archive::new(std::io::Cursor::new(head));
    let mut types = Vec::new();
    if let Ok(list) = archive.entries() {
        // A cut-off entry after the first two still counts: it exists.
        for e in list {
            let Ok(e) = e else { break };
            types.push(e.header().entry_type());
            if types.len() > 1 {
                break;
            }
        }
    }
    Ok(types)
}

/// Whether `dest` in a container is an empty directory (or nothing).
pub fn is_empty(engine: &dyn ContainerEngine, container: &str, dest: &str) -> Result<bool> {
    Ok(archive_head(engine, container, dest)?.len() <= 1)
}

/// Whether `dest` in a container is a directory.
pub fn is_dir(engine: &dyn ContainerEngine, container: &str, dest: &str) -> Result<bool> {
    Ok(archive_head(engine, container, dest)?.first() == Some(&tar::EntryType::Directory))
}

/// Writes `dir` into a volume or directory on the engine's machine through a helper
/// container of `image` that mounts it (`mount`, an Engine API mount of Type volume or
/// bind) writable at /freezer-restore. A bind is given as a `Binds` string, as the
/// containers get it: the engine creates a missing directory on its host (a `Mounts`
/// bind would refuse it). With `clear`, what is there is deleted first: the
/// helper runs `sh -c 'rm -rf …'`, which the image must have. The helper is removed, with
/// the anonymous volumes its image gave it.
pub fn write_through_helper(
    engine: &dyn ContainerEngine,
    image: &str,
    mount: serde_json::Value,
    dir: &Path,
    clear: bool,
) -> Result<()> {
    const AT: &str = "/freezer-restore";
    let mut mount = mount;
    mount["Target"] = AT.into();
    mount["ReadOnly"] = false.into();
    let host_config = match mount["Type"].as_str() {
        Some("bind") => serde_json::json!({
            "Binds": [format!("{}:{AT}", mount["Source"].as_str().unwrap_or_default())]
        }),
        _ => serde_json::json!({ "Mounts": [mount] }),
    };
    let helper = create_helper(
        engine,
        serde_json::json!({
            "Image": image,
            "User": "0",
            "Entrypoint": ["sh", "-c"],
            "Cmd": [format!("rm -rf {AT}/..?* {AT}/.[!.]* {AT}/*")],
            "HostConfig": host_config,
        }),
    )?;
    let result = (|| {
        if clear {
            run_to_end(engine, &helper).map_err(|e| {
                crate::error::prefix(
                    e,
                    &format!("emptying it through a helper container of image {image} (sh -c rm)"),
                )
            })?;
        }
        push(engine, &helper, AT, dir)
    })();
    let _ = engine.remove_container(&helper, true);
    result
}

/// Creates a helper container (`freezer-restore-<random>`) from `body`; returns its name.
fn create_helper(engine: &dyn ContainerEngine, body: serde_json::Value) -> Result<String> {
    let mut b = [0u8; 4];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    let helper = format!("freezer-restore-{}", hex::encode(b));
    engine
        .create_container(&helper, &body)
        .map_err(|e| crate::error::prefix(e, "creating a helper container"))?;
    Ok(helper)
}

/// Which of `rels` exist in the directory `dir` of the engine's host, seen through one
/// helper container of `image` that mounts the directory read-only (created, never
/// started, removed). A directory that is not there holds nothing: the engine refuses
/// a `Mounts` bind of a missing source ("bind source path does not exist"), which is
/// the answer.
pub fn existing_on_host<'a>(
    engine: &dyn ContainerEngine,
    image: &str,
    dir: &str,
    rels: &'a [String],
) -> Result<Vec<&'a String>> {
    const AT: &str = "/freezer-look";
    let body = serde_json::json!({
        "Image": image,
        "Cmd": ["true"],
        "Entrypoint": [],
        "HostConfig": {"Mounts": [
            {"Type": "bind", "Source": dir, "Target": AT, "ReadOnly": true}
        ]},
    });
    let helper = match create_helper(engine, body) {
        Err(e) if e.message.contains("does not exist") => return Ok(vec![]),
        r => r?,
    };
    let found = rels
        .iter()
        .map(
            |rel| match archive_head(engine, &helper, &format!("{AT}/{rel}")) {
                Ok(entries) => Ok((!entries.is_empty()).then_some(rel)),
                Err(e) if e.kind == crate::error::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        )
        .collect::<Result<Vec<_>>>();
    let _ = engine.remove_container(&helper, true);
    Ok(found?.into_iter().flatten().collect())
}

/// Starts a created container and waits for it to exit 0.
fn run_to_end(engine: &dyn ContainerEngine, container: &str) -> Result<()> {
    engine.start_container(container)?;
    let code = engine.wait_container(container)?;
    if code != 0 {
        return Err(Error::other(format!(
            "container {container} exited with code {code}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod fake_engine_tests {
    use super::*;
    use crate::docker::fake::FakeEngine;

    fn restored(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = dir.path().join(p);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
        dir
    }

    #[test]
    fn a_directory_is_written_through_a_helper_that_is_removed_after() {
        let engine = FakeEngine::remote_with_images(&["shop/web:1"]);
        let dir = restored(&[("cat.jpg", "a cat"), ("2026/dog.jpg", "a dog")]);
        std::os::unix::fs::symlink("cat.jpg", dir.path().join("latest.jpg")).unwrap();
        let mount = serde_json::json!({"Type": "volume", "Source": "shop_www"});
        write_through_helper(&engine, "shop/web:1", mount, dir.path(), true).unwrap();
        let st = engine.state();
        assert!(st.containers.is_empty(), "{:?}", st.containers.keys());
        let (helper, dest, entries) = &st.uploads[0];
        assert!(helper.starts_with("freezer-restore-"), "{helper}");
        assert_eq!(dest, "/freezer-restore");
        for e in ["cat.jpg", "2026/dog.jpg", "latest.jpg"] {
            assert!(entries.iter().any(|x| x.ends_with(e)), "{e} in {entries:?}");
        }
        // Emptied first: the helper ran (to its end) before the upload.
        let calls: Vec<String> = st
            .calls
            .iter()
            .filter(|c| !c.starts_with("container "))
            .cloned()
            .collect();
        assert!(
            calls[0].starts_with("create_container freezer-restore-"),
            "{calls:?}"
        );
        assert!(calls[1].starts_with("start_container"), "{calls:?}");
        assert!(calls[2].starts_with("wait_container"), "{calls:?}");
        assert!(calls[3].starts_with("upload"), "{calls:?}");
        assert!(calls[4].starts_with("remove_container"), "{calls:?}");
    }

    #[test]
    fn a_helper_that_cannot_empty_the_volume_fails_before_anything_is_written() {
        let engine = FakeEngine::remote_with_images(&["shop/web:1"]);
        engine.exit_on_start("", 1);
        let dir = restored(&[("cat.jpg", "a cat")]);
        let mount = serde_json::json!({"Type": "volume", "Source": "shop_www"});
        let err = write_through_helper(&engine, "shop/web:1", mount, dir.path(), true)
            .expect_err("failed");
        assert!(
            err.message
                .contains("emptying it through a helper container"),
            "{err}"
        );
        assert!(err.message.contains("exited with code 1"), "{err}");
        let st = engine.state();
        assert!(st.uploads.is_empty());
        assert!(st.containers.is_empty());
    }

    #[test]
    fn a_helper_needs_its_image_on_the_engine() {
        let engine = FakeEngine::remote_with_images(&[]);
        let dir = restored(&[("cat.jpg", "a cat")]);
        let mount = serde_json::json!({"Type": "volume", "Source": "shop_www"});
        let err = write_through_helper(&engine, "shop/web:1", mount, dir.path(), false)
            .expect_err("failed");
        assert!(err.message.contains("creating a helper container"), "{err}");
        assert!(err.message.contains("shop/web:1"), "{err}");
    }
}
