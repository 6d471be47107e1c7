//! The physical replication slot `pg_blockbackup`, which keeps the server
//! from removing WAL the summarizer has not read yet (PostgreSQL before 17
//! has nothing else that would). The worker holds it acquired for as long
//! as it summarizes, so no one can drop it under us, and moves its
//! restart_lsn to the end of each summary it has made durable.

use blockbackup_core::Lsn;
use pgrx::pg_sys;

pub const SLOT_NAME: &std::ffi::CStr = c"pg_blockbackup";

/// Acquires the slot, creating it (reserving WAL from the current redo
/// point, or replay point on a standby) if it is missing or was
/// invalidated. Returns its restart_lsn.
pub fn acquire() -> Lsn {
    unsafe {
        if pg_sys::SearchNamedReplicationSlot(SLOT_NAME.as_ptr(), true).is_null() {
            create_reserving_wal();
        } else {
            acquire_existing();
            if is_invalidated(&*pg_sys::MyReplicationSlot) {
                pgrx::warning!(
                    "pg_blockbackup: replication slot \"pg_blockbackup\" was invalidated; WAL it held may be gone, creating it anew"
                );
                pg_sys::ReplicationSlotRelease();
                pg_sys::ReplicationSlotDrop(SLOT_NAME.as_ptr(), true);
                create_reserving_wal();
            }
        }
        restart_lsn(pg_sys::MyReplicationSlot)
    }
}

/// Lets the server remove WAL before `lsn`, which is summarized.
pub fn move_restart_lsn(lsn: Lsn) {
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() {
            return;
        }
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).data.restart_lsn = lsn.0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotsComputeRequiredLSN();
    }
}

/// Releases and drops the slot, so that the server no longer keeps WAL for
/// a summarizer that was turned off.
pub fn drop_held() {
    unsafe {
        if pg_sys::MyReplicationSlot.is_null() {
            return;
        }
        pg_sys::ReplicationSlotRelease();
        pg_sys::ReplicationSlotDrop(SLOT_NAME.as_ptr(), true);
    }
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

unsafe fn restart_lsn(slot: *mut pg_sys::ReplicationSlot) -> Lsn {
    unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let lsn = (*slot).data.restart_lsn;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        Lsn(lsn)
    }
}

unsafe fn create_reserving_wal() {
    unsafe {
        create_persistent_slot();
        pg_sys::ReplicationSlotReserveWal();
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotSave();
    }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
unsafe fn create_persistent_slot() {
    unsafe {
        pg_sys::ReplicationSlotCreate(
            SLOT_NAME.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
            false,
        )
    }
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe fn create_persistent_slot() {
    unsafe {
        pg_sys::ReplicationSlotCreate(
            SLOT_NAME.as_ptr(),
            false,
            pg_sys::ReplicationSlotPersistency::RS_PERSISTENT,
            false,
            false,
            false,
        )
    }
}

#[cfg(not(feature = "pg18"))]
unsafe fn acquire_existing() {
    unsafe { pg_sys::ReplicationSlotAcquire(SLOT_NAME.as_ptr(), true) }
}

#[cfg(feature = "pg18")]
unsafe fn acquire_existing() {
    unsafe { pg_sys::ReplicationSlotAcquire(SLOT_NAME.as_ptr(), true, false) }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
fn is_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.restart_lsn == 0 && slot.data.invalidated_at != 0
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
fn is_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.invalidated != pg_sys::ReplicationSlotInvalidationCause::RS_INVAL_NONE
}
