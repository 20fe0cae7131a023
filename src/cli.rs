//! The command line: clap types, then one function per command that resolves settings,
//! calls into [`crate::ops`] and prints. stdout carries only data (ids, tables, JSON);
//! messages, progress and errors go to stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::error::{Error, ErrorKind, Result};
use crate::ops;
use crate::progress::{self, bytes, Progress};
use crate::repo::Repository;
use crate::settings::Settings;
use crate::store;

/// `println!` that never panics: a closed stdout (`freezer snapshots | head`) must not
/// end a run in the middle of its work; what could not be written is dropped.
macro_rules! outln {
    ($($arg:tt)*) => {{
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, $($arg)*);
    }};
}

#[derive(Parser, Debug)]
#[command(
    name = "freezer",
    version,
    about = "Freeze container sites into S3-compatible storage and thaw them anywhere"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Args, Debug)]
pub struct Global {
    /// Repository: s3://BUCKET/PREFIX, file:///PATH or a directory path.
    #[arg(long, global = true, env = "FREEZER_REPO")]
    pub repo: Option<String>,
    /// Config file (default: ./freezer.toml, then /etc/freezer/freezer.toml).
    #[arg(long, global = true, env = "FREEZER_CONFIG")]
    pub config: Option<PathBuf>,
    /// Encrypted repositories: an age identity file (AGE-SECRET-KEY-1… lines), or in
    /// FREEZER_IDENTITY the file or the key itself.
    #[arg(long, global = true, value_name = "FILE")]
    pub identity: Option<PathBuf>,
    /// Encrypted repositories: a file holding the passphrase (else FREEZER_PASSPHRASE).
    #[arg(long, global = true, value_name = "FILE")]
    pub passphrase_file: Option<PathBuf>,
    /// JSON lines on stdout: progress events while a long command runs, then the
    /// result as the last line (SPEC.md, "JSON output").
    #[arg(long, global = true)]
    pub json: bool,
    /// No progress line and no summary on stderr; errors are still printed.
    #[arg(long, short, global = true)]
    pub quiet: bool,
    /// Healthchecks-style URL: POSTed to as URL/start when the run starts, URL on
    /// success, URL/fail (with the error) on failure.
    #[arg(long, global = true, env = "FREEZER_PING_URL", value_name = "URL")]
    pub ping: Option<String>,
    /// Prometheus textfile to update after the run (last run and success times, exit
    /// code, duration, bytes uploaded), per command and site.
    #[arg(long, global = true, env = "FREEZER_METRICS_FILE", value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,
    /// S3 repositories: how long a failing request is retried (with backoff) before the
    /// run fails with exit 3, e.g. 90s or 10m. Default: [s3] retry_for, else 5m.
    #[arg(long, global = true, env = "FREEZER_RETRY_FOR", value_name = "DURATION", value_parser = parse_duration)]
    pub retry_for: Option<std::time::Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The pause watchdog of a hydrated freeze (started by freezer itself).
    #[command(hide = true)]
    Guard,
    /// Create a new, empty repository.
    Init {
        /// Encrypt everything stored (SPEC.md §14): to the --recipient keys and/or the
        /// passphrase (FREEZER_PASSPHRASE or --passphrase-file).
        #[arg(long)]
        encrypt: bool,
        /// An age recipient (age1…) that can open the repository; repeatable.
        #[arg(long = "recipient", value_name = "KEY", requires = "encrypt")]
        recipients: Vec<String>,
        /// A file of age recipients, one per line.
        #[arg(long, value_name = "FILE", requires = "encrypt")]
        recipients_file: Option<PathBuf>,
    },
    /// Who can open an encrypted repository: list, add or remove keys. Data is not
    /// uploaded again; removing a key starts a new key epoch for what is written next.
    Key {
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Snapshot a site's directories into the repository.
    Freeze {
        site: String,
        /// A directory of the site, as DIR or NAME=DIR; repeatable. Default: the config file's.
        #[arg(long = "path", value_name = "[NAME=]DIR")]
        paths: Vec<String>,
        /// A database to dump, as mysql://USER[:PASS]@HOST[:PORT]/DB (password also from
        /// FREEZER_DB_PASSWORD); repeatable. Default: the config file's.
        #[arg(long = "db", value_name = "URL")]
        dbs: Vec<String>,
        /// files (trees only), dehydrated (SQL dumps and trees) or hydrated (a Docker
        /// site's containers with their volumes and bind mounts). Default: dehydrated when
        /// the site has a database, hydrated when it has neither paths nor databases
        /// configured but runs on the Docker engine.
        #[arg(long, value_parser = ["files", "dehydrated", "hydrated"])]
        mode: Option<String>,
        /// Hydrated: stop the running containers for the copy (a clean shutdown, e.g. for
        /// databases) instead of pausing them. They are started again afterwards.
        #[arg(long)]
        stop: bool,
        /// Hydrated: also store each container's image, so a host without it (or without
        /// registry access) can thaw the site.
        #[arg(long)]
        with_images: bool,
        /// Hydrated: also store each container's writable layer (files it changed
        /// outside its volumes). Local engines with overlay2.
        #[arg(long)]
        with_writable_layer: bool,
        /// Database connections used in parallel (default: the number of CPUs).
        #[arg(long, env = "FREEZER_JOBS")]
        jobs: Option<usize>,
        /// Average size of a database dump chunk (uncompressed SQL), e.g. 2M or 512K.
        /// Smaller chunks deduplicate finer and make more objects.
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        chunk_size: Option<u64>,
        /// Also store the accounts that have privileges on each database (with their
        /// password hashes) and those privileges.
        #[arg(long)]
        with_users: bool,
        /// How long to wait while a prune holds the repository (a freeze of the same site
        /// that is still running fails at once, exit 5).
        #[arg(long, default_value = "30m", value_parser = parse_duration)]
        lock_wait: std::time::Duration,
        /// Print what would be frozen and exit.
        #[arg(long)]
        dry_run: bool,
    },
    /// Restore a snapshot (the latest unless SITE:SNAPSHOT names one).
    Thaw {
        #[arg(value_name = "SITE[:SNAPSHOT]")]
        target: String,
        /// Restore every tree under this directory instead of its original path (Docker
        /// sites: the bind-mounted directories; volumes are the engine's).
        #[arg(long)]
        into: Option<PathBuf>,
        /// Replace destinations that exist and are not empty (directories, databases).
        #[arg(long)]
        replace: bool,
        /// Where to load the snapshot's database: [SOURCE=]mysql://USER@HOST[:PORT]/DB
        /// (the target database is created; its name may differ). Repeatable.
        #[arg(long = "db", value_name = "[SOURCE=]URL")]
        dbs: Vec<String>,
        /// Restore only the file trees, not the databases.
        #[arg(long, conflicts_with = "dbs")]
        no_db: bool,
        /// Create the accounts stored with the database (freeze --with-users) and grant
        /// them their privileges on the target database.
        #[arg(long)]
        with_users: bool,
        /// Database connections used in parallel (default: the number of CPUs).
        #[arg(long, env = "FREEZER_JOBS")]
        jobs: Option<usize>,
        /// Docker sites: thaw under another site name (containers, volumes, networks and
        /// labels renamed), so a copy runs beside the original.
        #[arg(long = "as", value_name = "NAME")]
        rename: Option<String>,
        /// Docker sites: publish a container port on host port NEW where it was OLD;
        /// repeatable.
        #[arg(long, value_name = "OLD=NEW", value_parser = parse_port_map)]
        publish: Vec<(String, String)>,
        /// Verify the snapshot's metadata, print the plan and exit without writing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Prove a snapshot restores: thaw it under a scratch name (no published ports, its
    /// own network and volumes, scratch databases), check it, time it, remove it.
    Drill {
        #[arg(value_name = "SITE[:SNAPSHOT][@HOST]")]
        target: String,
        /// Docker sites: run `sh -c COMMAND` in the container of compose service SERVICE
        /// (e.g. web='wget -qO- http://localhost/'); fails the drill unless it exits 0.
        /// Repeatable.
        #[arg(long = "probe", value_name = "SERVICE=COMMAND", value_parser = parse_probe)]
        probes: Vec<(String, String)>,
        /// Leave the restored copy in place (and print where it is).
        #[arg(long)]
        keep: bool,
        /// How long containers get to be running (and healthy, when they have a check).
        #[arg(long, default_value = "120s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        /// Snapshots with databases that are not in containers: the server for scratch
        /// databases, mysql://USER@HOST:PORT/PREFIX (loaded as PREFIX_DB_<hex>, then dropped).
        #[arg(long = "db", value_name = "URL")]
        db: Option<String>,
        /// Database connections used in parallel (default: the number of CPUs).
        #[arg(long, env = "FREEZER_JOBS")]
        jobs: Option<usize>,
    },
    /// List snapshots.
    Snapshots { site: Option<String> },
    /// List the sites on this host's Docker engine (DOCKER_HOST): containers grouped by
    /// the dev.freezer.site label, else by docker compose project.
    Sites {
        /// A host of the config file's [hosts] (default: local, the engine DOCKER_HOST
        /// names).
        host: Option<String>,
    },
    /// Remove a site's snapshot records that a retention policy does not keep. The data
    /// stays until `prune`.
    Forget {
        site: String,
        /// Keep the N newest snapshots.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_last: u32,
        /// Keep the newest snapshot of each of the last N days that have one (UTC).
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_daily: u32,
        /// Keep the newest snapshot of each of the last N ISO weeks that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_weekly: u32,
        /// Keep the newest snapshot of each of the last N months that have one.
        #[arg(long, value_name = "N", default_value_t = 0)]
        keep_monthly: u32,
        /// Print what would be kept and removed, and remove nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Re-read and hash every blob the snapshots reference.
    Verify {
        #[arg(value_name = "SITE[:SNAPSHOT]")]
        target: Option<String>,
    },
    /// Delete the data no snapshot references any more, in two phases: a prune marks
    /// what is unreferenced; a later one, after the grace period, deletes it.
    Prune {
        /// How long a blob stays marked before a prune deletes it (e.g. 24h, 30m, 0).
        #[arg(long, default_value = "24h", value_parser = parse_duration)]
        grace: std::time::Duration,
        /// Report what would be marked and deleted, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write one snapshot as a standalone OCI image layout.
    Export {
        #[arg(value_name = "SITE[:SNAPSHOT]")]
        target: String,
        /// The directory to write (must be new or empty).
        #[arg(long)]
        oci: PathBuf,
        /// Layer compression in the layout: zstd (as stored, copied unchanged) or gzip
        /// (recompressed, for Docker 20.10 and `skopeo copy … docker-daemon:`, which
        /// cannot read zstd layers).
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "gzip"])]
        compression: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// The recipients and whether a passphrase opens the repository.
    List,
    /// Let more keys open the repository.
    Add {
        /// An age recipient (age1…); repeatable.
        #[arg(long = "recipient", value_name = "KEY")]
        recipients: Vec<String>,
        /// A file of age recipients, one per line.
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Also (or instead) open with this passphrase: a file holding it, or
        /// FREEZER_NEW_PASSPHRASE.
        #[arg(long, value_name = "FILE")]
        new_passphrase_file: Option<PathBuf>,
    },
    /// Stop a key from opening what is written from now on: an age1… recipient, or
    /// `passphrase`.
    Remove { key: String },
}

/// The identities and passphrase given for an encrypted repository. Never printed.
fn credentials(g: &Global) -> Result<crate::crypto::Credentials> {
    let mut c = crate::crypto::Credentials::default();
    let env_identity = std::env::var("FREEZER_IDENTITY")
        .ok()
        .filter(|v| !v.is_empty());
    match (&g.identity, env_identity) {
        (Some(f), _) => {
            let text = std::fs::read_to_string(f)
                .map_err(|e| Error::io(format!("reading identity file {}", f.display()), e))?;
            c.identities = crate::crypto::parse_identities(&text, &f.display().to_string())?;
        }
        (None, Some(v)) if v.trim_start().starts_with("AGE-SECRET-KEY-") => {
            c.identities = crate::crypto::parse_identities(&v, "FREEZER_IDENTITY")?;
        }
        (None, Some(path)) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                Error::io(
                    format!("reading identity file {path} (FREEZER_IDENTITY)"),
                    e,
                )
            })?;
            c.identities = crate::crypto::parse_identities(&text, &path)?;
        }
        (None, None) => {}
    }
    c.passphrase = match &g.passphrase_file {
        Some(f) => Some(read_secret_file(f)?),
        None => std::env::var("FREEZER_PASSPHRASE")
            .ok()
            .filter(|v| !v.is_empty()),
    };
    Ok(c)
}

/// A secret from a file: its first line.
fn read_secret_file(f: &std::path::Path) -> Result<String> {
    let text =
        std::fs::read_to_string(f).map_err(|e| Error::io(format!("reading {}", f.display()), e))?;
    let line = text.lines().next().unwrap_or("").to_string();
    if line.is_empty() {
        return Err(Error::usage(format!("{} is empty", f.display())));
    }
    Ok(line)
}

/// Recipients from --recipient flags and a --recipients-file.
fn recipients(flags: &[String], file: Option<&std::path::Path>) -> Result<Vec<String>> {
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

/// Runs a parsed command line; returns the process exit code.
pub fn run(cli: Cli) -> i32 {
    if let Command::Guard = cli.command {
        return crate::docker::guard::run();
    }
    let json = cli.global.json;
    let (command, site) = describe(&cli.command);
    let monitor = crate::monitor::Monitor {
        ping: cli.global.ping.clone(),
        metrics_file: cli.global.metrics_file.clone(),
        command,
        site,
    };
    monitor.start();
    announce_retries(progress_mode(&cli.global));
    let started = std::time::Instant::now();
    let monitor = Arc::new(monitor);
    {
        let monitor = monitor.clone();
        crate::interrupt::on_exit(Box::new(move |code| {
            monitor.finish(
                code,
                started.elapsed(),
                format!("freezer {command}: exit {code}: interrupted by a signal"),
            )
        }));
    }
    match dispatch(cli) {
        Ok(code) => {
            monitor.finish(
                code,
                started.elapsed(),
                format!("freezer {command}: exit {code}"),
            );
            code
        }
        // The signal thread is cleaning up and will exit with its own report.
        Err(_) if crate::interrupt::interrupted() => loop {
            std::thread::park();
        },
        Err(e) => {
            report_error(&e, json);
            let code = e.kind.exit_code();
            let mut msg = format!("freezer {command}: exit {code}: {e}");
            if let Some(h) = &e.hint {
                msg.push_str(&format!("\nhint: {h}"));
            }
            monitor.finish(code, started.elapsed(), msg);
            code
        }
    }
}

/// The command's name and the site it works on (empty for repository-wide commands),
/// for pings and metrics.
fn describe(c: &Command) -> (&'static str, String) {
    let site_of = |t: &str| split_target(split_host(t).0).0.to_string();
    match c {
        Command::Guard => ("guard", String::new()),
        Command::Init { .. } => ("init", String::new()),
        Command::Key { .. } => ("key", String::new()),
        Command::Freeze { site, .. } => ("freeze", site_of(site)),
        Command::Thaw { target, .. } => ("thaw", site_of(target)),
        Command::Drill { target, .. } => ("drill", site_of(target)),
        Command::Snapshots { site } => ("snapshots", site.clone().unwrap_or_default()),
        Command::Sites { .. } => ("sites", String::new()),
        Command::Forget { site, .. } => ("forget", site.clone()),
        Command::Verify { target } => {
            ("verify", target.as_deref().map(site_of).unwrap_or_default())
        }
        Command::Prune { .. } => ("prune", String::new()),
        Command::Export { target, .. } => ("export", site_of(target)),
    }
}

pub fn report_error(e: &Error, json: bool) {
    if json {
        #[derive(Serialize)]
        struct Out<'a> {
            error: Inner<'a>,
        }
        #[derive(Serialize)]
        struct Inner<'a> {
            kind: String,
            exit_code: i32,
            message: String,
            hint: Option<&'a str>,
        }
        let out = Out {
            error: Inner {
                kind: format!("{:?}", e.kind).to_lowercase(),
                exit_code: e.kind.exit_code(),
                message: e.to_string(),
                hint: e.hint.as_deref(),
            },
        };
        print_json(&out);
    }
    eprintln!("freezer: error: {e}");
    if let Some(h) = &e.hint {
        eprintln!("hint: {h}");
    }
}

/// The command's result: one JSON line, always the last line on stdout (progress events
/// may come before it). Every result carries the run's store retries (SPEC.md §9).
fn print_json<T: Serialize>(v: &T) {
    let mut value = serde_json::to_value(v).unwrap_or(serde_json::Value::Null);
    if let serde_json::Value::Object(map) = &mut value {
        let retries = store::retry::log().summary();
        map.insert(
            "store_retries".into(),
            serde_json::to_value(retries).unwrap_or_default(),
        );
    }
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, &value);
    let _ = writeln!(out);
}

/// Failed store requests that are being retried: a line on stderr, or a JSON event.
fn announce_retries(mode: progress::Mode) {
    match mode {
        progress::Mode::Off => {}
        progress::Mode::Human => store::retry::announce_with(Box::new(|request, cause| {
            eprintln!("freezer: store: {request}: {cause}; retrying");
        })),
        progress::Mode::Json => store::retry::announce_with(Box::new(|request, cause| {
            let event = serde_json::json!({"event": "retry", "request": request, "cause": cause});
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{event}");
        })),
    }
}

fn progress_mode(g: &Global) -> progress::Mode {
    if g.json {
        progress::Mode::Json
    } else if g.quiet {
        progress::Mode::Off
    } else {
        progress::Mode::Human
    }
}

/// `123`, `64K`, `2M`, `1G` (powers of 1024).
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512K or 2M"))?;
    let v = n.saturating_mul(mult);
    if !(4096..=(1 << 30)).contains(&v) {
        return Err(format!("{s} is out of range (4K to 1G)"));
    }
    Ok(v)
}

fn parse_duration(s: &str) -> std::result::Result<std::time::Duration, String> {
    crate::settings::parse_duration(s)
}

fn default_jobs() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get())
}

fn parse_probe(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, cmd)) if !svc.is_empty() && !cmd.trim().is_empty() => {
            Ok((svc.to_string(), cmd.to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected SERVICE=COMMAND, e.g. web='wget -qO- http://localhost/'"
        )),
    }
}

fn parse_port_map(s: &str) -> std::result::Result<(String, String), String> {
    let (a, b) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected OLD=NEW, e.g. 8080=8081"))?;
    for p in [a, b] {
        p.parse::<u16>()
            .map_err(|_| format!("{p:?} is not a port number"))?;
    }
    Ok((a.to_string(), b.to_string()))
}

/// `SITE[:SNAPSHOT]@HOST` → (`SITE[:SNAPSHOT]`, HOST).
fn split_host(t: &str) -> (&str, Option<&str>) {
    match t.rsplit_once('@') {
        Some((s, h)) if !h.is_empty() => (s, Some(h)),
        Some((s, _)) => (s, None),
        None => (t, None),
    }
}

fn split_target(t: &str) -> (&str, Option<&str>) {
    match t.split_once(':') {
        Some((s, snap)) if !snap.is_empty() => (s, Some(snap)),
        Some((s, _)) => (s, None),
        None => (t, None),
    }
}

fn open_repo(settings: &Settings, g: &Global) -> Result<Repository> {
    let url = settings.repo_url()?;
    Repository::open_with(store::open(&url, &settings.s3)?, &credentials(g)?)
}

fn dispatch(cli: Cli) -> Result<i32> {
    let g = &cli.global;
    crate::interrupt::install(match &cli.command {
        Command::Freeze { .. } => "freeze",
        Command::Thaw { .. } => "thaw",
        Command::Drill { .. } => "drill",
        Command::Verify { .. } => "verify",
        Command::Export { .. } => "export",
        Command::Prune { .. } => "prune",
        _ => "the command",
    });
    let settings = Settings::load(g.config.as_deref(), g.repo.as_deref(), g.retry_for)?;
    let say = |msg: String| {
        if !g.quiet {
            eprintln!("{msg}");
        }
    };
    match &cli.command {
        // Handled in `run` before anything else starts; here for completeness.
        Command::Guard => Ok(crate::docker::guard::run()),
        Command::Init {
            encrypt,
            recipients: recipient_flags,
            recipients_file,
        } => {
            let url = settings.repo_url()?;
            let keys = if *encrypt {
                let creds = credentials(g)?;
                let mut keys = crate::crypto::Keys::generate();
                keys.recipients = recipients(recipient_flags, recipients_file.as_deref())?;
                keys.passphrase = creds.passphrase.is_some();
                if keys.recipients.is_empty() && !keys.passphrase {
                    return Err(Error::usage("--encrypt needs a key that can open the repository")
                        .with_hint("pass --recipient age1… (repeatable) or --recipients-file FILE, and/or set FREEZER_PASSPHRASE (or --passphrase-file FILE)"));
                }
                Some((keys, creds.passphrase))
            } else {
                None
            };
            let repo = Repository::init_with(store::open(&url, &settings.s3)?, keys)?;
            if g.json {
                print_json(
                    &serde_json::json!({"repo": repo.location(), "id": repo.config.id, "version": repo.config.version}),
                );
            } else {
                say(format!(
                    "freezer: initialized repository {}",
                    repo.location()
                ));
            }
            Ok(0)
        }
        Command::Freeze {
            site,
            paths,
            dbs,
            mode,
            stop,
            with_images,
            with_writable_layer,
            jobs,
            chunk_size,
            with_users,
            lock_wait,
            dry_run,
        } => {
            let (site, host) = split_host(site);
            let (mut trees, mut databases) = settings.sources(site, paths, dbs)?;
            // A site with nothing configured is a Docker site: hydrated unless asked
            // for a dehydrated one (its database containers dumped).
            let unconfigured = trees.is_empty() && databases.is_empty();
            let docker_mode = match mode.as_deref() {
                Some("hydrated") => Some(true),
                Some("dehydrated") if unconfigured => Some(false),
                None if unconfigured => Some(true),
                _ => None,
            };
            if ((*stop || *with_writable_layer) && docker_mode != Some(true))
                || (*with_images && docker_mode.is_none())
            {
                return Err(Error::usage(
                    "--stop and --with-writable-layer apply to hydrated freezes of Docker sites, --with-images to Docker sites",
                ));
            }
            if host.is_some() && docker_mode.is_none() {
                return Err(Error::usage(format!(
                    "site {site} is a site of directories and databases on this machine; SITE@HOST applies to Docker sites"
                )));
            }
            let mut docker = None;
            if let Some(hydrated) = docker_mode {
                let host = settings.host(host)?;
                let engine = crate::docker::Engine::connect_to(&host.docker)?;
                let mut captured = crate::docker::capture::capture(&engine, site)?;
                if hydrated {
                    databases.clear();
                    if *with_writable_layer {
                        captured.include_writable_layers()?;
                    }
                } else {
                    databases = captured.databases()?;
                    if databases.is_empty() {
                        return Err(Error::usage(format!(
                            "Docker site {site} has no MariaDB or MySQL container (one whose environment names MARIADB_DATABASE or MYSQL_DATABASE) to dump"
                        ))
                        .with_hint("freeze it hydrated (--mode hydrated), or pass --db URL"));
                    }
                    captured.drop_database_volumes();
                }
                trees = captured.trees.clone();
                docker = Some(ops::DockerFreeze {
                    engine_host: engine.endpoint.host.clone(),
                    engine,
                    site: captured,
                    hold: hydrated,
                    stop: *stop,
                    with_images: *with_images,
                });
            }
            match mode.as_deref() {
                Some("files") => databases.clear(),
                Some("dehydrated") if databases.is_empty() => {
                    return Err(Error::usage(format!("site {site} has no database to dump"))
                        .with_hint("pass --db mysql://USER@HOST/DB, or list databases under [sites.NAME] in freezer.toml"));
                }
                _ => {}
            }
            let repo = open_repo(&settings, g)?;
            let mut plan = ops::plan_freeze(
                &repo,
                site,
                trees,
                databases,
                jobs.unwrap_or_else(default_jobs),
                docker,
            )?;
            if let Some(c) = chunk_size {
                plan.db_chunk_bytes = *c;
            }
            plan.db_with_users = *with_users || settings.database_users(site);
            plan.lock_wait = *lock_wait;
            if *dry_run {
                if g.json {
                    print_json(&plan);
                } else {
                    outln!("freeze site {} into {}", plan.site, plan.repo);
                    match &plan.parent {
                        Some(p) => {
                            outln!("  previous snapshot {p}: unchanged files are not read again")
                        }
                        None => outln!("  no previous snapshot: every file is read"),
                    }
                    if let Some(d) = &plan.docker {
                        outln!(
                            "  Docker site on {}: {} containers, {}{}",
                            d.engine_host,
                            d.site.containers.len(),
                            match (d.hold, d.stop) {
                                (false, _) => "running while the files are copied",
                                (true, true) => "stopped while the volumes are copied",
                                (true, false) => "paused while the volumes are copied",
                            },
                            if d.with_images { "; images stored" } else { "" }
                        );
                        for c in &d.site.containers {
                            outln!("  container {:<16} {} ({})", c.name, c.image, c.state);
                        }
                    }
                    for t in &plan.trees {
                        outln!("  tree {:<16} {}", t.name, t.path.display());
                    }
                    for d in &plan.databases {
                        outln!(
                            "  database {:<12} {d} ({} connections, consistent snapshot)",
                            d.database,
                            plan.db_jobs
                        );
                    }
                }
                return Ok(0);
            }
            let progress = Arc::new(Progress::default());
            let guard = progress::start(progress.clone(), progress_mode(g));
            let report = ops::freeze(&repo, &plan, &progress);
            drop(guard);
            let report = report?;
            crate::monitor::note_bytes_uploaded(report.bytes_uploaded);
            for w in &report.warnings {
                eprintln!("freezer: warning: {w}");
            }
            if g.json {
                print_json(&report);
            } else {
                outln!("{}:{}", report.site, report.snapshot);
                say(format!(
                    "froze {} as snapshot {} in {:.1}s",
                    report.site, report.snapshot, report.seconds
                ));
                if let Some(w) = &report.window {
                    say(format!(
                        "  {} containers ({}), {} for {} ms while the volumes were copied",
                        report.containers.len(),
                        report.containers.join(", "),
                        if w.mode == "stop" {
                            "stopped"
                        } else {
                            "paused"
                        },
                        w.ms
                    ));
                }
                for t in &report.trees {
                    let s = &t.stats;
                    say(format!(
                        "  {:<12} {} files, {}; read {} files ({}), {} deleted; {} layers ({} new){}",
                        t.name,
                        s.files,
                        bytes(s.bytes),
                        s.files_read,
                        bytes(s.bytes_read),
                        s.deleted,
                        s.layers,
                        s.new_layers,
                        if s.rebased { ", rebased" } else { "" }
                    ));
                }
                for d in &report.databases {
                    say(format!(
                        "  database {:<12} {} tables, {} rows, {} chunks ({} of SQL, {} stored); tables locked {} ms",
                        d.database,
                        d.tables,
                        d.rows,
                        d.chunks,
                        bytes(d.sql_bytes),
                        bytes(d.stored_bytes),
                        d.lock_ms
                    ));
                }
                say(format!(
                    "  uploaded {} blobs ({}), reused {} ({})",
                    report.blobs_uploaded,
                    bytes(report.bytes_uploaded),
                    report.blobs_reused,
                    bytes(report.bytes_reused)
                ));
            }
            Ok(0)
        }
        Command::Thaw {
            target,
            into,
            replace,
            dbs,
            no_db,
            with_users,
            jobs,
            rename,
            publish,
            dry_run,
        } => {
            let (target, host) = split_host(target);
            let (site, snap) = split_target(target);
            let repo = open_repo(&settings, g)?;
            let snapshot = repo.find_snapshot(site, snap)?;
            let docker_site = snapshot.record.manifests.iter().any(|m| {
                m.annotations
                    .contains_key(crate::docker::capture::A_CONTAINER_NAME)
            });
            if docker_site {
                let host = settings.host(host)?;
                let opts = crate::ops::recreate::SiteOptions {
                    rename: rename.clone(),
                    publish: publish.clone(),
                    replace: *replace,
                    bind_root: into.clone().or(host.bind_root.clone()),
                    isolated: false,
                };
                return thaw_docker_site(g, &repo, &host, snapshot, &opts, *dry_run);
            }
            if let Some(h) = host.filter(|h| *h != "local") {
                return Err(Error::usage(format!(
                    "snapshot {site}:{} holds no containers; only Docker sites thaw onto a host (@{h})",
                    snapshot.id
                ))
                .with_hint("thaw it on that machine, or here with --into DIR"));
            }
            if rename.is_some() || !publish.is_empty() {
                return Err(Error::usage(format!(
                    "--as and --publish apply to Docker sites; snapshot {site}:{} is a {} snapshot",
                    snapshot.id,
                    snapshot.annotation(crate::format::A_MODE)
                )));
            }
            let snap = Some(snapshot.id.as_str());
            let db = ops::DbThawFlags {
                targets: dbs.clone(),
                skip: *no_db,
                jobs: jobs.unwrap_or_else(default_jobs),
                with_users: *with_users,
            };
            let plan = ops::plan_thaw(&repo, site, snap, into.as_deref(), *replace, &db)?;
            if *dry_run {
                let view = plan.view();
                if g.json {
                    print_json(&view);
                } else {
                    outln!(
                        "thaw {}:{} from {}",
                        view.site,
                        view.snapshot,
                        repo.location()
                    );
                    for t in &view.trees {
                        outln!(
                            "  {} {:<12} -> {}  ({} files, {}, {} layers)",
                            t.action,
                            t.name,
                            t.dest.display(),
                            t.files,
                            bytes(t.bytes),
                            t.layers
                        );
                    }
                    for d in &view.databases {
                        outln!(
                            "  {} database {:<12} -> {}  ({} tables, {} rows, {} chunks)",
                            d.action,
                            d.source,
                            d.target,
                            d.tables,
                            d.rows,
                            d.chunks
                        );
                    }
                }
                return Ok(0);
            }
            let progress = Arc::new(Progress::default());
            let guard = progress::start(progress.clone(), progress_mode(g));
            let report = ops::thaw(&repo, &plan, &progress);
            drop(guard);
            let report = report?;
            if g.json {
                print_json(&report);
            } else {
                say(format!(
                    "thawed {}:{} in {:.1}s",
                    report.site, report.snapshot, report.seconds
                ));
                say_restored(&say, &report.trees, &report.databases);
            }
            for l in &report.removed_leftovers {
                say(format!(
                    "freezer: {} {} ({}), left by a thaw that was killed",
                    l.action,
                    l.path.display(),
                    bytes(l.bytes)
                ));
            }
            for d in &report.databases {
                for w in &d.warnings {
                    eprintln!("freezer: warning: {w}");
                }
            }
            Ok(0)
        }
        Command::Drill {
            target,
            probes,
            keep,
            timeout,
            db,
            jobs,
        } => {
            let (target, host) = split_host(target);
            let (site, snap) = split_target(target);
            let repo = open_repo(&settings, g)?;
            let snapshot = repo.find_snapshot(site, snap)?;
            let opts = crate::ops::drill::DrillOptions {
                probes: probes.clone(),
                keep: *keep,
                timeout: *timeout,
                db_server: db.clone(),
                jobs: jobs.unwrap_or_else(default_jobs),
            };
            let docker_site = snapshot.record.manifests.iter().any(|m| {
                m.annotations
                    .contains_key(crate::docker::capture::A_CONTAINER_NAME)
            });
            let progress = Arc::new(Progress::default());
            let guard = progress::start(progress.clone(), progress_mode(g));
            let report = if docker_site {
                let host = settings.host(host)?;
                let engine = crate::docker::Engine::connect_to(&host.docker)?;
                crate::ops::drill::drill_docker(&repo, &engine, snapshot, &opts, &progress)
            } else {
                if !probes.is_empty() {
                    return Err(Error::usage("--probe applies to Docker sites"));
                }
                crate::ops::drill::drill_files(&repo, snapshot, &opts, &progress)
            };
            drop(guard);
            let report = report?;
            if g.json {
                print_json(&report);
            } else {
                outln!(
                    "drill {}:{} as {}: {} in {:.1}s (restore {:.1}s)",
                    report.site,
                    report.snapshot,
                    report.target,
                    if report.ok { "PASSED" } else { "FAILED" },
                    report.seconds,
                    report.restore_seconds
                );
                for c in &report.checks {
                    outln!(
                        "  {:<4}  {}: {}",
                        if c.ok { "ok" } else { "FAIL" },
                        c.name,
                        c.detail
                    );
                }
                if let Some(e) = report.error.as_ref().and_then(|e| e.hint.as_ref()) {
                    outln!("  hint: {e}");
                }
                if report.kept {
                    outln!("  kept: site {} is left in place", report.target);
                }
            }
            Ok(report.exit_code())
        }
        Command::Key { action } => {
            let mut repo = open_repo(&settings, g)?;
            let Some(keys) = repo.keys().cloned() else {
                return Err(Error::usage(format!(
                    "repository {} is not encrypted",
                    repo.location()
                )));
            };
            let creds = credentials(g)?;
            let mut keys = keys;
            match action {
                KeyAction::List => {}
                KeyAction::Add {
                    recipients: flags,
                    recipients_file,
                    new_passphrase_file,
                } => {
                    let added = recipients(flags, recipients_file.as_deref())?;
                    let new_passphrase = match new_passphrase_file {
                        Some(f) => Some(read_secret_file(f)?),
                        None => std::env::var("FREEZER_NEW_PASSPHRASE")
                            .ok()
                            .filter(|v| !v.is_empty()),
                    };
                    if added.is_empty() && new_passphrase.is_none() {
                        return Err(Error::usage("key add: nothing to add").with_hint(
                            "pass --recipient age1…, --recipients-file FILE or --new-passphrase-file FILE",
                        ));
                    }
                    for r in added {
                        if !keys.recipients.contains(&r) {
                            keys.recipients.push(r);
                        }
                    }
                    keys.passphrase |= new_passphrase.is_some();
                    let wrap = new_passphrase.or(creds.passphrase.clone());
                    repo.set_keys(keys.clone(), wrap.as_deref())?;
                }
                KeyAction::Remove { key } => {
                    if key == "passphrase" {
                        if !keys.passphrase {
                            return Err(Error::usage("the repository has no passphrase"));
                        }
                        keys.passphrase = false;
                    } else {
                        let r = crate::crypto::parse_recipient(key)?;
                        let before = keys.recipients.len();
                        keys.recipients.retain(|x| *x != r);
                        if keys.recipients.len() == before {
                            return Err(Error::not_found(format!(
                                "recipient {r} does not open the repository"
                            )));
                        }
                    }
                    if keys.recipients.is_empty() && !keys.passphrase {
                        return Err(Error::usage(
                            "that is the last key: nobody could open the repository any more",
                        )
                        .with_hint("add another key first (freezer key add)"));
                    }
                    // What is written from now on uses a data key the removed key never saw.
                    keys.rotate();
                    repo.set_keys(keys.clone(), creds.passphrase.as_deref())?;
                }
            }
            if g.json {
                print_json(&serde_json::json!({
                    "repo": repo.location(),
                    "recipients": keys.recipients,
                    "passphrase": keys.passphrase,
                    "epoch": keys.epoch,
                }));
            } else {
                outln!("repository {} (key epoch {})", repo.location(), keys.epoch);
                for r in &keys.recipients {
                    outln!("  recipient  {r}");
                }
                if keys.passphrase {
                    outln!("  passphrase");
                }
            }
            Ok(0)
        }
        Command::Snapshots { site } => {
            let repo = open_repo(&settings, g)?;
            let list = ops::snapshots(&repo, site.as_deref())?;
            if g.json {
                print_json(&list);
            } else {
                outln!(
                    "{:<16} {:<30} {:<20} {:<16} {:<10} {:>8} {:>10} {:>12}",
                    "SITE",
                    "SNAPSHOT",
                    "CREATED",
                    "HOST",
                    "MODE",
                    "FILES",
                    "SIZE",
                    "DB ROWS"
                );
                for s in &list {
                    let files: u64 = s.trees.iter().map(|t| t.files).sum();
                    let size: u64 = s.trees.iter().map(|t| t.bytes).sum();
                    let rows: u64 = s.databases.iter().map(|d| d.rows).sum();
                    outln!(
                        "{:<16} {:<30} {:<20} {:<16} {:<10} {:>8} {:>10} {:>12}",
                        s.site,
                        s.id,
                        s.created.get(..19).unwrap_or(&s.created),
                        s.host,
                        s.mode,
                        files,
                        bytes(size),
                        if s.databases.is_empty() {
                            "-".to_string()
                        } else {
                            rows.to_string()
                        }
                    );
                }
            }
            Ok(0)
        }
        Command::Sites { host } => {
            let host = settings.host(host.as_deref())?;
            let sites = crate::docker::Engine::connect_to(&host.docker)?.list_sites()?;
            if g.json {
                print_json(&sites);
            } else {
                outln!("{:<24} {:<8} CONTAINERS", "SITE", "SOURCE");
                for s in &sites {
                    let list: Vec<String> = s
                        .containers
                        .iter()
                        .map(|c| format!("{} ({})", c.name, c.state))
                        .collect();
                    outln!("{:<24} {:<8} {}", s.name, s.source, list.join(", "));
                }
            }
            Ok(0)
        }
        Command::Verify { target } => {
            let (site, snap) = match target {
                Some(t) => {
                    let (s, n) = split_target(t);
                    (Some(s), n)
                }
                None => (None, None),
            };
            let repo = open_repo(&settings, g)?;
            let progress = Arc::new(Progress::default());
            let guard = progress::start(progress.clone(), progress_mode(g));
            let report = ops::verify(&repo, site, snap, &progress);
            drop(guard);
            let report = report?;
            if g.json {
                print_json(&report);
            }
            for p in &report.problems {
                eprintln!(
                    "freezer: damaged: {} (snapshot {}): {}",
                    p.object, p.snapshot, p.error
                );
            }
            if report.ok {
                say(format!(
                    "verified {} snapshots: {} blobs, {}, all intact",
                    report.snapshots,
                    report.blobs,
                    bytes(report.bytes)
                ));
                Ok(0)
            } else {
                eprintln!(
                    "freezer: verification failed: {} problems in {} snapshots",
                    report.problems.len(),
                    report.snapshots
                );
                Ok(ErrorKind::Integrity.exit_code())
            }
        }
        Command::Forget {
            site,
            keep_last,
            keep_daily,
            keep_weekly,
            keep_monthly,
            dry_run,
        } => {
            let repo = open_repo(&settings, g)?;
            let policy = crate::retention::Policy {
                last: *keep_last,
                daily: *keep_daily,
                weekly: *keep_weekly,
                monthly: *keep_monthly,
            };
            let report = ops::forget(&repo, site, &policy, *dry_run)?;
            if g.json {
                print_json(&report);
            } else {
                for k in &report.kept {
                    say(format!(
                        "keep   {}:{}  ({})",
                        site,
                        k.id,
                        k.reasons.join(", ")
                    ));
                }
                for r in &report.removed {
                    say(format!(
                        "{} {}:{}",
                        if *dry_run { "would remove" } else { "remove" },
                        site,
                        r.id
                    ));
                }
                say(format!(
                    "{} {} snapshots of {site}, kept {}{}",
                    if *dry_run { "would remove" } else { "removed" },
                    report.removed.len(),
                    report.kept.len(),
                    if report.removed.is_empty() || *dry_run {
                        ""
                    } else {
                        "; `freezer prune` frees the data only they used"
                    }
                ));
            }
            Ok(0)
        }
        Command::Prune { grace, dry_run } => {
            let repo = open_repo(&settings, g)?;
            let progress = Arc::new(Progress::default());
            let guard = progress::start(progress.clone(), progress_mode(g));
            let report = crate::ops::prune::prune(&repo, *grace, *dry_run, &progress);
            drop(guard);
            let report = report?;
            if g.json {
                print_json(&report);
            } else {
                let would = if *dry_run { "would be " } else { "" };
                say(format!(
                    "{} snapshots reference {} of {} blobs; {} unreferenced",
                    report.snapshots,
                    report.referenced_blobs,
                    report.blobs,
                    report.unreferenced_blobs
                ));
                say(format!(
                    "{would}deleted {} blobs, freeing {}; {} marked now; {} blobs ({}) wait for their grace period",
                    report.deleted_blobs,
                    bytes(report.freed_bytes),
                    report.marked_blobs,
                    report.pending_blobs,
                    bytes(report.pending_bytes)
                ));
            }
            Ok(0)
        }
        Command::Export {
            target,
            oci,
            compression,
        } => {
            let (site, snap) = split_target(target);
            let repo = open_repo(&settings, g)?;
            let report = ops::export(&repo, site, snap, oci, compression == "gzip")?;
            if g.json {
                print_json(&report);
            } else {
                say(format!(
                    "exported {}:{} to {} ({} blobs, {}); images: {}",
                    report.site,
                    report.snapshot,
                    report.dir.display(),
                    report.blobs,
                    bytes(report.bytes),
                    report.refs.join(", ")
                ));
                if report.decrypted {
                    say(format!(
                        "  decrypted: the repository is encrypted, {} is plaintext; keep it where only trusted people can read it",
                        report.dir.display()
                    ));
                }
                for r in &report.refs {
                    outln!("oci:{}:{r}", report.dir.display());
                }
            }
            Ok(0)
        }
    }
}

/// `thaw` of a hydrated snapshot: the site is recreated on the Docker engine.
fn thaw_docker_site(
    g: &Global,
    repo: &Repository,
    host: &crate::settings::Host,
    snapshot: crate::repo::Snapshot,
    opts: &crate::ops::recreate::SiteOptions,
    dry_run: bool,
) -> Result<i32> {
    use crate::ops::recreate;
    let say = |msg: String| {
        if !g.quiet {
            eprintln!("{msg}");
        }
    };
    let engine = crate::docker::Engine::connect_to(&host.docker)?;
    let plan = recreate::plan(repo, &engine, snapshot, opts)?;
    if dry_run {
        if g.json {
            print_json(&plan);
        } else {
            outln!(
                "thaw {}:{} as site {} on the Docker engine at {}",
                plan.site,
                plan.snapshot,
                plan.target,
                plan.engine
            );
            if !plan.replaces.is_empty() {
                outln!(
                    "  freeze site {} (safety snapshot), then remove {}",
                    plan.target,
                    plan.replaces.join(", ")
                );
            }
            for c in &plan.checks {
                outln!("  checked: {c}");
            }
            for i in &plan.images {
                outln!("  image     {:<24} {}", i.image, i.action);
            }
            for n in &plan.networks {
                outln!("  network   {:<24} {}", n.name, n.action);
            }
            for v in &plan.volumes {
                match &v.tree {
                    Some(t) => outln!("  volume    {:<24} {} from tree {t}", v.name, v.action),
                    None => outln!(
                        "  volume    {:<24} {} empty (its database is loaded from the dump)",
                        v.name,
                        v.action
                    ),
                }
            }
            for b in &plan.binds {
                outln!(
                    "  directory {:<24} {} from tree {}",
                    b.path
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    b.action,
                    b.tree.as_deref().unwrap_or("")
                );
            }
            for d in &plan.databases {
                outln!(
                    "  database  {:<24} into container {} once it accepts connections ({} tables, {} rows)",
                    d.database, d.container, d.tables, d.rows
                );
            }
            for c in &plan.containers {
                outln!(
                    "  container {:<24} {} -> {}{}",
                    c.name,
                    c.image,
                    c.state,
                    if c.ports.is_empty() {
                        String::new()
                    } else {
                        format!(", ports {}", c.ports.join(" "))
                    }
                );
            }
        }
        return Ok(0);
    }
    let progress = Arc::new(Progress::default());
    let guard = progress::start(progress.clone(), progress_mode(g));
    let target = plan.target.clone();
    let replaced_paths = plan.replaced_paths.clone();
    // The safety snapshot: the site as it runs (hydrated); or, when only its volumes and
    // directories are left, those.
    let report = recreate::execute(repo, &engine, plan, &progress, || {
        let engine = crate::docker::Engine::connect_to(&host.docker)?;
        let captured = match crate::docker::capture::capture(&engine, &target) {
            Ok(c) => c,
            Err(e) if e.kind == crate::ErrorKind::NotFound => {
                let trees = replaced_paths
                    .iter()
                    .map(|(name, path)| crate::tree::TreeSpec {
                        name: name.clone(),
                        path: path.clone(),
                    })
                    .collect();
                let fp = ops::plan_freeze(repo, &target, trees, vec![], 1, None)?;
                return Ok(ops::freeze(repo, &fp, &progress)?.snapshot);
            }
            Err(e) => return Err(e),
        };
        let trees = captured.trees.clone();
        let docker = ops::DockerFreeze {
            engine_host: engine.endpoint.host.clone(),
            engine,
            site: captured,
            hold: true,
            stop: false,
            with_images: false,
        };
        let fp = ops::plan_freeze(repo, &target, trees, vec![], 1, Some(docker))?;
        Ok(ops::freeze(repo, &fp, &progress)?.snapshot)
    });
    drop(guard);
    let report = report?;
    if g.json {
        print_json(&report);
    } else {
        if let Some(s) = &report.safety_snapshot {
            say(format!(
                "froze the replaced site {} as {}:{s}",
                report.target, report.target
            ));
        }
        say(format!(
            "thawed {}:{} as site {} in {:.1}s",
            report.site, report.snapshot, report.target, report.seconds
        ));
        for i in &report.images_loaded {
            say(format!("  loaded image {i} from the snapshot"));
        }
        say_restored(&say, &report.trees, &report.databases);
        say(format!("  containers: {}", report.containers.join(", ")));
    }
    Ok(0)
}

/// The lines a thaw prints for what it restored.
fn say_restored(
    say: &dyn Fn(String),
    trees: &[ops::ThawTreeReport],
    databases: &[crate::db::load::LoadReport],
) {
    for t in trees {
        say(format!(
            "  {:<12} -> {}  ({} files, {})",
            t.name,
            t.dest.display(),
            t.stats.files,
            bytes(t.stats.bytes)
        ));
    }
    for d in databases {
        say(format!(
            "  database {:<12} -> {}  ({} tables, {} rows, {} objects; verified in {:.1}s)",
            d.source, d.target, d.tables, d.rows, d.objects, d.verify_seconds
        ));
    }
}
