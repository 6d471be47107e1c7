//! The server's own xlogreader, reading local WAL up to what is flushed (on
//! a primary) or replayed (on a standby), and telling us when it has reached
//! that point instead of sleeping inside the callback: the worker then
//! waits on its latch, where it can also hear signals and waiting backends.

use std::ffi::CStr;

use blockbackup_core::Lsn;
use pgrx::pg_sys;
use pgrx::prelude::*;

// The page-read callbacks are handed to C code, so we need the server's own
// symbols, not pgrx's guarded Rust wrappers of them (access/xlogutils.h;
// the same signatures in the 15 and 18 headers).
unsafe extern "C-unwind" {
    fn read_local_xlog_page_no_wait(
        state: *mut pg_sys::XLogReaderState,
        target_page: pg_sys::XLogRecPtr,
        request_length: std::ffi::c_int,
        target_record: pg_sys::XLogRecPtr,
        page: *mut std::ffi::c_char,
    ) -> std::ffi::c_int;
    fn wal_segment_open(
        state: *mut pg_sys::XLogReaderState,
        segment: pg_sys::XLogSegNo,
        tli: *mut pg_sys::TimeLineID,
    );
    fn wal_segment_close(state: *mut pg_sys::XLogReaderState);
}

pub struct WalReader {
    state: *mut pg_sys::XLogReaderState,
    /// Owned here because the reader keeps a pointer to it.
    private: Box<pg_sys::ReadLocalXLogPageNoWaitPrivate>,
}

pub enum NextRecord {
    /// A record was decoded: `start` and `end` (where the next one begins).
    Record { start: Lsn, end: Lsn },
    /// Nothing more is flushed or replayed yet.
    EndOfWal,
}

impl WalReader {
    pub fn new() -> Self {
        let mut private = Box::new(pg_sys::ReadLocalXLogPageNoWaitPrivate { end_of_wal: false });
        let mut routine = pg_sys::XLogReaderRoutine {
            page_read: Some(read_local_xlog_page_no_wait),
            segment_open: Some(wal_segment_open),
            segment_close: Some(wal_segment_close),
        };
        let state = unsafe {
            pg_sys::XLogReaderAllocate(
                pg_sys::wal_segment_size,
                std::ptr::null(),
                &mut routine,
                (&raw mut *private).cast(),
            )
        };
        if state.is_null() {
            error!("pg_blockbackup: out of memory while allocating a WAL reader");
        }
        WalReader { state, private }
    }

    pub fn raw(&self) -> *mut pg_sys::XLogReaderState {
        self.state
    }

    /// Positions the reader at `lsn`, a record start (or the start of the
    /// page where the next record begins).
    pub fn begin_at(&mut self, lsn: Lsn) {
        self.private.end_of_wal = false;
        unsafe { pg_sys::XLogBeginRead(self.state, lsn.0) };
    }

    pub fn next_record(&mut self) -> NextRecord {
        let mut errormsg: *mut std::ffi::c_char = std::ptr::null_mut();
        let record = unsafe { pg_sys::XLogReadRecord(self.state, &mut errormsg) };
        if !record.is_null() {
            let (start, end) = unsafe { ((*self.state).ReadRecPtr, (*self.state).EndRecPtr) };
            return NextRecord::Record {
                start: Lsn(start),
                end: Lsn(end),
            };
        }
        if self.private.end_of_wal {
            return NextRecord::EndOfWal;
        }
        let reason = if errormsg.is_null() {
            "unknown error".to_string()
        } else {
            unsafe { CStr::from_ptr(errormsg) }
                .to_string_lossy()
                .into_owned()
        };
        let at = unsafe { Lsn((*self.state).EndRecPtr) };
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_DATA_CORRUPTED,
            format!("pg_blockbackup: could not read WAL after {at}: {reason}")
        );
    }
}

impl Drop for WalReader {
    fn drop(&mut self) {
        unsafe { pg_sys::XLogReaderFree(self.state) };
    }
}
