//! Steps every restore shares, whichever way a snapshot comes back (a thaw of files, a
//! site recreated on an engine, a drill's copy, `--onto` another site): trees restored
//! through staging, and a dump loaded into a database container.

use crate::db::{LoadOptions, LoadReport, Prepared};
use crate::docker::capture::ContainerSpec;
use crate::docker::ContainerEngine;
use crate::error::Result;
use crate::progress::Progress;
use crate::repo::{Repository, Snapshot};

use super::{ThawPlan, ThawReport, ThawTree};

/// Restores `trees` of `snapshot`, each through a staging directory beside its
/// destination, installed only when all are complete (see [`super::thaw`]).
pub(crate) fn trees(
    repo: &Repository,
    snapshot: &Snapshot,
    trees: Vec<ThawTree>,
    progress: &Progress,
) -> Result<ThawReport> {
    let thaw = ThawPlan {
        snapshot: snapshot.clone(),
        trees,
        databases: vec![],
        db_jobs: 1,
        db_with_users: false,
    };
    super::thaw(repo, &thaw, progress)
}

/// Loads a fetched and verified dump into the database server of container `spec`,
/// which runs: once the server accepts the application's login, over as many
/// connections as there are cores. `replace`: a non-empty database is dropped first.
pub(crate) fn database_into_container(
    engine: &dyn ContainerEngine,
    spec: &ContainerSpec,
    dump: &Prepared,
    replace: bool,
    progress: &Progress,
) -> Result<LoadReport> {
    let url = super::recreate::container_database(engine, spec)?.ok_or_else(|| {
        crate::error::Error::usage(format!(
            "container {} has no database login in its environment",
            spec.name
        ))
    })?;
    progress.set_label(format!("waiting for the database in {}", spec.name));
    super::recreate::wait_for_database(engine, &url, &spec.name)?;
    let opts = LoadOptions {
        jobs: std::thread::available_parallelism().map_or(2, |n| n.get()),
        replace,
        with_users: false,
        tables: None,
    };
    dump.load(&url, &opts, progress).map_err(|e| {
        crate::error::prefix(
            e,
            &format!(
                "loading database {} into container {}",
                dump.database(),
                spec.name
            ),
        )
    })
}
