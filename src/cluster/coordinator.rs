//! What the coordinator knows of its Citus cluster, read through SPI, and
//! the one restore point every node shares.
//!
//! `citus_create_restore_point` takes ExclusiveLocks on pg_dist_node,
//! pg_dist_partition and pg_dist_transaction (14.0 also on the workers'
//! copies) in the calling transaction, which keeps every distributed
//! commit waiting until that transaction ends. It is called here inside a
//! subtransaction that is rolled back at once: the restore point records
//! and the workers' remote calls stay, the coordinator's locks go. A short
//! lock_timeout, set local to the subtransaction, keeps a long DDL
//! statement from making every commit queue behind our waiting lock; it is
//! retried a few times.

use std::time::{Duration, Instant};

use blockbackup_core::Lsn;
use pgrx::datum::DatumWithOid;
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::PgSqlErrorCode;

use super::errors;
use crate::sql_types::PgLsn;

/// How long the restore point may wait for Citus's locks, each try.
const LOCK_TIMEOUT: &str = "50ms";
const LOCK_TRIES: u32 = 5;

#[derive(Clone, Debug)]
pub struct CitusNode {
    pub node_id: i32,
    pub group_id: i32,
    pub host: String,
    pub port: u16,
}

/// Errors unless this session can take a cluster backup: Citus in this
/// database, a superuser, the coordinator. Returns the Citus version.
pub fn require_coordinator() -> String {
    let database = current_database();
    let version = crate::read_only_sql::one::<String>(
        "SELECT extversion::text FROM pg_catalog.pg_extension WHERE extname = 'citus'",
        &[],
    );
    let version = match version {
        Ok(Some(version)) => version,
        Ok(None) | Err(pgrx::spi::SpiError::InvalidPosition) => errors::citus_missing(&database),
        Err(e) => error!("pg_blockbackup: could not look up the citus extension: {e}"),
    };
    if !unsafe { pg_sys::superuser() } {
        errors::not_superuser();
    }
    let group =
        crate::read_only_sql::one::<i32>("SELECT groupid FROM pg_catalog.pg_dist_local_group", &[]);
    match group {
        Ok(Some(0)) => {}
        Ok(Some(group)) => errors::not_coordinator(group, coordinator_address()),
        Ok(None) | Err(pgrx::spi::SpiError::InvalidPosition) => errors::citus_missing(&database),
        Err(e) => error!("pg_blockbackup: could not read pg_dist_local_group: {e}"),
    }
    version
}

fn coordinator_address() -> Option<String> {
    crate::read_only_sql::two::<String, i32>(
        "SELECT nodename, nodeport FROM pg_catalog.pg_dist_node WHERE groupid = 0 LIMIT 1",
        &[],
    )
    .ok()
    .and_then(|(name, port)| Some(format!("{}:{}", name?, port?)))
}

pub fn current_database() -> String {
    crate::read_only_sql::one::<String>("SELECT pg_catalog.current_database()::text", &[])
        .ok()
        .flatten()
        .unwrap_or_default()
}

/// The active primary nodes (the set Citus writes restore points on), the
/// coordinator first.
pub fn nodes() -> Vec<CitusNode> {
    let nodes = Spi::connect(|client| {
        let rows = client.select(
            "SELECT nodeid, groupid, nodename::text, nodeport FROM pg_catalog.pg_dist_node \
             WHERE isactive AND noderole = 'primary' ORDER BY groupid <> 0, nodeid",
            None,
            &[],
        )?;
        let mut nodes = Vec::new();
        for row in rows {
            let (Some(node_id), Some(group_id), Some(host), Some(port)) = (
                row.get::<i32>(1)?,
                row.get::<i32>(2)?,
                row.get::<String>(3)?,
                row.get::<i32>(4)?,
            ) else {
                continue;
            };
            nodes.push(CitusNode {
                node_id,
                group_id,
                host,
                port: u16::try_from(port).unwrap_or(0),
            });
        }
        Ok::<_, pgrx::spi::SpiError>(nodes)
    })
    .unwrap_or_else(|e| error!("pg_blockbackup: could not read pg_dist_node: {e}"));
    if !nodes.iter().any(|node| node.group_id == 0) {
        errors::no_coordinator_row();
    }
    nodes
}

/// The restore point Citus made, and how long distributed commits were
/// held up by it (from asking for the locks to their release), at most.
pub struct CommonRestorePoint {
    pub coordinator_lsn: Lsn,
    pub blocked: Duration,
}

pub fn create_restore_point(name: &str) -> CommonRestorePoint {
    for attempt in 1..=LOCK_TRIES {
        match try_restore_point(name) {
            Ok(point) => return point,
            Err(()) if attempt < LOCK_TRIES => {
                std::thread::sleep(Duration::from_millis(100 * u64::from(attempt)));
                pg_sys::check_for_interrupts!();
            }
            Err(()) => break,
        }
    }
    errors::restore_point_busy(name, LOCK_TRIES)
}

/// One try in a subtransaction; Err when the locks were not had within
/// LOCK_TIMEOUT (any other error is raised).
fn try_restore_point(name: &str) -> Result<CommonRestorePoint, ()> {
    let outer_context = unsafe { pg_sys::CurrentMemoryContext };
    let outer_owner = unsafe { pg_sys::CurrentResourceOwner };
    unsafe { pg_sys::BeginInternalSubTransaction(std::ptr::null()) };
    let began = Instant::now();
    let result = PgTryBuilder::new(|| {
        let args: [DatumWithOid; 1] = [name.into()];
        let lsn = Spi::connect_mut(|client| {
            client.update(
                &format!("SELECT pg_catalog.set_config('lock_timeout', '{LOCK_TIMEOUT}', true)"),
                None,
                &[],
            )?;
            client
                .update(
                    "SELECT pg_catalog.citus_create_restore_point($1)",
                    Some(1),
                    &args,
                )?
                .first()
                .get_one::<PgLsn>()
        });
        Ok(lsn)
    })
    .catch_when(PgSqlErrorCode::ERRCODE_LOCK_NOT_AVAILABLE, |_| Err(()))
    .catch_others(|error| {
        rollback_subtransaction(outer_context, outer_owner);
        error.rethrow()
    })
    .execute();
    // Rolling back releases Citus's locks on the coordinator; the restore
    // point records are in the WAL whatever happens to the transaction.
    rollback_subtransaction(outer_context, outer_owner);
    let blocked = began.elapsed();
    match result {
        Ok(Ok(Some(lsn))) => Ok(CommonRestorePoint {
            coordinator_lsn: lsn.0,
            blocked,
        }),
        Ok(Ok(None)) => error!("pg_blockbackup: citus_create_restore_point returned no LSN"),
        Ok(Err(e)) => error!("pg_blockbackup: citus_create_restore_point failed: {e}"),
        Err(()) => Err(()),
    }
}

fn rollback_subtransaction(context: pg_sys::MemoryContext, owner: pg_sys::ResourceOwner) {
    unsafe {
        pg_sys::RollbackAndReleaseCurrentSubTransaction();
        pg_sys::MemoryContextSwitchTo(context);
        pg_sys::CurrentResourceOwner = owner;
    }
}
