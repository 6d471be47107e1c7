//! Summary files round-trip any map, and no input makes decoding panic.

use blockbackup_core::{
    decode_summary, encode_summary, BlockMap, ForkNumber, Lsn, RelFork, SummaryHeader,
};
use proptest::prelude::*;

fn map() -> impl Strategy<Value = BlockMap> {
    let fork = prop::sample::select(vec![
        ForkNumber::Main,
        ForkNumber::Fsm,
        ForkNumber::VisibilityMap,
        ForkNumber::Init,
    ]);
    let rel_fork =
        (0u32..3, 0u32..3, 1u32..5, fork).prop_map(|(spc_oid, db_oid, rel_number, fork)| RelFork {
            spc_oid,
            db_oid,
            rel_number,
            fork,
        });
    let block = prop_oneof![0u32..100, any::<u32>()];
    let modifications = prop::collection::vec((rel_fork.clone(), block.clone()), 0..200);
    let limits = prop::collection::vec((rel_fork, block), 0..5);
    let databases = prop::collection::vec((0u32..3, 0u32..3), 0..2);
    (modifications, limits, databases).prop_map(|(modifications, limits, databases)| {
        let mut map = BlockMap::new();
        for (rf, block) in modifications {
            map.mark_block_modified(rf, block);
        }
        for (rf, limit) in limits {
            map.set_limit_block(rf, limit);
        }
        for (spc, db) in databases {
            map.mark_database_replaced(spc, db);
        }
        map
    })
}

fn header() -> impl Strategy<Value = SummaryHeader> {
    (any::<u32>(), any::<u64>(), any::<u64>()).prop_map(|(timeline, a, b)| SummaryHeader {
        timeline,
        start_lsn: Lsn(a.min(b)),
        end_lsn: Lsn(a.max(b)),
    })
}

proptest! {
    #[test]
    fn round_trips(header in header(), map in map()) {
        let (decoded_header, decoded_map) = decode_summary(&encode_summary(&header, &map)).unwrap();
        prop_assert_eq!(decoded_header, header);
        prop_assert!(decoded_map == map);
        prop_assert_eq!(decoded_map.total_blocks(), map.total_blocks());
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = decode_summary(&bytes);
    }

    /// Damage with a recomputed checksum reaches the structural checks,
    /// which must reject or accept without panicking, and anything accepted
    /// must be a valid map. (Not necessarily byte-identical when re-encoded:
    /// the roaring decoder ignores its container offsets.)
    #[test]
    fn resealed_damage_never_panics(
        header in header(),
        map in map(),
        damage in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
    ) {
        let encoded = encode_summary(&header, &map);
        let mut body = encoded[..encoded.len() - 4].to_vec();
        for (index, value) in damage {
            let at = index.index(body.len());
            body[at] = value;
        }
        let crc = crc32c::crc32c(&body);
        body.extend_from_slice(&crc.to_le_bytes());
        if let Ok((decoded_header, decoded_map)) = decode_summary(&body) {
            let (header_again, map_again) =
                decode_summary(&encode_summary(&decoded_header, &decoded_map)).unwrap();
            prop_assert_eq!(header_again, decoded_header);
            prop_assert!(map_again == decoded_map);
        }
    }
}
