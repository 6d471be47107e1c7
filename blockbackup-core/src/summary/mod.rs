//! Recording which blocks a span of WAL changed, storing those records,
//! and choosing which records answer a question about a range of WAL.
//!
//! # What a summary says
//!
//! An incremental backup copies, of each relation file, only the blocks that
//! changed since the parent backup. Every change to a block goes through WAL
//! and names the block it touches, so reading WAL once, as it is written,
//! and keeping the set of referenced blocks per relation fork is enough to
//! answer "what changed between LSN a and LSN b" later, without keeping the
//! WAL itself. A [`block_map::BlockMap`] is that set for one contiguous span of WAL,
//! and a summary file is one map on disk, named after its timeline and span.
//!
//! Block references alone are not enough, because files also shrink, vanish
//! and reappear. A block modified and then cut off by a truncation no longer
//! exists; if the relation grows again, the new block at that number may be
//! written without any WAL record naming it (bulk loads into a new
//! relation file, for instance, can skip WAL). So besides the blocks, each
//! fork carries a *limit block*: the smallest length it was truncated to in
//! the span, 0 when it was created or dropped. Whoever uses a summary must
//! treat every block at or past the limit as changed, whatever the block
//! set says. Creating or dropping a whole database is recorded once, as a
//! database-level entry (relation number 0) with limit 0, and voids every
//! entry of that database: its directory has to be copied whole.
//!
//! # Order matters, and merging keeps it
//!
//! The events of a span are applied in WAL order: a modification adds a
//! block, a truncation removes the blocks past the new length and lowers
//! the limit, a database replacement forgets the database's entries. After
//! any sequence of them a fork's state is "the smallest limit seen, plus the
//! blocks modified after the last truncation that would have cut them off".
//! That form composes: the state for spans A then B is obtained from A's and
//! B's states alone ([`block_map::BlockMap::merge_later`]), which is what lets a query
//! over a long range merge many short summaries, and the tests check that a
//! random event sequence gives the same map whether it is recorded in one
//! piece or cut anywhere and merged.
//!
//! # Memory
//!
//! The summarizer calls [`block_map::BlockMap::mark_block_modified`] for every block
//! reference of every record, so it has to be cheap: consecutive references
//! to the same fork reuse the last position found instead of hashing, and
//! blocks go into roaring bitmaps, which cost about two bytes per block for
//! scattered blocks and far less for runs. The map keeps a running estimate
//! of its size so the summarizer can end a summary early and start a new
//! one when a memory cap is reached; summaries are free to end anywhere.
//!
//! # On disk
//!
//! Summary files ([`file`]) are versioned, little-endian and end in
//! a CRC-32C, and decoding treats their content as hostile: a damaged file
//! is an error that names it, never a panic, an outsized allocation or a
//! silently different map. Files are written to a temporary name, synced
//! and renamed ([`directory::write_file_durably`]), so the set of summary
//! names in the directory is an exact catalog of what WAL has been
//! summarized. Spans that could not be summarized (WAL gone before it was
//! read, summarization off, `wal_level = minimal`) leave a small gap record
//! so that an error can say why coverage is missing.
//!
//! # Answering a range
//!
//! [`range_plan::plan_range`] picks a chain of summaries that covers a range
//! without holes, following the server's timeline history so that WAL of an
//! abandoned timeline is never used for the part of the range another
//! timeline owns. A range whose ends fall inside summaries is answered with
//! the whole summaries, a superset that is safe for a backup; a range with
//! any uncovered stretch is an error naming the stretch, never a short
//! answer.

pub mod block_map;
pub mod directory;
pub mod file;
pub mod range_plan;
pub mod visibility_map;
