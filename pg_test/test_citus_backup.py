"""take_cluster_backup on a real Citus cluster (a coordinator and two
workers, pg_test/harness/citus.py), checked by an invariant only a
consistent restore keeps: while pgbench clients move money between
accounts on different workers (Citus commits each by two-phase commit),
a set is taken; the three nodes restored to its restore point, with the
originals stopped, hold exactly the starting total, every ledger row
matches both balance changes, no prepared transaction is left after
recovery, and a query across all shards works.
"""
import os
import subprocess
import time

from harness import backup as bk
from harness import citus
from harness.cluster import (TestDir, make_postgres_dir, parse_psql_rows, quote_literal, run,
                             wait_until)
from harness.workload import pgbench_argv

TEST_TIMEOUT = 1200

SET_COLUMNS = "node, backup_id, mode, status, restore_point, restore_point_lsn"


def take_cluster_backup(coordinator, mode=None, restore_point=None):
    args = bk.sql_args(("mode", mode), ("restore_point", restore_point))
    rows = coordinator.sql(f"SELECT {SET_COLUMNS} FROM blockbackup.take_cluster_backup({args})",
                           timeout=900)
    return [dict(zip(SET_COLUMNS.split(", "), r)) for r in rows]


def cluster_sets(coordinator):
    cols = "set_id, restore_point, status, mode, commits_blocked_ms, nodes::text, message"
    rows = coordinator.sql(f"SELECT {cols} FROM blockbackup.cluster_backups()")
    return [dict(zip(cols.replace("::text", "").split(", "), r)) for r in rows]


def start_transfers(td, coordinator, seconds):
    script = citus.transfer_script(td)
    return subprocess.Popen(pgbench_argv(coordinator, "-n", "-c", "4", "-T", str(seconds),
                                         "-D", "accounts=200", "-f", script),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


RESTORE_SCRIPT = os.path.join(bk.REPO_ROOT, "sql", "cluster_restore.psql")
# Every copy listens on its original's port + this, in its original's
# socket directory (the servers listen on Unix sockets only).
PORT_OFFSET = 1000


def restore_set(td, cc, rows, label):
    """Step 1 of sql/cluster_restore.psql on the running original
    coordinator: every node's backup of the set restored at once to the
    set's restore point under a new directory. Returns the copies (not
    started), coordinator first, and the script's rows."""
    set_id = next(e["set_id"] for e in cluster_sets(cc.coordinator)
                  if e["restore_point"] == rows[0]["restore_point"])
    root = make_postgres_dir(td.subdir(label))
    proc = run(cc.coordinator.psql_argv() + [
        "-f", RESTORE_SCRIPT, "-v", f"target={root}", "-v", f"port_offset={PORT_OFFSET}",
        "-v", f"set={set_id}"], timeout=900)
    result = [line.split("\t") for line in proc.stdout.splitlines() if line.count("\t") == 6]
    copies = []
    for node, row, line in zip(cc.nodes, rows, result):
        group, name, backup_id, status, directory, port, detail = line
        assert (name, backup_id, status, int(port)) == \
            (f"{node.sockdir}:{node.port}", row["backup_id"], "DONE", node.port + PORT_OFFSET), line
        assert directory == os.path.join(root, f"group_{group}") and "pg_ctl -D" in detail, line
        copy = td.cluster(f"{label}_{os.path.basename(node.root)}", preload=node.preload,
                          settings=dict(node.settings), port=node.port + PORT_OFFSET)
        copy.datadir, copy.sockdir = directory, node.sockdir
        copies.append(copy)
    assert len(copies) == len(cc.nodes), proc.stdout
    return copies


def bring_up(cc, restored):
    """Every copy started as step 1 leaves it (plain pg_ctl start), then
    step 2 of the script on the restored coordinator: pg_dist_node on every
    copy names the copies, the held features are back on, 2PC recovery ran."""
    for copy in restored:
        copy.start(timeout=300)
        copy.wait_ready()
        wait_until(lambda: copy.sql_value("SELECT pg_is_in_recovery()") == "f", 300,
                   what="the copy to finish recovery and promote")
        assert copy.timeline() > 1
        assert copy.sql_value("SHOW citus.recover_2pc_interval") == "-1"
    coordinator = restored[0]
    proc = run(coordinator.psql_argv() + ["-f", RESTORE_SCRIPT, "-v", "relink=on",
                                          "-v", f"port_offset={PORT_OFFSET}"], timeout=300)
    assert len([line for line in proc.stdout.splitlines() if line.count("\t") == 6]) == len(restored), \
        proc.stdout
    for copy in restored:
        ports = {int(p) for (p,) in copy.sql("SELECT nodeport FROM pg_dist_node")}
        assert ports == {c.port for c in restored}, (ports, [c.port for c in restored])
        assert copy.sql_value("SHOW citus.recover_2pc_interval") != "-1"
        assert copy.sql_value("SHOW citus.distributed_deadlock_detection_factor") != "-1"
    # Run again, it refuses: the copy is relinked already.
    again = run(coordinator.psql_argv() + ["-f", RESTORE_SCRIPT, "-v", "relink=on",
                                           "-v", f"port_offset={PORT_OFFSET}"], check=False)
    assert again.returncode != 0 and "relinked already" in again.stderr, again.stderr
    return restored


def restore_with_originals_stopped(td, cc, rows, label, total):
    """The set restored while the originals run, the originals stopped,
    the copies brought up and checked."""
    restored = restore_set(td, cc, rows, label)
    for node in cc.nodes:
        node.stop()
    check_consistent(bring_up(cc, restored), total)


def check_consistent(restored, total):
    coordinator = restored[0]
    assert citus.bank_total(coordinator) == total, "the restored bank lost or made money"
    assert citus.ledger_mismatches(coordinator) == 0, "a transfer is on one side only"
    for node in restored:
        citus.wait_no_prepared(node)
    assert int(coordinator.sql_value("SELECT count(*) FROM accounts WHERE branch IN "
                                     "(SELECT id FROM branches)")) == 200


def test_a_set_under_transfers_restores_consistent():
    with TestDir() as td:
        cc = citus.CitusCluster(td, workers=2)
        total = citus.create_bank(cc.coordinator)
        bench = start_transfers(td, cc.coordinator, seconds=600)
        try:
            time.sleep(2)
            rows = take_cluster_backup(cc.coordinator, restore_point="set_one")
            time.sleep(1)
        finally:
            bench.terminate()
            bench.communicate(timeout=60)
        assert [r["node"] for r in rows] == [f"{n.sockdir}:{n.port}" for n in cc.nodes], rows
        assert all(r["status"] == "DONE" and r["backup_id"] and r["restore_point_lsn"]
                   for r in rows), rows
        assert {r["mode"] for r in rows} == {"full"}, rows
        # Each node's catalog names the point, at the LSN of its own record.
        for node, row in zip(cc.nodes, rows):
            points = node.sql("SELECT backup_id, lsn FROM blockbackup.restore_points() "
                              "WHERE name = 'set_one'")
            assert points == [(row["backup_id"], row["restore_point_lsn"])], points
        [entry] = cluster_sets(cc.coordinator)
        assert entry["status"] == "DONE" and entry["restore_point"] == "set_one", entry
        assert float(entry["commits_blocked_ms"]) >= 0, entry
        # Transfers ran on after the point: the originals moved on.
        assert int(cc.coordinator.sql_value("SELECT count(*) FROM transfers")) > 0

        restore_with_originals_stopped(td, cc, rows, "r1", total)


def test_several_sets_under_transfers_each_restore_consistent():
    with TestDir() as td:
        cc = citus.CitusCluster(td, workers=2)
        total = citus.create_bank(cc.coordinator)
        bench = start_transfers(td, cc.coordinator, seconds=600)
        sets = []
        try:
            for i, mode in enumerate(("full", "auto", "auto")):
                time.sleep(1)
                sets.append(take_cluster_backup(cc.coordinator, mode=mode))
        finally:
            bench.terminate()
            out, err = bench.communicate(timeout=60)
        assert [{r["mode"] for r in rows} for rows in sets] == \
            [{"full"}, {"incremental"}, {"incremental"}], sets
        names = [rows[0]["restore_point"] for rows in sets]
        assert len(set(names)) == 3 and all(n.startswith("cluster_") for n in names), names
        listed = cluster_sets(cc.coordinator)
        assert [e["restore_point"] for e in listed] == names, listed
        assert all(e["status"] == "DONE" for e in listed), listed
        # Later sets hold more transfers: each restore is its own moment.
        restored = [restore_set(td, cc, rows, f"s{i}") for i, rows in enumerate(sets)]
        for node in cc.nodes:
            node.stop()
        counts = []
        for nodes in restored:
            check_consistent(bring_up(cc, nodes), total)
            counts.append(int(nodes[0].sql_value("SELECT count(*) FROM transfers")))
            for node in nodes:
                node.stop()
        assert counts == sorted(counts) and counts[0] < counts[-1], counts


def _grow(node, scale):
    """Local tables on one node, so that its backup takes a while."""
    subprocess.run(pgbench_argv(node, "-i", "-q", "-s", str(scale)), check=True,
                   capture_output=True, timeout=600)


def test_a_fast_nodes_wal_is_held_until_the_restore_point():
    """A node whose backup ends long before the slowest one's: the WAL from
    its stop to the restore point must survive checkpoints meanwhile, or
    the point cannot be attached to its backup."""
    with TestDir() as td:
        # Nothing but the set keeps WAL (the harness keeps 4GB otherwise).
        cc = citus.CitusCluster(td, workers=2, wal_keep_size="0")
        total = citus.create_bank(cc.coordinator)
        slow, fast = cc.workers
        _grow(slow, 1)
        # The slow worker compresses hard, one thread: its backup takes a while.
        slow.sql("ALTER SYSTEM SET blockbackup.compression = 'zstd'; "
                 "ALTER SYSTEM SET blockbackup.compress_level = 16; "
                 "ALTER SYSTEM SET blockbackup.parallel = 1; SELECT pg_reload_conf()")
        query = f"SELECT {SET_COLUMNS} FROM blockbackup.take_cluster_backup(restore_point => 'held')"
        with cc.coordinator.sql_in_background(query) as proc:
            def fast_one_done():
                assert proc.poll() is None, proc.communicate()[1]
                return [e.status for e in bk.backups(fast).values()] == ["DONE"] and \
                    [e.status for e in bk.backups(slow).values()] == ["RUNNING"]
            wait_until(fast_one_done, timeout=120, interval=0.05,
                       what="the fast worker's backup to end first")
            [stopped] = bk.backups(fast).values()
            segment = fast.sql_value(f"SELECT pg_walfile_name('{stopped.stop_lsn}')")
            # Segments written, switched and checkpointed away on the fast
            # worker: what nothing holds is removed or recycled.
            for _ in range(4):
                fast.sql("CREATE TABLE IF NOT EXISTS churn (x int); INSERT INTO churn VALUES (1); "
                         "SELECT pg_switch_wal(); CHECKPOINT")
            kept = fast.sql_value(f"SELECT count(*) FROM pg_ls_waldir() WHERE name = '{segment}'")
            assert [e.status for e in bk.backups(slow).values()] == ["RUNNING"], \
                "the slow worker's backup ended before the churn: the test proves nothing"
            assert kept == "1", f"{segment}, the fast worker's stop segment, was removed"
            out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        rows = [dict(zip(SET_COLUMNS.split(", "), r)) for r in parse_psql_rows(out)]
        assert len(rows) == 3 and all(r["status"] == "DONE" for r in rows), out
        # Nothing is held any more once the set ended.
        for node in cc.nodes:
            assert node.sql("SELECT slot_name FROM pg_replication_slots "
                            "WHERE slot_name LIKE 'pg_blockbackup_set%'") == []
        restore_with_originals_stopped(td, cc, rows, "r", total)


def test_a_worker_stopped_during_the_set_fails_it_cleanly():
    with TestDir() as td:
        cc = citus.CitusCluster(td, workers=2)
        total = citus.create_bank(cc.coordinator)
        worker1, worker2 = cc.workers
        _grow(worker1, 30)
        _grow(worker2, 30)
        args = bk.sql_args(("restore_point", "doomed"))
        query = f"SELECT {SET_COLUMNS} FROM blockbackup.take_cluster_backup({args})"
        with cc.coordinator.sql_in_background(query) as proc:
            wait_until(lambda: any(e.status == "RUNNING" for e in bk.backups(worker2).values())
                       and any(e.status == "RUNNING" for e in bk.backups(worker1).values()),
                       timeout=60, interval=0.05, what="both workers' backups to run")
            worker2.stop()
            out, err = proc.communicate(timeout=300)
        assert proc.returncode != 0, out
        assert f"{worker2.sockdir}:{worker2.port}" in err and "failed" in err, err
        assert "08006" in err, err
        [entry] = cluster_sets(cc.coordinator)
        assert entry["status"] == "ERROR", entry
        # The other worker's backup was cancelled there, and no restore point made.
        assert [e.status for e in bk.backups(worker1).values()] == ["ERROR"], bk.backups(worker1)
        for node in (cc.coordinator, worker1):
            assert node.sql("SELECT name FROM blockbackup.restore_points()") == []
            with open(node.logfile) as f:
                assert 'restore point "doomed"' not in f.read()

        worker2.start()
        worker2.wait_ready()
        rows = take_cluster_backup(cc.coordinator, restore_point="after_the_failure")
        assert all(r["status"] == "DONE" for r in rows), rows
        assert [e["status"] for e in cluster_sets(cc.coordinator)] == ["ERROR", "DONE"]
        restore_with_originals_stopped(td, cc, rows, "r", total)


def test_bad_calls_get_clear_errors():
    with TestDir() as td:
        cc = citus.CitusCluster(td, workers=1)
        citus.create_bank(cc.coordinator, accounts=20)
        co, worker = cc.coordinator, cc.workers[0]
        take_cluster_backup(co, restore_point="once")
        err = bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => 'once')",
                                 "42710", hint=True)
        assert "once" in err.message, err
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => '')", "22023")
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => repeat('x', 64))",
                           "22023")
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(mode => 'sometimes')", "22023")
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(mode => NULL)", "22004")
        err = bk.expect_sqlstate(worker, "SELECT * FROM blockbackup.take_cluster_backup()", "55000", hint=True)
        assert "worker" in err.message and str(co.port) in err.stderr, err.stderr
        co.sql("CREATE ROLE plain LOGIN; "
               "GRANT EXECUTE ON FUNCTION blockbackup.take_cluster_backup(text, text) TO plain; "
               "GRANT USAGE ON SCHEMA blockbackup TO plain")
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup()", "42501", user="plain")
        # Nobody but a superuser may even call it by default.
        co.sql("CREATE ROLE other LOGIN; GRANT USAGE ON SCHEMA blockbackup TO other")
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup()", "42501", user="other")
        # A name the set's backups do not hold: each node's restore refuses it.
        [entry] = cluster_sets(co)
        assert entry["status"] == "DONE", entry
        for node in cc.nodes:
            [backup_id] = [b for b, e in bk.backups(node).items() if e.status == "DONE"]
            state, message = node.sql_error(
                f"SELECT * FROM blockbackup.restore_backup({quote_literal(backup_id)}, "
                f"{quote_literal(td.subdir('nope_' + str(node.port)))}, recovery_target_name => 'never')")
            assert state == "22023" and "once" in message, (state, message)
        # Only the first set was recorded: the refusals left nothing.
        assert len(cluster_sets(co)) == 1

        # Citus's locks held elsewhere: no restore point after the backups,
        # 55P03, and the set says ERROR at once, not at the next call.
        holder = subprocess.Popen(co.psql_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd="/")
        try:
            holder.stdin.write("BEGIN; LOCK TABLE pg_catalog.pg_dist_transaction IN ROW EXCLUSIVE MODE; "
                               "SELECT 'held';\n")
            holder.stdin.flush()
            assert holder.stdout.readline().strip() == "held", holder.stderr.read()
            err = bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => 'blocked')",
                                     "55P03", hint=True)
            assert "blocked" in err.message, err
            blocked = cluster_sets(co)[-1]
            assert blocked["restore_point"] == "blocked" and blocked["status"] == "ERROR", blocked
            assert "no restore point" in blocked["message"], blocked
        finally:
            holder.communicate("COMMIT;\n", timeout=60)
        for node in cc.nodes:
            with open(node.logfile) as f:
                assert 'restore point "blocked" created' not in f.read(), node.logfile
        # A failed set's name stays taken (where a point was half made is
        # not known); the next set under another name succeeds.
        bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => 'blocked')",
                           "42710")
        rows = take_cluster_backup(co, restore_point="unblocked")
        assert all(r["status"] == "DONE" for r in rows), rows

        # A worker that cannot be reached from the start: 08006 naming it,
        # the coordinator's backup cancelled there, nothing else left.
        before = {b for b, e in bk.backups(co).items()}
        worker.stop()
        err = bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => 'unreachable')",
                                 "08006", hint=True)
        assert f"{worker.sockdir}:{worker.port}" in err.message, err
        assert cluster_sets(co)[-1]["status"] == "ERROR"
        assert [e.status for b, e in bk.backups(co).items() if b not in before] in ([], ["ERROR"]), \
            bk.backups(co)
        worker.start()
        worker.wait_ready()
        assert [s["status"] for s in cluster_sets(co)] == ["DONE", "ERROR", "DONE", "ERROR"]

        # A worker with no replication slot free for the set's WAL hold
        # (its summarizer has the only one): the set fails before any
        # backup starts, naming it.
        worker.write_config(max_replication_slots=1)
        worker.restart()
        before = {node.port: set(bk.backups(node)) for node in cc.nodes}
        err = bk.expect_sqlstate(co, "SELECT * FROM blockbackup.take_cluster_backup(restore_point => 'no_slot')",
                                 "08006", hint=True)
        assert f"{worker.sockdir}:{worker.port}: could not hold its WAL" in err.message, err
        assert "replication slots" in err.message and "max_replication_slots" in err.stderr, err
        assert {node.port: set(bk.backups(node)) for node in cc.nodes} == before
        assert cluster_sets(co)[-1]["status"] == "ERROR"
        assert co.sql("SELECT slot_name FROM pg_replication_slots "
                      "WHERE slot_name LIKE 'pg_blockbackup_set%'") == []
        worker.write_config(max_replication_slots=10)
        worker.restart()

        # A server without Citus.
        plain = ext_cluster(td)
        err = bk.expect_sqlstate(plain, "SELECT * FROM blockbackup.take_cluster_backup()", "55000", hint=True)
        assert "Citus is not installed" in err.message, err


def ext_cluster(td):
    from harness import extension as ext
    return ext.extension_cluster(td, "no_citus")
