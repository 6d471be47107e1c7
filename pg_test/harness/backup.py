"""Helpers for the backup features of pg_blockbackup: the repository
setting, the SQL functions read into plain Python values, restores started
as clusters of their own, and the oracles run on them (pg_dumpall equality,
pg_amcheck, pg_verifybackup).

Everything runs with argv lists and bounded timeouts, like cluster.py.
"""
import json
import os
import pwd
import re
from collections import namedtuple

from .cluster import PG_USER, chown_postgres, pg_bin, quote_literal, run, wait_until

BACKUP_TIMEOUT = 1800

Backup = namedtuple("Backup", "backup_id mode parent_backup_id start_lsn stop_lsn files "
                              "bytes_read bytes_written duration_ms")
Entry = namedtuple("Entry", "backup_id mode status parent_backup_id label timeline start_lsn "
                            "stop_lsn start_time end_time bytes_read bytes_written compression")
Validation = namedtuple("Validation", "backup_id status files_checked bytes_checked errors")
Restore = namedtuple("Restore", "files bytes duration_ms")
Progress = namedtuple("Progress", "pid backup_id phase files_total files_done bytes_total "
                                  "bytes_done")
SqlError = namedtuple("SqlError", "sqlstate message stderr")

USABLE = ("DONE", "OK")
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _int(value):
    return None if value is None else int(value)


def sql_args(*pairs):
    """Named SQL arguments for the non-None values: [("mode", "full")] -> "mode => 'full'"."""
    parts = []
    for name, value in pairs:
        if value is None:
            continue
        if isinstance(value, bool):
            parts.append(f"{name} => {'true' if value else 'false'}")
        elif isinstance(value, int):
            parts.append(f"{name} => {value}")
        elif isinstance(value, dict):
            parts.append(f"{name} => {quote_literal(json.dumps(value))}::jsonb")
        else:
            parts.append(f"{name} => {quote_literal(value)}")
    return ", ".join(parts)


# ---- repository ---------------------------------------------------------

def make_repository(td, name="repo"):
    """A postgres-owned directory outside every data directory."""
    path = td.subdir(name)
    os.chmod(path, 0o700)
    return path


def set_config(cluster, name, value):
    """ALTER SYSTEM SET (or RESET when value is None) + reload, and wait until
    a new session sees it."""
    if value is None:
        cluster.sql(f"ALTER SYSTEM RESET {name};\nSELECT pg_reload_conf();")
        expect = ""
    else:
        cluster.sql(f"ALTER SYSTEM SET {name} = {quote_literal(value)};\nSELECT pg_reload_conf();")
        expect = str(value)
    wait_until(lambda: (cluster.sql_value(f"SELECT coalesce(current_setting({quote_literal(name)}, "
                                          "true), '')") == expect),
               timeout=30, what=f"{name} = {expect!r} after reload")


def configure_repository(cluster, repo, compression=None, parallel=None):
    set_config(cluster, "blockbackup.repository", repo)
    if compression is not None:
        set_config(cluster, "blockbackup.compression", compression)
    if parallel is not None:
        set_config(cluster, "blockbackup.parallel", str(parallel))


def backup_dir(repo, backup_id):
    return os.path.join(repo, "backups", backup_id)


def pgdata_dir(repo, backup_id):
    return os.path.join(backup_dir(repo, backup_id), "pgdata")


def stored_files(repo, backup_id):
    """Relative paths of the regular files under backups/<id>/pgdata/."""
    root = pgdata_dir(repo, backup_id)
    found = []
    for dirpath, _, files in os.walk(root):
        for name in files:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


def read_json(repo, backup_id, name):
    with open(os.path.join(backup_dir(repo, backup_id), name)) as f:
        return json.load(f)


def tree_snapshot(path):
    """{relative path: (size, mtime_ns)} of everything under path (no symlink following)."""
    snap = {}
    if not os.path.exists(path):
        return snap
    for dirpath, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(dirpath, name)
            st = os.lstat(full)
            snap[os.path.relpath(full, path)] = (st.st_size if not os.path.isdir(full) else 0,
                                                 st.st_mtime_ns)
    return snap


def snapshot_diff(before, after):
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return {"added": added[:20], "removed": removed[:20], "changed": changed[:20]} \
        if added or removed or changed else None


def flip_byte(path, offset=None):
    """XOR one byte of a file (in the middle by default); returns the offset."""
    size = os.path.getsize(path)
    offset = size // 2 if offset is None else offset
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    return offset


# ---- SQL functions --------------------------------------------------------

def take_backup_query(mode=None, label=None, compress=None, parallel=None):
    args = sql_args(("mode", mode), ("label", label), ("compress", compress),
                    ("parallel", parallel))
    return ("SELECT backup_id, mode, parent_backup_id, start_lsn, stop_lsn, files, bytes_read, "
            f"bytes_written, duration_ms FROM blockbackup.take_backup({args})")


def take_backup(cluster, mode=None, label=None, compress=None, parallel=None,
                timeout=BACKUP_TIMEOUT, user=PG_USER):
    rows = cluster.sql(take_backup_query(mode, label, compress, parallel), user=user,
                       timeout=timeout)
    assert len(rows) == 1, f"take_backup returned {rows}"
    r = rows[0]
    return Backup(r[0], r[1], r[2], r[3], r[4], *(_int(x) for x in r[5:9]))


def take_backup_background(cluster, mode=None, compress=None, parallel=None):
    """A psql running take_backup, as Cluster.sql_in_background (a context)."""
    return cluster.sql_in_background(take_backup_query(mode, None, compress, parallel))


def backups(cluster):
    """The catalog, {backup_id: Entry}, oldest first."""
    rows = cluster.sql("SELECT backup_id, mode, status, parent_backup_id, label, timeline, "
                       "start_lsn, stop_lsn, start_time, end_time, bytes_read, bytes_written, "
                       "compression FROM blockbackup.backups() ORDER BY start_time, backup_id")
    out = {}
    for r in rows:
        out[r[0]] = Entry(r[0], r[1], r[2], r[3], r[4], _int(r[5]), r[6], r[7], r[8], r[9],
                          _int(r[10]), _int(r[11]), r[12])
    return out


def validate(cluster, backup_id=None, timeout=BACKUP_TIMEOUT):
    """validate_backup() rows as {backup_id: Validation}; errors a Python list."""
    arg = "" if backup_id is None else quote_literal(backup_id)
    rows = cluster.sql("SELECT backup_id, status, files_checked, bytes_checked, "
                       f"coalesce(array_to_json(errors), '[]') FROM blockbackup.validate_backup({arg})",
                       timeout=timeout)
    return {r[0]: Validation(r[0], r[1], _int(r[2]), _int(r[3]), json.loads(r[4])) for r in rows}


def expire(cluster, keep_full=None, keep_days=None):
    args = sql_args(("keep_full", keep_full), ("keep_days", keep_days))
    return cluster.sql(f"SELECT backup_id, action FROM blockbackup.expire_backups({args})",
                       timeout=BACKUP_TIMEOUT)


def delete(cluster, backup_id, cascade=None):
    args = sql_args(("backup_id", backup_id), ("cascade", cascade))
    return int(cluster.sql_value(f"SELECT blockbackup.delete_backup({args})"))


def progress(cluster):
    rows = cluster.sql("SELECT pid, backup_id, phase, files_total, files_done, bytes_total, "
                       "bytes_done FROM blockbackup.backup_progress()")
    return [Progress(_int(r[0]), r[1], r[2], *(_int(x) for x in r[3:7])) for r in rows]


def restore_query(backup_id, target_dir, recovery_target_lsn=None, tablespace_mapping=None):
    args = sql_args(("backup_id", backup_id), ("target_dir", target_dir),
                    ("recovery_target_lsn", recovery_target_lsn),
                    ("tablespace_mapping", tablespace_mapping))
    return f"SELECT files, bytes, duration_ms FROM blockbackup.restore_backup({args})"


def restore(cluster, backup_id, target_dir, recovery_target_lsn=None, tablespace_mapping=None,
            timeout=BACKUP_TIMEOUT):
    rows = cluster.sql(restore_query(backup_id, target_dir, recovery_target_lsn,
                                     tablespace_mapping), timeout=timeout)
    assert len(rows) == 1, f"restore_backup returned {rows}"
    return Restore(*(_int(x) for x in rows[0]))


def sql_fails(cluster, query, user=PG_USER, timeout=300):
    """Run a query that must fail; SqlError(sqlstate, message, whole stderr).
    The stderr holds the DETAIL/HINT lines (psql runs with VERBOSITY=verbose)."""
    proc = run(cluster.psql_argv(user=user, verbose=True) + ["-f", "-"], input_text=query,
               timeout=timeout, check=False)
    if proc.returncode == 0:
        raise AssertionError(f"query unexpectedly succeeded: {query!r} -> {proc.stdout[:300]!r}")
    m = re.search(r"(?:ERROR|FATAL):\s+([0-9A-Z]{5}):\s+(.*)", proc.stderr)
    if not m:
        raise AssertionError(f"no SQLSTATE in error output of {query!r}: {proc.stderr!r}")
    return SqlError(m.group(1), m.group(2).strip(), proc.stderr)


def expect_sqlstate(cluster, query, states, user=PG_USER, contains=None, hint=False):
    """The query fails with one of `states` (a str or a tuple of them)."""
    states = (states,) if isinstance(states, str) else tuple(states)
    err = sql_fails(cluster, query, user=user)
    assert err.sqlstate in states, \
        f"{query}: expected SQLSTATE {'/'.join(states)}, got {err.sqlstate}: {err.message}"
    if contains:
        words = (contains,) if isinstance(contains, str) else contains
        assert any(re.search(w, err.stderr, re.I) for w in words), \
            f"{query}: none of {words} in {err.stderr!r}"
    if hint:
        assert "HINT:" in err.stderr, f"{query}: no HINT in {err.stderr!r}"
    return err


# ---- restored clusters ----------------------------------------------------

def new_target(td, name, source):
    """A Cluster object for a restore: its data directory is created empty
    (postgres, 0700), the restore writes into it; same preload/settings as
    the source, its own port and socket directory."""
    c = td.cluster(name, preload=source.preload, settings=dict(source.settings))
    os.makedirs(c.datadir)
    os.chmod(c.datadir, 0o700)
    chown_postgres(c.datadir)
    return c


def prepare_restored(cluster):
    """Give a restored data directory its own port and socket: postgresql.conf
    and postgresql.auto.conf came from the source. Rewrites harness.conf
    (included by the source's postgresql.conf) and appends the same three
    settings to postgresql.auto.conf, which is read last. Nothing else is
    added: a restore must start with plain `pg_ctl start`."""
    conf = os.path.join(cluster.datadir, "postgresql.conf")
    with open(conf) as f:
        has_include = "harness.conf" in f.read()
    if not has_include:
        cluster._include_harness_conf()
    cluster.write_config()
    auto = os.path.join(cluster.datadir, "postgresql.auto.conf")
    with open(auto, "a") as f:
        f.write(f"\n# pg_test: the restored copy runs beside its source\n"
                f"port = {cluster.port}\n"
                f"unix_socket_directories = {quote_literal(cluster.sockdir)}\n"
                "listen_addresses = ''\n")
    chown_postgres(auto)


def start_restored(cluster, timeout=300):
    """prepare_restored + pg_ctl start (waits for consistency and connections)."""
    prepare_restored(cluster)
    cluster.start(timeout=timeout)
    cluster.wait_ready()
    # A restore ends in archive recovery: read-only connections come first,
    # then the promotion to a new timeline.
    wait_until(lambda: cluster.sql_value("SELECT pg_is_in_recovery()") == "f", timeout,
               what="the restored cluster to finish recovery and promote")
    assert cluster.timeline() > 1, "a restored cluster must run on a timeline of its own"
    return cluster


def restore_and_start(td, source, backup_id, name, verify=True, tablespace_mapping=None,
                      recovery_target_lsn=None):
    """restore_backup through `source` into a fresh target, pg_verifybackup it
    (before the start changes files), start it. Returns (cluster, Restore)."""
    target = new_target(td, name, source)
    result = restore(source, backup_id, target.datadir, recovery_target_lsn, tablespace_mapping)
    check_restored_layout(target.datadir)
    if verify:
        verifybackup(target.datadir)
    start_restored(target)
    return target, result


def check_restored_layout(datadir):
    for name in ("backup_label", "backup_manifest", "PG_VERSION", "global/pg_control"):
        assert os.path.exists(os.path.join(datadir, name)), f"restored dir lacks {name}"
    wal = [n for n in os.listdir(os.path.join(datadir, "pg_wal"))
           if re.fullmatch(r"[0-9A-F]{24}", n)]
    assert wal, "restored pg_wal holds no WAL segment"
    assert not os.path.exists(os.path.join(datadir, "postmaster.pid")), \
        "restored dir carries postmaster.pid"


def tablespace_oids(cluster):
    """{oid: (name, location)} of the user tablespaces."""
    rows = cluster.sql("SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace "
                       "WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid")
    return {r[0]: (r[1], r[2]) for r in rows}


def check_tablespaces_inside(datadir, oids):
    """Default restore: every pg_tblspc/<oid> resolves inside the target."""
    root = os.path.realpath(datadir) + os.sep
    for oid in oids:
        entry = os.path.join(datadir, "pg_tblspc", str(oid))
        assert os.path.isdir(entry), f"restored {entry} missing"
        real = os.path.realpath(entry)
        assert real.startswith(root), f"restored tablespace {oid} resolves outside the target: {real}"
        assert any(n.startswith("PG_") for n in os.listdir(real)), \
            f"restored tablespace {oid} has no PG_<version> directory: {os.listdir(real)}"


# ---- oracles ----------------------------------------------------------------

_RESTRICT = re.compile(r"^\\(un)?restrict \S+$", re.M)
_TS_LOCATION = re.compile(r"^(CREATE TABLESPACE (\S+) OWNER \S+ LOCATION )'((?:[^']|'')*)'", re.M)


def dumpall(cluster, timeout=1200):
    """pg_dumpall (unlogged table data excluded: a restore starts them empty,
    as any crash recovery does)."""
    return run([pg_bin("pg_dumpall"), "-h", cluster.sockdir, "-p", str(cluster.port),
                "-U", PG_USER, "--no-unlogged-table-data"], timeout=timeout).stdout


def normalize_dump(text):
    """The random `\\restrict KEY` lines (PostgreSQL 15.14+) and the
    tablespace locations, which a restore necessarily changes; returns
    (text, {tablespace: location}) so that the caller checks the locations."""
    locations = {m.group(2): m.group(3) for m in _TS_LOCATION.finditer(text)}
    text = _RESTRICT.sub(r"\\\1restrict KEY", text)
    text = _TS_LOCATION.sub(r"\1'LOCATION'", text)
    return text, locations


def assert_dumps_equal(source_dump, restored_dump, what="restored cluster"):
    """Equal after normalize_dump; returns the restored tablespace locations."""
    a, _ = normalize_dump(source_dump)
    b, locations = normalize_dump(restored_dump)
    if a != b:
        la, lb = a.splitlines(), b.splitlines()
        for i, (x, y) in enumerate(zip(la, lb)):
            if x != y:
                ctx = "\n".join(la[max(0, i - 5):i])
                raise AssertionError(f"{what}: pg_dumpall differs at line {i + 1}:\n"
                                     f"...{ctx}\n- source:   {x[:300]}\n+ restored: {y[:300]}")
        raise AssertionError(f"{what}: pg_dumpall differs in length: source {len(la)} lines, "
                             f"restored {len(lb)} lines")
    return locations


def amcheck(cluster, timeout=1200):
    """pg_amcheck --all --heapallindexed; raises with its output on any finding."""
    proc = run([pg_bin("pg_amcheck"), "-h", cluster.sockdir, "-p", str(cluster.port),
                "-U", PG_USER, "--all", "--heapallindexed", "--install-missing"],
               timeout=timeout, check=False)
    if proc.returncode != 0 or proc.stdout.strip():
        raise AssertionError(f"pg_amcheck found problems (exit {proc.returncode}):\n"
                             f"{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")


def verifybackup(path, wal_dir=None, timeout=1200):
    """pg_verifybackup (manifest, checksums, and the WAL through pg_waldump)."""
    argv = [pg_bin("pg_verifybackup")]
    if wal_dir:
        argv += ["-w", wal_dir]
    proc = run(argv + [path], as_postgres=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise AssertionError(f"pg_verifybackup {path} failed (exit {proc.returncode}):\n"
                             f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


def fingerprint(cluster):
    """A cheap summary of the logical content, for restores not compared by dump."""
    dbs = [r[0] for r in cluster.sql("SELECT datname FROM pg_database WHERE datallowconn "
                                     "ORDER BY datname")]
    out = {"databases": dbs}
    out["accounts"] = cluster.sql(
        "SELECT count(*), sum(abalance) FROM pgbench_accounts") \
        if cluster.sql_value("SELECT to_regclass('pgbench_accounts') IS NOT NULL") == "t" else None
    out["relations"] = cluster.sql_value("SELECT count(*) FROM pg_class WHERE relkind = 'r'")
    return out


# ---- the offline command ---------------------------------------------------

def cli_path():
    return os.environ.get("PGBB_CLI", os.path.join(REPO_ROOT, "target", "release", "pg_blockbackup"))


def require_cli():
    path = cli_path()
    assert os.access(path, os.X_OK), \
        (f"the pg_blockbackup command is not built ({path} missing): "
         "cargo build --release -p blockbackup-cli (or set PGBB_CLI)")
    return path


def cli(repo, *args, timeout=BACKUP_TIMEOUT, check=True):
    """Run `pg_blockbackup --repository REPO args...` as postgres."""
    return run([require_cli(), "--repository", repo, *args], as_postgres=True,
               timeout=timeout, check=check)


# ---- tmpfs (a small disk that fills up) ------------------------------------

def mount_tmpfs(path, size):
    """Mount a tmpfs of `size` (e.g. '64m') owned by postgres; CommandError if
    mount is not permitted here."""
    os.makedirs(path, exist_ok=True)
    pw = pwd.getpwnam(PG_USER)
    uid, gid = pw.pw_uid, pw.pw_gid
    run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700,uid={uid},gid={gid}",
         "tmpfs", path], timeout=30)
    return path


def umount(path):
    proc = run(["umount", path], timeout=60, check=False)
    if proc.returncode != 0:
        run(["umount", "-l", path], timeout=60, check=False)


def free_bytes(path):
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize

