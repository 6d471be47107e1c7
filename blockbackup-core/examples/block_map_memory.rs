//! How much memory and time a block map costs for one checkpoint cycle
//! that touches N distinct blocks (default 5 million), measured with a
//! counting allocator: the summarizer's memory is this map plus the
//! server's own process.
//!
//! cargo run --release -p blockbackup-core --example block_map_memory [-- BLOCKS]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use blockbackup_core::{encode_summary, BlockMap, ForkNumber, Lsn, RelFork, SummaryHeader};

struct Counting;

static CURRENT: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let now = CURRENT.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(now, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        CURRENT.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// A small deterministic generator, so runs are comparable.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn main() {
    let blocks: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5_000_000);
    let relations = 1000u64;
    let per_relation = blocks / relations;
    let baseline = CURRENT.load(Ordering::Relaxed);

    // Every block of every relation once, in a scattered order, with each
    // reference repeated as WAL repeats them (several records per page).
    let mut order: Vec<u64> = (0..blocks).collect();
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    for i in (1..order.len()).rev() {
        order.swap(i, (next(&mut state) % (i as u64 + 1)) as usize);
    }
    let order_bytes = CURRENT.load(Ordering::Relaxed) - baseline;

    let began = Instant::now();
    let mut map = BlockMap::new();
    for &n in &order {
        let rf = RelFork {
            spc_oid: 1663,
            db_oid: 5,
            rel_number: 16384 + (n / per_relation) as u32,
            fork: ForkNumber::Main,
        };
        let block = (n % per_relation) as u32;
        map.mark_block_modified(rf, block);
        map.mark_block_modified(rf, block);
    }
    let insert_time = began.elapsed();
    let map_bytes = CURRENT.load(Ordering::Relaxed) - baseline - order_bytes;
    drop(order);

    let header = SummaryHeader {
        timeline: 1,
        start_lsn: Lsn(0),
        end_lsn: Lsn(1),
    };
    let began = Instant::now();
    let encoded = encode_summary(&header, &map);
    let encode_time = began.elapsed();

    println!("distinct blocks        {}", map.total_blocks());
    println!("block references       {}", 2 * blocks);
    println!(
        "map heap bytes         {} ({:.1} MB, {:.2} bytes/block)",
        map_bytes,
        map_bytes as f64 / 1048576.0,
        map_bytes as f64 / blocks as f64
    );
    println!(
        "map estimate           {} ({:.1} MB)",
        map.approx_memory_bytes(),
        map.approx_memory_bytes() as f64 / 1048576.0
    );
    println!(
        "peak heap (whole run)  {:.1} MB",
        PEAK.load(Ordering::Relaxed) as f64 / 1048576.0
    );
    println!(
        "summary file           {} bytes ({:.2} bytes/block)",
        encoded.len(),
        encoded.len() as f64 / blocks as f64
    );
    println!(
        "mark_block_modified    {:.1} ns/reference",
        insert_time.as_nanos() as f64 / (2 * blocks) as f64
    );
    println!(
        "encode                 {:.1} ms",
        encode_time.as_secs_f64() * 1000.0
    );
}
