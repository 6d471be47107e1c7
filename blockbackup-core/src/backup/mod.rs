//! Taking a backup, the parts that are only files: which files go and how
//! ([`plan`]), the parallel copy into the repository ([`copy`]), the format
//! of a file that holds only changed blocks ([`incremental_file`]), page
//! checksums checked on the way ([`page_checksum`]), and PostgreSQL's
//! `backup_manifest` ([`manifest`]), and the `tablespace_map` it reads and
//! a restore writes ([`tablespace_map`]).

pub mod copy;
pub mod incremental_file;
pub mod manifest;
pub mod page_checksum;
pub mod plan;
pub mod tablespace_map;
