//! Resolved settings: command-line flags over environment over the config file.
//!
//! The config file is `freezer.toml` (see README, "Configuration"): `--config FILE` or
//! `FREEZER_CONFIG`, else `./freezer.toml`, else `/etc/freezer/freezer.toml`, else none.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::db::DbUrl;
use crate::error::{Error, Result};
use crate::store::{S3Options, StoreUrl};
use crate::tree::TreeSpec;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub repo: Option<String>,
    #[serde(default)]
    pub s3: S3Section,
    #[serde(default)]
    pub sites: BTreeMap<String, SiteSection>,
    #[serde(default)]
    pub hosts: BTreeMap<String, HostSection>,
    /// Other repositories, by name: where `freezer copy --to NAME` copies to.
    #[serde(default)]
    pub repos: BTreeMap<String, RepoSection>,
    /// How long forget and prune keep run records, e.g. "400d" (the default).
    pub keep_runs: Option<String>,
}

/// A second repository (`[repos.NAME]`), e.g. an off-site copy at another provider. The
/// S3 settings it leaves out are those of `[s3]` (and `AWS_*`).
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoSection {
    /// s3://BUCKET/PREFIX, file:///PATH or a directory path.
    pub url: String,
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
}

impl std::fmt::Debug for RepoSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RepoSection")
            .field("url", &self.url)
            .field("endpoint", &self.endpoint)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

/// A host that sites are frozen from and thawed onto (`SITE@HOST`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSection {
    /// Its Docker engine: `unix:///PATH` (this machine), or `tcp://HOST:PORT`.
    pub docker: Option<String>,
    /// Its Podman engine's Docker-compatible API (`podman system service`), e.g.
    /// `unix:///run/podman/podman.sock`: the same as `docker =`, said as what it is.
    pub podman: Option<String>,
    /// For a `tcp://` engine: a directory with the TLS client certificates `ca.pem`,
    /// `cert.pem` and `key.pem` (as for `docker --tlsverify`); the connection is TLS then.
    pub tls_certs: Option<PathBuf>,
    /// Where bind-mounted directories of sites thawed onto it go (default: their
    /// original paths).
    pub bind_root: Option<PathBuf>,
}

/// A resolved host.
#[derive(Debug, Clone)]
pub struct Host {
    pub name: String,
    /// The Docker endpoint.
    pub docker: crate::docker::Endpoint,
    pub bind_root: Option<PathBuf>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub allow_http: Option<bool>,
    /// How long failing requests are retried, e.g. "5m" (default; FREEZER_RETRY_FOR).
    pub retry_for: Option<String>,
    /// When a request that receives nothing is abandoned and retried, e.g. "60s"
    /// (default; FREEZER_REQUEST_TIMEOUT).
    pub request_timeout: Option<String>,
}

impl std::fmt::Debug for S3Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Section")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSection {
    /// Directories; each tree is named after its last path component.
    #[serde(default)]
    pub paths: Vec<PathBuf>,
    /// Directories with explicit tree names.
    #[serde(default)]
    pub trees: BTreeMap<String, PathBuf>,
    /// Databases, as `mysql://USER@HOST:PORT/DB` (the password from the URL or from
    /// `FREEZER_DB_PASSWORD`).
    #[serde(default)]
    pub databases: Vec<String>,
    /// Also store the accounts with privileges on the databases (freeze --with-users).
    #[serde(default)]
    pub database_users: bool,
    /// Gitignore-style patterns left out of every tree of the site (freeze --exclude).
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Leave out the contents of directories holding a valid CACHEDIR.TAG.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding a file of one of these names.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Host commands around freezes and thaws of the site.
    #[serde(default)]
    pub hooks: HooksSection,
    /// false: SQLite databases in the site's trees are copied as files, not through
    /// SQLite (SPEC.md §5.5). Default true.
    pub sqlite: Option<bool>,
    /// How long a locked SQLite database is waited for, e.g. "30s" (the default).
    pub sqlite_wait: Option<String>,
    /// What a freeze does with a database still locked after the wait: "copy" it as
    /// files with a warning (the default), or "fail".
    pub sqlite_locked: Option<String>,
    /// Per service (or container) of a Docker site: how a dehydrated freeze copies its
    /// volumes: "live", "pause", "stop" or "hook" (as the label dev.freezer.consistency).
    #[serde(default)]
    pub consistency: BTreeMap<String, String>,
    /// How often a snapshot is expected, e.g. "24h": `freezer status` calls the site
    /// LATE when its newest is older. Default 26h (a nightly job, with slack).
    pub expect: Option<String>,
}

/// `[sites.NAME.hooks]`: commands run with `sh -c` on this host (SPEC.md §9, "Hooks").
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HooksSection {
    pub before_freeze: Option<String>,
    pub after_freeze: Option<String>,
    pub on_error: Option<String>,
    pub after_thaw: Option<String>,
    pub after_drill_restore: Option<String>,
    /// How long a hook may run, e.g. "5m" (the default).
    pub timeout: Option<String>,
    /// A failing before_freeze does not stop the freeze.
    #[serde(default)]
    pub continue_on_error: bool,
}

pub struct Settings {
    pub config_path: Option<PathBuf>,
    pub config: ConfigFile,
    pub repo: Option<String>,
    pub s3: S3Options,
}

impl Settings {
    /// `repo_flag` is `--repo` (clap already folds in `FREEZER_REPO`), `retry_for_flag`
    /// `--retry-for` (with `FREEZER_RETRY_FOR`).
    pub fn load(
        config_flag: Option<&Path>,
        repo_flag: Option<&str>,
        retry_for_flag: Option<std::time::Duration>,
    ) -> Result<Settings> {
        let env_config = std::env::var_os("FREEZER_CONFIG").map(PathBuf::from);
        let explicit = config_flag.map(Path::to_path_buf).or(env_config);
        let path = match explicit {
            Some(p) => Some(p),
            None => ["freezer.toml", "/etc/freezer/freezer.toml"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file()),
        };
        let config = match &path {
            None => ConfigFile::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading config file {}", p.display()), e))?;
                toml::from_str(&text)
                    .map_err(|e| Error::usage(format!("config file {}: {e}", p.display())))?
            }
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let s3 = S3Options {
            endpoint: env("AWS_ENDPOINT_URL")
                .or_else(|| env("AWS_ENDPOINT"))
                .or(config.s3.endpoint.clone()),
            region: env("AWS_REGION")
                .or_else(|| env("AWS_DEFAULT_REGION"))
                .or(config.s3.region.clone()),
            access_key_id: env("AWS_ACCESS_KEY_ID").or(config.s3.access_key_id.clone()),
            secret_access_key: env("AWS_SECRET_ACCESS_KEY").or(config.s3.secret_access_key.clone()),
            session_token: env("AWS_SESSION_TOKEN"),
            allow_http: env("AWS_ALLOW_HTTP")
                .map(|v| v == "true" || v == "1")
                .or(config.s3.allow_http),
            retry: retry_policy(&config.s3, retry_for_flag)?,
        };
        let repo = repo_flag.map(str::to_string).or(config.repo.clone());
        Ok(Settings {
            config_path: path,
            config,
            repo,
            s3,
        })
    }

    /// The host `name` names: `local` (this machine: `DOCKER_HOST`, else the default
    /// socket, unless the config file defines `local`) or one of the config file's.
    pub fn host(&self, name: Option<&str>) -> Result<Host> {
        let name = name.unwrap_or("local");
        let section = match self.config.hosts.get(name) {
            Some(h) => h.clone(),
            None if name == "local" => HostSection::default(),
            None => {
                let known: Vec<&str> = self.config.hosts.keys().map(String::as_str).collect();
                return Err(Error::usage(format!("host {name} is not defined")).with_hint(
                    format!(
                        "define it under [hosts.{name}] in the config file (docker = \"unix:///var/run/docker.sock\"); defined: local{}{}",
                        if known.is_empty() { "" } else { ", " },
                        known.join(", ")
                    ),
                ));
            }
        };
        // `local` without a section of its own is what the environment names, as for
        // the docker CLI.
        let env = (name == "local").then(crate::docker::Endpoint::from_env);
        if section.docker.is_some() && section.podman.is_some() {
            return Err(Error::usage(format!(
                "host {name} names both a docker and a podman engine"
            ))
            .with_hint(format!("keep one of them under [hosts.{name}]")));
        }
        let docker = crate::docker::Endpoint {
            host: section
                .docker
                .or(section.podman)
                .or_else(|| env.as_ref().map(|e| e.host.clone()))
                .unwrap_or_else(|| "unix:///var/run/docker.sock".into()),
            tls: section.tls_certs.or_else(|| env.and_then(|e| e.tls)),
        };
        Ok(Host {
            name: name.to_string(),
            docker,
            bind_root: section.bind_root,
        })
    }

    /// Opens the repository the settings name, with `creds` for an encrypted one.
    pub fn open_repo(&self, creds: &crate::crypto::Credentials) -> Result<crate::repo::Repository> {
        crate::repo::Repository::open_with(self.store()?, creds)
    }

    /// The store the repository URL names.
    pub fn store(&self) -> Result<Box<dyn crate::store::Store>> {
        crate::store::open(&self.repo_url()?, &self.s3)
    }

    /// The store of another repository: a `[repos.NAME]` of the config file, else a URL
    /// (with the S3 settings of the main repository).
    pub fn other_store(&self, name_or_url: &str) -> Result<Box<dyn crate::store::Store>> {
        let Some(section) = self.config.repos.get(name_or_url) else {
            return crate::store::open(&StoreUrl::parse(name_or_url)?, &self.s3);
        };
        let mut s3 = self.s3.clone();
        let or = |a: &Option<String>, b: &mut Option<String>| {
            if a.is_some() {
                b.clone_from(a)
            }
        };
        or(&section.endpoint, &mut s3.endpoint);
        or(&section.region, &mut s3.region);
        or(&section.access_key_id, &mut s3.access_key_id);
        or(&section.secret_access_key, &mut s3.secret_access_key);
        if section.access_key_id.is_some() {
            // Another account's keys: the session token of this one does not go with them.
            s3.session_token = None;
        }
        if section.allow_http.is_some() {
            s3.allow_http = section.allow_http;
        }
        let url = StoreUrl::parse(&section.url)
            .map_err(|e| crate::error::prefix(e, &format!("[repos.{name_or_url}] url")))?;
        crate::store::open(&url, &s3)
    }

    pub fn repo_url(&self) -> Result<StoreUrl> {
        let url = self.repo.as_deref().ok_or_else(|| {
            Error::usage("no repository given")
                .with_hint("pass --repo URL, set FREEZER_REPO, or set `repo` in freezer.toml")
        })?;
        StoreUrl::parse(url)
    }

    /// The trees and databases of a site: from `--path` and `--db` flags if any are
    /// given, else from the config file.
    pub fn sources(
        &self,
        site: &str,
        path_flags: &[String],
        db_flags: &[String],
    ) -> Result<(Vec<TreeSpec>, Vec<DbUrl>)> {
        let from_flags = !path_flags.is_empty() || !db_flags.is_empty();
        let db_urls: Vec<&String> = if from_flags {
            db_flags.iter().collect()
        } else {
            self.config
                .sites
                .get(site)
                .map(|s| s.databases.iter().collect())
                .unwrap_or_default()
        };
        let dbs = db_urls
            .into_iter()
            .map(|u| DbUrl::parse(u))
            .collect::<Result<Vec<_>>>()?;
        // Nothing configured and nothing given: the site may be a Docker site.
        let unconfigured = !from_flags && !self.config.sites.contains_key(site);
        let trees = if (from_flags && path_flags.is_empty()) || unconfigured {
            Vec::new()
        } else {
            self.trees(site, path_flags)?
        };
        Ok((trees, dbs))
    }

    /// The site's host hooks.
    pub fn site_hooks(&self, site: &str) -> Result<crate::ops::hooks::HostHooks> {
        let Some(s) = self.config.sites.get(site) else {
            return Ok(crate::ops::hooks::HostHooks {
                timeout: crate::ops::hooks::DEFAULT_TIMEOUT,
                ..Default::default()
            });
        };
        let h = &s.hooks;
        let timeout = match &h.timeout {
            Some(t) => parse_duration(t)
                .map_err(|e| Error::usage(format!("[sites.{site}.hooks] timeout: {e}")))?,
            None => crate::ops::hooks::DEFAULT_TIMEOUT,
        };
        Ok(crate::ops::hooks::HostHooks {
            before_freeze: h.before_freeze.clone(),
            after_freeze: h.after_freeze.clone(),
            on_error: h.on_error.clone(),
            after_thaw: h.after_thaw.clone(),
            after_drill_restore: h.after_drill_restore.clone(),
            timeout,
            continue_on_error: h.continue_on_error,
        })
    }

    /// How often each configured site expects a snapshot ([`crate::ops::status::DEFAULT_EXPECT`] for the
    /// others), for `freezer status`.
    pub fn expectations(&self) -> Result<BTreeMap<String, std::time::Duration>> {
        let mut out = BTreeMap::new();
        for (site, s) in &self.config.sites {
            if let Some(e) = &s.expect {
                let d = parse_duration(e)
                    .map_err(|e| Error::usage(format!("[sites.{site}] expect: {e}")))?;
                out.insert(site.clone(), d);
            }
        }
        Ok(out)
    }

    /// The sites the config file names.
    pub fn configured_sites(&self) -> Vec<String> {
        self.config.sites.keys().cloned().collect()
    }

    /// How long run records are kept (`keep_runs`, default [`crate::ops::status::DEFAULT_KEEP_RUNS`]).
    pub fn keep_runs(&self) -> Result<std::time::Duration> {
        match &self.config.keep_runs {
            Some(k) => parse_duration(k).map_err(|e| Error::usage(format!("keep_runs: {e}"))),
            None => Ok(crate::ops::status::DEFAULT_KEEP_RUNS),
        }
    }

    /// What the config file leaves out of every tree of the site.
    pub fn site_excludes(&self, site: &str) -> crate::tree::exclude::Excludes {
        match self.config.sites.get(site) {
            Some(s) => crate::tree::exclude::Excludes {
                patterns: s.exclude.clone(),
                caches: s.exclude_caches,
                if_present: s.exclude_if_present.clone(),
            },
            None => Default::default(),
        }
    }

    /// How the site's SQLite databases are copied while it runs (freezer.toml).
    pub fn site_sqlite(&self, site: &str) -> Result<crate::tree::sqlite::Sqlite> {
        use crate::tree::sqlite::{OnLocked, Sqlite, DEFAULT_WAIT};
        let Some(s) = self.config.sites.get(site) else {
            return Ok(Sqlite::default());
        };
        if s.sqlite == Some(false) {
            return Ok(Sqlite::AsFiles);
        }
        let wait = match &s.sqlite_wait {
            Some(w) => parse_duration(w)
                .map_err(|e| Error::usage(format!("[sites.{site}] sqlite_wait: {e}")))?,
            None => DEFAULT_WAIT,
        };
        let locked = match s.sqlite_locked.as_deref() {
            None | Some("copy") => OnLocked::Copy,
            Some("fail") => OnLocked::Fail,
            Some(other) => {
                return Err(Error::usage(format!(
                    "[sites.{site}] sqlite_locked = {other:?}: expected \"copy\" or \"fail\""
                )))
            }
        };
        Ok(Sqlite::Consistent { wait, locked })
    }

    /// `[sites.NAME.consistency]`: how a dehydrated freeze copies each service's volumes.
    pub fn site_consistency(
        &self,
        site: &str,
    ) -> Result<BTreeMap<String, crate::docker::capture::Consistency>> {
        let mut out = BTreeMap::new();
        let Some(s) = self.config.sites.get(site) else {
            return Ok(out);
        };
        for (service, v) in &s.consistency {
            let mode = crate::docker::capture::Consistency::parse(v).ok_or_else(|| {
                Error::usage(format!(
                    "[sites.{site}.consistency] {service} = {v:?}: expected \"live\", \"pause\", \"stop\" or \"hook\""
                ))
            })?;
            out.insert(service.clone(), mode);
        }
        Ok(out)
    }

    /// Whether the config file asks for the site's database accounts.
    pub fn database_users(&self, site: &str) -> bool {
        self.config
            .sites
            .get(site)
            .is_some_and(|s| s.database_users)
    }

    /// The trees of a site: `--path` flags if any, else the config file's.
    pub fn trees(&self, site: &str, path_flags: &[String]) -> Result<Vec<TreeSpec>> {
        let mut named: Vec<(Option<String>, PathBuf)> = Vec::new();
        if !path_flags.is_empty() {
            for p in path_flags {
                match p.split_once('=') {
                    Some((name, dir)) if !name.contains('/') && !name.is_empty() => {
                        named.push((Some(name.to_string()), dir.into()))
                    }
                    _ => named.push((None, p.into())),
                }
            }
        } else if let Some(s) = self.config.sites.get(site) {
            named.extend(s.paths.iter().map(|p| (None, p.clone())));
            named.extend(s.trees.iter().map(|(n, p)| (Some(n.clone()), p.clone())));
        } else {
            let known: Vec<&String> = self.config.sites.keys().collect();
            return Err(Error::usage(format!("site {site} has no paths")).with_hint(
                if known.is_empty() {
                    "pass --path DIR (repeatable), or define [sites.NAME] in freezer.toml"
                        .to_string()
                } else {
                    format!("pass --path DIR, or use a site from the config file: {known:?}")
                },
            ));
        }
        let mut out: Vec<TreeSpec> = Vec::new();
        for (name, dir) in named {
            let path = std::fs::canonicalize(&dir).map_err(|e| {
                let named = if path_flags.is_empty() {
                    let file = self
                        .config_path
                        .as_deref()
                        .unwrap_or(Path::new("freezer.toml"));
                    format!("[sites.{site}] in {}", file.display())
                } else {
                    "--path".to_string()
                };
                match e.kind() {
                    std::io::ErrorKind::NotFound => Error::usage(format!(
                        "{named} names {}, which does not exist",
                        dir.display()
                    ))
                    .with_hint("give the directory to back up (or fix the path), and run again"),
                    _ => Error::io(format!("{named}: reading {}", dir.display()), e),
                }
            })?;
            let name = match name {
                Some(n) => check_tree_name(&n)?,
                None => {
                    let base = sanitize(
                        path.file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default(),
                    );
                    let mut candidate = base.clone();
                    let mut i = 2;
                    while out.iter().any(|t| t.name == candidate) {
                        candidate = format!("{base}-{i}");
                        i += 1;
                    }
                    candidate
                }
            };
            out.push(TreeSpec::new(name, path));
        }
        Ok(out)
    }
}

/// The store retry policy: flag, then environment, then config file, then defaults.
fn retry_policy(
    s3: &S3Section,
    retry_for_flag: Option<std::time::Duration>,
) -> Result<crate::store::RetryPolicy> {
    let mut policy = crate::store::RetryPolicy::default();
    let setting =
        |env: &str, file: &Option<String>, key: &str| -> Result<Option<std::time::Duration>> {
            let (value, origin) = match std::env::var(env).ok().filter(|v| !v.is_empty()) {
                Some(v) => (v, env.to_string()),
                None => match file {
                    Some(v) => (v.clone(), format!("[s3] {key} in the config file")),
                    None => return Ok(None),
                },
            };
            parse_duration(&value)
                .map(Some)
                .map_err(|e| Error::usage(format!("{origin}: {e}")))
        };
    if let Some(d) = retry_for_flag.map(Some).unwrap_or(setting(
        "FREEZER_RETRY_FOR",
        &s3.retry_for,
        "retry_for",
    )?) {
        policy.retry_for = d;
    }
    if let Some(d) = setting(
        "FREEZER_REQUEST_TIMEOUT",
        &s3.request_timeout,
        "request_timeout",
    )? {
        if d.is_zero() {
            return Err(Error::usage("the S3 request timeout must be more than 0s"));
        }
        policy.request_timeout = d;
    }
    Ok(policy)
}

pub use crate::sys::parse_duration;

fn check_tree_name(n: &str) -> Result<String> {
    if n.is_empty()
        || n.len() > 63
        || !n
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(Error::usage(format!(
            "invalid tree name {n:?}: use letters, digits, '.', '_' and '-'"
        )));
    }
    Ok(n.to_string())
}

/// A tree name usable as an OCI reference name.
fn sanitize(s: String) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect();
    if out.is_empty() || !out.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        out.insert_str(0, "tree");
    }
    out
}

/// The identities and passphrase given for an encrypted repository: `--identity FILE`,
/// else `FREEZER_IDENTITY` (the file, or the key itself); `--passphrase-file FILE`, else
/// `FREEZER_PASSPHRASE`. Never printed.
pub fn credentials(
    identity: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<crate::crypto::Credentials> {
    credentials_from(
        identity,
        passphrase_file,
        "FREEZER_IDENTITY",
        "FREEZER_PASSPHRASE",
    )
}

/// The credentials for a second repository (`copy --to`): `--to-identity`, else
/// `FREEZER_TO_IDENTITY`; `--to-passphrase-file`, else `FREEZER_TO_PASSPHRASE`. None when
/// nothing is given, for the caller to use the first repository's.
pub fn target_credentials(
    identity: Option<&Path>,
    passphrase_file: Option<&Path>,
) -> Result<Option<crate::crypto::Credentials>> {
    let c = credentials_from(
        identity,
        passphrase_file,
        "FREEZER_TO_IDENTITY",
        "FREEZER_TO_PASSPHRASE",
    )?;
    Ok((!c.identities.is_empty() || c.passphrase.is_some()).then_some(c))
}

fn credentials_from(
    identity: Option<&Path>,
    passphrase_file: Option<&Path>,
    identity_env: &str,
    passphrase_env: &str,
) -> Result<crate::crypto::Credentials> {
    let mut c = crate::crypto::Credentials::default();
    let env_identity = std::env::var(identity_env).ok().filter(|v| !v.is_empty());
    match (identity, env_identity) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("reading identity file {}", f.display()), e))?;
            c.identities = crate::crypto::parse_identities(&text, &f.display().to_string())?;
        }
        (None, Some(v)) if v.trim_start().starts_with("AGE-SECRET-KEY-") => {
            c.identities = crate::crypto::parse_identities(&v, identity_env)?;
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::io(format!("reading identity file {path} ({identity_env})"), e)
            })?;
            c.identities = crate::crypto::parse_identities(&text, &path)?;
        }
        (None, None) => {}
    }
    c.passphrase = secret(passphrase_file, passphrase_env)?;
    Ok(c)
}

/// A secret from a file (its first line), else from the environment variable `env`.
pub fn secret(file: Option<&Path>, env: &str) -> Result<Option<String>> {
    match file {
        Some(f) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
            let line = text.lines().next().unwrap_or("").to_string();
            if line.is_empty() {
                return Err(Error::usage(format!("{} is empty", f.display())));
            }
            Ok(Some(line))
        }
        None => Ok(std::env::var(env).ok().filter(|v| !v.is_empty())),
    }
}

/// age recipients from `--recipient` flags and a `--recipients-file` (one per line, `#`
/// comments), checked.
pub fn recipients(flags: &[String], file: Option<&Path>) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for r in flags {
        out.push(crate::crypto::parse_recipient(r)?);
    }
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
        for l in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            out.push(crate::crypto::parse_recipient(l)?);
        }
    }
    out.dedup();
    Ok(out)
}
