//! The WAL a backup stores, from the segment of its start LSN to the one
//! of its stop LSN, copied while the backup runs rather than all at its
//! end: each segment the server has finished (flushed past its end on a
//! primary, replayed past it on a standby) is copied into the backup as
//! soon as the copy of the data files polls, and the backup's replication
//! slot then lets it go. So the slot never holds more than about one
//! segment plus the one being written, however much WAL the backup's run
//! sees, and `max_slot_wal_keep_size` cannot cut a backup off; the last,
//! unfinished segments are copied after `pg_backup_stop`, and of the one
//! holding the stop LSN only the part up to it (PostgreSQL's own tools
//! store the whole 16 MB; a restore pads it back with zeros).

use std::ops::ControlFlow;

use blockbackup_core::backup::copy::{copy_files, CopyError, CopyOptions, CopyStats, CopyTask};
use blockbackup_core::backup::plan::FileMethod;
use blockbackup_core::repository::catalog::{StoredFile, StoredKind};
use blockbackup_core::{Lsn, TimelineSpan};
use pgrx::pg_sys;

use super::wal_hold::WalHold;
use crate::errors;
use crate::server_paths::data_directory;

/// Room for the switch record after the stop LSN (its header and
/// payload, maxaligned, and a page header should it start a new page).
const SWITCH_RECORD_ROOM: u64 = 64;

pub struct WalCopy {
    timeline: u32,
    segment_size: u64,
    /// The first segment not copied yet.
    next_segment: u64,
    /// Once the backup stopped: the segment holding its stop LSN, which
    /// `finish` copies (in part), not `copy_finished`.
    stop_segment: Option<u64>,
    stored: Vec<StoredFile>,
    stats: CopyStats,
}

impl WalCopy {
    /// For a backup on `timeline` that starts at `start`.
    pub fn new(timeline: u32, start: Lsn) -> Self {
        let segment_size = segment_size();
        WalCopy {
            timeline,
            segment_size,
            next_segment: start.0 / segment_size,
            stop_segment: None,
            stored: Vec::new(),
            stats: CopyStats::default(),
        }
    }

    /// The backup stopped at `stop`: the segment holding it is left for
    /// [`WalCopy::finish`], which stores only the part it needs.
    pub fn stopped_at(&mut self, stop: Lsn) {
        self.stop_segment = Some(stop.0 / self.segment_size);
    }

    /// Copies every segment the server has finished since the last call,
    /// then moves the slot past them.
    pub fn copy_finished(
        &mut self,
        options: &CopyOptions,
        hold: &WalHold,
    ) -> Result<(), CopyError> {
        let finished = finished_position();
        let mut tasks = Vec::new();
        let mut segment = self.next_segment;
        while (segment + 1) * self.segment_size <= finished.0
            && self.stop_segment.is_none_or(|stop| segment < stop)
        {
            tasks.push(segment_task(self.timeline, segment, self.segment_size)?);
            segment += 1;
        }
        if tasks.is_empty() {
            return Ok(());
        }
        self.copy(tasks, options)?;
        self.next_segment = segment;
        hold.release_before(Lsn(segment * self.segment_size));
        Ok(())
    }

    /// Copies the rest, through the segment holding `stop`, and returns
    /// everything stored with its byte counts.
    pub fn finish(
        mut self,
        history: &[TimelineSpan],
        stop: Lsn,
        options: &CopyOptions,
        poll: &mut dyn FnMut() -> ControlFlow<()>,
    ) -> Result<(Vec<StoredFile>, CopyStats), CopyError> {
        check_timeline(history, self.timeline, stop);
        let last = last_segment(self.timeline, stop, self.segment_size);
        let mut tasks = (self.next_segment..=last)
            .map(|segment| segment_task(self.timeline, segment, self.segment_size))
            .collect::<Result<Vec<CopyTask>, CopyError>>()?;
        // Of the segment holding the stop LSN, only the part the backup
        // needs: up to the end of the WAL page after the record that
        // starts at the stop LSN (pg_backup_stop's switch to a new
        // segment), so that recovery to exactly the stop LSN finds it.
        if last == stop.0 / self.segment_size {
            if let Some(task) = tasks.last_mut() {
                let page = u64::from(pg_sys::XLOG_BLCKSZ);
                let needed =
                    (stop.0 % self.segment_size + SWITCH_RECORD_ROOM).next_multiple_of(page);
                task.method = FileMethod::Head(needed.min(self.segment_size));
            }
        }
        let expected = tasks.len();
        let (files, stats) = copy_files(tasks, options, &mut |_| poll())?;
        missing_segment_check(expected, &files)?;
        self.add(files, stats);
        Ok((self.stored, self.stats))
    }

    fn copy(&mut self, tasks: Vec<CopyTask>, options: &CopyOptions) -> Result<(), CopyError> {
        let expected = tasks.len();
        let (files, stats) = copy_files(tasks, options, &mut |_| ControlFlow::Continue(()))?;
        missing_segment_check(expected, &files)?;
        self.add(files, stats);
        Ok(())
    }

    fn add(&mut self, files: Vec<StoredFile>, stats: CopyStats) {
        self.stored.extend(files);
        self.stats.bytes_read += stats.bytes_read;
        self.stats.bytes_written += stats.bytes_written;
    }
}

fn segment_size() -> u64 {
    unsafe { pg_sys::wal_segment_size as u64 }
}

/// How far WAL is complete on disk: flushed on a primary; on a standby,
/// as far as the receiver flushed it or replay got, whichever is further
/// (WAL restored from an archive is replayed without being received).
fn finished_position() -> Lsn {
    unsafe {
        if pg_sys::RecoveryInProgress() {
            let replayed = pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut());
            let received = pg_sys::GetWalRcvFlushRecPtr(std::ptr::null_mut(), std::ptr::null_mut());
            Lsn(replayed.max(received))
        } else {
            Lsn(pg_sys::GetFlushRecPtr(std::ptr::null_mut()))
        }
    }
}

/// The segment that holds the last byte of the WAL up to `stop`: the one
/// of `stop` itself when it exists (on a primary, pg_backup_stop's switch
/// record starts there), else the one before (a stop exactly at a segment
/// boundary, as a standby's can be, needs nothing of the next segment).
fn last_segment(timeline: u32, stop: Lsn, segment_size: u64) -> u64 {
    let of_stop = stop.0 / segment_size;
    if of_stop == 0 || segment_path(timeline, of_stop, segment_size).1.exists() {
        of_stop
    } else {
        (stop.0 - 1) / segment_size
    }
}

/// A copy that stored fewer segments than asked: one vanished from
/// pg_wal, which the slot should have prevented.
fn missing_segment_check(expected: usize, files: &[StoredFile]) -> Result<(), CopyError> {
    if files.len() == expected {
        return Ok(());
    }
    Err(CopyError::Gone {
        path: data_directory().join("pg_wal"),
        why: "a WAL segment the backup needs was removed while it was being copied".into(),
    })
}

fn check_timeline(history: &[TimelineSpan], timeline: u32, stop: Lsn) {
    if let Some(span) = history.iter().find(|s| s.timeline == timeline) {
        if span.end.is_some_and(|end| end <= stop) {
            errors::backup_failed(format!(
                "the server switched timelines during the backup (timeline {timeline} ended)"
            ));
        }
    }
}

/// The name and the pg_wal path of a segment.
fn segment_path(timeline: u32, segment: u64, segment_size: u64) -> (String, std::path::PathBuf) {
    let segments_per_id = 0x1_0000_0000u64 / segment_size;
    let name = format!(
        "{timeline:08X}{:08X}{:08X}",
        segment / segments_per_id,
        segment % segments_per_id
    );
    let path = data_directory().join("pg_wal").join(&name);
    (name, path)
}

fn segment_task(timeline: u32, segment: u64, segment_size: u64) -> Result<CopyTask, CopyError> {
    let (name, source) = segment_path(timeline, segment, segment_size);
    if !source.exists() {
        return Err(CopyError::Gone {
            path: source,
            why: format!("WAL segment {name}, which the backup needs, is missing from pg_wal"),
        });
    }
    Ok(CopyTask {
        source,
        path: format!("pg_wal/{name}"),
        method: FileMethod::Whole,
        kind: StoredKind::Wal,
        mtime: 0,
    })
}

/// The WAL segments from the one holding `start` to the one holding
/// `stop`, all at once (for a restore point, whose WAL follows a backup's).
pub fn wal_tasks(history: &[TimelineSpan], timeline: u32, start: Lsn, stop: Lsn) -> Vec<CopyTask> {
    check_timeline(history, timeline, stop);
    let segment_size = segment_size();
    (start.0 / segment_size..=stop.0 / segment_size)
        .map(|segment| segment_task(timeline, segment, segment_size))
        .collect::<Result<_, _>>()
        .unwrap_or_else(|e| errors::backup_copy(e))
}
