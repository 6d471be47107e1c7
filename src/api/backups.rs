//! Backups from SQL: take, list, watch, validate, expire, delete, restore,
//! and the session-bound start/stop for scripts that copy by themselves.

use std::time::Instant;

use blockbackup_core::repository::catalog::Compression;
use blockbackup_core::repository::upkeep;
use blockbackup_core::repository::validate_backup_id;
use pgrx::prelude::*;
use pgrx::JsonB;

use crate::backup::restore::{restore, RestoreRequest};
use crate::backup::take::{take_backup as take, RequestedMode, TakeRequest};
use crate::backup::{repository_access, restore_point, session_backup};
use crate::errors::required;
use crate::sql_types::PgLsn;
use crate::{errors, settings, shared_state};
use blockbackup_core::restore::RecoveryExtras;

/// PostgreSQL counts time from 2000-01-01, the catalog from 1970-01-01.
const POSTGRES_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

pub(super) fn timestamp(unix_us: Option<i64>) -> Option<TimestampWithTimeZone> {
    unix_us.and_then(|us| TimestampWithTimeZone::try_from(us - POSTGRES_EPOCH_OFFSET_US).ok())
}

/// Microseconds since the Unix epoch of a timestamptz.
fn unix_us(time: TimestampWithTimeZone) -> i64 {
    let postgres_us: i64 = time.into();
    postgres_us + POSTGRES_EPOCH_OFFSET_US
}

fn parse_compression(text: &str) -> Compression {
    Compression::parse(text).unwrap_or_else(|e| {
        errors::invalid_argument(
            e.to_string(),
            "Pass compress => 'none', 'gzip', 'zstd' or 'lz4' (or set blockbackup.compression).",
        )
    })
}

/// The level to compress with: the argument, else the setting (-1 for
/// the codec's default), checked against the codec's range.
fn compression_level(compression: Compression, argument: Option<i32>) -> i32 {
    let level = argument.or_else(|| Some(settings::COMPRESS_LEVEL.get()).filter(|&l| l >= 0));
    compression.check_level(level).unwrap_or_else(|e| {
        errors::invalid_argument(
            e.to_string(),
            "Pass a level in the codec's range (compress_level, or blockbackup.compress_level; -1 is the codec's default).",
        )
    })
}

/// Warnings of the repository's upkeep, as the server's WARNINGs.
fn warn_all(warnings: Vec<String>) {
    for message in warnings {
        warning!("pg_blockbackup: {message}");
    }
}

#[pg_extern(volatile)]
fn take_backup(
    mode: default!(Option<String>, "'auto'"),
    label: default!(Option<String>, "NULL"),
    compress: default!(Option<String>, "NULL"),
    parallel: default!(Option<i32>, "NULL"),
    compress_level: default!(Option<i32>, "NULL"),
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
    let mode = required(mode, "mode");
    let mode = match mode.as_str() {
        "auto" => RequestedMode::Auto,
        "full" => RequestedMode::Full,
        "incremental" => RequestedMode::Incremental,
        other => errors::invalid_argument(
            format!("unknown backup mode \"{other}\""),
            "Use 'auto' (incremental when possible), 'full' or 'incremental'.",
        ),
    };
    if let Some(label) = &label {
        session_backup::check_label(label);
    }
    let compression = match compress {
        Some(text) => parse_compression(&text),
        None => settings::COMPRESSION.get().compression(),
    };
    let level = compression_level(compression, compress_level);
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
        level,
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
        name!(mode, Option<String>),
        name!(status, String),
        name!(parent_backup_id, Option<String>),
        name!(label, Option<String>),
        name!(timeline, Option<i32>),
        name!(start_lsn, Option<PgLsn>),
        name!(stop_lsn, Option<PgLsn>),
        name!(start_time, Option<TimestampWithTimeZone>),
        name!(end_time, Option<TimestampWithTimeZone>),
        name!(bytes_read, Option<i64>),
        name!(bytes_written, Option<i64>),
        name!(compression, Option<String>),
        name!(error, Option<String>),
        name!(checksum_failures, Option<i64>),
    ),
> {
    let repo = repository_access::open_for_writing();
    let catalog = repository_access::catalog_marking_interrupted(&repo);
    let mut rows: Vec<_> = catalog
        .records
        .into_iter()
        .map(|r| {
            (
                r.backup_id,
                Some(r.mode.as_str().to_string()),
                r.status.as_str().to_string(),
                r.parent_backup_id,
                r.label,
                Some(r.timeline as i32),
                Some(PgLsn(r.start_lsn)),
                r.stop_lsn.map(PgLsn),
                timestamp(Some(r.start_time_us)),
                timestamp(r.end_time_us),
                Some(r.bytes_read as i64),
                Some(r.bytes_written as i64),
                Some(r.compression.as_str().to_string()),
                r.error,
                Some(r.checksum_failures as i64),
            )
        })
        .collect();
    // Entries whose record cannot be read: shown, never used.
    rows.extend(catalog.damaged.into_iter().map(|entry| {
        (
            entry.backup_id,
            None,
            "CORRUPT".to_string(),
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
            Some(entry.problem),
            None,
        )
    }));
    TableIterator::new(rows)
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
    let lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    let (rows, warnings) = upkeep::validate(&repo, &lock, backup_id.as_deref())
        .unwrap_or_else(|e| errors::repository(e));
    warn_all(warnings);
    let rows: Vec<_> = rows
        .into_iter()
        .map(|row| {
            for problem in &row.report.unchecked {
                warning!(
                    "pg_blockbackup: backup {} could not be fully checked, its status stays {}: {problem}",
                    row.backup_id,
                    row.status.as_str()
                );
            }
            if let Some(why) = &row.not_recorded {
                warning!(
                    "pg_blockbackup: the new status {} of backup {} could not be recorded: {why}",
                    row.status.as_str(),
                    row.backup_id
                );
            }
            if !row.report.source_damage.is_empty() {
                warning!(
                    "pg_blockbackup: backup {} holds pages that failed their checksum when it was taken (listed in errors)",
                    row.backup_id
                );
            }
            let mut messages = row.report.errors;
            messages.extend(row.report.source_damage);
            messages.extend(
                row.report
                    .unchecked
                    .into_iter()
                    .map(|problem| format!("not checked: {problem}")),
            );
            (
                row.backup_id,
                row.status.as_str().to_string(),
                row.report.files_checked as i64,
                row.report.bytes_checked as i64,
                messages,
            )
        })
        .collect();
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
    let lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    let now_us = blockbackup_core::civil_time::unix_now_us();
    let (rows, warnings) = upkeep::expire(
        &repo,
        &lock,
        keep_full.map(|v| v as u32),
        keep_days.map(|v| v as u32),
        now_us,
    )
    .unwrap_or_else(|e| errors::repository(e));
    warn_all(warnings);
    TableIterator::new(rows.into_iter().map(|row| (row.backup_id, row.action)))
}

#[pg_extern(volatile)]
fn delete_backup(backup_id: Option<String>, cascade: default!(Option<bool>, false)) -> i32 {
    let backup_id = required(backup_id, "backup_id");
    let cascade = required(cascade, "cascade");
    validate_backup_id(&backup_id).unwrap_or_else(|e| errors::repository(e));
    let repo = repository_access::open_for_writing();
    let lock = repo.lock().unwrap_or_else(|e| errors::repository(e));
    let (doomed, warnings) =
        upkeep::delete(&repo, &lock, &backup_id, cascade).unwrap_or_else(|e| errors::repository(e));
    warn_all(warnings);
    doomed.len() as i32
}

// The SQL signature is the contract: one argument per recovery setting.
#[allow(clippy::too_many_arguments)]
#[pg_extern(volatile)]
fn restore_backup(
    backup_id: Option<String>,
    target_dir: Option<String>,
    recovery_target_lsn: default!(Option<PgLsn>, "NULL"),
    tablespace_mapping: default!(Option<JsonB>, "NULL"),
    recovery_target_name: default!(Option<String>, "NULL"),
    recovery_target_time: default!(Option<TimestampWithTimeZone>, "NULL"),
    recovery_target_xid: default!(Option<pg_sys::TransactionId>, "NULL"),
    recovery_target: default!(Option<String>, "NULL"),
    recovery_target_timeline: default!(Option<String>, "NULL"),
    recovery_target_inclusive: default!(Option<bool>, "NULL"),
    settings: default!(Option<JsonB>, "NULL"),
) -> TableIterator<
    'static,
    (
        name!(files, i64),
        name!(bytes, i64),
        name!(duration_ms, i64),
    ),
> {
    let began = Instant::now();
    let chosen = backup_id.is_none();
    let time_us = recovery_target_time.map(|time| {
        let us = unix_us(time);
        if us > blockbackup_core::civil_time::unix_now_us() {
            errors::invalid_argument(
                "recovery_target_time is in the future".into(),
                "Recovery can only go to a moment whose WAL has been written and archived.",
            );
        }
        us
    });
    let (restored, stats) = restore(RestoreRequest {
        backup_id,
        target: required(target_dir, "target_dir"),
        recovery_target_lsn: recovery_target_lsn.map(|lsn| lsn.0),
        recovery_target_name,
        recovery: RecoveryExtras {
            time_us,
            xid: recovery_target_xid.map(|xid| xid.into_inner()),
            target: recovery_target,
            inclusive: recovery_target_inclusive,
            timeline: recovery_target_timeline,
            settings: Vec::new(),
        },
        tablespace_mapping: tablespace_mapping.map(|json| json.0),
        settings: settings.map(|json| json.0),
    });
    if chosen {
        notice!("pg_blockbackup: restored backup {restored}, the newest that reaches the recovery target");
    }
    TableIterator::once((
        stats.files as i64,
        stats.bytes as i64,
        began.elapsed().as_millis() as i64,
    ))
}

#[pg_extern(volatile)]
fn backup_start(
    label: Option<String>,
    fast: default!(Option<bool>, true),
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
    let label = required(label, "label");
    let fast = required(fast, "fast");
    session_backup::check_label(&label);
    let started = session_backup::start(&label, fast);
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
    let stopped = session_backup::stop();
    TableIterator::once((
        stopped.backup_id,
        PgLsn(stopped.stop.stop_lsn),
        stopped.stop.labelfile,
        stopped.stop.spcmapfile,
    ))
}

#[pg_extern(volatile)]
fn create_restore_point(
    name: Option<String>,
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
    let name = required(name, "name");
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
    let catalog = repo.list().unwrap_or_else(|e| errors::repository(e));
    let rows: Vec<_> = catalog
        .records
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
