//! A throwaway PostgreSQL 15 cluster for tests that check our files with
//! PostgreSQL's own tools. PostgreSQL refuses to run as root, so when the
//! tests run as root every command runs as the `postgres` user in a
//! temporary directory it owns. The cluster is stopped when dropped, also
//! when a test fails.

#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};

use tempfile::TempDir;

pub const BIN: &str = "/usr/lib/postgresql/15/bin";

/// Why PostgreSQL's tools cannot be used here, if they cannot.
pub fn unavailable() -> Option<String> {
    let probe = Path::new(BIN).join("pg_verifybackup");
    if probe.exists() {
        None
    } else {
        Some(format!("{} is absent", probe.display()))
    }
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_ids() -> (u32, u32) {
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let line = passwd
        .lines()
        .find(|l| l.starts_with("postgres:"))
        .expect("no postgres user");
    let fields: Vec<&str> = line.split(':').collect();
    (fields[2].parse().unwrap(), fields[3].parse().unwrap())
}

/// A command running one of PostgreSQL's programs as `postgres`.
pub fn pg_command(program: &str) -> Command {
    let path = Path::new(BIN).join(program);
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

pub fn run(command: &mut Command) -> Output {
    let output = command.output().unwrap();
    if !output.status.success() {
        panic!(
            "{command:?} failed: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    output
}

/// Gives `path` (recursively) to the postgres user when running as root.
pub fn give_to_postgres(path: &Path) {
    if running_as_root() {
        let status = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

/// A temporary directory the postgres user owns.
pub fn postgres_tempdir() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    if running_as_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
    }
    dir
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

pub struct Cluster {
    pub dir: TempDir,
    pub data: PathBuf,
    pub port: u16,
    running: bool,
}

impl Cluster {
    /// initdb and start a cluster that listens only on a Unix socket in its
    /// own directory.
    pub fn start() -> Cluster {
        Self::start_with(&[])
    }

    /// As [`Cluster::start`], with more `initdb` arguments.
    pub fn start_with(initdb_args: &[&str]) -> Cluster {
        let dir = postgres_tempdir();
        let data = dir.path().join("data");
        let port =
            20000 + (std::process::id() % 20000) as u16 + NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        run(pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args([
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "--no-instructions",
            ])
            .args(initdb_args));
        let mut cluster = Cluster {
            dir,
            data,
            port,
            running: false,
        };
        cluster.pg_ctl_start();
        cluster
    }

    /// Starts the cluster in `data` (which may be another directory than
    /// the one initdb made, e.g. a restored one).
    pub fn start_existing(dir: TempDir, data: PathBuf) -> Cluster {
        let port =
            20000 + (std::process::id() % 20000) as u16 + NEXT_PORT.fetch_add(1, Ordering::SeqCst);
        let mut cluster = Cluster {
            dir,
            data,
            port,
            running: false,
        };
        cluster.pg_ctl_start();
        cluster
    }

    fn pg_ctl_start(&mut self) {
        let options = format!(
            "-p {} -k {} -c listen_addresses='' -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join(format!("log-{}", self.port));
        let output = pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .arg("-l")
            .arg(&log)
            .args(["-w", "-t", "60", "-o", &options, "start"])
            .output()
            .unwrap();
        if !output.status.success() {
            panic!(
                "pg_ctl start failed: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        self.running = true;
    }

    pub fn psql(&self, sql: &str) -> String {
        let output = run(pg_command("psql")
            .arg("-h")
            .arg(self.dir.path())
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-c", sql]));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `pg_basebackup -Fp -X fetch` into `dest` (under a postgres-owned
    /// directory).
    pub fn base_backup(&self, dest: &Path) {
        run(pg_command("pg_basebackup")
            .arg("-h")
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-U", "postgres"])
            .args(["-Fp", "-X", "fetch", "-c", "fast", "--no-sync", "-D"])
            .arg(dest));
    }
}

impl Cluster {
    /// Stops the server cleanly (a checkpoint: every page is on disk).
    pub fn stop(&mut self) {
        run(pg_command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]));
        self.running = false;
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if self.running {
            let _ = pg_command("pg_ctl")
                .arg("-D")
                .arg(&self.data)
                .args(["-m", "immediate", "-w", "stop"])
                .output();
        }
    }
}

/// Runs pg_verifybackup on `dir`.
pub fn verifybackup(dir: &Path) -> Output {
    pg_command("pg_verifybackup").arg(dir).output().unwrap()
}
