//! Backups from SQL: `take_backup` (full or block-incremental into the
//! repository), the session-bound `backup_start`/`backup_stop` for scripts
//! that copy files themselves, and the repository's upkeep (list,
//! validate, expire, delete) and restore.
//!
//! Everything that is only files lives in the pure crate (plan, copy
//! pipeline, catalog, reconstruction); this module decides, talks to the
//! server (backup start/stop, WAL, summaries) and reports progress.

pub mod pg_backup_functions;
pub mod progress;
pub mod repository_access;
pub mod restore;
pub mod restore_point;
mod restore_point_search;
pub mod session_backup;
pub mod take;
mod wal_copy;
mod wal_hold;
