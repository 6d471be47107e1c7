//! `blockbackup.check()`: one health check for monitoring and for the
//! nightly job, as `pgbackrest check` is: one row per finding, OK, WARNING
//! or ERROR, each saying what it saw. It never raises for what it finds
//! (a repository that cannot be opened is a finding), only for bad
//! arguments.

use std::ffi::CString;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blockbackup_core::civil_time::unix_now_us;
use blockbackup_core::repository::catalog::{BackupMode, BackupRecord, BackupStatus};
use blockbackup_core::repository::Repository;
use blockbackup_core::wal::{WalArchive, WalFileName};
use blockbackup_core::Lsn;
use pgrx::prelude::*;

use crate::backup::repository_access;
use crate::sql_types::PgLsn;
use crate::{errors, read_only_sql, settings, shared_state};

/// Summarizer lag past which a WARNING is given.
const SUMMARIZER_LAG_WARNING: u64 = 1 << 30;

type Finding = (String, String, String);

fn finding(check: &str, status: &str, detail: String) -> Finding {
    (check.to_owned(), status.to_owned(), detail)
}

#[pg_extern(volatile)]
fn check(
    timeout_ms: default!(Option<i32>, 60000),
    max_full_age: default!(Option<Interval>, "'8 days'"),
    max_incremental_age: default!(Option<Interval>, "'2 days'"),
) -> TableIterator<
    'static,
    (
        name!(check, String),
        name!(status, String),
        name!(detail, String),
    ),
> {
    let timeout_ms = errors::required(timeout_ms, "timeout_ms");
    if timeout_ms < 0 {
        errors::invalid_argument(
            "timeout_ms must not be negative".into(),
            "Pass how long to wait for the archiver, in milliseconds.",
        );
    }
    let full_age = age_us(max_full_age, "max_full_age");
    let incremental_age = age_us(max_incremental_age, "max_incremental_age");

    let mut findings = vec![summarizer()];
    let repository = match repository_access::checked_repository_location() {
        Err((message, _)) => {
            findings.push(finding("repository", "ERROR", message));
            None
        }
        Ok(location) => match repository_access::open_existing(&location) {
            Ok(repository) => {
                let space = match location.local() {
                    Some(root) => free_space(root),
                    None => "an object store (space is the store's business)".to_owned(),
                };
                findings.push(finding("repository", "OK", format!("{location}: {space}")));
                Some(repository)
            }
            Err(error) => {
                findings.push(finding("repository", "ERROR", error.to_string()));
                None
            }
        },
    };
    findings.push(archiving(repository.as_ref(), timeout_ms));
    if let Some(repository) = &repository {
        findings.extend(backups(repository, full_age, incremental_age));
    }
    TableIterator::new(findings)
}

fn age_us(age: Option<Interval>, name: &str) -> i64 {
    let age = errors::required(age, name);
    // Months as 30 days, as PostgreSQL's interval comparison counts them.
    let micros = i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
    if micros <= 0 {
        errors::invalid_argument(
            format!("{name} must be positive"),
            "Pass an interval such as '8 days'.",
        );
    }
    micros
}

fn summarizer() -> Finding {
    if !settings::SUMMARIZE_WAL.get() {
        return finding(
            "summarizer",
            "WARNING",
            "blockbackup.summarize_wal is off: incremental backups cannot be taken".into(),
        );
    }
    let shared = shared_state::get();
    let pid = shared.summarizing_pid.load(Ordering::Acquire);
    let summarized = Lsn(shared.summarized_lsn.load(Ordering::Acquire));
    let current = read_only_sql::one::<PgLsn>(
        "SELECT CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() \
         ELSE pg_catalog.pg_current_wal_lsn() END",
        &[],
    )
    .ok()
    .flatten()
    .map_or(summarized, |lsn| lsn.0);
    let lag = current.0.saturating_sub(summarized.0);
    if pid == 0 {
        return finding(
            "summarizer",
            "ERROR",
            format!("the summarizer is not running (summarized up to {summarized}); the server log says why"),
        );
    }
    let status = if lag > SUMMARIZER_LAG_WARNING {
        "WARNING"
    } else {
        "OK"
    };
    finding(
        "summarizer",
        status,
        format!("running (pid {pid}), summarized up to {summarized}, {lag} bytes of WAL behind"),
    )
}

/// Forces a segment switch and waits until the archiver has archived it,
/// and (with the archive module) until it is in the repository.
fn archiving(repository: Option<&Repository>, timeout_ms: i32) -> Finding {
    let mode = settings::server_setting("archive_mode").unwrap_or_default();
    let library = settings::server_setting("archive_library").unwrap_or_default();
    let in_recovery = unsafe { pg_sys::RecoveryInProgress() };
    if mode == "off" {
        return finding(
            "archiving",
            "WARNING",
            "archive_mode is off: backups restore only to their own end or restore points".into(),
        );
    }
    if in_recovery && mode != "always" {
        return finding(
            "archiving",
            "OK",
            "a standby with archive_mode = on: the primary archives".into(),
        );
    }
    let ours = library == "pg_blockbackup";
    if in_recovery {
        // A standby cannot switch segments (nor name them with
        // pg_walfile_name): what its archiver did last.
        return match crate::archive::status::last_failure() {
            Some(why) => finding("archiving", "ERROR", why),
            None => finding(
                "archiving",
                "OK",
                format!(
                    "a standby with archive_mode = always; last archived: {}",
                    last_archived().as_deref().unwrap_or("none")
                ),
            ),
        };
    }
    // A record first, so that the switch always ends a segment: with no WAL
    // since the last switch, pg_switch_wal() switches nothing and returns a
    // position in the segment being written (on 18 past its page header),
    // which would then be waited for in vain.
    let segment = read_only_sql::one::<String>(
        "SELECT pg_catalog.pg_logical_emit_message(false, 'pg_blockbackup', 'check')::text",
        &[],
    )
    .and_then(|_| {
        read_only_sql::one::<String>(
            "SELECT pg_catalog.pg_walfile_name(pg_catalog.pg_switch_wal())",
            &[],
        )
    });
    let segment = match segment {
        Ok(Some(segment)) => segment,
        Ok(None) | Err(_) => {
            return finding(
                "archiving",
                "ERROR",
                "could not switch to a new WAL segment".into(),
            )
        }
    };
    let deadline = Instant::now() + Duration::from_millis(timeout_ms as u64);
    loop {
        let archived = last_archived();
        let in_store = !ours
            || repository.is_some_and(|repository| {
                WalFileName::parse(&segment).is_some_and(|name| {
                    WalArchive::new(repository)
                        .find(&name)
                        .is_ok_and(|f| f.is_some())
                })
            });
        if archived.as_deref().is_some_and(|a| a >= segment.as_str()) && in_store {
            let detail = if ours {
                format!("{segment} was archived into the repository")
            } else {
                format!(
                    "{segment} was archived by archive_command; it is not archived into this repository (archive_library = 'pg_blockbackup' does that)"
                )
            };
            return finding("archiving", if ours { "OK" } else { "WARNING" }, detail);
        }
        if Instant::now() >= deadline {
            let why = crate::archive::status::last_failure()
                .unwrap_or_else(|| "no error was reported".to_owned());
            return finding(
                "archiving",
                "ERROR",
                format!(
                    "{segment} was not archived within {timeout_ms} ms (last archived: {}; {why})",
                    archived.as_deref().unwrap_or("none")
                ),
            );
        }
        pg_sys::check_for_interrupts!();
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_archived() -> Option<String> {
    // A fresh snapshot each time: statistics are cached per transaction.
    let _ = read_only_sql::one::<String>("SELECT pg_catalog.pg_stat_clear_snapshot()::text", &[]);
    read_only_sql::one::<String>(
        "SELECT last_archived_wal FROM pg_catalog.pg_stat_archiver",
        &[],
    )
    .ok()
    .flatten()
}

fn free_space(root: &std::path::Path) -> String {
    let Ok(path) = CString::new(root.as_os_str().as_encoded_bytes()) else {
        return "free space unknown".into();
    };
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to fill.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return "free space unknown".into();
    }
    let free = stat.f_bavail as u64 * stat.f_frsize as u64;
    let total = stat.f_blocks as u64 * stat.f_frsize as u64;
    format!(
        "{} MB free of {} MB",
        free / (1024 * 1024),
        total / (1024 * 1024)
    )
}

fn backups(repository: &Repository, full_age: i64, incremental_age: i64) -> Vec<Finding> {
    let catalog = match repository.list() {
        Ok(catalog) => catalog,
        Err(error) => return vec![finding("backups", "ERROR", error.to_string())],
    };
    let now = unix_now_us();
    let newest = |mode: BackupMode| -> Option<&BackupRecord> {
        catalog
            .records
            .iter()
            .rev()
            .find(|r| r.mode == mode && r.status.is_usable())
    };
    let age_row = |check: &str, record: Option<&BackupRecord>, limit: i64| match record {
        None => finding(check, "WARNING", "none".into()),
        Some(record) => {
            let ended = record.end_time_us.unwrap_or(record.start_time_us);
            let hours = (now - ended) / 3_600_000_000;
            let status = if now - ended > limit { "WARNING" } else { "OK" };
            finding(
                check,
                status,
                format!("{} ended {hours} hours ago", record.backup_id),
            )
        }
    };
    let mut rows = vec![
        age_row("newest full backup", newest(BackupMode::Full), full_age),
        age_row(
            "newest incremental backup",
            newest(BackupMode::Incremental),
            incremental_age,
        ),
    ];
    let bad: Vec<String> = catalog
        .records
        .iter()
        .filter(|r| matches!(r.status, BackupStatus::Corrupt | BackupStatus::Error))
        .map(|r| format!("{} {}", r.backup_id, r.status.as_str()))
        .chain(
            catalog
                .damaged
                .iter()
                .map(|d| format!("{} CORRUPT", d.backup_id)),
        )
        .collect();
    rows.push(if bad.is_empty() {
        finding("failed backups", "OK", "none".into())
    } else {
        finding("failed backups", "WARNING", bad.join(", "))
    });
    rows
}
