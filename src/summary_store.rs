//! The summaries of this data directory, read for a query: which files
//! cover an LSN range on the server's timeline history, merged in order.

use std::path::PathBuf;

use blockbackup_core::{
    list_gaps, list_summaries, plan_range, read_summary, BlockMap, Lsn, SummaryEntry,
};
use pgrx::pg_sys;

use crate::{errors, timeline};

pub fn summaries_dir() -> PathBuf {
    let data_dir = unsafe { std::ffi::CStr::from_ptr(pg_sys::DataDir) };
    PathBuf::from(data_dir.to_string_lossy().into_owned())
        .join("pg_blockbackup")
        .join("summaries")
}

pub fn list() -> Vec<SummaryEntry> {
    list_summaries(&summaries_dir()).unwrap_or_else(|e| errors::summary_store(e))
}

/// The changes of [start, end): exact when both ends are summary
/// boundaries, otherwise those of the whole summaries overlapping it.
/// Errors (SQLSTATE 55000) when any part of the range is not summarized.
pub fn changes_between(start: Lsn, end: Lsn) -> BlockMap {
    let dir = summaries_dir();
    let entries = list();
    let gaps = list_gaps(&dir).unwrap_or_else(|e| errors::summary_store(e));
    let history = timeline::history_of(timeline::current_timeline());
    let names: Vec<_> = entries.iter().map(|e| e.name).collect();
    let plan =
        plan_range(&names, &gaps, &history, start, end).unwrap_or_else(|e| errors::coverage(e));
    let mut merged = BlockMap::new();
    for name in &plan.summaries {
        let (_, map) =
            read_summary(&dir.join(name.file_name())).unwrap_or_else(|e| errors::summary_store(e));
        merged.merge_later(&map);
    }
    merged
}
