//! One summarizing session of the worker: from its start point until
//! summarization is turned off.

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use blockbackup_core::{
    encode_summary, remove_expired, write_file_durably, BlockMap, GapRecord, Lsn, SummaryHeader,
    SummaryName,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use super::record_summary::{ends_summary_before, summarize_record, Boundary};
use super::wal_reader::{NextRecord, WalReader};
use super::{handle_interrupts, slot, start_point, wait_for_event};
use crate::shared_state::{self, SummarizerShared};
use crate::summary_access::summaries_dir;
use crate::{errors, replication_slot, settings, timeline};

/// Idle naps grow from the first to the last while no WAL arrives; a
/// backend waiting for a summary sets our latch, so naps only bound how
/// late a summary appears for nobody in particular.
const FIRST_NAP: Duration = Duration::from_millis(10);
const LONGEST_NAP: Duration = Duration::from_millis(1000);
const EXPIRY_INTERVAL: Duration = Duration::from_secs(60);
/// Interrupts and settings are looked at after this many records.
const RECORDS_PER_INTERRUPT_CHECK: u32 = 4096;

pub struct Summarizer {
    shared: &'static SummarizerShared,
    dir: PathBuf,
    reader: WalReader,
    map: BlockMap,
    /// Timeline and start of the summary being built.
    timeline: u32,
    start: Lsn,
    /// End of the last record folded into `map`.
    read_to: Lsn,
    /// Where `timeline` ends in the server's history, and what follows it.
    timeline_end: Option<(Lsn, u32)>,
    /// The server timeline `timeline_end` was computed for.
    server_timeline: u32,
    /// The timeline whose WAL file the reader read the last record from.
    page_timeline: u32,
    /// Set while wal_level is below replica: that WAL becomes a gap.
    minimal_since: Option<Lsn>,
    last_expiry: Instant,
}

impl Summarizer {
    pub fn start() -> Self {
        let dir = summaries_dir();
        let start = start_point::decide(&dir);
        let shared = shared_state::get();
        let mut reader = WalReader::new();
        reader.begin_at(start);
        let mut summarizer = Summarizer {
            shared,
            dir,
            reader,
            map: BlockMap::new(),
            timeline: 0,
            start,
            read_to: start,
            timeline_end: None,
            server_timeline: 0,
            page_timeline: 0,
            minimal_since: None,
            last_expiry: Instant::now() - EXPIRY_INTERVAL,
        };
        summarizer.refresh_timeline();
        shared
            .summarized_tli
            .store(summarizer.timeline, Ordering::Release);
        shared.summarized_lsn.store(start.0, Ordering::Release);
        shared.pending_lsn.store(start.0, Ordering::Release);
        shared
            .summarizing_pid
            .store(unsafe { pg_sys::MyProcPid }, Ordering::Release);
        log!(
            "pg_blockbackup: summarizing WAL from {start} on timeline {}, holding replication slot \"pg_blockbackup\" (before restarting with wal_level = minimal, set blockbackup.summarize_wal = off and reload: the server refuses to start with a physical slot and wal_level below replica)",
            summarizer.timeline
        );
        summarizer
    }

    /// Summarizes until `blockbackup.summarize_wal` is turned off; then
    /// writes what it has read and lets the WAL go.
    pub fn run(mut self) {
        let mut nap = FIRST_NAP;
        let mut records_since_check = 0u32;
        loop {
            match self.reader.next_record() {
                NextRecord::Record { start, end } => {
                    nap = FIRST_NAP;
                    self.fold_record(start, end);
                    records_since_check += 1;
                    if records_since_check < RECORDS_PER_INTERRUPT_CHECK {
                        continue;
                    }
                    records_since_check = 0;
                }
                NextRecord::EndOfWal => {
                    self.write_summary_if_awaited(self.read_to);
                    self.refresh_timeline();
                    self.expire_old_summaries();
                    wait_for_event(nap);
                    nap = (nap * 2).min(LONGEST_NAP);
                    self.reader.begin_at(self.read_to);
                }
            }
            handle_interrupts();
            if !settings::SUMMARIZE_WAL.get() {
                self.write_summary(self.read_to);
                slot::drop_held();
                self.shared.summarizing_pid.store(0, Ordering::Release);
                log!(
                    "pg_blockbackup: WAL summarization stopped at {}",
                    self.read_to
                );
                return;
            }
        }
    }

    fn fold_record(&mut self, start: Lsn, end: Lsn) {
        // WAL of a new timeline exists only after the server switched to it,
        // so a page read from another timeline's file is the moment to look.
        let page_timeline = unsafe { (*self.reader.raw()).currTLI };
        if page_timeline != self.page_timeline {
            self.page_timeline = page_timeline;
            self.refresh_timeline();
        }
        if let Some((switch_lsn, next_timeline)) = self.timeline_end {
            if start >= switch_lsn {
                self.write_summary(switch_lsn);
                self.timeline = next_timeline;
                self.timeline_end = self.end_of(next_timeline);
            }
        }
        if unsafe { ends_summary_before(self.reader.raw()) } {
            self.write_summary(start);
        }
        let boundary = unsafe { summarize_record(self.reader.raw(), &mut self.map) };
        self.read_to = end;
        self.shared.pending_lsn.store(end.0, Ordering::Release);
        match boundary {
            Boundary::EndSummaryAfter => self.write_summary(end),
            Boundary::WalLevelMinimal if self.minimal_since.is_none() => {
                self.write_summary(end);
                self.minimal_since = Some(self.start);
            }
            Boundary::WalLevelReplica => {
                if let Some(since) = self.minimal_since.take() {
                    self.record_minimal_gap(since, end);
                }
            }
            _ => {}
        }
        if self.map.approx_memory_bytes() >= self.memory_cap() {
            self.write_summary(end);
        }
        if self.holds_too_much_wal(end) {
            self.write_summary(end);
        }
        self.write_summary_if_awaited(end);
    }

    /// Whether the slot, which holds WAL from the summary's start, holds
    /// half of `max_slot_wal_keep_size` (at least a segment) by `end`:
    /// ending the summary there lets the slot move on, so that a checkpoint
    /// never invalidates it just because no checkpoint came for a while.
    fn holds_too_much_wal(&self, end: Lsn) -> bool {
        let Some(keep) = replication_slot::max_slot_wal_keep_segments() else {
            return false;
        };
        let segment = unsafe { pg_sys::wal_segment_size } as u64;
        (end.0 / segment).saturating_sub(self.start.0 / segment) >= (keep / 2).max(1)
    }

    fn memory_cap(&self) -> usize {
        settings::SUMMARIZER_MAX_MEMORY_MB.get().max(1) as usize * 1024 * 1024
    }

    /// Writes a summary when a waiting backend needs the WAL up to `end`.
    /// It ends where the next record will start (see `next_record_start`),
    /// the LSN such a backend asks for.
    fn write_summary_if_awaited(&mut self, end: Lsn) {
        let requested = Lsn(self.shared.flush_request_lsn.load(Ordering::Acquire));
        let end = next_record_start(end);
        if requested > self.start && requested <= end {
            self.write_summary(end);
        }
    }

    /// Makes everything read since `self.start` a durable summary ending at
    /// `end`, then lets the slot release the WAL before it.
    fn write_summary(&mut self, end: Lsn) {
        if end <= self.start {
            return;
        }
        if self.minimal_since.is_some() {
            // Not a summary: the span is recorded as a gap when it closes.
            self.map = BlockMap::new();
            return;
        }
        let header = SummaryHeader {
            timeline: self.timeline,
            start_lsn: self.start,
            end_lsn: end,
        };
        let name = SummaryName::from(header);
        let bytes = encode_summary(&header, &self.map);
        write_file_durably(&self.dir, &name.file_name(), &bytes)
            .unwrap_or_else(|e| errors::summary_access(e));
        self.begin_next(end);
    }

    fn record_minimal_gap(&mut self, since: Lsn, end: Lsn) {
        let gap = GapRecord {
            timeline: self.timeline,
            start_lsn: since,
            end_lsn: end,
            reason: format!(
                "wal_level was below replica from {since} to {end}: pages could change without WAL"
            ),
        };
        start_point::write_gap(&self.dir, &gap);
        self.begin_next(end);
    }

    fn begin_next(&mut self, start: Lsn) {
        self.map = BlockMap::new();
        self.start = start;
        self.shared.publish_summary(self.timeline, start.0);
        slot::move_restart_lsn(start);
        self.expire_old_summaries();
    }

    /// Follows the server to a new timeline (promotion, or a standby that
    /// follows a promoted upstream): the summary's timeline ends at the
    /// switch point found in the new history.
    fn refresh_timeline(&mut self) {
        let server_timeline = timeline::current_timeline();
        if server_timeline == self.server_timeline {
            return;
        }
        self.server_timeline = server_timeline;
        let history = timeline::history_of(server_timeline);
        if self.timeline == 0 {
            self.timeline = start_point::timeline_of(self.start, &history);
        }
        self.timeline_end = self.end_of(self.timeline);
    }

    fn end_of(&self, timeline: u32) -> Option<(Lsn, u32)> {
        let history = timeline::history_of(self.server_timeline);
        let position = history.iter().position(|span| span.timeline == timeline)?;
        let end = history[position].end?;
        Some((end, history.get(position + 1)?.timeline))
    }

    fn expire_old_summaries(&mut self) {
        let keep_minutes = settings::SUMMARY_KEEP_TIME_MIN.get();
        if keep_minutes <= 0 || self.last_expiry.elapsed() < EXPIRY_INTERVAL {
            return;
        }
        self.last_expiry = Instant::now();
        let keep = Duration::from_secs(keep_minutes as u64 * 60);
        match remove_expired(&self.dir, keep, SystemTime::now()) {
            Ok(removed) if !removed.is_empty() => {
                log!(
                    "pg_blockbackup: removed {} WAL summaries older than {keep_minutes} min",
                    removed.len()
                )
            }
            Ok(_) => {}
            Err(e) => warning!("pg_blockbackup: could not remove old WAL summaries: {e}"),
        }
    }
}

/// A record that ends exactly at a page boundary is followed by the next
/// page's header: the next record starts after it, which is also what
/// `pg_current_wal_lsn()` reports. Summaries written for a waiting backend
/// end there so that it sees that LSN covered. Other summaries end exactly
/// at a record's end, so that a timeline's last one ends at its switch
/// point, where the history says the next timeline begins.
fn next_record_start(end: Lsn) -> Lsn {
    let page = pg_sys::XLOG_BLCKSZ as u64;
    if !end.0.is_multiple_of(page) {
        return end;
    }
    let segment = unsafe { pg_sys::wal_segment_size } as u64;
    let header = if end.0.is_multiple_of(segment) {
        std::mem::size_of::<pg_sys::XLogLongPageHeaderData>()
    } else {
        std::mem::size_of::<pg_sys::XLogPageHeaderData>()
    };
    Lsn(end.0 + header.next_multiple_of(8) as u64)
}
