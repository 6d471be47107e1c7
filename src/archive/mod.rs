//! Continuous WAL archiving by the extension itself, as an archive module
//! (`archive_library = 'pg_blockbackup'`): the archiver process hands every
//! finished WAL segment and history file to [`push::archive_file`], which
//! stores it in the repository's archive (`blockbackup_core::wal`) through
//! the storage seam, compressed with `blockbackup.compression`, and returns
//! true only once it is durable. Anything that goes wrong returns false
//! with one log line saying what and why: PostgreSQL keeps the file and
//! tries again, so nothing is lost while the repository is full or away.
//!
//! The archiver is not a backend: it has no database and no transaction,
//! and an ERROR there restarts it (15) or is turned into a failed attempt
//! (16 on). So nothing here raises: every failure is a value, logged.
//!
//! * [`module`]: the callbacks PostgreSQL looks up, one shape per version;
//! * [`push`]: one file into the repository;
//! * [`status`]: the last failure, in shared memory, for `archive_status()`.

pub mod module;
pub mod push;
pub mod status;
