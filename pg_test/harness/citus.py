"""A real Citus cluster on this machine: a coordinator and workers, each a
PostgreSQL cluster of its own that preloads citus and pg_blockbackup, with a
repository of its own. The nodes talk over Unix sockets: the node name Citus
keeps in pg_dist_node is the node's socket directory.

Citus is built from its release sources by scripts/setup.sh, 13.2.2 into
PostgreSQL 15 and 14.0.1 into 18. Where it is not installed the tests that
need it skip, unless PGBB_REQUIRE_CITUS=1 (scripts/test.sh sets it when the
sources are there), which makes a missing Citus a failure.

The bank: a distributed `accounts` table whose shards are spread over the
workers, each account starting at the same balance, a reference table of
branches, and a distributed `transfers` ledger. A transfer moves money
between two accounts in one transaction; when the two live on different
workers Citus commits it by two-phase commit. The sum of the balances never
changes, so a restore that is not consistent across the nodes shows.
"""
import os

from . import SkipTest
from . import backup as bk
from . import extension as ext
from .cluster import pg_bin, quote_literal, run, wait_until

CITUS_OF = {15: "13.2.2", 18: "14.0.1"}
START_BALANCE = 1000

# pgbench script of one transfer; :accounts is given with -D.
TRANSFER_SCRIPT = """\
\\set a random(1, :accounts)
\\set b random(1, :accounts)
\\set amount random(1, 100)
BEGIN;
UPDATE accounts SET balance = balance - :amount WHERE id = :a;
UPDATE accounts SET balance = balance + :amount WHERE id = :b;
INSERT INTO transfers (src, dst, amount) VALUES (:a, :b, :amount);
COMMIT;
"""


def server_major():
    out = run([pg_bin("pg_config"), "--version"]).stdout.split()[1]
    return int(out.split(".")[0])


def require_citus():
    """SkipTest (or, with PGBB_REQUIRE_CITUS=1, a failure) without Citus."""
    pkglibdir = run([pg_bin("pg_config"), "--pkglibdir"]).stdout.strip()
    library = os.path.join(pkglibdir, "citus.so")
    if os.path.exists(library):
        return
    message = (f"Citus is not installed for this PostgreSQL ({library}); scripts/setup.sh "
               "builds it from ../shared/vendor into 15 and 18")
    if os.environ.get("PGBB_REQUIRE_CITUS") == "1" and server_major() in CITUS_OF:
        raise AssertionError(message)
    raise SkipTest(message)


class CitusCluster:
    """Coordinator + `workers` workers, started, registered with each other
    (citus_set_coordinator_host, citus_add_node), each with a repository."""

    def __init__(self, td, workers=2, **settings):
        require_citus()
        self.td = td
        self.settings = {
            "shared_preload_libraries": "citus,pg_blockbackup",
            "max_worker_processes": 16,
            "max_prepared_transactions": 100,
            "max_connections": 100,
            # Citus's statistics collector phones home; not on a test machine.
            "citus.enable_statistics_collection": "off",
            **settings,
        }
        self.coordinator = self._node("coordinator")
        self.workers = [self._node(f"worker{i}") for i in range(1, workers + 1)]
        self.repos = {}
        for c in self.nodes:
            repo = bk.make_repository(td, f"repo_{os.path.basename(c.root)}")
            bk.configure_repository(c, repo)
            self.repos[c] = repo
        self.coordinator.sql(f"SELECT citus_set_coordinator_host({quote_literal(self.coordinator.sockdir)}, "
                             f"{self.coordinator.port})")
        for w in self.workers:
            self.coordinator.sql(f"SELECT citus_add_node({quote_literal(w.sockdir)}, {w.port})")

    def _node(self, name):
        c = ext.extension_cluster(self.td, name, **self.settings)
        c.sql("CREATE EXTENSION citus")
        return c

    @property
    def nodes(self):
        return [self.coordinator, *self.workers]

    def node_rows(self):
        """(nodeid, groupid, nodename, nodeport) of every node, coordinator first."""
        rows = self.coordinator.sql("SELECT nodeid, groupid, nodename, nodeport FROM pg_dist_node "
                                    "ORDER BY groupid, nodeid")
        return [(int(a), int(b), c, int(d)) for a, b, c, d in rows]

    def citus_version(self):
        return self.coordinator.sql_value("SELECT extversion FROM pg_extension WHERE extname = 'citus'")


def create_bank(coordinator, accounts=200, shards=8):
    """The bank described above; returns the starting total."""
    coordinator.sql(f"""
        SET citus.shard_count = {int(shards)};
        CREATE TABLE branches (id int PRIMARY KEY, name text NOT NULL);
        SELECT create_reference_table('branches');
        INSERT INTO branches SELECT g, 'branch ' || g FROM generate_series(1, 4) g;
        CREATE TABLE accounts (id int PRIMARY KEY, branch int NOT NULL, balance bigint NOT NULL);
        SELECT create_distributed_table('accounts', 'id');
        INSERT INTO accounts SELECT g, 1 + g % 4, {START_BALANCE} FROM generate_series(1, {int(accounts)}) g;
        CREATE TABLE transfers (id bigserial, src int NOT NULL, dst int NOT NULL,
                                amount int NOT NULL, PRIMARY KEY (src, id));
        SELECT create_distributed_table('transfers', 'src', colocate_with => 'accounts');
    """)
    return accounts * START_BALANCE


def bank_total(coordinator):
    return int(coordinator.sql_value("SELECT sum(balance) FROM accounts"))


def ledger_mismatches(coordinator):
    """Accounts whose balance is not the start plus what the ledger says came
    in minus what went out: 0 when every transfer left both of its changes."""
    return int(coordinator.sql_value(f"""
        WITH moves AS (
            SELECT src AS id, -amount AS delta FROM transfers
            UNION ALL SELECT dst, amount FROM transfers)
        SELECT count(*) FROM accounts a
        LEFT JOIN (SELECT id, sum(delta) AS delta FROM moves GROUP BY id) m USING (id)
        WHERE a.balance <> {START_BALANCE} + coalesce(m.delta, 0)"""))


def workers_of_accounts(coordinator):
    """The distinct worker ports holding shards of accounts."""
    rows = coordinator.sql("SELECT DISTINCT nodeport FROM pg_dist_shard_placement p "
                           "JOIN pg_dist_shard s USING (shardid) "
                           "WHERE s.logicalrelid = 'accounts'::regclass")
    return {int(r[0]) for r in rows}


def transfer_script(td):
    path = os.path.join(td.subdir("bank"), "transfer.sql")
    with open(path, "w") as f:
        f.write(TRANSFER_SCRIPT)
    return path


def wait_no_prepared(cluster, timeout=60):
    wait_until(lambda: cluster.sql_value("SELECT count(*) FROM pg_prepared_xacts") == "0",
               timeout=timeout, what=f"no prepared transactions on {cluster.port}")
