//! Shared memory: what the summarizer worker tells the backends and how
//! backends wake it, the progress of running backups, the dump agents, and
//! the archiver's last failure.
//!
//! LSNs and the worker's identity are plain atomics: each is written by the
//! worker alone and read anywhere, so no lock is needed. Backends that wait
//! for a summary sleep on a condition variable the worker broadcasts after
//! every summary it writes.

use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::agent::agent_table::DumpAgentTable;
use crate::archive::status::ArchiveShared;
use crate::backup::progress::BackupProgressTable;
use crate::errors::not_preloaded;
use crate::shared_condition::SharedCondition;

#[repr(C)]
struct SharedState {
    summarizer: SummarizerShared,
    backup_progress: BackupProgressTable,
    dump_agents: DumpAgentTable,
    archive: ArchiveShared,
}

#[repr(C)]
pub struct SummarizerShared {
    /// PID of the worker while it is summarizing, 0 otherwise.
    pub summarizing_pid: AtomicI32,
    /// The worker's latch, 0 while no worker runs.
    worker_latch: AtomicUsize,
    pub summarized_tli: AtomicU32,
    /// End of the last summary written.
    pub summarized_lsn: AtomicU64,
    /// How far the worker has read (summarized in memory, not yet written).
    pub pending_lsn: AtomicU64,
    /// The highest LSN some backend waits for: the worker writes a summary
    /// as soon as it has read that far instead of waiting for a checkpoint.
    pub flush_request_lsn: AtomicU64,
    summary_written: SharedCondition,
}

static mut SHARED: *mut SharedState = std::ptr::null_mut();
static mut PREV_SHMEM_REQUEST_HOOK: pg_sys::shmem_request_hook_type = None;
static mut PREV_SHMEM_STARTUP_HOOK: pg_sys::shmem_startup_hook_type = None;

const SHMEM_NAME: &std::ffi::CStr = c"pg_blockbackup summarizer";

pub fn request() {
    unsafe {
        PREV_SHMEM_REQUEST_HOOK = pg_sys::shmem_request_hook;
        pg_sys::shmem_request_hook = Some(on_shmem_request);
        PREV_SHMEM_STARTUP_HOOK = pg_sys::shmem_startup_hook;
        pg_sys::shmem_startup_hook = Some(on_shmem_startup);
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_request() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_REQUEST_HOOK {
            prev();
        }
        pg_sys::RequestAddinShmemSpace(std::mem::size_of::<SharedState>());
    }
}

#[pg_guard]
unsafe extern "C-unwind" fn on_shmem_startup() {
    unsafe {
        if let Some(prev) = PREV_SHMEM_STARTUP_HOOK {
            prev();
        }
        let mut found = false;
        let shared = pg_sys::ShmemInitStruct(
            SHMEM_NAME.as_ptr(),
            std::mem::size_of::<SharedState>(),
            &mut found,
        )
        .cast::<SharedState>();
        if !found {
            // Every field is an atomic, a plain value, a spinlock or a
            // condition variable: all-zero is their initial state, but for
            // the lock's and the condition variables' init.
            std::ptr::write_bytes(shared, 0, 1);
            SharedCondition::init(&raw mut (*shared).summarizer.summary_written);
            DumpAgentTable::init(&raw mut (*shared).dump_agents);
        }
        SHARED = shared;
    }
}

fn shared() -> &'static SharedState {
    unsafe {
        let shared = SHARED;
        if shared.is_null() {
            not_preloaded();
        }
        &*shared
    }
}

/// The summarizer's shared state, or an error telling the user to preload
/// the library.
pub fn get() -> &'static SummarizerShared {
    &shared().summarizer
}

pub fn backup_progress() -> &'static BackupProgressTable {
    &shared().backup_progress
}

pub fn dump_agents() -> &'static DumpAgentTable {
    &shared().dump_agents
}

/// The archiver's status, None without shared memory (the library not
/// preloaded): archiving works without it, and must not fail for it.
pub fn archive() -> Option<&'static ArchiveShared> {
    unsafe {
        let shared = SHARED;
        (!shared.is_null()).then(|| &(*shared).archive)
    }
}

/// Errors unless the library was preloaded (the worker and this state exist).
pub fn ensure_preloaded() {
    get();
}

impl SummarizerShared {
    pub fn attach_worker(&self) {
        unsafe {
            self.worker_latch
                .store(pg_sys::MyLatch as usize, Ordering::Release);
        }
    }

    pub fn detach_worker(&self) {
        self.summarizing_pid.store(0, Ordering::Release);
        self.worker_latch.store(0, Ordering::Release);
    }

    pub fn wake_worker(&self) {
        let latch = self.worker_latch.load(Ordering::Acquire) as *mut pg_sys::Latch;
        if !latch.is_null() {
            unsafe { pg_sys::SetLatch(latch) };
        }
    }

    pub fn publish_summary(&self, tli: u32, end_lsn: u64) {
        self.summarized_tli.store(tli, Ordering::Release);
        self.summarized_lsn.store(end_lsn, Ordering::Release);
        self.summary_written.broadcast();
    }

    pub fn request_flush_up_to(&self, lsn: u64) {
        self.flush_request_lsn.fetch_max(lsn, Ordering::AcqRel);
    }

    /// Sleeps until the worker broadcasts or `timeout_ms` passes.
    pub fn sleep_for_summary(&self, timeout_ms: i64) {
        self.summary_written.sleep(timeout_ms);
    }

    pub fn stop_sleeping(&self) {
        self.summary_written.stop_sleeping();
    }
}
