//! Repository locks, without conditional writes (Garage ignores them).
//!
//! A lock is an object `locks/<kind>-<scope>-<random>.json`. To take one, a run writes its
//! object, then lists `locks/` and reads those that could conflict with it (a freeze: its
//! site's and the prunes'): if it sees a live lock it conflicts with, it releases its own
//! and fails. Two runs that race both write before they list, so at least one of them
//! sees the other (listing is read-after-write consistent on S3 and Garage). A live lock
//! is rewritten every [`HEARTBEAT`]; one whose object is older than [`STALE`] by the
//! store's own clock belongs to a run that died, and is ignored, so a crash never blocks
//! the next night; so is, at once, a lock of this host whose process no longer exists.
//! A run deletes its lock at the end; where the store refuses it the delete, it
//! overwrites the lock as released, which prune removes: a freeze needs no delete
//! permission.
//!
//! Freezes of different sites run side by side; a freeze of the same site, or a prune,
//! conflicts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::error::{Error, ErrorKind, Result};
use crate::repo::Repository;
use crate::store::Store;

pub const LOCKS_PREFIX: &str = "locks/";
pub const HEARTBEAT: Duration = Duration::from_secs(300);
pub const STALE: Duration = Duration::from_secs(1800);

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// `freeze` or `prune`.
    pub kind: String,
    /// The site, for a freeze.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    pub host: String,
    pub pid: u32,
    pub started: String,
    #[serde(default)]
    pub released: bool,
    /// When the lock was first written, by the store's clock (ns since the epoch); set
    /// by heartbeats, so rewriting a lock never makes it look younger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_ns: Option<u128>,
}

impl LockInfo {
    /// Taken on this host by a process that is gone (SPEC.md §12: stale at once).
    pub fn is_dead_here(&self) -> bool {
        !self.released
            && self.host == crate::sys::hostname()
            && !crate::sys::process_alive(self.pid)
    }

    fn conflicts(&self, other: &LockInfo) -> bool {
        self.kind == "prune" || other.kind == "prune" || self.site == other.site
    }

    fn describe(&self) -> String {
        match &self.site {
            Some(site) => format!(
                "a {} of site {site} (host {}, pid {}, since {})",
                self.kind, self.host, self.pid, self.started
            ),
            None => format!(
                "a {} (host {}, pid {}, since {})",
                self.kind, self.host, self.pid, self.started
            ),
        }
    }
}

/// A held lock. Dropping it releases it.
pub struct Lock {
    store: Arc<dyn Store>,
    key: String,
    info: LockInfo,
    stop: Arc<AtomicBool>,
    heartbeat: Option<std::thread::JoinHandle<()>>,
    /// When the lock object was written, by the store's clock.
    pub written: SystemTime,
    /// Released by the run's interrupt scope if a signal ends the run before this drops.
    registered: Option<crate::interrupt::Registered>,
}

/// Takes a lock for a freeze of `site`, or for a prune (`site` None). While a prune holds
/// the repository, waits up to `wait_for_prune` (polling with jitter); any other conflict
/// fails at once.
pub fn acquire_waiting(
    repo: &Repository,
    kind: &str,
    site: Option<&str>,
    wait_for_prune: Duration,
    progress: &crate::progress::Progress,
) -> Result<Lock> {
    let started = std::time::Instant::now();
    // One lock object per run, however often it retries.
    // An encrypted repository's locks name sites as its records do: by keyed name.
    let site_dir = site.map(|s| repo.site_dir(s));
    let site = site_dir.as_deref();
    let key = lock_key(kind, site);
    let mut ties = 0;
    loop {
        match try_acquire(repo, kind, site, &key) {
            Ok(mut lock) => {
                let (store, key, info) = (lock.store.clone(), lock.key.clone(), lock.info.clone());
                lock.registered = Some(
                    progress
                        .cancel()
                        .scope()
                        .lock(Box::new(move || release(&*store, &key, &info))),
                );
                return Ok(lock);
            }
            Err(c)
                if c.1.as_ref().is_some_and(|o| o.kind == "prune")
                    && started.elapsed() < wait_for_prune =>
            {
                progress.set_label("waiting for a prune to finish");
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 500..1500);
                std::thread::sleep(Duration::from_millis(jitter));
            }
            // A tie: both runs backed off; try again after a random pause.
            Err(c) if c.1.is_none() && c.0.kind == ErrorKind::Locked && ties < 20 => {
                ties += 1;
                let pause = rand::Rng::gen_range(&mut rand::thread_rng(), 200..2000);
                std::thread::sleep(Duration::from_millis(pause));
            }
            Err(c) => return Err(c.0),
        }
    }
}

/// Takes a lock, failing at once on any conflict.
pub fn acquire(
    repo: &Repository,
    kind: &str,
    site: Option<&str>,
    progress: &crate::progress::Progress,
) -> Result<Lock> {
    acquire_waiting(repo, kind, site, Duration::ZERO, progress)
}

fn lock_key(kind: &str, site: Option<&str>) -> String {
    let mut rand = [0u8; 6];
    rand::Rng::fill(&mut rand::thread_rng(), &mut rand);
    format!(
        "{LOCKS_PREFIX}{kind}-{}-{}.json",
        site.unwrap_or("repository"),
        hex::encode(rand)
    )
}

/// Whether the lock object `key` could conflict with a lock of `site` (None: a prune)
/// without reading it: a freeze's or copy's key names its site (SPEC.md §12), so a
/// freeze reads only the locks of its own site and the prunes', and its cost does not
/// grow with the other sites' runs (whose released locks stay until prune).
fn may_conflict(key: &str, site: Option<&str>) -> bool {
    let Some(site) = site else {
        return true;
    };
    let name = key.strip_prefix(LOCKS_PREFIX).unwrap_or(key);
    let name = name.strip_suffix(".json").unwrap_or(name);
    // `<kind>-<scope>-<random>`: the kind and the random part hold no dash, a site may.
    let parsed = name
        .split_once('-')
        .and_then(|(kind, rest)| Some((kind, rest.rsplit_once('-')?.0)));
    match parsed {
        Some(("freeze" | "copy", scope)) => scope == site,
        _ => true,
    }
}

/// A failed attempt: the error, and the lock that conflicts (when there is one).
type Conflict = Box<(Error, Option<LockInfo>)>;

fn try_acquire(
    repo: &Repository,
    kind: &str,
    site: Option<&str>,
    key: &str,
) -> std::result::Result<Lock, Conflict> {
    let plain = |e: Error| Box::new((e, None));
    let store = repo.shared_store();
    let key = key.to_string();
    let info = LockInfo {
        kind: kind.into(),
        site: site.map(String::from),
        host: crate::sys::hostname(),
        pid: std::process::id(),
        started: crate::format::rfc3339(SystemTime::now()),
        released: false,
        since_ns: None,
    };
    store
        .put(&key, &crate::format::to_json(&info))
        .map_err(plain)?;
    let listed = store.list(LOCKS_PREFIX).map_err(plain)?;
    let written = listed
        .iter()
        .find(|o| o.key == key)
        .and_then(|o| o.modified)
        .unwrap_or_else(SystemTime::now);
    let mut lock = Lock {
        store: store.clone(),
        key,
        info,
        stop: Arc::new(AtomicBool::new(false)),
        heartbeat: None,
        written,
        registered: None,
    };
    for o in &listed {
        let stale = o.modified.is_some_and(|m| m + STALE < written);
        if o.key == lock.key || stale || !may_conflict(&o.key, site) {
            continue;
        }
        let Ok(data) = store.get(&o.key) else {
            continue; // released and removed meanwhile
        };
        let Ok(other) = serde_json::from_slice::<LockInfo>(&data) else {
            continue;
        };
        // A lock of this host whose process is gone belongs to a run that was killed:
        // it is no lock, and its object is removed rather than left for prune.
        if other.is_dead_here() {
            let _ = store.delete(&o.key);
            continue;
        }
        if other.released || !lock.info.conflicts(&other) {
            continue;
        }
        // The older lock wins; the younger run backs off. Lock times come from the
        // store, whose clock may tick only once a second (S3): two locks of the same
        // tick both back off, and their runs try again after a random pause.
        let theirs = other.since_ns.or_else(|| o.modified.map(ns)).unwrap_or(0);
        let mine = ns(written);
        if theirs > mine {
            continue;
        }
        if theirs == mine {
            drop(lock);
            let e = Error::new(
                ErrorKind::Locked,
                "another run took a lock at the same instant",
            );
            return Err(Box::new((e, None)));
        }
        {
            let what = other.describe();
            drop(lock);
            let e = Error::new(
                ErrorKind::Locked,
                format!("{} is running on {}", what, repo.location()),
            )
            .with_hint(format!(
                "wait for it to finish; a lock whose run died is ignored {} minutes after its last heartbeat",
                STALE.as_secs() / 60
            ));
            return Err(Box::new((e, Some(other))));
        }
    }
    lock.info.since_ns = Some(ns(written));
    lock.heartbeat = Some(heartbeat(&lock));
    Ok(lock)
}

/// A thread that rewrites the lock every [`HEARTBEAT`] until the lock stops it, so other
/// runs see it is alive.
fn heartbeat(lock: &Lock) -> std::thread::JoinHandle<()> {
    let (store, key, info, stop) = (
        lock.store.clone(),
        lock.key.clone(),
        lock.info.clone(),
        lock.stop.clone(),
    );
    std::thread::spawn(move || {
        // Parked, not sleeping: the release unparks it, so a run ends without waiting.
        let mut last = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            std::thread::park_timeout(HEARTBEAT.saturating_sub(last.elapsed()));
            if !stop.load(Ordering::Relaxed) && last.elapsed() >= HEARTBEAT {
                last = std::time::Instant::now();
                let _ = store.put(&key, &crate::format::to_json(&info));
            }
        }
    })
}

/// The locks live now: not released, not stale, not of a dead process of this host.
pub fn held(repo: &Repository) -> Result<Vec<LockInfo>> {
    let store = repo.shared_store();
    let now = SystemTime::now();
    let mut out = Vec::new();
    for o in store.list(LOCKS_PREFIX)? {
        if o.modified.is_some_and(|m| m + STALE < now) {
            continue;
        }
        let info = store
            .get(&o.key)
            .ok()
            .and_then(|d| serde_json::from_slice::<LockInfo>(&d).ok());
        if let Some(l) = info.filter(|l| !l.released && !l.is_dead_here()) {
            out.push(l);
        }
    }
    Ok(out)
}

/// What finished or dead runs left in the store, by key, as of `now` (the store's
/// clock): released locks, locks of this host whose process is gone, locks and staging
/// files (a local store's `tmp/`) untouched for longer than [`STALE`].
pub fn leftovers(repo: &Repository, now: SystemTime) -> Result<Vec<String>> {
    let store = repo.shared_store();
    let mut out = Vec::new();
    for o in store.list(LOCKS_PREFIX)? {
        let stale = o.modified.is_some_and(|m| m + STALE < now);
        let info = store
            .get(&o.key)
            .ok()
            .and_then(|d| serde_json::from_slice::<LockInfo>(&d).ok());
        let released = info
            .as_ref()
            .is_some_and(|l| l.released || l.is_dead_here());
        if stale || released {
            out.push(o.key);
        }
    }
    for o in store.list("tmp/")? {
        if o.modified.is_some_and(|m| m + STALE < now) {
            out.push(o.key);
        }
    }
    Ok(out)
}

/// Removes one of the [`leftovers`].
pub fn remove_leftover(repo: &Repository, key: &str) -> Result<()> {
    repo.shared_store().delete(key)
}

fn ns(t: SystemTime) -> u128 {
    t.duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos()
}

fn release_bytes(info: &LockInfo) -> Vec<u8> {
    let mut released = info.clone();
    released.released = true;
    crate::format::to_json(&released)
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.heartbeat.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        release(&*self.store, &self.key, &self.info);
        self.registered.take();
    }
}

/// Ends a run's lock, as the run ends or as a signal ends it: deleted, so that `locks/`
/// (which every run lists) does not grow with every night until a prune; where the
/// store refuses this run a delete (a freeze needs no delete permission), overwritten as
/// released and left for prune.
fn release(store: &dyn Store, key: &str, info: &LockInfo) {
    if store.delete(key).is_err() {
        let _ = store.put(key, &release_bytes(info));
    }
}

#[cfg(test)]
mod tests {
    use super::may_conflict;

    #[test]
    fn a_freeze_reads_only_its_own_sites_locks_and_the_prunes() {
        let shop = Some("shop");
        assert!(may_conflict("locks/freeze-shop-0123456789ab.json", shop));
        assert!(may_conflict("locks/copy-shop-0123456789ab.json", shop));
        assert!(may_conflict(
            "locks/prune-repository-0123456789ab.json",
            shop
        ));
        assert!(!may_conflict("locks/freeze-blog-0123456789ab.json", shop));
        // Site names may hold dashes: shop-2 is not shop, and shop-2's own key matches.
        assert!(!may_conflict("locks/freeze-shop-2-0123456789ab.json", shop));
        assert!(may_conflict(
            "locks/freeze-shop-2-0123456789ab.json",
            Some("shop-2")
        ));
        assert!(!may_conflict(
            "locks/copy-shop-0123456789ab.json",
            Some("shop-2")
        ));
        // A kind this version does not know, or a key it cannot parse, is read.
        assert!(may_conflict("locks/thaw-blog-0123456789ab.json", shop));
        assert!(may_conflict("locks/odd.json", shop));
        // A prune reads every lock.
        assert!(may_conflict("locks/freeze-blog-0123456789ab.json", None));
    }
}
