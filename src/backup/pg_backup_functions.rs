//! PostgreSQL's own backup start and stop, called through SPI so that the
//! same code serves every version (the C functions changed signature in
//! 16), and the abort PostgreSQL needs when a backup fails half-way.

use blockbackup_core::repository::catalog::ClusterFacts;
use blockbackup_core::Lsn;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::sql_types::PgLsn;

pub struct StopResult {
    pub stop_lsn: Lsn,
    pub labelfile: String,
    pub spcmapfile: String,
}

// postmaster/bgwriter.h, not bound by pgrx; the same in the 15 and 18
// headers, as are the CHECKPOINT_* flags used with it (from pg_sys).
unsafe extern "C-unwind" {
    fn RequestCheckpoint(flags: std::ffi::c_int);
}

/// Starts the server's backup. Before PostgreSQL 17, on a primary, a
/// checkpoint comes first: the summarizer ends a summary at every
/// checkpoint record, so one just before the backup's own puts a summary
/// boundary right before its start LSN (the redo point, which the
/// summarizer cannot see coming there). Without it, an incremental on this
/// backup would also carry the blocks changed since the checkpoint before,
/// often a whole cycle's worth. From 17 on the redo point is a record and
/// a summary boundary of its own.
pub fn start(label: &str, fast: bool) -> Lsn {
    require_execute(
        "pg_catalog.pg_backup_start(text, boolean)",
        "start a backup",
    );
    require_execute("pg_catalog.pg_backup_stop(boolean)", "stop a backup");
    unsafe {
        if !pg_sys::RecoveryInProgress() && !crate::summarizer::BOUNDARY_AT_REDO_POINT {
            let speed = if fast {
                pg_sys::CHECKPOINT_IMMEDIATE
            } else {
                0
            };
            let flags = speed | pg_sys::CHECKPOINT_FORCE | pg_sys::CHECKPOINT_WAIT;
            pg_sys::submodules::ffi::pg_guard_ffi_boundary(|| {
                RequestCheckpoint(flags as std::ffi::c_int)
            });
        }
    }
    // A read-only SPI call: a writable one would assign a transaction id,
    // which a standby cannot.
    let args: [DatumWithOid; 2] = [label.into(), fast.into()];
    let lsn =
        crate::read_only_sql::one::<PgLsn>("SELECT pg_catalog.pg_backup_start($1, $2)", &args);
    match lsn {
        Ok(Some(lsn)) => lsn.0,
        Ok(None) => error!("pg_blockbackup: pg_backup_start returned no LSN"),
        Err(e) => error!("pg_blockbackup: pg_backup_start failed: {e}"),
    }
}

/// Refuses (42501, with the GRANT to make) when the current role may not
/// execute `function`: better said before a backup starts than as a
/// failure of the SQL call inside it.
pub fn require_execute(function: &str, what: &str) {
    let args: [DatumWithOid; 1] = [function.into()];
    let allowed = crate::read_only_sql::one::<bool>(
        "SELECT pg_catalog.has_function_privilege($1, 'EXECUTE')",
        &args,
    );
    if !matches!(allowed, Ok(Some(true))) {
        crate::errors::missing_privilege(function, what);
    }
}

pub fn stop(wait_for_archive: bool) -> StopResult {
    let args: [DatumWithOid; 1] = [wait_for_archive.into()];
    let row = crate::read_only_sql::three::<PgLsn, String, String>(
        "SELECT lsn, labelfile, spcmapfile FROM pg_catalog.pg_backup_stop($1)",
        &args,
    );
    match row {
        Ok((Some(lsn), labelfile, spcmapfile)) => StopResult {
            stop_lsn: lsn.0,
            labelfile: labelfile.unwrap_or_default(),
            spcmapfile: spcmapfile.unwrap_or_default(),
        },
        Ok(_) => error!("pg_blockbackup: pg_backup_stop returned no LSN"),
        Err(e) => error!("pg_blockbackup: pg_backup_stop failed: {e}"),
    }
}

/// Ends this session's backup after an error, as PostgreSQL does when the
/// session exits, so that the session can start another.
pub fn abort() {
    unsafe { pg_sys::do_pg_abort_backup(0, pg_sys::Datum::from(false)) };
}

pub fn system_identifier() -> u64 {
    unsafe { pg_sys::GetSystemIdentifier() }
}

/// This server's facts for a backup record, on timeline `timeline`.
pub fn cluster_facts(timeline: u32) -> ClusterFacts {
    ClusterFacts {
        timeline,
        block_size: pg_sys::BLCKSZ,
        segment_blocks: pg_sys::RELSEG_SIZE,
        wal_segment_size: unsafe { pg_sys::wal_segment_size } as u32,
        system_identifier: system_identifier(),
        server_version: pg_sys::PG_VERSION_NUM,
    }
}

/// The newest transaction id and the time the backup is consistent with,
/// for the catalog (what a DBA picks recovery targets from).
pub fn recovery_point() -> (Option<u64>, Option<i64>) {
    let row = crate::read_only_sql::two::<i64, i64>(
        "SELECT pg_catalog.txid_snapshot_xmax(pg_catalog.txid_current_snapshot()) - 1, \
                (extract(epoch FROM pg_catalog.clock_timestamp()) * 1000000)::bigint",
        &[],
    );
    match row {
        Ok((xid, time)) => (xid.map(|x| x as u64), time),
        Err(_) => (None, None),
    }
}
