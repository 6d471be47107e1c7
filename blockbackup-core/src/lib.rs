//! The server-independent core of pg_blockbackup: everything that is only
//! bytes and files, so that it is unit-, property- and corruption-tested
//! without a server and reused by the offline command.
//!
//! * [`summary`]: what a span of WAL changed, block by block, and the
//!   summaries directory that records it;
//! * [`backup`]: what a backup copies (the plan), how (the copy pipeline,
//!   incremental files, page checksums), and its manifest;
//! * [`repository`]: the backups on disk, their catalog, chains,
//!   validation, retention and upkeep;
//! * [`restore`]: rebuilding files from a chain, the restore run, and where
//!   a restore may write;
//! * [`dump`]: pg_dump requests and the supervised pg_dump process;
//! * [`compress`]: the codecs stored files are written and read with;
//! * [`storage`]: the one interface to where the repository is kept, with
//!   the local directory as its first driver;
//! * [`wal`]: WAL file names and segment headers, and the continuous WAL
//!   archive in the repository.
//!
//! Nothing here depends on a running server; the extension feeds it events
//! read from WAL and LSNs it gets from PostgreSQL.

pub mod backup;
pub mod civil_time;
pub mod cluster;
pub mod compress;
pub mod content_checksum;
pub mod dump;
pub mod lsn;
pub mod relfork;
pub mod repository;
pub mod restore;
pub mod safe_fs;
pub mod safe_path;
pub mod storage;
pub mod summary;
pub mod wal;

pub use lsn::{Lsn, LsnParseError};
pub use relfork::{relation_path, ForkNumber, RelFork};
pub use summary::block_map::{BlockMap, ForkChanges};
pub use summary::directory::{
    list_gaps, list_summaries, read_summary, remove_expired, write_file_durably, GapRecord,
    SummaryDirError, SummaryEntry, SummaryName,
};
pub use summary::file::{decode_summary, encode_summary, SummaryFileError, SummaryHeader};
pub use summary::range_plan::{plan_range, CoverageError, RangePlan, TimelineSpan};
pub use summary::visibility_map::visibility_map_truncation_length;
