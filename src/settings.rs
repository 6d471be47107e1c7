//! The `blockbackup.*` settings.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};

/// Summarize WAL in the background worker; off stops the worker's reading
/// and releases the WAL it held.
pub static SUMMARIZE_WAL: GucSetting<bool> = GucSetting::<bool>::new(true);

/// Minutes after which a summary file is removed; 0 keeps them forever.
pub static SUMMARY_KEEP_TIME_MIN: GucSetting<i32> = GucSetting::<i32>::new(10 * 24 * 60);

/// Megabytes of block map the worker may hold before it writes a summary early.
pub static SUMMARIZER_MAX_MEMORY_MB: GucSetting<i32> = GucSetting::<i32>::new(64);

pub fn register() {
    GucRegistry::define_bool_guc(
        c"blockbackup.summarize_wal",
        c"Summarizes WAL into changed-block maps in a background worker.",
        c"Off stops summarizing and drops the replication slot that holds WAL for the summarizer; on resumes where the last summary ended, or records a gap if that WAL is gone.",
        &SUMMARIZE_WAL,
        GucContext::Sighup,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"blockbackup.summary_keep_time",
        c"Time after which WAL summaries are removed (0 keeps them forever).",
        c"",
        &SUMMARY_KEEP_TIME_MIN,
        0,
        i32::MAX / 60,
        GucContext::Sighup,
        GucFlags::UNIT_MIN,
    );
    GucRegistry::define_int_guc(
        c"blockbackup.summarizer_max_memory",
        c"Memory the summarizer's block map may use before a summary is written early.",
        c"",
        &SUMMARIZER_MAX_MEMORY_MB,
        1,
        1024 * 1024,
        GucContext::Sighup,
        GucFlags::UNIT_MB,
    );
}
