"""Backups under conditions a DBA's server has and ours did not: a
`max_slot_wal_keep_size`, pages damaged on disk (data checksums), and a
hot standby as the source. Oracles: the server log (no terminated
session), pg_replication_slots, pg_checksums --check naming the same
blocks, and pg_dumpall of the primary against the restored standby backup.
"""
import os
import re

from harness import backup as bk
from harness import extension as ext
from harness.cluster import TestDir, pg_bin, run, wait_until
from harness.workload import pgbench_background, pgbench_init, run_workload, small_change

TEST_TIMEOUT = 1200


def psql_with_messages(cluster, query, user="postgres"):
    """(rows as text, stderr with NOTICEs and WARNINGs) of a query that must succeed."""
    proc = run(cluster.psql_argv(user=user) + ["-c", query], check=False, timeout=1800)
    assert proc.returncode == 0, f"{query}: {proc.stderr}"
    return proc.stdout, proc.stderr


def test_backups_under_max_slot_wal_keep_size():
    """Item 10: with more WAL since the last checkpoint than
    max_slot_wal_keep_size, take_backup succeeds, its session survives, and
    the summarizer's slot is never invalidated (so the next incremental
    still has summaries)."""
    with TestDir() as td:
        c = ext.extension_cluster(td, max_slot_wal_keep_size="32MB")
        repo = bk.make_repository(td)
        bk.configure_repository(c, repo)
        pgbench_init(c, scale=5)
        c.sql("CREATE TABLE filler (id int, pad text)")
        backups = []
        for attempt in range(3):
            before = c.sql_value("SELECT pg_current_wal_lsn()")
            c.sql("INSERT INTO filler SELECT g, repeat('x', 1000) FROM generate_series(1, 70000) g")
            written = int(c.sql_value(f"SELECT pg_current_wal_lsn() - '{before}'::pg_lsn"))
            assert written > 64 << 20, f"only {written} bytes of WAL written"
            load = pgbench_background(c, seconds=8, clients=2)
            try:
                backups.append(bk.take_backup(c, "full" if attempt == 0 else "auto"))
            finally:
                load.communicate(timeout=120)
            status = c.sql_value("SELECT wal_status FROM pg_replication_slots "
                                 "WHERE slot_name = 'pg_blockbackup'")
            assert status in ("reserved", "extended"), f"summarizer slot is {status}"
        assert [b.mode for b in backups] == ["full", "incremental", "incremental"], backups
        with open(c.logfile, errors="replace") as f:
            log = f.read()
        for bad in ("terminating connection due to administrator command",
                    "invalidating obsolete replication slot"):
            assert bad not in log, f"{bad!r} in the server log"
        # The worker's start line says what wal_level = minimal needs.
        assert "wal_level = minimal, set blockbackup.summarize_wal = off" in log
        for b in backups:
            assert bk.validate(c, b.backup_id)[b.backup_id].status == "OK"


def relation_page(cluster, table, block):
    """(path relative to the data directory, byte offset of `block`)."""
    path = cluster.sql_value(f"SELECT pg_relation_filepath('{table}')")
    return path, block * 8192


def flip_in_page(cluster, path, offset):
    bk.flip_byte(os.path.join(cluster.datadir, path), offset + 5000)


def pg_checksums_failures(cluster):
    """(path, block) pairs pg_checksums --check reports, the server stopped."""
    proc = run([pg_bin("pg_checksums"), "--check", "-D", cluster.datadir], as_postgres=True,
               check=False)
    found = set()
    for m in re.finditer(r'file "([^"]+)", block (\d+)', proc.stderr):
        found.add((os.path.relpath(m.group(1), cluster.datadir), int(m.group(2))))
    return found


def test_page_checksums_are_verified_while_copying():
    """Item 11: with data checksums on (the harness initdb enables them), a
    byte flipped in a page on disk is a WARNING naming file and block, is
    counted in backups(), and is reported by validate_backup; pg_checksums
    finds the same pages."""
    with TestDir() as td:
        c = ext.extension_cluster(td)
        assert c.sql_value("SHOW data_checksums") == "on"
        repo = bk.make_repository(td)
        bk.configure_repository(c, repo)
        c.sql("CREATE TABLE t (id int, pad text) WITH (autovacuum_enabled = false);"
              "INSERT INTO t SELECT g, repeat('y', 500) FROM generate_series(1, 200) g;"
              "CHECKPOINT")
        path, offset = relation_page(c, "t", 2)
        c.stop()
        flip_in_page(c, path, offset)
        assert pg_checksums_failures(c) == {(path, 2)}
        c.start()

        _, err = psql_with_messages(c, bk.take_backup_query("full"))
        assert f'checksum verification failed in file "{path}", block 2' in err, err
        assert len(re.findall(r"checksum verification failed in file", err)) == 1, err
        entries = bk.backups(c)
        full = [e for e in entries.values() if e.mode == "full"][0]
        count = c.sql_value("SELECT checksum_failures FROM blockbackup.backups() "
                            f"WHERE backup_id = '{full.backup_id}'")
        assert count == "1", count
        row = bk.validate(c, full.backup_id)[full.backup_id]
        assert row.status == "OK", row
        assert any(f'"{path}", block 2' in e for e in row.errors), row

        # An incremental reads only the changed blocks: block 5, changed
        # after the full backup and then damaged on disk, is found; block 2,
        # unchanged, is not read.
        c.sql("UPDATE t SET pad = pad WHERE ctid = '(5,1)'; CHECKPOINT")
        c.stop()
        flip_in_page(c, path, 5 * 8192)
        assert pg_checksums_failures(c) == {(path, 2), (path, 5)}
        c.start()
        _, err = psql_with_messages(c, bk.take_backup_query("incremental"))
        found = set(re.findall(r'checksum verification failed in file "([^"]+)", block (\d+)', err))
        assert found == {(path, "5")}, err
        inc = [e for e in bk.backups(c).values() if e.mode == "incremental"][0]
        assert c.sql_value("SELECT checksum_failures FROM blockbackup.backups() "
                           f"WHERE backup_id = '{inc.backup_id}'") == "1"

        # Without damage, nothing is reported.
        c.sql("TRUNCATE t")
        _, err = psql_with_messages(c, bk.take_backup_query("full"))
        assert "checksum verification failed" not in err, err


def wait_for_replay(primary, standby):
    target = primary.sql_value("SELECT pg_current_wal_lsn()")
    wait_until(lambda: standby.sql_value(
        f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn") == "t",
        timeout=120, what="the standby to replay")


def test_backups_from_a_hot_standby():
    """Item 12: a full and an incremental backup taken on a standby, with
    its own summaries and repository, restore to clusters equal to the
    primary at that point."""
    with TestDir() as td:
        primary = ext.extension_cluster(td, "primary", allow_in_place_tablespaces="on")
        primary_repo = bk.make_repository(td, "repo_primary")
        bk.configure_repository(primary, primary_repo)
        run_workload(primary, "a", in_place_tablespace=True)
        standby = td.standby_of(primary).start()
        standby.wait_ready()
        standby_repo = bk.make_repository(td, "repo_standby")
        bk.configure_repository(standby, standby_repo)
        wait_until(lambda: ext.summarizer_pid(standby), timeout=60,
                   what="the standby's summarizer")

        wait_for_replay(primary, standby)
        primary.sql("CHECKPOINT")
        wait_for_replay(primary, standby)
        full = bk.take_backup(standby, "full")
        full_dump = bk.dumpall(primary)
        assert full.mode == "full", full

        small_change(primary, "b")
        run_workload(primary, "c", init_pgbench=False, in_place_tablespace=True)
        primary.sql("CHECKPOINT")
        wait_for_replay(primary, standby)
        inc = bk.take_backup(standby, "incremental")
        inc_dump = bk.dumpall(primary)
        assert inc.parent_backup_id == full.backup_id, inc
        assert not bk.backups(primary), "the standby's backups went to the primary's repository"

        for backup, dump, name in ((full, full_dump, "from_standby_full"),
                                   (inc, inc_dump, "from_standby_inc")):
            restored, _ = bk.restore_and_start(td, standby, backup.backup_id, name)
            bk.assert_dumps_equal(dump, bk.dumpall(restored), f"restore of {name}")
            bk.amcheck(restored)
            restored.stop()
