//! The server's timeline history, as the pure crate's `TimelineSpan`s.

use blockbackup_core::{Lsn, TimelineSpan};
use pgrx::pg_sys;

/// `TimeLineHistoryEntry` of access/timeline.h, which pgrx does not bind
/// (the same layout in the 15 and 18 headers, as is readTimeLineHistory).
#[repr(C)]
struct TimeLineHistoryEntry {
    tli: pg_sys::TimeLineID,
    begin: pg_sys::XLogRecPtr,
    end: pg_sys::XLogRecPtr,
}

unsafe extern "C-unwind" {
    fn readTimeLineHistory(target_tli: pg_sys::TimeLineID) -> *mut pg_sys::List;
}

/// The timeline this server writes (primary) or replays (standby) now.
pub fn current_timeline() -> u32 {
    unsafe {
        if pg_sys::RecoveryInProgress() {
            let mut tli: pg_sys::TimeLineID = 0;
            pg_sys::GetXLogReplayRecPtr(&mut tli);
            tli
        } else {
            pg_sys::GetWALInsertionTimeLine()
        }
    }
}

/// The history of `tli`, oldest timeline first; the last span is open-ended.
pub fn history_of(tli: u32) -> Vec<TimelineSpan> {
    unsafe {
        let list = pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| readTimeLineHistory(tli));
        let mut spans = Vec::new();
        if !list.is_null() {
            let cells = std::slice::from_raw_parts((*list).elements, (*list).length as usize);
            for cell in cells {
                let entry = &*cell.ptr_value.cast::<TimeLineHistoryEntry>();
                spans.push(TimelineSpan {
                    timeline: entry.tli,
                    begin: Lsn(entry.begin),
                    end: (entry.end != 0).then_some(Lsn(entry.end)),
                });
            }
            pg_sys::list_free_deep(list);
        }
        // readTimeLineHistory lists the newest timeline first.
        spans.reverse();
        spans
    }
}
