//! One node's `psql`, run by the coordinator's session: started with an
//! argument vector (never a shell string) and exactly the environment it
//! is given, connecting by a connection string built here with every value
//! quoted, its standard output and error each read by a thread of its own
//! (so that neither pipe fills while the session waits), and polled by the
//! session between waits on its latch.
//!
//! A command may instead be a session: psql reads its statements from a
//! pipe the session keeps open, and what it printed so far can be read
//! while it runs; closing the pipe ends psql and so its connection (a
//! node's temporary replication slot goes with it).
//!
//! Cancelling sends SIGINT, on which psql asks the node to cancel the
//! statement and exits once the node has answered, so the node's own
//! pg_blockbackup ends its backup in ERROR as for any cancel. The same
//! signal is psql's parent-death signal: a session that dies outright
//! still has its nodes' statements cancelled. A command dropped before it
//! ended is cancelled, given a grace period, then killed, and always
//! reaped.

use std::ffi::OsString;
use std::io::{self, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Where a node is and as whom to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeTarget {
    /// A host name, an address, or a Unix socket directory.
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
}

/// How a node's psql ended, with what it printed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeOutput {
    /// The exit code; None when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl NodeOutput {
    pub fn succeeded(&self) -> bool {
        self.code == Some(0)
    }

    /// What went wrong, in one line for a row or a message: the node's
    /// first ERROR or FATAL line, or psql's own error (it could not
    /// connect), or else the last line printed.
    pub fn failure(&self) -> String {
        let lines: Vec<&str> = self
            .stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        let error = lines
            .iter()
            .find_map(|line| {
                // "psql:<stdin>:1: ERROR:  ...", "FATAL:  ...", "psql: error: ..."
                let line = line.strip_prefix("psql: ").unwrap_or(line);
                ["ERROR:  ", "FATAL:  ", "error: "]
                    .iter()
                    .find_map(|marker| {
                        line.strip_prefix(marker).or_else(|| {
                            line.split_once(&format!(": {marker}"))
                                .map(|(_, rest)| rest)
                        })
                    })
            })
            .or(lines.last().copied());
        match (error, self.code) {
            (Some(line), _) => line.to_owned(),
            (None, Some(code)) => format!("psql ended with exit code {code} and printed nothing"),
            (None, None) => "psql was killed by a signal".to_owned(),
        }
    }
}

/// A libpq connection string for `target` running as `application_name`,
/// every value quoted (a database name with `=` or a space is not taken
/// for options).
pub fn conninfo(target: &NodeTarget, application_name: &str, connect_timeout_s: u32) -> String {
    fn value(text: &str) -> String {
        format!("'{}'", text.replace('\\', "\\\\").replace('\'', "\\'"))
    }
    format!(
        "host={} port={} dbname={} user={} application_name={} connect_timeout={connect_timeout_s}",
        value(&target.host),
        target.port,
        value(&target.database),
        value(&target.user),
        value(application_name),
    )
}

/// psql's arguments: no psqlrc, unaligned tuples only, stop at the first
/// error, one command.
pub fn psql_arguments(conninfo: &str, query: &str) -> Vec<OsString> {
    psql_options(conninfo, ["-c", query])
}

/// psql's arguments for a session: as [`psql_arguments`], the statements
/// read from standard input.
pub fn psql_session_arguments(conninfo: &str) -> Vec<OsString> {
    psql_options(conninfo, ["-f", "-"])
}

fn psql_options(conninfo: &str, input: [&str; 2]) -> Vec<OsString> {
    [
        "-X",
        "-q",
        "-A",
        "-t",
        "-v",
        "ON_ERROR_STOP=1",
        "-d",
        conninfo,
    ]
    .iter()
    .chain(input.iter())
    .map(OsString::from)
    .collect()
}

pub struct NodeCommand {
    child: Child,
    /// Open while a session's psql may be sent statements.
    stdin: Option<ChildStdin>,
    stdout: Captured,
    stderr: Captured,
    reaped: bool,
    cancelled: bool,
}

impl NodeCommand {
    /// A command that reads nothing (its standard input is /dev/null).
    pub fn spawn(
        psql: &Path,
        arguments: &[OsString],
        environment: &[(OsString, OsString)],
    ) -> io::Result<Self> {
        Self::start(psql, arguments, environment, false)
    }

    /// A session: its standard input is a pipe, written by [`Self::send`],
    /// closed by [`Self::close_input`] (or when dropped).
    pub fn spawn_session(
        psql: &Path,
        arguments: &[OsString],
        environment: &[(OsString, OsString)],
    ) -> io::Result<Self> {
        Self::start(psql, arguments, environment, true)
    }

    fn start(
        psql: &Path,
        arguments: &[OsString],
        environment: &[(OsString, OsString)],
        session: bool,
    ) -> io::Result<Self> {
        let mut command = Command::new(psql);
        command
            .args(arguments)
            .env_clear()
            .envs(environment.iter().map(|(key, value)| (key, value)))
            .stdin(if session {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .current_dir("/")
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGINT) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn()?;
        let stdin = child.stdin.take();
        let stdout = Captured::reading(child.stdout.take());
        let stderr = Captured::reading(child.stderr.take());
        Ok(NodeCommand {
            child,
            stdin,
            stdout,
            stderr,
            reaped: false,
            cancelled: false,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `text` to a session's psql (an error once its input is
    /// closed, or when psql has ended).
    pub fn send(&mut self, text: &str) -> io::Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::new(io::ErrorKind::BrokenPipe, "input closed"))?;
        stdin.write_all(text.as_bytes())?;
        stdin.flush()
    }

    /// Ends a session's input: psql ends once it has run what it was sent.
    pub fn close_input(&mut self) {
        self.stdin = None;
    }

    /// What it printed on standard output so far.
    pub fn printed(&self) -> String {
        self.stdout.so_far()
    }

    /// How it ended, once it has.
    pub fn poll(&mut self) -> io::Result<Option<NodeOutput>> {
        match self.child.try_wait()? {
            Some(status) => {
                self.reaped = true;
                self.stdin = None;
                Ok(Some(NodeOutput {
                    code: status.code(),
                    stdout: self.stdout.finish(),
                    stderr: self.stderr.finish(),
                }))
            }
            None => Ok(None),
        }
    }

    /// Asks psql to cancel its statement on the node (once).
    pub fn cancel(&mut self) {
        if self.reaped || self.cancelled {
            return;
        }
        self.cancelled = true;
        self.signal(libc::SIGINT);
    }

    fn signal(&self, signal: i32) {
        let Ok(pid) = i32::try_from(self.child.id()) else {
            return;
        };
        // SAFETY: a plain syscall on our own unreaped child.
        unsafe {
            libc::kill(pid, signal);
        }
    }

    /// Cancels, waits up to `grace` for psql to end, then kills it; returns
    /// once it is reaped.
    pub fn stop(&mut self, grace: Duration) -> Option<NodeOutput> {
        self.cancel();
        let deadline = Instant::now() + grace;
        loop {
            match self.poll() {
                Ok(Some(output)) => return Some(output),
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(20))
                }
                _ => break,
            }
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
        self.reaped = true;
        None
    }
}

impl Drop for NodeCommand {
    fn drop(&mut self) {
        self.stdin = None;
        if !self.reaped {
            self.stop(Duration::from_secs(10));
        }
    }
}

/// One of the child's output pipes, read to its end by a thread of its own
/// (so that it never fills while the session waits), kept as it comes.
struct Captured {
    bytes: Arc<Mutex<Vec<u8>>>,
    reader: Option<JoinHandle<()>>,
}

impl Captured {
    fn reading(pipe: Option<impl Read + Send + 'static>) -> Self {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let reader = pipe.map(|mut pipe| {
            let bytes = Arc::clone(&bytes);
            std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match pipe.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => match bytes.lock() {
                            Ok(mut bytes) => bytes.extend_from_slice(&chunk[..n]),
                            Err(_) => break,
                        },
                    }
                }
            })
        });
        Captured { bytes, reader }
    }

    /// What was read so far.
    fn so_far(&self) -> String {
        let bytes = self.bytes.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// All of it, once the pipe has ended (the child is gone), without the
    /// trailing newlines.
    fn finish(&mut self) -> String {
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        self.so_far().trim_end().to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> NodeCommand {
        // The tests stand a shell in for psql: what is watched is the process.
        NodeCommand::spawn(
            Path::new("/bin/sh"),
            &[OsString::from("-c"), OsString::from(script)],
            &[(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))],
        )
        .unwrap()
    }

    fn wait(command: &mut NodeCommand) -> NodeOutput {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(output) = command.poll().unwrap() {
                return output;
            }
            assert!(Instant::now() < deadline, "the command did not end");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn output_and_exit_are_read() {
        let mut ok = sh("echo '{\"backup_id\": \"x\"}'; echo note >&2");
        let output = wait(&mut ok);
        assert!(output.succeeded());
        assert_eq!(output.stdout, "{\"backup_id\": \"x\"}");
        assert_eq!(output.stderr, "note");

        let mut failed = sh("echo 'psql:<stdin>:1: ERROR:  node gone' >&2; \
                             echo 'CONTEXT:  12: frame' >&2; echo 'HINT:  retry' >&2; exit 3");
        let output = wait(&mut failed);
        assert_eq!(output.code, Some(3));
        assert_eq!(output.failure(), "node gone");
        let mut unreachable =
            sh("echo 'psql: error: connection to server on socket failed' >&2; exit 2");
        assert_eq!(
            wait(&mut unreachable).failure(),
            "connection to server on socket failed"
        );
    }

    #[test]
    fn a_large_output_does_not_block_the_child() {
        let mut big = sh("head -c 1000000 /dev/zero | tr '\\0' x");
        let output = wait(&mut big);
        assert!(output.succeeded());
        assert_eq!(output.stdout.len(), 1_000_000);
    }

    #[test]
    fn cancel_sends_sigint_and_stop_kills_what_ignores_it() {
        let mut polite = sh("trap 'echo cancelled >&2; exit 1' INT; while :; do sleep 0.05; done");
        std::thread::sleep(Duration::from_millis(200));
        polite.cancel();
        let output = wait(&mut polite);
        assert_eq!(output.code, Some(1));
        assert_eq!(output.failure(), "cancelled");

        let mut stubborn = sh("trap '' INT; while :; do sleep 0.05; done");
        std::thread::sleep(Duration::from_millis(200));
        let began = Instant::now();
        assert!(stubborn.stop(Duration::from_millis(300)).is_none());
        assert!(began.elapsed() < Duration::from_secs(5));
        let pid = stubborn.pid() as i32;
        drop(stubborn);
        // Reaped: the pid no longer names our child.
        assert_eq!(
            unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) },
            -1
        );
    }

    #[test]
    fn a_session_runs_what_it_is_sent_until_its_input_closes() {
        let mut session = NodeCommand::spawn_session(
            Path::new("/bin/sh"),
            &[
                OsString::from("-c"),
                OsString::from("while read line; do echo \"got $line\"; done; echo done"),
            ],
            &[(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))],
        )
        .unwrap();
        session.send("one\n").unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while session.printed() != "got one\n" {
            assert!(Instant::now() < deadline, "printed {:?}", session.printed());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Still running: it waits for more.
        assert!(session.poll().unwrap().is_none());
        session.send("two\n").unwrap();
        session.close_input();
        assert!(session.send("three\n").is_err());
        let output = wait(&mut session);
        assert!(output.succeeded());
        assert_eq!(output.stdout, "got one\ngot two\ndone");
        // A command's input is /dev/null: nothing can be sent.
        let mut plain = sh("cat");
        assert!(plain.send("x\n").is_err());
        assert_eq!(wait(&mut plain).stdout, "");
    }

    #[test]
    fn connection_strings_quote_every_value() {
        let target = NodeTarget {
            host: "/tmp/sock dir".into(),
            port: 5433,
            database: "db=x o'k\\".into(),
            user: "postgres".into(),
        };
        assert_eq!(
            conninfo(&target, "pg_blockbackup", 10),
            "host='/tmp/sock dir' port=5433 dbname='db=x o\\'k\\\\' user='postgres' \
             application_name='pg_blockbackup' connect_timeout=10"
        );
        let args = psql_arguments("host=h", "SELECT 1");
        assert_eq!(args.last().unwrap(), "SELECT 1");
        assert!(args.contains(&OsString::from("-X")));
        let session = psql_session_arguments("host=h");
        assert_eq!(
            session[session.len() - 2..],
            [OsString::from("-f"), OsString::from("-")]
        );
        assert_eq!(session[..session.len() - 2], args[..args.len() - 2]);
    }
}
