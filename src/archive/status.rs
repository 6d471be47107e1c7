//! The archiver's last failure, kept in shared memory for
//! `blockbackup.archive_status()`: PostgreSQL's own `pg_stat_archiver`
//! says when and which file failed, not why. Written by the archiver only,
//! read by any backend, under a spin lock of its own (a few hundred bytes
//! copied under it, never a call that could fail). Without the library in
//! `shared_preload_libraries` there is no shared memory and nothing is
//! kept.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::shared_state;

const TEXT_BYTES: usize = 1024;

#[repr(C)]
pub struct ArchiveShared {
    locked: AtomicBool,
    slot: UnsafeCell<FailureSlot>,
}

#[repr(C)]
struct FailureSlot {
    /// Whether the last attempt failed (cleared by the next success).
    failing: bool,
    error_len: usize,
    error: [u8; TEXT_BYTES],
}

// The slot is only touched under `locked`.
unsafe impl Sync for ArchiveShared {}

impl ArchiveShared {
    fn with_lock<T>(&self, f: impl FnOnce(&mut FailureSlot) -> T) -> T {
        while self
            .locked
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            std::hint::spin_loop();
        }
        let result = f(unsafe { &mut *self.slot.get() });
        self.locked.store(false, Ordering::Release);
        result
    }
}

fn copy_into(buffer: &mut [u8], text: &str) -> usize {
    // Cut on a character boundary.
    let mut end = text.len().min(buffer.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    buffer[..end].copy_from_slice(&text.as_bytes()[..end]);
    end
}

/// The archiver could not archive `wal`.
pub fn failed(wal: &str, error: &str) {
    let Some(shared) = shared_state::archive() else {
        return;
    };
    let message = format!("{wal}: {error}");
    shared.with_lock(|slot| {
        slot.failing = true;
        slot.error_len = copy_into(&mut slot.error, &message);
    });
}

pub fn succeeded() {
    if let Some(shared) = shared_state::archive() {
        shared.with_lock(|slot| slot.failing = false);
    }
}

/// Why the last attempt failed, while the archiver is failing.
pub fn last_failure() -> Option<String> {
    shared_state::archive()?.with_lock(|slot| {
        slot.failing
            .then(|| String::from_utf8_lossy(&slot.error[..slot.error_len]).into_owned())
    })
}
