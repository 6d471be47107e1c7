"""The Citus cluster the cluster-backup scenarios stand on, checked by
itself: the Citus that setup built for this PostgreSQL, a coordinator and
two workers registered over Unix sockets, the bank's shards on both
workers, transfers across workers committed by two-phase commit (seen in
Citus's own log of the remote commands), the bank's invariants holding
under pgbench, and pg_blockbackup working on every node beside Citus.
"""
import subprocess

from harness import backup as bk
from harness import citus
from harness.cluster import TestDir, run
from harness.workload import pgbench_argv

TEST_TIMEOUT = 600


def _cross_worker_pair(coordinator):
    """Two account ids whose shards are on different workers."""
    rows = coordinator.sql("""
        SELECT g, (SELECT nodeport FROM pg_dist_shard_placement
                   WHERE shardid = get_shard_id_for_distribution_column('accounts', g))
        FROM generate_series(1, 20) g""")
    first_id, first_port = rows[0]
    other = next(i for i, port in rows if port != first_port)
    return int(first_id), int(other)


def test_a_citus_cluster_of_three_nodes():
    with TestDir() as td:
        cc = citus.CitusCluster(td, workers=2)
        assert cc.citus_version().startswith(citus.CITUS_OF[citus.server_major()].rsplit(".", 1)[0]), \
            cc.citus_version()
        rows = cc.node_rows()
        assert [(g, name, port) for _, g, name, port in rows] == \
            [(0, cc.coordinator.sockdir, cc.coordinator.port)] + \
            [(i, w.sockdir, w.port) for i, w in enumerate(cc.workers, 1)], rows

        total = citus.create_bank(cc.coordinator, accounts=200)
        assert citus.workers_of_accounts(cc.coordinator) == {w.port for w in cc.workers}
        assert citus.bank_total(cc.coordinator) == total

        # A transfer across workers is prepared on both, then committed.
        a, b = _cross_worker_pair(cc.coordinator)
        proc = run(cc.coordinator.psql_argv() + ["-c", f"""
            SET citus.log_remote_commands = on;
            BEGIN;
            UPDATE accounts SET balance = balance - 5 WHERE id = {a};
            UPDATE accounts SET balance = balance + 5 WHERE id = {b};
            INSERT INTO transfers (src, dst, amount) VALUES ({a}, {b}, 5);
            COMMIT;"""])
        assert proc.stderr.count("PREPARE TRANSACTION") == 2, proc.stderr
        assert proc.stderr.count("COMMIT PREPARED") == 2, proc.stderr

        # pgbench clients transferring as fast as they can keep the invariants.
        script = citus.transfer_script(td)
        bench = subprocess.run(pgbench_argv(cc.coordinator, "-n", "-c", "4", "-T", "5",
                                            "-D", "accounts=200", "-f", script),
                               capture_output=True, text=True, timeout=120)
        assert bench.returncode == 0, bench.stderr
        transfers = int(cc.coordinator.sql_value("SELECT count(*) FROM transfers"))
        assert transfers > 20, bench.stdout
        assert citus.bank_total(cc.coordinator) == total
        assert citus.ledger_mismatches(cc.coordinator) == 0
        for node in cc.nodes:
            citus.wait_no_prepared(node)

        # pg_blockbackup beside Citus, on every node, into its own repository.
        for node in cc.nodes:
            full = bk.take_backup(node, "full")
            entries = bk.backups(node)
            assert entries[full.backup_id].status == "DONE", entries
