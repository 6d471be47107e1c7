"""A throwaway PostgreSQL 15 cluster run as the `postgres` OS user.

Everything is started with argv lists (no shell) and bounded by timeouts.
`TestDir` owns a temporary directory (owned by postgres) and every cluster
made in it, and stops them all on exit, even when the test failed.
"""
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
PG_USER = "postgres"
CMD_TIMEOUT = 120
NULL_MARK = "\\N<null>"


class CommandError(RuntimeError):
    pass


def pg_bin(name):
    return os.path.join(PG_BIN, name)


def run(argv, as_postgres=False, timeout=CMD_TIMEOUT, check=True, input_text=None):
    """Run argv, return CompletedProcess with text output."""
    if as_postgres and os.geteuid() == 0:
        argv = ["runuser", "-u", PG_USER, "--"] + list(argv)
    try:
        proc = subprocess.run(argv, input=input_text, capture_output=True,
                              text=True, timeout=timeout, cwd="/")
    except subprocess.TimeoutExpired as exc:
        raise CommandError(f"timed out after {timeout}s: {argv}") from exc
    if check and proc.returncode != 0:
        raise CommandError(f"exit {proc.returncode}: {argv}\n{proc.stderr.strip()}")
    return proc


@contextlib.contextmanager
def in_background(argv):
    """argv started with its output piped and not waited for: the block
    communicates with it. Leaving the block, however it is left, kills it if
    it still runs, so a failed test leaves no client behind."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def chown_postgres(path):
    shutil.chown(path, PG_USER, PG_USER)


def make_postgres_dir(path):
    os.makedirs(path, exist_ok=True)
    chown_postgres(path)
    return path


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout=30.0, interval=0.2, what="condition"):
    """Poll predicate() until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # keep polling; report the last one
            last_exc = exc
        if time.monotonic() > deadline:
            detail = f" (last error: {last_exc})" if last_exc else ""
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


def quote_literal(value):
    return "'" + str(value).replace("'", "''") + "'"


def parse_psql_rows(stdout):
    rows = []
    for line in stdout.splitlines():
        rows.append(tuple(None if f == NULL_MARK else f for f in line.split("\t")))
    return rows


class TestDir:
    """A postgres-owned temporary directory holding a test's clusters."""

    def __init__(self, prefix="pgbb-test-"):
        self.path = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.path, 0o755)
        chown_postgres(self.path)
        self.clusters = []

    def subdir(self, name):
        return make_postgres_dir(os.path.join(self.path, name))

    def cluster(self, name="primary", **kwargs):
        c = Cluster(os.path.join(self.path, name), **kwargs)
        self.clusters.append(c)
        return c

    def standby_of(self, primary, name="standby", **kwargs):
        c = Cluster(os.path.join(self.path, name), **kwargs)
        self.clusters.append(c)
        c.init_standby_from(primary)
        return c

    def cleanup(self):
        for c in self.clusters:
            c.stop_quietly()
        if os.environ.get("PGBB_KEEP"):
            print(f"  (kept {self.path})")
        else:
            shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()
        return False


class Cluster:
    """One PostgreSQL data directory plus its settings, log and socket."""

    def __init__(self, root, preload=True, settings=None, port=None):
        self.root = make_postgres_dir(root)
        self.datadir = os.path.join(root, "data")
        self.sockdir = make_postgres_dir(os.path.join(root, "sock"))
        self.logfile = os.path.join(root, "server.log")
        self.port = port or free_port()
        self.preload = preload
        self.settings = dict(settings or {})

    # ---- creation and configuration ------------------------------------
    def initdb(self):
        run([pg_bin("initdb"), "-D", self.datadir, "--data-checksums", "-A", "trust",
             "-U", PG_USER, "-E", "UTF8", "--locale=C"], as_postgres=True)
        self._include_harness_conf()
        self.write_config()
        return self

    def init_standby_from(self, primary):
        """pg_basebackup -R from a running primary, then our own port/socket."""
        run([pg_bin("pg_basebackup"), "-D", self.datadir, "-R", "-X", "stream",
             "-c", "fast", "-h", primary.sockdir, "-p", str(primary.port),
             "-U", PG_USER], as_postgres=True, timeout=300)
        self.preload = primary.preload
        self.settings = {**primary.settings, **self.settings}
        self.write_config()
        return self

    def base_settings(self):
        s = {
            "port": self.port,
            "unix_socket_directories": self.sockdir,
            "listen_addresses": "",
            "wal_level": "replica",
            "max_wal_senders": 10,
            "max_replication_slots": 10,
            "hot_standby": "on",
            "fsync": "on",
            "checkpoint_timeout": "30min",
            "max_wal_size": "4GB",
            "wal_keep_size": "4GB",
            "max_prepared_transactions": 10,
            "log_min_messages": "info",
            "log_line_prefix": "%m [%p] %b ",
            "autovacuum": "on",
        }
        if self.preload:
            s["shared_preload_libraries"] = "pg_blockbackup"
        return s

    def _include_harness_conf(self):
        with open(os.path.join(self.datadir, "postgresql.conf"), "a") as f:
            f.write("\ninclude_if_exists = 'harness.conf'\n")

    def write_config(self, **extra):
        self.settings.update(extra)
        merged = {**self.base_settings(), **self.settings}
        lines = [f"{k} = {self._conf_value(v)}" for k, v in merged.items()]
        path = os.path.join(self.datadir, "harness.conf")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        chown_postgres(path)

    @staticmethod
    def _conf_value(v):
        if isinstance(v, (int, float)):
            return str(v)
        return quote_literal(v)

    # ---- server control -------------------------------------------------
    def pg_ctl(self, *args, timeout=CMD_TIMEOUT, check=True):
        return run([pg_bin("pg_ctl"), "-D", self.datadir, *args], as_postgres=True,
                   timeout=timeout, check=check)

    def start(self, timeout=60):
        try:
            self.pg_ctl("-l", self.logfile, "-w", "-t", str(timeout), "start",
                        timeout=timeout + 10)
        except CommandError as exc:
            raise CommandError(f"{exc}\n--- server log tail ---\n{self.log_tail()}") from exc
        return self

    def stop(self, mode="fast", timeout=60):
        self.pg_ctl("-m", mode, "-w", "-t", str(timeout), "stop", timeout=timeout + 10)

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def reload(self):
        self.pg_ctl("reload")

    def promote(self, timeout=60):
        self.pg_ctl("-w", "-t", str(timeout), "promote", timeout=timeout + 10)

    def is_running(self):
        return self.pg_ctl("status", check=False).returncode == 0

    def stop_quietly(self):
        if os.path.exists(os.path.join(self.datadir, "postmaster.pid")):
            self.pg_ctl("-m", "immediate", "-w", "-t", "30", "stop", check=False, timeout=40)

    def postmaster_pid(self):
        with open(os.path.join(self.datadir, "postmaster.pid")) as f:
            return int(f.readline())

    def log_tail(self, lines=40):
        try:
            with open(self.logfile, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no log)"

    # ---- SQL ------------------------------------------------------------
    def psql_argv(self, db="postgres", user=PG_USER, verbose=False):
        argv = [pg_bin("psql"), "-X", "-q", "-A", "-t", "-F", "\t",
                "-v", "ON_ERROR_STOP=1", "-P", f"null={NULL_MARK}",
                "-h", self.sockdir, "-p", str(self.port), "-U", user, "-d", db]
        if verbose:
            argv += ["-v", "VERBOSITY=verbose"]
        return argv

    def sql(self, query, db="postgres", user=PG_USER, timeout=CMD_TIMEOUT):
        """Run a script (statements run one by one); return its rows, NULL as None."""
        proc = run(self.psql_argv(db, user) + ["-f", "-"], input_text=query,
                   timeout=timeout, check=False)
        if proc.returncode != 0:
            raise CommandError(f"SQL failed on port {self.port}: {query.strip()[:300]}\n"
                               f"{proc.stderr.strip()}")
        return parse_psql_rows(proc.stdout)

    def sql_in_background(self, query, db="postgres", user=PG_USER):
        """A psql running query (errors verbose), as in_background."""
        return in_background(self.psql_argv(db, user, verbose=True) + ["-c", query])

    def sql_value(self, query, db="postgres", user=PG_USER):
        rows = self.sql(query, db, user)
        if len(rows) != 1 or len(rows[0]) != 1:
            raise AssertionError(f"expected one value from {query!r}, got {rows[:5]}")
        return rows[0][0]

    def sql_error(self, query, db="postgres", user=PG_USER, timeout=CMD_TIMEOUT):
        """Run a query that must fail; return (sqlstate, message)."""
        proc = run(self.psql_argv(db, user, verbose=True) + ["-f", "-"],
                   input_text=query, timeout=timeout, check=False)
        if proc.returncode == 0:
            raise AssertionError(f"query unexpectedly succeeded: {query!r} -> {proc.stdout[:300]!r}")
        m = re.search(r"(?:ERROR|FATAL):\s+([0-9A-Z]{5}):\s+(.*)", proc.stderr)
        if not m:
            raise AssertionError(f"no SQLSTATE in error output of {query!r}: {proc.stderr!r}")
        return m.group(1), m.group(2).strip()

    # ---- processes --------------------------------------------------------
    def pid_of_backend_type(self, backend_type):
        rows = self.sql("SELECT pid FROM pg_stat_activity WHERE backend_type = "
                        f"{quote_literal(backend_type)} ORDER BY pid")
        return int(rows[0][0]) if rows else None

    @staticmethod
    def kill9(pid):
        os.kill(pid, signal.SIGKILL)

    def wait_ready(self, timeout=60):
        wait_until(lambda: self.sql("SELECT 1") == [("1",)], timeout, what=f"server on {self.port}")

    # ---- WAL and files ----------------------------------------------------
    @property
    def wal_dir(self):
        return os.path.join(self.datadir, "pg_wal")

    def current_lsn(self):
        """Insert LSN on a primary, replay LSN on a standby."""
        return self.sql_value("SELECT CASE WHEN pg_is_in_recovery() "
                              "THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END")

    def timeline(self):
        """Current timeline: of the insert position, or of replay on a standby."""
        if self.sql_value("SELECT pg_is_in_recovery()") == "t":
            return int(self.sql_value(
                "SELECT COALESCE((SELECT received_tli FROM pg_stat_wal_receiver),"
                " (SELECT timeline_id FROM pg_control_checkpoint()))"))
        walfile = self.sql_value("SELECT pg_walfile_name(pg_current_wal_lsn())")
        return int(walfile[:8], 16)

    def make_tablespace_dir(self, name):
        return make_postgres_dir(os.path.join(self.root, "tblspc", name))
