#!/usr/bin/env python3
"""Benchmarks of continuous WAL archiving by pg_blockbackup's archive module
(`archive_library = 'pg_blockbackup'`) and its offline command on a real
PostgreSQL cluster (15 by default; PG_BIN chooses another, 15 or later),
each figure next to its peer measured in the same run on the same cluster:

  * keeping up: `pgbench -c 4 -j 2 -T 60` (synchronous_commit = off) while
    ours archives with blockbackup.compression 'none', then 'zstd': the most
    `.ready` files in pg_wal/archive_status, sampled every 0.5 s (goal: never
    more than 4), and the segments archived (pg_stat_archiver);
  * per-segment archiving time: a backlog of N segments written while a
    reloadable setting points archiving at a missing place, drained after
    it is fixed and `pg_reload_conf()` wakes the archiver: ours (none, zstd),
    `archive_command = 'cp %p DIR/%f'` and pgBackRest 2.45 `archive-push`
    (compress-type none, zst level 3); goals: ours uncompressed at most cp's
    time, ours faster than pgBackRest with the same compression;
  * archive-get of each drain's segments, one process per segment, ours
    against pgBackRest's of the same compression, interleaved segment by
    segment (goal: ours faster);
  * recovery: take_backup('full'), ~1 GB of pgbench WAL archived, then from
    `pg_ctl start` of restore_backup(..., recovery_target => 'latest') until
    pg_is_in_recovery() is false, through the restore_command restore_backup
    writes (archive-get, fetching ahead) against the same restore with the segments in its pg_wal and
    restore_command = '/bin/false' (goal: at most 1.3x).

Usage: python3 pg_test/bench/bench_archive.py [--scale 50] [--seconds 60]
       [--segments 64] [--recovery-mb 1024] [--dir /var/tmp] [--skip-pgbackrest]
As root, with the extension installed (`cargo pgrx install`) and the offline
command built and installed next to postgres (scripts/setup.sh), where
restore_backup's restore_command runs it.
"""
import argparse
import os
import shlex
import shutil
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import backup as bk  # noqa: E402
from harness import extension  # noqa: E402
from harness.cluster import (PG_USER, CommandError, TestDir, chown_postgres, pg_bin,  # noqa: E402
                             quote_literal, run, wait_until)

MB = 1024 * 1024
GB = 1024 * MB
MAX_READY = 4            # goal: the archiver never more than this many segments behind
RECOVERY_RATIO = 1.3     # goal: recovery through restore_command vs from the local pg_wal
BATCH_ROWS = 20000       # rows per INSERT while a backlog is written (~3.5 MB of WAL)

TMP_ROOT = None          # the run's temporary directory, shown as $TMP in the table


def hide_tmp(text):
    return text.replace(TMP_ROOT, "$TMP") if TMP_ROOT else text


def shown(argv):
    """A command for the table: $TMP for the temporary directory, PostgreSQL's
    programs by name, ours relative to the repository."""
    text = shlex.join(argv).replace(pg_bin(""), "").replace(bk.REPO_ROOT + os.sep, "")
    return hide_tmp(text)


def server_major():
    out = run([pg_bin("pg_config"), "--version"]).stdout
    return int(out.split()[1].split(".")[0])


class Figures:
    def __init__(self):
        self.rows = {}

    def add(self, key, what, command, measured, **extra):
        self.rows[key] = {"what": what, "command": command, "measured": measured, **extra}
        print(f"  {what}: {measured}", flush=True)


# ---- WAL and the archiver ----------------------------------------------------

def ready_names(cluster):
    status = os.path.join(cluster.wal_dir, "archive_status")
    return sorted(n[:-len(".ready")] for n in os.listdir(status) if n.endswith(".ready"))


def archiver(cluster):
    row = cluster.sql("SELECT archived_count, failed_count, coalesce(last_archived_wal, '') "
                      "FROM pg_stat_archiver")[0]
    return {"archived": int(row[0]), "failed": int(row[1]), "last_archived": row[2]}


def segno(name, seg_size):
    return int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:24], 16)


def segment_names(first, last, seg_size):
    per_id = 0x100000000 // seg_size
    return [f"{first[:8]}{n // per_id:08X}{n % per_id:08X}"
            for n in range(segno(first, seg_size), segno(last, seg_size) + 1)]


def wait_no_backlog(cluster, timeout, what):
    wait_until(lambda: not ready_names(cluster), timeout=timeout, interval=0.1,
               what=f"no .ready file left ({what}; log: {cluster.logfile})")


def alter_system(cluster, values):
    """ALTER SYSTEM SET each setting; no reload."""
    cluster.sql("".join(f"ALTER SYSTEM SET {k} = {quote_literal(v)};\n" for k, v in values.items()))


def set_archiving(cluster, values):
    """ALTER SYSTEM SET + reload, until a new session sees every value."""
    alter_system(cluster, values)
    cluster.sql("SELECT pg_reload_conf()")
    query = "SELECT " + " AND ".join(f"current_setting({quote_literal(k)}) = {quote_literal(v)}"
                                     for k, v in values.items())
    wait_until(lambda: cluster.sql_value(query) == "t", timeout=30,
               what=f"{values} after reload")


def ours(repo, codec):
    return {"archive_command": "", "archive_library": "pg_blockbackup",
            "blockbackup.repository": repo, "blockbackup.compression": codec}


def by_command(command):
    return {"archive_library": "", "archive_command": command}


def describe(values):
    return hide_tmp(", ".join(f"{k} = {quote_literal(v)}" for k, v in values.items() if v))


def pgbench_argv(cluster, *args):
    return [pg_bin("pgbench"), "-h", cluster.sockdir, "-p", str(cluster.port), "-U", PG_USER,
            *args, "postgres"]


def tps_of(output):
    return float(next(x for x in output.splitlines() if x.startswith("tps = ")).split()[2])


def wal_since(cluster, lsn):
    return int(float(cluster.sql_value(f"SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '{lsn}')")))


# ---- pgBackRest ----------------------------------------------------------------

class PgBackRest:
    """One stanza per compression type, each with its own repository,
    one process per archive-push/archive-get (no async archiving)."""

    def __init__(self, td, cluster, compress, level):
        root = td.subdir(f"pgbackrest_{compress}")
        for sub in ("repo", "log", "lock"):
            td.subdir(os.path.join(f"pgbackrest_{compress}", sub))
        self.conf = os.path.join(root, "pgbackrest.conf")
        with open(self.conf, "w") as f:
            f.write(f"[global]\nrepo1-path={root}/repo\nlog-path={root}/log\n"
                    f"lock-path={root}/lock\nlog-level-file=off\ncompress-type={compress}\n"
                    f"compress-level={level}\nprocess-max=1\n\n[bench]\n"
                    f"pg1-path={cluster.datadir}\npg1-port={cluster.port}\n"
                    f"pg1-socket-path={cluster.sockdir}\n")
        chown_postgres(self.conf)

    def argv(self, *args, stanza="bench"):
        return [shutil.which("pgbackrest"), f"--config={self.conf}", f"--stanza={stanza}",
                "--log-level-console=warn", *args]

    def archive_command(self, stanza="bench"):
        return shlex.join(self.argv("archive-push", stanza=stanza)) + " %p"

    def stanza_create(self):
        run(self.argv("stanza-create"), as_postgres=True, timeout=300)


def pgbackrest_missing(major, skip):
    """Why there are no pgBackRest rows, or None (as bench_backup.py decides:
    Debian's 2.45 supports PostgreSQL up to 15 among ours)."""
    if skip:
        return "--skip-pgbackrest"
    if shutil.which("pgbackrest") is None:
        return "pgbackrest is not installed"
    if major > 15:
        return f"pgBackRest 2.45 does not run on PostgreSQL {major}"
    return None


# ---- 1. keeping up -----------------------------------------------------------------

def keep_up(cluster, repo, figures, args, codec, seg_size):
    """pgbench while ours archives with `codec`: the most .ready files seen
    (every 0.5 s) and the segments archived during the run."""
    set_archiving(cluster, ours(repo, codec))
    wait_no_backlog(cluster, 600, "before pgbench")
    cluster.sql("CHECKPOINT", timeout=600)
    before = archiver(cluster)
    lsn = cluster.sql_value("SELECT pg_current_wal_lsn()")
    argv = pgbench_argv(cluster, "-c", "4", "-j", "2", "-T", str(args.seconds))
    outcome = {}

    def bench():
        try:
            outcome["proc"] = run(argv, as_postgres=True, timeout=args.seconds + 600)
        except Exception as exc:  # reported by the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=bench)
    thread.start()
    samples = []
    while thread.is_alive():
        samples.append(len(ready_names(cluster)))
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    after = archiver(cluster)
    written = wal_since(cluster, lsn) / seg_size
    archived = after["archived"] - before["archived"]
    most = max(samples, default=0)
    figures.add(f"keep_{codec}", f"pgbench {args.seconds} s while ours archives ({codec})",
                shown(argv) + " (as postgres)",
                f"max {most} .ready ({len(samples)} samples); {archived} segments archived, "
                f"{written:.0f} written; {tps_of(outcome['proc'].stdout):.0f} tps",
                max_ready=most)


# ---- 2. draining a backlog -----------------------------------------------------------

def write_segments(cluster, count, seg_size):
    """Writes until `count` segments are started from the current one, then
    pg_switch_wal(); returns the names of the segments finished."""
    cluster.sql("CREATE TABLE IF NOT EXISTS churn(i int, t text); TRUNCATE churn")
    first = cluster.sql_value("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    goal = segno(first, seg_size) + count - 1
    current = first
    deadline = time.monotonic() + 600 + count * 10
    while segno(current, seg_size) < goal:
        if time.monotonic() > deadline:
            raise TimeoutError(f"writing {count} segments took too long (at {current})")
        current = cluster.sql(
            f"INSERT INTO churn SELECT g, md5(g::text) || repeat('x', 100) "
            f"FROM generate_series(1, {BATCH_ROWS}) g;\n"
            "SELECT pg_walfile_name(pg_current_wal_insert_lsn())", timeout=300)[0][0]
    last = cluster.sql_value("SELECT pg_walfile_name(pg_switch_wal())")
    return segment_names(first, last, seg_size)


def wait_failures_settle(cluster, timeout=180):
    """Until failed_count stops moving for 2.5 s: the archiver has given up
    its retries (1 s apart) and sleeps until a signal wakes it."""
    deadline = time.monotonic() + timeout
    last = archiver(cluster)["failed"]
    while True:
        time.sleep(2.5)
        now = archiver(cluster)["failed"]
        if now == last:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the archiver kept retrying for {timeout}s "
                               f"(log: {cluster.logfile})")
        last = now


def drain(cluster, figures, key, what, working, broken, count, seg_size):
    """A backlog of `count` segments written while archiving fails by
    `broken`, then the time from the reload with `working` until the last
    one is archived. Returns the segments' names."""
    wait_no_backlog(cluster, 900, f"before the backlog of {what}")
    set_archiving(cluster, broken)
    time.sleep(0.5)                      # the archiver handles its SIGHUP
    failed = archiver(cluster)["failed"]
    names = write_segments(cluster, count, seg_size)
    wait_until(lambda: archiver(cluster)["failed"] > failed, timeout=60,
               what=f"archiving to fail with {describe(broken)} (log: {cluster.logfile})")
    wait_failures_settle(cluster)
    pending = set(ready_names(cluster))
    early = [n for n in names if n not in pending]
    if early:
        raise AssertionError(f"{what}: {len(early)} of the backlog's {len(names)} segments were "
                             f"archived while archiving should fail (first {early[0]})")
    alter_system(cluster, working)
    last_ready = os.path.join(cluster.wal_dir, "archive_status", names[-1] + ".ready")
    timeout = 120 + 10 * len(names)
    began = time.monotonic()
    cluster.sql("SELECT pg_reload_conf()")
    while os.path.exists(last_ready):
        if time.monotonic() - began > timeout:
            raise TimeoutError(f"{what}: the backlog of {len(names)} segments was not archived "
                               f"within {timeout}s (log: {cluster.logfile})")
        time.sleep(0.01)
    secs = time.monotonic() - began
    left = sorted(set(names) & set(ready_names(cluster)))
    assert not left, f"{what}: {names[-1]} archived before {left[0]}"
    assert archiver(cluster)["last_archived"] >= names[-1], archiver(cluster)
    figures.add(key, f"drain of {len(names)} segments: {what}", describe(working),
                f"{secs / len(names) * 1000:.1f} ms/segment ({secs:.2f} s)",
                value=secs / len(names), names=names)
    return names


def drains(td, cluster, repo, figures, args, rests, seg_size):
    """Each method drains a backlog of its own: ours (none), cp, pgBackRest
    (none), ours (zstd), pgBackRest (zst)."""
    n = args.segments
    missing_repo = os.path.join(td.path, "missing", "repo")
    for codec in ("none", "zstd"):
        drain(cluster, figures, f"drain_ours_{codec}", f"ours ({codec})", ours(repo, codec),
              ours(missing_repo, codec), n, seg_size)
        if codec == "none":
            into = td.subdir("cp_archive")
            nowhere = os.path.join(td.path, "missing", "cp_archive")
            drain(cluster, figures, "drain_cp", "cp (uncompressed, no fsync)",
                  by_command(f"cp %p {shlex.quote(into)}/%f"),
                  by_command(f"cp %p {shlex.quote(nowhere)}/%f"), n, seg_size)
        kind = {"none": "none", "zstd": "zst"}[codec]
        if kind in rests:
            rest = rests[kind]
            drain(cluster, figures, f"drain_pgbackrest_{kind}", f"pgBackRest archive-push ({kind})",
                  by_command(rest.archive_command()),
                  by_command(rest.archive_command(stanza="nostanza")), n, seg_size)


# ---- 3. archive-get -----------------------------------------------------------------

def archive_gets(td, figures, methods, seg_size):
    """Each of `methods` ((key, what, argv_of, names)) fetches its segments
    one process per segment, as postgres, interleaved segment by segment
    and in turn first, so that every method meets the same state of the
    disk; no row (and a printed reason) for a method whose fetch fails."""
    intos = {key: td.subdir(f"get_{key}") for key, *_ in methods}
    spent = {key: 0.0 for key, *_ in methods}
    failed = set()
    count = min(len(names) for *_, names in methods)
    for i in range(count):
        turn = methods[i % len(methods):] + methods[:i % len(methods)]
        for key, what, argv_of, names in turn:
            if key in failed:
                continue
            began = time.monotonic()
            proc = run(argv_of(names[i], os.path.join(intos[key], names[i])), as_postgres=True,
                       timeout=300, check=False)
            spent[key] += time.monotonic() - began
            if proc.returncode != 0:
                print(f"# {what} of {names[i]} failed (exit {proc.returncode}), no row: "
                      f"{proc.stderr.strip()[:500]}")
                failed.add(key)
    for key, what, argv_of, names in methods:
        into = intos[key]
        if key not in failed:
            wrong = [n for n in names[:count]
                     if os.path.getsize(os.path.join(into, n)) != seg_size]
            assert not wrong, f"{what}: {wrong[0]} came back with another size"
            secs = spent[key]
            command = shown(argv_of("NAME", os.path.join(into, "NAME")))
            figures.add(key, f"archive-get of {count} segments: {what}",
                        command + " (as postgres, one process per segment, interleaved "
                        "with the peer's)",
                        f"{secs / count * 1000:.1f} ms/segment ({secs:.2f} s)",
                        value=secs / count)
        shutil.rmtree(into)


def fetches(td, repo, figures, rests, seg_size):
    cli = bk.require_cli()
    for codec, kind in (("none", "none"), ("zstd", "zst")):
        names = figures.rows[f"drain_ours_{codec}"]["names"]
        methods = [(f"get_ours_{codec}", f"ours ({codec})",
                    lambda n, t: [cli, "--repository", repo, "archive-get", n, t], names)]
        peer = figures.rows.get(f"drain_pgbackrest_{kind}")
        if peer:
            rest = rests[kind]
            methods.append((f"get_pgbackrest_{kind}", f"pgBackRest ({kind})",
                            lambda n, t, r=rest: r.argv("archive-get", n, t), peer["names"]))
        archive_gets(td, figures, methods, seg_size)


# ---- 4. recovery ---------------------------------------------------------------------

def recover(target, history):
    """pg_ctl start of a restored directory; seconds until it has promoted.
    It must hold every transaction the source committed."""
    bk.prepare_restored(target)
    began = time.monotonic()
    target.start(timeout=7200)
    wait_until(lambda: target.sql_value("SELECT pg_is_in_recovery()") == "f", timeout=7200,
               interval=0.05, what=f"the restored cluster to promote (log: {target.logfile})")
    secs = time.monotonic() - began
    got = target.sql_value("SELECT count(*) FROM pgbench_history")
    assert got == history, f"recovery stopped early: {got} of {history} pgbench transactions"
    assert target.timeline() > 1, "a restored cluster must run on a timeline of its own"
    queue = os.path.join(target.wal_dir, "pg_blockbackup_prefetch")
    assert not os.path.exists(queue), "the prefetch queue outlived recovery"
    target.stop()
    shutil.rmtree(target.root)
    return secs


def recovery(td, cluster, repo, figures, args, seg_size):
    """A full backup, --recovery-mb of pgbench WAL archived, then the same
    restore recovered through restore_command and from its pg_wal."""
    set_archiving(cluster, ours(repo, "zstd"))
    wait_no_backlog(cluster, 900, "before the recovery's backup")
    backup = bk.take_backup(cluster, "full", timeout=7200)
    deadline = time.monotonic() + 7200
    while wal_since(cluster, backup.stop_lsn) < args.recovery_mb * MB:
        if time.monotonic() > deadline:
            raise TimeoutError(f"pgbench did not write {args.recovery_mb} MB of WAL in 7200s")
        run(pgbench_argv(cluster, "-c", "4", "-j", "2", "-T", "10"), as_postgres=True, timeout=600)
    wal_bytes = wal_since(cluster, backup.stop_lsn)
    history = cluster.sql_value("SELECT count(*) FROM pgbench_history")
    last = cluster.sql_value("SELECT pg_walfile_name(pg_switch_wal())")
    wait_until(lambda: archiver(cluster)["last_archived"] >= last, timeout=600 + args.recovery_mb,
               what=f"{last} to be archived (log: {cluster.logfile})")
    first = cluster.sql_value(f"SELECT pg_walfile_name('{backup.start_lsn}')")
    names = segment_names(first, last, seg_size)

    def restored(name):
        target = bk.new_target(td, name, cluster)
        target.settings["archive_mode"] = "off"      # not into the same archive
        query = ("SELECT files FROM blockbackup.restore_backup(" + bk.sql_args(
            ("backup_id", backup.backup_id), ("target_dir", target.datadir),
            ("recovery_target", "latest")) + ")")
        cluster.sql(query, timeout=7200)
        return target, hide_tmp(query)

    target, query = restored("recover_archive")
    secs = recover(target, history)
    what = f"recovery of {wal_bytes / MB:.0f} MB of WAL ({len(names)} segments)"
    figures.add("recovery_archive", f"{what} through restore_command (archive-get --prefetch 128, zstd)",
                f"{query}; pg_ctl start", f"{secs:.2f} s", value=secs)

    target, query = restored("recover_local")
    for name in names:                   # the archived segments, whole, in its pg_wal
        path = os.path.join(target.wal_dir, name)
        if os.path.exists(path):
            os.remove(path)
        bk.cli(repo, "archive-get", name, path, timeout=300)
    auto = os.path.join(target.datadir, "postgresql.auto.conf")
    with open(auto, "a") as f:
        f.write("\n# bench_archive: recovery from the local pg_wal only\n"
                "restore_command = '/bin/false'\n")
    chown_postgres(auto)
    secs = recover(target, history)
    figures.add("recovery_local", f"{what} from its pg_wal (restore_command = '/bin/false')",
                f"{query}; archive-get of the {len(names)} segments into pg_wal; "
                "restore_command = '/bin/false' appended to postgresql.auto.conf; pg_ctl start",
                f"{secs:.2f} s", value=secs)


# ---- main -----------------------------------------------------------------------------

def check_space(path, args):
    need = (int(args.scale * 16 * MB * 4) + 6 * GB + args.segments * 16 * MB * 6
            + args.recovery_mb * MB * 3 + 2 * GB)
    free = bk.free_bytes(path)
    if free < need:
        sys.exit(f"{path}: {free / GB:.1f} GB free, this run needs about {need / GB:.1f} GB "
                 "(pass --dir)")
    return free


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=50, help="pgbench scale (50 = 750 MB)")
    parser.add_argument("--seconds", type=int, default=60,
                        help="length of each pgbench run while archiving")
    parser.add_argument("--segments", type=int, default=64,
                        help="segments in each backlog drained and fetched back")
    parser.add_argument("--recovery-mb", type=int, default=1024,
                        help="MB of WAL the recovery figures replay")
    parser.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes")
    parser.add_argument("--skip-pgbackrest", action="store_true", help="no pgBackRest rows")
    args = parser.parse_args()

    if os.geteuid() != 0:
        sys.exit("run as root: the clusters run as the postgres user")
    major = server_major()
    if major < 15:
        sys.exit(f"PostgreSQL {major}: archive modules need 15 or later (set PG_BIN)")
    extension.require_installed()
    bk.require_cli()
    free = check_space(args.dir, args)
    tempfile.tempdir = args.dir
    settings = {"shared_buffers": "1GB", "max_wal_size": "4GB", "wal_keep_size": "0",
                "checkpoint_timeout": "30min", "autovacuum": "off",
                "synchronous_commit": "off", "archive_mode": "on",
                "archive_library": "pg_blockbackup", "archive_timeout": 0}
    figures = Figures()
    with TestDir(prefix="pgbb-bench-archive-") as td:
        global TMP_ROOT
        TMP_ROOT = td.path
        print(f"# in {td.path} ({free / GB:.0f} GB free)", flush=True)
        cluster = td.cluster(settings=settings).initdb().start()
        extension.create_extension(cluster)
        repo = bk.make_repository(td)
        set_archiving(cluster, ours(repo, "none"))
        bk.take_backup(cluster, "full")          # creates the repository: archiving works
        seg_size = int(cluster.sql_value(
            "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'"))
        print(f"# pgbench -i -s {args.scale}", flush=True)
        run(pgbench_argv(cluster, "-i", "-q", "-s", str(args.scale)), as_postgres=True,
            timeout=7200)
        db_bytes = int(cluster.sql_value("SELECT sum(pg_database_size(oid)) FROM pg_database"))

        print("# 1. keeping up", flush=True)
        for codec in ("none", "zstd"):
            keep_up(cluster, repo, figures, args, codec, seg_size)

        rests = {}
        reason = pgbackrest_missing(major, args.skip_pgbackrest)
        if reason:
            print(f"# {reason}: no pgBackRest rows")
        else:
            for kind, level in (("none", 0), ("zst", 3)):
                rests[kind] = PgBackRest(td, cluster, kind, level)
                rests[kind].stanza_create()
        print(f"# 2. draining backlogs of {args.segments} segments", flush=True)
        drains(td, cluster, repo, figures, args, rests, seg_size)
        print("# 3. archive-get", flush=True)
        fetches(td, repo, figures, rests, seg_size)
        print(f"# 4. recovery of {args.recovery_mb} MB of WAL", flush=True)
        recovery(td, cluster, repo, figures, args, seg_size)
        cluster.stop()

    report(figures.rows, args, major, db_bytes, seg_size, reason)


# Each goal: the figure, its peer, the peer's name, at most `limit` times the
# peer's value ("faster" when strict: less than it).
GOALS = {
    "drain_ours_none": [("drain_cp", "cp", 1, False),
                        ("drain_pgbackrest_none", "pgBackRest (none)", 1, True)],
    "drain_ours_zstd": [("drain_pgbackrest_zst", "pgBackRest (zst)", 1, True)],
    "get_ours_none": [("get_pgbackrest_none", "pgBackRest (none)", 1, True)],
    "get_ours_zstd": [("get_pgbackrest_zst", "pgBackRest (zst)", 1, True)],
    "recovery_archive": [("recovery_local", "from pg_wal", RECOVERY_RATIO, False)],
}
ORDER = ("keep_none", "keep_zstd", "drain_ours_none", "drain_cp", "drain_pgbackrest_none",
         "drain_ours_zstd", "drain_pgbackrest_zst", "get_ours_none", "get_pgbackrest_none",
         "get_ours_zstd", "get_pgbackrest_zst", "recovery_archive", "recovery_local")


def met(ok):
    return "met" if ok else "NOT met"


def report(rows, args, major, db_bytes, seg_size, pgbackrest_reason):
    print()
    print(f"Cluster: PostgreSQL {major}, pgbench scale {args.scale} ({db_bytes / MB:.0f} MB in "
          f"databases), synchronous_commit = off, wal_segment_size {seg_size // MB} MB; "
          f"backlogs of {args.segments} segments; zstd level 3 for ours and pgBackRest"
          + (f"; no pgBackRest rows: {pgbackrest_reason}" if pgbackrest_reason else "") + ".")
    print()
    print("| figure | command | measured | ratio | goal |")
    print("|---|---|---|---|---|")
    for key in ORDER:
        r = rows.get(key)
        if not r:
            continue
        ratios, goals = [], []
        if "max_ready" in r:
            ratios.append(f"{r['max_ready']}/{MAX_READY} .ready")
            goals.append(f"never more than {MAX_READY} .ready: {met(r['max_ready'] <= MAX_READY)}")
        for peer_key, name, limit, strict in GOALS.get(key, ()):
            peer = rows.get(peer_key)
            if not peer:
                continue
            x = r["value"] / peer["value"]
            ratios.append(f"vs {name} {x:.2f}x")
            if strict:
                goals.append(f"faster than {name}: {met(x < limit)}")
            else:
                bound = f"{name}'s time" if limit == 1 else f"{limit}x {name}"
                goals.append(f"at most {bound}: {met(x <= limit)}")
        print(f"| {r['what']} | `{r['command']}` | {r['measured']} | {'; '.join(ratios)} "
              f"| {'; '.join(goals)} |")
    print()
    print("$TMP is the run's temporary directory; times are wall clock. A drain runs from "
          "`SELECT pg_reload_conf()` (the setting fixed by ALTER SYSTEM just before) until the "
          "last segment's .ready is gone; ours and pgBackRest make each segment durable, cp does "
          "not fsync. archive-get runs one process per segment as postgres (runuser), as "
          "restore_command would. Recovery runs from `pg_ctl start` until pg_is_in_recovery() "
          "is false.")


if __name__ == "__main__":
    try:
        main()
    except (CommandError, TimeoutError, AssertionError) as exc:
        sys.exit(f"bench_archive: {exc}")
