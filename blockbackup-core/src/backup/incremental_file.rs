//! The incremental file format: the changed blocks of one relation segment.
//!
//! An incremental backup stores, for a relation segment file such as
//! `base/5/16384.2`, only the blocks that changed since the parent backup,
//! in a file named `INCREMENTAL.16384.2` in the same directory (the name
//! PostgreSQL 17 uses, so a DBA recognizes it). The file says two things:
//!
//! * `truncation_blocks`: the exact length, in blocks, of the segment at
//!   backup time. Restore produces a file of exactly that length, so a
//!   segment that shrank since the parent shrinks on restore too.
//! * `blocks`: the segment-relative numbers of the blocks stored here,
//!   strictly increasing and all below `truncation_blocks`, followed by
//!   their contents in the same order, `block_size` bytes each. Every other
//!   block below `truncation_blocks` is the one the parent backup has (zeros
//!   when no older backup has that block).
//!
//! Layout, little-endian: magic `PGBBINC1`, version (u32, 1), block size,
//! truncation length, block count, the block numbers (u32 each), a CRC-32C
//! of all header bytes before it, then the block data. The header comes
//! first and is self-contained so that restore can read every source file
//! strictly front to back (gzip'd sources have no random access); the
//! header has its own CRC so that a damaged block list is caught before it
//! is used to place data, and the whole file is further covered by the
//! CRC that `contents.json` records.
//!
//! The header is read from disk, so it is treated as hostile: every count
//! is checked against a bound derived from the others before anything is
//! allocated, and no input makes the reader panic.

use std::io::{self, Read};

use thiserror::Error;

/// The name prefix that marks an incremental file.
pub const INCREMENTAL_PREFIX: &str = "INCREMENTAL.";

const MAGIC: &[u8; 8] = b"PGBBINC1";
const VERSION: u32 = 1;
/// Magic, version, block size, truncation length, block count.
const FIXED_HEADER_LEN: usize = 8 + 4 * 4;
/// Block numbers are read in chunks of this many so that a lying count in
/// a short file never causes a large allocation.
const READ_CHUNK_BLOCKS: usize = 4096;

/// The stored name of the incremental file standing for `path`:
/// `base/5/16384.2` becomes `base/5/INCREMENTAL.16384.2`.
pub fn incremental_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/{INCREMENTAL_PREFIX}{name}"),
        None => format!("{INCREMENTAL_PREFIX}{path}"),
    }
}

/// The inverse of [`incremental_path`]: the path of the file an incremental
/// file stands for, or `None` when `stored` is not an incremental name.
pub fn restored_path(stored: &str) -> Option<String> {
    let (dir, name) = match stored.rsplit_once('/') {
        Some((dir, name)) => (Some(dir), name),
        None => (None, stored),
    };
    let name = name.strip_prefix(INCREMENTAL_PREFIX)?;
    if name.is_empty() {
        return None;
    }
    Some(match dir {
        Some(dir) => format!("{dir}/{name}"),
        None => name.to_owned(),
    })
}

/// Why an incremental file's header (or its length) is unusable.
#[derive(Debug, Error)]
pub enum IncrementalError {
    #[error(
        "not an incremental file: it does not start with the magic {:?}",
        String::from_utf8_lossy(MAGIC)
    )]
    BadMagic,
    #[error(
        "incremental file format version {0} is not supported (this build reads version {VERSION})"
    )]
    UnsupportedVersion(u32),
    #[error("block size {0} is invalid: it must be a power of two from 1024 to 32768")]
    BadBlockSize(u32),
    #[error("truncation length of {truncation_blocks} blocks of {block_size} bytes exceeds the largest possible segment (4 GiB)")]
    TooLong {
        truncation_blocks: u32,
        block_size: u32,
    },
    #[error(
        "the header lists {count} blocks but the file is only {truncation_blocks} blocks long"
    )]
    TooManyBlocks { count: u32, truncation_blocks: u32 },
    #[error("block number {block} (entry {index}) is not above the previous one or not below the truncation length {truncation_blocks}")]
    BadBlockNumber {
        index: usize,
        block: u32,
        truncation_blocks: u32,
    },
    #[error("header checksum mismatch: stored CRC-32C {stored:08x}, computed {computed:08x}")]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("the file ends inside its header")]
    TruncatedHeader,
    #[error("the file has {actual} bytes but its header describes {expected}")]
    WrongLength { expected: u64, actual: u64 },
    #[error("could not read the header: {0}")]
    Read(#[source] io::Error),
}

/// The header of an incremental file (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IncrementalHeader {
    pub block_size: u32,
    pub truncation_blocks: u32,
    pub blocks: Vec<u32>,
}

impl IncrementalHeader {
    /// The header bytes, which the block data follows.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.header_len() as usize);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.truncation_blocks.to_le_bytes());
        // A header with more than u32::MAX blocks cannot be valid; the
        // count saturates and the reader rejects it.
        let count = u32::try_from(self.blocks.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(&count.to_le_bytes());
        for block in &self.blocks {
            out.extend_from_slice(&block.to_le_bytes());
        }
        let crc = crc32c::crc32c(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Bytes of the header alone.
    pub fn header_len(&self) -> u64 {
        (FIXED_HEADER_LEN + 4) as u64 + 4 * self.blocks.len() as u64
    }

    /// Bytes of the whole file: header plus block data.
    pub fn encoded_len(&self) -> u64 {
        self.header_len() + self.blocks.len() as u64 * u64::from(self.block_size)
    }
}

/// Reads and validates the header at the start of an incremental file,
/// leaving `r` at the first byte of block data.
pub fn read_incremental_header(r: &mut impl Read) -> Result<IncrementalHeader, IncrementalError> {
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    read_exact(r, &mut fixed)?;
    if &fixed[..8] != MAGIC {
        return Err(IncrementalError::BadMagic);
    }
    let word =
        |at: usize| u32::from_le_bytes([fixed[at], fixed[at + 1], fixed[at + 2], fixed[at + 3]]);
    let (version, block_size, truncation_blocks, count) = (word(8), word(12), word(16), word(20));
    if version != VERSION {
        return Err(IncrementalError::UnsupportedVersion(version));
    }
    if !(1024..=32768).contains(&block_size) || !block_size.is_power_of_two() {
        return Err(IncrementalError::BadBlockSize(block_size));
    }
    if u64::from(truncation_blocks) > (1u64 << 32) / u64::from(block_size) {
        return Err(IncrementalError::TooLong {
            truncation_blocks,
            block_size,
        });
    }
    if count > truncation_blocks {
        return Err(IncrementalError::TooManyBlocks {
            count,
            truncation_blocks,
        });
    }

    let mut crc = crc32c::crc32c(&fixed);
    let count = count as usize;
    let mut blocks = Vec::with_capacity(count.min(READ_CHUNK_BLOCKS));
    let mut chunk = vec![0u8; 4 * count.min(READ_CHUNK_BLOCKS)];
    while blocks.len() < count {
        let n = (count - blocks.len()).min(READ_CHUNK_BLOCKS);
        let bytes = &mut chunk[..4 * n];
        read_exact(r, bytes)?;
        crc = crc32c::crc32c_append(crc, bytes);
        blocks.extend(
            bytes
                .chunks_exact(4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        );
    }
    let mut stored = [0u8; 4];
    read_exact(r, &mut stored)?;
    let stored = u32::from_le_bytes(stored);
    if stored != crc {
        return Err(IncrementalError::HeaderChecksum {
            stored,
            computed: crc,
        });
    }
    let mut previous: Option<u32> = None;
    for (index, &block) in blocks.iter().enumerate() {
        if previous.is_some_and(|p| block <= p) || block >= truncation_blocks {
            return Err(IncrementalError::BadBlockNumber {
                index,
                block,
                truncation_blocks,
            });
        }
        previous = Some(block);
    }
    Ok(IncrementalHeader {
        block_size,
        truncation_blocks,
        blocks,
    })
}

fn read_exact(r: &mut impl Read, buf: &mut [u8]) -> Result<(), IncrementalError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => IncrementalError::TruncatedHeader,
        _ => IncrementalError::Read(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            incremental_path("base/5/16384.2"),
            "base/5/INCREMENTAL.16384.2"
        );
        assert_eq!(incremental_path("16384"), "INCREMENTAL.16384");
        assert_eq!(
            restored_path("base/5/INCREMENTAL.16384.2").as_deref(),
            Some("base/5/16384.2")
        );
        assert_eq!(restored_path("INCREMENTAL.1").as_deref(), Some("1"));
        assert_eq!(restored_path("base/5/16384"), None);
        assert_eq!(restored_path("base/5/INCREMENTAL."), None);
        assert_eq!(restored_path("base/INCREMENTAL.5/16384"), None);
    }
}
