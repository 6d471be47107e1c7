//! Restoring a backup chain: the rebuild of one file from the chain
//! ([`rebuild`]), the whole run into a directory ([`run`]), where a restore
//! may write ([`target`]), and the configuration file syntax it writes and
//! reads ([`conf_file`]).

pub mod conf_file;
pub mod rebuild;
pub mod run;
pub mod target;

pub use rebuild::{chain_members, reconstruct_file, ChainMember, ReconstructedFile, RestoreError};
pub use run::{restore, restore_backup, RestoreOptions, RestoreProgress, RestoreStats, MARKER};
