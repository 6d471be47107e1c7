//! Keeps the WAL a backup needs (from its start to its stop) from being
//! removed while the backup runs: a temporary replication slot of this
//! backend, holding WAL from the backup's start LSN, reserved right after
//! `pg_backup_start` (see `replication_slot::create_holding_wal_from`).
//! PostgreSQL drops it if the backend errors out or exits; we drop it when
//! the backup ends.
//!
//! With `max_slot_wal_keep_size` set, a checkpoint invalidates a slot
//! that holds more WAL than that and terminates the process holding it:
//! a backup during which more WAL was written would end in a FATAL of its
//! session. [`WalHold::at_risk`], asked while the backup copies, lets it
//! end first with an error that says why.

use crate::errors;
use crate::replication_slot::{self, held_wal, max_slot_wal_keep_segments};

pub struct WalHold {
    name: std::ffi::CString,
}

impl WalHold {
    /// Holds the WAL from `start`, the LSN pg_backup_start returned.
    pub fn reserve(start: blockbackup_core::Lsn) -> Self {
        let pid = unsafe { pgrx::pg_sys::MyProcPid };
        let name = std::ffi::CString::new(format!("pg_blockbackup_backup_{pid}"))
            .unwrap_or_else(|_| unreachable!("a slot name from digits has no NUL"));
        if !replication_slot::create_holding_wal_from(&name, start) {
            errors::backup_failed(format!(
                "the WAL from the backup's start {start} was removed before the backup could hold it (a checkpoint ran at that moment); take the backup again"
            ));
        }
        WalHold { name }
    }

    /// The bytes of WAL the slot holds when the next checkpoint would
    /// invalidate it for `max_slot_wal_keep_size` (or it was invalidated
    /// already): the backup must stop before the server terminates it.
    /// With the WAL copied as the backup runs ([`super::wal_copy`]), this
    /// happens only when the copy falls that far behind.
    pub fn at_risk(&self) -> Option<u64> {
        let held = held_wal()?;
        let keep = max_slot_wal_keep_segments()?;
        // One segment short of what PostgreSQL allows: the copy polls
        // often, a checkpoint can finish any time.
        (held.invalidated || held.segments_behind > keep.saturating_sub(1)).then_some(held.bytes)
    }

    /// Lets the server remove the WAL before `lsn`, which the backup has
    /// stored.
    pub fn release_before(&self, lsn: blockbackup_core::Lsn) {
        replication_slot::advance_held(lsn);
    }
}

impl Drop for WalHold {
    fn drop(&mut self) {
        // While an error unwinds, PostgreSQL's own error cleanup releases
        // and drops this backend's temporary slot; calling into it here,
        // with the error still pending, would not be safe.
        if !std::thread::panicking() {
            replication_slot::release_and_drop(&self.name);
        }
    }
}
