//! Planning an incremental backup from a summary loses nothing: for a
//! random history of a relation since the parent backup, recorded into a
//! block map the way the summarizer records WAL (plus blocks marked
//! without changing, as merged summaries do, and growth no WAL names
//! where the summary's limit block allows it), restoring each planned
//! segment over the parent's copy gives the current segment.

use std::path::PathBuf;

use blockbackup_core::backup::plan::{choose_method, FileClass, FileMethod, SourceFile};
use blockbackup_core::relfork::{ForkNumber, RelFork};
use blockbackup_core::summary::block_map::BlockMap;
use proptest::prelude::*;

const BLOCK: u32 = 8192;
const SEGMENT: u32 = 8;
const DB: u32 = 5;
const SPC: u32 = 1663;

fn rf(fork: ForkNumber) -> RelFork {
    RelFork {
        spc_oid: SPC,
        db_oid: DB,
        rel_number: 16384,
        fork,
    }
}

#[derive(Clone, Debug)]
enum Event {
    Modify(u32),
    /// A block reference that did not change the content we model.
    Touch(u32),
    Extend(u32),
    /// Growth that no WAL record names, which the summary contract allows
    /// only past a limit block (after a truncation or a creation).
    ExtendUnlogged(u32),
    Truncate(u32),
    Recreate(u32),
    ReplaceDatabase(u32),
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (0u32..40).prop_map(Event::Modify),
        2 => (0u32..40).prop_map(Event::Touch),
        3 => (1u32..12).prop_map(Event::Extend),
        2 => (1u32..12).prop_map(Event::ExtendUnlogged),
        2 => (0u32..40).prop_map(Event::Truncate),
        1 => (0u32..20).prop_map(Event::Recreate),
        1 => (0u32..20).prop_map(Event::ReplaceDatabase),
    ]
}

/// The file of segment `segment` of a fork with `blocks`, as PostgreSQL
/// keeps it: segment 0 always exists, later ones when they hold blocks or
/// (when `empty_tail`) as the empty files a truncation leaves behind.
fn segment_of(blocks: &[u64], segment: u32, empty_tail: bool) -> Option<Vec<u64>> {
    let start = (segment * SEGMENT) as usize;
    let end = (start + SEGMENT as usize).min(blocks.len());
    if start < blocks.len() {
        Some(blocks[start..end].to_vec())
    } else if segment == 0 || empty_tail {
        Some(Vec::new())
    } else {
        None
    }
}

proptest! {
    #[test]
    fn restoring_the_plan_gives_the_current_file(
        parent_len in 0u32..30,
        parent_exists in any::<bool>(),
        empty_tail in any::<bool>(),
        fork in prop_oneof![Just(ForkNumber::Main), Just(ForkNumber::VisibilityMap)],
        events in prop::collection::vec(event(), 0..25),
    ) {
        let mut version = 0u64;
        let mut fresh = || { version += 1; version };
        let rf = rf(fork);
        let parent: Vec<u64> = if parent_exists {
            (0..parent_len).map(|_| fresh()).collect()
        } else {
            Vec::new()
        };
        let mut current = parent.clone();
        let mut changes = BlockMap::new();
        if !parent_exists {
            changes.set_limit_block(rf, 0);
        }
        for event in &events {
            match *event {
                Event::Modify(block) => {
                    if let Some(slot) = current.get_mut(block as usize) {
                        *slot = fresh();
                        changes.mark_block_modified(rf, block);
                    }
                }
                Event::Touch(block) => changes.mark_block_modified(rf, block),
                Event::Extend(count) => {
                    for _ in 0..count {
                        changes.mark_block_modified(rf, current.len() as u32);
                        current.push(fresh());
                    }
                }
                Event::ExtendUnlogged(count) => {
                    let limited = changes.get(&rf).is_some_and(|fork| fork.limit_block.is_some())
                        || changes.get(&RelFork::database(SPC, DB)).is_some();
                    if limited {
                        for _ in 0..count {
                            current.push(fresh());
                        }
                    }
                }
                Event::Truncate(length) => {
                    if (length as usize) < current.len() {
                        current.truncate(length as usize);
                        changes.set_limit_block(rf, length);
                    }
                }
                Event::Recreate(length) | Event::ReplaceDatabase(length) => {
                    if matches!(event, Event::Recreate(_)) {
                        changes.set_limit_block(rf, 0);
                    } else {
                        changes.mark_database_replaced(SPC, DB);
                    }
                    current = (0..length).map(|_| fresh()).collect();
                    for block in 0..length {
                        changes.mark_block_modified(rf, block);
                    }
                }
            }
        }

        let segments = (current.len() as u32).div_ceil(SEGMENT).max(1);
        for segment in 0..segments {
            let now = segment_of(&current, segment, false).unwrap_or_default();
            let before = if parent_exists {
                segment_of(&parent, segment, empty_tail)
            } else {
                None
            };
            let file = SourceFile {
                path: format!("base/{DB}/16384.{segment}"),
                absolute: PathBuf::new(),
                size: now.len() as u64 * u64::from(BLOCK),
                mtime: 0,
                class: FileClass::Relation { rf, segment },
            };
            let method = choose_method(&file, Some(&changes), before.is_some(), BLOCK, SEGMENT);
            let restored: Vec<Option<u64>> = match method {
                FileMethod::Whole => now.iter().copied().map(Some).collect(),
                FileMethod::Incremental(header) => {
                    prop_assert_eq!(header.block_size, BLOCK);
                    prop_assert!(header.blocks.windows(2).all(|pair| pair[0] < pair[1]));
                    prop_assert!(header.blocks.iter().all(|&b| b < header.truncation_blocks));
                    let before = before.unwrap_or_default();
                    (0..header.truncation_blocks)
                        .map(|block| {
                            if header.blocks.contains(&block) {
                                now.get(block as usize).copied()
                            } else {
                                before.get(block as usize).copied()
                            }
                        })
                        .collect()
                }
                FileMethod::Head(_) => {
                    prop_assert!(false, "a relation file is never copied in part");
                    Vec::new()
                }
            };
            let expected: Vec<Option<u64>> = now.iter().copied().map(Some).collect();
            prop_assert_eq!(restored, expected, "segment {}", segment);
        }
    }
}
