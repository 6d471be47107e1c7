"""Several nodes backed up at once by sql/cluster_backup.psql (psql +
dblink): three local clusters on different ports, with take_backup and
with dump agents. A successful run backs
all of them up and leaves one restore point on each, and every node
restores to it (rows written before the run are there, rows written after
are not; the restored cluster is promoted and its pg_dump equals the
node's at the restore point for the unchanged tables). With one node
stopped while the backups run, the others are cancelled (their backups end
in ERROR), no restore point is made, and psql fails naming the node.
"""
import os
import subprocess

from harness import backup as bk
from harness import extension as ext
from harness.cluster import TestDir, in_background, quote_literal, run, wait_until
from harness.workload import pgbench_argv

TEST_TIMEOUT = 900
SCRIPT = os.path.join(bk.REPO_ROOT, "sql", "cluster_backup.psql")


def three_nodes(td, scale):
    nodes = []
    for i in range(1, 4):
        c = ext.extension_cluster(td, f"node{i}", functions=("take_backup", "create_restore_point"))
        repo = bk.make_repository(td, f"repo{i}")
        bk.configure_repository(c, repo)
        subprocess.run(pgbench_argv(c, "-i", "-q", "-s", str(scale)), check=True,
                       capture_output=True, timeout=600)
        c.sql(f"CREATE TABLE marker (node int, phase text); "
              f"INSERT INTO marker VALUES ({i}, 'before')")
        nodes.append((c, repo))
    return nodes


def conninfo(cluster):
    return f"host={cluster.sockdir} port={cluster.port} dbname=postgres user=postgres"


def script_argv(coordinator, nodes, **variables):
    array = "{" + ",".join('"' + conninfo(c) + '"' for c, _ in nodes) + "}"
    argv = coordinator.psql_argv() + ["-v", f"nodes={array}"]
    for name, value in variables.items():
        argv += ["-v", f"{name}={value}"]
    return argv + ["-f", SCRIPT]


def result_rows(stdout):
    """node -> (status, backup_id, detail, restore_point_lsn) from the result table."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 6 and parts[0].isdigit():
            rows[int(parts[0])] = tuple(None if p == "\\N<null>" else p for p in parts[2:])
    return rows


def test_three_nodes_back_up_and_restore_to_one_restore_point():
    with TestDir() as td:
        nodes = three_nodes(td, scale=1)
        coordinator = nodes[0][0]
        proc = run(script_argv(coordinator, nodes, restore_point="rp_nightly"), timeout=600,
                   check=False)
        assert proc.returncode == 0, proc.stderr
        rows = result_rows(proc.stdout)
        assert sorted(rows) == [1, 2, 3], proc.stdout
        for i, (status, backup_id, detail, lsn) in rows.items():
            assert status == "DONE" and backup_id and lsn, rows[i]
            assert "rp_nightly" in detail, rows[i]
        # Written after the restore point: must not be in the restores.
        states = {}
        for i, (c, _) in enumerate(nodes, start=1):
            points = c.sql("SELECT backup_id, name, lsn FROM blockbackup.restore_points()")
            assert points == [(rows[i][1], "rp_nightly", rows[i][3])], points
            states[i] = c.sql("SELECT count(*), sum(abalance) FROM pgbench_accounts")
            c.sql(f"INSERT INTO marker VALUES ({i}, 'after'); "
                  "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid < 100")
        for i, (c, repo) in enumerate(nodes, start=1):
            target = bk.new_target(td, f"restored{i}", c)
            c.sql(f"SELECT * FROM blockbackup.restore_backup({quote_literal(rows[i][1])}, "
                  f"{quote_literal(target.datadir)}, recovery_target_name => 'rp_nightly')",
                  timeout=600)
            bk.verifybackup(target.datadir)
            bk.start_restored(target)
            assert target.sql("SELECT node, phase FROM marker ORDER BY 1, 2") == \
                [(str(i), "before")], f"node {i} not at the restore point"
            assert target.sql("SELECT count(*), sum(abalance) FROM pgbench_accounts") == \
                states[i], f"node {i}: pgbench_accounts differs from the restore point's"
            target.stop()
        # Dump agents on every node through the same script: no restore point.
        proc = run(script_argv(coordinator, nodes, dump_database="postgres"), timeout=600,
                   check=False)
        assert proc.returncode == 0, proc.stderr
        dumps = result_rows(proc.stdout)
        assert all(r[0] == "DONE" and r[1] and r[3] is None for r in dumps.values()), dumps
        for i, (c, _) in enumerate(nodes, start=1):
            assert bk.backups(c)[dumps[i][1]].mode == "dump"
        # A restore point that a backup does not hold is refused.
        c, _ = nodes[0]
        state, message = c.sql_error(
            f"SELECT * FROM blockbackup.restore_backup({quote_literal(rows[1][1])}, "
            f"{quote_literal(td.subdir('nope'))}, recovery_target_name => 'other')")
        assert state == "22023" and "rp_nightly" in message, (state, message)


def test_one_node_stopped_midway_cancels_the_others():
    with TestDir() as td:
        nodes = three_nodes(td, scale=8)
        for c, _ in nodes[:2]:
            # Slow enough to still run when node 3 is stopped.
            bk.set_config(c, "blockbackup.compression", "gzip")
        coordinator = nodes[0][0]
        victim = nodes[2][0]
        with in_background(script_argv(coordinator, nodes, restore_point="rp_failed")) as proc:
            wait_until(lambda: victim.sql("SELECT count(*) FROM blockbackup.backup_progress()")
                       == [("1",)], timeout=120, interval=0.05, what="node 3's backup to run")
            victim.stop("immediate")
            out, err = proc.communicate(timeout=600)
        assert proc.returncode != 0, out
        assert "cluster backup failed" in err, err
        rows = result_rows(out)
        assert rows[3][0] == "ERROR", rows
        assert {rows[1][0], rows[2][0]} <= {"CANCELLED", "DONE"}, rows
        assert "CANCELLED" in (rows[1][0], rows[2][0]), \
            f"no other node was still running when node 3 stopped: {rows}"
        for i, (c, _) in enumerate(nodes[:2], start=1):
            assert c.sql("SELECT count(*) FROM blockbackup.restore_points()") == [("0",)]
            if rows[i][0] == "CANCELLED":
                newest = list(bk.backups(c).values())[-1]
                assert newest.status == "ERROR", newest
            assert c.sql("SELECT count(*) FROM blockbackup.backup_progress()") == [("0",)]
