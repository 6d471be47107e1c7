//! What one WAL record changes, folded into the block map.
//!
//! Every block reference counts, except those of the free space map: the
//! FSM is not WAL-logged reliably, so backups copy it whole and the map
//! never tracks it. Besides block references, files change size or appear
//! without a block being logged: relation creation (limit 0 on the new
//! fork), truncation (the new length; for the visibility map translated
//! from heap blocks to map pages), relation drops at commit or abort, and
//! whole databases created (both strategies) or dropped.

use blockbackup_core::{visibility_map_truncation_length, BlockMap, ForkNumber, RelFork};
use pgrx::pg_sys;

use super::record_layout::{self as layout, RelationLocator};

/// What the record means for the summary being built, beyond its blocks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Boundary {
    None,
    /// A checkpoint (before 17) or the end of recovery: end the summary
    /// after it.
    EndSummaryAfter,
    /// wal_level dropped below replica: pages may now change without WAL.
    WalLevelMinimal,
    /// wal_level is back at replica or above.
    WalLevelReplica,
}

/// Whether a summary must end right before the record the reader just
/// decoded: at a redo point that is a record of its own (17 and later), so
/// that a summary boundary falls exactly at every checkpoint's redo LSN,
/// where backups start. Before 17 the redo point is no record and summaries
/// end after the checkpoint record instead (see `xlog_boundary`).
///
/// # Safety
/// `reader` must hold a successfully decoded record.
pub unsafe fn ends_summary_before(reader: *mut pg_sys::XLogReaderState) -> bool {
    let Some(redo) = layout::XLOG_CHECKPOINT_REDO else {
        return false;
    };
    let header = unsafe { &(*(*reader).record).header };
    header.xl_rmid == layout::RM_XLOG_ID && header.xl_info & !(pg_sys::XLR_INFO_MASK as u8) == redo
}

/// Folds the record the reader just decoded into `map`.
///
/// # Safety
/// `reader` must hold a successfully decoded record.
pub unsafe fn summarize_record(
    reader: *mut pg_sys::XLogReaderState,
    map: &mut BlockMap,
) -> Boundary {
    let record = unsafe { &*(*reader).record };
    mark_block_references(record, map);

    let info = record.header.xl_info & !(pg_sys::XLR_INFO_MASK as u8);
    let data = main_data(record);
    match record.header.xl_rmid {
        layout::RM_SMGR_ID => summarize_storage(info, data, map),
        layout::RM_XACT_ID => unsafe { summarize_transaction_end(reader, info, map) },
        layout::RM_DBASE_ID => summarize_database(info, data, map),
        layout::RM_XLOG_ID => return xlog_boundary(info, data),
        _ => {}
    }
    Boundary::None
}

fn mark_block_references(record: &pg_sys::DecodedXLogRecord, map: &mut BlockMap) {
    let count = (record.max_block_id + 1).max(0) as usize;
    let blocks = unsafe { record.blocks.as_slice(count) };
    for block in blocks.iter().filter(|b| b.in_use) {
        let Some(fork) = ForkNumber::from_i32(block.forknum) else {
            continue;
        };
        if fork == ForkNumber::Fsm {
            continue;
        }
        let rel = layout::from_server(layout::block_locator(block));
        map.mark_block_modified(rel_fork(rel, fork), block.blkno);
    }
}

fn main_data(record: &pg_sys::DecodedXLogRecord) -> &[u8] {
    if record.main_data.is_null() {
        return &[];
    }
    unsafe {
        std::slice::from_raw_parts(record.main_data.cast::<u8>(), record.main_data_len as usize)
    }
}

fn rel_fork(rel: RelationLocator, fork: ForkNumber) -> RelFork {
    RelFork {
        spc_oid: rel.spc_oid,
        db_oid: rel.db_oid,
        rel_number: rel.rel_number,
        fork,
    }
}

fn summarize_storage(info: u8, data: &[u8], map: &mut BlockMap) {
    match info {
        layout::XLOG_SMGR_CREATE => {
            // xl_smgr_create: { locator, fork number }
            let (Some(rel), Some(fork)) =
                (layout::relation_at(data, 0), layout::read_u32(data, 12))
            else {
                return;
            };
            if let Some(fork) = ForkNumber::from_i32(fork as i32).filter(|f| *f != ForkNumber::Fsm)
            {
                map.set_limit_block(rel_fork(rel, fork), 0);
            }
        }
        layout::XLOG_SMGR_TRUNCATE => {
            // xl_smgr_truncate: { heap blocks, locator, flags }
            let (Some(heap_blocks), Some(rel), Some(flags)) = (
                layout::read_u32(data, 0),
                layout::relation_at(data, 4),
                layout::read_u32(data, 16),
            ) else {
                return;
            };
            if flags & layout::SMGR_TRUNCATE_HEAP != 0 {
                map.set_limit_block(rel_fork(rel, ForkNumber::Main), heap_blocks);
            }
            if flags & layout::SMGR_TRUNCATE_VM != 0 {
                let vm_pages = visibility_map_truncation_length(heap_blocks, pg_sys::BLCKSZ);
                map.set_limit_block(rel_fork(rel, ForkNumber::VisibilityMap), vm_pages);
            }
        }
        _ => {}
    }
}

/// Relations dropped when a transaction (or a prepared one) commits or
/// aborts lose every fork.
unsafe fn summarize_transaction_end(
    reader: *mut pg_sys::XLogReaderState,
    info: u8,
    map: &mut BlockMap,
) {
    let op = info & pg_sys::XLOG_XACT_OPMASK as u8;
    let record = unsafe { &*(*reader).record };
    let (locators, count) = match op as u32 {
        pg_sys::XLOG_XACT_COMMIT | pg_sys::XLOG_XACT_COMMIT_PREPARED => unsafe {
            let mut parsed = pg_sys::xl_xact_parsed_commit::default();
            pg_sys::ParseCommitRecord(record.header.xl_info, record.main_data.cast(), &mut parsed);
            layout::committed_drops(&parsed)
        },
        pg_sys::XLOG_XACT_ABORT | pg_sys::XLOG_XACT_ABORT_PREPARED => unsafe {
            let mut parsed = pg_sys::xl_xact_parsed_abort::default();
            pg_sys::ParseAbortRecord(record.header.xl_info, record.main_data.cast(), &mut parsed);
            layout::aborted_drops(&parsed)
        },
        _ => return,
    };
    if locators.is_null() || count <= 0 {
        return;
    }
    let dropped = unsafe { std::slice::from_raw_parts(locators, count as usize) };
    for locator in dropped {
        let rel = layout::from_server(locator);
        for fork in [
            ForkNumber::Main,
            ForkNumber::VisibilityMap,
            ForkNumber::Init,
        ] {
            map.set_limit_block(rel_fork(rel, fork), 0);
        }
    }
}

fn summarize_database(info: u8, data: &[u8], map: &mut BlockMap) {
    let is_create =
        info == layout::dbase::CREATE_FILE_COPY || Some(info) == layout::dbase::CREATE_WAL_LOG;
    if is_create {
        // Both create records start with { db_id, tablespace_id }.
        if let (Some(db), Some(spc)) = (layout::read_u32(data, 0), layout::read_u32(data, 4)) {
            map.mark_database_replaced(spc, db);
        }
    } else if info == layout::dbase::DROP {
        // xl_dbase_drop_rec: { db_id, ntablespaces, tablespace_ids[] }
        let (Some(db), Some(count)) = (layout::read_u32(data, 0), layout::read_u32(data, 4)) else {
            return;
        };
        let listed = (count as usize).min(data.len().saturating_sub(8) / 4);
        for i in 0..listed {
            if let Some(spc) = layout::read_u32(data, 8 + 4 * i) {
                map.mark_database_replaced(spc, db);
            }
        }
    }
}

fn xlog_boundary(info: u8, data: &[u8]) -> Boundary {
    match info {
        layout::XLOG_CHECKPOINT_SHUTDOWN | layout::XLOG_END_OF_RECOVERY => {
            Boundary::EndSummaryAfter
        }
        // From 17 on, the summary ended at this checkpoint's redo record.
        layout::XLOG_CHECKPOINT_ONLINE if layout::XLOG_CHECKPOINT_REDO.is_none() => {
            Boundary::EndSummaryAfter
        }
        layout::XLOG_PARAMETER_CHANGE => {
            match layout::read_u32(data, layout::PARAMETER_CHANGE_WAL_LEVEL_OFFSET) {
                Some(level) if level < pg_sys::WalLevel::WAL_LEVEL_REPLICA => {
                    Boundary::WalLevelMinimal
                }
                Some(_) => Boundary::WalLevelReplica,
                None => Boundary::None,
            }
        }
        _ => Boundary::None,
    }
}
