//! The repository named by `blockbackup.repository`, opened with the checks
//! a backup tool owes its users: the setting is there, the directory is
//! absolute and apart from the data directory, and the repository belongs
//! to this cluster.

use std::path::PathBuf;

use blockbackup_core::catalog::{BackupMode, BackupRecord, BackupStatus};
use blockbackup_core::repository::Repository;
use blockbackup_core::TimelineSpan;

use super::server_backup;
use crate::server_paths::{data_directory, overlapping, resolved};
use crate::{errors, settings};

pub fn repository_root() -> PathBuf {
    let Some(root) = settings::text(&settings::REPOSITORY) else {
        errors::repository_unset();
    };
    let root = PathBuf::from(root);
    let Some(resolved_root) = resolved(&root) else {
        errors::invalid_argument(
            format!(
                "blockbackup.repository must be an absolute path without \"..\", got \"{}\"",
                root.display()
            ),
            "Set it to a directory outside the data directory, e.g. /var/lib/pg_blockbackup.",
        );
    };
    let data_dir = resolved(&data_directory()).unwrap_or_else(data_directory);
    if overlapping(&resolved_root, &data_dir) {
        errors::invalid_argument(
            format!(
                "blockbackup.repository \"{}\" overlaps the data directory \"{}\"",
                root.display(),
                data_dir.display()
            ),
            "A backup inside the data it backs up would copy itself; choose a directory outside the data directory.",
        );
    }
    resolved_root
}

/// Opens the repository, creating it on first use for this cluster.
pub fn open_for_writing() -> Repository {
    Repository::open_or_create(&repository_root(), server_backup::system_identifier())
        .unwrap_or_else(|e| errors::repository(e))
}

/// Backups left RUNNING while no backup holds the repository lock were
/// cut off (session killed, server crashed): they are ERROR. A dump does
/// not hold the repository lock but its own running lock; it was cut off
/// when that lock is free.
pub fn mark_interrupted_backups(repo: &Repository) {
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    for mut record in records.into_iter().filter(|r| {
        r.status == BackupStatus::Running
            && (r.mode != BackupMode::Dump
                || !repo
                    .is_dump_running(&r.backup_id)
                    .unwrap_or_else(|e| errors::repository(e)))
    }) {
        record.status = BackupStatus::Error;
        record.error =
            Some("interrupted: the session or the server ended while the backup ran".into());
        repo.write_record(&record)
            .unwrap_or_else(|e| errors::repository(e));
    }
}

/// The newest backup an incremental can build on: usable, of this
/// cluster, and started on a timeline of the server's current history.
pub fn newest_usable_parent(repo: &Repository, history: &[TimelineSpan]) -> Option<BackupRecord> {
    let system_identifier = server_backup::system_identifier();
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    records.into_iter().rev().find(|r| {
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
