//! WAL summarization from SQL: the worker's status, the summaries on disk,
//! and what changed between two LSNs.

use std::sync::atomic::Ordering;
use std::time::Duration;

use blockbackup_core::{relation_path, BlockMap, Lsn};
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::required;
use crate::sql_types::{PgLsn, ZeroableOid};
use crate::{errors, server_paths, settings, shared_state, summarizer, summary_access};

#[pg_extern(volatile, parallel_safe)]
fn summarizer_status() -> TableIterator<
    'static,
    (
        name!(summarized_tli, i64),
        name!(summarized_lsn, PgLsn),
        name!(pending_lsn, PgLsn),
        name!(summarizer_pid, Option<i32>),
        name!(slot_restart_lsn, Option<PgLsn>),
    ),
> {
    let shared = shared_state::get();
    let pid = shared.summarizing_pid.load(Ordering::Acquire);
    TableIterator::once((
        shared.summarized_tli.load(Ordering::Acquire) as i64,
        PgLsn(Lsn(shared.summarized_lsn.load(Ordering::Acquire))),
        PgLsn(Lsn(shared.pending_lsn.load(Ordering::Acquire))),
        (pid != 0).then_some(pid),
        summarizer::slot_restart_lsn().map(PgLsn),
    ))
}

#[pg_extern(volatile, parallel_safe)]
fn summaries() -> TableIterator<
    'static,
    (
        name!(tli, i64),
        name!(start_lsn, PgLsn),
        name!(end_lsn, PgLsn),
        name!(relation_forks, Option<i64>),
        name!(blocks, Option<i64>),
        name!(size_bytes, i64),
    ),
> {
    shared_state::ensure_preloaded();
    let rows: Vec<_> = summary_access::list()
        .into_iter()
        .map(|entry| {
            // A damaged file is listed (with unknown counts) so that the
            // listing still shows what exists; queries over it fail.
            let counts = match blockbackup_core::read_summary(&entry.path) {
                Ok((_, map)) => (
                    Some(map.len_forks() as i64),
                    Some(map.total_blocks() as i64),
                ),
                Err(e) => {
                    warning!("pg_blockbackup: {e}");
                    (None, None)
                }
            };
            (
                entry.name.timeline as i64,
                PgLsn(entry.name.start_lsn),
                PgLsn(entry.name.end_lsn),
                counts.0,
                counts.1,
                entry.size_bytes as i64,
            )
        })
        .collect();
    TableIterator::new(rows)
}

#[pg_extern(volatile, parallel_safe)]
fn changed_blocks(
    start_lsn: Option<PgLsn>,
    end_lsn: Option<PgLsn>,
) -> TableIterator<
    'static,
    (
        name!(reltablespace, ZeroableOid),
        name!(reldatabase, ZeroableOid),
        name!(relfilenode, ZeroableOid),
        name!(relforknumber, i16),
        name!(relblocknumber, i64),
    ),
> {
    let changes = changes_for(start_lsn, end_lsn);
    TableIterator::new(
        changes
            .into_sorted_entries()
            .into_iter()
            .flat_map(|(rf, fork)| {
                fork.blocks.into_iter().map(move |block| {
                    (
                        ZeroableOid(rf.spc_oid),
                        ZeroableOid(rf.db_oid),
                        ZeroableOid(rf.rel_number),
                        rf.fork as i16,
                        block as i64,
                    )
                })
            }),
    )
}

#[pg_extern(volatile, parallel_safe)]
fn changed_relations(
    start_lsn: Option<PgLsn>,
    end_lsn: Option<PgLsn>,
) -> TableIterator<
    'static,
    (
        name!(reltablespace, ZeroableOid),
        name!(reldatabase, ZeroableOid),
        name!(relfilenode, ZeroableOid),
        name!(relforknumber, i16),
        name!(limit_block, Option<i64>),
        name!(changed_blocks, i64),
        name!(path, String),
    ),
> {
    let changes = changes_for(start_lsn, end_lsn);
    let version_dir = server_paths::tablespace_version_directory();
    TableIterator::new(
        changes
            .into_sorted_entries()
            .into_iter()
            .map(move |(rf, fork)| {
                (
                    ZeroableOid(rf.spc_oid),
                    ZeroableOid(rf.db_oid),
                    ZeroableOid(rf.rel_number),
                    rf.fork as i16,
                    fork.limit_block.map(i64::from),
                    fork.blocks.len() as i64,
                    relation_path(&rf, &version_dir),
                )
            }),
    )
}

#[pg_extern(volatile)]
fn wait_for_summary(lsn: Option<PgLsn>, timeout_ms: default!(Option<i32>, 60000)) -> PgLsn {
    shared_state::ensure_preloaded();
    let lsn = required(lsn, "lsn");
    let timeout_ms = required(timeout_ms, "timeout_ms");
    if !settings::SUMMARIZE_WAL.get() {
        errors::summarization_disabled();
    }
    if timeout_ms < 0 {
        errors::invalid_argument(
            format!("timeout_ms must not be negative, got {timeout_ms}"),
            "Pass 0 to check without waiting.",
        );
    }
    flush_or_refuse_future_lsn(lsn.0);
    match summary_access::wait_until_summarized(lsn.0, Duration::from_millis(timeout_ms as u64)) {
        Ok(summarized) => PgLsn(summarized),
        Err(summarized) => {
            errors::wait_timed_out(lsn.0.to_string(), summarized.to_string(), timeout_ms)
        }
    }
}

fn changes_for(start_lsn: Option<PgLsn>, end_lsn: Option<PgLsn>) -> BlockMap {
    shared_state::ensure_preloaded();
    let start_lsn = required(start_lsn, "start_lsn");
    let end_lsn = required(end_lsn, "end_lsn");
    summary_access::changes_between(start_lsn.0, end_lsn.0)
}

/// On a primary, WAL past the insert position does not exist yet: waiting
/// for it would only time out. WAL inserted but not yet flushed (records
/// of a transaction still open, say) is flushed here, since the worker
/// reads only flushed WAL.
fn flush_or_refuse_future_lsn(lsn: Lsn) {
    unsafe {
        if pg_sys::RecoveryInProgress() {
            return;
        }
        let insert = Lsn(pg_sys::GetXLogInsertRecPtr());
        if lsn > insert {
            errors::invalid_argument(
                format!("LSN {lsn} is ahead of the current WAL insert position {insert}"),
                "Pass an LSN the server has written, such as pg_current_wal_lsn().",
            );
        }
        pg_sys::XLogFlush(lsn.0);
    }
}
