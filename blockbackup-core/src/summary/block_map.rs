//! The changes made by one span of WAL, per relation fork.

use roaring::RoaringBitmap;
use rustc_hash::FxHashMap;

use crate::relfork::RelFork;

/// Estimated cost of one recorded block. Roaring array containers spend 2
/// bytes per value and bitmap containers fewer, so this only undercounts
/// for blocks scattered more than 65536 apart (one container each), which
/// the per-entry allowance absorbs for all but pathological relations.
const APPROX_BYTES_PER_BLOCK: usize = 2;
/// Estimated cost of one entry: key, limit, bitmap header and first
/// container, the `Vec` slot and the index's hash table slot.
const APPROX_BYTES_PER_ENTRY: usize = 128;

/// What happened to one relation fork (or database) during the span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ForkChanges {
    /// The smallest length the fork was truncated to during the span (0:
    /// created, dropped or, for a database-level entry, the database
    /// directory replaced). Every block at or past it must be taken from
    /// the current file whatever `blocks` says.
    pub limit_block: Option<u32>,
    /// Blocks modified during the span and not cut off by a later
    /// truncation within it. Blocks at or past `limit_block` are those
    /// written after the fork was truncated or created.
    pub blocks: RoaringBitmap,
}

/// Changed blocks per relation fork for one contiguous span of WAL.
///
/// Entries live in a `Vec` addressed through a hash index so that the hot
/// path can remember the position of the last fork it touched: WAL records
/// come in runs against the same relation, and skipping the hash lookup for
/// those is most of the summarizer's per-reference cost.
#[derive(Clone, Debug, Default)]
pub struct BlockMap {
    entries: Vec<(RelFork, ForkChanges)>,
    index: FxHashMap<RelFork, usize>,
    last_touched: Option<(RelFork, usize)>,
    block_count: u64,
    approx_bytes: usize,
}

impl BlockMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records that a WAL record referenced `block` of `rf`.
    #[inline]
    pub fn mark_block_modified(&mut self, rf: RelFork, block: u32) {
        let slot = self.slot_for(rf);
        if self.entries[slot].1.blocks.insert(block) {
            self.block_count += 1;
            self.approx_bytes += APPROX_BYTES_PER_BLOCK;
        }
    }

    /// Records that `rf` was truncated to `limit` blocks (0: created or
    /// dropped). Modifications recorded so far past the new end are void:
    /// those blocks no longer exist, and if the fork grows again they come
    /// back through new modifications or through the limit.
    pub fn set_limit_block(&mut self, rf: RelFork, limit: u32) {
        let slot = self.slot_for(rf);
        let changes = &mut self.entries[slot].1;
        self.block_count -= changes.blocks.remove_range(limit..);
        changes.limit_block = Some(changes.limit_block.map_or(limit, |old| old.min(limit)));
    }

    /// Records that database `db_oid` in tablespace `spc_oid` was created or
    /// dropped. Its whole directory must then be copied anew, so what was
    /// recorded for its relations is void and is forgotten.
    pub fn mark_database_replaced(&mut self, spc_oid: u32, db_oid: u32) {
        let in_database = |rf: &RelFork| rf.spc_oid == spc_oid && rf.db_oid == db_oid;
        if self.entries.iter().any(|(rf, _)| in_database(rf)) {
            let block_count = &mut self.block_count;
            self.entries.retain(|(rf, changes)| {
                let forgotten = in_database(rf);
                if forgotten {
                    *block_count -= changes.blocks.len();
                }
                !forgotten
            });
            self.rebuild_index();
        }
        let database = RelFork::database(spc_oid, db_oid);
        let slot = self.slot_for(database);
        self.entries[slot].1.limit_block = Some(0);
    }

    /// Folds in the map of the WAL span that immediately follows this one's,
    /// so that the result is what one map over both spans would have been.
    pub fn merge_later(&mut self, later: &BlockMap) {
        // Database replacements first: they void this map's entries of the
        // database, while the later map's own entries of that database
        // record only what happened after its last replacement.
        for (rf, _) in later
            .entries
            .iter()
            .filter(|(rf, _)| rf.is_database_level())
        {
            self.mark_database_replaced(rf.spc_oid, rf.db_oid);
        }
        for (rf, changes) in later
            .entries
            .iter()
            .filter(|(rf, _)| !rf.is_database_level())
        {
            if let Some(limit) = changes.limit_block {
                self.set_limit_block(*rf, limit);
            }
            let slot = self.slot_for(*rf);
            let blocks = &mut self.entries[slot].1.blocks;
            let before = blocks.len();
            *blocks |= &changes.blocks;
            let added = blocks.len() - before;
            self.block_count += added;
            self.approx_bytes += added as usize * APPROX_BYTES_PER_BLOCK;
        }
    }

    pub fn get(&self, rf: &RelFork) -> Option<&ForkChanges> {
        self.index.get(rf).map(|&slot| &self.entries[slot].1)
    }

    /// The entries in `RelFork` order, as summaries store and report them.
    pub fn iter_sorted(&self) -> impl Iterator<Item = (&RelFork, &ForkChanges)> {
        let mut sorted: Vec<_> = self
            .entries
            .iter()
            .map(|(rf, changes)| (rf, changes))
            .collect();
        sorted.sort_unstable_by_key(|(rf, _)| **rf);
        sorted.into_iter()
    }

    /// The entries in `RelFork` order, owned, for callers that stream them
    /// out (a query result) without copying the bitmaps.
    pub fn into_sorted_entries(self) -> Vec<(RelFork, ForkChanges)> {
        let mut entries = self.entries;
        entries.sort_unstable_by_key(|(rf, _)| *rf);
        entries
    }

    /// Number of entries, database-level ones included.
    pub fn len_forks(&self) -> usize {
        self.entries.len()
    }

    /// Number of recorded blocks over all entries.
    pub fn total_blocks(&self) -> u64 {
        self.block_count
    }

    /// True when the span changed nothing at all (a database-level entry
    /// alone is a change).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Running estimate of the heap memory the map holds, for cutting a
    /// summary early. It counts everything ever added and is never lowered
    /// by removals, so it errs on the high side.
    pub fn approx_memory_bytes(&self) -> usize {
        self.approx_bytes
    }

    /// Adds a whole entry read back from a summary file; the caller has
    /// checked that `rf` is not present yet.
    pub(crate) fn insert_decoded(&mut self, rf: RelFork, changes: ForkChanges) {
        self.block_count += changes.blocks.len();
        self.approx_bytes +=
            APPROX_BYTES_PER_ENTRY + changes.blocks.len() as usize * APPROX_BYTES_PER_BLOCK;
        self.index.insert(rf, self.entries.len());
        self.entries.push((rf, changes));
    }

    /// Position of `rf`'s entry, created empty if missing.
    #[inline]
    fn slot_for(&mut self, rf: RelFork) -> usize {
        if let Some((cached, slot)) = self.last_touched {
            if cached == rf {
                return slot;
            }
        }
        let next_slot = self.entries.len();
        let slot = *self.index.entry(rf).or_insert(next_slot);
        if slot == next_slot {
            self.entries.push((rf, ForkChanges::default()));
            self.approx_bytes += APPROX_BYTES_PER_ENTRY;
        }
        self.last_touched = Some((rf, slot));
        slot
    }

    fn rebuild_index(&mut self) {
        self.index.clear();
        self.index.extend(
            self.entries
                .iter()
                .enumerate()
                .map(|(slot, (rf, _))| (*rf, slot)),
        );
        self.last_touched = None;
    }
}

/// Equal when both record the same changes; memory estimates and entry
/// order are bookkeeping and do not count.
impl PartialEq for BlockMap {
    fn eq(&self, other: &Self) -> bool {
        self.entries.len() == other.entries.len()
            && self
                .entries
                .iter()
                .all(|(rf, changes)| other.get(rf) == Some(changes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::relfork::ForkNumber;

    fn rel(rel_number: u32) -> RelFork {
        RelFork {
            spc_oid: 1663,
            db_oid: 5,
            rel_number,
            fork: ForkNumber::Main,
        }
    }

    fn blocks(map: &BlockMap, rf: RelFork) -> Vec<u32> {
        map.get(&rf).unwrap().blocks.iter().collect()
    }

    #[test]
    fn records_each_block_once() {
        let mut map = BlockMap::new();
        assert!(map.is_empty());
        map.mark_block_modified(rel(1), 7);
        map.mark_block_modified(rel(1), 7);
        map.mark_block_modified(rel(2), 7);
        map.mark_block_modified(rel(1), 3);
        assert_eq!(blocks(&map, rel(1)), vec![3, 7]);
        assert_eq!(blocks(&map, rel(2)), vec![7]);
        assert_eq!(map.get(&rel(1)).unwrap().limit_block, None);
        assert_eq!(map.len_forks(), 2);
        assert_eq!(map.total_blocks(), 3);
        assert!(!map.is_empty());
        assert!(map.get(&rel(3)).is_none());
    }

    #[test]
    fn truncation_voids_blocks_past_it_and_keeps_the_smallest_limit() {
        let mut map = BlockMap::new();
        for block in [1, 5, 9] {
            map.mark_block_modified(rel(1), block);
        }
        map.set_limit_block(rel(1), 5);
        assert_eq!(blocks(&map, rel(1)), vec![1]);
        assert_eq!(map.get(&rel(1)).unwrap().limit_block, Some(5));
        assert_eq!(map.total_blocks(), 1);

        map.mark_block_modified(rel(1), 8);
        map.set_limit_block(rel(1), 7);
        assert_eq!(blocks(&map, rel(1)), vec![1]);
        assert_eq!(map.get(&rel(1)).unwrap().limit_block, Some(5));

        map.mark_block_modified(rel(1), 20);
        assert_eq!(blocks(&map, rel(1)), vec![1, 20]);
        map.set_limit_block(rel(1), 0);
        assert!(blocks(&map, rel(1)).is_empty());
        assert_eq!(map.get(&rel(1)).unwrap().limit_block, Some(0));
        assert_eq!(map.total_blocks(), 0);
    }

    #[test]
    fn truncating_an_unseen_fork_records_the_limit() {
        let mut map = BlockMap::new();
        map.set_limit_block(rel(4), 12);
        assert_eq!(map.get(&rel(4)).unwrap().limit_block, Some(12));
        assert!(blocks(&map, rel(4)).is_empty());
    }

    #[test]
    fn database_replacement_forgets_only_that_database() {
        let mut map = BlockMap::new();
        let other_db = RelFork {
            db_oid: 6,
            ..rel(1)
        };
        let other_spc = RelFork {
            spc_oid: 1700,
            ..rel(1)
        };
        map.mark_block_modified(rel(1), 1);
        map.set_limit_block(rel(2), 3);
        map.mark_block_modified(other_db, 1);
        map.mark_block_modified(other_spc, 1);
        map.mark_database_replaced(1663, 5);

        assert!(map.get(&rel(1)).is_none());
        assert!(map.get(&rel(2)).is_none());
        let database = map.get(&RelFork::database(1663, 5)).unwrap();
        assert_eq!(database.limit_block, Some(0));
        assert!(database.blocks.is_empty());
        assert_eq!(blocks(&map, other_db), vec![1]);
        assert_eq!(blocks(&map, other_spc), vec![1]);
        assert_eq!(map.len_forks(), 3);
        assert_eq!(map.total_blocks(), 2);

        // The cache must not point at a moved entry.
        map.mark_block_modified(rel(1), 4);
        map.mark_block_modified(other_db, 2);
        assert_eq!(blocks(&map, rel(1)), vec![4]);
        assert_eq!(blocks(&map, other_db), vec![1, 2]);
    }

    #[test]
    fn iterates_in_relfork_order() {
        let mut map = BlockMap::new();
        for rel_number in [9, 3, 7, 1] {
            map.mark_block_modified(rel(rel_number), 0);
        }
        map.mark_database_replaced(1663, 4);
        let order: Vec<_> = map.iter_sorted().map(|(rf, _)| *rf).collect();
        assert_eq!(
            order,
            vec![RelFork::database(1663, 4), rel(1), rel(3), rel(7), rel(9)]
        );
    }

    #[test]
    fn memory_estimate_grows_with_entries_and_blocks() {
        let mut map = BlockMap::new();
        assert_eq!(map.approx_memory_bytes(), 0);
        map.mark_block_modified(rel(1), 0);
        let one = map.approx_memory_bytes();
        assert!(one >= APPROX_BYTES_PER_ENTRY);
        for block in 1..10_000 {
            map.mark_block_modified(rel(1), block);
        }
        assert!(map.approx_memory_bytes() >= one + 2 * 9_999);
        map.set_limit_block(rel(1), 0);
        assert!(map.approx_memory_bytes() >= one + 2 * 9_999);
    }

    #[test]
    fn merge_applies_later_truncation_to_earlier_blocks() {
        let mut earlier = BlockMap::new();
        earlier.mark_block_modified(rel(1), 2);
        earlier.mark_block_modified(rel(1), 8);
        earlier.mark_block_modified(rel(2), 1);
        let mut later = BlockMap::new();
        later.set_limit_block(rel(1), 5);
        later.mark_block_modified(rel(1), 6);
        later.mark_database_replaced(1663, 9);
        earlier.merge_later(&later);

        assert_eq!(blocks(&earlier, rel(1)), vec![2, 6]);
        assert_eq!(earlier.get(&rel(1)).unwrap().limit_block, Some(5));
        assert_eq!(blocks(&earlier, rel(2)), vec![1]);
        assert_eq!(
            earlier
                .get(&RelFork::database(1663, 9))
                .unwrap()
                .limit_block,
            Some(0)
        );
        assert_eq!(earlier.total_blocks(), 3);
    }
}
