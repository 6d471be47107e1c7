//! The WAL archive from SQL: how archiving goes, and what the repository
//! holds.

use blockbackup_core::repository::RepositoryError;
use blockbackup_core::wal::{ranges, ArchivedFile, WalArchive};
use pgrx::prelude::*;

use crate::archive::status;
use crate::backup::repository_access;
use crate::errors;
use crate::sql_types::PgLsn;

/// The archive of the configured repository: None while the setting is
/// unset or no repository exists there yet.
fn archived_files() -> Option<(Vec<ArchivedFile>, Option<u64>)> {
    let location = repository_access::checked_repository_location().ok()?;
    let repository = match repository_access::open_existing(&location) {
        Ok(repository) => repository,
        Err(RepositoryError::NotARepository { .. }) => return None,
        Err(error) => errors::repository(error),
    };
    let archive = WalArchive::new(&repository);
    let files = archive.list().unwrap_or_else(|e| errors::archive(e));
    let segment_size = archive
        .segment_size()
        .unwrap_or_else(|e| errors::archive(e));
    Some((files, segment_size))
}

#[pg_extern(volatile)]
fn archive_status() -> TableIterator<
    'static,
    (
        name!(archived_count, i64),
        name!(last_archived_wal, Option<String>),
        name!(last_archived_time, Option<TimestampWithTimeZone>),
        name!(last_failed_wal, Option<String>),
        name!(last_failed_time, Option<TimestampWithTimeZone>),
        name!(last_error, Option<String>),
        name!(oldest_wal, Option<String>),
        name!(newest_wal, Option<String>),
        name!(stored_bytes, i64),
    ),
> {
    // PostgreSQL's own counters, then why the last attempt failed (while
    // it is failing), then what the repository holds.
    let (count, last_wal, last_time, failed_wal, failed_time) = Spi::connect(|client| {
        let row = client
            .select(
                "SELECT archived_count, last_archived_wal, last_archived_time, \
                 last_failed_wal, last_failed_time FROM pg_catalog.pg_stat_archiver",
                Some(1),
                &[],
            )?
            .first();
        Ok::<_, pgrx::spi::SpiError>((
            row.get::<i64>(1)?.unwrap_or(0),
            row.get::<String>(2)?,
            row.get::<TimestampWithTimeZone>(3)?,
            row.get::<String>(4)?,
            row.get::<TimestampWithTimeZone>(5)?,
        ))
    })
    .unwrap_or_else(|e| error!("pg_blockbackup: could not read pg_stat_archiver: {e}"));
    let last_error = status::last_failure();
    let (oldest, newest, stored) = match archived_files() {
        Some((files, _)) => {
            let segments: Vec<&ArchivedFile> =
                files.iter().filter(|f| f.name.is_segment()).collect();
            (
                segments.first().map(|f| f.name.to_string()),
                segments.last().map(|f| f.name.to_string()),
                files.iter().map(|f| f.stored_bytes as i64).sum(),
            )
        }
        None => (None, None, 0),
    };
    TableIterator::once((
        count,
        last_wal,
        last_time,
        failed_wal,
        failed_time,
        last_error,
        oldest,
        newest,
        stored,
    ))
}

#[pg_extern(volatile)]
fn archived_wal() -> TableIterator<
    'static,
    (
        name!(timeline, i64),
        name!(start_wal, String),
        name!(end_wal, String),
        name!(start_lsn, PgLsn),
        name!(end_lsn, PgLsn),
        name!(segments, i64),
        name!(stored_bytes, i64),
    ),
> {
    let rows = match archived_files() {
        Some((files, Some(segment_size))) => ranges(&files, segment_size)
            .into_iter()
            .map(|range| {
                (
                    i64::from(range.timeline),
                    range.start.to_string(),
                    range.end.to_string(),
                    PgLsn(range.start_lsn),
                    PgLsn(range.end_lsn),
                    range.segments as i64,
                    range.stored_bytes as i64,
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    TableIterator::new(rows)
}
