"""Backup scenarios against clusters that preload pg_blockbackup: take_backup
(full, incremental, gzip, parallel), the catalog, validation, retention,
restores started as clusters and compared with their source by pg_dumpall,
pg_amcheck and pg_verifybackup, faults (a killed backend, a full disk),
bad input, and the offline `pg_blockbackup` command.

They FAIL (never skip) when the extension or its backup functions are not
installed. Only test_faults' full-disk part skips, when mount(8) of a tmpfs
is not permitted here, and says so.

Contract points the tests pick where the brief leaves a choice are marked
"CHOICE" below; the SQLSTATE sets accepted for errors the brief does not
pin are in EXPECTED_STATES.
"""
import gzip
import os
import re
import subprocess
import time

from harness import SkipTest
from harness import backup as bk
from harness import extension as ext
from harness.cluster import (CommandError, chown_postgres, TestDir, make_postgres_dir, pg_bin, quote_literal,
                             run, wait_until)
from harness.workload import (backup_churn, pgbench_init, pgbench_run, run_workload,
                              seq_writer_start, seq_writer_stop, small_change)

TEST_TIMEOUT = 1500

# CHOICE: the brief pins 42501 (privilege), 53100/58030 (disk full); the
# others follow the project's convention (22023 bad argument, 55000 wrong
# state) with the nearest standard alternatives also accepted.
EXPECTED_STATES = {
    "unknown_id": ("22023", "42704"),
    "path_traversal": ("22023", "42602"),
    "target_in_datadir": ("22023", "42P17"),
    "target_not_empty": ("22023", "55000", "58P02"),
    "target_relative": ("22023",),
    "repository_unset": ("55000", "22023"),
    "repository_in_datadir": ("22023", "55000"),
    "no_full_for_incremental": ("55000",),
    "bad_argument": ("22023",),
    "privilege": ("42501",),
    "has_children": ("2BP01", "55000"),
    "corrupt": ("XX001", "55000"),
    "disk_full": ("53100", "58030"),
}


BACKUP_FUNCTIONS = ("take_backup", "backups", "restore_backup", "validate_backup",
                    "expire_backups", "delete_backup", "backup_progress")


def backup_cluster(td, name="primary", compression=None, parallel=None, **settings):
    """An extension cluster with a repository configured (returns cluster, repo)."""
    c = ext.extension_cluster(td, name, functions=BACKUP_FUNCTIONS, **settings)
    repo = bk.make_repository(td, f"repo_{name}")
    bk.configure_repository(c, repo, compression, parallel)
    return c, repo


def assert_catalog(cluster, backup, status=bk.USABLE, compression=None):
    entry = bk.backups(cluster).get(backup.backup_id)
    assert entry, f"{backup.backup_id} not in backups(): {list(bk.backups(cluster))}"
    assert entry.status in status, f"{backup.backup_id}: status {entry.status}, want {status}"
    assert entry.mode == backup.mode, (entry, backup)
    assert entry.parent_backup_id == backup.parent_backup_id, (entry, backup)
    assert entry.start_lsn == backup.start_lsn and entry.stop_lsn == backup.stop_lsn, (entry, backup)
    assert entry.bytes_written == backup.bytes_written, (entry, backup)
    assert entry.timeline == 1, entry
    if compression:
        assert entry.compression == compression, entry
    assert os.path.isfile(os.path.join(bk.backup_dir(_repo_of(cluster), backup.backup_id),
                                       "backup.json")), f"no backup.json for {backup.backup_id}"
    return entry


def _repo_of(cluster):
    return cluster.sql_value("SHOW blockbackup.repository")


def assert_incremental_on(backup, parent):
    assert backup.mode == "incremental", f"expected an incremental, got {backup}"
    assert backup.parent_backup_id == parent.backup_id, \
        f"parent of {backup.backup_id} is {backup.parent_backup_id}, expected {parent.backup_id}"


def check_restore_result(result):
    assert result.files > 0 and result.bytes > 0, f"restore_backup returned {result}"


# ---- 1 --------------------------------------------------------------------

def test_restore_equals_source():
    # autovacuum off only so that the source tablespace files are quiet while
    # checking that a restore leaves them alone; the workload VACUUMs itself.
    with TestDir() as td:
        c, repo = backup_cluster(td, autovacuum="off")
        pgbench_init(c, scale=10)
        run_workload(c, "a", init_pgbench=False)          # tablespace wl_ts_a outside PGDATA

        full = bk.take_backup(c, "full", label="first full")
        assert full.mode == "full" and full.parent_backup_id is None, full
        assert full.files > 0 and full.bytes_written > 0, full
        entry = assert_catalog(c, full)
        assert entry.label == "first full", entry

        run_workload(c, "b", init_pgbench=False)          # new tablespace, databases, 2PC...
        backup_churn(c, "b", "a")                         # drop/recreate, truncations, moves
        inc1 = bk.take_backup(c)
        assert_incremental_on(inc1, full)
        assert_catalog(c, inc1)
        # Compare the data files: every backup also carries the WAL from its
        # start to its stop (at least one 16 MB segment) to restore alone.
        assert data_bytes(repo, inc1) < 0.6 * data_bytes(repo, full), \
            f"incremental stored {data_bytes(repo, inc1)} data bytes, the full {data_bytes(repo, full)}"

        small_change(c, "c")
        inc2 = bk.take_backup(c, "incremental")
        assert_incremental_on(inc2, inc1)
        assert data_bytes(repo, inc2) < 0.2 * data_bytes(repo, full), (data_bytes(repo, inc2), data_bytes(repo, full))
        mid_print = bk.fingerprint(c)                     # nothing is written after inc2 yet

        backup_churn(c, "d", "b", pgbench_seconds=2)
        inc3 = bk.take_backup(c)
        assert_incremental_on(inc3, inc2)

        run_workload(c, "e", init_pgbench=False)
        small_change(c, "e")
        # writes paused: nothing runs between this dump and the last backup
        source_dump = bk.dumpall(c)
        source_ts = bk.tablespace_oids(c)
        inc4 = bk.take_backup(c)
        assert_incremental_on(inc4, inc3)
        for b in (full, inc1, inc2, inc3, inc4):
            assert_catalog(c, b)

        c.sql("CHECKPOINT")
        ts_before = {oid: bk.tree_snapshot(loc) for oid, (_, loc) in source_ts.items()}
        restored, result = bk.restore_and_start(td, c, inc4.backup_id, "restored")
        check_restore_result(result)
        for oid, (_, loc) in source_ts.items():
            diff = bk.snapshot_diff(ts_before[oid], bk.tree_snapshot(loc))
            assert diff is None, f"the restore touched the source tablespace {loc}: {diff}"
        bk.check_tablespaces_inside(restored.datadir, source_ts)

        locations = bk.assert_dumps_equal(source_dump, bk.dumpall(restored))
        for name, loc in locations.items():
            assert loc not in [l for _, l in source_ts.values()], \
                f"restored tablespace {name} still points at the source's {loc}"
        bk.amcheck(restored)

        # the uncompressed full backup's pgdata/ is itself a verifiable backup
        bk.verifybackup(bk.pgdata_dir(repo, full.backup_id))

        mid, _ = bk.restore_and_start(td, c, inc2.backup_id, "restored_mid")
        assert bk.fingerprint(mid) == mid_print, (bk.fingerprint(mid), mid_print)
        bk.amcheck(mid)


# ---- 2 --------------------------------------------------------------------

def max_committed(cluster):
    return int(cluster.sql_value("SELECT coalesce(max(n), 0) FROM seq_rows"))


def check_seq_rows(cluster, upto, what):
    count, lo = cluster.sql(f"SELECT count(*), min(n) FROM seq_rows WHERE n <= {upto}")[0]
    assert int(count) == upto and (upto == 0 or lo == "1"), \
        f"{what}: {count} rows with n <= {upto} (min {lo}): committed rows are missing"


def test_backup_under_load():
    with TestDir() as td:
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=10)
        writer = seq_writer_start(c, td.path, seconds=900)
        bench = None
        try:
            wait_until(lambda: max_committed(c) > 100, timeout=60, what="the writer to start")
            noted_full = max_committed(c)
            full = bk.take_backup(c, "full")
            bench = subprocess.Popen(  # pgbench too, so that pages change under the copy
                [pg_bin("pgbench"), "-h", c.sockdir, "-p", str(c.port), "-U", "postgres", "-n",
                 "-T", "40", "-c", "2", "postgres"], stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL)
            time.sleep(5)
            noted_inc = max_committed(c)
            inc = bk.take_backup(c, "auto")
            assert_incremental_on(inc, full)
            after = max_committed(c)
            assert after > noted_inc, "the writer did not progress during the backup"
            time.sleep(3)
            noted_inc2 = max_committed(c)
            inc2 = bk.take_backup(c, "incremental")
            assert_incremental_on(inc2, inc)
        finally:
            err = seq_writer_stop(writer)
            if bench is not None:
                seq_writer_stop(bench, timeout=120)
        assert "aborted" not in err, f"the writer failed: {err}"

        r_full, _ = bk.restore_and_start(td, c, full.backup_id, "restored_full")
        check_seq_rows(r_full, noted_full, "restored full")
        r_full.stop()
        r_inc, _ = bk.restore_and_start(td, c, inc.backup_id, "restored_inc")
        check_seq_rows(r_inc, noted_inc, "restored incremental")
        r_inc.stop()
        r_inc2, _ = bk.restore_and_start(td, c, inc2.backup_id, "restored_inc2")
        check_seq_rows(r_inc2, noted_inc2, "restored second incremental")
        bk.amcheck(r_inc2)


def data_bytes(repo, backup):
    """Bytes a backup stored for the data directory, its WAL left out."""
    contents = bk.read_json(repo, backup.backup_id, "contents.json")
    return sum(f["stored_size"] for f in contents["files"] if f["kind"] != "wal")


# ---- 3 --------------------------------------------------------------------

def check_gzip_files(repo, backup_id):
    files = bk.stored_files(repo, backup_id)
    assert files, f"{backup_id}: no stored files"
    # backup_manifest is PostgreSQL's metadata of the image, not a data file.
    plain = [f for f in files if not f.endswith(".gz") and f != "backup_manifest"]
    assert not plain, f"{backup_id}: compressed backup stores files without .gz: {plain[:10]}"
    for rel in (f for f in files if f.endswith(".gz")):   # gzip's CRC checks each member
        with gzip.open(os.path.join(bk.pgdata_dir(repo, backup_id), rel), "rb") as f:
            while f.read(1 << 20):
                pass


def test_gzip_and_parallel():
    with TestDir() as td:
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=10)
        run_workload(c, "a", init_pgbench=False)
        full = bk.take_backup(c, "full", compress="gzip", parallel=2)
        assert_catalog(c, full, compression="gzip")
        assert full.bytes_written < full.bytes_read, full
        check_gzip_files(repo, full.backup_id)

        backup_churn(c, "b", "a")
        # the settings as defaults this time
        bk.configure_repository(c, repo, compression="gzip", parallel=2)
        inc = bk.take_backup(c, "incremental")
        assert_incremental_on(inc, full)
        assert_catalog(c, inc, compression="gzip")
        assert inc.bytes_written < inc.bytes_read, inc
        check_gzip_files(repo, inc.backup_id)

        small_change(c, "c")
        source_dump = bk.dumpall(c)
        last = bk.take_backup(c, compress="gzip", parallel=2)
        assert_incremental_on(last, inc)
        source_ts = bk.tablespace_oids(c)

        restored, _ = bk.restore_and_start(td, c, last.backup_id, "restored")
        bk.check_tablespaces_inside(restored.datadir, source_ts)
        bk.assert_dumps_equal(source_dump, bk.dumpall(restored))
        bk.amcheck(restored)
        restored.stop()

        # tablespace_mapping: one by oid, so the location moves to a directory of ours
        mapping, expected = {}, {}
        for oid, (name, _) in source_ts.items():
            new = td.subdir(f"mapped_{name}")
            mapping[oid] = new
            expected[name] = new
        mapped, _ = bk.restore_and_start(td, c, last.backup_id, "restored_mapped",
                                         tablespace_mapping=mapping)
        for oid, new in mapping.items():
            link = os.path.join(mapped.datadir, "pg_tblspc", oid)
            assert os.path.islink(link) and os.path.realpath(link) == os.path.realpath(new), \
                f"pg_tblspc/{oid} should link to {new}"
        locations = bk.assert_dumps_equal(source_dump, bk.dumpall(mapped), "mapped restore")
        assert locations == expected, (locations, expected)


SUFFIX = {"gzip": ".gz", "zstd": ".zst", "lz4": ".lz4"}
DECODER = {"zstd": ["zstd", "-d", "-c", "-q"], "lz4": ["lz4", "-d", "-c", "-q"]}


def check_codec_files(repo, backup_id, codec):
    """Every stored file has the codec's suffix, and Debian's own tool for
    the codec decodes it to the size contents.json records."""
    root = bk.pgdata_dir(repo, backup_id)
    files = [f for f in bk.stored_files(repo, backup_id) if f != "backup_manifest"]
    suffix = SUFFIX[codec]
    plain = [f for f in files if not f.endswith(suffix)]
    assert not plain, f"{backup_id}: {codec} backup stores files without {suffix}: {plain[:10]}"
    sizes = {f["path"]: f["size"] for f in bk.read_json(repo, backup_id, "contents.json")["files"]}
    for rel in files:
        path = os.path.join(root, rel)
        if codec == "gzip":
            with gzip.open(path, "rb") as f:
                size = len(f.read())
        else:
            size = len(subprocess.run(DECODER[codec] + [path], capture_output=True,
                                      check=True, timeout=300).stdout)
        assert size == sizes[rel[:-len(suffix)]], f"{backup_id}: {rel} decodes to {size} bytes"


def test_every_codec_restores_equal():
    """A chain of zstd, lz4, gzip and uncompressed backups: each stores what
    its tool decodes, each validates, the newest restores (SQL and offline)
    to a cluster whose pg_dumpall equals the source's, pg_amcheck clean,
    pg_verifybackup accepts; a restore point on the zstd backup is reached."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=5)
        run_workload(c, "a", init_pgbench=False)
        full = bk.take_backup(c, "full", compress="zstd", parallel=2)
        check_codec_files(repo, full.backup_id, "zstd")
        assert full.bytes_written < full.bytes_read / 3, full
        c.sql("CREATE TABLE marks AS SELECT 1 AS before_point")
        point = c.sql_value("SELECT restore_point_lsn FROM blockbackup.create_restore_point("
                            f"'after_zstd', '{full.backup_id}')")
        c.sql("INSERT INTO marks VALUES (2)")
        backups = [full]
        for codec, tag in (("lz4", "b"), ("gzip", "c"), ("none", "d")):
            backup_churn(c, tag, "a")
            b = bk.take_backup(c, "incremental", compress=codec, parallel=2)
            assert_incremental_on(b, backups[-1])
            assert_catalog(c, b, compression=codec)
            if codec != "none":
                check_codec_files(repo, b.backup_id, codec)
            backups.append(b)
        small_change(c, "e")
        source_dump = bk.dumpall(c)
        last = bk.take_backup(c, compress="lz4")
        assert_incremental_on(last, backups[-1])
        for b in backups + [last]:
            assert bk.validate(c, b.backup_id)[b.backup_id].status == "OK", b
        restored, _ = bk.restore_and_start(td, c, last.backup_id, "restored_codecs")
        bk.assert_dumps_equal(source_dump, bk.dumpall(restored), "restore of a mixed chain")
        bk.amcheck(restored)
        restored.stop()

        at_point = bk.new_target(td, "at_point", c)
        c.sql(f"SELECT * FROM blockbackup.restore_backup('{full.backup_id}', "
              f"'{at_point.datadir}', recovery_target_name => 'after_zstd')")
        bk.start_restored(at_point)
        assert [r[0] for r in at_point.sql("SELECT * FROM marks")] == ["1"], point
        at_point.stop()

        c.stop()
        offline = bk.new_target(td, "offline_codecs", c)
        bk.cli(repo, "restore", last.backup_id, offline.datadir)
        bk.verifybackup(offline.datadir)
        bk.start_restored(offline)
        bk.assert_dumps_equal(source_dump, bk.dumpall(offline), "offline restore of a mixed chain")


def test_only_the_wal_a_backup_needs_is_stored():
    """Of the segment holding its stop LSN a backup stores only the part up
    to it (plus the switch record after it); the restore gives PostgreSQL a
    whole segment, and recovery reaches exactly the stop LSN."""
    with TestDir() as td:
        c, repo = backup_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        b = bk.take_backup(c, "full")
        segment = int(c.sql_value("SHOW wal_segment_size").rstrip("MB")) * 1024 * 1024
        wal = [f for f in bk.read_json(repo, b.backup_id, "contents.json")["files"]
               if f["kind"] == "wal"]
        last = max(wal, key=lambda f: f["path"])
        assert last["size"] < segment // 4, f"the stop segment was stored whole: {last}"
        restored, _ = bk.restore_and_start(td, c, b.backup_id, "needed_wal",
                                           recovery_target_lsn=b.stop_lsn)
        assert restored.sql_value("SELECT count(*) FROM t") == "1000"
        restored_segments = [os.path.getsize(os.path.join(restored.datadir, "pg_wal", n))
                             for n in os.listdir(os.path.join(restored.datadir, "pg_wal"))
                             if re.fullmatch(r"[0-9A-F]{24}", n)]
        assert restored_segments and all(size == segment for size in restored_segments), \
            restored_segments


# ---- 4 --------------------------------------------------------------------

def relation_file(repo, backup_id):
    """The largest stored relation file (base/... or pg_tblspc/...) of a backup."""
    root = bk.pgdata_dir(repo, backup_id)
    files = [f for f in bk.stored_files(repo, backup_id)
             if re.match(r"(base|pg_tblspc)/", f) and os.path.getsize(os.path.join(root, f)) > 0]
    assert files, f"{backup_id} stores no relation file"
    return max(files, key=lambda f: os.path.getsize(os.path.join(root, f)))


def names_for(stored):
    """Names an error may use for a stored file: its path in the backup, with
    or without .gz, its basename, and the relation file it stands for
    (INCREMENTAL.16384 -> 16384)."""
    path = re.sub(r"\.gz$", "", stored)
    base = os.path.basename(path)
    plain = base.replace("INCREMENTAL.", "")
    return {stored, path, base, os.path.join(os.path.dirname(path), plain)}


def test_validate_and_corruption():
    with TestDir() as td:
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=5)
        full = bk.take_backup(c, "full")
        pgbench_run(c, seconds=3)
        inc1 = bk.take_backup(c, "incremental")
        assert_incremental_on(inc1, full)
        pgbench_run(c, seconds=3)
        inc2 = bk.take_backup(c, "incremental")
        assert_incremental_on(inc2, inc1)

        results = bk.validate(c)
        assert set(results) >= {full.backup_id, inc1.backup_id, inc2.backup_id}, results
        for v in results.values():
            assert v.status == "OK" and not v.errors and v.files_checked > 0 \
                and v.bytes_checked > 0, v
        assert {e.status for e in bk.backups(c).values()} == {"OK"}, bk.backups(c)

        victim = relation_file(repo, inc2.backup_id)
        bk.flip_byte(os.path.join(bk.pgdata_dir(repo, inc2.backup_id), victim))
        names = names_for(victim)

        # a restore checks what it reads, even before validate_backup says so
        target = bk.new_target(td, "restore_unvalidated", c)
        err = bk.expect_sqlstate(c, bk.restore_query(inc2.backup_id, target.datadir),
                                 EXPECTED_STATES["corrupt"])
        assert any(n in err.stderr for n in names) or re.search(r"corrupt|checksum|crc",
                                                                err.stderr, re.I), \
            f"unclear restore error: {err.stderr}"

        v = bk.validate(c, inc2.backup_id)[inc2.backup_id]
        assert v.status == "CORRUPT", v
        assert any(n in e for e in v.errors for n in names), \
            f"errors do not name {victim}: {v.errors}"
        assert bk.backups(c)[inc2.backup_id].status == "CORRUPT", bk.backups(c)[inc2.backup_id]

        target2 = bk.new_target(td, "restore_corrupt", c)
        err = bk.expect_sqlstate(c, bk.restore_query(inc2.backup_id, target2.datadir),
                                 EXPECTED_STATES["corrupt"] + EXPECTED_STATES["bad_argument"])
        assert re.search(r"corrupt", err.stderr, re.I), f"unclear restore error: {err.stderr}"

        for b in (full, inc1):
            v = bk.validate(c, b.backup_id)[b.backup_id]
            assert v.status == "OK" and not v.errors, v
        restored, _ = bk.restore_and_start(td, c, full.backup_id, "restored_full")
        assert restored.sql_value("SELECT count(*) FROM pgbench_accounts") == "500000"
        bk.amcheck(restored)

        nxt = bk.take_backup(c, "auto")
        assert nxt.parent_backup_id != inc2.backup_id, f"{nxt} is based on the corrupt backup"
        assert nxt.mode == "full" or nxt.parent_backup_id in (full.backup_id, inc1.backup_id), nxt


# ---- 5 --------------------------------------------------------------------

def chain(cluster, tag, incrementals):
    full = bk.take_backup(cluster, "full", label=f"chain {tag}")
    out = [full]
    for i in range(incrementals):
        small_change(cluster, f"{tag}{i}")
        out.append(bk.take_backup(cluster, "incremental"))
        assert_incremental_on(out[-1], out[-2])
    small_change(cluster, f"{tag}_after")
    return out


# CHOICE: expire_backups' action text is not pinned; these words mean "removed".
REMOVED = re.compile(r"delet|expir|remov|purg", re.I)


def test_expire_and_delete():
    with TestDir() as td:
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=1)
        a = chain(c, "a", 2)
        b = chain(c, "b", 1)
        cc = chain(c, "c", 2)
        ids = lambda bs: {x.backup_id for x in bs}  # noqa: E731
        assert set(bk.backups(c)) == ids(a + b + cc), bk.backups(c)

        # a leaf goes alone
        assert bk.delete(c, a[2].backup_id) == 1
        assert not os.path.exists(bk.backup_dir(repo, a[2].backup_id))

        # a full with children needs cascade; nothing is removed meanwhile
        before = bk.tree_snapshot(os.path.join(repo, "backups"))
        err = bk.expect_sqlstate(c, f"SELECT blockbackup.delete_backup('{a[0].backup_id}')",
                                 EXPECTED_STATES["has_children"])
        assert re.search(r"cascade|depend|child|increment", err.stderr, re.I), err.stderr
        assert bk.snapshot_diff(before, bk.tree_snapshot(os.path.join(repo, "backups"))) is None
        assert set(bk.backups(c)) == ids(a[:2] + b + cc)
        assert bk.delete(c, a[0].backup_id, cascade=True) == 2
        for x in a:
            assert not os.path.exists(bk.backup_dir(repo, x.backup_id)), x
        assert set(bk.backups(c)) == ids(b + cc)

        # everything is younger than a day: keep_days => 1 removes nothing
        rows = bk.expire(c, keep_days=1)
        assert not [r for r in rows if REMOVED.search(r[1] or "")], rows
        assert set(bk.backups(c)) == ids(b + cc)

        rows = bk.expire(c, keep_full=1)
        removed = {r[0] for r in rows if REMOVED.search(r[1] or "")}
        assert removed == ids(b), f"expire_backups(keep_full => 1) returned {rows}"
        assert set(bk.backups(c)) == ids(cc), bk.backups(c)
        for x in b:
            assert not os.path.exists(bk.backup_dir(repo, x.backup_id)), x
        for x in cc:
            assert os.path.isfile(os.path.join(bk.backup_dir(repo, x.backup_id), "backup.json"))
        v = bk.validate(c, cc[-1].backup_id)
        assert v[cc[-1].backup_id].status == "OK", v
        nxt = bk.take_backup(c)
        assert_incremental_on(nxt, cc[-1])


# ---- 6 --------------------------------------------------------------------

def kill_during_backup(td):
    c, repo = backup_cluster(td, "killed")
    pgbench_init(c, scale=20)
    first = bk.take_backup(c, "full")
    with bk.take_backup_background(c, mode="full", compress="gzip", parallel=1) as proc:
        row = wait_until(lambda: [p for p in bk.progress(c) if p.backup_id and p.bytes_done],
                         timeout=120, interval=0.05,
                         what="backup_progress() to show the backup copying")[0]
        assert proc.poll() is None, "take_backup finished before it could be killed"
        entry = bk.backups(c).get(row.backup_id)
        assert entry and entry.status == "RUNNING", f"running backup in backups(): {entry}"
        assert c.sql_value(f"SELECT pg_terminate_backend({row.pid})") == "t"
        _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0, "take_backup survived pg_terminate_backend"
    wait_until(lambda: bk.backups(c)[row.backup_id].status == "ERROR", timeout=60,
               what=f"{row.backup_id} to be marked ERROR")
    wait_until(lambda: not bk.progress(c), timeout=30, what="backup_progress() to be empty")
    assert bk.backups(c)[first.backup_id].status in bk.USABLE
    assert bk.validate(c, first.backup_id)[first.backup_id].status == "OK"
    restored, _ = bk.restore_and_start(td, c, first.backup_id, "restored_after_kill")
    assert restored.sql_value("SELECT count(*) FROM pgbench_accounts") == "2000000"
    restored.stop()
    nxt = bk.take_backup(c, "auto")
    assert nxt.parent_backup_id != row.backup_id, f"{nxt} is based on the killed backup"
    c.stop()


def test_session_backup_start_stop():
    """backup_start names the repository's newest backup as the parent, so a
    script can ask for the blocks changed since; backup_stop ends it."""
    with TestDir() as td:
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=2)
        full = bk.take_backup(c, "full")
        c.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0")
        rows = c.sql("""
            SELECT backup_id, start_lsn, timeline, parent_backup_id, parent_start_lsn
              FROM blockbackup.backup_start('script copy') \\gset s_
            SELECT count(*) FROM blockbackup.changed_blocks(:'s_parent_start_lsn', :'s_start_lsn') c
              JOIN pg_class r ON r.relfilenode = c.relfilenode
             WHERE r.relname = 'pgbench_accounts';
            SELECT :'s_parent_backup_id', :'s_timeline', length(labelfile) > 0,
                   stop_lsn > :'s_start_lsn'::pg_lsn
              FROM blockbackup.backup_stop();
        """)
        changed, stopped = rows[0], rows[1]
        assert int(changed[0]) > 0, f"no changed pgbench_accounts blocks since the parent: {rows}"
        assert stopped == (full.backup_id, "1", "t", "t"), stopped
        err = bk.expect_sqlstate(c, "SELECT * FROM blockbackup.backup_stop()", ("55000",))
        assert "backup_start" in err.message, err
        assert set(bk.backups(c)) == {full.backup_id}, "backup_start must not add catalog entries"


def disk_full(td):
    c = ext.extension_cluster(td, "diskfull", functions=BACKUP_FUNCTIONS)
    mount = os.path.join(td.path, "tmpfs")
    try:
        bk.mount_tmpfs(mount, "64m")
    except CommandError as exc:
        raise SkipTest(f"full-disk part not run: mounting a tmpfs is not permitted here ({exc})")
    try:
        repo = make_postgres_dir(os.path.join(mount, "repo"))
        os.chmod(repo, 0o700)
        bk.configure_repository(c, repo)
        small = bk.take_backup(c, "full", compress="gzip")
        free = bk.free_bytes(mount)
        pgbench_init(c, scale=10)                  # ~150 MB, more than the tmpfs holds
        err = bk.expect_sqlstate(c, bk.take_backup_query("full", compress="none"),
                                 EXPECTED_STATES["disk_full"],
                                 contains=(r"space", r"disk", r"full"))
        entries = bk.backups(c)
        failed = [e for e in entries.values() if e.backup_id != small.backup_id]
        assert len(failed) == 1 and failed[0].status == "ERROR", \
            f"after the full disk ({err.message}): {entries}"
        assert entries[small.backup_id].status in bk.USABLE, entries[small.backup_id]
        assert bk.validate(c, small.backup_id)[small.backup_id].status == "OK"
        print(f"  disk full: {free} bytes free before, {bk.free_bytes(mount)} after the failure")
    finally:
        c.stop_quietly()
        bk.umount(mount)


def test_faults():
    with TestDir() as td:
        kill_during_backup(td)
        disk_full(td)


# ---- 7 --------------------------------------------------------------------

def test_bad_input():
    with TestDir() as td:
        c, repo = backup_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        b = bk.take_backup(c, "full")
        c.sql("CREATE ROLE plain LOGIN")
        tdir = td.subdir("targets")

        def unchanged(check):
            """Run check(); the repository and the catalog must not change."""
            stored = os.path.join(repo, "backups")
            before, cat = bk.tree_snapshot(stored), bk.backups(c)
            result = check()
            diff = bk.snapshot_diff(before, bk.tree_snapshot(stored))
            assert diff is None, f"the repository changed: {diff}"
            assert bk.backups(c) == cat
            return result

        def fails(query, kind, user="postgres", **kw):
            return unchanged(lambda: bk.expect_sqlstate(c, query, EXPECTED_STATES[kind],
                                                        user=user, **kw))

        def empty_target(name):
            return make_postgres_dir(os.path.join(tdir, name))

        # unknown ids
        t = empty_target("unknown")
        fails("SELECT * FROM blockbackup.validate_backup('no-such-backup')", "unknown_id",
              contains="no-such-backup")
        fails("SELECT blockbackup.delete_backup('no-such-backup')", "unknown_id")
        fails(bk.restore_query("no-such-backup", t), "unknown_id")
        assert os.listdir(t) == [], f"failed restore wrote {os.listdir(t)}"

        # path traversal: each would resolve to a real directory if joined naively
        for bad in (f"../backups/{b.backup_id}", f"{b.backup_id}/..", "..", "../..",
                    f"./{b.backup_id}", f"/{b.backup_id}", repo):
            fails(f"SELECT * FROM blockbackup.validate_backup({quote_literal(bad)})",
                  "path_traversal")
            fails(f"SELECT blockbackup.delete_backup({quote_literal(bad)}, true)",
                  "path_traversal")
            fails(bk.restore_query(bad, t), "path_traversal")
        assert os.listdir(t) == [] and os.path.isdir(os.path.join(repo, "backups", b.backup_id))

        # restore targets
        unchanged(lambda: bk.expect_sqlstate(
            c, bk.restore_query(b.backup_id, c.datadir),
            EXPECTED_STATES["target_in_datadir"] + EXPECTED_STATES["target_not_empty"]))
        for inside in (os.path.join(c.datadir, "restore_here"),
                       os.path.join(c.datadir, "base", "restore_here")):
            fails(bk.restore_query(b.backup_id, inside), "target_in_datadir")
        for path in ("restore_here", "base/restore_here", "backup_manifest"):
            assert not os.path.exists(os.path.join(c.datadir, path)), f"restore wrote {path}"
        fails(bk.restore_query(b.backup_id, "relative/dir"), "target_relative")
        busy = empty_target("busy")
        with open(os.path.join(busy, "keep.txt"), "w") as f:
            f.write("user data\n")
        fails(bk.restore_query(b.backup_id, busy), "target_not_empty")
        assert os.listdir(busy) == ["keep.txt"], os.listdir(busy)

        # bad arguments
        fails("SELECT * FROM blockbackup.take_backup('weekly')", "bad_argument")
        fails("SELECT * FROM blockbackup.take_backup(compress => 'bzip2')", "bad_argument")
        fails("SELECT * FROM blockbackup.take_backup(compress => 'zstd', compress_level => 20)",
              "bad_argument")
        fails("SELECT * FROM blockbackup.take_backup(compress => 'gzip', compress_level => -1)",
              "bad_argument")
        fails("SELECT * FROM blockbackup.take_backup(parallel => 0)", "bad_argument")
        fails("SELECT * FROM blockbackup.expire_backups(keep_full => -1)", "bad_argument")

        # privileges
        for q in (bk.take_backup_query(), "SELECT * FROM blockbackup.backups()",
                  "SELECT * FROM blockbackup.validate_backup()",
                  f"SELECT blockbackup.delete_backup('{b.backup_id}')",
                  bk.restore_query(b.backup_id, empty_target("plain"))):
            fails(q, "privilege", user="plain")
        fails(f"SET blockbackup.repository = '{tdir}'", "privilege", user="plain")

        # a second, empty repository: an incremental needs a full there
        repo2 = bk.make_repository(td, "repo_empty")
        bk.configure_repository(c, repo2)
        bk.expect_sqlstate(c, bk.take_backup_query("incremental"),
                           EXPECTED_STATES["no_full_for_incremental"],
                           contains=(r"full",))
        assert not bk.backups(c), bk.backups(c)
        leftovers = list(bk.tree_snapshot(os.path.join(repo2, "backups")))
        assert not leftovers, f"a refused incremental left {leftovers}"

        # repository inside the data directory (existing, writable): refused
        # when set or when used
        inside = make_postgres_dir(os.path.join(c.datadir, "repo_inside"))
        try:
            bk.configure_repository(c, inside)
        except (CommandError, TimeoutError):
            pass
        else:
            bk.expect_sqlstate(c, bk.take_backup_query("full"),
                               EXPECTED_STATES["repository_in_datadir"])
        assert os.listdir(inside) == [], f"backup written into PGDATA: {os.listdir(inside)}"
        os.rmdir(inside)

        # repository unset
        bk.set_config(c, "blockbackup.repository", None)
        before = bk.tree_snapshot(os.path.join(repo, "backups"))
        bk.expect_sqlstate(c, bk.take_backup_query("full"), EXPECTED_STATES["repository_unset"],
                           contains=(r"blockbackup\.repository",), hint=True)
        assert bk.snapshot_diff(before, bk.tree_snapshot(os.path.join(repo, "backups"))) is None

        # the first repository is intact and its backup usable
        bk.configure_repository(c, repo)
        assert bk.validate(c, b.backup_id)[b.backup_id].status == "OK"


# ---- 8 --------------------------------------------------------------------

def test_offline_restore():
    with TestDir() as td:
        bk.require_cli()
        c, repo = backup_cluster(td)
        pgbench_init(c, scale=5)
        run_workload(c, "a", init_pgbench=False)
        full = bk.take_backup(c, "full")
        backup_churn(c, "b", "a")
        inc = bk.take_backup(c, "incremental")
        small_change(c, "c")
        source_dump = bk.dumpall(c)
        last = bk.take_backup(c)
        assert_incremental_on(last, inc)
        source_ts = bk.tablespace_oids(c)
        c.stop()

        listing = bk.cli(repo, "list").stdout
        for b in (full, inc, last):
            assert b.backup_id in listing, f"list does not show {b.backup_id}:\n{listing}"
        out = bk.cli(repo, "validate")
        for b in (full, inc, last):
            assert b.backup_id in out.stdout + out.stderr, out
        bk.cli(repo, "validate", last.backup_id)
        bad = bk.cli(repo, "validate", "no-such-backup", check=False)
        assert bad.returncode != 0, "validate of an unknown id succeeded"

        target = bk.new_target(td, "restored", c)
        bk.cli(repo, "restore", last.backup_id, target.datadir)
        bk.check_restored_layout(target.datadir)
        bk.check_tablespaces_inside(target.datadir, source_ts)
        bk.verifybackup(target.datadir)
        bk.start_restored(target)
        bk.assert_dumps_equal(source_dump, bk.dumpall(target), "offline restore")
        bk.amcheck(target)
        target.stop()

        # --tablespace-mapping OLD=NEW with the old location
        mapped = bk.new_target(td, "restored_mapped", c)
        args = []
        for oid, (name, loc) in source_ts.items():
            args += ["--tablespace-mapping", f"{loc}={td.subdir('mapped_' + name)}"]
        bk.cli(repo, "restore", full.backup_id, mapped.datadir, *args)
        for oid, (name, _) in source_ts.items():
            link = os.path.join(mapped.datadir, "pg_tblspc", oid)
            assert os.path.realpath(link) == os.path.realpath(os.path.join(td.path,
                                                                           "mapped_" + name))
        bk.verifybackup(mapped.datadir)
        bk.start_restored(mapped)
        assert mapped.sql_value("SELECT count(*) FROM pgbench_accounts") == "500000"


# ---- the harness itself, on plain PostgreSQL -----------------------------

def test_backup_harness_on_pg_basebackup():
    """The restore oracles on a stand-in restore: pg_basebackup -Fp -X fetch,
    its tablespace then moved in place (a real directory pg_tblspc/<oid>)
    with allow_in_place_tablespaces = on in postgresql.auto.conf — the one
    layout that both pg_verifybackup (it reports any file under the target
    that the manifest does not list, e.g. tablespace data in another
    directory of the target) and PostgreSQL 15's startup (it PANICs at
    consistency on a directory in pg_tblspc/ unless that setting is on)
    accept. Then: verifybackup, start on its own port, dump equality,
    amcheck; and negative controls: a changed row, a flipped byte."""
    with TestDir() as td:
        c = td.cluster(preload=False).initdb().start()
        pgbench_init(c, scale=1)
        run_workload(c, "a", init_pgbench=False)
        writer = seq_writer_start(c, td.path, seconds=60)
        wait_until(lambda: max_committed(c) > 50, timeout=60, what="the writer")
        noted = max_committed(c)
        ts = bk.tablespace_oids(c)
        target = bk.new_target(td, "restored", c)
        maps = []
        for oid, (name, loc) in ts.items():
            maps += ["-T", f"{loc}={os.path.join(td.path, 'ts_copy', oid)}"]
        run([pg_bin("pg_basebackup"), "-D", target.datadir, "-X", "fetch", "-c", "fast",
             "-h", c.sockdir, "-p", str(c.port), "-U", "postgres", *maps],
            as_postgres=True, timeout=600)
        seq_writer_stop(writer)
        for oid in ts:
            link = os.path.join(target.datadir, "pg_tblspc", oid)
            os.unlink(link)
            os.rename(os.path.join(td.path, "ts_copy", oid), link)
        with open(os.path.join(target.datadir, "postgresql.auto.conf"), "a") as f:
            # As restore_backup writes them: in-place tablespaces, and archive
            # recovery from pg_wal ending on a new timeline.
            f.write("allow_in_place_tablespaces = on\nrestore_command = '/bin/false'\n"
                    "recovery_target_action = 'promote'\n")
        open(os.path.join(target.datadir, "recovery.signal"), "w").close()
        chown_postgres(os.path.join(target.datadir, "recovery.signal"))
        bk.check_restored_layout(target.datadir)
        bk.check_tablespaces_inside(target.datadir, ts)
        bk.verifybackup(target.datadir)
        copy = bk.new_target(td, "copy", c)           # pristine, for the flipped byte
        os.rmdir(copy.datadir)
        run(["cp", "-a", target.datadir, copy.datadir], timeout=300)
        bk.start_restored(target)
        assert target.port != c.port and target.sql_value("SHOW port") == str(target.port)
        check_seq_rows(target, noted, "pg_basebackup copy")
        target.sql("DELETE FROM seq_rows WHERE n > 0")   # make the two equal for the dump
        c.sql("DELETE FROM seq_rows WHERE n > 0")
        source_dump = bk.dumpall(c)
        locations = bk.assert_dumps_equal(source_dump, bk.dumpall(target), "pg_basebackup copy")
        assert set(locations) == {n for n, _ in ts.values()}, locations
        bk.amcheck(target)
        target.sql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 7")
        try:
            bk.assert_dumps_equal(source_dump, bk.dumpall(target))
        except AssertionError as exc:
            assert "differs at line" in str(exc), exc
        else:
            raise AssertionError("assert_dumps_equal missed a changed row")
        bk.flip_byte(os.path.join(copy.datadir, "PG_VERSION"), 0)
        try:
            bk.verifybackup(copy.datadir)
        except AssertionError as exc:
            assert '"PG_VERSION"' in str(exc), exc
        else:
            raise AssertionError("pg_verifybackup missed a flipped byte")
