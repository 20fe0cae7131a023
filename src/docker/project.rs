//! The compose project a site was started from: its compose files, `.env`, env files,
//! the files its binds and secrets name, and the small files beside them (build
//! contexts), frozen as the tree [`PROJECT_TREE`] so that a new host can run compose on
//! the same project (SPEC.md §13.5).
//!
//! What is kept: every file the labels or mounts name (any size), and the other files
//! of the project directory up to [`FILE_LIMIT`] each, [`TOTAL_LIMIT`] and
//! [`ENTRY_LIMIT`] in all, walked in name order. Left out: `.git`, directories the
//! containers bind-mount (trees of their own), and whatever is over the limits; each is
//! an exclusion rule of the tree, so `freeze --dry-run` lists them. This module finds
//! the project; `ops::sources` walks it into those rules.

use std::path::{Path, PathBuf};

use serde_json::Value;

/// The snapshot tree holding the project.
pub const PROJECT_TREE: &str = "project";
/// Compose's labels on every container of a project.
pub const WORKING_DIR: &str = "com.docker.compose.project.working_dir";
pub const CONFIG_FILES: &str = "com.docker.compose.project.config_files";
pub const ENVIRONMENT_FILE: &str = "com.docker.compose.project.environment_file";
/// The labels that name paths of the project (rewritten when it moves).
pub const PATH_LABELS: [&str; 3] = [WORKING_DIR, CONFIG_FILES, ENVIRONMENT_FILE];

/// Files of the project directory not named by compose are kept up to this size each...
pub const FILE_LIMIT: u64 = 1 << 20;
/// ... and this much in all...
pub const TOTAL_LIMIT: u64 = 16 << 20;
/// ... and this many entries walked.
pub const ENTRY_LIMIT: usize = 10_000;

/// A compose project on this host.
#[derive(Debug, Clone)]
pub struct Project {
    /// Its working directory (label `…project.working_dir`).
    pub dir: PathBuf,
    /// The files it names, relative to `dir`: compose files, env files, `.env`, the
    /// sources of single-file binds and secrets inside `dir`.
    pub named: Vec<PathBuf>,
}

/// The paths a container's compose labels name: its working directory, then the compose
/// files and environment files (comma-separated lists).
pub fn label_paths(labels: &Value) -> Option<(String, Vec<String>)> {
    let dir = labels[WORKING_DIR]
        .as_str()
        .filter(|d| d.starts_with('/'))?;
    let files = [CONFIG_FILES, ENVIRONMENT_FILE]
        .iter()
        .filter_map(|k| labels[k].as_str())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|f| !f.is_empty())
        .map(|f| match f.starts_with('/') {
            true => f.to_string(),
            false => format!("{}/{f}", dir.trim_end_matches('/')),
        })
        .collect();
    Some((dir.trim_end_matches('/').to_string(), files))
}

/// `path` moved from under `from` to under `to`; None when it is not under `from`.
pub fn rebase(path: &str, from: &str, to: &str) -> Option<String> {
    let rest = path.strip_prefix(from)?;
    if !rest.is_empty() && !rest.starts_with('/') {
        return None;
    }
    Some(format!("{}{rest}", to.trim_end_matches('/')))
}

/// The compose project named by `labels` (a container's), read on this host. `binds`:
/// the directories the site's containers bind-mount; `files`: the sources of their
/// single-file binds. None when the labels name no project, its directory is not here,
/// or a bind-mounted directory holds it (then that bind's tree already carries it).
pub fn find(labels: &Value, binds: &[PathBuf], files: &[PathBuf]) -> Option<Project> {
    let (dir, named) = label_paths(labels)?;
    let dir = PathBuf::from(dir);
    if !dir.is_dir() || binds.iter().any(|b| dir.starts_with(b)) {
        return None;
    }
    let mut named: Vec<PathBuf> = named
        .iter()
        .map(PathBuf::from)
        .chain(std::iter::once(dir.join(".env")))
        .chain(files.iter().cloned())
        .filter(|p| !binds.iter().any(|b| p.starts_with(b)))
        .filter(|p| std::fs::symlink_metadata(p).is_ok_and(|m| !m.is_dir()))
        .filter_map(|p| p.strip_prefix(&dir).ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    named.sort();
    named.dedup();
    Some(Project { dir, named })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_move_only_from_under_the_project() {
        assert_eq!(
            rebase("/srv/shop/a.yml", "/srv/shop", "/new/dir").as_deref(),
            Some("/new/dir/a.yml")
        );
        assert_eq!(
            rebase("/srv/shop", "/srv/shop", "/new/dir/").as_deref(),
            Some("/new/dir")
        );
        assert_eq!(rebase("/srv/shop2/a.yml", "/srv/shop", "/new"), None);
        assert_eq!(rebase("/etc/x", "/srv/shop", "/new"), None);
    }

    #[test]
    fn labels_name_the_project_files() {
        let labels = serde_json::json!({
            WORKING_DIR: "/srv/shop",
            CONFIG_FILES: "/srv/shop/docker-compose.yml,override.yml",
            ENVIRONMENT_FILE: "/srv/shop/.env",
        });
        let (dir, files) = label_paths(&labels).unwrap();
        assert_eq!(dir, "/srv/shop");
        assert_eq!(
            files,
            [
                "/srv/shop/docker-compose.yml",
                "/srv/shop/override.yml",
                "/srv/shop/.env"
            ]
        );
        assert!(label_paths(&serde_json::json!({ WORKING_DIR: "rel" })).is_none());
    }
}
