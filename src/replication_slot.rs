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

/// Creates a temporary slot (acquired by this process) that holds the WAL
/// from `lsn` on, the start of a backup that `pg_backup_start` just began;
/// false (and no slot) if that WAL is gone already. PostgreSQL's own
/// reservation starts a physical slot at the last redo point and before
/// the backup's checkpoint: with more WAL since then than
/// `max_slot_wal_keep_size`, that very checkpoint invalidates the slot and
/// terminates this session. Reserved after it, from its redo point, the
/// slot holds nothing older than the backup needs; the checkpoint kept the
/// segment of its own redo point, which is checked once the slot counts.
pub fn create_holding_wal_from(name: &std::ffi::CStr, lsn: Lsn) -> bool {
    unsafe {
        create_slot(name, RS_TEMPORARY);
        let slot = pg_sys::MyReplicationSlot;
        pg_sys::SpinLockAcquire(&raw mut (*slot).mutex);
        (*slot).data.restart_lsn = lsn.0;
        pg_sys::SpinLockRelease(&raw mut (*slot).mutex);
        pg_sys::ReplicationSlotMarkDirty();
        pg_sys::ReplicationSlotsComputeRequiredLSN();
        let segment_size = pg_sys::wal_segment_size as u64;
        if pg_sys::XLogGetLastRemovedSegno() >= lsn.0 / segment_size {
            release_and_drop(name);
            return false;
        }
        true
    }
}

/// What the slot this process holds keeps: the bytes and whole segments
/// from its restart_lsn to the current insert (on a standby, replay)
/// position, and whether the server invalidated it.
pub struct HeldWal {
    pub bytes: u64,
    pub segments_behind: u64,
    pub invalidated: bool,
}

pub fn held_wal() -> Option<HeldWal> {
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if slot.is_null() {
            return None;
        }
        let restart = restart_lsn(slot);
        let invalidated = is_invalidated(&*slot);
        // What a checkpoint (restartpoint) measures slots against: the
        // insert position, on a standby the further of receive and replay.
        let now = if pg_sys::RecoveryInProgress() {
            pg_sys::GetXLogReplayRecPtr(std::ptr::null_mut()).max(pg_sys::GetWalRcvFlushRecPtr(
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            ))
        } else {
            pg_sys::GetXLogInsertRecPtr()
        };
        let segment = pg_sys::wal_segment_size as u64;
        Some(HeldWal {
            bytes: now.saturating_sub(restart.0),
            segments_behind: (now / segment).saturating_sub(restart.0 / segment),
            invalidated,
        })
    }
}

/// `max_slot_wal_keep_size` in whole WAL segments, as PostgreSQL counts
/// it, None when unlimited: a checkpoint invalidates a slot whose restart
/// segment is more than that many segments behind its own.
pub fn max_slot_wal_keep_segments() -> Option<u64> {
    let megabytes = unsafe { pg_sys::max_slot_wal_keep_size_mb };
    let segment_mb = (unsafe { pg_sys::wal_segment_size } as u64 / (1024 * 1024)).max(1);
    u64::try_from(megabytes).ok().map(|mb| mb / segment_mb)
}

/// Moves the restart_lsn of the slot this process holds forward to `lsn`
/// (never back).
pub fn advance_held(lsn: Lsn) {
    unsafe {
        let slot = pg_sys::MyReplicationSlot;
        if !slot.is_null() && restart_lsn(slot) < lsn {
            set_held_restart_lsn(lsn);
        }
    }
}

/// Sets the restart_lsn of the slot this process holds, and lets the
/// server recompute how much WAL the slots need.
pub fn set_held_restart_lsn(lsn: Lsn) {
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
