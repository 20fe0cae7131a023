//! Run records in the repository (SPEC.md §15): one small object per run of a command
//! that changes or proves a site's backups, sealed like snapshot records. The key names
//! the run's end, command and exit status, so `status` learns most of what it shows
//! from one listing.

use std::collections::BTreeMap;
use std::time::SystemTime;

use super::{check_site_name, Repository};
use crate::error::{Error, Result};
use crate::format::*;

/// The directory of repository-wide runs (a site name never starts with `_`).
const REPOSITORY_DIR: &str = "_";

/// A run record as the repository names it, before it is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRef {
    /// The site; empty for a repository-wide run.
    pub site: String,
    /// When it ended (to the second).
    pub ended: SystemTime,
    pub command: String,
    pub exit: i32,
    /// Its object key.
    pub key: String,
}

impl Repository {
    fn runs_dir(&self, site: &str) -> String {
        match site {
            "" => REPOSITORY_DIR.to_string(),
            s => self.site_dir(s),
        }
    }

    /// The file name of the record of a run that ended at `ended`:
    /// `<time>-<command>-<exit>-<rand>.json`.
    pub fn run_name(run: &RunRecord, ended: SystemTime) -> String {
        let rand: [u8; 4] = rand::random();
        format!(
            "{}-{}-{}-{}.json",
            compact_time(ended),
            run.command,
            run.exit,
            hex::encode(rand)
        )
    }

    /// Writes the record of a run that ended at `ended`.
    pub fn write_run(&self, run: &RunRecord, ended: SystemTime) -> Result<RunRef> {
        self.put_run(run, &Self::run_name(run, ended))
    }

    /// Writes a run record under the file name `name` ([`Repository::run_name`]).
    pub fn put_run(&self, run: &RunRecord, name: &str) -> Result<RunRef> {
        if !run.site.is_empty() {
            check_site_name(&run.site)?;
        }
        let key = format!("{RUNS_PREFIX}{}/{name}", self.runs_dir(&run.site));
        let Some((_, mut r)) = parse_run_key(&key) else {
            return Err(Error::usage(format!(
                "{name:?} is not the name of a run record"
            )));
        };
        self.put_object(&key, &key, &to_json(run))?;
        r.site = run.site.clone();
        Ok(r)
    }

    /// The run records of `site` (Some("") for repository-wide runs), or of every site,
    /// oldest first. In an encrypted repository, listing every site reads the newest
    /// record of each site's directory to learn its name.
    pub fn list_runs(&self, site: Option<&str>) -> Result<Vec<RunRef>> {
        if let Some(s) = site.filter(|s| !s.is_empty()) {
            check_site_name(s)?;
        }
        let prefix = match site {
            Some(s) => format!("{RUNS_PREFIX}{}/", self.runs_dir(s)),
            None => RUNS_PREFIX.to_string(),
        };
        let mut out: Vec<(String, RunRef)> = self
            .store
            .list(&prefix)?
            .into_iter()
            .filter_map(|o| {
                let (dir, r) = parse_run_key(&o.key)?;
                Some((dir.to_string(), r))
            })
            .collect();
        let mut sites: BTreeMap<String, String> = BTreeMap::new();
        for (dir, r) in &out {
            if sites.contains_key(dir) {
                continue;
            }
            let name = match (site, dir.as_str(), &self.keys) {
                (Some(s), _, _) => s.to_string(),
                (None, REPOSITORY_DIR, _) => String::new(),
                (None, d, None) => d.to_string(),
                (None, _, Some(_)) => {
                    let newest = out.iter().filter(|(d, _)| d == dir).map(|(_, r)| r);
                    let newest = newest.max_by_key(|r| r.ended).unwrap_or(r);
                    self.read_run(newest)?.site
                }
            };
            sites.insert(dir.clone(), name);
        }
        for (dir, r) in &mut out {
            r.site = sites[dir.as_str()].clone();
        }
        let mut out: Vec<RunRef> = out.into_iter().map(|(_, r)| r).collect();
        out.sort_by(|a, b| (&a.site, a.ended, &a.key).cmp(&(&b.site, b.ended, &b.key)));
        Ok(out)
    }

    /// A run record's contents; an error for one of a format this version does not know
    /// or one stored under another site's name.
    pub fn read_run(&self, r: &RunRef) -> Result<RunRecord> {
        let data = self.get_object(&r.key, &r.key)?;
        #[derive(serde::Deserialize)]
        struct Version {
            format: u32,
        }
        let v: Version = from_json(&data, &r.key)?;
        if v.format != RUN_FORMAT {
            return Err(Error::usage(format!(
                "run record {} is of format {}; this freezer reads format {RUN_FORMAT}",
                r.key, v.format
            ))
            .with_hint("read it with a newer freezer"));
        }
        let run: RunRecord = from_json(&data, &r.key)?;
        let dir = r
            .key
            .strip_prefix(RUNS_PREFIX)
            .and_then(|k| k.split('/').next());
        if dir != Some(self.runs_dir(&run.site).as_str()) {
            return Err(Error::integrity(format!(
                "run record {} in {} names site {:?}, which is not the site it is stored under",
                r.key,
                self.location(),
                run.site
            )));
        }
        Ok(run)
    }

    /// Removes a run record.
    pub fn delete_run(&self, r: &RunRef) -> Result<()> {
        self.store.delete(&r.key)
    }
}

/// A run record's key: its directory and what its name says.
fn parse_run_key(key: &str) -> Option<(&str, RunRef)> {
    let rest = key.strip_prefix(RUNS_PREFIX)?;
    let (dir, file) = rest.split_once('/')?;
    let name = file.strip_suffix(".json")?;
    let mut parts = name.splitn(4, '-');
    let ended = parse_compact_time(parts.next()?)?;
    let command = parts.next()?.to_string();
    let exit = parts.next()?.parse().ok()?;
    parts.next()?;
    Some((
        dir,
        RunRef {
            site: String::new(),
            ended,
            command,
            exit,
            key: key.to_string(),
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::Keys;
    use crate::store::MemoryStore;

    fn memory_repo(sealed: bool) -> Repository {
        let keys = sealed.then(|| (Keys::generate(), None));
        Repository::init_with(Box::new(MemoryStore::default()), keys).unwrap()
    }

    fn run(site: &str, command: &str, exit: i32) -> RunRecord {
        RunRecord {
            format: RUN_FORMAT,
            site: site.into(),
            command: command.into(),
            host: "h".into(),
            started: "2026-12-01T02:00:00.000000000Z".into(),
            ended: "2026-12-01T02:01:00.000000000Z".into(),
            exit,
            error: (exit != 0).then(|| RunError {
                kind: "store".into(),
                message: "the store did not answer".into(),
                hint: None,
            }),
            snapshot: None,
            mode: None,
            bytes: RunBytes::default(),
            drill: None,
            warnings: 0,
        }
    }

    #[test]
    fn runs_are_listed_by_site_with_what_their_names_say_and_read_back() {
        for keys in [false, true] {
            let repo = memory_repo(keys);
            let t = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
            let a = repo
                .write_run(&run("shop", "freeze", 0), t(2_000_000_000))
                .unwrap();
            repo.write_run(&run("shop", "freeze", 3), t(1_000_000_000))
                .unwrap();
            repo.write_run(&run("blog", "drill", 4), t(1_500_000_000))
                .unwrap();
            repo.write_run(&run("", "prune", 0), t(1_600_000_000))
                .unwrap();
            let shop = repo.list_runs(Some("shop")).unwrap();
            assert_eq!(shop.len(), 2);
            assert_eq!((shop[0].exit, shop[1].exit), (3, 0));
            assert_eq!(shop[1], a);
            assert_eq!(repo.read_run(&shop[0]).unwrap(), run("shop", "freeze", 3));
            let all = repo.list_runs(None).unwrap();
            let names: Vec<(&str, &str, i32)> = all
                .iter()
                .map(|r| (r.site.as_str(), r.command.as_str(), r.exit))
                .collect();
            assert_eq!(
                names,
                [
                    ("", "prune", 0),
                    ("blog", "drill", 4),
                    ("shop", "freeze", 3),
                    ("shop", "freeze", 0)
                ]
            );
            repo.delete_run(&shop[0]).unwrap();
            assert_eq!(repo.list_runs(Some("shop")).unwrap(), [a]);
        }
    }
}
