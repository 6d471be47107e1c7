//! The repository's upkeep, shared by the SQL functions and the offline
//! command: marking backups that were cut off, validating, expiring (with
//! the archived WAL no kept backup needs) and deleting. Each runs with the
//! repository lock held (the caller passes it as proof) and keeps going on
//! a full disk: reading and removing need
//! no space, and a status that cannot be written is reported, not fatal.

use crate::repository::catalog::{BackupMode, BackupRecord, BackupStatus};
use crate::repository::locks::this_host;
use crate::repository::{
    delete_plan, expire_plan, validate_backup_id, Catalog, Repository, RepositoryError,
    RepositoryLock, Validation, ValidationReport,
};
use crate::summary::range_plan::TimelineSpan;
use crate::wal::reach::gap_after;
use crate::wal::retention::expire_wal;
use crate::wal::{WalArchive, WalFileName};
use crate::Lsn;

/// What a cut-off backup's record says.
const INTERRUPTED: &str =
    "interrupted: the session or the server ended while the backup ran; its partial files were removed";

/// The catalog after marking cut-off backups ERROR, with a warning for
/// each problem met on the way (a record that could not be rewritten on a
/// full disk is ERROR in the returned catalog all the same).
///
/// A physical backup holds the repository lock while it runs, so under
/// the lock a RUNNING one was cut off; a dump holds its own running lock.
/// Locks are the host's, so a RUNNING backup another host started is left
/// alone.
/// A cut-off backup's partial files are removed (they can be large and are
/// never used), then its record is rewritten, so that space is freed first;
/// the partial files of backups that failed otherwise (ERROR) go too.
/// Staging directories and abandoned `.creating-*`/`.deleting-*` entries
/// go as well.
pub fn mark_interrupted(
    repo: &Repository,
    _lock: &RepositoryLock,
) -> Result<(Catalog, Vec<String>), RepositoryError> {
    let mut warnings = Vec::new();
    if let Err(error) = repo.remove_abandoned() {
        warnings.push(format!("could not remove abandoned entries: {error}"));
    }
    let mut catalog = repo.list()?;
    let this_host = this_host();
    for record in &mut catalog.records {
        if record.status != BackupStatus::Running {
            // A failed backup's partial files are never used either.
            let partial = record.status == BackupStatus::Error;
            if let Err(error) = repo.remove_leftovers(&record.backup_id, partial) {
                warnings.push(format!("backup {}: {error}", record.backup_id));
            }
            continue;
        }
        // Started on another host: its locks are there, not here.
        if record.host.as_ref().is_some_and(|host| *host != this_host) {
            continue;
        }
        let cut_off = match record.mode {
            BackupMode::Dump => !repo.is_dump_running(&record.backup_id)?,
            BackupMode::Full | BackupMode::Incremental => true,
        };
        if !cut_off {
            continue;
        }
        if let Err(error) = repo.remove_leftovers(&record.backup_id, true) {
            warnings.push(format!(
                "backup {}: its partial files could not all be removed: {error}",
                record.backup_id
            ));
        }
        record.status = BackupStatus::Error;
        record.error = Some(INTERRUPTED.to_owned());
        if let Err(error) = repo.write_record(record) {
            warnings.push(format!(
                "backup {} was cut off but could not be recorded as ERROR: {error}",
                record.backup_id
            ));
        }
    }
    Ok((catalog, warnings))
}

/// One row of a validation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationRow {
    pub backup_id: String,
    /// The status after validation (for a damaged entry: CORRUPT).
    pub status: BackupStatus,
    pub report: ValidationReport,
    /// Why the status could not be written, if it could not.
    pub not_recorded: Option<String>,
}

/// Validates backup `id`, or every backup but the running ones (oldest
/// first, so that a parent's verdict is known when its children are
/// judged). Damaged entries are rows with status CORRUPT.
pub fn validate(
    repo: &Repository,
    lock: &RepositoryLock,
    id: Option<&str>,
) -> Result<(Vec<ValidationRow>, Vec<String>), RepositoryError> {
    if let Some(id) = id {
        validate_backup_id(id)?;
    }
    let (catalog, warnings) = mark_interrupted(repo, lock)?;
    let mut rows = Vec::new();
    let damaged = catalog
        .damaged
        .iter()
        .filter(|entry| id.is_none_or(|id| id == entry.backup_id));
    for entry in damaged {
        rows.push(ValidationRow {
            backup_id: entry.backup_id.clone(),
            status: BackupStatus::Corrupt,
            report: ValidationReport {
                errors: vec![entry.problem.clone()],
                ..ValidationReport::default()
            },
            not_recorded: None,
        });
    }
    let records: Vec<BackupRecord> = catalog
        .records
        .into_iter()
        .filter(|record| id.is_none_or(|id| id == record.backup_id))
        .collect();
    if let Some(id) = id {
        if records.is_empty() && rows.is_empty() {
            return Err(RepositoryError::BackupNotFound { id: id.to_owned() });
        }
    }
    let mut warnings = warnings;
    warnings.extend(archive_gaps(repo, &records)?);
    for record in records {
        if record.status == BackupStatus::Running {
            continue;
        }
        let Validation {
            record,
            report,
            not_recorded,
        } = repo.validate_and_record(record);
        rows.push(ValidationRow {
            backup_id: record.backup_id,
            status: record.status,
            report,
            not_recorded,
        });
    }
    Ok((rows, warnings))
}

/// A warning for each backup after which the WAL archive has a gap: it
/// still restores (with its own WAL), but point-in-time recovery from it
/// stops at the gap.
fn archive_gaps(
    repo: &Repository,
    records: &[BackupRecord],
) -> Result<Vec<String>, RepositoryError> {
    let archive = WalArchive::new(repo);
    let Some(segment_size) = archive.segment_size()? else {
        return Ok(Vec::new());
    };
    let files = archive.list()?;
    let mut warnings = Vec::new();
    for record in records {
        let (Some(stop), true) = (record.stop_lsn, record.status.is_usable()) else {
            continue;
        };
        if record.mode == BackupMode::Dump {
            continue;
        }
        let history = [TimelineSpan {
            timeline: record.timeline,
            begin: Lsn(0),
            end: None,
        }];
        let own_reach = record.wal_reach().unwrap_or(stop);
        if let Some((reach, newest)) =
            gap_after(&files, &history, segment_size, record.start_lsn, own_reach)
        {
            let missing =
                WalFileName::segment(record.timeline, reach.0 / segment_size, segment_size);
            warnings.push(format!(
                "backup {}: the WAL archive has a gap: {missing} is missing, so recovery from this backup stops at {reach} although WAL was archived up to {newest}",
                record.backup_id
            ));
        }
    }
    Ok(warnings)
}

/// One backup retention or deletion handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Removal {
    pub backup_id: String,
    pub action: String,
}

/// Applies retention: removes what [`expire_plan`] chose, children first.
/// A backup a restore is reading is skipped (and so, since the restore
/// holds its whole chain, are its ancestors), with a row saying so.
pub fn expire(
    repo: &Repository,
    lock: &RepositoryLock,
    keep_full: Option<u32>,
    keep_days: Option<u32>,
    now_us: i64,
) -> Result<(Vec<Removal>, Vec<String>), RepositoryError> {
    let (catalog, warnings) = mark_interrupted(repo, lock)?;
    let mut rows = Vec::new();
    for (id, action) in expire_plan(&catalog, keep_full, keep_days, now_us) {
        let action = match repo.remove_backup(&id) {
            Ok(()) => action.as_str().to_owned(),
            Err(RepositoryError::BeingRestored { .. }) => {
                "kept: a restore is reading it".to_owned()
            }
            Err(error) => return Err(error),
        };
        rows.push(Removal {
            backup_id: id,
            action,
        });
    }
    // Then the archived WAL that no backup still kept can use.
    let kept = repo.list()?;
    let archive = WalArchive::new(repo);
    if let Some(removed) = expire_wal(&archive, &kept.records, !kept.damaged.is_empty())? {
        rows.push(Removal {
            backup_id: "archived WAL".to_owned(),
            action: format!(
                "removed {} files, {} to {} ({} bytes): no kept backup starts before {}",
                removed.files, removed.first, removed.last, removed.bytes, removed.kept_from
            ),
        });
    }
    Ok((rows, warnings))
}

/// Deletes backup `id` (a damaged entry too) and, with `cascade`, what
/// depends on it; returns the ids removed, children first.
pub fn delete(
    repo: &Repository,
    lock: &RepositoryLock,
    id: &str,
    cascade: bool,
) -> Result<(Vec<String>, Vec<String>), RepositoryError> {
    validate_backup_id(id)?;
    let (catalog, warnings) = mark_interrupted(repo, lock)?;
    let doomed = delete_plan(&catalog, id, cascade)?;
    repo.remove_backups(&doomed)?;
    Ok((doomed, warnings))
}
