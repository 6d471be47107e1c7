//! The WAL record layouts that differ between PostgreSQL versions, in one
//! place: which info codes mean what, how a relation is named in a block
//! reference or a dropped-relation list, and the byte layouts of the
//! storage and database records (their headers are not bound by pgrx).
//!
//! * 13 and 14 have one database-create record; 15 added the WAL_LOG
//!   strategy and renumbered the codes.
//! * 16 renamed RelFileNode to RelFileLocator; the layout did not change.
//! * 17 logs the redo point of an online checkpoint as a record of its own,
//!   XLOG_CHECKPOINT_REDO, which starts exactly at the redo LSN.

use pgrx::pg_sys;

pub const RM_XLOG_ID: u8 = pg_sys::RmgrIds::RM_XLOG_ID as u8;
pub const RM_XACT_ID: u8 = pg_sys::RmgrIds::RM_XACT_ID as u8;
pub const RM_SMGR_ID: u8 = pg_sys::RmgrIds::RM_SMGR_ID as u8;
pub const RM_DBASE_ID: u8 = pg_sys::RmgrIds::RM_DBASE_ID as u8;

pub const XLOG_CHECKPOINT_SHUTDOWN: u8 = pg_sys::XLOG_CHECKPOINT_SHUTDOWN as u8;
pub const XLOG_CHECKPOINT_ONLINE: u8 = pg_sys::XLOG_CHECKPOINT_ONLINE as u8;
pub const XLOG_END_OF_RECOVERY: u8 = pg_sys::XLOG_END_OF_RECOVERY as u8;
pub const XLOG_PARAMETER_CHANGE: u8 = pg_sys::XLOG_PARAMETER_CHANGE as u8;

#[cfg(any(feature = "pg17", feature = "pg18"))]
pub const XLOG_CHECKPOINT_REDO: Option<u8> = Some(pg_sys::XLOG_CHECKPOINT_REDO as u8);
#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15", feature = "pg16"))]
pub const XLOG_CHECKPOINT_REDO: Option<u8> = None;

pub const XLOG_SMGR_CREATE: u8 = 0x10;
pub const XLOG_SMGR_TRUNCATE: u8 = 0x20;
pub const SMGR_TRUNCATE_HEAP: u32 = 0x0001;
pub const SMGR_TRUNCATE_VM: u32 = 0x0002;

#[cfg(any(feature = "pg15", feature = "pg16", feature = "pg17", feature = "pg18"))]
pub mod dbase {
    pub const CREATE_FILE_COPY: u8 = 0x00;
    pub const CREATE_WAL_LOG: Option<u8> = Some(0x10);
    pub const DROP: u8 = 0x20;
}

#[cfg(any(feature = "pg13", feature = "pg14"))]
pub mod dbase {
    pub const CREATE_FILE_COPY: u8 = 0x00;
    pub const CREATE_WAL_LOG: Option<u8> = None;
    pub const DROP: u8 = 0x10;
}

/// Offset of `wal_level` in xl_parameter_change: after five ints.
pub const PARAMETER_CHANGE_WAL_LEVEL_OFFSET: usize = 20;

/// A relation as the server names it, whatever the version calls the type.
#[derive(Clone, Copy, Debug)]
pub struct RelationLocator {
    pub spc_oid: u32,
    pub db_oid: u32,
    pub rel_number: u32,
}

#[cfg(any(feature = "pg13", feature = "pg14", feature = "pg15"))]
mod locator {
    use super::RelationLocator;
    use pgrx::pg_sys;

    pub type ServerLocator = pg_sys::RelFileNode;

    pub fn from_server(node: &ServerLocator) -> RelationLocator {
        RelationLocator {
            spc_oid: node.spcNode.to_u32(),
            db_oid: node.dbNode.to_u32(),
            rel_number: node.relNode.to_u32(),
        }
    }

    pub fn block_locator(block: &pg_sys::DecodedBkpBlock) -> &ServerLocator {
        &block.rnode
    }

    pub fn committed_drops(parsed: &pg_sys::xl_xact_parsed_commit) -> (*const ServerLocator, i32) {
        (parsed.xnodes, parsed.nrels)
    }

    pub fn aborted_drops(parsed: &pg_sys::xl_xact_parsed_abort) -> (*const ServerLocator, i32) {
        (parsed.xnodes, parsed.nrels)
    }
}

#[cfg(any(feature = "pg16", feature = "pg17", feature = "pg18"))]
mod locator {
    use super::RelationLocator;
    use pgrx::pg_sys;

    pub type ServerLocator = pg_sys::RelFileLocator;

    pub fn from_server(node: &ServerLocator) -> RelationLocator {
        RelationLocator {
            spc_oid: node.spcOid.to_u32(),
            db_oid: node.dbOid.to_u32(),
            rel_number: node.relNumber.to_u32(),
        }
    }

    pub fn block_locator(block: &pg_sys::DecodedBkpBlock) -> &ServerLocator {
        &block.rlocator
    }

    pub fn committed_drops(parsed: &pg_sys::xl_xact_parsed_commit) -> (*const ServerLocator, i32) {
        (parsed.xlocators, parsed.nrels)
    }

    pub fn aborted_drops(parsed: &pg_sys::xl_xact_parsed_abort) -> (*const ServerLocator, i32) {
        (parsed.xlocators, parsed.nrels)
    }
}

pub use locator::{aborted_drops, block_locator, committed_drops, from_server};

/// Reads a little-endian-native u32 at `offset` of a record's main data.
pub fn read_u32(data: &[u8], offset: usize) -> Option<u32> {
    data.get(offset..offset + 4)
        .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

/// The relation of an xl_smgr_create ({locator, fork}) or the block count,
/// relation and flags of an xl_smgr_truncate ({blkno, locator, flags}).
pub fn relation_at(data: &[u8], offset: usize) -> Option<RelationLocator> {
    Some(RelationLocator {
        spc_oid: read_u32(data, offset)?,
        db_oid: read_u32(data, offset + 4)?,
        rel_number: read_u32(data, offset + 8)?,
    })
}
