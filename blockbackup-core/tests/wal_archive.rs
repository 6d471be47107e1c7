//! The WAL archive in a repository: what goes in comes back byte for byte
//! with every codec, the same name twice is fine only with the same
//! content, another cluster's WAL and files that are not segments stay out,
//! and damage of any kind is an error naming the stored file, never WAL.

use std::fs;
use std::path::{Path, PathBuf};

use blockbackup_core::compress::Compression;
use blockbackup_core::repository::Repository;
use blockbackup_core::wal::{
    ranges, ArchiveError, PrefetchQueue, PushOutcome, WalArchive, WalFileName,
};
use proptest::prelude::*;

const SYSID: u64 = 7_300_000_000_000_000_001;
const SEG: u64 = 1 << 20;

struct Setup {
    _scratch: tempfile::TempDir,
    repo: Repository,
    wal: PathBuf,
    out: PathBuf,
}

fn setup() -> Setup {
    let scratch = tempfile::tempdir().unwrap();
    let repo = Repository::open_or_create(&scratch.path().join("repo"), SYSID).unwrap();
    let wal = scratch.path().join("pg_wal");
    let out = scratch.path().join("out");
    fs::create_dir_all(&wal).unwrap();
    fs::create_dir_all(&out).unwrap();
    Setup {
        _scratch: scratch,
        repo,
        wal,
        out,
    }
}

/// A segment as PostgreSQL writes one: the long header of its first page
/// (in this host's byte order), then `seed`-dependent records and zeros.
fn segment_bytes(name: &str, sysid: u64, seed: u8) -> Vec<u8> {
    let parsed = WalFileName::parse(name).unwrap();
    let mut bytes = vec![0u8; SEG as usize];
    bytes[0..2].copy_from_slice(&0xD110u16.to_ne_bytes());
    bytes[2..4].copy_from_slice(&0x0002u16.to_ne_bytes());
    bytes[4..8].copy_from_slice(&parsed.timeline.to_ne_bytes());
    bytes[8..16].copy_from_slice(&parsed.start_lsn(SEG).0.to_ne_bytes());
    bytes[24..32].copy_from_slice(&sysid.to_ne_bytes());
    bytes[32..36].copy_from_slice(&(SEG as u32).to_ne_bytes());
    bytes[36..40].copy_from_slice(&8192u32.to_ne_bytes());
    for (i, byte) in bytes[40..300_000].iter_mut().enumerate() {
        *byte = (i as u8).wrapping_mul(31).wrapping_add(seed);
    }
    bytes
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, bytes).unwrap();
    path
}

fn stored_path(setup: &Setup, name: &str) -> PathBuf {
    let archive = WalArchive::new(&setup.repo);
    let file = archive
        .find(&WalFileName::parse(name).unwrap())
        .unwrap()
        .expect("stored");
    setup.repo.path_of(&file.stored_path)
}

#[test]
fn every_codec_gives_back_what_it_was_given() {
    for codec in Compression::ALL {
        let s = setup();
        let archive = WalArchive::new(&s.repo);
        let names = [
            "000000010000000000000001",
            "000000010000000000000002",
            "000000010000000000000002.00000028.backup",
            "00000002.history",
            "000000010000000000000003.partial",
        ];
        for (i, name) in names.iter().enumerate() {
            let bytes = if name.ends_with(".history") {
                b"1\t0/3000000\tno recovery target specified\n".to_vec()
            } else if name.ends_with(".backup") {
                b"START WAL LOCATION: 0/2000028\n".to_vec()
            } else {
                segment_bytes(name, SYSID, i as u8)
            };
            let source = write(&s.wal, name, &bytes);
            let outcome = archive
                .push(name, &source, codec, codec.default_level())
                .unwrap();
            assert!(
                matches!(outcome, PushOutcome::Stored { .. }),
                "{codec:?} {name}"
            );
            let target = s.out.join(name);
            assert!(archive.get(name, &target).unwrap(), "{codec:?} {name}");
            assert_eq!(fs::read(&target).unwrap(), bytes, "{codec:?} {name}");
        }
        assert_eq!(archive.segment_size().unwrap(), Some(SEG));
        let listed: Vec<String> = archive
            .list()
            .unwrap()
            .iter()
            .map(|f| f.name.to_string())
            .collect();
        let mut expected: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        expected.sort_by_key(|n| WalFileName::parse(n).unwrap());
        assert_eq!(listed, expected);
        let got = ranges(&archive.list().unwrap(), SEG);
        // 1, 2 and the partial 3 follow each other; nothing can follow a
        // partial segment.
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].segments, 3);
        assert!(got[0].ends_partial);
        if codec != Compression::None {
            assert!(
                got[0].stored_bytes < 3 * SEG / 2,
                "{codec:?} did not compress"
            );
        }
    }
}

#[test]
fn the_same_name_again_is_fine_only_with_the_same_content() {
    let s = setup();
    let archive = WalArchive::new(&s.repo);
    let name = "000000010000000000000005";
    let first = write(&s.wal, name, &segment_bytes(name, SYSID, 1));
    archive.push(name, &first, Compression::Zstd, 3).unwrap();
    let stored = stored_path(&s, name);
    let before = fs::read(&stored).unwrap();

    // Same content, even with another codec asked for: nothing written.
    assert_eq!(
        archive.push(name, &first, Compression::Lz4, 1).unwrap(),
        PushOutcome::AlreadyArchived
    );
    let other_dir = s.out.join("other");
    fs::create_dir_all(&other_dir).unwrap();
    let other = write(&other_dir, name, &segment_bytes(name, SYSID, 2));
    let error = archive
        .push(name, &other, Compression::Zstd, 3)
        .unwrap_err();
    assert!(matches!(error, ArchiveError::Different { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(name) && message.contains("other content"),
        "{message}"
    );
    assert_eq!(stored_path(&s, name), stored);
    assert_eq!(fs::read(&stored).unwrap(), before);
    assert_eq!(archive.list().unwrap().len(), 1);
}

#[test]
fn what_is_not_a_segment_of_this_cluster_stays_out() {
    let s = setup();
    let archive = WalArchive::new(&s.repo);
    let name = "000000010000000000000007";
    let push = |bytes: Vec<u8>| {
        let path = write(&s.wal, name, &bytes);
        archive.push(name, &path, Compression::None, 0).unwrap_err()
    };
    let error = push(segment_bytes(name, SYSID + 1, 0));
    assert!(matches!(error, ArchiveError::OtherSystem { .. }), "{error}");
    assert!(error.to_string().contains("system identifier"), "{error}");
    // Another segment's content under this name.
    let error = push(segment_bytes("000000010000000000000008", SYSID, 0));
    assert!(
        error.to_string().contains("its first page is for"),
        "{error}"
    );
    // Cut short, or no header at all.
    let mut short = segment_bytes(name, SYSID, 0);
    short.truncate(4096);
    assert!(push(short).to_string().contains("bytes long"));
    assert!(push(vec![0u8; SEG as usize])
        .to_string()
        .contains("long header"));
    assert!(push(vec![1u8; 10])
        .to_string()
        .contains("shorter than a page header"));
    assert!(archive.list().unwrap().is_empty());

    // Names that are not WAL names never reach a path.
    for bad in ["../x", "000000010000000000000007.gz", "RECOVERYXLOG", ""] {
        let error = archive
            .push(bad, &s.wal.join(name), Compression::None, 0)
            .unwrap_err();
        assert!(
            matches!(error, ArchiveError::InvalidName { .. }),
            "{bad}: {error}"
        );
        assert!(matches!(
            archive.get(bad, &s.out.join("x")),
            Err(ArchiveError::InvalidName { .. })
        ));
    }

    // Another segment size than the archive's.
    let ok = write(&s.wal, name, &segment_bytes(name, SYSID, 0));
    archive.push(name, &ok, Compression::None, 0).unwrap();
    let big = "000000010000000000000010";
    let mut bytes = segment_bytes(big, SYSID, 0);
    bytes.resize(2 * SEG as usize, 0);
    bytes[32..36].copy_from_slice(&(2 * SEG as u32).to_ne_bytes());
    // The address of segment 0x10 at 2 MB segments.
    bytes[8..16].copy_from_slice(&(0x10 * 2 * SEG).to_ne_bytes());
    let path = write(&s.wal, big, &bytes);
    let error = archive.push(big, &path, Compression::None, 0).unwrap_err();
    assert!(error.to_string().contains("the archive's"), "{error}");
}

#[test]
fn absent_is_not_an_error_and_a_torn_temporary_is_absent() {
    let s = setup();
    let archive = WalArchive::new(&s.repo);
    let name = "000000010000000000000009";
    let target = s.out.join(name);
    // No archive at all is an error (recovery must stop), not the end of WAL.
    assert!(matches!(
        archive.get(name, &target),
        Err(ArchiveError::NoArchive { .. })
    ));
    push_run(&s, 1, 1, Compression::None);
    assert!(!archive.get(name, &target).unwrap());
    assert!(!target.exists());
    let group = s.repo.path_of("archive/0000000100000000");
    fs::create_dir_all(&group).unwrap();
    fs::write(group.join(format!(".{name}-00000000.zst.tmp-1-0")), b"torn").unwrap();
    assert!(!archive.get(name, &target).unwrap());
    assert_eq!(
        archive.list().unwrap().len(),
        1,
        "the torn temporary was listed"
    );
}

fn damage_is_an_error(codec: Compression, offset: usize, truncate: bool) {
    let s = setup();
    let archive = WalArchive::new(&s.repo);
    let name = "00000001000000000000000A";
    let source = write(&s.wal, name, &segment_bytes(name, SYSID, 9));
    archive
        .push(name, &source, codec, codec.default_level())
        .unwrap();
    let stored = stored_path(&s, name);
    let mut bytes = fs::read(&stored).unwrap();
    let at = offset % bytes.len();
    if truncate {
        bytes.truncate(at);
    } else {
        bytes[at] ^= 0x5A;
    }
    fs::write(&stored, &bytes).unwrap();
    let target = s.out.join(name);
    let error = archive.get(name, &target).unwrap_err();
    assert!(
        matches!(error, ArchiveError::Damaged { .. }),
        "{codec:?} at {at}: {error}"
    );
    let file_name = stored.file_name().unwrap().to_string_lossy().into_owned();
    assert!(error.to_string().contains(&file_name), "{error}");
    assert!(!target.exists(), "a damaged segment was left at the target");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn a_flipped_byte_of_any_codec_is_found(codec in 0usize..4, offset in any::<usize>()) {
        damage_is_an_error(Compression::ALL[codec], offset, false);
    }

    #[test]
    fn a_cut_of_any_codec_is_found(codec in 0usize..4, offset in any::<usize>()) {
        damage_is_an_error(Compression::ALL[codec], offset, true);
    }
}

/// Pushes segments `first..=last` (numbers) of timeline 1 with `codec`.
fn push_run(s: &Setup, first: u64, last: u64, codec: Compression) -> Vec<String> {
    let archive = WalArchive::new(&s.repo);
    (first..=last)
        .map(|n| {
            let name = WalFileName::segment(1, n, SEG).to_string();
            let source = write(&s.wal, &name, &segment_bytes(&name, SYSID, n as u8));
            archive
                .push(&name, &source, codec, codec.default_level())
                .unwrap();
            name
        })
        .collect()
}

/// The queue beside `out/RECOVERYXLOG`, after recovery asked for `name`
/// (not queued yet): the target, the queue and the parsed name.
fn first_request(s: &Setup, name: &str) -> (PathBuf, PrefetchQueue, WalFileName) {
    let target = s.out.join("RECOVERYXLOG");
    let owner = s.repo.root().to_string_lossy().into_owned();
    let queue = PrefetchQueue::beside(&target, &owner);
    let first = WalFileName::parse(name).unwrap();
    assert!(!queue.take(&first, &target).unwrap());
    (target, queue, first)
}

#[test]
fn the_queue_holds_what_the_archive_gives_and_stops_where_it_ends() {
    let s = setup();
    let names = push_run(&s, 3, 6, Compression::Zstd);
    let archive = WalArchive::new(&s.repo);
    let (target, queue, first) = first_request(&s, &names[0]);
    assert!(archive.get(&names[0], &target).unwrap());
    // Eight ahead asked for, three archived: it stops at the end.
    assert_eq!(queue.fill(&archive, &first, 8).unwrap(), 3);
    assert_eq!(queue.fill(&archive, &first, 8).unwrap(), 0);
    for name in &names[1..] {
        let parsed = WalFileName::parse(name).unwrap();
        assert!(queue.take(&parsed, &target).unwrap(), "{name} not queued");
        assert_eq!(
            fs::read(&target).unwrap(),
            fs::read(s.wal.join(name)).unwrap()
        );
    }
    // Past the end: not queued, and the archive does not hold it either.
    let after = WalFileName::segment(1, 7, SEG);
    assert!(!queue.take(&after, &target).unwrap());
    queue.clear().unwrap();
    assert!(!queue.dir().exists());
    assert_eq!(
        queue.fill(&archive, &first, 8).unwrap(),
        0,
        "a cleared queue was filled"
    );
}

#[test]
fn a_damaged_segment_is_never_queued_and_the_request_meets_the_damage() {
    let s = setup();
    let names = push_run(&s, 1, 3, Compression::None);
    let stored = stored_path(&s, &names[1]);
    let mut bytes = fs::read(&stored).unwrap();
    bytes[1000] ^= 0xFF;
    fs::write(&stored, bytes).unwrap();
    let archive = WalArchive::new(&s.repo);
    let (target, queue, first) = first_request(&s, &names[0]);
    assert!(matches!(
        queue.fill(&archive, &first, 8),
        Err(ArchiveError::Damaged { .. })
    ));
    let second = WalFileName::parse(&names[1]).unwrap();
    assert!(
        !queue.take(&second, &target).unwrap(),
        "a damaged segment was queued"
    );
    let leftovers: Vec<_> = fs::read_dir(queue.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("0000"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    assert!(matches!(
        archive.get(&names[1], &target),
        Err(ArchiveError::Damaged { .. })
    ));
}

#[test]
fn a_stopped_queue_fetches_nothing_more() {
    let s = setup();
    let names = push_run(&s, 1, 3, Compression::Lz4);
    let archive = WalArchive::new(&s.repo);
    let (_, queue, first) = first_request(&s, &names[0]);
    fs::write(queue.dir().join("stop"), "").unwrap();
    assert_eq!(queue.fill(&archive, &first, 8).unwrap(), 0);
}
