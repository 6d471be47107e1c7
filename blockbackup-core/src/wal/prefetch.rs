//! Fetching archived WAL ahead of recovery.
//!
//! PostgreSQL's startup process runs `restore_command` for one segment,
//! waits for it, replays it, and only then asks for the next: every
//! fetch (start a process, find the file, decode it, check it, write it)
//! adds to the time recovery takes instead of overlapping replay. Like
//! pgBackRest's asynchronous `archive-get`, `archive-get --prefetch` keeps
//! a queue of the segments that follow the one asked for, fetched by a
//! process of its own while the server replays, so that the next request
//! is a rename.
//!
//! The queue is a directory beside the file asked for (`pg_wal/` for
//! `%p`, whose contents no backup copies):
//!
//! ```text
//! pg_wal/pg_blockbackup_prefetch/owner      the repository it was fetched from
//! pg_wal/pg_blockbackup_prefetch/wanted     the last name recovery asked for
//! pg_wal/pg_blockbackup_prefetch/fill.lock  held by the process that fills it
//! pg_wal/pg_blockbackup_prefetch/<segment>  a fetched, checked segment
//! pg_wal/pg_blockbackup_prefetch/stop       recovery has ended: fetch no more
//! ```
//!
//! What keeps it right:
//!
//! * a queued segment is written aside and renamed into the queue only
//!   once the archive's checks passed (codec, size, CRC-32C), so a filler
//!   killed midway leaves nothing a request takes; an archived name never
//!   changes content (the archive refuses that), so a queued copy stays
//!   true;
//! * a request that finds its segment queued moves it into place; one that
//!   does not fetches it itself, so every error (a damaged or missing
//!   segment) is met by the request and said to PostgreSQL as without a
//!   queue;
//! * the queue answers only for the repository recorded in `owner`;
//! * one filler at a time (a lock taken without waiting), at most the
//!   configured number of segments ahead of the last request, and
//!   segments behind the last request are removed: the queue stays
//!   bounded;
//! * at the end of recovery `recovery_end_command` clears it: it marks
//!   the queue stopped, waits for the filler, and removes the directory.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::archive::{ArchiveError, WalArchive};
use super::name::{WalFileKind, WalFileName};

/// The queue's directory, beside the file `archive-get` writes.
pub const PREFETCH_DIR: &str = "pg_blockbackup_prefetch";
const OWNER_FILE: &str = "owner";
const WANTED_FILE: &str = "wanted";
const LOCK_FILE: &str = "fill.lock";
const STOP_FILE: &str = "stop";
const FETCHING_SUFFIX: &str = ".fetching";

/// The queue of segments fetched ahead, for one repository.
#[derive(Debug, Clone)]
pub struct PrefetchQueue {
    dir: PathBuf,
    owner: String,
}

impl PrefetchQueue {
    /// The queue beside `target` (the file a request writes), answering
    /// for the repository `owner` (its root, as text).
    pub fn beside(target: &Path, owner: &str) -> Self {
        let parent = target
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        PrefetchQueue::in_dir(&parent.join(PREFETCH_DIR), owner)
    }

    /// The queue in `dir` itself.
    pub fn in_dir(dir: &Path, owner: &str) -> Self {
        PrefetchQueue {
            dir: dir.to_owned(),
            owner: owner.to_owned(),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// For a request of `name`: records it as wanted, drops what is behind
    /// it, and moves its queued copy to `target`. Ok(true) when it was
    /// queued; Ok(false) when the request must fetch it itself. The
    /// directory is made here, never by the filler, so that a filler
    /// started late finds a cleared queue gone.
    pub fn take(&self, name: &WalFileName, target: &Path) -> io::Result<bool> {
        if !self.dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)?;
        }
        if fs::symlink_metadata(self.dir.join(STOP_FILE)).is_ok() {
            return Ok(false);
        }
        if !self.owned()? {
            self.remove_segments(|_| true)?;
            write_small(&self.dir.join(OWNER_FILE), &self.owner)?;
        }
        write_small(&self.dir.join(WANTED_FILE), &name.to_string())?;
        self.remove_segments(|queued| behind(queued, name))?;
        match fs::rename(self.dir.join(name.to_string()), target) {
            Ok(()) => Ok(true),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Fetches into the queue, in order, those of the `count` segments
    /// after `name` it does not hold; stops at the first the archive does
    /// not hold, at any error (the request that wants the segment meets it
    /// again), and when the queue is stopped. Does nothing while another
    /// filler runs. Returns how many it fetched.
    pub fn fill(
        &self,
        archive: &WalArchive<'_>,
        name: &WalFileName,
        count: u64,
    ) -> Result<u64, ArchiveError> {
        let io_error = |e| ArchiveError::WriteTarget {
            path: self.dir.clone(),
            source: e,
        };
        // Never creates the directory: a queue cleared meanwhile stays gone.
        let lock = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.dir.join(LOCK_FILE))
        {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(io_error(error)),
        };
        if lock.try_lock().is_err() || !self.owned().map_err(io_error)? {
            return Ok(0);
        }
        let Some(segment_size) = archive.segment_size()? else {
            return Ok(0);
        };
        let mut fetched = 0;
        for next in following(name, count, segment_size) {
            if self.stopped() {
                break;
            }
            if self.wanted().is_some_and(|wanted| !behind(&wanted, &next)) {
                continue; // recovery is already there or past it
            }
            let queued = self.dir.join(next.to_string());
            if queued.exists() {
                continue;
            }
            let aside = self.dir.join(format!("{next}{FETCHING_SUFFIX}"));
            if !archive.get(&next.to_string(), &aside)? {
                break;
            }
            if self.stopped() {
                let _ = fs::remove_file(&aside);
                break;
            }
            fs::rename(&aside, &queued).map_err(io_error)?;
            fetched += 1;
        }
        drop(lock);
        Ok(fetched)
    }

    /// Ends the queue: no filler fetches again, the running one is waited
    /// for, and the directory goes.
    pub fn clear(&self) -> io::Result<()> {
        if !self.dir.is_dir() {
            return Ok(());
        }
        write_small(&self.dir.join(STOP_FILE), "")?;
        if let Ok(lock) = OpenOptions::new()
            .write(true)
            .open(self.dir.join(LOCK_FILE))
        {
            lock.lock()?;
        }
        fs::remove_dir_all(&self.dir)
    }

    fn owned(&self) -> io::Result<bool> {
        match fs::read_to_string(self.dir.join(OWNER_FILE)) {
            Ok(text) => Ok(text == self.owner),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn stopped(&self) -> bool {
        fs::symlink_metadata(self.dir.join(STOP_FILE)).is_ok()
    }

    fn wanted(&self) -> Option<WalFileName> {
        let mut text = String::new();
        File::open(self.dir.join(WANTED_FILE))
            .and_then(|mut f| f.read_to_string(&mut text))
            .ok()?;
        WalFileName::parse(text.trim())
    }

    /// Removes the queued segments (and unfinished fetches) `drop` picks.
    fn remove_segments(&self, drop: impl Fn(&WalFileName) -> bool) -> io::Result<()> {
        for entry in fs::read_dir(&self.dir)? {
            let entry = entry?;
            let file_name = entry.file_name();
            let Some(text) = file_name.to_str() else {
                continue;
            };
            let base = text.strip_suffix(FETCHING_SUFFIX).unwrap_or(text);
            if let Some(queued) = WalFileName::parse(base).filter(WalFileName::is_segment) {
                if drop(&queued) {
                    match fs::remove_file(entry.path()) {
                        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}

/// How many segments of `segment_size` bytes fit in `budget_bytes`, at
/// least one.
pub fn segments_in(budget_bytes: u64, segment_size: u64) -> u64 {
    (budget_bytes / segment_size.max(1)).max(1)
}

/// The `count` segments after `name`, on its timeline.
pub fn following(name: &WalFileName, count: u64, segment_size: u64) -> Vec<WalFileName> {
    if name.kind != WalFileKind::Segment {
        return Vec::new();
    }
    let number = name.segment_number(segment_size);
    (1..=count)
        .map(|step| WalFileName::segment(name.timeline, number + step, segment_size))
        .collect()
}

/// Whether `queued` comes before `wanted` in the WAL (whatever the
/// timeline: a segment behind the one recovery asks for is never asked
/// for again).
fn behind(queued: &WalFileName, wanted: &WalFileName) -> bool {
    (queued.log, queued.seg) < (wanted.log, wanted.seg)
}

fn write_small(path: &Path, text: &str) -> io::Result<()> {
    let mut file = File::create(path)?;
    file.write_all(text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 * 1024 * 1024;

    fn name(text: &str) -> WalFileName {
        WalFileName::parse(text).unwrap()
    }

    #[test]
    fn the_segments_after_cross_a_log_boundary() {
        let after = following(&name("0000000200000000000000FE"), 3, SEG);
        let texts: Vec<String> = after.iter().map(ToString::to_string).collect();
        assert_eq!(
            texts,
            [
                "0000000200000000000000FF",
                "000000020000000100000000",
                "000000020000000100000001"
            ]
        );
        assert!(following(&name("00000002.history"), 3, SEG).is_empty());
        assert_eq!(segments_in(128 << 20, SEG), 8);
        assert_eq!(segments_in(128 << 20, 1 << 30), 1);
    }

    #[test]
    fn a_request_takes_its_queued_copy_and_drops_what_is_behind() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("RECOVERYXLOG");
        let queue = PrefetchQueue::beside(&target, "/repo");
        let first = name("000000010000000000000003");
        assert!(!queue.take(&first, &target).unwrap());
        for queued in ["000000010000000000000002", "000000010000000000000004"] {
            fs::write(queue.dir().join(queued), queued).unwrap();
        }
        fs::write(queue.dir().join("000000010000000000000001.fetching"), "x").unwrap();
        let next = name("000000010000000000000004");
        assert!(queue.take(&next, &target).unwrap());
        assert_eq!(
            fs::read_to_string(&target).unwrap(),
            "000000010000000000000004"
        );
        let left: Vec<_> = fs::read_dir(queue.dir())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| WalFileName::parse(n.trim_end_matches(FETCHING_SUFFIX)).is_some())
            .collect();
        assert!(left.is_empty(), "{left:?}");
        assert_eq!(queue.wanted(), Some(next));
    }

    #[test]
    fn another_repositorys_queue_is_not_served() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("RECOVERYXLOG");
        let seg = name("000000010000000000000005");
        let ours = PrefetchQueue::beside(&target, "/repo-a");
        assert!(!ours.take(&seg, &target).unwrap());
        fs::write(ours.dir().join(seg.to_string()), "from a").unwrap();
        let theirs = PrefetchQueue::beside(&target, "/repo-b");
        assert!(!theirs.take(&seg, &target).unwrap());
        assert!(!target.exists());
        assert!(!ours.dir().join(seg.to_string()).exists());
    }

    #[test]
    fn a_cleared_queue_stays_gone() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("RECOVERYXLOG");
        let queue = PrefetchQueue::beside(&target, "/repo");
        let seg = name("000000010000000000000005");
        assert!(!queue.take(&seg, &target).unwrap());
        queue.clear().unwrap();
        assert!(!queue.dir().exists());
        queue.clear().unwrap();
    }
}
