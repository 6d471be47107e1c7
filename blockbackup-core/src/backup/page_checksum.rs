//! PostgreSQL's data page checksums, checked while a backup reads
//! relation files, as `pg_basebackup` and pgBackRest do: a page damaged on
//! disk is found when it is copied, not years later when it is restored.
//!
//! The checksum is PostgreSQL's (`storage/checksum_impl.h`): the page,
//! with its `pd_checksum` field taken as zero, is read as 32 interleaved
//! streams of little-endian 32-bit words, each folded into its own
//! FNV-1a-like sum; two more rounds of zeros mix them, they are XORed
//! together, the block number is mixed in (so that a page written to the
//! wrong place fails too), and the result is reduced to 1..=65535.
//!
//! Which pages are checked follows `pg_basebackup`: new pages (never
//! initialized, `pd_upper` zero) have no checksum, and a page whose LSN is
//! at or past the backup's start LSN may be being written right now; WAL
//! replay from the start rewrites it anyway. Any other mismatch is read
//! once more before it counts, since a page can be torn by a concurrent
//! write between two reads of the same copy.

use crate::lsn::Lsn;

const N_SUMS: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F_36E9,
    0xB852_5960,
    0x02AB_50AA,
    0x1DE6_6D2A,
    0x79FF_467A,
    0x9BB9_F8A3,
    0x217E_7CD2,
    0x83E1_3D2C,
    0xF8D4_474F,
    0xE39E_B970,
    0x42C6_AE16,
    0x9932_16FA,
    0x7B09_3B5D,
    0x98DA_FF3C,
    0xF718_902A,
    0x0B1C_9CDB,
    0xE58F_764B,
    0x1876_36BC,
    0x5D7B_3BB1,
    0xE73D_E7DE,
    0x92BE_C979,
    0xCCA6_C0B2,
    0x304A_0979,
    0x85AA_43D4,
    0x7831_25BB,
    0x6CA8_EAA2,
    0xE407_EAC6,
    0x4B5C_FC3E,
    0x9FBF_8C76,
    0x15CA_20BE,
    0xF2CA_9FD3,
    0x959B_D756,
];
/// Where `pd_checksum` and `pd_upper` sit in the page header.
const CHECKSUM_OFFSET: usize = 8;
const UPPER_OFFSET: usize = 14;

fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// The checksum PostgreSQL computes for `page` (a whole page, a multiple
/// of 128 bytes) stored as block `block_number` of its relation fork.
pub fn page_checksum(page: &[u8], block_number: u32) -> u16 {
    let mut sums = BASE_OFFSETS;
    for (index, word) in page.chunks_exact(4).enumerate() {
        let mut bytes = [word[0], word[1], word[2], word[3]];
        let offset = index * 4;
        if offset == CHECKSUM_OFFSET {
            // pd_checksum (the word's low half) counts as zero.
            bytes[0] = 0;
            bytes[1] = 0;
        }
        let lane = index % N_SUMS;
        sums[lane] = mix(sums[lane], u32::from_le_bytes(bytes));
    }
    for _ in 0..2 {
        for sum in &mut sums {
            *sum = mix(*sum, 0);
        }
    }
    let folded = sums.iter().fold(0u32, |acc, sum| acc ^ sum) ^ block_number;
    (folded % 65_535 + 1) as u16
}

/// What checking one page found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageCheck {
    Valid,
    /// New, or changed at or after the backup's start: not checked.
    Skipped,
    Mismatch {
        stored: u16,
        computed: u16,
    },
}

/// Checks `page`, block `block_number` of its fork, for a backup that
/// started at `start_lsn`.
pub fn check_page(page: &[u8], block_number: u32, start_lsn: Lsn) -> PageCheck {
    let u16_at = |at: usize| u16::from_le_bytes([page[at], page[at + 1]]);
    let u32_at =
        |at: usize| u32::from_le_bytes([page[at], page[at + 1], page[at + 2], page[at + 3]]);
    let upper = u16_at(UPPER_OFFSET);
    let lsn = Lsn(u64::from(u32_at(0)) << 32 | u64::from(u32_at(4)));
    if upper == 0 || lsn >= start_lsn {
        return PageCheck::Skipped;
    }
    let stored = u16_at(CHECKSUM_OFFSET);
    let computed = page_checksum(page, block_number);
    if stored == computed {
        PageCheck::Valid
    } else {
        PageCheck::Mismatch { stored, computed }
    }
}

/// For a path relative to the data directory, the segment number of the
/// relation file it is (`base/5/16384.2` is segment 2), or None when it is
/// not a relation file (pg_control, pg_filenode.map, PG_VERSION, ...): the
/// files whose pages carry checksums.
pub fn relation_segment(path: &str) -> Option<u32> {
    let parts: Vec<&str> = path.split('/').collect();
    let name = match parts.as_slice() {
        ["global", name] => name,
        ["base", db, name] if is_oid(db) => name,
        ["pg_tblspc", spc, version, db, name]
            if is_oid(spc) && version.starts_with("PG_") && is_oid(db) =>
        {
            name
        }
        _ => return None,
    };
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) if is_oid(segment) => (stem, segment.parse().ok()?),
        Some(_) => return None,
        None => (*name, 0),
    };
    let relation = match stem.split_once('_') {
        Some((relation, "fsm" | "vm" | "init")) => relation,
        Some(_) => return None,
        None => stem,
    };
    is_oid(relation).then_some(segment)
}

fn is_oid(text: &str) -> bool {
    !text.is_empty() && text.len() <= 10 && text.bytes().all(|b| b.is_ascii_digit())
}

/// A page whose checksum did not match when the backup read it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PageChecksumFailure {
    /// The file, relative to the data directory.
    pub path: String,
    /// The block number within the relation fork.
    pub block: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as PostgreSQL lays one out: an LSN, pd_upper set, content,
    /// and its checksum in place.
    fn page(block: u32, lsn: u64, fill: u8) -> Vec<u8> {
        let mut page = vec![fill; 8192];
        page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
        page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
        page[14..16].copy_from_slice(&8000u16.to_le_bytes());
        let checksum = page_checksum(&page, block);
        page[8..10].copy_from_slice(&checksum.to_le_bytes());
        page
    }

    #[test]
    fn the_checksum_ignores_its_own_field_and_depends_on_the_block() {
        let page = page(7, 0x1_0000_0000, 3);
        let mut other_field = page.clone();
        other_field[8..10].copy_from_slice(&[0xAB, 0xCD]);
        assert_eq!(page_checksum(&page, 7), page_checksum(&other_field, 7));
        assert_ne!(page_checksum(&page, 7), page_checksum(&page, 8));
        assert!(page_checksum(&page, 7) != 0);
    }

    #[test]
    fn pages_are_checked_as_pg_basebackup_checks_them() {
        let start = Lsn(0x2_0000_0000);
        let good = page(7, 0x1_0000_0000, 3);
        assert_eq!(check_page(&good, 7, start), PageCheck::Valid);
        assert!(matches!(
            check_page(&good, 8, start),
            PageCheck::Mismatch { .. }
        ));
        let mut flipped = good.clone();
        flipped[4000] ^= 0xFF;
        assert!(matches!(
            check_page(&flipped, 7, start),
            PageCheck::Mismatch { .. }
        ));
        // Newer than the backup's start, or never initialized: not checked.
        let newer = page(7, 0x2_0000_0000, 3);
        let mut newer_flipped = newer.clone();
        newer_flipped[4000] ^= 0xFF;
        assert_eq!(check_page(&newer_flipped, 7, start), PageCheck::Skipped);
        assert_eq!(check_page(&vec![0u8; 8192], 7, start), PageCheck::Skipped);
    }

    #[test]
    fn relation_files_are_told_from_the_rest() {
        for (path, segment) in [
            ("global/1262", Some(0)),
            ("base/5/16384", Some(0)),
            ("base/5/16384.3", Some(3)),
            ("base/5/16384_fsm", Some(0)),
            ("base/5/16384_vm.1", Some(1)),
            ("base/5/16384_init", Some(0)),
            ("pg_tblspc/16400/PG_15_202209061/5/16500.1", Some(1)),
            ("global/pg_control", None),
            ("global/pg_filenode.map", None),
            ("base/5/PG_VERSION", None),
            ("base/5/pg_internal.init", None),
            ("base/5/t3_16384", None),
            ("base/5/16384_other", None),
            ("base/5/16384.x", None),
            ("pg_wal/000000010000000000000001", None),
            ("PG_VERSION", None),
            ("pg_tblspc/16400/other/5/16500", None),
        ] {
            assert_eq!(relation_segment(path), segment, "{path}");
        }
    }
}
