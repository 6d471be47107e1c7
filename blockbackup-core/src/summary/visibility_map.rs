//! How a heap truncation shortens the visibility map fork.

/// `MAXALIGN(SizeOfPageHeaderData)`: the visibility map bits start after it.
const PAGE_HEADER_BYTES: u32 = 24;
/// Two bits (all-visible, all-frozen) per heap block.
const HEAP_BLOCKS_PER_BYTE: u32 = 4;

/// Number of visibility map pages left after the heap is truncated to
/// `heap_blocks` blocks, like PostgreSQL 17's
/// `visibilitymap_truncation_length`. The page holding the bits of the last
/// remaining heap block survives (its tail bits are cleared in place), so
/// this rounds up.
pub fn visibility_map_truncation_length(heap_blocks: u32, block_size: u32) -> u32 {
    // max(1) only keeps a nonsensical block size from dividing by zero.
    let heap_blocks_per_page = block_size
        .saturating_sub(PAGE_HEADER_BYTES)
        .saturating_mul(HEAP_BLOCKS_PER_BYTE)
        .max(1);
    heap_blocks.div_ceil(heap_blocks_per_page)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_pages_for_8k_blocks() {
        const PER_PAGE: u32 = 32672;
        assert_eq!(visibility_map_truncation_length(0, 8192), 0);
        assert_eq!(visibility_map_truncation_length(1, 8192), 1);
        assert_eq!(visibility_map_truncation_length(PER_PAGE - 1, 8192), 1);
        assert_eq!(visibility_map_truncation_length(PER_PAGE, 8192), 1);
        assert_eq!(visibility_map_truncation_length(PER_PAGE + 1, 8192), 2);
        assert_eq!(visibility_map_truncation_length(2 * PER_PAGE, 8192), 2);
        assert_eq!(
            visibility_map_truncation_length(u32::MAX, 8192),
            u32::MAX.div_ceil(PER_PAGE)
        );
    }

    #[test]
    fn follows_the_block_size() {
        let per_page = (32768 - 24) * 4;
        assert_eq!(visibility_map_truncation_length(per_page, 32768), 1);
        assert_eq!(visibility_map_truncation_length(per_page + 1, 32768), 2);
    }

    #[test]
    fn survives_nonsense_block_sizes() {
        assert_eq!(visibility_map_truncation_length(10, 0), 10);
        assert_eq!(visibility_map_truncation_length(10, u32::MAX), 1);
    }
}
