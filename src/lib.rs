//! pg_blockbackup: block-level WAL summaries and incremental backups from SQL.
//!
//! This crate is the thin pgrx layer. Everything that is only bytes and files
//! (block maps, summary files, coverage of an LSN range) lives in the
//! pgrx-free `blockbackup-core` crate; here we register the settings, the
//! shared state and the summarizer worker, and expose the SQL functions.

use pgrx::prelude::*;

mod agent;
mod api;
mod archive;
mod backup;
mod cluster;
mod errors;
mod read_only_sql;
mod replication_slot;
mod server_paths;
mod server_tests;
mod settings;
mod shared_condition;
mod shared_state;
mod sql_types;
mod summarizer;
mod summary_access;
mod timeline;

#[cfg(test)]
pub use server_tests::pg_test;

::pgrx::pg_module_magic!(name, version);

/// Shared memory and the worker can only be set up while the postmaster
/// loads us through `shared_preload_libraries`; loaded later (for example by
/// `CREATE EXTENSION` alone) we register only the settings, and every SQL
/// function then explains how to preload the library.
#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    settings::register();
    if unsafe { !pg_sys::process_shared_preload_libraries_in_progress } {
        return;
    }
    shared_state::request();
    summarizer::register_worker();
}

extension_sql_file!("../sql/revoke_from_public.sql", finalize);
