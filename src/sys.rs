//! The few system calls std does not wrap. This is the only module with `unsafe`:
//! each block is one libc call on values we own.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Creates a FIFO or a device node (`kind` is `libc::S_IFIFO`, `S_IFCHR` or `S_IFBLK`).
pub fn mknod(path: &Path, kind: libc::mode_t, perm: u32, rdev: u64) -> io::Result<()> {
    let c = cpath(path)?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            kind | (perm as libc::mode_t & 0o7777),
            rdev as libc::dev_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Atomically swaps two paths (renameat2 RENAME_EXCHANGE). Fails with EINVAL or ENOSYS
/// where the file system does not support it; callers fall back to two renames.
pub fn exchange(a: &Path, b: &Path) -> io::Result<()> {
    let ca = cpath(a)?;
    let cb = cpath(b)?;
    // SAFETY: both strings are valid and NUL-terminated for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Flushes everything written to the filesystem holding `path` to its disk: the data
/// and metadata of every file, in one call.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path)?;
    // SAFETY: syncfs takes an open descriptor, valid while `dir` lives.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Bytes available to this user on the file system holding `path`.
pub fn free_space(path: &Path) -> io::Result<u64> {
    let c = cpath(path)?;
    // SAFETY: statvfs writes into the zeroed struct we pass; `c` is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    if r == 0 {
        Ok(st.f_bavail as u64 * st.f_frsize as u64)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Effective uid and gid, and the process umask (read from /proc, which leaves it unchanged).
pub fn ids_and_umask() -> (u32, u32, u32) {
    // SAFETY: geteuid/getegid have no preconditions and cannot fail.
    let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
    let umask = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Umask:"))
                .and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
        })
        .unwrap_or(0o077);
    (uid, gid, umask)
}

/// Whether a process with this pid exists on this machine (signal 0 probes without
/// sending anything; EPERM means it exists but belongs to someone else).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 performs only the existence and permission check.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Where the next data at or after `pos` begins (`lseek(SEEK_DATA)`), or None when only
/// a hole is left. Moves the file offset: seek back before reading.
pub fn seek_data(f: &std::fs::File, pos: u64) -> io::Result<Option<u64>> {
    seek(f, pos, libc::SEEK_DATA)
}

/// Where the hole at or after `pos` begins (`lseek(SEEK_HOLE)`; the end of the file
/// counts as one). Moves the file offset: seek back before reading.
pub fn seek_hole(f: &std::fs::File, pos: u64) -> io::Result<Option<u64>> {
    seek(f, pos, libc::SEEK_HOLE)
}

fn seek(f: &std::fs::File, pos: u64, whence: libc::c_int) -> io::Result<Option<u64>> {
    use std::os::fd::AsRawFd;
    let pos = libc::off_t::try_from(pos)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset too large"))?;
    // SAFETY: lseek on a descriptor we own; no memory is passed.
    let r = unsafe { libc::lseek(f.as_raw_fd(), pos, whence) };
    if r >= 0 {
        return Ok(Some(r as u64));
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ENXIO) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// For a watchdog process: a session of its own (no terminal's Ctrl-C, no signal to its
/// parent's process group reaches it) and SIGINT, SIGTERM and SIGHUP ignored.
pub fn detach_from_terminal_signals() {
    // SAFETY: setsid and signal take no pointers; SIG_IGN is a valid disposition.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// This machine's name, as snapshots and locks record it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The name of a scratch file or directory that a run owns: `{tag}+{pid}+{host}+`, to
/// which the caller appends something unique. A run killed with SIGKILL cannot remove
/// what it made; the owner in the name lets the next run on this host find it and tell
/// that its process is gone ([`remove_dead_leftovers`]). `+` appears in no host name and
/// no tree name, so the parts can be told apart.
pub fn owned_prefix(tag: &str) -> String {
    format!("{tag}+{}+{}+", std::process::id(), hostname())
}

/// The tag of freezer's scratch files and directories in TMPDIR ([`temp_file`],
/// [`temp_dir`]).
const TEMP_TAG: &str = "freezer-tmp";

/// A scratch file in TMPDIR, named after its owner so that the next run removes it if
/// this one is killed ([`sweep_temp`]). Removed when dropped.
pub fn temp_file() -> crate::error::Result<tempfile::NamedTempFile> {
    let dir = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix(&owned_prefix(TEMP_TAG))
        .tempfile_in(&dir)
        .map_err(|e| crate::error::Error::io(format!("creating a file in {}", dir.display()), e))
}

/// A scratch directory in TMPDIR for `what` ("the mount's cache"), owned as
/// [`temp_file`] is. Removed with its content when dropped.
pub fn temp_dir(what: &str) -> crate::error::Result<tempfile::TempDir> {
    let dir = std::env::temp_dir();
    tempfile::Builder::new()
        .prefix(&owned_prefix(TEMP_TAG))
        .tempdir_in(&dir)
        .map_err(|e| crate::error::Error::io(format!("creating {what} in {}", dir.display()), e))
}

/// Removes the scratch files and directories that killed runs on this host left in
/// TMPDIR; once per process, before the run makes its own. Returns what it removed.
pub fn sweep_temp() -> Vec<(std::path::PathBuf, u64)> {
    static SWEPT: OnceLock<Vec<(std::path::PathBuf, u64)>> = OnceLock::new();
    SWEPT
        .get_or_init(|| remove_dead_leftovers(&std::env::temp_dir(), TEMP_TAG))
        .clone()
}

/// The entries of `dir` named by [`owned_prefix`] with `tag` whose process, on this host,
/// is gone. Entries of live processes, of other hosts and of other names are left out.
pub fn dead_leftovers(dir: &Path, tag: &str) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let host = hostname();
    let mut dead = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let mut parts = name.rsplitn(4, '+');
        let (Some(_unique), Some(h), Some(pid), Some(t)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if t == tag && h == host && !process_alive(pid) {
            dead.push(entry.path());
        }
    }
    dead
}

/// Removes [`dead_leftovers`]; returns each one removed with its size in bytes. Errors
/// are ignored: it is a sweep, and the next run tries again.
pub fn remove_dead_leftovers(dir: &Path, tag: &str) -> Vec<(std::path::PathBuf, u64)> {
    let mut removed = Vec::new();
    for path in dead_leftovers(dir, tag) {
        let size = tree_size(&path);
        if remove_any(&path).is_ok() {
            removed.push((path, size));
        }
    }
    removed
}

/// Removes a file, a link or a whole directory.
pub fn remove_any(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        _ => std::fs::remove_file(path),
    }
}

/// Bytes under a path (not following links).
pub fn tree_size(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !meta.is_dir() {
        return meta.len();
    }
    std::fs::read_dir(path)
        .map(|entries| entries.flatten().map(|e| tree_size(&e.path())).sum())
        .unwrap_or(0)
}

/// Makes the kernel end the child `cmd` starts (SIGTERM) when this process ends, however
/// it ends.
pub fn end_with_parent(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: runs in the child between fork and exec; prctl is async-signal-safe and
    // touches nothing of the parent's.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
}

/// freezer's state on this machine (what held containers and unstored run records
/// need to outlive a run): `$FREEZER_STATE_DIR`; by default `/var/lib/freezer` for root,
/// else `$XDG_STATE_HOME/freezer` (`~/.local/state/freezer`).
pub fn state_dir() -> std::path::PathBuf {
    use std::path::{Path, PathBuf};
    match std::env::var_os("FREEZER_STATE_DIR").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None if is_root() => PathBuf::from("/var/lib/freezer"),
        None => std::env::var_os("XDG_STATE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".local/state")))
            .unwrap_or_else(std::env::temp_dir)
            .join("freezer"),
    }
}

/// The time now. Test builds (feature `fault-injection`) take it from
/// `FREEZER_FAKE_NOW` (seconds since the epoch) when set, so a test can play a month of
/// nights in minutes; release builds have no such hook.
pub fn now() -> std::time::SystemTime {
    #[cfg(feature = "fault-injection")]
    if let Some(secs) = std::env::var("FREEZER_FAKE_NOW")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    {
        return std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    }
    std::time::SystemTime::now()
}

/// freezer's cache on this machine (remote-engine mirrors, keyring epochs):
/// `FREEZER_CACHE_DIR`, else `$XDG_CACHE_HOME/freezer`, else `~/.cache/freezer`.
pub fn cache_dir() -> std::path::PathBuf {
    std::env::var_os("FREEZER_CACHE_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME").map(|d| std::path::PathBuf::from(d).join("freezer"))
        })
        .or_else(|| {
            std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/freezer"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("/var/cache/freezer"))
}

/// Refuses a thaw whose trees do not fit: bytes needed per existing directory (the
/// nearest existing ancestor of each destination).
pub fn check_free_space(
    need: &std::collections::HashMap<std::path::PathBuf, u64>,
) -> crate::error::Result<()> {
    for (fs_path, bytes) in need {
        if let Ok(free) = free_space(fs_path) {
            if free < bytes + bytes / 100 {
                return Err(crate::error::Error::other(format!(
                    "not enough space at {}: the snapshot needs {}, {} is free",
                    fs_path.display(),
                    crate::progress::bytes(*bytes),
                    crate::progress::bytes(free)
                ))
                .with_hint("free space there, or thaw elsewhere"));
            }
        }
    }
    Ok(())
}

/// The nearest of `p` and its ancestors that exists.
pub fn existing_ancestor(p: &Path) -> std::path::PathBuf {
    let mut p = p.to_path_buf();
    while !p.exists() {
        if !p.pop() {
            return std::path::PathBuf::from("/");
        }
    }
    p
}

/// The process's one async runtime, which the S3 client, the Docker client, the database
/// connections, the signal watcher and the pings share. freezer's own work runs on
/// plain threads and drives async clients from there with `block_on`; the workers run
/// what those clients spawn (connections, multipart parts, database sessions).
pub fn runtime() -> crate::error::Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cpus.max(2))
            .thread_name("freezer-rt")
            .enable_all()
            .build()
            .map_err(|e| e.to_string())
    })
    .as_ref()
    .map_err(|e| crate::error::Error::other(format!("starting the async runtime: {e}")))
}

/// `0`, `90s`, `30m`, `24h`, `7d`.
pub fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 's')) => (&s[..i], 1u64),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 'h')) => (&s[..i], 3600),
        Some((i, 'd')) => (&s[..i], 86_400),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration like 90s, 30m, 24h or 7d"))?;
    Ok(std::time::Duration::from_secs(n.saturating_mul(mult)))
}

/// Kills a process group (a hook's `sh -c` and what it started) with SIGKILL.
pub fn kill_group(pgid: u32) {
    // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
    unsafe {
        libc::kill(-(pgid as i32), libc::SIGKILL);
    }
}
