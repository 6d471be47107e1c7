//! The pg_dump process a dump agent supervises, and what it leaves behind.
//!
//! The process runs in a process group of its own, so that stopping it
//! also stops the worker processes a parallel (`--jobs`) dump forks; it
//! gets SIGTERM first and SIGKILL when it does not go within a grace
//! period. It is also told to die with its parent (Linux's parent-death
//! signal), so that an agent killed outright does not leave a dump running
//! on its own. Its standard error goes to a log file next to the dump; the
//! tail of that log is what the agent reports.
//!
//! Nothing here knows about PostgreSQL's internals; the agent in the
//! extension calls [`DumpProcess::poll`] between waits on its latch.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::content_checksum::crc32c_of;
use crate::repository::catalog::{StoredFile, StoredKind};

pub struct DumpProcess {
    child: Child,
}

/// How a finished process ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpExit {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub description: String,
}

impl DumpExit {
    pub fn from_status(status: ExitStatus) -> Self {
        match (status.code(), status.signal()) {
            (Some(code), _) => DumpExit {
                code: Some(code),
                description: format!("exit code {code}"),
            },
            (None, Some(signal)) => DumpExit {
                code: None,
                description: format!("terminated by signal {signal}"),
            },
            (None, None) => DumpExit {
                code: None,
                description: "ended for an unknown reason".to_owned(),
            },
        }
    }

    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }
}

impl DumpProcess {
    /// Starts `program` with `arguments` and exactly the environment
    /// `environment`, standard input on /dev/null, standard output on
    /// /dev/null or, with `pipe_output`, a pipe ([`DumpProcess::take_output`]),
    /// and standard error appended to `stderr_log`.
    pub fn spawn(
        program: &Path,
        arguments: &[OsString],
        environment: &[(OsString, OsString)],
        stderr_log: &Path,
        pipe_output: bool,
    ) -> io::Result<Self> {
        let log = File::options().create(true).append(true).open(stderr_log)?;
        let mut command = Command::new(program);
        command
            .args(arguments)
            .env_clear()
            .envs(environment.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(if pipe_output {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::from(log))
            .current_dir("/")
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(DumpProcess {
            child: command.spawn()?,
        })
    }

    /// The read end of the output pipe, once.
    pub fn take_output(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The exit, if the process has ended.
    pub fn poll(&mut self) -> io::Result<Option<DumpExit>> {
        Ok(self.child.try_wait()?.map(DumpExit::from_status))
    }

    /// Stops the whole process group: SIGTERM, then SIGKILL after `grace`.
    /// Returns once the process has been reaped.
    pub fn terminate(&mut self, grace: Duration) -> io::Result<DumpExit> {
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        loop {
            if let Some(exit) = self.poll()? {
                // Forked job workers may outlive the leader for a moment.
                self.signal_group(libc::SIGKILL);
                return Ok(exit);
            }
            if Instant::now() >= deadline {
                self.signal_group(libc::SIGKILL);
                let status = self.child.wait()?;
                return Ok(DumpExit::from_status(status));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal_group(&self, signal: i32) {
        let Ok(group) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: a plain syscall; a group that is already gone gives ESRCH.
        unsafe {
            libc::kill(-group, signal);
        }
    }
}

/// The end of a log file, at most `max_bytes`, starting at a line boundary
/// when one is near, as text (invalid UTF-8 replaced).
pub fn log_tail(path: &Path, max_bytes: usize) -> io::Result<String> {
    let mut file = File::open(path)?;
    let length = file.metadata()?.len();
    let start = length.saturating_sub(max_bytes as u64);
    file.seek(SeekFrom::Start(start))?;
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    if start > 0 {
        if let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            if newline + 1 < bytes.len() {
                bytes.drain(..=newline);
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    Ok(text.trim_end().to_owned())
}

/// Every regular file under `root` (a file or a directory), with size and
/// CRC-32C, paths relative to `base` with '/'; sorted by path.
pub fn checksum_output(base: &Path, root: &Path) -> io::Result<Vec<StoredFile>> {
    let mut files = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path)?;
        if metadata.is_dir() {
            for entry in fs::read_dir(&path)? {
                pending.push(entry?.path());
            }
        } else if metadata.is_file() {
            files.push(checksum_one(base, &path, &metadata)?);
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

fn checksum_one(base: &Path, path: &Path, metadata: &fs::Metadata) -> io::Result<StoredFile> {
    let relative: PathBuf = path
        .strip_prefix(base)
        .map_err(|_| io::Error::other(format!("{} is outside {}", path.display(), base.display())))?
        .to_path_buf();
    let (size, crc) = crc32c_of(File::open(path)?)?;
    let mtime = metadata
        .modified()
        .ok()
        .and_then(|time| time.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |duration| duration.as_secs() as i64);
    Ok(StoredFile {
        path: relative.to_string_lossy().replace('\\', "/"),
        kind: StoredKind::Whole,
        size,
        stored_size: size,
        crc32c: crc,
        stored_crc32c: Some(crc),
        mtime,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn script(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake_pg_dump");
        fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn wait(process: &mut DumpProcess) -> DumpExit {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(exit) = process.poll().unwrap() {
                return exit;
            }
            assert!(Instant::now() < deadline, "process did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn alive(pid: i32) -> bool {
        unsafe { libc::kill(pid, 0) == 0 }
    }

    #[test]
    fn a_piped_output_is_read_to_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let program = script(dir.path(), "printf 'dump bytes'; echo oops >&2");
        let log = dir.path().join("log");
        let mut process = DumpProcess::spawn(&program, &[], &[], &log, true).unwrap();
        let mut output = String::new();
        process
            .take_output()
            .unwrap()
            .read_to_string(&mut output)
            .unwrap();
        assert!(wait(&mut process).succeeded());
        assert_eq!(output, "dump bytes");
        assert_eq!(log_tail(&log, 100).unwrap(), "oops");
        assert!(process.take_output().is_none());
    }

    #[test]
    fn exit_code_arguments_environment_and_stderr_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        let program = script(
            dir.path(),
            "echo \"args: $1 $2\" >&2; echo \"env: $ONLY_THIS ${HOME:-unset}\" >&2; exit 3",
        );
        let log = dir.path().join("log");
        let mut process = DumpProcess::spawn(
            &program,
            &["a b".into(), "$(id)".into()],
            &[("ONLY_THIS".into(), "yes".into())],
            &log,
            false,
        )
        .unwrap();
        let exit = wait(&mut process);
        assert_eq!(exit.code, Some(3));
        assert!(!exit.succeeded());
        assert_eq!(
            log_tail(&log, 1000).unwrap(),
            "args: a b $(id)\nenv: yes unset"
        );
    }

    #[test]
    fn terminate_stops_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("worker.pid");
        // A leader that ignores SIGTERM and a forked worker, like a
        // parallel pg_dump stuck in a query.
        let program = script(
            dir.path(),
            &format!(
                "trap '' TERM; sleep 600 & echo $! > {}; wait",
                pid_file.display()
            ),
        );
        let mut process =
            DumpProcess::spawn(&program, &[], &[], &dir.path().join("log"), false).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_to_string(&pid_file).map_or(true, |s| s.trim().is_empty()) {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let worker: i32 = fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert!(alive(worker));
        let exit = process.terminate(Duration::from_millis(300)).unwrap();
        assert_eq!(exit.code, None);
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(worker) {
            assert!(Instant::now() < deadline, "the forked worker survived");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn log_tail_starts_at_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        fs::write(&log, "first line\nsecond line\nthird\n").unwrap();
        assert_eq!(log_tail(&log, 14).unwrap(), "third");
        assert_eq!(
            log_tail(&log, 1000).unwrap(),
            "first line\nsecond line\nthird"
        );
    }

    #[test]
    fn output_checksums_cover_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("dump").join("dump.d");
        fs::create_dir_all(&root).unwrap();
        fs::write(root.join("toc.dat"), b"toc").unwrap();
        fs::write(root.join("3001.dat.gz"), b"data").unwrap();
        let files = checksum_output(&dir.path().join("dump"), &root).unwrap();
        let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["dump.d/3001.dat.gz", "dump.d/toc.dat"]);
        assert_eq!(files[1].crc32c, crc32c::crc32c(b"toc"));
        assert_eq!(files[0].size, 4);
    }
}
