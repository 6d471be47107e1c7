//! Where the worker starts reading: exactly where the last summary (or
//! recorded gap) ended, if that WAL is still on disk, so a crash costs at
//! most the cycle that was in memory. If that WAL is gone (the slot was
//! dropped or invalidated, or summarization was off for a while), the
//! missing span is recorded as a gap and reading starts at the slot's
//! fresh reservation.

use std::path::Path;

use blockbackup_core::{
    list_gaps, list_summaries, write_file_durably, GapRecord, Lsn, TimelineSpan,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::slot;
use crate::errors;
use crate::timeline;

/// Acquires the slot and returns the LSN to start summarizing at.
pub fn decide(dir: &Path) -> Lsn {
    let reserved = slot::acquire();
    let Some(last_end) = last_covered_end(dir) else {
        return reserved;
    };
    if wal_present(last_end) {
        // Hold the WAL first, then make sure it was not removed meanwhile.
        if reserved > last_end {
            slot::move_restart_lsn(last_end);
        }
        if wal_present(last_end) {
            return last_end;
        }
        slot::move_restart_lsn(reserved);
    }
    record_gap(dir, last_end, reserved);
    reserved
}

fn last_covered_end(dir: &Path) -> Option<Lsn> {
    let summaries = list_summaries(dir).unwrap_or_else(|e| errors::summary_access(e));
    let gaps = list_gaps(dir).unwrap_or_else(|e| errors::summary_access(e));
    let summary_ends = summaries.iter().map(|s| s.name.end_lsn);
    summary_ends.chain(gaps.iter().map(|g| g.end_lsn)).max()
}

fn record_gap(dir: &Path, from: Lsn, to: Lsn) {
    if to <= from {
        return;
    }
    let gap = GapRecord {
        timeline: timeline_of(from, &timeline::history_of(timeline::current_timeline())),
        start_lsn: from,
        end_lsn: to,
        reason: format!(
            "WAL from {from} to {to} was removed before it was summarized (summarization was off, or the replication slot pg_blockbackup was dropped or invalidated)"
        ),
    };
    warning!("pg_blockbackup: {}", gap.reason);
    write_gap(dir, &gap);
}

pub fn write_gap(dir: &Path, gap: &GapRecord) {
    write_file_durably(dir, &gap.file_name(), gap.file_contents().as_bytes())
        .unwrap_or_else(|e| errors::summary_access(e));
}

pub fn timeline_of(lsn: Lsn, history: &[TimelineSpan]) -> u32 {
    history
        .iter()
        .find(|span| span.begin <= lsn && span.end.is_none_or(|end| lsn < end))
        .or(history.last())
        .map_or(1, |span| span.timeline)
}

/// Whether the WAL segment holding `lsn` still exists in pg_wal.
fn wal_present(lsn: Lsn) -> bool {
    let segment_size = unsafe { pg_sys::wal_segment_size } as u64;
    let segno = lsn.0 / segment_size;
    if unsafe { pg_sys::XLogGetLastRemovedSegno() } >= segno {
        return false;
    }
    let segments_per_id = 0x1_0000_0000u64 / segment_size;
    let suffix = format!(
        "{:08X}{:08X}",
        segno / segments_per_id,
        segno % segments_per_id
    );
    let Ok(entries) = std::fs::read_dir("pg_wal") else {
        return false;
    };
    entries.flatten().any(|entry| {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        name.len() == 24 && name.ends_with(&suffix)
    })
}
