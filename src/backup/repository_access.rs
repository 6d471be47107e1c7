//! The repository named by `blockbackup.repository`, opened with the checks
//! a backup tool owes its users: the setting is there, the directory is
//! absolute and apart from the data directory, and the repository belongs
//! to this cluster.

use std::path::PathBuf;

use blockbackup_core::repository::catalog::{BackupMode, BackupRecord};
use blockbackup_core::repository::upkeep;
use blockbackup_core::repository::{Catalog, Repository, RepositoryLock};
use blockbackup_core::restore::target::{overlapping, resolved};
use blockbackup_core::TimelineSpan;
use pgrx::warning;

use super::pg_backup_functions;
use crate::server_paths::data_directory;
use crate::{errors, settings};

pub fn repository_root() -> PathBuf {
    match checked_repository_root() {
        Ok(root) => root,
        Err((_, _)) if settings::text(&settings::REPOSITORY).is_none() => {
            errors::repository_unset()
        }
        Err((message, hint)) => errors::invalid_argument(message, hint),
    }
}

/// `blockbackup.repository`, resolved, or why it cannot be used (a message
/// and a hint): for callers that must not raise, such as the archiver.
pub fn checked_repository_root() -> Result<PathBuf, (String, &'static str)> {
    let Some(root) = settings::text(&settings::REPOSITORY) else {
        return Err((
            "blockbackup.repository is not set".to_owned(),
            "Set it to a directory outside the data directory, e.g. /var/lib/pg_blockbackup.",
        ));
    };
    let root = PathBuf::from(root);
    let Some(resolved_root) = resolved(&root) else {
        return Err((
            format!(
                "blockbackup.repository must be an absolute path without \"..\", got \"{}\"",
                root.display()
            ),
            "Set it to a directory outside the data directory, e.g. /var/lib/pg_blockbackup.",
        ));
    };
    let data_dir = resolved(&data_directory()).unwrap_or_else(data_directory);
    if overlapping(&resolved_root, &data_dir) {
        return Err((
            format!(
                "blockbackup.repository \"{}\" overlaps the data directory \"{}\"",
                root.display(),
                data_dir.display()
            ),
            "A backup inside the data it backs up would copy itself; choose a directory outside the data directory.",
        ));
    }
    Ok(resolved_root)
}

/// Opens the repository, creating it on first use for this cluster.
pub fn open_for_writing() -> Repository {
    Repository::open_or_create(&repository_root(), pg_backup_functions::system_identifier())
        .unwrap_or_else(|e| errors::repository(e))
}

/// The catalog with backups that were cut off (session killed, server
/// crashed) marked ERROR and their partial files removed; the caller holds
/// the repository lock. Problems on the way (a full disk) are WARNINGs,
/// never a reason to fail: reading the catalog must always work.
pub fn mark_interrupted(repo: &Repository, lock: &RepositoryLock) -> Catalog {
    let (catalog, warnings) =
        upkeep::mark_interrupted(repo, lock).unwrap_or_else(|e| errors::repository(e));
    for message in warnings {
        warning!("pg_blockbackup: {message}");
    }
    catalog
}

/// The catalog for a listing: cut-off backups are marked when the lock is
/// free (with it taken, a backup or deletion runs and nothing was cut off
/// that the next call would not mark).
pub fn catalog_marking_interrupted(repo: &Repository) -> Catalog {
    match repo.lock() {
        Ok(lock) => mark_interrupted(repo, &lock),
        Err(_) => repo.list().unwrap_or_else(|e| errors::repository(e)),
    }
}

/// The newest backup an incremental can build on: usable, of this
/// cluster, and started on a timeline of the server's current history.
pub fn newest_usable_parent(repo: &Repository, history: &[TimelineSpan]) -> Option<BackupRecord> {
    let system_identifier = pg_backup_functions::system_identifier();
    let catalog = repo.list().unwrap_or_else(|e| errors::repository(e));
    catalog.records.into_iter().rev().find(|r| {
        r.status.is_usable()
            && r.mode != BackupMode::Dump
            && r.system_identifier == system_identifier
            && on_history(r, history)
    })
}

fn on_history(record: &BackupRecord, history: &[TimelineSpan]) -> bool {
    history.iter().any(|span| {
        span.timeline == record.timeline
            && span.begin <= record.start_lsn
            && span.end.is_none_or(|end| record.start_lsn < end)
    })
}
