//! The summarizer: a background worker that reads WAL as the server writes
//! (or, on a standby, replays) it and writes one summary file per
//! checkpoint cycle into `pg_blockbackup/summaries/`.
//!
//! A summary says, for the WAL between its start and end LSN, which blocks
//! of which relation forks were modified and which forks were created,
//! truncated or dropped (see `record_summary`). Summaries tile the WAL
//! without overlap: each starts where the previous one ended, so after any
//! crash the worker simply resumes at the end of the last durable summary
//! (see `start_point`). A summary is cut at a checkpoint (at its redo
//! point from PostgreSQL 17 on, after its record before), at the end of
//! recovery, at a timeline switch, when the block map outgrows
//! `blockbackup.summarizer_max_memory`, and when a backend waits for one.
//! WAL that could not be summarized is recorded as a gap, so that every
//! query over it fails instead of answering short.

mod record_layout;
mod record_summary;
mod run;
mod slot;
mod start_point;
pub(crate) mod wal_reader;

use std::time::Duration;

use pgrx::bgworkers::{
    BackgroundWorker, BackgroundWorkerBuilder, BgWorkerStartTime, SignalWakeFlags,
};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::settings;
use crate::shared_state;

pub use slot::current_restart_lsn as slot_restart_lsn;

/// Whether every checkpoint's redo point is a summary boundary: from 17 on
/// the redo point is a WAL record, and a summary ends right before it.
/// Before 17 a summary ends after each checkpoint record instead.
pub const BOUNDARY_AT_REDO_POINT: bool = record_layout::XLOG_CHECKPOINT_REDO.is_some();

pub const WORKER_TYPE: &str = "pg_blockbackup summarizer";

pub fn register_worker() {
    BackgroundWorkerBuilder::new(WORKER_TYPE)
        .set_type(WORKER_TYPE)
        .set_library("pg_blockbackup")
        .set_function("blockbackup_summarizer_main")
        .enable_shmem_access(None)
        // Consistent state: on a standby the worker runs during recovery.
        .set_start_time(BgWorkerStartTime::ConsistentState)
        .set_restart_time(Some(Duration::from_secs(5)))
        .load();
}

#[pg_guard]
#[unsafe(no_mangle)]
pub extern "C-unwind" fn blockbackup_summarizer_main(_arg: pg_sys::Datum) {
    BackgroundWorker::attach_signal_handlers(SignalWakeFlags::SIGHUP | SignalWakeFlags::SIGTERM);
    let shared = shared_state::get();
    shared.attach_worker();
    loop {
        if settings::SUMMARIZE_WAL.get() && wal_level_allows_summaries() {
            run::Summarizer::start().run();
        }
        // Summarization is off: wait for a reload that turns it on.
        wait_for_event(Duration::from_secs(60));
        handle_interrupts();
    }
}

fn wal_level_allows_summaries() -> bool {
    let allowed = unsafe { pg_sys::wal_level } >= pg_sys::WalLevel::WAL_LEVEL_REPLICA as i32;
    if !allowed {
        warning!("pg_blockbackup: WAL cannot be summarized while wal_level is minimal");
    }
    allowed
}

/// Sleeps on the latch; wakes for new WAL requests, signals or the timeout.
pub(crate) fn wait_for_event(timeout: Duration) {
    unsafe {
        pg_sys::WaitLatch(
            pg_sys::MyLatch,
            (pg_sys::WL_LATCH_SET | pg_sys::WL_TIMEOUT | pg_sys::WL_EXIT_ON_PM_DEATH) as i32,
            timeout.as_millis() as std::ffi::c_long,
            pg_sys::PG_WAIT_EXTENSION,
        );
        pg_sys::ResetLatch(pg_sys::MyLatch);
    }
}

/// Reloads the configuration after SIGHUP and leaves after SIGTERM. The
/// exit status 1 lets the postmaster restart us unless it is shutting
/// down (a slot invalidation also terminates the slot's holder).
pub(crate) fn handle_interrupts() {
    unsafe {
        pg_sys::check_for_interrupts!();
        if pg_sys::ShutdownRequestPending != 0 {
            shared_state::get().detach_worker();
            pg_sys::proc_exit(1);
        }
        if pg_sys::ConfigReloadPending != 0 {
            pg_sys::ConfigReloadPending = 0;
            pg_sys::ProcessConfigFile(pg_sys::GucContext::PGC_SIGHUP);
        }
    }
}
