//! The parallel copy: contents and checksums of what it stores, skipped
//! and failing sources, cancellation.

use std::fs::{self, File};
use std::io::Read;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use blockbackup_core::backup::copy::{copy_files, CopyError, CopyOptions, CopyProgress, CopyTask};
use blockbackup_core::backup::incremental_file::IncrementalHeader;
use blockbackup_core::backup::plan::FileMethod;
use blockbackup_core::repository::catalog::{Compression, StoredKind};

const BLOCK: usize = 8192;

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn task(source: &Path, path: &str, method: FileMethod) -> CopyTask {
    CopyTask {
        source: source.to_owned(),
        path: path.to_owned(),
        method,
        kind: StoredKind::Whole,
        mtime: 1_700_000_000,
    }
}

/// A stored file's content, decoded by tools we did not write: flate2's
/// plain decoder for gzip, and Debian's `zstd` and `lz4` commands.
fn read_stored(path: &Path, compression: Compression) -> Vec<u8> {
    let mut content = Vec::new();
    let command = |program: &str| {
        let output = std::process::Command::new(program)
            .args(["-d", "-c"])
            .arg(path)
            .output()
            .unwrap_or_else(|e| panic!("{program} could not be run: {e}"));
        assert!(output.status.success(), "{program} -d failed on {path:?}");
        output.stdout
    };
    match compression {
        Compression::None => {
            File::open(path).unwrap().read_to_end(&mut content).unwrap();
        }
        Compression::Gzip => {
            flate2::read::GzDecoder::new(File::open(path).unwrap())
                .read_to_end(&mut content)
                .unwrap();
        }
        Compression::Zstd => content = command("zstd"),
        Compression::Lz4 => content = command("lz4"),
    }
    content
}

/// A local store rooted at `dir`, where the copy writes.
fn local(dir: &Path) -> std::sync::Arc<dyn blockbackup_core::storage::Storage> {
    std::sync::Arc::new(blockbackup_core::storage::local::LocalStorage::new(dir))
}

fn keep_going(_: &CopyProgress) -> ControlFlow<()> {
    ControlFlow::Continue(())
}

/// Sources, tasks, and the content each stored path must have.
fn synthetic_tree(source: &Path) -> (Vec<CopyTask>, Vec<(String, Vec<u8>)>) {
    let mut tasks = Vec::new();
    let mut expected = Vec::new();
    let mut whole = |path: &str, content: Vec<u8>| {
        let file = source.join(path.replace('/', "_"));
        fs::write(&file, &content).unwrap();
        tasks.push(task(&file, path, FileMethod::Whole));
        expected.push((path.to_owned(), content));
    };
    whole("PG_VERSION", b"15\n".to_vec());
    whole("global/pg_control", pattern(1, 8192));
    whole("base/5/16385", pattern(2, 3 * 1024 * 1024 + 17));
    whole("base/5/16385_fsm", Vec::new());
    whole("pg_xact/0000", pattern(3, 40_000));

    // A 10-block relation; block 12 lies past its end (truncated since
    // the plan was made) and must come back as zeros.
    let relation = pattern(4, 10 * BLOCK);
    let relation_file = source.join("16384");
    fs::write(&relation_file, &relation).unwrap();
    let header = IncrementalHeader {
        block_size: BLOCK as u32,
        truncation_blocks: 13,
        blocks: vec![1, 2, 3, 7, 9, 12],
    };
    let mut content = header.encode();
    for &block in &header.blocks {
        let start = block as usize * BLOCK;
        match relation.get(start..start + BLOCK) {
            Some(data) => content.extend_from_slice(data),
            None => content.extend(std::iter::repeat_n(0u8, BLOCK)),
        }
    }
    let mut incremental = task(
        &relation_file,
        "base/5/16384",
        FileMethod::Incremental(header),
    );
    incremental.kind = StoredKind::Incremental;
    tasks.push(incremental);
    expected.push(("base/5/INCREMENTAL.16384".to_owned(), content));
    expected.sort();
    (tasks, expected)
}

fn copies_a_tree(compression: Compression, threads: usize) {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    fs::create_dir_all(&source).unwrap();
    let (tasks, expected) = synthetic_tree(&source);
    let dest_dir = scratch.path().join("backups/A/pgdata");
    let options = CopyOptions {
        storage: local(&dest_dir),
        prefix: String::new(),
        replace: false,
        compression,
        level: 6,
        threads,
        page_checks: None,
    };
    let mut last = CopyProgress::default();
    let mut polls = 0;
    let (stored, stats) = copy_files(tasks, &options, &mut |progress| {
        last = *progress;
        polls += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    assert!(polls >= 1);
    assert_eq!(last.files_total, 6);
    assert_eq!(last.files_done, 6);
    assert_eq!(last.bytes_done, last.bytes_total);

    let paths: Vec<&str> = stored.iter().map(|file| file.path.as_str()).collect();
    let expected_paths: Vec<&str> = expected.iter().map(|(path, _)| path.as_str()).collect();
    assert_eq!(paths, expected_paths);
    let mut written = 0;
    for (file, (_, content)) in stored.iter().zip(&expected) {
        let on_disk = dest_dir.join(compression.stored_name(&file.path));
        assert_eq!(
            read_stored(&on_disk, compression),
            *content,
            "{}",
            file.path
        );
        assert_eq!(file.size, content.len() as u64);
        assert_eq!(file.crc32c, crc32c::crc32c(content), "{}", file.path);
        assert_eq!(file.stored_size, fs::metadata(&on_disk).unwrap().len());
        assert_eq!(
            file.stored_crc32c,
            Some(crc32c::crc32c(&fs::read(&on_disk).unwrap()))
        );
        assert_eq!(file.mtime, 1_700_000_000);
        written += file.stored_size;
    }
    let incremental = stored
        .iter()
        .find(|file| file.path.contains("INCREMENTAL"))
        .unwrap();
    assert_eq!(incremental.kind, StoredKind::Incremental);
    assert_eq!(stats.bytes_written, written);
    // Whole files in full, five blocks of the relation (the sixth is past
    // its end).
    let whole_bytes: u64 = 3 + 8192 + 3 * 1024 * 1024 + 17 + 40_000;
    assert_eq!(stats.bytes_read, whole_bytes + 5 * BLOCK as u64);
    if compression != Compression::None {
        assert!(stats.bytes_written < whole_bytes);
    }
}

#[test]
fn copies_zstd_and_lz4_with_one_and_four_threads() {
    for compression in [Compression::Zstd, Compression::Lz4] {
        copies_a_tree(compression, 1);
        copies_a_tree(compression, 4);
    }
}

#[test]
fn copies_plain_with_one_thread() {
    copies_a_tree(Compression::None, 1);
}

#[test]
fn copies_plain_with_four_threads() {
    copies_a_tree(Compression::None, 4);
}

#[test]
fn copies_gzip_with_one_thread() {
    copies_a_tree(Compression::Gzip, 1);
}

#[test]
fn copies_gzip_with_four_threads() {
    copies_a_tree(Compression::Gzip, 4);
}

#[test]
fn vanished_sources_are_skipped() {
    let scratch = tempfile::tempdir().unwrap();
    let present = scratch.path().join("present");
    fs::write(&present, b"here").unwrap();
    let tasks = vec![
        task(
            &scratch.path().join("gone"),
            "base/5/16400",
            FileMethod::Whole,
        ),
        task(&present, "base/5/16401", FileMethod::Whole),
        CopyTask {
            method: FileMethod::Incremental(IncrementalHeader {
                block_size: BLOCK as u32,
                truncation_blocks: 1,
                blocks: vec![0],
            }),
            ..task(
                &scratch.path().join("gone too"),
                "base/5/16402",
                FileMethod::Whole,
            )
        },
    ];
    let options = CopyOptions {
        storage: local(&scratch.path().join("pgdata")),
        prefix: String::new(),
        replace: false,
        compression: Compression::None,
        level: 1,
        threads: 2,
        page_checks: None,
    };
    let (stored, _) = copy_files(tasks, &options, &mut keep_going).unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].path, "base/5/16401");
    assert!(!scratch.path().join("pgdata/base/5/16400").exists());
    assert!(!scratch
        .path()
        .join("pgdata/base/5/INCREMENTAL.16402")
        .exists());
}

#[test]
fn an_unwritable_destination_is_an_error_naming_it() {
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    fs::write(&source, b"data").unwrap();
    let dest_dir = scratch.path().join("pgdata");
    fs::create_dir_all(&dest_dir).unwrap();
    // A file where a directory has to go.
    fs::write(dest_dir.join("base"), b"in the way").unwrap();
    let tasks = vec![
        task(&source, "base/5/16384", FileMethod::Whole),
        task(&source, "PG_VERSION", FileMethod::Whole),
    ];
    let options = CopyOptions {
        storage: local(&dest_dir),
        prefix: String::new(),
        replace: false,
        compression: Compression::Gzip,
        level: 1,
        threads: 1,
        page_checks: None,
    };
    let error = copy_files(tasks, &options, &mut keep_going).unwrap_err();
    assert!(matches!(error, CopyError::Write { .. }), "{error}");
    assert!(error.to_string().contains("pgdata/base"), "{error}");
}

#[test]
fn paths_must_stay_inside_the_destination() {
    let scratch = tempfile::tempdir().unwrap();
    let options = CopyOptions {
        storage: local(&scratch.path().join("pgdata")),
        prefix: String::new(),
        replace: false,
        compression: Compression::None,
        level: 1,
        threads: 1,
        page_checks: None,
    };
    let tasks = vec![task(
        Path::new("/etc/hostname"),
        "../escape",
        FileMethod::Whole,
    )];
    let error = copy_files(tasks, &options, &mut keep_going).unwrap_err();
    assert!(matches!(error, CopyError::BadPath { .. }), "{error}");
}

#[test]
fn cancelling_stops_the_workers_and_removes_partial_files() {
    let scratch = tempfile::tempdir().unwrap();
    let mut tasks = Vec::new();
    for number in 0..4 {
        let big = scratch.path().join(format!("big{number}"));
        // Sparse, so cheap to make, but slow to gzip at level 9.
        File::create(&big).unwrap().set_len(512 << 20).unwrap();
        tasks.push(task(
            &big,
            &format!("base/5/{}", 16384 + number),
            FileMethod::Whole,
        ));
    }
    let dest_dir = scratch.path().join("pgdata");
    let options = CopyOptions {
        storage: local(&dest_dir),
        prefix: String::new(),
        replace: false,
        compression: Compression::Gzip,
        level: 9,
        threads: 2,
        page_checks: None,
    };
    let started = Instant::now();
    let mut polls: Vec<Instant> = Vec::new();
    let result = copy_files(tasks, &options, &mut |progress: &CopyProgress| {
        polls.push(Instant::now());
        if progress.bytes_done > 0 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    assert!(matches!(result, Err(CopyError::Cancelled)), "{result:?}");
    assert!(
        started.elapsed().as_secs() < 20,
        "took {:?}",
        started.elapsed()
    );
    let gaps = polls.windows(2).map(|pair| pair[1] - pair[0]);
    assert!(gaps.max().unwrap_or_default().as_millis() < 500);
    let leftovers: Vec<PathBuf> = fs::read_dir(dest_dir.join("base/5"))
        .map(|entries| entries.map(|entry| entry.unwrap().path()).collect())
        .unwrap_or_default();
    assert_eq!(leftovers, Vec::<PathBuf>::new());
}

/// A relation page as PostgreSQL writes one, with its checksum.
fn checked_page(block: u32, lsn: u64, fill: u8) -> Vec<u8> {
    let mut page = vec![fill; 8192];
    page[0..4].copy_from_slice(&((lsn >> 32) as u32).to_le_bytes());
    page[4..8].copy_from_slice(&(lsn as u32).to_le_bytes());
    page[14..16].copy_from_slice(&8000u16.to_le_bytes());
    let checksum = blockbackup_core::backup::page_checksum::page_checksum(&page, block);
    page[8..10].copy_from_slice(&checksum.to_le_bytes());
    page
}

#[test]
fn page_checksums_are_checked_as_pages_are_read() {
    use blockbackup_core::backup::copy::PageChecks;
    use blockbackup_core::backup::page_checksum::PageChecksumFailure;
    use blockbackup_core::Lsn;
    let scratch = tempfile::tempdir().unwrap();
    let source = scratch.path().join("source");
    fs::create_dir_all(source.join("base/5")).unwrap();
    // Segment 1 of a relation with 4-block segments: blocks 4 to 7.
    let mut segment: Vec<u8> = (4..8)
        .flat_map(|b| checked_page(b, 0x100, b as u8))
        .collect();
    segment[2 * 8192 + 100] ^= 0xFF; // block 6: damaged
    let mut newer = checked_page(7, 0x900, 7); // block 7: newer than the start
    newer[200] ^= 0xFF;
    segment[3 * 8192..].copy_from_slice(&newer);
    fs::write(source.join("base/5/16384.1"), &segment).unwrap();
    // Not a relation file: never checked.
    fs::write(source.join("base/5/PG_VERSION"), vec![1u8; 8192]).unwrap();
    let mut incremental = (0..3)
        .flat_map(|b| checked_page(b, 0x100, 9))
        .collect::<Vec<u8>>();
    incremental[8192 + 5] ^= 1; // block 1 of base/5/16385: damaged
    fs::write(source.join("base/5/16385"), &incremental).unwrap();
    let task = |path: &str, method: FileMethod| CopyTask {
        source: source.join(path),
        path: path.to_owned(),
        method,
        kind: StoredKind::Whole,
        mtime: 0,
    };
    let tasks = vec![
        task("base/5/16384.1", FileMethod::Whole),
        task("base/5/PG_VERSION", FileMethod::Whole),
        CopyTask {
            kind: StoredKind::Incremental,
            ..task(
                "base/5/16385",
                FileMethod::Incremental(IncrementalHeader {
                    block_size: 8192,
                    truncation_blocks: 3,
                    blocks: vec![1, 2],
                }),
            )
        },
    ];
    let mut options = CopyOptions {
        storage: local(&scratch.path().join("dest")),
        prefix: String::new(),
        replace: false,
        compression: Compression::None,
        level: 6,
        threads: 2,
        page_checks: Some(PageChecks {
            start_lsn: Lsn(0x800),
            block_size: 8192,
            segment_blocks: 4,
        }),
    };
    let (stored, stats) =
        copy_files(tasks.clone(), &options, &mut |_| ControlFlow::Continue(())).unwrap();
    assert_eq!(
        stats.page_checksum_failures,
        vec![
            PageChecksumFailure {
                path: "base/5/16384.1".into(),
                block: 6
            },
            PageChecksumFailure {
                path: "base/5/16385".into(),
                block: 1
            },
        ]
    );
    // The damaged page is stored as it was read.
    let copy = fs::read(scratch.path().join("dest/base/5/16384.1")).unwrap();
    assert_eq!(copy, segment);
    assert_eq!(stored.len(), 3);

    options.page_checks = None;
    options.storage = local(&scratch.path().join("dest2"));
    let (_, stats) = copy_files(tasks, &options, &mut |_| ControlFlow::Continue(())).unwrap();
    assert!(stats.page_checksum_failures.is_empty());
}
