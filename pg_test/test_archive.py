"""Continuous WAL archiving into the repository by the extension's archive
module (`archive_library = 'pg_blockbackup'`) and by the offline command
(`archive-push`, `archive-get`), checked against what we did not write: the
segments PostgreSQL keeps in pg_wal (byte for byte), pg_waldump reading the
whole archived range back, and pg_stat_archiver.

Faults: archiving before the repository exists (fails, keeps the WAL, then
catches up), the archiver killed with SIGKILL while it archives, the same
name archived again with the same and with other content, a second cluster
pointed at the repository, a damaged and a half-written archived file.
"""
import glob
import os
import shutil
import time

from harness import SkipTest
from harness import backup as bk
from harness import extension as ext
from harness.cluster import CommandError, TestDir, make_postgres_dir, pg_bin, run, wait_until
from harness.workload import backup_churn, pgbench_init, run_workload, small_change

TEST_TIMEOUT = 900

ARCHIVE_FUNCTIONS = ("archive_status", "archived_wal", "take_backup")
SEGMENT = 16 * 1024 * 1024


def archiving_cluster(td, name="primary", compression="zstd", repo=None):
    """A cluster archiving with the extension into `repo` (a new one if None);
    the repository itself is created by the first take_backup."""
    repo = repo or bk.make_repository(td, f"repo_{name}")
    c = ext.extension_cluster(td, name, functions=ARCHIVE_FUNCTIONS,
                              archive_mode="on", archive_library="pg_blockbackup",
                              archive_timeout=0)
    c.sql(f"ALTER SYSTEM SET blockbackup.repository = '{repo}'")
    c.sql(f"ALTER SYSTEM SET blockbackup.compression = '{compression}'")
    c.sql("SELECT pg_reload_conf()")
    return c, repo


def switch_segment(c, rows=2000):
    """Writes something, then ends the segment; returns its name."""
    c.sql(f"CREATE TABLE IF NOT EXISTS churn(i int, t text); "
          f"INSERT INTO churn SELECT g, repeat('x', 200) FROM generate_series(1, {rows}) g")
    name = c.sql_value("SELECT pg_walfile_name(pg_current_wal_lsn())")
    c.sql("SELECT pg_switch_wal()")
    return name


def archive_status(c):
    cols = ("archived_count last_archived_wal last_archived_time last_failed_wal "
            "last_failed_time last_error oldest_wal newest_wal stored_bytes").split()
    row = c.sql(f"SELECT {', '.join(cols)} FROM blockbackup.archive_status()")[0]
    return dict(zip(cols, row))


def archived_ranges(c):
    return c.sql("SELECT timeline, start_wal, end_wal, start_lsn, end_lsn, segments, stored_bytes "
                 "FROM blockbackup.archived_wal() ORDER BY timeline, start_lsn")


def wait_archived(c, name, timeout=120):
    """Until PostgreSQL marks `name` archived: its `.done` status file, or
    pg_stat_archiver at `name` or a later segment. The status file is what
    counts after a crash restart, which discards the statistics (15 and
    later), so a segment archived just before the archiver was killed is
    never reported by pg_stat_archiver."""
    done = os.path.join(c.wal_dir, "archive_status", name + ".done")
    wait_until(lambda: os.path.exists(done) or
               (c.sql_value("SELECT last_archived_wal FROM pg_stat_archiver") or "") >= name,
               timeout=timeout, what=f"{name} to be archived (log: {c.logfile})")


def stored_files(repo, name):
    return glob.glob(os.path.join(repo, "archive", "*", name + "-*"))


def archive_snapshot(repo):
    """Every stored file of the archive with its size and modification time."""
    out = {}
    for path in glob.glob(os.path.join(repo, "archive", "**"), recursive=True):
        if os.path.isfile(path):
            st = os.stat(path)
            out[os.path.relpath(path, repo)] = (st.st_size, st.st_mtime_ns)
    return out


def lsn_of_segment(name, segment_size=SEGMENT):
    segno = int(name[8:16], 16) * (0x100000000 // segment_size) + int(name[16:24], 16)
    lsn = segno * segment_size
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segment_of(lsn, timeline=1, segment_size=SEGMENT):
    high, low = lsn.split("/")
    segno = ((int(high, 16) << 32) | int(low, 16)) // segment_size
    per_log = 0x100000000 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def fetch(repo, name, target, check=True):
    return bk.cli(repo, "archive-get", name, target, check=check)


def assert_fetched_like_pg_wal(td, repo, c, names, dirname="fetched"):
    """archive-get of each of `names` gives the bytes PostgreSQL keeps in
    pg_wal (wal_keep_size holds them); returns the directory fetched into."""
    fetched = td.subdir(dirname)
    for n in names:
        fetch(repo, n, os.path.join(fetched, n))
        with open(os.path.join(c.wal_dir, n), "rb") as a, \
                open(os.path.join(fetched, n), "rb") as b:
            assert a.read() == b.read(), f"{n} came back different"
    return fetched


def test_archive_module_archives_every_segment():
    """Before the repository exists archiving fails, says why and keeps the
    WAL; after the first backup it catches up, and every segment from then on
    comes back byte for byte, readable by pg_waldump end to end."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        early = switch_segment(c)
        wait_until(lambda: archive_status(c)["last_error"] is not None, timeout=60,
                   what="the archiver to report its failure")
        st = archive_status(c)
        assert "not a pg_blockbackup repository" in st["last_error"], st
        assert st["last_failed_wal"] == early, st
        assert os.path.exists(os.path.join(c.wal_dir, "archive_status", early + ".ready")), \
            "the WAL that could not be archived was not kept for a retry"

        bk.take_backup(c, "full")
        first = early
        names = [switch_segment(c) for _ in range(5)]
        wait_archived(c, names[-1])
        st = archive_status(c)
        assert st["last_error"] is None, st
        assert st["oldest_wal"] <= first and st["newest_wal"] >= names[-1], st
        assert int(st["stored_bytes"]) > 0, st

        ranges = archived_ranges(c)
        assert len(ranges) == 1, f"a gap in the archive: {ranges}"
        tli, start_wal, end_wal, start_lsn, end_lsn, segments, stored = ranges[0]
        assert start_wal <= first and end_wal >= names[-1], ranges
        assert start_lsn == lsn_of_segment(start_wal), ranges
        next_segment = end_wal[:16] + f"{int(end_wal[16:], 16) + 1:08X}"
        assert end_lsn == lsn_of_segment(next_segment), ranges
        count = int(end_wal[16:], 16) - int(start_wal[16:], 16) + 1
        assert int(segments) == count, ranges
        # zstd: a switched segment is mostly zeros.
        assert int(stored) < count * SEGMENT // 4, f"not compressed: {ranges}"

        # Every segment back, compared with the one PostgreSQL still keeps
        # (wal_keep_size holds them), then pg_waldump over the whole range.
        wanted = [n for n in sorted(os.listdir(c.wal_dir)) if len(n) == 24
                  and start_wal <= n <= end_wal]
        assert len(wanted) == count, (wanted, ranges)
        fetched = assert_fetched_like_pg_wal(td, repo, c, wanted)
        run(["chown", "-R", "postgres:postgres", fetched])
        # With the first and the last segment named, pg_waldump reads every
        # record up to the end of the last one and stops there, silently.
        out = run([pg_bin("pg_waldump"), "-p", fetched, "--stats", wanted[0], wanted[-1]],
                  as_postgres=True, check=False)
        assert out.returncode == 0 and not out.stderr.strip(), out.stderr
        assert "Total" in out.stdout, out.stdout

        # The offline listing shows the same range.
        listing = bk.cli(repo, "list").stdout
        assert start_wal in listing and end_wal in listing, listing


def test_archiver_killed_while_archiving():
    """SIGKILL of the archiver while segments stream in: the postmaster
    restarts it, no segment is lost or torn, and nothing half-written is ever
    served."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td, compression="none")
        bk.take_backup(c, "full")
        names, killed = [], 0
        for round_ in range(4):
            names += [switch_segment(c, rows=20000) for _ in range(3)]
            wait_until(lambda: _archiver_pid(c), timeout=60, what="the archiver to run again")
            pid = _archiver_pid(c)
            if pid:
                c.kill9(pid)
                killed += 1
            time.sleep(0.2)
            wait_until(lambda: _answers(c), timeout=120, what="the server after the kill")
        assert killed >= 3, f"the archiver was found and killed {killed} times only"
        wait_archived(c, names[-1], timeout=180)
        ranges = archived_ranges(c)
        assert len(ranges) == 1, f"a gap after the kills: {ranges}"
        fetched = assert_fetched_like_pg_wal(td, repo, c, names)
        # What a write cut off leaves (a temporary) is not an archived file.
        group = os.path.dirname(stored_files(repo, names[0])[0])
        future = names[-1][:16] + "000000FE"
        with open(os.path.join(group, f".{future}-00000000.tmp-1-0"), "wb") as f:
            f.write(b"torn")
        proc = fetch(repo, future, os.path.join(fetched, future), check=False)
        assert proc.returncode == 1, (proc.returncode, proc.stderr)
        assert not os.path.exists(os.path.join(fetched, future))


def _archiver_pid(c):
    try:
        return c.pid_of_backend_type("archiver")
    except CommandError:
        return None


def _answers(c):
    try:
        return c.sql("SELECT 1") == [("1",)]
    except CommandError:
        return False


def test_archive_refusals():
    """Same content again succeeds; other content, another cluster's WAL, a
    damaged stored file and bad names are refused, and nothing is
    overwritten or served."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td, compression="lz4")
        bk.take_backup(c, "full")
        a = switch_segment(c)
        b = switch_segment(c)
        wait_archived(c, b)
        [stored_a] = stored_files(repo, a)
        before = open(stored_a, "rb").read()

        # The same file again (an archiver that died before it could say
        # so): success, nothing written.
        proc = bk.cli(repo, "archive-push", os.path.join(c.wal_dir, a))
        assert "already archived" in proc.stderr, proc.stderr
        assert stored_files(repo, a) == [stored_a] and open(stored_a, "rb").read() == before

        # Other content under the same name: refused, naming both.
        other = os.path.join(td.subdir("other"), a)
        shutil.copyfile(os.path.join(c.wal_dir, b), other)
        with open(other, "r+b") as f:
            # b's content with a's page address: a valid header, other bytes.
            src = open(os.path.join(c.wal_dir, a), "rb").read(40)
            f.write(src)
        run(["chown", "-R", "postgres:postgres", os.path.dirname(other)])
        proc = bk.cli(repo, "archive-push", other, check=False)
        assert proc.returncode != 0, proc
        assert "other content" in proc.stderr and a in proc.stderr, proc.stderr
        assert stored_files(repo, a) == [stored_a] and open(stored_a, "rb").read() == before

        # A file that is not a segment of this cluster.
        junk = os.path.join(td.subdir("junk"), "000000010000000000000077")
        with open(junk, "wb") as f:
            f.write(b"\0" * SEGMENT)
        run(["chown", "-R", "postgres:postgres", os.path.dirname(junk)])
        proc = bk.cli(repo, "archive-push", junk, check=False)
        assert proc.returncode != 0 and "long header" in proc.stderr, proc.stderr
        for bad in ("../x", "000000010000000000000001.gz", "RECOVERYXLOG"):
            proc = bk.cli(repo, "archive-push", os.path.join(c.wal_dir, bad), check=False)
            assert proc.returncode != 0 and "not the name of a WAL" in proc.stderr, proc.stderr

        # A second cluster pointed at this repository: its archiver refuses,
        # and says why.
        stored_before = archive_snapshot(repo)
        c2, _ = archiving_cluster(td, name="second", repo=repo)
        stray = switch_segment(c2)
        wait_until(lambda: archive_status(c2)["last_error"] is not None, timeout=60,
                   what="the second cluster's archiver to fail")
        assert "system identifier" in archive_status(c2)["last_error"], archive_status(c2)
        proc = bk.cli(repo, "archive-push", os.path.join(c2.wal_dir, stray), check=False)
        assert proc.returncode != 0 and "system identifier" in proc.stderr, proc.stderr
        c2.stop()
        assert archive_snapshot(repo) == stored_before, "another cluster's WAL was stored"

        # archive-get: a name the archive does not hold is 1 (recovery's
        # "no more WAL"); damage is 255 (recovery stops) and leaves no file.
        target = os.path.join(td.subdir("get"), "x")
        proc = fetch(repo, "0000000100000000000000FE", target, check=False)
        assert proc.returncode == 1 and not proc.stderr, (proc.returncode, proc.stderr)
        bk.flip_byte(stored_a, len(before) // 2)
        proc = fetch(repo, a, target, check=False)
        assert proc.returncode == 255, (proc.returncode, proc.stderr)
        assert "damaged" in proc.stderr and os.path.basename(stored_a) in proc.stderr, proc.stderr
        assert not os.path.exists(target), "a damaged segment was left for recovery"
        proc = fetch(repo, "../../etc/passwd", target, check=False)
        assert proc.returncode == 255 and "not the name" in proc.stderr, proc.stderr


# ---- point-in-time restore ---------------------------------------------------

def pitr_restore(td, c, name, backup_id=None, **targets):
    """restore_backup(backup_id, new dir, targets...) through `c`, started;
    returns the restored cluster (running)."""
    target = bk.new_target(td, name, c)
    # Not into the same archive: its new timeline would be the 'latest'
    # one the next restore follows.
    target.settings["archive_mode"] = "off"
    args = bk.sql_args(("backup_id", backup_id), ("target_dir", target.datadir),
                       *targets.items())
    if backup_id is None:
        args = "backup_id => NULL, " + args
    c.sql(f"SELECT files FROM blockbackup.restore_backup({args})", timeout=600)
    bk.start_restored(target)
    return target


def values(cluster):
    if cluster.sql_value("SELECT to_regclass('pitr') IS NULL") == "t":
        return None
    return [r[0] for r in cluster.sql("SELECT v FROM pitr ORDER BY v")]


def test_point_in_time_restore():
    """Commit A, note the time, commit B, make a restore point, commit C:
    restoring to the time, B's xid (not inclusive), A's LSN or the name has A
    and not B (or A and B), 'immediate' has neither, 'latest' all three; a
    NULL backup_id picks the newest backup before the target."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        full = bk.take_backup(c, "full")
        switch_segment(c)
        inc = bk.take_backup(c, "incremental")
        c.sql("CREATE TABLE pitr(v text); INSERT INTO pitr VALUES ('A')")
        lsn_a = c.sql_value("SELECT pg_current_wal_insert_lsn()")
        time.sleep(1.2)
        moment = c.sql_value("SELECT clock_timestamp()")
        time.sleep(1.2)
        xid_b = c.sql("BEGIN; INSERT INTO pitr VALUES ('B'); "
                      "SELECT pg_current_xact_id()::text::bigint % 4294967296; COMMIT;")[0][0]
        c.sql("SELECT blockbackup.create_restore_point('after_b')")
        c.sql("INSERT INTO pitr VALUES ('C')")
        time.sleep(0.2)
        last = switch_segment(c)
        wait_archived(c, last)

        checks = [
            ("to_time", {"recovery_target_time": moment}, ["A"]),
            ("to_xid", {"recovery_target_xid": xid_b, "recovery_target_inclusive": False}, ["A"]),
            ("to_xid_incl", {"recovery_target_xid": xid_b}, ["A", "B"]),
            ("to_lsn", {"recovery_target_lsn": lsn_a}, ["A"]),
            ("to_name", {"recovery_target_name": "after_b"}, ["A", "B"]),
            ("latest", {"recovery_target": "latest"}, ["A", "B", "C"]),
        ]
        for name, targets, want in checks:
            restored = pitr_restore(td, c, name, inc.backup_id, **targets)
            got = values(restored)
            assert got == want, f"{name}: {targets} gave {got}, want {want}"
            restored.stop()
        restored = pitr_restore(td, c, "immediate", inc.backup_id, recovery_target="immediate")
        assert values(restored) is None, "'immediate' replayed past the backup's end"
        restored.stop()
        # From the full, through the incremental's WAL in the archive.
        restored = pitr_restore(td, c, "from_full", full.backup_id, recovery_target_time=moment)
        assert values(restored) == ["A"]
        restored.stop()
        # NULL backup_id: the newest backup that ends before the target.
        restored = pitr_restore(td, c, "chosen", None, recovery_target_time=moment)
        assert values(restored) == ["A"]
        restored.stop()


def test_point_in_time_bad_targets():
    """Targets the repository cannot reach, or arguments that do not go
    together, fail before anything is written."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        backup = bk.take_backup(c, "full")
        wait_archived(c, switch_segment(c))
        target = td.subdir("never")

        def fails(states, *pairs, contains=None, backup_id=backup.backup_id):
            args = bk.sql_args(("backup_id", backup_id), ("target_dir", target), *pairs)
            if backup_id is None:
                args = "backup_id => NULL, " + args
            bk.expect_sqlstate(c, f"SELECT * FROM blockbackup.restore_backup({args})", states,
                               contains=contains, hint=True)
            assert os.listdir(target) == [], f"{pairs} wrote into the target"

        fails("22023", ("recovery_target_time", "2999-01-01 00:00:00+00"), contains="future")
        fails("22023", ("recovery_target_time", "2000-01-01 00:00:00+00"), contains="before backup")
        fails("55000", ("recovery_target_lsn", "FFFFFFFF/0"), contains="cannot be reached")
        fails("22023", ("recovery_target_lsn", "0/1"), contains="before")
        fails("22023", ("recovery_target_name", "never_made"), contains="never_made")
        fails("22023", ("recovery_target_lsn", backup.stop_lsn), ("recovery_target", "latest"),
              contains="one recovery target")
        fails("22023", ("recovery_target", "soon"), contains="immediate")
        fails("22023", ("recovery_target", "immediate"), ("recovery_target_inclusive", True),
              contains="inclusive")
        fails("22023", ("recovery_target_timeline", "sideways"), contains="timeline")
        fails("22023", ("recovery_target_timeline", "7"), contains="history")
        fails("22023", ("recovery_target_xid", "1"), contains="normal transaction")
        fails("55000", ("recovery_target_time", "2000-01-01 00:00:00+00"), backup_id=None,
              contains="no usable backup")
        # A time after the newest archived segment: not reachable yet.
        time.sleep(1.1)
        later = c.sql_value("SELECT clock_timestamp()")
        fails("55000", ("recovery_target_time", later), contains="archived at")


def test_archive_retention_and_gaps():
    """expire_backups removes the archived WAL no kept backup can use, and
    says so; validation names a gap in the archive, and a restore target
    behind it is refused."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td, compression="none")
        old = bk.take_backup(c, "full")
        for _ in range(3):
            switch_segment(c)
        new = bk.take_backup(c, "full")
        names = [switch_segment(c) for _ in range(4)]
        wait_archived(c, names[-1])
        out = bk.cli(repo, "validate")
        assert "gap" not in out.stderr, out.stderr

        rows = c.sql("SELECT backup_id, action FROM blockbackup.expire_backups(keep_full => 1)")
        removed = {r[0]: r[1] for r in rows}
        assert old.backup_id in removed, rows
        assert "archived WAL" in removed and "no kept backup starts before" in removed["archived WAL"], rows
        first_kept = segment_of(new.start_lsn)
        ranges = archived_ranges(c)
        assert ranges and ranges[0][1] == first_kept, (first_kept, ranges)
        assert len(ranges) == 1, ranges
        # Expiring again removes nothing more.
        rows = c.sql("SELECT backup_id, action FROM blockbackup.expire_backups(keep_full => 1)")
        assert not [r for r in rows if r[0] == "archived WAL"], rows

        # A segment lost from the middle of the archive.
        [lost] = stored_files(repo, names[1])
        os.remove(lost)
        ranges = archived_ranges(c)
        assert len(ranges) == 2, f"no gap shown: {ranges}"
        out = bk.cli(repo, "validate")
        assert "gap" in out.stderr and names[1] in out.stderr, out.stderr
        beyond = lsn_of_segment(names[3])
        target = td.subdir("behind_gap")
        bk.expect_sqlstate(
            c, f"SELECT * FROM blockbackup.restore_backup('{new.backup_id}', '{target}', "
               f"recovery_target_lsn => '{beyond}')",
            "55000", contains="cannot be reached", hint=True)
        assert os.listdir(target) == []


# ---- health check and scheduling ---------------------------------------------

def check_rows(c, timeout_ms=20000):
    rows = c.sql(f"SELECT \"check\", status, detail FROM blockbackup.check(timeout_ms => {timeout_ms})",
                 timeout=120)
    return {r[0]: (r[1], r[2]) for r in rows}


def test_check_reports_health():
    """blockbackup.check(): the summarizer, the repository and its free
    space, archiving proven by a forced segment switch, the age of the newest
    backups and any failed one — each OK, WARNING or ERROR with what it saw."""
    with TestDir() as td:
        c, repo = archiving_cluster(td)
        rows = check_rows(c, timeout_ms=3000)
        assert rows["summarizer"][0] == "OK", rows
        assert rows["repository"][0] == "ERROR" and "not a pg_blockbackup repository" in \
            rows["repository"][1], rows
        assert rows["archiving"][0] == "ERROR" and "was not archived within 3000 ms" in \
            rows["archiving"][1], rows
        assert "not a pg_blockbackup repository" in rows["archiving"][1], rows

        full = bk.take_backup(c, "full")
        rows = check_rows(c)
        assert rows["repository"][0] == "OK" and "MB free" in rows["repository"][1], rows
        assert rows["archiving"][0] == "OK" and "archived into the repository" in \
            rows["archiving"][1], rows
        assert rows["newest full backup"] == ("OK", f"{full.backup_id} ended 0 hours ago"), rows
        assert rows["newest incremental backup"] == ("WARNING", "none"), rows
        assert rows["failed backups"] == ("OK", "none"), rows
        time.sleep(1.1)
        # A check right after a check: nothing was written in between, and
        # the switch must still end a segment that gets archived.
        old = {r[0]: (r[1], r[2]) for r in c.sql(
            "SELECT \"check\", status, detail FROM blockbackup.check(max_full_age => '1 second')")}
        assert old["archiving"][0] == "OK", old
        old = {k: v[0] for k, v in old.items()}
        assert old["newest full backup"] == "WARNING", old
        bk.expect_sqlstate(c, "SELECT * FROM blockbackup.check(timeout_ms => -1)", "22023")
        bk.expect_sqlstate(c, "SELECT * FROM blockbackup.check(max_full_age => '-1 day')", "22023")

        # Archiving turned off.
        c.write_config(archive_mode="off")
        c.restart()
        rows = check_rows(c)
        assert rows["archiving"][0] == "WARNING" and "archive_mode is off" in rows["archiving"][1], rows


def test_pg_cron_takes_a_backup():
    """A real pg_cron job (Debian's postgresql-15-cron, in a background
    worker) runs take_backup on schedule."""
    library = os.path.join(run([pg_bin("pg_config"), "--pkglibdir"]).stdout.strip(), "pg_cron.so")
    if not os.path.exists(library):
        raise SkipTest(f"pg_cron is not installed for this PostgreSQL ({library}); "
                       "scripts/setup.sh installs Debian's postgresql-15-cron")
    with TestDir() as td:
        repo = bk.make_repository(td, "repo_cron")
        c = ext.extension_cluster(td, "primary", functions=ARCHIVE_FUNCTIONS,
                                  shared_preload_libraries="pg_cron,pg_blockbackup",
                                  **{"cron.database_name": "postgres",
                                     "cron.use_background_workers": "on"})
        c.sql(f"ALTER SYSTEM SET blockbackup.repository = '{repo}'; SELECT pg_reload_conf()")
        c.sql("CREATE EXTENSION pg_cron")
        c.sql("SELECT cron.schedule_in_database('backup-every-minute', '* * * * *', "
              "$$SELECT backup_id FROM blockbackup.take_backup('auto')$$, 'postgres')")
        wait_until(lambda: c.sql_value(
            "SELECT count(*) FROM cron.job_run_details WHERE status = 'succeeded'") != "0",
            timeout=150, what="pg_cron to run the backup job")
        entries = bk.backups(c)
        assert [e for e in entries.values() if e.status in bk.USABLE], entries


def test_a_restored_cluster_archives_on_its_own_timeline():
    """After a point-in-time restore the restored cluster archives into the
    same repository on its new timeline, leaving the old timeline's files as
    they were; a second restore follows the new timeline ('latest')."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        full = bk.take_backup(c, "full")
        c.sql("CREATE TABLE pitr(v text); INSERT INTO pitr VALUES ('A')")
        time.sleep(1.2)
        moment = c.sql_value("SELECT clock_timestamp()")
        time.sleep(1.2)
        c.sql("INSERT INTO pitr VALUES ('B')")
        wait_archived(c, switch_segment(c))
        before = archive_snapshot(repo)

        # Restored to before B, archiving as the source does.
        restored = bk.new_target(td, "restored", c)
        c.sql(f"SELECT files FROM blockbackup.restore_backup('{full.backup_id}', "
              f"'{restored.datadir}', recovery_target_time => '{moment}')", timeout=600)
        bk.start_restored(restored)
        tli = restored.timeline()
        assert values(restored) == ["A"]
        restored.sql("INSERT INTO pitr VALUES ('D')")
        time.sleep(1.2)
        later = restored.sql_value("SELECT clock_timestamp()")
        time.sleep(1.2)
        restored.sql("INSERT INTO pitr VALUES ('E')")
        on_new = switch_segment(restored)
        assert int(on_new[:8], 16) == tli, on_new
        wait_archived(restored, on_new)
        after = archive_snapshot(repo)
        changed = [p for p, v in before.items() if after.get(p) != v]
        assert not changed, f"the old timeline's files changed: {changed}"
        history = f"{tli:08X}.history"
        assert glob.glob(os.path.join(repo, "archive", "history", history + "-*")), \
            f"{history} was not archived"
        ranges = archived_ranges(restored)
        assert any(int(r[0]) == tli for r in ranges), ranges
        restored.stop()

        # From the same full backup, to a moment on the new timeline.
        second = pitr_restore(td, c, "second", full.backup_id, recovery_target_time=later)
        assert second.timeline() > tli
        assert values(second) == ["A", "D"], values(second)
        second.stop()


PREFETCH_DIR = "pg_blockbackup_prefetch"


def queued(wal_dir):
    """The segments fetched ahead into `wal_dir`'s queue (None: no queue)."""
    queue = os.path.join(wal_dir, PREFETCH_DIR)
    if not os.path.isdir(queue):
        return None
    return sorted(n for n in os.listdir(queue) if len(n) == 24)


def test_recovery_fetches_ahead_and_stops_at_damage():
    """A restored cluster's restore_command fetches segments ahead of replay
    (archive-get --prefetch) and its recovery_end_command removes the queue;
    a queued segment is the archived one byte for byte and is served with the
    archive gone; a damaged segment in the middle stops recovery with a FATAL
    error naming it, and the cluster never promotes."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td, compression="zstd")
        c.sql("ALTER SYSTEM SET wal_keep_size = '1GB'")
        c.sql("SELECT pg_reload_conf()")
        full = bk.take_backup(c, "full")
        names = [switch_segment(c, rows=20000) for _ in range(8)]
        wait_archived(c, names[-1])
        total = c.sql_value("SELECT count(*) FROM churn")

        # 1. A whole recovery through the queue.
        restored = bk.new_target(td, "ahead", c)
        restored.settings["archive_mode"] = "off"
        c.sql(f"SELECT files FROM blockbackup.restore_backup('{full.backup_id}', "
              f"'{restored.datadir}', recovery_target => 'latest')", timeout=600)
        with open(os.path.join(restored.datadir, "postgresql.auto.conf")) as f:
            auto = f.read()
        assert "archive-get --prefetch" in auto and "recovery_end_command" in auto, auto
        bk.start_restored(restored)
        assert restored.sql_value("SELECT count(*) FROM churn") == total
        with open(restored.logfile, errors="replace") as f:
            log = f.read()
        for name in names:
            assert f'restored log file "{name}" from archive' in log, f"{name} not replayed"
        assert queued(restored.wal_dir) is None, "the queue outlived recovery"
        restored.stop()

        # 2. The queue by hand: the filler fetches what follows; a queued
        # segment is served even with the archive away, and equals pg_wal's.
        wal_dir = td.subdir("by_hand")
        fetch_ahead = ("--prefetch", "64")           # four 16 MB segments
        bk.cli(repo, "archive-get", *fetch_ahead, names[0], os.path.join(wal_dir, "RECOVERYXLOG"))
        want = names[1:5]
        wait_until(lambda: queued(wal_dir) == want, timeout=60,
                   what=f"the filler to queue {want} (queue: {queued(wal_dir)})")
        archive = os.path.join(repo, "archive")
        os.rename(archive, archive + ".away")
        try:
            got = os.path.join(wal_dir, "RECOVERYXLOG")
            bk.cli(repo, "archive-get", *fetch_ahead, names[1], got)
            with open(got, "rb") as a, open(os.path.join(c.wal_dir, names[1]), "rb") as b:
                assert a.read() == b.read(), "a queued segment differs from the archived one"
            # Not queued, and the archive is away: the request fails itself
            # (255: recovery stops), not "no more WAL" (1).
            proc = bk.cli(repo, "archive-get", names[6], got + "2", check=False)
            assert proc.returncode == 255 and "no WAL archive" in proc.stderr, \
                (proc.returncode, proc.stderr)
        finally:
            os.rename(archive + ".away", archive)
        bk.cli(repo, "prefetch-clear", wal_dir)
        assert queued(wal_dir) is None

        # 3. A damaged segment in the middle: recovery stops, never promotes.
        damaged = names[4]
        [stored] = stored_files(repo, damaged)
        bk.flip_byte(stored)
        broken = bk.new_target(td, "broken", c)
        broken.settings["archive_mode"] = "off"
        c.sql(f"SELECT files FROM blockbackup.restore_backup('{full.backup_id}', "
              f"'{broken.datadir}', recovery_target => 'latest')", timeout=600)
        bk.prepare_restored(broken)
        try:
            broken.start(timeout=120)
        except CommandError:
            pass                        # it may stop before accepting connections
        wait_until(lambda: not broken.is_running(), timeout=120,
                   what=f"recovery to stop at the damaged {damaged} (log: {broken.logfile})")
        with open(broken.logfile, errors="replace") as f:
            log = f.read()
        assert "damaged" in log and os.path.basename(stored) in log, broken.log_tail()
        assert f'restored log file "{names[3]}" from archive' in log, broken.log_tail()
        assert "selected new timeline ID" not in log, "recovery promoted past damage"
        assert not glob.glob(os.path.join(broken.wal_dir, "00000002.history")), \
            "a new timeline began after damage"


def test_full_and_incremental_recover_to_the_same_lsn_alike():
    """PostgreSQL's 002_compare_backups: recovery to one LSN from a full
    backup (through the archive) and from that full plus an incremental gives
    the same pg_dumpall."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        pgbench_init(c, scale=2)
        run_workload(c, "a", init_pgbench=False)
        full = bk.take_backup(c, "full")
        backup_churn(c, "b", "a")
        inc = bk.take_backup(c, "incremental")
        assert inc.parent_backup_id == full.backup_id, inc
        small_change(c, "c")
        target = c.sql_value("SELECT pg_current_wal_insert_lsn()")
        small_change(c, "d")
        wait_archived(c, switch_segment(c))

        dumps = {}
        for name, backup in (("from_full", full), ("from_incremental", inc)):
            restored = pitr_restore(td, c, name, backup.backup_id, recovery_target_lsn=target)
            dumps[name] = bk.dumpall(restored)
            bk.amcheck(restored)
            restored.stop()
        bk.assert_dumps_equal(dumps["from_full"], dumps["from_incremental"],
                              "recovery to one LSN from the full and from the incremental")


def test_a_standby_with_archive_mode_always_archives_beside_its_primary():
    """archive_mode = always on a standby: it archives the WAL it receives
    into the same repository as its primary; the same segment from both is
    stored once, and neither fails."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = archiving_cluster(td)
        bk.take_backup(c, "full")
        standby = td.standby_of(c, settings={"archive_mode": "always"}).start()
        standby.wait_ready()
        names = [switch_segment(c) for _ in range(3)]
        wait_archived(c, names[-1])
        wait_until(lambda: (standby.sql_value(
            "SELECT last_archived_wal FROM pg_stat_archiver") or "") >= names[-1],
            timeout=120, what=f"the standby to archive {names[-1]} (log: {standby.logfile})")
        for cluster in (c, standby):
            st = archive_status(cluster)
            assert st["last_error"] is None, st
        for n in names:
            assert len(stored_files(repo, n)) == 1, (n, stored_files(repo, n))
        assert len(archived_ranges(c)) == 1, archived_ranges(c)
        rows = check_rows(standby)
        assert rows["archiving"][0] == "OK" and "standby" in rows["archiving"][1], rows
        standby.stop()


def test_archiving_into_a_full_repository():
    """A full repository: archiving fails and says so, pg_wal keeps the WAL,
    nothing half-written is left; once space returns it catches up, every
    segment intact."""
    with TestDir() as td:
        bk.require_cli()
        c, _ = archiving_cluster(td, compression="none", repo=td.subdir("unused"))
        mount = os.path.join(td.path, "tmpfs")
        try:
            bk.mount_tmpfs(mount, "256m")
        except CommandError as exc:
            raise SkipTest(f"mounting a tmpfs is not permitted here ({exc})")
        try:
            repo = make_postgres_dir(os.path.join(mount, "repo"))
            os.chmod(repo, 0o700)
            c.sql(f"ALTER SYSTEM SET blockbackup.repository = '{repo}'; SELECT pg_reload_conf()")
            bk.take_backup(c, "full", compress="zstd")
            wait_archived(c, switch_segment(c))
            # Leave room for about one segment.
            filler = os.path.join(mount, "filler")
            with open(filler, "wb") as f:
                f.write(b"\0" * max(bk.free_bytes(mount) - 20 * 1024 * 1024, 0))
            names = [switch_segment(c) for _ in range(4)]
            wait_until(lambda: archive_status(c)["last_error"] is not None, timeout=120,
                       what="archiving to fail on the full repository")
            st = archive_status(c)
            assert "No space left" in st["last_error"], st
            pending = [n for n in names if os.path.exists(
                os.path.join(c.wal_dir, "archive_status", n + ".ready"))]
            assert pending, "nothing is waiting: the full disk was not reached"
            leftovers = [p for p in glob.glob(os.path.join(repo, "archive", "*", ".*"))]
            assert not leftovers, f"half-written files left: {leftovers}"

            os.remove(filler)
            last = switch_segment(c)  # wakes the archiver
            wait_archived(c, last, timeout=180)
            assert archive_status(c)["last_error"] is None
            assert len(archived_ranges(c)) == 1, archived_ranges(c)
            assert_fetched_like_pg_wal(td, repo, c, names)
        finally:
            c.stop_quietly()
            bk.umount(mount)
