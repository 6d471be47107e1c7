//! The on-disk form of one summary: a header naming the WAL span, the
//! entries of its block map in `RelFork` order, and a CRC-32C trailer.
//!
//! All integers are little-endian. Layout:
//!
//! ```text
//! magic "PGBBSUM1" | version u32 | timeline u32 | start_lsn u64 | end_lsn u64 | entry count u32
//! per entry: spc u32 | db u32 | rel u32 | fork u8 | 3 zero bytes | limit u32 (u32::MAX: none)
//!            | bitmap length u32 | roaring portable serialization
//! CRC-32C u32 of everything before it
//! ```
//!
//! Decoding trusts nothing: the checksum is verified before anything else
//! is read, and every length is checked against the bytes that remain
//! before it is used, so a damaged file is an error, never a panic or a
//! huge allocation.

use roaring::RoaringBitmap;
use thiserror::Error;

use crate::lsn::Lsn;
use crate::relfork::{ForkNumber, RelFork};
use crate::summary::block_map::{BlockMap, ForkChanges};

const MAGIC: &[u8; 8] = b"PGBBSUM1";
const FORMAT_VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 4;
const ENTRY_FIXED_BYTES: usize = 4 + 4 + 4 + 1 + 3 + 4 + 4;
const TRAILER_BYTES: usize = 4;
const NO_LIMIT: u32 = u32::MAX;

/// The WAL span a summary describes: [start_lsn, end_lsn) on `timeline`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SummaryHeader {
    pub timeline: u32,
    pub start_lsn: Lsn,
    pub end_lsn: Lsn,
}

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SummaryFileError {
    #[error("file is truncated: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("not a pg_blockbackup summary (bad magic number)")]
    BadMagic,
    #[error("unsupported summary format version {0} (this build reads version {FORMAT_VERSION})")]
    UnsupportedVersion(u32),
    #[error("checksum mismatch: stored {stored:08X}, computed {computed:08X}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("malformed summary: {0}")]
    Malformed(String),
}

pub fn encode_summary(header: &SummaryHeader, map: &BlockMap) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        HEADER_BYTES + map.len_forks() * (ENTRY_FIXED_BYTES + 16) + TRAILER_BYTES,
    );
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&header.timeline.to_le_bytes());
    out.extend_from_slice(&header.start_lsn.0.to_le_bytes());
    out.extend_from_slice(&header.end_lsn.0.to_le_bytes());
    // A map cannot hold 2^32 entries in memory, nor a bitmap 4 GiB of
    // serialization (all 2^32 blocks take about 512 MiB), so the `as u32`
    // casts below cannot truncate.
    out.extend_from_slice(&(map.len_forks() as u32).to_le_bytes());
    for (rf, changes) in map.iter_sorted() {
        out.extend_from_slice(&rf.spc_oid.to_le_bytes());
        out.extend_from_slice(&rf.db_oid.to_le_bytes());
        out.extend_from_slice(&rf.rel_number.to_le_bytes());
        out.push(rf.fork as u8);
        out.extend_from_slice(&[0; 3]);
        out.extend_from_slice(&changes.limit_block.unwrap_or(NO_LIMIT).to_le_bytes());
        // Runs of consecutive blocks (a table scanned or rewritten whole)
        // are stored as runs: a full 64k-block chunk takes a few bytes
        // instead of an 8 kB bitmap. One fork is copied at a time.
        let mut blocks = changes.blocks.clone();
        blocks.optimize();
        out.extend_from_slice(&(blocks.serialized_size() as u32).to_le_bytes());
        blocks
            .serialize_into(&mut out)
            .expect("serializing into a Vec cannot fail");
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

pub fn decode_summary(bytes: &[u8]) -> Result<(SummaryHeader, BlockMap), SummaryFileError> {
    let minimum = HEADER_BYTES + TRAILER_BYTES;
    if bytes.len() < minimum {
        return Err(SummaryFileError::Truncated {
            needed: minimum,
            available: bytes.len(),
        });
    }
    let (body, trailer) = bytes.split_at(bytes.len() - TRAILER_BYTES);
    let stored = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
    let computed = crc32c::crc32c(body);
    if stored != computed {
        return Err(SummaryFileError::ChecksumMismatch { stored, computed });
    }

    let mut reader = Reader { rest: body };
    if reader.take(MAGIC.len())? != MAGIC {
        return Err(SummaryFileError::BadMagic);
    }
    let version = reader.u32()?;
    if version != FORMAT_VERSION {
        return Err(SummaryFileError::UnsupportedVersion(version));
    }
    let header = SummaryHeader {
        timeline: reader.u32()?,
        start_lsn: Lsn(reader.u64()?),
        end_lsn: Lsn(reader.u64()?),
    };
    if header.end_lsn < header.start_lsn {
        return Err(malformed(format!(
            "end LSN {} is before start LSN {}",
            header.end_lsn, header.start_lsn
        )));
    }

    let entry_count = reader.u32()?;
    let mut map = BlockMap::new();
    let mut previous: Option<RelFork> = None;
    for _ in 0..entry_count {
        let (rf, changes) = read_entry(&mut reader)?;
        if previous.is_some_and(|previous| previous >= rf) {
            return Err(malformed(format!("entries out of order at {rf:?}")));
        }
        previous = Some(rf);
        map.insert_decoded(rf, changes);
    }
    if !reader.rest.is_empty() {
        return Err(malformed(format!(
            "{} bytes after the last entry",
            reader.rest.len()
        )));
    }
    Ok((header, map))
}

fn read_entry(reader: &mut Reader<'_>) -> Result<(RelFork, ForkChanges), SummaryFileError> {
    let spc_oid = reader.u32()?;
    let db_oid = reader.u32()?;
    let rel_number = reader.u32()?;
    let fork_byte = reader.take(1)?[0];
    let fork = ForkNumber::from_i32(i32::from(fork_byte))
        .ok_or_else(|| malformed(format!("invalid fork number {fork_byte}")))?;
    if reader.take(3)? != [0; 3] {
        return Err(malformed("nonzero padding".to_owned()));
    }
    let rf = RelFork {
        spc_oid,
        db_oid,
        rel_number,
        fork,
    };
    let limit_block = match reader.u32()? {
        NO_LIMIT => None,
        limit => Some(limit),
    };
    let bitmap_len = reader.u32()? as usize;
    let blocks = read_bitmap(reader.take(bitmap_len)?)
        .map_err(|reason| malformed(format!("block bitmap of {rf:?}: {reason}")))?;

    // What the writer never produces is rejected too, so that damage that
    // slipped past the checksum cannot pass for a valid, different summary.
    if limit_block.is_none() && blocks.is_empty() {
        return Err(malformed(format!("{rf:?} records nothing")));
    }
    if rf.is_database_level()
        && (rf.fork != ForkNumber::Main || limit_block != Some(0) || !blocks.is_empty())
    {
        return Err(malformed(format!("invalid database-level entry {rf:?}")));
    }
    Ok((
        rf,
        ForkChanges {
            limit_block,
            blocks,
        },
    ))
}

/// Deserializes a roaring bitmap that must fill `bytes` exactly.
fn read_bitmap(bytes: &[u8]) -> Result<RoaringBitmap, String> {
    check_container_count_fits(bytes)?;
    let mut rest = bytes;
    let bitmap = RoaringBitmap::deserialize_from(&mut rest).map_err(|error| error.to_string())?;
    if !rest.is_empty() {
        return Err(format!("{} bytes after the bitmap", rest.len()));
    }
    Ok(bitmap)
}

/// The roaring decoder sizes its buffers from the container count in the
/// bitmap's own header; refusing counts whose descriptions alone would not
/// fit in `bytes` keeps those allocations proportional to the input.
fn check_container_count_fits(bytes: &[u8]) -> Result<(), String> {
    const COOKIE_WITHOUT_RUNS: u32 = 12346;
    const COOKIE_WITH_RUNS: u32 = 12347;
    const DESCRIPTION_BYTES: usize = 4;
    let le_u32 = |at: usize| {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| "bitmap header cut short".to_owned())
    };
    let cookie = le_u32(0)?;
    let (containers, header_bytes) = if cookie == COOKIE_WITHOUT_RUNS {
        (le_u32(4)? as usize, 8)
    } else if cookie & 0xFFFF == COOKIE_WITH_RUNS {
        let containers = (cookie >> 16) as usize + 1;
        (containers, 4 + containers.div_ceil(8))
    } else {
        return Err("unknown bitmap cookie".to_owned());
    };
    let needed = containers
        .checked_mul(DESCRIPTION_BYTES)
        .and_then(|descriptions| descriptions.checked_add(header_bytes));
    match needed {
        Some(needed) if needed <= bytes.len() => Ok(()),
        _ => Err(format!(
            "{containers} containers cannot fit in {} bytes",
            bytes.len()
        )),
    }
}

fn malformed(reason: String) -> SummaryFileError {
    SummaryFileError::Malformed(reason)
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, count: usize) -> Result<&'a [u8], SummaryFileError> {
        if count > self.rest.len() {
            return Err(SummaryFileError::Truncated {
                needed: count,
                available: self.rest.len(),
            });
        }
        let (taken, rest) = self.rest.split_at(count);
        self.rest = rest;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32, SummaryFileError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, SummaryFileError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes([
            b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7],
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(rel_number: u32, fork: ForkNumber) -> RelFork {
        RelFork {
            spc_oid: 1663,
            db_oid: 5,
            rel_number,
            fork,
        }
    }

    fn sample() -> (SummaryHeader, BlockMap) {
        let header = SummaryHeader {
            timeline: 3,
            start_lsn: Lsn(0x1_0000_0028),
            end_lsn: Lsn(0x1_0200_0000),
        };
        let mut map = BlockMap::new();
        map.mark_block_modified(rel(16384, ForkNumber::Main), 0);
        map.mark_block_modified(rel(16384, ForkNumber::Main), 70_000);
        for block in 0..5000 {
            map.mark_block_modified(rel(16390, ForkNumber::Main), block * 2);
        }
        map.set_limit_block(rel(16384, ForkNumber::VisibilityMap), 1);
        map.set_limit_block(rel(16388, ForkNumber::Init), 0);
        // A table created in the span and then filled: its blocks lie past
        // its limit 0, as they do for every fork created or re-extended.
        map.set_limit_block(rel(16392, ForkNumber::Main), 0);
        for block in 0..3 {
            map.mark_block_modified(rel(16392, ForkNumber::Main), block);
        }
        map.mark_database_replaced(1663, 4);
        (header, map)
    }

    /// Re-seals `bytes` with a valid checksum, to reach the checks behind it.
    fn reseal(mut body: Vec<u8>) -> Vec<u8> {
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        body
    }

    fn body_of(encoded: &[u8]) -> Vec<u8> {
        encoded[..encoded.len() - TRAILER_BYTES].to_vec()
    }

    #[test]
    fn round_trips() {
        let (header, map) = sample();
        let encoded = encode_summary(&header, &map);
        let (decoded_header, decoded_map) = decode_summary(&encoded).unwrap();
        assert_eq!(decoded_header, header);
        assert_eq!(decoded_map, map);
        assert_eq!(decoded_map.total_blocks(), map.total_blocks());
    }

    #[test]
    fn consecutive_blocks_are_stored_as_runs() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(0x1000),
            end_lsn: Lsn(0x2000),
        };
        let mut map = BlockMap::new();
        for block in 0..200_000 {
            map.mark_block_modified(rel(1, ForkNumber::Main), block);
        }
        for block in (0..200_000).step_by(97) {
            map.mark_block_modified(rel(2, ForkNumber::Main), block);
        }
        let encoded = encode_summary(&header, &map);
        let (_, decoded) = decode_summary(&encoded).unwrap();
        assert_eq!(decoded, map);
        let sparse_alone = {
            let mut m = BlockMap::new();
            for block in (0..200_000).step_by(97) {
                m.mark_block_modified(rel(2, ForkNumber::Main), block);
            }
            encode_summary(&header, &m).len()
        };
        // 200,000 blocks in a row take a few runs, not 4 bitmaps of 8 kB.
        assert!(
            encoded.len() - sparse_alone < 200,
            "{}",
            encoded.len() - sparse_alone
        );
        // What was read back still merges and truncates like any map.
        let mut merged = decoded.clone();
        merged.merge_later(&map);
        merged.set_limit_block(rel(1, ForkNumber::Main), 100_000);
        assert_eq!(
            merged.get(&rel(1, ForkNumber::Main)).unwrap().blocks.len(),
            100_000
        );
    }

    #[test]
    fn empty_map_round_trips() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(10),
            end_lsn: Lsn(10),
        };
        let encoded = encode_summary(&header, &BlockMap::new());
        assert_eq!(encoded.len(), HEADER_BYTES + TRAILER_BYTES);
        let (decoded_header, decoded_map) = decode_summary(&encoded).unwrap();
        assert_eq!(decoded_header, header);
        assert!(decoded_map.is_empty());
    }

    #[test]
    fn header_layout_is_fixed() {
        let (header, map) = sample();
        let encoded = encode_summary(&header, &map);
        assert_eq!(&encoded[..8], b"PGBBSUM1");
        assert_eq!(encoded[8..12], 1u32.to_le_bytes());
        assert_eq!(encoded[12..16], 3u32.to_le_bytes());
        assert_eq!(encoded[16..24], 0x1_0000_0028u64.to_le_bytes());
        assert_eq!(encoded[24..32], 0x1_0200_0000u64.to_le_bytes());
        assert_eq!(encoded[32..36], 6u32.to_le_bytes());
        // The database-level entry sorts first.
        assert_eq!(encoded[36..40], 1663u32.to_le_bytes());
        assert_eq!(encoded[40..44], 4u32.to_le_bytes());
        assert_eq!(encoded[44..48], 0u32.to_le_bytes());
        assert_eq!(encoded[52..56], 0u32.to_le_bytes());
    }

    #[test]
    fn every_single_byte_flip_is_rejected() {
        let (header, map) = sample();
        let encoded = encode_summary(&header, &map);
        for position in 0..encoded.len() {
            for flip in [0x01, 0x80, 0xFF] {
                let mut damaged = encoded.clone();
                damaged[position] ^= flip;
                assert!(
                    decode_summary(&damaged).is_err(),
                    "flip {flip:#x} at {position} accepted"
                );
            }
        }
    }

    #[test]
    fn every_truncation_is_rejected() {
        let (header, map) = sample();
        let encoded = encode_summary(&header, &map);
        for length in 0..encoded.len() {
            assert!(
                decode_summary(&encoded[..length]).is_err(),
                "length {length}"
            );
        }
    }

    #[test]
    fn checksum_is_checked_first() {
        let (header, map) = sample();
        let mut encoded = encode_summary(&header, &map);
        encoded[0] = b'X';
        assert!(matches!(
            decode_summary(&encoded),
            Err(SummaryFileError::ChecksumMismatch { .. })
        ));
    }

    #[test]
    fn bad_magic_and_version_are_named() {
        let (header, map) = sample();
        let encoded = encode_summary(&header, &map);
        let mut body = body_of(&encoded);
        body[0] = b'X';
        assert_eq!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::BadMagic)
        );
        let mut body = body_of(&encoded);
        body[8..12].copy_from_slice(&2u32.to_le_bytes());
        assert_eq!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::UnsupportedVersion(2))
        );
    }

    #[test]
    fn bitmap_length_past_the_end_is_rejected() {
        let (header, map) = sample();
        let mut body = body_of(&encode_summary(&header, &map));
        let first_bitmap_length_at = HEADER_BYTES + 20;
        body[first_bitmap_length_at..first_bitmap_length_at + 4]
            .copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::Truncated { .. })
        ));
    }

    #[test]
    fn huge_entry_count_is_rejected_without_allocating() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(0),
            end_lsn: Lsn(1),
        };
        let mut body = body_of(&encode_summary(&header, &BlockMap::new()));
        body[32..36].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::Truncated { .. })
        ));
    }

    #[test]
    fn bitmap_claiming_many_containers_is_rejected() {
        let mut bitmap = Vec::new();
        bitmap.extend_from_slice(&12346u32.to_le_bytes());
        bitmap.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(read_bitmap(&bitmap).is_err());
        let with_runs = 12347u32 | (0xFFFF << 16);
        assert!(read_bitmap(&with_runs.to_le_bytes()).is_err());
        assert!(read_bitmap(&[]).is_err());
    }

    #[test]
    fn reversed_span_is_rejected() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(2),
            end_lsn: Lsn(1),
        };
        assert!(matches!(
            decode_summary(&encode_summary(&header, &BlockMap::new())),
            Err(SummaryFileError::Malformed(_))
        ));
    }

    #[test]
    fn unordered_entries_are_rejected() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(0),
            end_lsn: Lsn(1),
        };
        let mut map = BlockMap::new();
        map.mark_block_modified(rel(1, ForkNumber::Main), 0);
        map.mark_block_modified(rel(2, ForkNumber::Main), 0);
        let mut body = body_of(&encode_summary(&header, &map));
        let entry_bytes = (body.len() - HEADER_BYTES) / 2;
        let (first, second) = body[HEADER_BYTES..].split_at(entry_bytes);
        let swapped = [second, first].concat();
        body.truncate(HEADER_BYTES);
        body.extend_from_slice(&swapped);
        assert!(matches!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::Malformed(_))
        ));
    }

    #[test]
    fn invalid_fork_number_is_rejected() {
        let header = SummaryHeader {
            timeline: 1,
            start_lsn: Lsn(0),
            end_lsn: Lsn(1),
        };
        let mut map = BlockMap::new();
        map.mark_block_modified(rel(1, ForkNumber::Main), 0);
        let mut body = body_of(&encode_summary(&header, &map));
        body[HEADER_BYTES + 12] = 4;
        assert!(matches!(
            decode_summary(&reseal(body)),
            Err(SummaryFileError::Malformed(_))
        ));
    }
}
