//! Restoring a backup chain: the rebuild of one file from the chain
//! ([`rebuild`]), the whole run into a directory ([`run`]), where a restore
//! may write ([`target`]), where recovery stops and whether the WAL to get
//! there is at hand ([`recovery_target`]), the configuration file syntax
//! it writes and reads ([`conf_file`]), and the settings a caller adds to
//! the copy's configuration ([`extra_settings`]).

pub mod conf_file;
pub mod extra_settings;
pub mod rebuild;
pub mod recovery_target;
pub mod run;
pub mod target;

pub use rebuild::{chain_members, reconstruct_file, ChainMember, ReconstructedFile, RestoreError};
pub use run::{
    restore, restore_backup, RecoveryExtras, RestoreOptions, RestoreProgress, RestoreStats, MARKER,
};
