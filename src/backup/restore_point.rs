//! `create_restore_point`: a named restore point that a backup can be
//! restored to.
//!
//! A backup holds the WAL from its start to its stop, and a restored
//! cluster is consistent only from the stop on, so a restore point that
//! several nodes share must come after every node's backup stopped, and
//! its WAL must be in the backup: with no WAL archive, nothing else keeps
//! it. So this creates the restore point (`pg_create_restore_point`),
//! flushes it, and stores the WAL from the backup's stop segment through
//! the restore point's segment in the backup, replacing the stop segment
//! (copied when it was only partly written) with its newer content, then
//! switches WAL segment so that a record starts right after the restore
//! point in what is stored. Each segment replaces the stored one at once
//! (the store's atomic replace), and the catalog is updated last.
//!
//! `attach` does the same for a restore point another program already
//! wrote (a Citus cluster backup's), found by name in the WAL after the
//! backup's stop.

use std::ops::ControlFlow;

use blockbackup_core::backup::copy::{copy_files, CopyOptions};
use blockbackup_core::civil_time::unix_now_us as now_us;
use blockbackup_core::repository::catalog::{
    BackupMode, BackupRecord, RestorePoint, MAX_RESTORE_POINT_NAME_BYTES,
};
use blockbackup_core::repository::locks::RepositoryLock;
use blockbackup_core::repository::{validate_backup_id, Repository};
use blockbackup_core::{Lsn, TimelineSpan};
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::repository_access;
use super::take::interrupt_pending;
use super::wal_copy::wal_tasks;
use crate::sql_types::PgLsn;
use crate::{errors, timeline};

pub struct CreatedRestorePoint {
    pub backup_id: String,
    pub lsn: Lsn,
    pub wal_segments: usize,
}

/// The backup a restore point is being added to, checked and locked.
struct Target {
    repo: Repository,
    _lock: RepositoryLock,
    record: BackupRecord,
    history: Vec<TimelineSpan>,
    tli: u32,
}

pub fn create(name: &str, backup_id: Option<&str>) -> CreatedRestorePoint {
    let target = prepare(name, backup_id);
    let (lsn, switch_end) = create_server_restore_point(name);
    store(target, name, lsn, switch_end)
}

/// Attaches to backup `backup_id` the restore point named `name` that
/// another program already wrote into this server's WAL after the backup
/// stopped (a Citus cluster backup's `citus_create_restore_point`), as
/// `create` would have: its WAL is stored in the backup and the catalog
/// names it.
pub fn attach(name: &str, backup_id: &str) -> CreatedRestorePoint {
    let target = prepare(name, Some(backup_id));
    let stop = target.record.stop_lsn.unwrap_or(target.record.start_lsn);
    let lsn = super::restore_point_search::find_after(name, stop);
    let switch_end = switch_after(lsn);
    store(target, name, lsn, switch_end)
}

fn prepare(name: &str, backup_id: Option<&str>) -> Target {
    check_name(name);
    if unsafe { pg_sys::RecoveryInProgress() } {
        errors::restore_point_in_recovery();
    }
    let repo = repository_access::open_for_writing();
    let lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    repository_access::mark_interrupted(&repo, &lock);
    let tli = timeline::current_timeline();
    let history = timeline::history_of(tli);
    let record = match backup_id {
        Some(id) => {
            validate_backup_id(id).unwrap_or_else(|e| errors::repository(e));
            repo.read_record(id)
                .unwrap_or_else(|e| errors::repository(e))
        }
        None => repository_access::newest_usable_parent(&repo, &history)
            .unwrap_or_else(|| errors::no_backup_for_restore_point()),
    };
    check_backup(&record, tli, name);
    Target {
        repo,
        _lock: lock,
        record,
        history,
        tli,
    }
}

/// Stores the WAL from the backup's stop through the segment `switch_end`
/// ends, then names the restore point in the catalog.
fn store(target: Target, name: &str, lsn: Lsn, switch_end: Lsn) -> CreatedRestorePoint {
    let Target {
        repo,
        _lock,
        mut record,
        history,
        tli,
    } = target;
    let stop = record.stop_lsn.unwrap_or(record.start_lsn);
    // Through the segment the switch after the restore point ends in.
    let last = Lsn(switch_end.0.saturating_sub(1));
    let tasks = wal_tasks(&history, tli, stop, last);
    let expected: Vec<String> = tasks.iter().map(|task| task.path.clone()).collect();
    // A restore reading this backup would find its WAL changed under it.
    let _no_readers = repo
        .lock_out_readers(&record.backup_id)
        .unwrap_or_else(|e| errors::repository(e));
    // Each segment replaces the backup's at once when written (its stop
    // segment, copied when it was only partly written, gets its newer
    // content): a failure leaves each as it was or with more valid WAL.
    let options = CopyOptions {
        storage: repo.storage().clone(),
        prefix: repo.data_prefix(&record.backup_id),
        replace: true,
        compression: record.compression,
        level: record
            .compression_level
            .unwrap_or_else(|| record.compression.default_level()),
        threads: 1,
        page_checks: None,
    };
    let mut poll = |_: &_| {
        if interrupt_pending() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    };
    let (stored, _) = copy_files(tasks, &options, &mut poll).unwrap_or_else(|e| {
        pg_sys::check_for_interrupts!();
        errors::backup_copy(e)
    });
    if let Some(missing) = expected
        .iter()
        .find(|path| !stored.iter().any(|f| &f.path == *path))
    {
        errors::backup_failed(format!(
            "WAL segment {missing} was removed while it was being copied"
        ));
    }

    let mut contents = repo
        .read_contents(&record.backup_id)
        .unwrap_or_else(|e| errors::repository(e));
    contents.upsert(stored);
    repo.write_contents(&record.backup_id, &contents)
        .unwrap_or_else(|e| errors::repository(e));
    record.files = contents.files.len() as u64;
    record.restore_points.push(RestorePoint {
        name: name.to_owned(),
        lsn,
        time_us: now_us(),
    });
    repo.write_record(&record)
        .unwrap_or_else(|e| errors::repository(e));
    CreatedRestorePoint {
        backup_id: record.backup_id,
        lsn,
        wal_segments: expected.len(),
    }
}

fn check_name(name: &str) {
    if name.is_empty()
        || name.len() > MAX_RESTORE_POINT_NAME_BYTES
        || name.chars().any(char::is_control)
    {
        errors::invalid_argument(
            format!("invalid restore point name {name:?}"),
            "A restore point name is 1 to 63 bytes without control characters.",
        );
    }
}

fn check_backup(record: &BackupRecord, tli: u32, name: &str) {
    if record.mode == BackupMode::Dump || !record.status.is_usable() {
        errors::invalid_argument(
            format!(
                "backup \"{}\" is a {} backup in status {}: only a finished physical backup can hold a restore point",
                record.backup_id,
                record.mode.as_str(),
                record.status.as_str()
            ),
            "Name a full or incremental backup from blockbackup.backups() that is DONE or OK.",
        );
    }
    if record.timeline != tli {
        errors::invalid_argument(
            format!(
                "backup \"{}\" is on timeline {}, the server on timeline {tli}",
                record.backup_id, record.timeline
            ),
            "Take a new backup on this timeline first.",
        );
    }
    if record.restore_points.iter().any(|point| point.name == name) {
        errors::invalid_argument(
            format!(
                "backup \"{}\" already has a restore point named \"{name}\"",
                record.backup_id
            ),
            "Use a new name: recovery stops at the first restore point of a name.",
        );
    }
}

/// `pg_create_restore_point`, then a switch to a new WAL segment, both
/// flushed: returns the end of the restore point's record and of the
/// switch. The switch puts a record start right after the restore point
/// in the WAL the backup stores (what recovery to an LSN up to the restore
/// point needs to stop there) and completes the segment, as
/// pg_backup_stop does.
fn create_server_restore_point(name: &str) -> (Lsn, Lsn) {
    super::pg_backup_functions::require_execute(
        "pg_catalog.pg_create_restore_point(text)",
        "create a restore point",
    );
    let args: [DatumWithOid; 1] = [name.into()];
    let lsn =
        crate::read_only_sql::one::<PgLsn>("SELECT pg_catalog.pg_create_restore_point($1)", &args);
    let lsn = match lsn {
        Ok(Some(lsn)) => lsn.0,
        Ok(None) => error!("pg_blockbackup: pg_create_restore_point returned no LSN"),
        Err(e) => error!("pg_blockbackup: pg_create_restore_point failed: {e}"),
    };
    (lsn, switch_after(lsn))
}

/// A switch to a new WAL segment after `lsn`, flushed: returns its end.
fn switch_after(lsn: Lsn) -> Lsn {
    unsafe {
        let end = pg_sys::RequestXLogSwitch(false);
        pg_sys::XLogFlush(end.max(lsn.0));
        Lsn(end.max(lsn.0))
    }
}
