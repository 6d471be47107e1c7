//! Backups from SQL: take, list, watch, validate, expire, delete, restore,
//! and the session-bound start/stop for scripts that copy by themselves.

use std::time::Instant;

use blockbackup_core::catalog::{BackupRecord, BackupStatus, Compression};
use blockbackup_core::repository::{delete_plan, expire_plan, validate_backup_id};
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::backup::restore::{restore_backup as restore, RestoreRequest};
use crate::backup::take::{take_backup as take, RequestedMode, TakeRequest};
use crate::backup::{repository_access, restore_point, session};
use crate::sql_types::PgLsn;
use crate::{errors, settings, shared_state};

/// PostgreSQL counts time from 2000-01-01, the catalog from 1970-01-01.
const POSTGRES_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub(super) fn timestamp(unix_us: Option<i64>) -> Option<TimestampWithTimeZone> {
    unix_us.and_then(|us| TimestampWithTimeZone::try_from(us - POSTGRES_EPOCH_OFFSET_US).ok())
}

fn parse_compression(text: &str) -> Compression {
    match text {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        other => errors::invalid_argument(
            format!("unknown compression \"{other}\""),
            "Use 'none' or 'gzip' (argument compress, or blockbackup.compression).",
        ),
    }
}

#[pg_extern(volatile)]
fn take_backup(
    mode: default!(String, "'auto'"),
    label: default!(Option<String>, "NULL"),
    compress: default!(Option<String>, "NULL"),
    parallel: default!(Option<i32>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(mode, String),
        name!(parent_backup_id, Option<String>),
        name!(start_lsn, PgLsn),
        name!(stop_lsn, Option<PgLsn>),
        name!(files, i64),
        name!(bytes_read, i64),
        name!(bytes_written, i64),
        name!(duration_ms, i64),
    ),
> {
    shared_state::ensure_preloaded();
    let began = Instant::now();
    let mode = match mode.as_str() {
        "auto" => RequestedMode::Auto,
        "full" => RequestedMode::Full,
        "incremental" => RequestedMode::Incremental,
        other => errors::invalid_argument(
            format!("unknown backup mode \"{other}\""),
            "Use 'auto' (incremental when possible), 'full' or 'incremental'.",
        ),
    };
    let compression = match compress {
        Some(text) => parse_compression(&text),
        None => parse_compression(
            &settings::text(&settings::COMPRESSION).unwrap_or_else(|| "none".into()),
        ),
    };
    let threads = parallel.unwrap_or_else(|| settings::PARALLEL.get());
    if !(1..=64).contains(&threads) {
        errors::invalid_argument(
            format!("parallel must be between 1 and 64, got {threads}"),
            "Pass 1 to 64.",
        );
    }
    let record = take(TakeRequest {
        mode,
        label,
        compression,
        threads: threads as usize,
    });
    TableIterator::once((
        record.backup_id,
        record.mode.as_str().to_string(),
        record.parent_backup_id,
        PgLsn(record.start_lsn),
        record.stop_lsn.map(PgLsn),
        record.files as i64,
        record.bytes_read as i64,
        record.bytes_written as i64,
        began.elapsed().as_millis() as i64,
    ))
}

#[pg_extern(volatile)]
fn backups() -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(mode, String),
        name!(status, String),
        name!(parent_backup_id, Option<String>),
        name!(label, Option<String>),
        name!(timeline, i32),
        name!(start_lsn, PgLsn),
        name!(stop_lsn, Option<PgLsn>),
        name!(start_time, Option<TimestampWithTimeZone>),
        name!(end_time, Option<TimestampWithTimeZone>),
        name!(bytes_read, i64),
        name!(bytes_written, i64),
        name!(compression, String),
    ),
> {
    let repo = repository_access::open_for_writing();
    // With the lock free no backup runs: a RUNNING one was cut off.
    if let Ok(_lock) = repo.lock() {
        repository_access::mark_interrupted_backups(&repo);
    }
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    TableIterator::new(records.into_iter().map(|r: BackupRecord| {
        (
            r.backup_id,
            r.mode.as_str().to_string(),
            r.status.as_str().to_string(),
            r.parent_backup_id,
            r.label,
            r.timeline as i32,
            PgLsn(r.start_lsn),
            r.stop_lsn.map(PgLsn),
            timestamp(Some(r.start_time_us)),
            timestamp(r.end_time_us),
            r.bytes_read as i64,
            r.bytes_written as i64,
            r.compression.as_str().to_string(),
        )
    }))
}

#[pg_extern(volatile)]
fn backup_progress() -> TableIterator<
    'static,
    (
        name!(pid, i32),
        name!(backup_id, String),
        name!(phase, String),
        name!(files_total, i64),
        name!(files_done, i64),
        name!(bytes_total, i64),
        name!(bytes_done, i64),
    ),
> {
    let rows = shared_state::backup_progress().rows();
    TableIterator::new(rows.into_iter().map(|row| {
        (
            row.pid,
            row.backup_id,
            row.phase.to_string(),
            row.files_total as i64,
            row.files_done as i64,
            row.bytes_total as i64,
            row.bytes_done as i64,
        )
    }))
}

#[pg_extern(volatile)]
fn validate_backup(
    backup_id: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(status, String),
        name!(files_checked, i64),
        name!(bytes_checked, i64),
        name!(errors, Vec<String>),
    ),
> {
    if let Some(id) = &backup_id {
        validate_backup_id(id).unwrap_or_else(|e| errors::repository(e));
    }
    let repo = repository_access::open_for_writing();
    let _lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    let records: Vec<BackupRecord> = match &backup_id {
        Some(id) => vec![repo
            .read_record(id)
            .unwrap_or_else(|e| errors::repository(e))],
        None => repo.list().unwrap_or_else(|e| errors::repository(e)),
    };
    let mut rows = Vec::new();
    for record in records {
        if record.status == BackupStatus::Running {
            continue;
        }
        let (record, report) = repo
            .validate_and_record(record)
            .unwrap_or_else(|e| errors::repository(e));
        rows.push((
            record.backup_id,
            record.status.as_str().to_string(),
            report.files_checked as i64,
            report.bytes_checked as i64,
            report.errors,
        ));
    }
    TableIterator::new(rows)
}

#[pg_extern(volatile)]
fn expire_backups(
    keep_full: default!(Option<i32>, "NULL"),
    keep_days: default!(Option<i32>, "NULL"),
) -> TableIterator<'static, (name!(backup_id, String), name!(action, String))> {
    for (name, value) in [("keep_full", keep_full), ("keep_days", keep_days)] {
        if value.is_some_and(|v| v < 0) {
            errors::invalid_argument(
                format!("{name} must not be negative"),
                "Pass a count of 0 or more, or NULL.",
            );
        }
    }
    let repo = repository_access::open_for_writing();
    let _lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    repository_access::mark_interrupted_backups(&repo);
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64);
    let plan = expire_plan(
        &records,
        keep_full.map(|v| v as u32),
        keep_days.map(|v| v as u32),
        now_us,
    );
    let mut rows = Vec::new();
    for (id, action) in plan {
        repo.remove_backup(&id)
            .unwrap_or_else(|e| errors::repository(e));
        rows.push((id, action.as_str().to_string()));
    }
    TableIterator::new(rows)
}

#[pg_extern(volatile)]
fn delete_backup(backup_id: String, cascade: default!(bool, false)) -> i32 {
    validate_backup_id(&backup_id).unwrap_or_else(|e| errors::repository(e));
    let repo = repository_access::open_for_writing();
    let _lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    repository_access::mark_interrupted_backups(&repo);
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    let doomed =
        delete_plan(&records, &backup_id, cascade).unwrap_or_else(|e| errors::repository(e));
    for id in &doomed {
        repo.remove_backup(id)
            .unwrap_or_else(|e| errors::repository(e));
    }
    doomed.len() as i32
}

#[pg_extern(volatile)]
fn restore_backup(
    backup_id: String,
    target_dir: String,
    recovery_target_lsn: default!(Option<PgLsn>, "NULL"),
    tablespace_mapping: default!(Option<JsonB>, "NULL"),
    recovery_target_name: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(files, i64),
        name!(bytes, i64),
        name!(duration_ms, i64),
    ),
> {
    let began = Instant::now();
    let stats = restore(RestoreRequest {
        backup_id,
        target: target_dir,
        recovery_target_lsn: recovery_target_lsn.map(|lsn| lsn.0),
        recovery_target_name,
        tablespace_mapping: tablespace_mapping.map(|json| json.0),
    });
    TableIterator::once((
        stats.files as i64,
        stats.bytes as i64,
        began.elapsed().as_millis() as i64,
    ))
}

#[pg_extern(volatile)]
fn backup_start(
    label: String,
    fast: default!(bool, true),
) -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(start_lsn, PgLsn),
        name!(timeline, i32),
        name!(parent_backup_id, Option<String>),
        name!(parent_start_lsn, Option<PgLsn>),
    ),
> {
    let started = session::start(&label, fast);
    TableIterator::once((
        started.backup_id,
        PgLsn(started.start_lsn),
        started.timeline as i32,
        started.parent.as_ref().map(|p| p.backup_id.clone()),
        started.parent.as_ref().map(|p| PgLsn(p.start_lsn)),
    ))
}

#[pg_extern(volatile)]
fn backup_stop() -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(stop_lsn, PgLsn),
        name!(labelfile, String),
        name!(spcmapfile, String),
    ),
> {
    let stopped = session::stop();
    TableIterator::once((
        stopped.backup_id,
        PgLsn(stopped.stop.stop_lsn),
        stopped.stop.labelfile,
        stopped.stop.spcmapfile,
    ))
}

#[pg_extern(volatile)]
fn create_restore_point(
    name: String,
    backup_id: default!(Option<String>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(restore_point_lsn, PgLsn),
        name!(wal_segments, i32),
    ),
> {
    shared_state::ensure_preloaded();
    let created = restore_point::create(&name, backup_id.as_deref());
    TableIterator::once((
        created.backup_id,
        PgLsn(created.lsn),
        created.wal_segments as i32,
    ))
}

#[pg_extern(volatile)]
fn restore_points() -> TableIterator<
    'static,
    (
        name!(backup_id, String),
        name!(name, String),
        name!(lsn, PgLsn),
        name!(created_at, Option<TimestampWithTimeZone>),
    ),
> {
    let repo = repository_access::open_for_writing();
    let records = repo.list().unwrap_or_else(|e| errors::repository(e));
    let rows: Vec<_> = records
        .into_iter()
        .flat_map(|record| {
            let id = record.backup_id;
            record.restore_points.into_iter().map(move |point| {
                (
                    id.clone(),
                    point.name,
                    PgLsn(point.lsn),
                    timestamp(Some(point.time_us)),
                )
            })
        })
        .collect();
    TableIterator::new(rows)
}
