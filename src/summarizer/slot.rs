//! The physical replication slot `pg_blockbackup`, which keeps the server
//! from removing WAL the summarizer has not read yet (PostgreSQL before 17
//! has nothing else that would). The worker holds it acquired for as long
//! as it summarizes, so no one can drop it under us, and moves its
//! restart_lsn to the end of each summary it has made durable.

use blockbackup_core::Lsn;
use pgrx::pg_sys;

use crate::replication_slot::{self, acquire_existing, is_invalidated, restart_lsn, RS_PERSISTENT};

pub const SLOT_NAME: &std::ffi::CStr = c"pg_blockbackup";

/// Acquires the slot, creating it (reserving WAL from the current redo
/// point, or replay point on a standby) if it is missing or was
/// invalidated. Returns its restart_lsn.
pub fn acquire() -> Lsn {
    unsafe {
        if pg_sys::SearchNamedReplicationSlot(SLOT_NAME.as_ptr(), true).is_null() {
            replication_slot::create_reserving_wal(SLOT_NAME, RS_PERSISTENT);
        } else {
            acquire_existing(SLOT_NAME);
            if is_invalidated(&*pg_sys::MyReplicationSlot) {
                pgrx::warning!(
                    "pg_blockbackup: replication slot \"pg_blockbackup\" was invalidated; WAL it held may be gone, creating it anew"
                );
                replication_slot::release_and_drop(SLOT_NAME);
                replication_slot::create_reserving_wal(SLOT_NAME, RS_PERSISTENT);
            }
        }
        restart_lsn(pg_sys::MyReplicationSlot)
    }
}

/// Lets the server remove WAL before `lsn`, which is summarized.
pub fn move_restart_lsn(lsn: Lsn) {
    replication_slot::set_held_restart_lsn(lsn);
}

/// Releases and drops the slot, so that the server no longer keeps WAL for
/// a summarizer that was turned off.
pub fn drop_held() {
    replication_slot::release_and_drop(SLOT_NAME);
}

/// The restart_lsn of the slot whoever holds it, for status reports.
pub fn current_restart_lsn() -> Option<Lsn> {
    unsafe {
        let slot = pg_sys::SearchNamedReplicationSlot(SLOT_NAME.as_ptr(), true);
        if slot.is_null() {
            return None;
        }
        let lsn = restart_lsn(slot);
        (lsn.0 != 0).then_some(lsn)
    }
}
