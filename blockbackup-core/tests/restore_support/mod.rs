//! Synthetic backup repositories on disk for restore tests: backup images
//! laid out as the repository stores them, with contents that carry the
//! right sizes and CRCs, compressed or not.

#![allow(dead_code)]

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use blockbackup_core::backup::incremental_file::{incremental_path, IncrementalHeader};
use blockbackup_core::repository::catalog::{
    BackupContents, BackupMode, BackupRecord, BackupStatus, ClusterFacts, Compression, StoredFile,
    StoredKind,
};
use blockbackup_core::restore::ChainMember;
use blockbackup_core::storage::local::LocalStorage;
use blockbackup_core::Lsn;

#[path = "../fixtures/mod.rs"]
mod fixtures;

pub const BLOCK: usize = 1024;

pub struct Backup {
    pub record: BackupRecord,
    pub contents: BackupContents,
    pub data_dir: PathBuf,
}

pub fn record(id: &str, parent: Option<&str>, compression: Compression, lsn: u64) -> BackupRecord {
    let mode = if parent.is_some() {
        BackupMode::Incremental
    } else {
        BackupMode::Full
    };
    let facts = ClusterFacts {
        block_size: BLOCK as u32,
        ..fixtures::cluster(1)
    };
    let mut record = BackupRecord::begin(mode, facts, Lsn(lsn), 0);
    record.backup_id = id.to_owned();
    record.status = BackupStatus::Done;
    record.parent_backup_id = parent.map(str::to_owned);
    record.stop_lsn = Some(Lsn(lsn + 0x100));
    record.compression = compression;
    record
}

/// A file of a backup: its stored path, kind and content.
pub struct Stored {
    pub path: String,
    pub kind: StoredKind,
    pub content: Vec<u8>,
}

pub fn whole(path: &str, content: Vec<u8>) -> Stored {
    Stored {
        path: path.to_owned(),
        kind: StoredKind::Whole,
        content,
    }
}

pub fn wal(path: &str, content: Vec<u8>) -> Stored {
    Stored {
        path: path.to_owned(),
        kind: StoredKind::Wal,
        content,
    }
}

/// An incremental file for `path` of the given length holding `blocks`.
pub fn incremental(path: &str, truncation_blocks: u32, blocks: &[(u32, Vec<u8>)]) -> Stored {
    let header = IncrementalHeader {
        block_size: BLOCK as u32,
        truncation_blocks,
        blocks: blocks.iter().map(|(b, _)| *b).collect(),
    };
    let mut content = header.encode();
    for (_, data) in blocks {
        assert_eq!(data.len(), BLOCK);
        content.extend_from_slice(data);
    }
    assert_eq!(content.len() as u64, header.encoded_len());
    Stored {
        path: incremental_path(path),
        kind: StoredKind::Incremental,
        content,
    }
}

/// A block whose every byte says which version of which block it is.
pub fn block(tag: u8, number: u32) -> Vec<u8> {
    let mut data = vec![tag; BLOCK];
    data[..4].copy_from_slice(&number.to_le_bytes());
    data
}

pub fn blocks(tags: &[u8]) -> Vec<u8> {
    tags.iter()
        .enumerate()
        .flat_map(|(i, &tag)| {
            if tag == 0 {
                vec![0; BLOCK]
            } else {
                block(tag, i as u32)
            }
        })
        .collect()
}

/// Writes `backups/<id>/pgdata/...` under `root` the way the repository
/// stores a backup.
pub fn write_backup(root: &Path, record: BackupRecord, files: Vec<Stored>) -> Backup {
    let data_dir = root.join("backups").join(&record.backup_id).join("pgdata");
    let mut contents = BackupContents::default();
    for file in files {
        let disk = data_dir.join(record.compression.stored_name(&file.path));
        fs::create_dir_all(disk.parent().unwrap()).unwrap();
        let mut encoder = record
            .compression
            .encoder(Vec::new(), record.compression.default_level())
            .unwrap();
        encoder.write_all(&file.content).unwrap();
        let stored = encoder.finish().unwrap();
        fs::write(&disk, &stored).unwrap();
        contents.files.push(StoredFile {
            path: file.path,
            kind: file.kind,
            size: file.content.len() as u64,
            stored_size: stored.len() as u64,
            crc32c: crc32c::crc32c(&file.content),
            stored_crc32c: Some(crc32c::crc32c(&stored)),
            mtime: 1_700_000_000,
        });
    }
    contents.files.sort_by(|a, b| a.path.cmp(&b.path));
    Backup {
        record,
        contents,
        data_dir,
    }
}

pub fn chain(backups: &[Backup]) -> Vec<ChainMember<'_>> {
    backups
        .iter()
        .map(|b| {
            // The repository root is three levels above the image:
            // <root>/backups/<id>/pgdata.
            let root = b.data_dir.ancestors().nth(3).unwrap();
            ChainMember {
                record: &b.record,
                storage: std::sync::Arc::new(LocalStorage::new(root)),
                prefix: format!("backups/{}/pgdata", b.record.backup_id),
                contents: &b.contents,
            }
        })
        .collect()
}

/// The bytes a stored file has on disk.
pub fn disk_path(backup: &Backup, stored_path: &str) -> PathBuf {
    backup
        .data_dir
        .join(backup.record.compression.stored_name(stored_path))
}
