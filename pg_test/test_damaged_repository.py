"""The catalog of a repository that is damaged, full, or was left behind by
crashes, as an unlucky DBA meets it: one bad record, a full disk with a
cut-off backup, a parent removed by hand, a file made unreadable for a
while, a stored file replaced by a link, a backup deleted while it is being
restored, a server stopped in the middle of a restore. Reading and deleting
must keep working, nothing must be lost, and retention must never remove
the last good copy. Each test failed on the code before the hardening
issue.
"""
import json
import os
import signal

from harness import SkipTest
from harness import backup as bk
from harness import extension as ext
from harness.cluster import CommandError, TestDir, make_postgres_dir, run, wait_until
from harness.workload import pgbench_init

TEST_TIMEOUT = 900


def repo_cluster(td, name="primary", repo=None, **settings):
    c = ext.extension_cluster(td, name, **settings)
    repo = repo or bk.make_repository(td, f"repo_{name}")
    bk.configure_repository(c, repo)
    return c, repo


def test_one_damaged_record_locks_nothing():
    """Item 6."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = repo_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        good = bk.take_backup(c, "full")
        bad = bk.take_backup(c, "full")
        with open(os.path.join(bk.backup_dir(repo, bad.backup_id), "backup.json"), "wb") as f:
            f.write(b"\x00{ not json")
        entries = bk.backups(c)
        assert entries[good.backup_id].status in bk.USABLE, entries
        assert entries[bad.backup_id].status == "CORRUPT", entries
        error = c.sql_value("SELECT error FROM blockbackup.backups() "
                            f"WHERE backup_id = '{bad.backup_id}'")
        assert "backup.json" in error, error
        rows = bk.validate(c)
        assert rows[good.backup_id].status == "OK" and rows[bad.backup_id].status == "CORRUPT"
        assert bk.validate(c, bad.backup_id)[bad.backup_id].errors, rows
        assert bk.expire(c, keep_full=1) == [], "retention removed a damaged entry"
        listing = bk.cli(repo, "list").stdout
        assert bad.backup_id in listing and "CORRUPT" in listing, listing
        nxt = bk.take_backup(c)
        assert nxt.parent_backup_id == good.backup_id, nxt
        assert bk.delete(c, bad.backup_id) == 1
        assert bad.backup_id not in bk.backups(c)


def fill_disk(path):
    """Writes a file under `path` until the file system is full; returns it."""
    filler = os.path.join(path, "filler")
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * (1 << 20))
                f.flush()
        except OSError:
            pass
        try:
            os.fsync(f.fileno())
        except OSError:
            pass
    return filler


def test_a_full_repository_with_a_cut_off_backup():
    """Item 7: after a backend killed mid-backup, on a full disk, reading,
    validating and deleting work, the leftover's partial files go, and a
    failed start's `.creating-*` is cleared."""
    with TestDir() as td:
        c = ext.extension_cluster(td, "full")
        mount = os.path.join(td.path, "tmpfs")
        try:
            bk.mount_tmpfs(mount, "96m")
        except CommandError as exc:
            raise SkipTest(f"mounting a tmpfs is not permitted here ({exc})")
        try:
            repo = make_postgres_dir(os.path.join(mount, "repo"))
            os.chmod(repo, 0o700)
            bk.configure_repository(c, repo)
            c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
            small = bk.take_backup(c, "full", compress="gzip")
            pgbench_init(c, scale=4)
            with bk.take_backup_background(c, mode="full", parallel=1) as proc:
                row = wait_until(lambda: [p for p in bk.progress(c)
                                          if p.backup_id and p.bytes_done > (8 << 20)],
                                 timeout=120, interval=0.02, what="the backup to copy")[0]
                os.kill(row.pid, signal.SIGKILL)
                proc.communicate(timeout=60)
            c.wait_ready()
            leftover = bk.backup_dir(repo, row.backup_id)
            with open(os.path.join(leftover, "backup.json")) as f:
                assert json.load(f)["status"] == "RUNNING"
            partial = os.path.join(leftover, "pgdata")
            assert os.path.isdir(partial), "the killed backup left no partial files to test with"
            make_postgres_dir(os.path.join(make_postgres_dir(
                os.path.join(repo, "backups", ".creating-20990101-000000F")), "pgdata"))
            fill_disk(mount)
            assert bk.free_bytes(mount) < (1 << 20)

            entries = bk.backups(c)
            assert entries[row.backup_id].status == "ERROR", entries
            assert not os.path.exists(partial), "the partial files were not removed"
            assert not os.path.exists(os.path.join(repo, "backups", ".creating-20990101-000000F"))
            assert bk.validate(c, small.backup_id)[small.backup_id].status == "OK"
            assert bk.validate(c, row.backup_id)[row.backup_id].status == "ERROR"
            assert [r[0] for r in bk.expire(c)] == [row.backup_id]
            fill_disk(mount)
            assert bk.delete(c, small.backup_id) == 1
            assert bk.backups(c) == {}
        finally:
            c.stop_quietly()
            bk.umount(mount)


def test_validation_checks_the_chain_and_tells_damage_from_io_errors():
    """Items 8 and 9."""
    with TestDir() as td:
        c, repo = repo_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        full = bk.take_backup(c, "full")
        c.sql("UPDATE t SET id = id + 1")
        inc = bk.take_backup(c, "incremental")
        run(["rm", "-rf", bk.backup_dir(repo, full.backup_id)])
        row = bk.validate(c, inc.backup_id)[inc.backup_id]
        assert row.status == "CORRUPT", row
        assert any(full.backup_id in e for e in row.errors), row
        bk.expect_sqlstate(c, bk.restore_query(inc.backup_id, os.path.join(td.path, "x")),
                           ("55000", "XX001"))

        # The only full backup, a file of it unreadable for a while.
        only = bk.take_backup(c, "full")
        stored = os.path.join(bk.pgdata_dir(repo, only.backup_id), "PG_VERSION")
        os.chmod(stored, 0)
        try:
            proc = run(c.psql_argv(verbose=True) + ["-c",
                       f"SELECT status FROM blockbackup.validate_backup('{only.backup_id}')"],
                       check=False)
            assert proc.stdout.strip() == "DONE", (proc.stdout, proc.stderr)
            assert "WARNING" in proc.stderr and "Permission denied" in proc.stderr, proc.stderr
            assert bk.backups(c)[only.backup_id].status == "DONE"
            removed = [r[0] for r in bk.expire(c, keep_full=1)]
            assert only.backup_id not in removed, removed
        finally:
            os.chmod(stored, 0o600)
        assert bk.validate(c, only.backup_id)[only.backup_id].status == "OK"

        # Real damage makes it CORRUPT; as the newest full it still stays.
        bk.flip_byte(stored, 0)
        assert bk.validate(c, only.backup_id)[only.backup_id].status == "CORRUPT"
        removed = [r[0] for r in bk.expire(c, keep_full=1)]
        assert only.backup_id not in removed, removed
        assert os.path.isdir(bk.backup_dir(repo, only.backup_id))


def test_stored_files_must_be_regular_and_failed_backups_validate_as_such():
    """Weaker spots: a stored file replaced by a link to a file outside the
    repository is damage; validating an ERROR backup says what it is."""
    with TestDir() as td:
        c, repo = repo_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        b = bk.take_backup(c, "full")
        stored = os.path.join(bk.pgdata_dir(repo, b.backup_id), "PG_VERSION")
        outside = os.path.join(td.path, "outside")
        run(["cp", "-p", stored, outside])
        os.remove(stored)
        os.symlink(outside, stored)
        row = bk.validate(c, b.backup_id)[b.backup_id]
        assert row.status == "CORRUPT" and "regular file" in " ".join(row.errors), row
        # Validation marked it CORRUPT (55000); unvalidated, the restore
        # itself finds the link (XX001).
        bk.expect_sqlstate(c, bk.restore_query(b.backup_id, os.path.join(td.path, "r")),
                           "55000", contains="CORRUPT")
        record = bk.read_json(repo, b.backup_id, "backup.json")
        record["status"] = "DONE"
        with open(os.path.join(bk.backup_dir(repo, b.backup_id), "backup.json"), "w") as f:
            json.dump(record, f)
        bk.expect_sqlstate(c, bk.restore_query(b.backup_id, os.path.join(td.path, "r")), "XX001",
                           contains="regular file")
        assert not os.path.exists(os.path.join(td.path, "r"))

        # An ERROR backup: one cancelled while it copies.
        pgbench_init(c, scale=10)
        with bk.take_backup_background(c, mode="full", parallel=1) as proc:
            row = wait_until(lambda: [p for p in bk.progress(c) if p.bytes_done > 0],
                             timeout=120, interval=0.02, what="the backup to copy")[0]
            assert c.sql_value(f"SELECT pg_cancel_backend({row.pid})") == "t"
            proc.communicate(timeout=120)
        assert proc.returncode != 0, "the backup was not cancelled"
        assert bk.backups(c)[row.backup_id].status == "ERROR", bk.backups(c)
        checked = bk.validate(c, row.backup_id)[row.backup_id]
        assert checked.status == "ERROR", checked
        assert "failed while it was taken" in checked.errors[0], checked


def restore_in_background(cluster, backup_id, target):
    return cluster.sql_in_background(bk.restore_query(backup_id, target))


MARKER = "pg_blockbackup_restore_in_progress"


def test_a_backup_being_restored_cannot_be_deleted():
    with TestDir() as td:
        c, repo = repo_cluster(td)
        pgbench_init(c, scale=30)
        b = bk.take_backup(c, "full")
        bk.set_config(c, "blockbackup.parallel", "1")
        target = os.path.join(td.path, "restoring")
        with restore_in_background(c, b.backup_id, target) as proc:
            wait_until(lambda: os.path.exists(os.path.join(target, MARKER)), timeout=120,
                       interval=0.02, what="the restore to start writing")
            err = bk.expect_sqlstate(c, f"SELECT blockbackup.delete_backup('{b.backup_id}')",
                                     "55006", contains="restore")
            assert os.path.exists(os.path.join(target, MARKER)), \
                "the restore ended before the deletion was tried: the test proves nothing"
            out, errout = proc.communicate(timeout=600)
        assert proc.returncode == 0, errout
        assert os.path.isfile(os.path.join(target, "PG_VERSION"))
        assert not os.path.exists(os.path.join(target, MARKER))
        assert bk.delete(c, b.backup_id) == 1
        del err


def test_a_restore_cut_off_by_a_shutdown_leaves_a_marker():
    with TestDir() as td:
        c, repo = repo_cluster(td)
        pgbench_init(c, scale=30)
        b = bk.take_backup(c, "full")
        bk.set_config(c, "blockbackup.parallel", "1")
        target = bk.new_target(td, "cut_off", c)
        with restore_in_background(c, b.backup_id, target.datadir) as proc:
            wait_until(lambda: os.path.exists(os.path.join(target.datadir, MARKER)),
                       timeout=120, interval=0.02, what="the restore to start writing")
            c.stop("immediate")
            proc.communicate(timeout=60)
        assert os.path.exists(os.path.join(target.datadir, MARKER))
        assert not os.path.exists(os.path.join(target.datadir, "PG_VERSION"))
        options = f"-p {target.port} -k {target.sockdir} -c listen_addresses=''"
        start = target.pg_ctl("-l", target.logfile, "-o", options, "-w", "-t", "20", "start",
                              check=False)
        assert start.returncode != 0, "the cut-off restore started"
        c.start()
        err = bk.expect_sqlstate(c, bk.restore_query(b.backup_id, target.datadir), "55000",
                                 contains=r"interrupted restore")
        assert b.backup_id in err.message, err
