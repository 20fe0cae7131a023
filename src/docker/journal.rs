//! The hold journal: what a hydrated freeze has paused or stopped, on disk on the host
//! that runs freezer, so that no run ever leaves a site held without the next one
//! knowing.
//!
//! The watchdog ([`super::guard`]) resumes a site when the freeze dies, but not when
//! both die (`kill -9` of the session, a power cut, the OOM killer taking both). Then
//! the containers stay paused or stopped, and a later freeze would take that for the
//! site's own state: record it, and a thaw would recreate a paused or stopped site. So
//! before a container is held, a file `held/<container id>.json` under the state
//! directory names it, the engine, and the run (pid, host); it is removed once the
//! container runs again. Every run that reads a site ([`recover`]) first puts back
//! what a dead run held, says so, and only then reads the containers' state; a
//! container held by a run that is still alive is refused.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::{ContainerEngine, Engine};
use crate::error::{Error, ErrorKind, Result};

/// One held container.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    pub name: String,
    /// true: stopped for the copy (start it again); false: paused (unpause it).
    pub stopped: bool,
    /// The engine it runs on (`DOCKER_HOST`-style).
    pub engine: String,
    /// The run that holds it.
    pub pid: u32,
    pub host: String,
    /// When it was held (RFC 3339).
    pub since: String,
}

/// Where entries live: `$FREEZER_STATE_DIR/held`; by default `/var/lib/freezer/held` for
/// root, else `$XDG_STATE_HOME/freezer/held` (`~/.local/state/freezer/held`).
pub fn dir() -> PathBuf {
    crate::sys::state_dir().join("held")
}

fn path(id: &str) -> PathBuf {
    // Container ids are hex; anything else is kept out of the path.
    let safe: String = id.chars().filter(char::is_ascii_alphanumeric).collect();
    dir().join(format!("{safe}.json"))
}

/// Notes that this run is about to hold `id`; durable before the container is touched.
pub fn record(engine: &Engine, id: &str, name: &str, stopped: bool) -> Result<()> {
    use std::io::Write;
    let entry = Entry {
        id: id.into(),
        name: name.into(),
        stopped,
        engine: engine.endpoint.host.clone(),
        pid: std::process::id(),
        host: crate::sys::hostname(),
        since: crate::format::rfc3339(std::time::SystemTime::now()),
    };
    let d = dir();
    let fail = |e: std::io::Error| {
        Error::io(format!("writing the hold journal in {}", d.display()), e).with_hint(
            "freezer notes each container it pauses there first; make the directory writable, or set FREEZER_STATE_DIR",
        )
    };
    std::fs::create_dir_all(&d).map_err(fail)?;
    let p = path(id);
    let tmp = p.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp).map_err(fail)?;
    f.write_all(&serde_json::to_vec(&entry).expect("serializable"))
        .and_then(|()| f.sync_all())
        .map_err(fail)?;
    std::fs::rename(&tmp, &p).map_err(fail)?;
    if let Ok(dir) = std::fs::File::open(&d) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// The container runs again: its entry goes.
pub fn clear(id: &str) {
    let _ = std::fs::remove_file(path(id));
}

fn read(id: &str) -> Option<Entry> {
    serde_json::from_slice(&std::fs::read(path(id)).ok()?).ok()
}

/// Whether the run of `e` is still at work (a live freezer process on this host).
fn holder_alive(e: &Entry) -> bool {
    e.host == crate::sys::hostname()
        && crate::sys::process_alive(e.pid)
        && std::fs::read_to_string(format!("/proc/{}/comm", e.pid))
            .is_ok_and(|c| c.trim() == "freezer")
}

/// Before a run reads the state of the containers `ids` (id, name): puts back what a
/// dead run paused or stopped among them, and returns a note for each; refuses a
/// container that a live run holds right now.
pub fn recover(engine: &Engine, ids: &[(String, String)]) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    for (id, name) in ids {
        let Some(e) = read(id) else { continue };
        if e.pid == std::process::id() {
            continue;
        }
        if holder_alive(&e) {
            return Err(Error::new(
                ErrorKind::Locked,
                format!(
                    "container {name} is held ({}) by another freezer run (pid {}, since {})",
                    if e.stopped { "stopped" } else { "paused" },
                    e.pid,
                    e.since
                ),
            )
            .with_hint("wait for that run to end, and run again"));
        }
        match resume(engine, id, e.stopped) {
            Ok(true) => notes.push(format!(
                "container {name} was left {} by a freezer run that died (pid {} on {}, since {}); it was {} before this run read the site",
                if e.stopped { "stopped" } else { "paused" },
                e.pid,
                e.host,
                e.since,
                if e.stopped { "started again" } else { "unpaused" },
            )),
            Ok(false) => {}
            Err(err) => {
                let cli = engine.flavor.cli();
                let how = if e.stopped { "start" } else { "unpause" };
                return Err(Error::new(
                    ErrorKind::Conflict,
                    format!(
                        "container {name} was left {} by a freezer run that died (pid {}, since {}), and resuming it failed: {}",
                        if e.stopped { "stopped" } else { "paused" },
                        e.pid,
                        e.since,
                        err.message
                    ),
                )
                .with_hint(format!(
                    "resume it by hand (`{cli} {how} {name}`) and run again; nothing was recorded"
                )));
            }
        }
        clear(id);
    }
    Ok(notes)
}

/// Puts one container back unless it is no longer held (the freeze released it before it
/// ended, or someone else did); true if it had to.
pub(super) fn resume(engine: &Engine, id: &str, stopped: bool) -> Result<bool> {
    use bollard::models::ContainerStateStatusEnum as S;
    let status = engine.inspect_container(id)?.state.and_then(|s| s.status);
    let id = id.to_string();
    match (stopped, status) {
        (false, Some(S::PAUSED)) => engine
            .call("unpausing the container", |d| async move {
                d.unpause_container(&id).await
            })
            .map(|()| true),
        (true, Some(S::EXITED | S::CREATED)) => engine.start_container(&id).map(|()| true),
        _ => Ok(false),
    }
}
