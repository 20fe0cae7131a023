//! Backup health at a glance (`freezer status`, `freezer report`): each site's newest
//! snapshot against the cadence it is expected at, its last runs and drills from the run
//! records (SPEC.md §15), what it stores, and whether a run holds its lock. Reads only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::error::Result;
use crate::format::{parse_compact_time, rfc3339, RunRecord};
use crate::repo::{Repository, RunRef};

/// A site's newest snapshot is expected to be at most this old (`expect`): a nightly
/// job, with two hours of slack.
pub const DEFAULT_EXPECT: Duration = Duration::from_secs(26 * 3600);
/// Run records older than this are removed by forget and prune (`keep_runs`).
pub const DEFAULT_KEEP_RUNS: Duration = Duration::from_secs(400 * 86_400);

/// A site's backup state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    /// Its newest snapshot is within the expected cadence and its last freeze and last
    /// drill passed.
    Ok,
    /// Its newest snapshot is older than expected (or it has none).
    Late,
    /// Its last freeze failed, or its last drill did.
    Failing,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ok => "OK",
            State::Late => "LATE",
            State::Failing => "FAILING",
        }
    }
}

/// One row of `freezer status`.
#[derive(Debug, Clone, Serialize)]
pub struct SiteStatus {
    pub site: String,
    pub state: State,
    /// Why it is in that state, in a few words.
    pub reason: String,
    /// How often a snapshot is expected.
    pub expect_seconds: u64,
    pub snapshots: usize,
    pub newest: Option<Newest>,
    /// The last freeze, thaw, drill, … of the site.
    pub last_run: Option<RunSummary>,
    /// The last freeze.
    pub last_freeze: Option<RunSummary>,
    /// The last drill, and the last one that passed.
    pub last_drill: Option<RunSummary>,
    pub last_good_drill: Option<RunSummary>,
    /// The stored size of its newest snapshot (compressed; shared data counted whole),
    /// from the run record of the freeze that made it.
    pub stored_bytes: Option<u64>,
    /// What the freezes of its kept snapshots uploaded, and what those snapshots hold
    /// (each counted whole): the site's cost in the repository, and its worth.
    pub added_bytes: u64,
    pub logical_bytes: u64,
    /// `logical_bytes / added_bytes`: how much deduplication saves.
    pub dedup_ratio: Option<f64>,
    /// What its last successful freeze added.
    pub added_last: Option<u64>,
    /// The freezes behind those numbers, of `snapshots`.
    pub measured_snapshots: usize,
    /// A run that holds the site's lock now.
    pub lock: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Newest {
    pub id: String,
    pub created: String,
    pub age_seconds: u64,
}

/// A run, as status shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    pub command: String,
    pub ended: String,
    pub age_seconds: u64,
    pub exit: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A drill: its checks passed of all, and how long its restore took.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<(usize, usize)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restore_seconds: Option<f64>,
}

/// The whole picture: one row per site.
#[derive(Debug, Serialize)]
pub struct Status {
    pub repository: String,
    pub now: String,
    pub sites: Vec<SiteStatus>,
}

impl Status {
    /// The exit status of `freezer status` (SPEC.md §9): 0 when every site is OK, 10
    /// when one is late and none failing, 11 when one is failing.
    pub fn exit_code(&self) -> i32 {
        match self.sites.iter().map(|s| s.state).max() {
            Some(State::Failing) => 11,
            Some(State::Late) => 10,
            _ => 0,
        }
    }
}

/// What status is asked: which sites (empty: every site the repository or the
/// configuration knows), each site's expected cadence, and the sites the configuration
/// names (shown even before their first snapshot).
pub struct StatusRequest {
    pub sites: Vec<String>,
    pub configured: Vec<String>,
    pub expect: BTreeMap<String, Duration>,
    pub default_expect: Duration,
    pub now: SystemTime,
}

/// Each site's backup health.
pub fn status(repo: &Repository, req: &StatusRequest) -> Result<Status> {
    let names: BTreeSet<String> = match req.sites.is_empty() {
        false => req.sites.iter().cloned().collect(),
        true => {
            let mut all: BTreeSet<String> = req.configured.iter().cloned().collect();
            all.extend(repo.list_snapshots(None)?.into_iter().map(|r| r.site));
            all.extend(repo.list_runs(None)?.into_iter().map(|r| r.site));
            all.remove("");
            all
        }
    };
    let locks = crate::lock::held(repo)?;
    let mut sites = Vec::new();
    for site in names {
        let expect = req.expect.get(&site).copied().unwrap_or(req.default_expect);
        let mut s = site_status(repo, &site, expect, req.now)?;
        s.lock = locks
            .iter()
            .find(|l| l.site.as_deref() == Some(site.as_str()) || l.kind == "prune")
            .map(|l| {
                format!(
                    "{} on {} (pid {}) since {}",
                    l.kind, l.host, l.pid, l.started
                )
            });
        sites.push(s);
    }
    Ok(Status {
        repository: repo.location(),
        now: rfc3339(req.now),
        sites,
    })
}

/// When the snapshot of id `YYYYMMDDTHHMMSSZ-…` was taken (to the second).
fn id_time(id: &str) -> Option<SystemTime> {
    parse_compact_time(id.get(..16)?)
}

fn age(now: SystemTime, then: SystemTime) -> u64 {
    now.duration_since(then).unwrap_or_default().as_secs()
}

fn summary(r: &RunRef, run: Option<&RunRecord>, now: SystemTime) -> RunSummary {
    let drill = run.and_then(|x| x.drill.as_ref());
    RunSummary {
        command: r.command.clone(),
        ended: rfc3339(r.ended),
        age_seconds: age(now, r.ended),
        exit: r.exit,
        snapshot: run.and_then(|x| x.snapshot.clone()),
        error: run.and_then(|x| x.error.as_ref().map(|e| e.message.clone())),
        checks: drill.map(|d| (d.checks.iter().filter(|c| c.ok).count(), d.checks.len())),
        restore_seconds: drill.map(|d| d.restore_seconds),
    }
}

fn site_status(
    repo: &Repository,
    site: &str,
    expect: Duration,
    now: SystemTime,
) -> Result<SiteStatus> {
    let snapshots = repo.list_snapshots(Some(site))?;
    let runs = repo.list_runs(Some(site))?;
    // Each record read once: the last run is often the last freeze too.
    let cache = std::cell::RefCell::new(BTreeMap::<String, Option<RunRecord>>::new());
    let read = |r: &RunRef| {
        let mut cache = cache.borrow_mut();
        let run = cache.entry(r.key.clone());
        run.or_insert_with(|| repo.read_run(r).ok()).clone()
    };
    let last = |pred: &dyn Fn(&RunRef) -> bool| runs.iter().rev().find(|r| pred(r));
    let with_record = |r: &RunRef| summary(r, read(r).as_ref(), now);
    let newest = snapshots.last().map(|r| {
        let created = id_time(&r.id).unwrap_or(now);
        Newest {
            id: r.id.clone(),
            created: rfc3339(created),
            age_seconds: age(now, created),
        }
    });
    let last_freeze = last(&|r| r.command == "freeze").map(with_record);
    let last_drill = last(&|r| r.command == "drill").map(with_record);
    let last_good_drill = last(&|r| r.command == "drill" && r.exit == 0).map(with_record);
    let (state, reason) = judge(
        newest.as_ref(),
        last_freeze.as_ref(),
        last_drill.as_ref(),
        expect,
    );
    // What the kept snapshots stored, from the records of the freezes that made them.
    let kept: BTreeSet<&str> = snapshots.iter().map(|r| r.id.as_str()).collect();
    let oldest = snapshots.first().and_then(|r| id_time(&r.id));
    let (mut added, mut logical, mut measured) = (0, 0, 0);
    let mut newest_freeze = None;
    for r in runs.iter().filter(|r| r.command == "freeze" && r.exit == 0) {
        if oldest.is_some_and(|o| r.ended < o) {
            continue;
        }
        let Some(run) = read(r) else { continue };
        if !run.snapshot.as_deref().is_some_and(|s| kept.contains(s)) {
            continue;
        }
        added += run.bytes.added;
        logical += run.bytes.stored.max(run.bytes.added);
        measured += 1;
        newest_freeze = Some(run.bytes);
    }
    Ok(SiteStatus {
        site: site.to_string(),
        state,
        reason,
        expect_seconds: expect.as_secs(),
        snapshots: snapshots.len(),
        newest,
        last_run: runs.last().map(with_record),
        last_freeze,
        last_drill,
        last_good_drill,
        stored_bytes: newest_freeze.as_ref().map(|b| b.stored.max(b.added)),
        added_bytes: added,
        logical_bytes: logical,
        dedup_ratio: (added > 0).then(|| logical as f64 / added as f64),
        added_last: newest_freeze.map(|b| b.added),
        measured_snapshots: measured,
        lock: None,
    })
}

/// A site's state: failing when its last freeze or its last drill failed, late when its
/// newest snapshot is older than `expect` (or it has none), else OK.
fn judge(
    newest: Option<&Newest>,
    freeze: Option<&RunSummary>,
    drill: Option<&RunSummary>,
    expect: Duration,
) -> (State, String) {
    if let Some(f) = freeze.filter(|f| f.exit != 0) {
        let why = f.error.as_deref().unwrap_or("no message");
        return (
            State::Failing,
            format!("last freeze failed (exit {}): {why}", f.exit),
        );
    }
    if let Some(d) = drill.filter(|d| d.exit != 0) {
        let why = match (d.checks, &d.error) {
            (_, Some(e)) => e.clone(),
            (Some((ok, all)), None) => format!("{} of {all} checks failed", all - ok),
            (None, None) => "no message".into(),
        };
        return (
            State::Failing,
            format!("last drill failed (exit {}): {why}", d.exit),
        );
    }
    match newest {
        None => (State::Late, "no snapshot yet".into()),
        Some(n) if n.age_seconds > expect.as_secs() => (
            State::Late,
            format!(
                "newest snapshot is {} old, expected every {}",
                crate::progress::duration(Duration::from_secs(n.age_seconds)),
                crate::progress::duration(expect)
            ),
        ),
        Some(_) => (State::Ok, "newest snapshot within its cadence".into()),
    }
}

/// The run records of `site` (None: every site and the repository's own) older than
/// `keep` at `now`: what forget and prune remove.
pub fn expired_runs(
    repo: &Repository,
    site: Option<&str>,
    keep: Duration,
    now: SystemTime,
) -> Result<Vec<RunRef>> {
    let Some(cutoff) = now.checked_sub(keep) else {
        return Ok(vec![]);
    };
    let mut out = repo.list_runs(site)?;
    out.retain(|r| r.ended < cutoff);
    Ok(out)
}

/// One site's history for the report: its snapshots (id, created) and every run record
/// since `since` that could be read.
#[derive(Debug, Serialize)]
pub struct History {
    pub site: String,
    pub snapshots: Vec<(String, String)>,
    pub runs: Vec<RunRecord>,
}

/// The history of each site of `status` since `since`, and of the repository's own runs
/// (prune, verify) as a site named "".
pub fn history(repo: &Repository, status: &Status, since: SystemTime) -> Result<Vec<History>> {
    let mut out = Vec::new();
    let sites = status.sites.iter().map(|s| s.site.as_str());
    for site in std::iter::once("").chain(sites) {
        let snapshots = match site {
            "" => vec![],
            s => repo.list_snapshots(Some(s))?,
        };
        let snapshots = snapshots
            .into_iter()
            .filter_map(|r| {
                let t = id_time(&r.id)?;
                (t >= since).then(|| (r.id.clone(), rfc3339(t)))
            })
            .collect();
        let runs = repo
            .list_runs(Some(site))?
            .into_iter()
            .filter(|r| r.ended >= since)
            .filter_map(|r| repo.read_run(&r).ok())
            .collect();
        out.push(History {
            site: site.to_string(),
            snapshots,
            runs,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{RunBytes, RunError, RUN_FORMAT};
    use crate::ops::testkit::Kit;

    const HOUR: u64 = 3600;

    fn at(h: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + h * HOUR)
    }

    fn run(site: &str, command: &str, exit: i32, snapshot: Option<&str>, added: u64) -> RunRecord {
        RunRecord {
            format: RUN_FORMAT,
            site: site.into(),
            command: command.into(),
            host: "h".into(),
            started: String::new(),
            ended: String::new(),
            exit,
            error: (exit != 0).then(|| RunError {
                kind: "unreachable".into(),
                message: "the store did not answer".into(),
                hint: None,
            }),
            snapshot: snapshot.map(str::to_string),
            mode: None,
            bytes: RunBytes {
                added,
                stored: 4 * added,
                ..Default::default()
            },
            drill: None,
            warnings: 0,
        }
    }

    fn request(now: SystemTime) -> StatusRequest {
        StatusRequest {
            sites: vec![],
            configured: vec!["never".into()],
            expect: BTreeMap::from([("slow".to_string(), Duration::from_secs(72 * HOUR))]),
            default_expect: Duration::from_secs(26 * HOUR),
            now,
        }
    }

    #[test]
    fn each_site_is_judged_by_its_newest_snapshot_and_its_last_runs() {
        let kit = Kit::new(&[]);
        let dir = kit.dir_with("a", &[("a.txt", "x")]);
        let repo = &kit.repo;
        for site in ["ok", "late", "failing", "slow"] {
            let snap = kit.freeze_dir(site, &dir).id;
            repo.write_run(&run(site, "freeze", 0, Some(&snap), 100), at(0))
                .unwrap();
        }
        repo.write_run(&run("failing", "freeze", 3, None, 0), at(1))
            .unwrap();
        // The snapshots were taken now (real time); judge as of 30 h later for "late".
        let now = SystemTime::now() + Duration::from_secs(30 * HOUR);
        let mut req = request(now);
        req.expect
            .insert("ok".into(), Duration::from_secs(48 * HOUR));
        let st = status(repo, &req).unwrap();
        let states: Vec<(&str, State)> = st
            .sites
            .iter()
            .map(|s| (s.site.as_str(), s.state))
            .collect();
        assert_eq!(
            states,
            [
                ("failing", State::Failing),
                ("late", State::Late),
                ("never", State::Late),
                ("ok", State::Ok),
                ("slow", State::Ok),
            ]
        );
        assert_eq!(st.exit_code(), 11);
        let ok = &st.sites[3];
        assert_eq!(
            (ok.stored_bytes, ok.logical_bytes, ok.added_last),
            (Some(400), 400, Some(100))
        );
        assert_eq!(ok.dedup_ratio, Some(4.0));
        assert!(
            st.sites[0].reason.contains("the store did not answer"),
            "{}",
            st.sites[0].reason
        );
        // Only late sites: 10; all fine: 0.
        let only = |names: &[&str]| StatusRequest {
            sites: names.iter().map(|s| s.to_string()).collect(),
            ..request(now)
        };
        assert_eq!(
            status(repo, &only(&["late", "ok"])).unwrap().exit_code(),
            10
        );
        let mut fine = only(&["ok"]);
        fine.expect
            .insert("ok".into(), Duration::from_secs(48 * HOUR));
        assert_eq!(status(repo, &fine).unwrap().exit_code(), 0);
    }

    #[test]
    fn a_failed_drill_fails_the_site_until_one_passes() {
        let kit = Kit::new(&[]);
        let snap = kit
            .freeze_dir("shop", &kit.dir_with("a", &[("a.txt", "x")]))
            .id;
        let repo = &kit.repo;
        repo.write_run(&run("shop", "drill", 4, Some(&snap), 0), at(1))
            .unwrap();
        let now = SystemTime::now();
        let st = status(repo, &request(now)).unwrap();
        let shop = st.sites.iter().find(|s| s.site == "shop").unwrap();
        assert_eq!(shop.state, State::Failing, "{}", shop.reason);
        repo.write_run(&run("shop", "drill", 0, Some(&snap), 0), at(2))
            .unwrap();
        let st = status(repo, &request(now)).unwrap();
        let shop = st.sites.iter().find(|s| s.site == "shop").unwrap();
        assert_eq!(shop.state, State::Ok, "{}", shop.reason);
        assert_eq!(shop.last_good_drill.as_ref().unwrap().exit, 0);
    }

    #[test]
    fn runs_older_than_the_retention_are_the_expired_ones() {
        let kit = Kit::new(&[]);
        let repo = &kit.repo;
        repo.write_run(&run("shop", "freeze", 0, None, 0), at(0))
            .unwrap();
        repo.write_run(&run("shop", "freeze", 0, None, 0), at(500))
            .unwrap();
        repo.write_run(&run("", "prune", 0, None, 0), at(10))
            .unwrap();
        let keep = Duration::from_secs(400 * HOUR);
        let old = expired_runs(repo, None, keep, at(501)).unwrap();
        assert_eq!(old.len(), 2);
        let old = expired_runs(repo, Some("shop"), keep, at(501)).unwrap();
        assert_eq!((old.len(), old[0].ended), (1, at(0)));
    }
}
