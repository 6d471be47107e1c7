//! Random histories of one relation file (block writes, growth and
//! truncations between backups), backed up as a full backup followed by
//! whole or incremental copies the way the backup side makes them: every
//! chain prefix reconstructs to exactly the file as it was at that backup.

mod restore_support;

use std::collections::BTreeSet;

use blockbackup_core::repository::catalog::Compression;
use blockbackup_core::restore::reconstruct_file;
use proptest::prelude::*;
use restore_support::*;

const REL: &str = "base/5/16384.1";

#[derive(Clone, Debug)]
enum Op {
    Write(u32),
    Truncate(u32),
}

#[derive(Clone, Debug)]
struct Interval {
    ops: Vec<Op>,
    whole: bool,
    /// Blocks listed although unchanged (a superset is always allowed).
    extra: Vec<u32>,
}

fn interval() -> impl Strategy<Value = Interval> {
    let op = prop_oneof![3 => any::<u32>().prop_map(Op::Write), 1 => any::<u32>().prop_map(Op::Truncate)];
    (
        prop::collection::vec(op, 0..8),
        prop::bool::weighted(0.2),
        prop::collection::vec(any::<u32>(), 0..3),
    )
        .prop_map(|(ops, whole, extra)| Interval { ops, whole, extra })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn chains_reconstruct_the_model(intervals in prop::collection::vec(interval(), 1..6), gzip in any::<bool>()) {
        let compression = if gzip { Compression::Gzip } else { Compression::None };
        let dir = tempfile::tempdir().unwrap();
        let mut file: Vec<Vec<u8>> = Vec::new();
        let mut backups = Vec::new();
        let mut snapshots = Vec::new();
        for (k, interval) in intervals.iter().enumerate() {
            let mut written = BTreeSet::new();
            let mut limit = u32::MAX;
            for (i, op) in interval.ops.iter().enumerate() {
                let len = file.len() as u32;
                match *op {
                    Op::Write(raw) => {
                        let b = raw % (len + 3);
                        if b >= len {
                            file.resize(b as usize + 1, vec![0; BLOCK]);
                        }
                        file[b as usize] = block((k * 16 + i + 1) as u8, b);
                        written.insert(b);
                    }
                    Op::Truncate(raw) => {
                        let n = raw % (len + 1);
                        file.truncate(n as usize);
                        limit = limit.min(n);
                    }
                }
            }
            let id = format!("B{k}");
            let parent = (k > 0).then(|| format!("B{}", k - 1));
            let record = record(&id, parent.as_deref(), compression, 0x1000 * (k as u64 + 1));
            let stored = if k == 0 || interval.whole {
                whole(REL, file.concat())
            } else {
                let len = file.len() as u32;
                let mut listed: BTreeSet<u32> = written.into_iter().filter(|&b| b < len).collect();
                listed.extend(limit.min(len)..len);
                if len > 0 {
                    listed.extend(interval.extra.iter().map(|e| e % len));
                }
                let blocks: Vec<(u32, Vec<u8>)> = listed.into_iter().map(|b| (b, file[b as usize].clone())).collect();
                incremental(REL, len, &blocks)
            };
            backups.push(write_backup(dir.path(), record, vec![stored]));
            snapshots.push(file.concat());
        }
        for (k, expected) in snapshots.iter().enumerate() {
            let mut out = Vec::new();
            let result = reconstruct_file(&chain(&backups[..=k]), REL, &mut out).unwrap();
            prop_assert_eq!(&out, expected, "after backup {}", k);
            prop_assert_eq!(result.size, expected.len() as u64);
            prop_assert_eq!(result.crc32c, crc32c::crc32c(expected));
        }
    }
}
