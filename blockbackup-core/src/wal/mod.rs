//! WAL files: the names PostgreSQL gives them, the header that starts a
//! segment, the continuous archive kept in the repository, the queue that
//! fetches from it ahead of recovery, timeline
//! histories, how far recovery can replay from what is there, and which
//! archived WAL no kept backup needs.

pub mod archive;
pub mod history;
pub mod name;
pub mod prefetch;
pub mod ranges;
pub mod reach;
pub mod retention;
pub mod segment_header;

pub use archive::{ArchiveError, ArchivedFile, PushOutcome, WalArchive};
pub use name::{WalFileKind, WalFileName};
pub use prefetch::PrefetchQueue;
pub use ranges::{ranges, ArchivedRange};
