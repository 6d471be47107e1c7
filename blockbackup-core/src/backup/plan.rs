//! What a backup copies, and how: the walk over the data directory and the
//! per-file choice between a whole copy and an incremental one.
//!
//! # The walk
//!
//! The walk follows `pg_basebackup` (`basebackup.c`), because restoring a
//! data directory only works if the backup holds what recovery needs and
//! nothing that confuses it:
//!
//! * directories whose contents are rebuilt at startup or are only
//!   meaningful to the running server (`pg_wal`, `pg_dynshmem`,
//!   `pg_notify`, `pg_replslot`, `pg_serial`, `pg_snapshots`,
//!   `pg_stat_tmp`, `pg_subtrans`) are kept as empty directories, plus
//!   `pg_wal/archive_status`; WAL is copied separately by the caller;
//! * files of the running server (`postmaster.pid`, `postmaster.opts`),
//!   old backup files (`backup_label`, `tablespace_map`,
//!   `backup_manifest`), relcache init files (`pg_internal.init*`),
//!   half-written temporary files and everything called `pgsql_tmp*` are
//!   left out;
//! * in database directories, temporary relations (`t<backend>_<rel>`) are
//!   left out, and so is every fork of an unlogged relation except its
//!   `_init` fork, which is what the server resets the relation from;
//! * the extension's own `pg_blockbackup/` directory is left out: its WAL
//!   summaries describe this cluster's history and mean nothing to a
//!   restored copy, which starts a history of its own;
//! * `pg_tblspc/<oid>` links are followed, and of each tablespace only the
//!   subdirectory of this server version is taken (a tablespace directory
//!   can be shared by clusters of several major versions). Other symbolic
//!   links are not followed and are left out.
//!
//! Files that vanish while the directory is walked (a dropped table, a
//! removed temporary file) are simply not part of the backup; WAL replay
//! recreates whatever state the server had.
//!
//! # Whole or incremental
//!
//! [`choose_method`] applies the rules under which PostgreSQL 17's
//! incremental backup may send only changed blocks, given the changes since
//! the parent backup started ([`BlockMap`], merged over the range). Every
//! doubtful case copies the whole file: only correctness is at stake in
//! one direction, only space in the other.

use std::collections::BTreeSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use roaring::RoaringBitmap;
use thiserror::Error;

use crate::backup::incremental_file::IncrementalHeader;
use crate::relfork::{ForkNumber, RelFork, DEFAULT_TABLESPACE_OID, GLOBAL_TABLESPACE_OID};
use crate::summary::block_map::BlockMap;

/// Directories kept empty: the server rebuilds or ignores their contents.
const EXCLUDED_DIR_CONTENTS: &[&str] = &[
    "pg_dynshmem",
    "pg_notify",
    "pg_replslot",
    "pg_serial",
    "pg_snapshots",
    "pg_stat_tmp",
    "pg_subtrans",
];
/// Files never copied, wherever they are.
const EXCLUDED_FILES: &[&str] = &[
    "postmaster.pid",
    "postmaster.opts",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "current_logfiles",
    "current_logfiles.tmp",
    "postgresql.auto.conf.tmp",
];
/// Name prefixes never copied, wherever they are (the relcache init file
/// and its temporary versions; temporary files and their directories).
const EXCLUDED_PREFIXES: &[&str] = &["pg_internal.init", "pgsql_tmp"];
const WAL_DIR: &str = "pg_wal";
const WAL_ARCHIVE_STATUS_DIR: &str = "pg_wal/archive_status";
const TABLESPACES_DIR: &str = "pg_tblspc";
const OWN_DIR: &str = "pg_blockbackup";
/// Above this share of a segment's blocks, copying it whole is as cheap.
const INCREMENTAL_MAX_PERCENT: u64 = 90;

#[derive(Debug, Error)]
pub enum PlanError {
    #[error("could not read \"{}\" in the data directory: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "the name of \"{}\" is not valid UTF-8, so the backup cannot record it; rename or remove it",
        path.display()
    )]
    NonUtf8Name { path: PathBuf },
    #[error(
        "tablespace link \"{}\" does not lead to a directory; fix or drop the tablespace before taking a backup",
        path.display()
    )]
    BrokenTablespace { path: PathBuf },
}

fn io_error(path: &Path, source: io::Error) -> PlanError {
    PlanError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A file of the data directory that the backup will copy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceFile {
    /// Relative to the data directory, with '/': tablespace files as
    /// `pg_tblspc/<oid>/<version dir>/...`.
    pub path: String,
    /// Where to read it (tablespace links resolved).
    pub absolute: PathBuf,
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime: i64,
    pub class: FileClass,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileClass {
    NonRelation,
    /// Segment `segment` of the relation fork `rf`.
    Relation {
        rf: RelFork,
        segment: u32,
    },
}

/// How one file goes into the backup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileMethod {
    Whole,
    /// Only the listed blocks, as an `INCREMENTAL.` file.
    Incremental(IncrementalHeader),
    /// The first bytes only, at most this many: the part of a backup's
    /// last WAL segment that it needs (restore pads the rest with zeros,
    /// which recovery reads as the end of WAL).
    Head(u64),
}

/// Lists what a backup of `data_dir` copies: the directories to create
/// (relative, parents first) and the files, both sorted by path.
/// `tablespace_version_dir` is the server's `TABLESPACE_VERSION_DIRECTORY`;
/// anything at a path in `exclude` is left out.
pub fn walk_data_directory(
    data_dir: &Path,
    tablespace_version_dir: &str,
    exclude: &[PathBuf],
) -> Result<(Vec<String>, Vec<SourceFile>), PlanError> {
    let root = fs::canonicalize(data_dir).map_err(|error| io_error(data_dir, error))?;
    let mut walker = Walker {
        version_dir: tablespace_version_dir,
        // Compared with canonical paths; a missing exclusion cannot match.
        exclude: exclude
            .iter()
            .filter_map(|path| fs::canonicalize(path).ok())
            .collect(),
        directories: Vec::new(),
        files: Vec::new(),
    };
    walker.walk(&root, "", DirKind::Root)?;
    let Walker {
        mut directories,
        mut files,
        ..
    } = walker;
    directories.sort();
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((directories, files))
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DirKind {
    Root,
    /// `pg_tblspc`: its entries are tablespaces.
    Tablespaces,
    /// `pg_tblspc/<oid>`: only the version directory is wanted.
    Tablespace,
    /// `pg_tblspc/<oid>/<version>`: its entries are databases.
    TablespaceVersion,
    /// `base/<db>` or `pg_tblspc/<oid>/<version>/<db>`.
    Database,
    Other,
}

impl DirKind {
    /// The kind of subdirectory `name` of a directory of this kind at
    /// `relative`, or None when it is kept but its contents are not.
    fn child(self, relative: &str, name: &str) -> Option<DirKind> {
        Some(match self {
            DirKind::Root if EXCLUDED_DIR_CONTENTS.contains(&name) => return None,
            DirKind::Root if name == TABLESPACES_DIR => DirKind::Tablespaces,
            DirKind::Tablespace => DirKind::TablespaceVersion,
            DirKind::TablespaceVersion if parse_oid(name).is_some() => DirKind::Database,
            DirKind::Other if relative == "base" && parse_oid(name).is_some() => DirKind::Database,
            _ => DirKind::Other,
        })
    }
}

struct Walker<'a> {
    version_dir: &'a str,
    exclude: BTreeSet<PathBuf>,
    directories: Vec<String>,
    files: Vec<SourceFile>,
}

impl Walker<'_> {
    fn walk(&mut self, absolute: &Path, relative: &str, kind: DirKind) -> Result<(), PlanError> {
        let entries = match fs::read_dir(absolute) {
            Ok(entries) => entries,
            // Dropped while we walk (a database, a temporary directory).
            Err(error) if error.kind() == io::ErrorKind::NotFound && kind != DirKind::Root => {
                return Ok(())
            }
            Err(error) => return Err(io_error(absolute, error)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|error| io_error(absolute, error))?;
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| PlanError::NonUtf8Name { path: entry.path() })?;
            names.push(name);
        }
        let names_here: BTreeSet<&str> = names.iter().map(String::as_str).collect();

        for name in &names {
            if is_excluded_name(name)
                || (kind == DirKind::Tablespace && name != self.version_dir)
                || (kind == DirKind::Database && skip_in_database(name, &names_here))
                || (kind == DirKind::Root && name == OWN_DIR)
            {
                continue;
            }
            let child_relative = if relative.is_empty() {
                name.clone()
            } else {
                format!("{relative}/{name}")
            };
            if kind == DirKind::Root && name == WAL_DIR {
                // Possibly a link to another file system; only recreated,
                // never read: WAL is copied separately.
                self.directories.push(child_relative);
                self.directories.push(WAL_ARCHIVE_STATUS_DIR.to_owned());
                continue;
            }
            let child_absolute = absolute.join(name);
            if self.exclude.contains(&child_absolute) {
                continue;
            }
            let metadata = match fs::symlink_metadata(&child_absolute) {
                Ok(metadata) => metadata,
                Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
                Err(error) => return Err(io_error(&child_absolute, error)),
            };
            let file_type = metadata.file_type();
            if kind == DirKind::Tablespaces && (file_type.is_symlink() || file_type.is_dir()) {
                // A link for an ordinary tablespace, a directory for an
                // in-place one; either way read the real place.
                let target = match fs::canonicalize(&child_absolute) {
                    Ok(target) if target.is_dir() => target,
                    Err(error) if error.kind() == io::ErrorKind::NotFound && file_type.is_dir() => {
                        continue
                    }
                    _ => {
                        return Err(PlanError::BrokenTablespace {
                            path: child_absolute,
                        })
                    }
                };
                if !self.exclude.contains(&target) {
                    self.directories.push(child_relative.clone());
                    self.walk(&target, &child_relative, DirKind::Tablespace)?;
                }
            } else if file_type.is_dir() {
                self.directories.push(child_relative.clone());
                if let Some(child_kind) = kind.child(relative, name) {
                    self.walk(&child_absolute, &child_relative, child_kind)?;
                }
            } else if file_type.is_file() {
                let class = classify(&child_relative, self.version_dir);
                self.files.push(SourceFile {
                    path: child_relative,
                    absolute: child_absolute,
                    size: metadata.len(),
                    mtime: metadata.mtime(),
                    class,
                });
            }
            // Other symbolic links, sockets and the like are not copied.
        }
        Ok(())
    }
}

fn is_excluded_name(name: &str) -> bool {
    EXCLUDED_FILES.contains(&name)
        || EXCLUDED_PREFIXES
            .iter()
            .any(|prefix| name.starts_with(prefix))
}

/// Whether a database directory entry is left out: a temporary relation,
/// or a fork other than `_init` of an unlogged relation (one that has an
/// `_init` fork among `names_here`).
fn skip_in_database(name: &str, names_here: &BTreeSet<&str>) -> bool {
    if let Some(rest) = name.strip_prefix('t') {
        if let Some((backend, file)) = rest.split_once('_') {
            if parse_oid(backend).is_some() && parse_relation_file_name(file).is_some() {
                return true;
            }
        }
    }
    match parse_relation_file_name(name) {
        Some((rel_number, fork, _)) if fork != ForkNumber::Init => {
            names_here.contains(format!("{rel_number}_init").as_str())
        }
        _ => false,
    }
}

/// A decimal OID as PostgreSQL writes it: digits, no sign, no leading
/// zero, not 0 (InvalidOid).
fn parse_oid(text: &str) -> Option<u32> {
    let canonical = !text.is_empty()
        && !text.starts_with('0')
        && text.bytes().all(|byte| byte.is_ascii_digit());
    canonical.then(|| text.parse().ok()).flatten()
}

/// `<relnumber>[_fsm|_vm|_init][.<segment>]` as (relnumber, fork, segment).
fn parse_relation_file_name(name: &str) -> Option<(u32, ForkNumber, u32)> {
    let (stem, segment) = match name.split_once('.') {
        Some((stem, segment)) => (stem, parse_oid(segment)?),
        None => (name, 0),
    };
    let (number, fork) = match stem.split_once('_') {
        Some((number, "fsm")) => (number, ForkNumber::Fsm),
        Some((number, "vm")) => (number, ForkNumber::VisibilityMap),
        Some((number, "init")) => (number, ForkNumber::Init),
        Some(_) => return None,
        None => (stem, ForkNumber::Main),
    };
    Some((parse_oid(number)?, fork, segment))
}

/// Whether the file at `path` (relative to the data directory) is a
/// segment of a relation fork, and which.
fn classify(path: &str, version_dir: &str) -> FileClass {
    let parts: Vec<&str> = path.split('/').collect();
    let located = match parts.as_slice() {
        ["global", name] => Some((GLOBAL_TABLESPACE_OID, 0, *name)),
        ["base", db, name] => parse_oid(db).map(|db| (DEFAULT_TABLESPACE_OID, db, *name)),
        [TABLESPACES_DIR, spc, version, db, name] if *version == version_dir => parse_oid(spc)
            .zip(parse_oid(db))
            .map(|(spc, db)| (spc, db, *name)),
        _ => None,
    };
    let Some((spc_oid, db_oid, name)) = located else {
        return FileClass::NonRelation;
    };
    match parse_relation_file_name(name) {
        Some((rel_number, fork, segment)) => FileClass::Relation {
            rf: RelFork {
                spc_oid,
                db_oid,
                rel_number,
                fork,
            },
            segment,
        },
        None => FileClass::NonRelation,
    }
}

/// Whether `file` goes whole or as an incremental file, given `changes`,
/// the changes since the parent backup started (None for a full backup),
/// and whether the parent chain holds a file at the same path.
///
/// Whole: a full backup; anything not a relation segment; FSM forks (not
/// reliably WAL-logged) and init forks; files the parent chain lacks; every
/// file of a database created or dropped since; a segment that starts at
/// or past the fork's limit block (truncated away or recreated since); a
/// file not a whole number of blocks or longer than a segment (something
/// unexpected is going on); and a segment of which more than 90% would be
/// sent anyway. Otherwise the incremental file lists this segment's
/// changed blocks plus every block from the limit block on.
pub fn choose_method(
    file: &SourceFile,
    changes: Option<&BlockMap>,
    parent_has_path: bool,
    block_size: u32,
    segment_blocks: u32,
) -> FileMethod {
    let Some(changes) = changes else {
        return FileMethod::Whole;
    };
    let FileClass::Relation { rf, segment } = file.class else {
        return FileMethod::Whole;
    };
    let block_size_64 = u64::from(block_size);
    let whole = !parent_has_path
        || matches!(rf.fork, ForkNumber::Fsm | ForkNumber::Init)
        || changes
            .get(&RelFork::database(rf.spc_oid, rf.db_oid))
            .is_some()
        || block_size == 0
        || !file.size.is_multiple_of(block_size_64)
        || file.size / block_size_64 > u64::from(segment_blocks);
    if whole {
        return FileMethod::Whole;
    }
    // At most segment_blocks, checked above.
    let truncation_blocks = (file.size / block_size_64) as u32;
    let segment_start = u64::from(segment) * u64::from(segment_blocks);
    let mut blocks = RoaringBitmap::new();
    if let Some(fork) = changes.get(&rf) {
        if let Some(limit) = fork.limit_block {
            let limit = u64::from(limit);
            if limit <= segment_start {
                return FileMethod::Whole;
            }
            // Below truncation_blocks <= segment_blocks when it matters.
            let relative_limit = (limit - segment_start).min(u64::from(truncation_blocks)) as u32;
            blocks.insert_range(relative_limit..truncation_blocks);
        }
        // Block numbers are u32, so a segment starting past them has none.
        if let Ok(start) = u32::try_from(segment_start) {
            let in_file = fork
                .blocks
                .range(start..)
                .map(|block| block - start)
                .take_while(|&relative| relative < truncation_blocks);
            for relative in in_file {
                blocks.insert(relative);
            }
        }
    }
    if blocks.len() * 100 > u64::from(truncation_blocks) * INCREMENTAL_MAX_PERCENT {
        return FileMethod::Whole;
    }
    FileMethod::Incremental(IncrementalHeader {
        block_size,
        truncation_blocks,
        blocks: blocks.iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VERSION_DIR: &str = "PG_15_202209061";
    const BLOCK: u32 = 8192;
    const SEGMENT: u32 = 100;

    fn rel(rel_number: u32, fork: ForkNumber) -> RelFork {
        RelFork {
            spc_oid: DEFAULT_TABLESPACE_OID,
            db_oid: 5,
            rel_number,
            fork,
        }
    }

    fn relation_file(rf: RelFork, segment: u32, blocks: u64) -> SourceFile {
        SourceFile {
            path: String::new(),
            absolute: PathBuf::new(),
            size: blocks * u64::from(BLOCK),
            mtime: 0,
            class: FileClass::Relation { rf, segment },
        }
    }

    fn incremental(truncation_blocks: u32, blocks: impl IntoIterator<Item = u32>) -> FileMethod {
        FileMethod::Incremental(IncrementalHeader {
            block_size: BLOCK,
            truncation_blocks,
            blocks: blocks.into_iter().collect(),
        })
    }

    fn choose(file: &SourceFile, changes: &BlockMap) -> FileMethod {
        choose_method(file, Some(changes), true, BLOCK, SEGMENT)
    }

    #[test]
    fn classifies_relation_files_by_path() {
        let relation = |path: &str| match classify(path, VERSION_DIR) {
            FileClass::Relation { rf, segment } => Some((rf, segment)),
            FileClass::NonRelation => None,
        };
        assert_eq!(
            relation("base/5/16384"),
            Some((rel(16384, ForkNumber::Main), 0))
        );
        assert_eq!(
            relation("base/5/16384.3"),
            Some((rel(16384, ForkNumber::Main), 3))
        );
        assert_eq!(
            relation("base/5/16384_vm"),
            Some((rel(16384, ForkNumber::VisibilityMap), 0))
        );
        assert_eq!(
            relation("base/5/16384_fsm.1"),
            Some((rel(16384, ForkNumber::Fsm), 1))
        );
        assert_eq!(
            relation("base/5/16384_init"),
            Some((rel(16384, ForkNumber::Init), 0))
        );
        let global = RelFork {
            spc_oid: GLOBAL_TABLESPACE_OID,
            db_oid: 0,
            rel_number: 1262,
            fork: ForkNumber::Main,
        };
        assert_eq!(relation("global/1262"), Some((global, 0)));
        let spc = RelFork {
            spc_oid: 16400,
            db_oid: 16401,
            rel_number: 16402,
            fork: ForkNumber::Main,
        };
        assert_eq!(
            relation("pg_tblspc/16400/PG_15_202209061/16401/16402.1"),
            Some((spc, 1))
        );
        for other in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/PG_VERSION",
            "base/5/pg_internal.init",
            "base/5/016384",
            "base/5/16384.0",
            "base/5/16384_xx",
            "base/5/16384.",
            "base/05/16384",
            "base/5/99999999999",
            "pg_tblspc/16400/PG_16_202307071/16401/16402",
            "pg_xact/0000",
            "16384",
        ] {
            assert_eq!(relation(other), None, "{other}");
        }
    }

    #[test]
    fn skips_temporary_relations_and_unlogged_forks() {
        let here: BTreeSet<&str> = ["16384", "16384_init", "16384_vm", "16390"].into();
        assert!(skip_in_database("16384", &here));
        assert!(skip_in_database("16384.1", &here));
        assert!(skip_in_database("16384_vm", &here));
        assert!(!skip_in_database("16384_init", &here));
        assert!(!skip_in_database("16390", &here));
        assert!(!skip_in_database("PG_VERSION", &here));
        assert!(skip_in_database("t3_16500", &here));
        assert!(skip_in_database("t3_16500_fsm.2", &here));
        assert!(!skip_in_database("t3x_16500", &here));
    }

    #[test]
    fn full_backups_and_non_relations_go_whole() {
        let changes = BlockMap::new();
        let file = relation_file(rel(1, ForkNumber::Main), 0, 10);
        assert_eq!(
            choose_method(&file, None, true, BLOCK, SEGMENT),
            FileMethod::Whole
        );
        let other = SourceFile {
            class: FileClass::NonRelation,
            ..file.clone()
        };
        assert_eq!(choose(&other, &changes), FileMethod::Whole);
    }

    #[test]
    fn fsm_and_init_forks_go_whole() {
        let changes = BlockMap::new();
        for fork in [ForkNumber::Fsm, ForkNumber::Init] {
            let file = relation_file(rel(1, fork), 0, 10);
            assert_eq!(choose(&file, &changes), FileMethod::Whole);
        }
        let vm = relation_file(rel(1, ForkNumber::VisibilityMap), 0, 10);
        assert_eq!(choose(&vm, &changes), incremental(10, []));
    }

    #[test]
    fn files_new_since_the_parent_go_whole() {
        let file = relation_file(rel(1, ForkNumber::Main), 0, 10);
        let changes = BlockMap::new();
        assert_eq!(
            choose_method(&file, Some(&changes), false, BLOCK, SEGMENT),
            FileMethod::Whole
        );
    }

    #[test]
    fn a_replaced_database_goes_whole() {
        let mut changes = BlockMap::new();
        changes.mark_database_replaced(DEFAULT_TABLESPACE_OID, 5);
        let file = relation_file(rel(1, ForkNumber::Main), 0, 10);
        assert_eq!(choose(&file, &changes), FileMethod::Whole);
        let other_db = RelFork {
            db_oid: 6,
            ..rel(1, ForkNumber::Main)
        };
        assert_eq!(
            choose(&relation_file(other_db, 0, 10), &changes),
            incremental(10, [])
        );
    }

    #[test]
    fn a_limit_at_or_before_the_segment_start_sends_it_whole() {
        let mut changes = BlockMap::new();
        changes.set_limit_block(rel(1, ForkNumber::Main), SEGMENT);
        let first = relation_file(rel(1, ForkNumber::Main), 0, u64::from(SEGMENT));
        let second = relation_file(rel(1, ForkNumber::Main), 1, 10);
        assert_eq!(choose(&second, &changes), FileMethod::Whole);
        // The first segment is entirely below the limit: nothing to send.
        assert_eq!(choose(&first, &changes), incremental(SEGMENT, []));

        let mut created = BlockMap::new();
        created.set_limit_block(rel(1, ForkNumber::Main), 0);
        assert_eq!(choose(&first, &created), FileMethod::Whole);
    }

    #[test]
    fn a_limit_inside_the_segment_sends_every_block_from_it() {
        let mut changes = BlockMap::new();
        let rf = rel(1, ForkNumber::Main);
        changes.mark_block_modified(rf, 3);
        changes.set_limit_block(rf, SEGMENT + 40);
        changes.mark_block_modified(rf, SEGMENT + 2);
        changes.mark_block_modified(rf, SEGMENT + 45);
        let second = relation_file(rf, 1, 50);
        assert_eq!(
            choose(&second, &changes),
            incremental(50, [2].into_iter().chain(40..50))
        );
        let first = relation_file(rf, 0, u64::from(SEGMENT));
        assert_eq!(choose(&first, &changes), incremental(SEGMENT, [3]));
        // Shorter than the limit now (truncated again since): nothing past
        // the file's end is listed.
        let short = relation_file(rf, 1, 30);
        assert_eq!(choose(&short, &changes), incremental(30, [2]));
    }

    #[test]
    fn changed_blocks_are_taken_per_segment_and_within_the_file() {
        let mut changes = BlockMap::new();
        let rf = rel(1, ForkNumber::Main);
        for block in [0, 5, 99, 100, 150, 210, 250] {
            changes.mark_block_modified(rf, block);
        }
        let segment = |number: u32, blocks: u64| relation_file(rf, number, blocks);
        assert_eq!(
            choose(&segment(0, 100), &changes),
            incremental(100, [0, 5, 99])
        );
        assert_eq!(
            choose(&segment(1, 100), &changes),
            incremental(100, [0, 50])
        );
        assert_eq!(choose(&segment(2, 20), &changes), incremental(20, [10]));
    }

    #[test]
    fn mostly_changed_segments_go_whole() {
        let mut changes = BlockMap::new();
        let rf = rel(1, ForkNumber::Main);
        for block in 0..90 {
            changes.mark_block_modified(rf, block);
        }
        assert_eq!(
            choose(&relation_file(rf, 0, 100), &changes),
            incremental(100, 0..90)
        );
        changes.mark_block_modified(rf, 90);
        assert_eq!(
            choose(&relation_file(rf, 0, 100), &changes),
            FileMethod::Whole
        );
    }

    #[test]
    fn odd_sizes_go_whole() {
        let changes = BlockMap::new();
        let rf = rel(1, ForkNumber::Main);
        let partial = SourceFile {
            size: 10 * u64::from(BLOCK) + 1,
            ..relation_file(rf, 0, 0)
        };
        assert_eq!(choose(&partial, &changes), FileMethod::Whole);
        let oversized = relation_file(rf, 0, u64::from(SEGMENT) + 1);
        assert_eq!(choose(&oversized, &changes), FileMethod::Whole);
        assert_eq!(
            choose(&relation_file(rf, 0, 0), &changes),
            incremental(0, [])
        );
    }
}
