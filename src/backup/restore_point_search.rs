//! Finding, in this server's own WAL, a restore point that another
//! program wrote: Citus's `citus_create_restore_point` writes one of the
//! same name on every node, and a cluster backup then attaches it to each
//! node's backup (`restore_point::attach`).
//!
//! The WAL is read with the server's xlogreader from the backup's stop up
//! to what is flushed. Recovery stops at the first record of a name, so
//! exactly one must be there: none or two are errors.

use blockbackup_core::Lsn;
use pgrx::pg_sys;

use crate::summarizer::wal_reader::{NextRecord, WalReader};

/// `xl_restore_point`: an 8-byte timestamp, then the name (NUL-padded).
const NAME_OFFSET: usize = 8;

/// The end of the one restore point record named `name` after `from`.
pub fn find_after(name: &str, from: Lsn) -> Lsn {
    let flushed = flush_all();
    let mut reader = WalReader::new();
    let first = unsafe { pg_sys::XLogFindNextRecord(reader.raw(), from.0) };
    if first == 0 {
        crate::cluster::errors::restore_point_not_found(name, from, flushed);
    }
    reader.begin_at(Lsn(first));
    let mut found: Option<Lsn> = None;
    while let NextRecord::Record { start, end } = reader.next_record() {
        pg_sys::check_for_interrupts!();
        if start >= flushed {
            break;
        }
        if unsafe { is_restore_point_named(reader.raw(), name) } {
            if let Some(earlier) = found {
                crate::cluster::errors::restore_point_twice(name, earlier, end);
            }
            found = Some(end);
        }
    }
    found.unwrap_or_else(|| crate::cluster::errors::restore_point_not_found(name, from, flushed))
}

/// Flushes all WAL inserted so far (`XLogRestorePoint` does not flush, and
/// the reader reads only flushed WAL); returns where it ends.
fn flush_all() -> Lsn {
    unsafe {
        let inserted = pg_sys::GetXLogInsertRecPtr();
        pg_sys::XLogFlush(inserted);
        Lsn(inserted)
    }
}

/// # Safety
/// `reader` must hold a successfully decoded record.
unsafe fn is_restore_point_named(reader: *mut pg_sys::XLogReaderState, name: &str) -> bool {
    let record = unsafe { &*(*reader).record };
    let info = record.header.xl_info & !(pg_sys::XLR_INFO_MASK as u8);
    if record.header.xl_rmid != pg_sys::RmgrIds::RM_XLOG_ID as u8
        || info != pg_sys::XLOG_RESTORE_POINT as u8
        || record.main_data.is_null()
    {
        return false;
    }
    let data = unsafe {
        std::slice::from_raw_parts(record.main_data.cast::<u8>(), record.main_data_len as usize)
    };
    let Some(stored) = data.get(NAME_OFFSET..) else {
        return false;
    };
    let stored = &stored[..stored.iter().position(|&b| b == 0).unwrap_or(stored.len())];
    stored == name.as_bytes()
}
