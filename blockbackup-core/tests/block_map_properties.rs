//! Recording a sequence of WAL events in one map must give exactly what
//! recording it in consecutive pieces and merging them in order gives, and
//! both must agree with a plain model of the semantics.

use std::collections::{BTreeMap, BTreeSet};

use blockbackup_core::{BlockMap, ForkNumber, RelFork};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Event {
    Modify(RelFork, u32),
    Limit(RelFork, u32),
    DatabaseReplaced(u32, u32),
}

/// A small domain, so that events collide on the same forks and blocks.
fn rel_fork() -> impl Strategy<Value = RelFork> {
    (
        prop::sample::select(vec![1663u32, 16400]),
        1u32..3,
        1u32..4,
        prop::sample::select(vec![ForkNumber::Main, ForkNumber::VisibilityMap]),
    )
        .prop_map(|(spc_oid, db_oid, rel_number, fork)| RelFork {
            spc_oid,
            db_oid,
            rel_number,
            fork,
        })
}

/// Mostly small blocks, some in a second roaring container.
fn block() -> impl Strategy<Value = u32> {
    prop_oneof![4 => 0u32..24, 1 => 65_530u32..65_545]
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        8 => (rel_fork(), block()).prop_map(|(rf, b)| Event::Modify(rf, b)),
        3 => (rel_fork(), block()).prop_map(|(rf, b)| Event::Limit(rf, b)),
        1 => (prop::sample::select(vec![1663u32, 16400]), 1u32..3)
            .prop_map(|(spc, db)| Event::DatabaseReplaced(spc, db)),
    ]
}

fn apply(map: &mut BlockMap, event: &Event) {
    match *event {
        Event::Modify(rf, block) => map.mark_block_modified(rf, block),
        Event::Limit(rf, limit) => map.set_limit_block(rf, limit),
        Event::DatabaseReplaced(spc, db) => map.mark_database_replaced(spc, db),
    }
}

type Model = BTreeMap<RelFork, (Option<u32>, BTreeSet<u32>)>;

fn apply_to_model(model: &mut Model, event: &Event) {
    match *event {
        Event::Modify(rf, block) => {
            model.entry(rf).or_default().1.insert(block);
        }
        Event::Limit(rf, limit) => {
            let (old_limit, blocks) = model.entry(rf).or_default();
            blocks.retain(|&b| b < limit);
            *old_limit = Some(old_limit.map_or(limit, |old| old.min(limit)));
        }
        Event::DatabaseReplaced(spc, db) => {
            model.retain(|rf, _| !(rf.spc_oid == spc && rf.db_oid == db));
            model.insert(RelFork::database(spc, db), (Some(0), BTreeSet::new()));
        }
    }
}

fn as_model(map: &BlockMap) -> Model {
    map.iter_sorted()
        .map(|(rf, changes)| (*rf, (changes.limit_block, changes.blocks.iter().collect())))
        .collect()
}

fn check_counters(map: &BlockMap) -> Result<(), TestCaseError> {
    let counted: u64 = map.iter_sorted().map(|(_, c)| c.blocks.len()).sum();
    prop_assert_eq!(map.total_blocks(), counted);
    prop_assert_eq!(map.len_forks(), map.iter_sorted().count());
    prop_assert_eq!(map.is_empty(), map.len_forks() == 0);
    prop_assert!(map.approx_memory_bytes() >= 128 * map.len_forks() + 2 * counted as usize);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn split_and_merged_equals_whole(
        events in prop::collection::vec(event(), 0..80),
        cuts in prop::collection::vec(0usize..80, 0..6),
    ) {
        let mut whole = BlockMap::new();
        let mut model = Model::new();
        for event in &events {
            apply(&mut whole, event);
            apply_to_model(&mut model, event);
        }
        prop_assert_eq!(&as_model(&whole), &model);
        check_counters(&whole)?;

        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(events.len())).collect();
        cuts.push(0);
        cuts.push(events.len());
        cuts.sort_unstable();
        let mut merged = BlockMap::new();
        for window in cuts.windows(2) {
            let mut piece = BlockMap::new();
            for event in &events[window[0]..window[1]] {
                apply(&mut piece, event);
            }
            check_counters(&piece)?;
            merged.merge_later(&piece);
        }
        check_counters(&merged)?;
        prop_assert_eq!(&as_model(&merged), &model);
        prop_assert!(merged == whole);
    }
}
