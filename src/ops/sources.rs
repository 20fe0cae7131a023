//! A Docker site as sources to freeze: the engine adapter ([`crate::docker::capture`])
//! says what the site's containers are and which directories they mount; this module
//! turns that into file trees with their exclusion rules and database endpoints with
//! their logins, so neither `docker` knows the tree or database formats nor they the
//! engine.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::db::DbUrl;
use crate::docker::capture::{
    self, CapturedSite, ContainerSpec, Holds, SiteDir, LABEL_EXCLUDE, LABEL_EXCLUDE_CACHES,
    LABEL_EXCLUDE_IF_PRESENT, LABEL_SQLITE,
};
use crate::docker::project::{ENTRY_LIMIT, FILE_LIMIT, TOTAL_LIMIT};
use crate::docker::Engine;
use crate::error::{Error, IoContext, Result};
use crate::tree::exclude::{escape_pattern, Excludes};
use crate::tree::TreeSpec;

/// Reads every container of `site` and the directories to copy
/// ([`capture::capture`]), with the database each database container holds.
pub fn capture(engine: &Engine, site: &str) -> Result<CapturedSite> {
    Ok(with_databases(capture::capture(engine, site)?))
}

/// As [`capture`], leaving out bind mounts of single files ([`capture::capture_dirs`]).
pub fn capture_dirs(engine: &Engine, site: &str) -> Result<CapturedSite> {
    Ok(with_databases(capture::capture_dirs(engine, site)?))
}

fn with_databases(mut site: CapturedSite) -> CapturedSite {
    for spec in &mut site.containers {
        spec.database = crate::db::container::database_name(&|k| spec.env(k));
    }
    site
}

/// The trees that copy the site's directories.
pub fn trees(site: &CapturedSite) -> Result<Vec<TreeSpec>> {
    site.trees.iter().map(tree).collect()
}

fn tree(dir: &SiteDir) -> Result<TreeSpec> {
    let whole = TreeSpec::new(&dir.name, &dir.path);
    Ok(match &dir.holds {
        Holds::Mount { labels } => TreeSpec {
            excludes: label_excludes(labels),
            sqlite_as_files: labels[LABEL_SQLITE]
                .as_str()
                .is_some_and(|v| matches!(v, "false" | "0" | "no" | "off")),
            ..whole
        },
        Holds::Files(names) => TreeSpec {
            excludes: Excludes::only_files(names.iter().map(String::as_str)),
            ..whole
        },
        Holds::Project { named, binds } => TreeSpec {
            excludes: project_excludes(&dir.path, named, binds)?,
            ..whole
        },
        Holds::WritableLayer => whole,
    })
}

/// The exclusion rules a container's labels declare for its mounts.
fn label_excludes(labels: &Value) -> Excludes {
    let list = |k: &str| -> Vec<String> {
        labels[k]
            .as_str()
            .unwrap_or("")
            .split(['\n', ','])
            .map(str::trim)
            .filter(|p| !p.is_empty())
            .map(str::to_string)
            .collect()
    };
    Excludes {
        patterns: list(LABEL_EXCLUDE),
        caches: labels[LABEL_EXCLUDE_CACHES]
            .as_str()
            .is_some_and(|v| matches!(v, "true" | "1" | "yes")),
        if_present: list(LABEL_EXCLUDE_IF_PRESENT),
    }
}

/// What the compose project's tree leaves out of the project directory `dir` (see
/// [`crate::docker::project`]): `.git`, the directories `binds` (trees of their own),
/// and what is over the limits, but never a file of `named`.
fn project_excludes(dir: &Path, named: &[PathBuf], binds: &[PathBuf]) -> Result<Excludes> {
    let skip: Vec<PathBuf> = binds
        .iter()
        .filter_map(|b| b.strip_prefix(dir).ok().map(Path::to_path_buf))
        .collect();
    let mut walk = Walk {
        named,
        skip: &skip,
        total: 0,
        entries: 0,
        patterns: Vec::new(),
    };
    walk.dir(dir, Path::new(""))?;
    Ok(Excludes {
        patterns: walk.patterns,
        ..Default::default()
    })
}

struct Walk<'a> {
    named: &'a [PathBuf],
    skip: &'a [PathBuf],
    total: u64,
    entries: usize,
    patterns: Vec<String>,
}

impl Walk<'_> {
    fn dir(&mut self, root: &Path, rel: &Path) -> Result<()> {
        let dir = root.join(rel);
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .ctx(|| format!("reading the compose project directory {}", dir.display()))?
            .filter_map(|e| e.ok().map(|e| e.file_name()))
            .collect();
        names.sort();
        for name in names {
            let r = rel.join(&name);
            let pattern = anchored(&r);
            if r == Path::new(".git") || self.skip.contains(&r) {
                self.patterns.push(pattern);
                continue;
            }
            let Ok(meta) = std::fs::symlink_metadata(root.join(&r)) else {
                continue;
            };
            self.entries += 1;
            let within = self.entries <= ENTRY_LIMIT && self.total < TOTAL_LIMIT;
            if meta.is_dir() {
                // Over the limits only what holds a named file is walked; the rest of
                // it (and any bind directory inside, a tree of its own) is left out.
                if within || self.named.iter().any(|f| f.starts_with(&r)) {
                    self.dir(root, &r)?;
                } else {
                    self.patterns.push(pattern);
                }
            } else if self.named.contains(&r) {
                // Kept whatever its size.
            } else {
                let size = if meta.is_file() { meta.len() } else { 0 };
                if within && size <= FILE_LIMIT && self.total + size <= TOTAL_LIMIT {
                    self.total += size;
                } else {
                    self.patterns.push(pattern);
                }
            }
        }
        Ok(())
    }
}

/// The gitignore pattern that matches exactly `rel` below the tree's root.
fn anchored(rel: &Path) -> String {
    let parts: Vec<String> = rel
        .iter()
        .map(|c| escape_pattern(&c.to_string_lossy()))
        .collect();
    format!("/{}", parts.join("/"))
}

/// The databases of the site's database containers, reachable from this host.
pub fn databases(engine: &Engine, site: &CapturedSite) -> Result<Vec<DbUrl>> {
    let mut out = Vec::new();
    for ((spec, addr), id) in site.containers.iter().zip(&site.addresses).zip(&site.ids) {
        let Some(db) = &spec.database else { continue };
        if spec.state != "running" {
            return Err(Error::usage(format!(
                "container {} holds database {db} but is {}; a dump needs it running",
                spec.name, spec.state
            )));
        }
        // The server must answer as the container it was found in: its hostname, or
        // the engine's default, the short id (left out of the recorded config).
        let hostname = spec.config["Hostname"]
            .as_str()
            .unwrap_or(&id[..12.min(id.len())]);
        let unknown = || {
            Error::usage(format!(
                "container {} holds database {db}, but its address or credentials are not known (MARIADB_USER/MARIADB_PASSWORD or MARIADB_ROOT_PASSWORD, or their _FILE forms)",
                spec.name
            ))
        };
        let address = addr.as_deref().ok_or_else(unknown)?;
        let read = |path: &str| capture::read_file_in(engine, &spec.name, path);
        let url = database_url(spec, address, &read)?
            .ok_or_else(unknown)?
            .expecting_hostname(hostname);
        out.push(url);
    }
    Ok(out)
}

/// Whether the environment of database container `spec` gives a database client a
/// login (see [`database_url`]).
pub fn has_database_login(spec: &ContainerSpec) -> bool {
    spec.database.is_some() && crate::db::container::has_login(&|k| spec.env(k))
}

/// The database endpoint of database container `spec` at `address`, with the login its
/// environment gives ([`crate::db::container::url`]; a credential in a file is read
/// with `read_file`). None: its environment names no database or no login.
pub fn database_url(
    spec: &ContainerSpec,
    address: &str,
    read_file: &dyn Fn(&str) -> Result<String>,
) -> Result<Option<DbUrl>> {
    let Some(db) = &spec.database else {
        return Ok(None);
    };
    crate::db::container::url(&|k| spec.env(k), &spec.name, db, address, read_file)
}

/// Dehydrated: the database containers' data directories are not copied (the dump
/// stands for them; thaw creates them empty and loads the dump). Their other mounts
/// (configuration, secret files, directories shared with other services) are kept
/// like any other tree.
pub fn drop_database_data(site: &mut CapturedSite) {
    let mut dropped = Vec::new();
    for spec in &mut site.containers {
        if spec.database.is_some() {
            let dirs = data_dirs(spec);
            for m in &mut spec.mounts {
                if holds_data(&m.destination, &dirs) {
                    dropped.push(std::mem::take(&mut m.tree));
                }
            }
        }
    }
    let used: Vec<&str> = site
        .containers
        .iter()
        .flat_map(|c| &c.mounts)
        .map(|m| m.tree.as_str())
        .collect();
    site.trees
        .retain(|t| !dropped.contains(&t.name) || used.contains(&t.name.as_str()));
}

/// The mount destinations that hold a database container's data: the images' data
/// directory (`/var/lib/mysql`; `PGDATA`, else `/var/lib/postgresql/data`) and the
/// volumes its image declares. A dump stands for them; nothing else.
fn data_dirs(spec: &ContainerSpec) -> Vec<String> {
    let mut dirs = vec![crate::db::container::data_dir(&|k| spec.env(k))];
    if let Some(v) = spec
        .image_config
        .as_ref()
        .and_then(|c| c["Volumes"].as_object())
    {
        dirs.extend(v.keys().cloned());
    }
    dirs
}

/// Whether a mount at `destination` holds (part of) a data directory in `dirs`: the
/// directory itself, one above it, or one inside it.
fn holds_data(destination: &str, dirs: &[String]) -> bool {
    let d = destination.trim_end_matches('/');
    dirs.iter().any(|x| {
        let x = x.trim_end_matches('/');
        d == x || x.starts_with(&format!("{d}/")) || d.starts_with(&format!("{x}/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(env: &[&str], volumes: &[&str]) -> ContainerSpec {
        let mut v: Value =
            serde_json::from_str(include_str!("../../formats/v1/container-config.json")).unwrap();
        v["config"]["Env"] = json!(env);
        let vols: serde_json::Map<String, Value> =
            volumes.iter().map(|k| (k.to_string(), json!({}))).collect();
        v["image_config"] = json!({ "Volumes": vols });
        let s: ContainerSpec = serde_json::from_value(v).unwrap();
        let site = CapturedSite {
            ids: vec![s.name.clone()],
            containers: vec![s],
            trees: vec![],
            addresses: vec![None],
            upper_dirs: vec![None],
            healthy: vec![None],
            recovered: vec![],
        };
        with_databases(site).containers.remove(0)
    }

    fn url(s: &ContainerSpec) -> Option<String> {
        let read = |path: &str| Ok(format!("secret from {path}\n\n"));
        database_url(s, "10.0.0.2", &read)
            .unwrap()
            .map(|u| format!("{u} {}", u.user()))
    }

    #[test]
    fn passwords_come_from_the_variable_or_the_file_it_names() {
        let s = spec(
            &[
                "MARIADB_DATABASE=shop",
                "MARIADB_ROOT_PASSWORD_FILE=/run/secrets/pw",
            ],
            &[],
        );
        assert!(has_database_login(&s));
        assert_eq!(url(&s).unwrap(), "mysql://root@10.0.0.2:3306/shop root");
        // The application user wins over root, from files as from variables.
        let s = spec(
            &[
                "MYSQL_DATABASE=shop",
                "MYSQL_USER_FILE=/run/secrets/user",
                "MYSQL_PASSWORD_FILE=/run/secrets/pw",
                "MYSQL_ROOT_PASSWORD=r",
            ],
            &[],
        );
        assert_eq!(url(&s).unwrap(), "mysql://secret from /run/secrets/user@10.0.0.2:3306/shop secret from /run/secrets/user");
        // PostgreSQL is recognized by its password file too.
        let s = spec(
            &["POSTGRES_PASSWORD_FILE=/run/secrets/pg", "POSTGRES_DB=app"],
            &[],
        );
        assert_eq!(s.database.as_deref(), Some("app"));
        assert_eq!(
            url(&s).unwrap(),
            "postgres://postgres@10.0.0.2:5432/app postgres"
        );
        // No login at all: none.
        let s = spec(&["MARIADB_DATABASE=shop"], &[]);
        assert!(!has_database_login(&s));
        assert_eq!(url(&s), None);
        // A file that cannot be read fails, naming the variable, not its contents.
        let s = spec(
            &["MARIADB_DATABASE=shop", "MARIADB_ROOT_PASSWORD_FILE=/nope"],
            &[],
        );
        let read = |_: &str| Err(Error::usage("could not read /nope"));
        let e = database_url(&s, "10.0.0.2", &read).unwrap_err();
        assert!(e.to_string().contains("MARIADB_ROOT_PASSWORD_FILE"), "{e}");
    }

    #[test]
    fn only_the_data_directory_is_left_to_the_dump() {
        let s = spec(
            &["MARIADB_DATABASE=shop", "MARIADB_ROOT_PASSWORD=x"],
            &["/var/lib/mysql"],
        );
        let dirs = data_dirs(&s);
        for data in [
            "/var/lib/mysql",
            "/var/lib/mysql/",
            "/var/lib",
            "/var/lib/mysql/x",
        ] {
            assert!(holds_data(data, &dirs), "{data}");
        }
        for other in [
            "/etc/mysql/conf.d",
            "/run/secrets",
            "/var/lib/mysql-files",
            "/docker-entrypoint-initdb.d",
        ] {
            assert!(!holds_data(other, &dirs), "{other}");
        }
        let s = spec(&["POSTGRES_PASSWORD=x", "PGDATA=/srv/pg"], &[]);
        assert!(holds_data("/srv/pg", &data_dirs(&s)));
        assert!(!holds_data("/var/lib/postgresql/data", &data_dirs(&s)));
    }

    #[test]
    fn each_kind_of_directory_gets_its_rules() {
        let dir = |holds| SiteDir {
            name: "t".into(),
            path: "/srv/t".into(),
            holds,
        };
        let labels = json!({
            LABEL_EXCLUDE: "cache/\n*.tmp, /logs",
            LABEL_EXCLUDE_CACHES: "yes",
            LABEL_SQLITE: "off",
        });
        let t = tree(&dir(Holds::Mount { labels })).unwrap();
        assert_eq!(t.excludes.patterns, ["cache/", "*.tmp", "/logs"]);
        assert!(t.excludes.caches && t.sqlite_as_files);
        let t = tree(&dir(Holds::Files(vec!["php.ini".into(), "a b".into()]))).unwrap();
        assert_eq!(t.excludes, Excludes::only_files(["php.ini", "a b"]));
        assert!(!t.sqlite_as_files);
        assert_eq!(
            tree(&dir(Holds::WritableLayer)).unwrap(),
            TreeSpec::new("t", "/srv/t")
        );
    }

    #[test]
    fn the_walk_keeps_named_files_and_small_ones_and_leaves_out_the_rest() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path();
        std::fs::create_dir_all(p.join(".git")).unwrap();
        std::fs::create_dir_all(p.join("html")).unwrap();
        std::fs::create_dir_all(p.join("web")).unwrap();
        std::fs::write(p.join("docker-compose.yml"), "services: {}\n").unwrap();
        std::fs::write(p.join("web/Dockerfile"), "FROM x\n").unwrap();
        let big = vec![0u8; (FILE_LIMIT + 1) as usize];
        std::fs::write(p.join("dump.sql"), &big).unwrap();
        std::fs::write(p.join("big.ini"), &big).unwrap();
        let named = [
            PathBuf::from("big.ini"),
            PathBuf::from("docker-compose.yml"),
        ];
        let e = project_excludes(p, &named, &[p.join("html")]).unwrap();
        assert_eq!(e.patterns, ["/.git", "/dump.sql", "/html"]);
    }
}
