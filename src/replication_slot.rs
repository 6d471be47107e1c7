//! The server's replication slot calls that differ between versions, and
//! the few operations both the summarizer's slot and a backup's temporary
//! slot need.

use blockbackup_core::Lsn;
use pgrx::pg_sys;

pub use pg_sys::ReplicationSlotPersistency::{RS_PERSISTENT, RS_TEMPORARY};

/// Creates the slot (acquired by this process) and reserves WAL from the
/// current redo point (the replay point on a standby).
pub fn create_reserving_wal(
    name: &std::ffi::CStr,
    persistency: pg_sys::ReplicationSlotPersistency::Type,
) {
    unsafe {
        create_slot(name, persistency);
        pg_sys::ReplicationSlotReserveWal();
        pg_sys::ReplicationSlotMarkDirty();
        if persistency == RS_PERSISTENT {
            pg_sys::ReplicationSlotSave();
        }
    }
}

/// Releases the slot this process holds and drops it.
pub fn release_and_drop(name: &std::ffi::CStr) {
    unsafe {
        if pg_sys::MyReplicationSlot.is_null() {
            return;
        }
        pg_sys::ReplicationSlotRelease();
        pg_sys::ReplicationSlotDrop(name.as_ptr(), true);
    }
}

pub unsafe fn restart_lsn(slot: *mut pg_sys::ReplicationSlot) -> Lsn {
    unsafe {
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        let lsn = (*slot).data.restart_lsn;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        Lsn(lsn)
    }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
unsafe fn create_slot(
    name: &std::ffi::CStr,
    persistency: pg_sys::ReplicationSlotPersistency::Type,
) {
    unsafe { pg_sys::ReplicationSlotCreate(name.as_ptr(), false, persistency, false) }
}

#[cfg(any(feature = "pg17", feature = "pg18"))]
unsafe fn create_slot(
    name: &std::ffi::CStr,
    persistency: pg_sys::ReplicationSlotPersistency::Type,
) {
    unsafe { pg_sys::ReplicationSlotCreate(name.as_ptr(), false, persistency, false, false, false) }
}

#[cfg(not(feature = "pg18"))]
pub unsafe fn acquire_existing(name: &std::ffi::CStr) {
    unsafe { pg_sys::ReplicationSlotAcquire(name.as_ptr(), true) }
}

#[cfg(feature = "pg18")]
pub unsafe fn acquire_existing(name: &std::ffi::CStr) {
    unsafe { pg_sys::ReplicationSlotAcquire(name.as_ptr(), true, false) }
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
pub fn is_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.restart_lsn == 0 && slot.data.invalidated_at != 0
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
pub fn is_invalidated(slot: &pg_sys::ReplicationSlot) -> bool {
    slot.data.invalidated != pg_sys::ReplicationSlotInvalidationCause::RS_INVAL_NONE
}
