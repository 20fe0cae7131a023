//! The command line's types: what clap parses, and nothing else. Each command's
//! arguments are a struct of their own, which that command's module resolves.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::format::Mode;
use crate::ops::LayerCompression;

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
    /// Print nothing when a command succeeds (errors are still printed, and the exit code
    /// says what failed); listings and --dry-run plans still print what they list.
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
    #[arg(long, global = true, env = "FREEZER_RETRY_FOR", value_name = "DURATION", value_parser = crate::settings::parse_duration)]
    pub retry_for: Option<std::time::Duration>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// The pause watchdog of a hydrated freeze (started by freezer itself).
    #[command(hide = true)]
    Guard,
    /// Print a shell completion script: `freezer completions bash >
    /// /etc/bash_completion.d/freezer` (also zsh, fish, elvish, powershell).
    Completions(CompletionsArgs),
    /// Write a man page for freezer and each of its commands into DIR (scripts/manpages).
    #[command(hide = true)]
    Manpages(ManpagesArgs),
    /// Create a new, empty repository.
    Init(InitArgs),
    /// Who can open an encrypted repository: list, add or remove keys. Data is not
    /// uploaded again; removing a key starts a new key epoch for what is written next.
    Key(KeyArgs),
    /// Freeze a site into the repository: its directories (files), its databases as SQL
    /// dumps (dehydrated), or a Docker site's containers with their volumes (hydrated).
    Freeze(FreezeArgs),
    /// Restore a snapshot (the latest unless SITE:SNAPSHOT names one): its trees into
    /// their directories or under --into, its databases into a server, a Docker site's
    /// containers onto an engine.
    Thaw(ThawArgs),
    /// Prove a snapshot restores: thaw it under a scratch name (no published ports, its
    /// own network and volumes, scratch databases), check it, time it, remove it.
    Drill(DrillArgs),
    /// List what a snapshot holds (its trees, databases and containers), a directory of
    /// one of its trees (TREE[/PATH]), or a database's tables. Reads only the tree index
    /// or the database configuration, never the layers.
    Ls(LsArgs),
    /// Write one file of a snapshot (TREE/PATH) to stdout. Only the layer that holds it
    /// is read, and checked before a byte is written.
    Cat(CatArgs),
    /// What changed between two snapshots: files added, removed and modified, tables
    /// whose rows changed, containers whose configuration changed. Reads no layer.
    Diff(DiffArgs),
    /// List the snapshots in the repository, of every site or of one.
    Snapshots(SnapshotsArgs),
    /// Is every site backed up? One row per site: OK, LATE (its newest snapshot is older
    /// than expected) or FAILING (its last freeze or drill failed), with its last runs,
    /// last good drill and what it stores. Exit 0 all OK, 10 a site late, 11 failing.
    Status(StatusArgs),
    /// Write the backup health of every site as one self-contained HTML page: the
    /// status table, and per site its last days of snapshots, failures, drills and
    /// stored bytes, and the repository's growth.
    Report(ReportArgs),
    /// List the sites on this host's Docker engine (DOCKER_HOST): containers grouped by
    /// the dev.freezer.site label, else by docker compose project.
    Sites(SitesArgs),
    /// Remove a site's snapshot records that a retention policy does not keep. The data
    /// stays until `prune`.
    Forget(ForgetArgs),
    /// Re-read and hash every blob the snapshots reference.
    Verify(VerifyArgs),
    /// Delete the data no snapshot references any more, in two phases: a prune marks
    /// what is unreferenced; a later one, after the grace period, deletes it.
    Prune(PruneArgs),
    /// Write one snapshot as a standalone OCI image layout.
    Export(ExportArgs),
    /// Copy snapshots into another repository (an off-site copy): only the data the
    /// target lacks is uploaded, each blob checked on the way, each record written last.
    Copy(CopyArgs),
    /// Mount the repository read-only (FUSE) at MOUNTPOINT: SITE/SNAPSHOT/TREE/… with
    /// the files' exact metadata, read on demand. Runs until Ctrl-C (or SIGTERM), then
    /// unmounts.
    Mount(MountArgs),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// Encrypt everything stored (SPEC.md §14): to the --recipient keys and/or the
    /// passphrase (FREEZER_PASSPHRASE or --passphrase-file).
    #[arg(long)]
    pub encrypt: bool,
    /// An age recipient (age1…) that can open the repository; repeatable.
    #[arg(long = "recipient", value_name = "KEY", requires = "encrypt")]
    pub recipients: Vec<String>,
    /// A file of age recipients, one per line.
    #[arg(long, value_name = "FILE", requires = "encrypt")]
    pub recipients_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub action: KeyAction,
}

#[derive(Args, Debug)]
pub struct FreezeArgs {
    pub site: String,
    /// A directory of the site, as DIR or NAME=DIR; repeatable. Default: the config file's.
    #[arg(long = "path", value_name = "[NAME=]DIR")]
    pub paths: Vec<String>,
    /// A database to dump, as mysql://USER[:PASS]@HOST[:PORT]/DB (password also from
    /// FREEZER_DB_PASSWORD); repeatable. Default: the config file's.
    #[arg(long = "db", value_name = "URL")]
    pub dbs: Vec<String>,
    /// files (trees only), dehydrated (SQL dumps and trees) or hydrated (a Docker
    /// site's containers with their volumes and bind mounts). Default: dehydrated when
    /// the site has a database, hydrated when it has neither paths nor databases
    /// configured but runs on the Docker engine.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Hydrated: stop the running containers for the copy (a clean shutdown, e.g. for
    /// databases) instead of pausing them. They are started again afterwards.
    #[arg(long)]
    pub stop: bool,
    /// Hydrated: also store each container's image, so a host without it (or without
    /// registry access) can thaw the site.
    #[arg(long)]
    pub with_images: bool,
    /// Hydrated: also store each container's writable layer (files it changed
    /// outside its volumes). Local engines with overlay2.
    #[arg(long)]
    pub with_writable_layer: bool,
    /// Database connections used in parallel (default: the number of CPUs).
    #[arg(long, env = "FREEZER_JOBS")]
    pub jobs: Option<usize>,
    /// Average size of a database dump chunk (uncompressed SQL), e.g. 2M or 512K.
    /// Smaller chunks deduplicate finer and make more objects.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub chunk_size: Option<u64>,
    /// Also store the accounts that have privileges on each database (with their
    /// password hashes) and those privileges; PostgreSQL: the roles that own its objects
    /// or hold grants on them, and the owners and grants.
    #[arg(long)]
    pub with_users: bool,
    /// How long to wait while a prune holds the repository (a freeze of the same site
    /// that is still running fails at once, exit 5).
    #[arg(long, default_value = "30m", value_parser = crate::settings::parse_duration)]
    pub lock_wait: std::time::Duration,
    #[command(flatten)]
    pub excludes: ExcludeArgs,
    /// Print what would be frozen (and what the excludes leave out) and exit.
    #[arg(long)]
    pub dry_run: bool,
}

/// What a freeze leaves out of every tree (after the config file's `exclude`).
#[derive(Args, Debug, Default)]
pub struct ExcludeArgs {
    /// A gitignore-style pattern, matched on paths relative to each tree's root (`*.log`,
    /// `/cache`, `wp-content/cache/`, `**/node_modules`, `!keep.log`); repeatable.
    #[arg(long = "exclude", value_name = "PATTERN")]
    pub patterns: Vec<String>,
    /// A file of such patterns, one per line (`#` comments); repeatable.
    #[arg(long = "exclude-file", value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Leave out the contents of directories holding a valid CACHEDIR.TAG.
    #[arg(long)]
    pub exclude_caches: bool,
    /// Leave out the contents of directories holding a file NAME; repeatable.
    #[arg(long = "exclude-if-present", value_name = "NAME")]
    pub if_present: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ThawArgs {
    #[arg(value_name = "SITE[:SNAPSHOT]")]
    pub target: String,
    /// Restore every tree under this directory instead of its original path (Docker
    /// sites: the bind-mounted directories; volumes are the engine's).
    #[arg(long)]
    pub into: Option<PathBuf>,
    /// Replace destinations that exist and are not empty (directories, databases). What
    /// the snapshot's exclusion rules left out stays as it is at the destination.
    #[arg(long)]
    pub replace: bool,
    /// With --replace: also delete what exists at paths the snapshot excluded.
    #[arg(long, requires = "replace")]
    pub replace_excluded: bool,
    /// Restore only the paths this gitignore-style pattern matches (relative to each
    /// tree's root, with everything below them); repeatable. With --replace, only those
    /// paths of the destination are replaced and nothing else is touched.
    #[arg(long = "include", value_name = "PATTERN")]
    pub include: Vec<String>,
    /// Where to load the snapshot's database: [SOURCE=]mysql://USER@HOST[:PORT]/DB
    /// (the target database is created; its name may differ). Repeatable.
    #[arg(long = "db", value_name = "[SOURCE=]URL")]
    pub dbs: Vec<String>,
    /// Load only this table of the snapshot's database (DATABASE.TABLE when it has
    /// several), with its indexes, foreign keys and triggers, verified; repeatable. The
    /// target database may hold other tables, which are not touched; with --replace the
    /// named tables are dropped and loaded again. No tree is restored unless --include
    /// names paths.
    #[arg(long = "table", value_name = "[DATABASE.]TABLE")]
    pub tables: Vec<String>,
    /// Restore only the file trees, not the databases.
    #[arg(long, conflicts_with_all = ["dbs", "tables"])]
    pub no_db: bool,
    /// Create the accounts stored with the database (freeze --with-users) and grant
    /// them their privileges on the target database (PostgreSQL: the missing roles, and
    /// the objects' owners and grants).
    #[arg(long)]
    pub with_users: bool,
    /// Database connections used in parallel (default: the number of CPUs).
    #[arg(long, env = "FREEZER_JOBS")]
    pub jobs: Option<usize>,
    /// Docker sites: thaw under another site name (containers, volumes, networks and
    /// labels renamed), so a copy runs beside the original.
    #[arg(long = "as", value_name = "NAME")]
    pub rename: Option<String>,
    /// Docker sites from a compose project: write the project (compose files, `.env`,
    /// env files, the files it binds) into DIR, with the bind-mounted directories and
    /// files under it and the paths that named the old directory rewritten, so that
    /// `docker compose -p NAME up -d` in DIR runs the site against the restored volumes.
    #[arg(long, value_name = "DIR")]
    pub project_dir: Option<PathBuf>,
    /// Docker sites: publish a container port on host port NEW where it was OLD;
    /// repeatable.
    #[arg(long, value_name = "OLD=NEW", value_parser = parse_port_map)]
    pub publish: Vec<(String, String)>,
    #[command(flatten)]
    pub images: ImageArgs,
    /// Docker sites: load the snapshot's state into the containers of this existing site
    /// (compose project or dev.freezer.site label) instead of creating containers: each
    /// volume and bind mount into what the same service mounts at the same path, each
    /// database through SQL with the target's own credentials. The target's containers
    /// are stopped for the swap and put back in their state.
    #[arg(long, value_name = "PROJECT", conflicts_with_all = ["rename", "project_dir", "publish", "into", "tables", "include", "dbs", "images", "env"])]
    pub onto: Option<String>,
    /// With --onto: the snapshot's service OLD goes into the target's service NEW;
    /// repeatable.
    #[arg(long, value_name = "OLD=NEW", requires = "onto", value_parser = parse_service_map)]
    pub map: Vec<(String, String)>,
    /// Verify the snapshot's metadata, print the plan and exit without writing.
    #[arg(long)]
    pub dry_run: bool,
}

/// A Docker site's containers on other images, or with other environment variables.
#[derive(Args, Debug, Default)]
pub struct ImageArgs {
    /// Docker sites: recreate the container of compose service SERVICE (or the container
    /// of that name) from IMAGE, with its volumes, mounts, networks, ports, labels and the
    /// environment it set; what came from its old image (command, entrypoint, user,
    /// working directory, health check, exposed ports, the image's environment) follows
    /// IMAGE. The engine must have IMAGE. Repeatable.
    #[arg(long = "image", value_name = "SERVICE=IMAGE", value_parser = parse_image)]
    pub images: Vec<(String, String)>,
    /// Docker sites: set environment variable KEY in the container of SERVICE; repeatable.
    #[arg(long = "env", value_name = "SERVICE:KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String, String)>,
}

#[derive(Args, Debug)]
pub struct DrillArgs {
    #[arg(value_name = "SITE[:SNAPSHOT][@HOST]")]
    pub target: String,
    /// Docker sites: run `sh -c COMMAND` in the container of compose service SERVICE
    /// (e.g. web='wget -qO- http://localhost/'); fails the drill unless it exits 0.
    /// Repeatable.
    #[arg(long = "probe", value_name = "SERVICE=COMMAND", value_parser = parse_probe)]
    pub probes: Vec<(String, String)>,
    /// Rehearse an upgrade: the copy's containers of these services run other images.
    #[command(flatten)]
    pub images: ImageArgs,
    /// Leave the restored copy in place (and print where it is).
    #[arg(long)]
    pub keep: bool,
    /// How long containers get to be running (and healthy, when they have a check).
    #[arg(long, default_value = "120s", value_parser = crate::settings::parse_duration)]
    pub timeout: std::time::Duration,
    /// Snapshots with databases that are not in containers: the server for scratch
    /// databases, mysql://USER@HOST:PORT/PREFIX (loaded as PREFIX_DB_<hex>, then dropped).
    #[arg(long = "db", value_name = "URL")]
    pub db: Option<String>,
    /// Database connections used in parallel (default: the number of CPUs).
    #[arg(long, env = "FREEZER_JOBS")]
    pub jobs: Option<usize>,
}

#[derive(Args, Debug)]
pub struct SnapshotsArgs {
    pub site: Option<String>,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only these sites (default: every site of the repository and the config file).
    pub sites: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Where to write the page.
    #[arg(long, value_name = "FILE")]
    pub html: PathBuf,
    /// How many days of history it shows.
    #[arg(long, default_value_t = 90)]
    pub days: u64,
    /// Only these sites (default: every site of the repository and the config file).
    pub sites: Vec<String>,
}

#[derive(Args, Debug)]
pub struct SitesArgs {
    /// A host of the config file's [hosts] (default: local, the engine DOCKER_HOST
    /// names).
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct ForgetArgs {
    pub site: String,
    /// Keep the N newest snapshots.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_last: u32,
    /// Keep the newest snapshot of each of the last N days that have one (UTC).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_daily: u32,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_weekly: u32,
    /// Keep the newest snapshot of each of the last N months that have one.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub keep_monthly: u32,
    /// Print what would be kept and removed, and remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct VerifyArgs {
    #[arg(value_name = "SITE[:SNAPSHOT]")]
    pub target: Option<String>,
}

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// How long a blob stays marked before a prune deletes it (e.g. 24h, 30m, 0).
    #[arg(long, default_value = "24h", value_parser = crate::settings::parse_duration)]
    pub grace: std::time::Duration,
    /// Report what would be marked and deleted, and change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    #[arg(value_name = "SITE[:SNAPSHOT]")]
    pub target: String,
    /// The directory to write (must be new or empty).
    #[arg(long)]
    pub oci: PathBuf,
    /// Layer compression in the layout: zstd (as stored, copied unchanged) or gzip
    /// (recompressed, for Docker 20.10 and `skopeo copy … docker-daemon:`, which
    /// cannot read zstd layers).
    #[arg(long, value_enum, default_value_t = CompressionArg::Zstd)]
    pub compression: CompressionArg,
}

#[derive(Args, Debug)]
pub struct MountArgs {
    /// An existing empty directory.
    pub mountpoint: PathBuf,
    /// Local disk kept for the content of files read (e.g. 1G, 200M); the least
    /// recently read leave it first.
    #[arg(long, default_value = "1G", value_parser = parse_cache_size)]
    pub cache_size: u64,
}

#[derive(Args, Debug)]
pub struct CopyArgs {
    /// SITE (all its snapshots) or SITE:SNAPSHOT (one; SITE:latest for the newest).
    #[arg(value_name = "SITE[:SNAPSHOT]", required_unless_present = "all")]
    pub targets: Vec<String>,
    /// Every snapshot of every site.
    #[arg(long, conflicts_with = "targets")]
    pub all: bool,
    /// The repository to copy into: a [repos.NAME] of the config file, or a URL
    /// (s3://BUCKET/PREFIX, file:///PATH, a directory). It must exist (freezer init).
    #[arg(long, value_name = "NAME|URL")]
    pub to: String,
    /// An encrypted target: an age identity file that opens it (else
    /// FREEZER_TO_IDENTITY; else the source's identity or passphrase).
    #[arg(long, value_name = "FILE")]
    pub to_identity: Option<PathBuf>,
    /// An encrypted target: a file holding its passphrase (else FREEZER_TO_PASSPHRASE).
    #[arg(long, value_name = "FILE")]
    pub to_passphrase_file: Option<PathBuf>,
    /// How long to wait while a prune holds the target (e.g. 30m, 0).
    #[arg(long, default_value = "30m", value_parser = crate::settings::parse_duration)]
    pub lock_wait: std::time::Duration,
    /// Say what would be copied, and copy nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Subcommand, Debug)]
pub enum KeyAction {
    /// The recipients and whether a passphrase opens the repository.
    List,
    /// Let more keys open the repository.
    Add(AddKeys),
    /// Stop a key from opening what is written from now on: an age1… recipient, or
    /// `passphrase`.
    Remove(RemoveKeys),
}

#[derive(Args, Debug)]
pub struct AddKeys {
    /// An age recipient (age1…); repeatable.
    #[arg(long = "recipient", value_name = "KEY")]
    pub recipients: Vec<String>,
    /// A file of age recipients, one per line.
    #[arg(long, value_name = "FILE")]
    pub recipients_file: Option<PathBuf>,
    /// Also (or instead) open with this passphrase: a file holding it, or
    /// FREEZER_NEW_PASSPHRASE.
    #[arg(long, value_name = "FILE")]
    pub new_passphrase_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RemoveKeys {
    pub key: String,
}

/// `freeze --mode`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeArg {
    Files,
    Dehydrated,
    Hydrated,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Files => Mode::Files,
            ModeArg::Dehydrated => Mode::Dehydrated,
            ModeArg::Hydrated => Mode::Hydrated,
        }
    }
}

/// `export --compression`.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressionArg {
    Zstd,
    Gzip,
}

impl From<CompressionArg> for LayerCompression {
    fn from(c: CompressionArg) -> LayerCompression {
        match c {
            CompressionArg::Zstd => LayerCompression::Zstd,
            CompressionArg::Gzip => LayerCompression::Gzip,
        }
    }
}

/// A chunk size: `123`, `64K`, `2M`, `1G` (powers of 1024), from 4K to 1G.
fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let v = size_value(s)?;
    if !(4096..=(1 << 30)).contains(&v) {
        return Err(format!("{s} is out of range (4K to 1G)"));
    }
    Ok(v)
}

/// A cache size: at least 1M.
fn parse_cache_size(s: &str) -> std::result::Result<u64, String> {
    let v = size_value(s)?;
    if v < 1 << 20 {
        return Err(format!("{s} is too small (at least 1M)"));
    }
    Ok(v)
}

fn size_value(s: &str) -> std::result::Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 512K or 2M"))?;
    Ok(n.saturating_mul(mult))
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

fn parse_image(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((svc, image)) if !svc.is_empty() && !image.trim().is_empty() => {
            Ok((svc.to_string(), image.trim().to_string()))
        }
        _ => Err(format!(
            "{s:?}: expected SERVICE=IMAGE, e.g. web=shop-web:2"
        )),
    }
}

fn parse_service_map(s: &str) -> std::result::Result<(String, String), String> {
    match s.split_once('=') {
        Some((a, b)) if !a.is_empty() && !b.is_empty() => Ok((a.to_string(), b.to_string())),
        _ => Err(format!("{s:?}: expected OLD=NEW, e.g. mysql=db")),
    }
}

fn parse_env(s: &str) -> std::result::Result<(String, String, String), String> {
    let err = || format!("{s:?}: expected SERVICE:KEY=VALUE, e.g. web:PHP_MEMORY_LIMIT=256M");
    let (svc, rest) = s.split_once(':').ok_or_else(err)?;
    let (key, value) = rest.split_once('=').ok_or_else(err)?;
    if svc.is_empty() || key.is_empty() {
        return Err(err());
    }
    Ok((svc.to_string(), key.to_string(), value.to_string()))
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
pub fn split_host(t: &str) -> (&str, Option<&str>) {
    match t.rsplit_once('@') {
        Some((s, h)) if !h.is_empty() => (s, Some(h)),
        Some((s, _)) => (s, None),
        None => (t, None),
    }
}

pub fn split_target(t: &str) -> (&str, Option<&str>) {
    match t.split_once(':') {
        Some((s, snap)) if !snap.is_empty() => (s, Some(snap)),
        Some((s, _)) => (s, None),
        None => (t, None),
    }
}

#[derive(Args, Debug)]
pub struct LsArgs {
    #[arg(value_name = "SITE[:SNAPSHOT]")]
    pub target: String,
    /// TREE, TREE/PATH, or a database name.
    pub path: Option<String>,
    /// Everything below the directory, not only its entries.
    #[arg(long, short = 'R')]
    pub recursive: bool,
}

#[derive(Args, Debug)]
pub struct DiffArgs {
    /// The older snapshot.
    #[arg(value_name = "SITE:SNAPSHOT")]
    pub from: String,
    /// The newer snapshot (of the same site unless SITE: is given).
    #[arg(value_name = "[SITE:]SNAPSHOT")]
    pub to: String,
}

#[derive(Args, Debug)]
pub struct CatArgs {
    #[arg(value_name = "SITE[:SNAPSHOT]")]
    pub target: String,
    /// The file, as TREE/PATH.
    #[arg(value_name = "TREE/PATH")]
    pub path: String,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Args, Debug)]
pub struct ManpagesArgs {
    /// Where the pages go (created if missing).
    pub dir: PathBuf,
}
