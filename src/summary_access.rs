//! The summaries of this data directory, read for a query: which files
//! cover an LSN range on the server's timeline history, merged in order.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use blockbackup_core::{
    list_gaps, list_summaries, plan_range, read_summary, BlockMap, CoverageError, Lsn,
    SummaryDirError, SummaryEntry,
};
use pgrx::pg_sys;

use crate::{errors, server_paths, shared_state, timeline};

/// Why the changes of a range cannot be had.
pub enum ChangesError {
    Coverage(CoverageError),
    Store(SummaryDirError),
}

impl std::fmt::Display for ChangesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangesError::Coverage(e) => e.fmt(f),
            ChangesError::Store(e) => e.fmt(f),
        }
    }
}

pub fn summaries_dir() -> PathBuf {
    server_paths::data_directory()
        .join("pg_blockbackup")
        .join("summaries")
}

pub fn list() -> Vec<SummaryEntry> {
    list_summaries(&summaries_dir()).unwrap_or_else(|e| errors::summary_access(e))
}

/// The changes of [start, end): exact when both ends are summary
/// boundaries, otherwise those of the whole summaries overlapping it.
/// Errors (SQLSTATE 55000) when any part of the range is not summarized.
pub fn changes_between(start: Lsn, end: Lsn) -> BlockMap {
    try_changes_between(start, end).unwrap_or_else(|e| match e {
        ChangesError::Coverage(e) => errors::coverage(e),
        ChangesError::Store(e) => errors::summary_access(e),
    })
}

pub fn try_changes_between(start: Lsn, end: Lsn) -> Result<BlockMap, ChangesError> {
    let dir = summaries_dir();
    let entries = list_summaries(&dir).map_err(ChangesError::Store)?;
    let gaps = list_gaps(&dir).map_err(ChangesError::Store)?;
    let history = timeline::history_of(timeline::current_timeline());
    let names: Vec<_> = entries.iter().map(|e| e.name).collect();
    let plan = plan_range(&names, &gaps, &history, start, end).map_err(ChangesError::Coverage)?;
    let mut merged = BlockMap::new();
    for name in &plan.summaries {
        let (_, map) = read_summary(&dir.join(name.file_name())).map_err(ChangesError::Store)?;
        merged.merge_later(&map);
    }
    Ok(merged)
}

/// Waits until the worker has written summaries up to `lsn`, asking it to
/// write one at once. Returns how far summaries reach: Err when the
/// timeout passed first.
pub fn wait_until_summarized(lsn: Lsn, timeout: Duration) -> Result<Lsn, Lsn> {
    wait_until_summarized_while(lsn, timeout, &mut || {})
}

/// [`wait_until_summarized`], calling `tick` at every wake-up (at least
/// every 100 ms): a backup watches the WAL it holds meanwhile.
pub fn wait_until_summarized_while(
    lsn: Lsn,
    timeout: Duration,
    tick: &mut dyn FnMut(),
) -> Result<Lsn, Lsn> {
    let shared = shared_state::get();
    let deadline = Instant::now() + timeout;
    let outcome = loop {
        let summarized = Lsn(shared.summarized_lsn.load(Ordering::Acquire));
        if summarized >= lsn {
            break Ok(summarized);
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            break Err(summarized);
        }
        shared.request_flush_up_to(lsn.0);
        shared.wake_worker();
        shared.sleep_for_summary(remaining.min(Duration::from_millis(100)).as_millis() as i64);
        pg_sys::check_for_interrupts!();
        tick();
    };
    shared.stop_sleeping();
    outcome
}
