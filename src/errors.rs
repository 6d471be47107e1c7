//! Where the typed errors of the pure crate become `ereport`s with SQLSTATEs.

use blockbackup_core::{CoverageError, SummaryDirError};
use pgrx::pg_sys::panic::ErrorReport;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

fn raise(code: PgSqlErrorCode, message: String, detail: Option<String>, hint: Option<&str>) -> ! {
    let mut report = ErrorReport::new(code, message, "pg_blockbackup");
    if let Some(detail) = detail {
        report = report.set_detail(detail);
    }
    if let Some(hint) = hint {
        report = report.set_hint(hint);
    }
    report.report(PgLogLevel::ERROR);
    unreachable!("ERROR does not return")
}

pub fn not_preloaded() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "pg_blockbackup is not loaded by shared_preload_libraries".into(),
        None,
        Some("Add pg_blockbackup to shared_preload_libraries in postgresql.conf and restart the server."),
    )
}

pub fn summarization_disabled() -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "WAL summarization is disabled".into(),
        None,
        Some("Set blockbackup.summarize_wal = on and reload the configuration."),
    )
}

pub fn invalid_argument(message: String, hint: &str) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        message,
        None,
        Some(hint),
    )
}

pub fn wait_timed_out(requested: String, summarized: String, timeout_ms: i32) -> ! {
    raise(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        format!("WAL summarization did not reach {requested} within {timeout_ms} ms"),
        Some(format!("WAL is summarized up to {summarized}.")),
        Some("Check blockbackup.summarizer_status() and the server log; on an idle server, WAL that is not yet flushed is summarized once it is."),
    )
}

pub fn coverage(error: CoverageError) -> ! {
    let (code, hint) = match &error {
        CoverageError::InvalidRange { .. } => (
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "Pass the older LSN first.",
        ),
        CoverageError::NotYetSummarized { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Call blockbackup.wait_for_summary(end_lsn) first, or choose an end LSN that blockbackup.summaries() covers.",
        ),
        CoverageError::BeforeOldestSummary { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Choose a start LSN that blockbackup.summaries() covers; older changes are only known from a full backup.",
        ),
        CoverageError::Gap { .. } | CoverageError::HistoryDoesNotCover { .. } => (
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
            "Changes inside a gap cannot be known: take a full backup, and keep blockbackup.summarize_wal on so that the summarizer's replication slot holds WAL.",
        ),
    };
    raise(
        code,
        format!("changed blocks cannot be computed: {error}"),
        None,
        Some(hint),
    )
}

pub fn summary_store(error: SummaryDirError) -> ! {
    let code = match &error {
        SummaryDirError::Io { .. } => PgSqlErrorCode::ERRCODE_IO_ERROR,
        _ => PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
    };
    raise(
        code,
        format!("could not read WAL summaries: {error}"),
        None,
        Some("A damaged summary file cannot be trusted: remove it (and every later one on its timeline) only together with taking a new full backup, or restore it from a copy."),
    )
}
