"""WAL summarizer scenarios against a cluster that preloads pg_blockbackup.
They FAIL (never skip) when the extension is not installed."""
import glob
import os
import signal
import time

from harness import extension as ext
from harness.cluster import TestDir, wait_until
from harness.lsn import parse_lsn
from harness.extension import extension_cluster
from harness.oracle_check import check_both_oracles, check_waldump_oracle
from harness.workload import pgbench_background, pgbench_init, run_workload

TEST_TIMEOUT = 420


def checkpointed_lsn(cluster):
    cluster.sql("CHECKPOINT")
    return cluster.current_lsn()


def summarized_range(cluster, first_lsn, last_lsn, tli=None):
    """Wait until last_lsn is summarized; the summary boundaries around the range."""
    ext.wait_for_summary(cluster, last_lsn)
    return ext.boundaries_spanning(ext.summaries(cluster), first_lsn, last_lsn, tli)


def finish_crashed(proc, timeout=60):
    """Reap a background pgbench that a crash may have cut short."""
    try:
        proc.wait(timeout=timeout)
    except Exception:
        proc.kill()
        proc.wait()


def test_changed_blocks_match_waldump():
    with TestDir() as td:
        c = extension_cluster(td)
        first = checkpointed_lsn(c)
        run_workload(c, "a")
        last = checkpointed_lsn(c)
        start, end = summarized_range(c, first, last)
        check_both_oracles(c, start, end)


def kill_summarizer(cluster):
    old = wait_until(lambda: ext.summarizer_pid(cluster), timeout=30, what="summarizer pid")
    assert cluster.pid_of_backend_type("pg_blockbackup summarizer") in (None, old)
    cluster.kill9(old)
    return old


def wait_new_summarizer(cluster, old_pid):
    cluster.wait_ready()
    wait_until(lambda: ext.summarizer_pid(cluster) not in (None, old_pid), timeout=60,
               what="a new summarizer after the crash")


def test_crash_recovery():
    with TestDir() as td:
        c = extension_cluster(td)
        pgbench_init(c)
        first = checkpointed_lsn(c)
        bench = pgbench_background(c, seconds=6)
        time.sleep(2)
        old = kill_summarizer(c)          # kill -9 of a worker: the cluster crash-restarts
        finish_crashed(bench)
        wait_new_summarizer(c, old)
        run_workload(c, "a", init_pgbench=False)
        bench = pgbench_background(c, seconds=8)
        time.sleep(2)
        c.stop("immediate")
        finish_crashed(bench)
        c.start()
        run_workload(c, "b")
        last = checkpointed_lsn(c)
        start, end = summarized_range(c, first, last)
        sums = ext.summaries(c)
        gaps = ext.tiling_gaps(sums)
        assert not gaps, f"summaries do not tile: {gaps[:3]}"
        check_both_oracles(c, start, end)


def expect_error(cluster, query, sqlstate, user="postgres", contains=None):
    state, message = cluster.sql_error(query, user=user)
    assert state == sqlstate, f"{query}: expected {sqlstate}, got {state}: {message}"
    if contains:
        assert contains in message, f"{query}: {contains!r} not in {message!r}"
    return message


def corrupt_largest_summary(datadir):
    files = [f for f in glob.glob(os.path.join(datadir, "pg_blockbackup", "summaries", "*"))
             if os.path.isfile(f)]
    assert files, "no summary files under pg_blockbackup/summaries/"
    victim = max(files, key=os.path.getsize)
    with open(victim, "r+b") as f:
        f.seek(os.path.getsize(victim) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    return victim


def test_bad_input():
    with TestDir() as td:
        c = extension_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 10000) AS id")
        ext.wait_for_summary(c, checkpointed_lsn(c))
        sums = ext.summaries(c)
        assert sums, "no summaries after wait_for_summary"
        lo, hi = sums[0].start_lsn, sums[-1].end_lsn
        expect_error(c, f"SELECT * FROM blockbackup.changed_blocks('{hi}', '{lo}')", "22023",
                     contains="is after end LSN")
        expect_error(c, "SELECT blockbackup.wait_for_summary('7FFFFFFF/0', 100)", "22023",
                     contains="ahead of the current WAL insert position")
        expect_error(c, f"SELECT * FROM blockbackup.changed_blocks('{lo}', '7FFFFFFF/0')", "55000")
        expect_error(c, f"SELECT * FROM blockbackup.changed_blocks('0/10', '{hi}')", "55000")
        c.sql("CREATE ROLE plain LOGIN")
        expect_error(c, f"SELECT * FROM blockbackup.changed_blocks('{lo}', '{hi}')", "42501",
                     user="plain")
        victim = corrupt_largest_summary(c.datadir)
        expect_error(c, f"SELECT * FROM blockbackup.changed_blocks('{lo}', '{hi}')", "XX001",
                     contains=os.path.basename(victim))


def set_summarize_wal(cluster, on):
    cluster.sql(f"ALTER SYSTEM SET blockbackup.summarize_wal = {'on' if on else 'off'};"
                " SELECT pg_reload_conf();")


def test_toggle_summarize_wal():
    with TestDir() as td:
        c = extension_cluster(td)
        first = checkpointed_lsn(c)
        set_summarize_wal(c, False)
        wait_until(lambda: ext.status(c).summarizer_pid is None, timeout=10,
                   what="summarizer_pid to become NULL")
        expect_error(c, "SELECT blockbackup.wait_for_summary(pg_current_wal_lsn(), 100)", "55000",
                     contains="disabled")
        assert c.sql_value("SELECT count(*) FROM pg_replication_slots "
                           "WHERE slot_name = 'pg_blockbackup'") == "0", "slot kept while off"
        run_workload(c, "off")
        set_summarize_wal(c, True)
        wait_until(lambda: ext.summarizer_pid(c), timeout=10, what="the summarizer to resume")
        # The WAL written while off is still there (wal_keep_size): the
        # summarizer resumes where it stopped and the range across the
        # pause is answered exactly, without a gap.
        run_workload(c, "on")
        last = checkpointed_lsn(c)
        start, end = summarized_range(c, first, last)
        check_both_oracles(c, start, end)


def wait_replayed(standby, lsn, timeout=120):
    wait_until(lambda: parse_lsn(standby.current_lsn()) >= parse_lsn(lsn), timeout=timeout,
               what=f"standby replay of {lsn}")


def test_standby_promotion():
    with TestDir() as td:
        primary = extension_cluster(td)
        standby = td.standby_of(primary).start()
        wait_until(lambda: ext.summarizer_pid(standby), timeout=30, what="standby summarizer")
        first = checkpointed_lsn(primary)
        run_workload(primary, "p", in_place_tablespace=True)
        last = checkpointed_lsn(primary)
        wait_replayed(standby, last)
        summarized = ext.wait_for_summary(standby, last)
        assert parse_lsn(summarized) >= parse_lsn(last), (summarized, last)
        start, end = ext.boundaries_spanning(ext.summaries(standby), first, last, tli=1)
        check_waldump_oracle(standby, start, end, timeline=1)
        standby.promote()
        assert standby.timeline() == 2, standby.timeline()
        first2 = checkpointed_lsn(standby)
        run_workload(standby, "s", init_pgbench=False, in_place_tablespace=True)
        last2 = checkpointed_lsn(standby)
        start2, end2 = summarized_range(standby, first2, last2, tli=2)
        tlis = {s.tli for s in ext.summaries(standby)}
        assert 2 in tlis, f"no summary on timeline 2: {tlis}"
        check_both_oracles(standby, start2, end2, timeline=2)


def test_gap_when_wal_was_removed():
    with TestDir() as td:
        c = extension_cluster(td, wal_keep_size="0", max_wal_size="32MB", min_wal_size="32MB")
        before = checkpointed_lsn(c)
        ext.wait_for_summary(c, before)
        set_summarize_wal(c, False)
        wait_until(lambda: ext.status(c).summarizer_pid is None, timeout=10,
                   what="summarizer_pid to become NULL")
        c.sql("CREATE TABLE filler AS SELECT g, repeat('x', 500) AS pad "
              "FROM generate_series(1, 200000) g")
        for _ in range(3):
            c.sql("SELECT pg_switch_wal(); CHECKPOINT;")
        set_summarize_wal(c, True)
        wait_until(lambda: ext.summarizer_pid(c), timeout=10, what="the summarizer to resume")
        after = checkpointed_lsn(c)
        ext.wait_for_summary(c, after)
        message = expect_error(
            c, f"SELECT count(*) FROM blockbackup.changed_blocks('{before}', '{after}')",
            "55000", contains="was not summarized")
        assert "removed before it was summarized" in message, message
        newest = ext.summaries(c)[-1]
        c.sql(f"SELECT count(*) FROM blockbackup.changed_blocks('{newest.start_lsn}', "
              f"'{newest.end_lsn}')")
        gaps = glob.glob(os.path.join(c.datadir, "pg_blockbackup", "summaries", "*.gap"))
        assert len(gaps) == 1, gaps


def test_old_summaries_expire():
    with TestDir() as td:
        c = extension_cluster(td, **{"blockbackup.summary_keep_time": "1min"})
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        ext.wait_for_summary(c, checkpointed_lsn(c))
        old = ext.summaries(c)
        summaries_dir = os.path.join(c.datadir, "pg_blockbackup", "summaries")
        two_days_ago = time.time() - 2 * 86400
        for s in old:
            name = f"{s.tli:08X}{summary_name_lsn(s.start_lsn)}{summary_name_lsn(s.end_lsn)}.summary"
            os.utime(os.path.join(summaries_dir, name), (two_days_ago, two_days_ago))
        # A restarted worker looks for expired summaries at once; SIGTERM
        # makes it exit so that the postmaster restarts it.
        pid = ext.summarizer_pid(c)
        os.kill(pid, signal.SIGTERM)
        wait_until(lambda: ext.summarizer_pid(c) not in (None, pid), timeout=30,
                   what="the summarizer to restart")
        c.sql("CREATE TABLE u AS SELECT generate_series(1, 1000) AS id")
        ext.wait_for_summary(c, checkpointed_lsn(c))
        wait_until(lambda: not set(old) & set(ext.summaries(c)), timeout=30,
                   what="aged summaries to be removed")
        expect_error(c, f"SELECT count(*) FROM blockbackup.changed_blocks('{old[0].start_lsn}', "
                        f"'{old[-1].end_lsn}')", "55000", contains="older than every WAL summary")


def summary_name_lsn(lsn):
    value = parse_lsn(lsn)
    return f"{value >> 32:08X}{value & 0xFFFFFFFF:08X}"
