//! Progress of running backups, in shared memory so that any session can
//! watch them (`backup_progress()`). Each backup claims a slot with its
//! PID; a slot whose backend is gone is free again.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicU8, Ordering};

use pgrx::pg_sys;

const SLOTS: usize = 8;
const ID_BYTES: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Phase {
    Starting = 1,
    Copying = 2,
    Stopping = 3,
    CopyingWal = 4,
    Finishing = 5,
}

impl Phase {
    fn name(raw: u32) -> &'static str {
        match raw {
            1 => "starting",
            2 => "copying files",
            3 => "stopping backup",
            4 => "copying WAL",
            5 => "writing catalog",
            _ => "unknown",
        }
    }
}

#[repr(C)]
pub struct ProgressSlot {
    pid: AtomicI32,
    phase: AtomicU32,
    files_total: AtomicU64,
    files_done: AtomicU64,
    bytes_total: AtomicU64,
    bytes_done: AtomicU64,
    backup_id: [AtomicU8; ID_BYTES],
}

#[repr(C)]
pub struct BackupProgressTable {
    slots: [ProgressSlot; SLOTS],
}

pub struct ProgressRow {
    pub pid: i32,
    pub backup_id: String,
    pub phase: &'static str,
    pub files_total: u64,
    pub files_done: u64,
    pub bytes_total: u64,
    pub bytes_done: u64,
}

/// This backend's claim on a slot, released when dropped (also when an
/// error unwinds through the backup).
pub struct ProgressReporter {
    slot: Option<&'static ProgressSlot>,
}

fn backend_alive(pid: i32) -> bool {
    pid != 0 && unsafe { !pg_sys::BackendPidGetProc(pid).is_null() }
}

impl BackupProgressTable {
    pub fn claim(&'static self, backup_id: &str) -> ProgressReporter {
        let me = unsafe { pg_sys::MyProcPid };
        let slot = self.slots.iter().find(|slot| {
            let holder = slot.pid.load(Ordering::Acquire);
            (holder == 0 || !backend_alive(holder))
                && slot
                    .pid
                    .compare_exchange(holder, me, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok()
        });
        if let Some(slot) = slot {
            for (i, byte) in slot.backup_id.iter().enumerate() {
                byte.store(
                    *backup_id.as_bytes().get(i).unwrap_or(&0),
                    Ordering::Relaxed,
                );
            }
            for counter in [
                &slot.files_total,
                &slot.files_done,
                &slot.bytes_total,
                &slot.bytes_done,
            ] {
                counter.store(0, Ordering::Relaxed);
            }
            slot.phase.store(Phase::Starting as u32, Ordering::Release);
        }
        ProgressReporter { slot }
    }

    pub fn rows(&self) -> Vec<ProgressRow> {
        self.slots
            .iter()
            .filter_map(|slot| {
                let pid = slot.pid.load(Ordering::Acquire);
                if !backend_alive(pid) {
                    return None;
                }
                let id: Vec<u8> = slot
                    .backup_id
                    .iter()
                    .map(|b| b.load(Ordering::Relaxed))
                    .take_while(|b| *b != 0)
                    .collect();
                Some(ProgressRow {
                    pid,
                    backup_id: String::from_utf8_lossy(&id).into_owned(),
                    phase: Phase::name(slot.phase.load(Ordering::Acquire)),
                    files_total: slot.files_total.load(Ordering::Relaxed),
                    files_done: slot.files_done.load(Ordering::Relaxed),
                    bytes_total: slot.bytes_total.load(Ordering::Relaxed),
                    bytes_done: slot.bytes_done.load(Ordering::Relaxed),
                })
            })
            .collect()
    }
}

impl ProgressReporter {
    pub fn phase(&self, phase: Phase) {
        if let Some(slot) = self.slot {
            slot.phase.store(phase as u32, Ordering::Release);
        }
    }

    /// Progress within the current phase (counts are per phase).
    pub fn counts(&self, files_total: u64, files_done: u64, bytes_total: u64, bytes_done: u64) {
        if let Some(slot) = self.slot {
            slot.files_total.store(files_total, Ordering::Relaxed);
            slot.files_done.store(files_done, Ordering::Relaxed);
            slot.bytes_total.store(bytes_total, Ordering::Relaxed);
            slot.bytes_done.store(bytes_done, Ordering::Relaxed);
        }
    }
}

impl Drop for ProgressReporter {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            slot.pid.store(0, Ordering::Release);
        }
    }
}
