//! The few system calls std does not wrap. This is the only module with `unsafe`:
//! each block is one libc call on values we own.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

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

/// Restores the default SIGPIPE action, so `freezer snapshots | head` ends quietly like
/// any Unix tool instead of panicking on a closed stdout.
pub fn default_sigpipe() {
    // SAFETY: setting a signal disposition to SIG_DFL has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
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

/// Test hook: sleeps for the milliseconds the environment variable `var` names, so a test
/// can interrupt a run at a known point. Unset (always, in real use): does nothing.
pub fn fault_sleep(var: &str) {
    if let Some(ms) = std::env::var(var).ok().and_then(|v| v.parse::<u64>().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
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
