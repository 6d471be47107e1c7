//! Incremental file headers round-trip, and damaged or hostile headers are
//! rejected without panicking or allocating from a lying count.

use blockbackup_core::backup::incremental_file::{
    incremental_path, read_incremental_header, restored_path, IncrementalError, IncrementalHeader,
};
use proptest::prelude::*;

fn header() -> impl Strategy<Value = IncrementalHeader> {
    (
        10u32..=15,
        1u32..2000,
        prop::collection::btree_set(0u32..2000, 0..100),
    )
        .prop_map(|(shift, truncation_blocks, blocks)| IncrementalHeader {
            block_size: 1 << shift,
            truncation_blocks,
            blocks: blocks
                .into_iter()
                .filter(|&b| b < truncation_blocks)
                .collect(),
        })
}

/// Re-seals a modified header with a correct CRC, so that the checks
/// behind the CRC are exercised.
fn reseal(mut bytes: Vec<u8>) -> Vec<u8> {
    let end = bytes.len() - 4;
    let crc = crc32c::crc32c(&bytes[..end]);
    bytes[end..].copy_from_slice(&crc.to_le_bytes());
    bytes
}

fn set_word(bytes: &mut [u8], at: usize, value: u32) {
    bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

proptest! {
    #[test]
    fn round_trips(header in header(), trailing in prop::collection::vec(any::<u8>(), 0..10)) {
        let mut bytes = header.encode();
        prop_assert_eq!(bytes.len() as u64, header.header_len());
        prop_assert_eq!(
            header.encoded_len(),
            header.header_len() + header.blocks.len() as u64 * u64::from(header.block_size)
        );
        bytes.extend_from_slice(&trailing);
        let mut reader = bytes.as_slice();
        let decoded = read_incremental_header(&mut reader).unwrap();
        prop_assert_eq!(&decoded, &header);
        // The reader stops exactly at the first data byte.
        prop_assert_eq!(reader, trailing.as_slice());
    }

    #[test]
    fn any_flipped_bit_is_rejected(header in header(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
        let mut bytes = header.encode();
        let at = at.index(bytes.len());
        bytes[at] ^= 1 << bit;
        prop_assert!(read_incremental_header(&mut bytes.as_slice()).is_err());
    }

    #[test]
    fn any_truncation_is_rejected(header in header(), cut in any::<prop::sample::Index>()) {
        let bytes = header.encode();
        let cut = cut.index(bytes.len());
        let result = read_incremental_header(&mut &bytes[..cut]);
        prop_assert!(matches!(result, Err(IncrementalError::TruncatedHeader)), "{:?}", result);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
        let _ = read_incremental_header(&mut bytes.as_slice());
    }

    #[test]
    fn arbitrary_resealed_headers_never_panic(
        block_size in any::<u32>(), truncation in any::<u32>(),
        blocks in prop::collection::vec(any::<u32>(), 0..20),
    ) {
        let bytes = IncrementalHeader { block_size, truncation_blocks: truncation, blocks }.encode();
        if let Ok(header) = read_incremental_header(&mut bytes.as_slice()) {
            prop_assert!(header.blocks.windows(2).all(|w| w[0] < w[1]));
            prop_assert!(header.blocks.iter().all(|&b| b < header.truncation_blocks));
        }
    }
}

#[test]
fn semantic_checks_behind_the_crc() {
    let good = IncrementalHeader {
        block_size: 8192,
        truncation_blocks: 10,
        blocks: vec![1, 4, 9],
    };
    let reject = |bytes: Vec<u8>| read_incremental_header(&mut bytes.as_slice()).unwrap_err();

    let mut bytes = good.encode();
    bytes[0] = b'X';
    assert!(matches!(reject(reseal(bytes)), IncrementalError::BadMagic));

    let mut bytes = good.encode();
    set_word(&mut bytes, 8, 2);
    assert!(matches!(
        reject(reseal(bytes)),
        IncrementalError::UnsupportedVersion(2)
    ));

    for block_size in [0, 512, 3000, 65536] {
        let mut bytes = good.encode();
        set_word(&mut bytes, 12, block_size);
        assert!(
            matches!(reject(reseal(bytes)), IncrementalError::BadBlockSize(b) if b == block_size)
        );
    }

    // 2^32 / 8192 blocks is the largest segment.
    let mut bytes = good.encode();
    set_word(&mut bytes, 16, (1 << 19) + 1);
    assert!(matches!(
        reject(reseal(bytes)),
        IncrementalError::TooLong { .. }
    ));

    // A count above the length is rejected before anything is allocated.
    let mut bytes = good.encode();
    set_word(&mut bytes, 20, u32::MAX);
    assert!(matches!(
        reject(bytes),
        IncrementalError::TooManyBlocks { .. }
    ));
    // A plausible count in a short file ends as truncation, not allocation.
    let huge = IncrementalHeader {
        block_size: 1024,
        truncation_blocks: 1 << 22,
        blocks: vec![],
    };
    let mut bytes = huge.encode();
    set_word(&mut bytes, 20, 1 << 22);
    assert!(matches!(reject(bytes), IncrementalError::TruncatedHeader));

    for blocks in [vec![4, 4], vec![4, 1], vec![10], vec![0, 11]] {
        let bytes = IncrementalHeader {
            blocks: blocks.clone(),
            ..good.clone()
        }
        .encode();
        assert!(
            matches!(reject(bytes), IncrementalError::BadBlockNumber { .. }),
            "{blocks:?} accepted"
        );
    }

    let mut bytes = good.encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    assert!(matches!(
        reject(bytes),
        IncrementalError::HeaderChecksum { .. }
    ));
}

#[test]
fn names_round_trip() {
    for path in [
        "base/5/16384",
        "base/5/16384.2",
        "pg_tblspc/16385/PG_15_202209061/5/16390_vm",
        "1",
    ] {
        let stored = incremental_path(path);
        assert!(stored
            .rsplit('/')
            .next()
            .unwrap()
            .starts_with("INCREMENTAL."));
        assert_eq!(restored_path(&stored).as_deref(), Some(path));
        assert_eq!(restored_path(path), None);
    }
    assert_eq!(
        incremental_path("base/5/16384.2"),
        "base/5/INCREMENTAL.16384.2"
    );
}
