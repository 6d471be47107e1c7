"""A mixed workload that exercises every WAL record kind the summarizer must
interpret: block references in main/vm/init forks, relation create,
truncation (VACUUM tail), drops at commit/abort/commit prepared/abort
prepared, database create (both strategies) and drop, tablespace moves.

Object names carry a tag so the workload can run several times on one
cluster. `run_workload` takes well under a minute at the default scale.
"""
import subprocess

from .cluster import CMD_TIMEOUT, pg_bin

PGBENCH_SCALE = 5


def pgbench_argv(cluster, *args, db="postgres"):
    return [pg_bin("pgbench"), "-h", cluster.sockdir, "-p", str(cluster.port),
            "-U", "postgres", *args, db]


def pgbench_init(cluster, scale=PGBENCH_SCALE):
    subprocess.run(pgbench_argv(cluster, "-i", "-q", "-s", str(scale)), check=True,
                   capture_output=True, timeout=CMD_TIMEOUT)


def pgbench_run(cluster, seconds=3, clients=2):
    subprocess.run(pgbench_argv(cluster, "-n", "-T", str(seconds), "-c", str(clients),
                                "-j", str(clients)),
                   check=True, capture_output=True, timeout=seconds + CMD_TIMEOUT)


def pgbench_background(cluster, seconds=5, clients=2):
    """Start pgbench without waiting; the caller waits (it may be cut by a crash)."""
    return subprocess.Popen(pgbench_argv(cluster, "-n", "-T", str(seconds), "-c",
                                         str(clients), "-j", str(clients)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dml_and_index(cluster, tag):
    cluster.sql(f"""
CREATE TABLE wl_t_{tag} (id int PRIMARY KEY, v text);
INSERT INTO wl_t_{tag} SELECT g, md5(g::text) FROM generate_series(1, 20000) g;
UPDATE wl_t_{tag} SET v = v || 'u' WHERE id % 3 = 0;
DELETE FROM wl_t_{tag} WHERE id % 5 = 0;
CREATE INDEX wl_t_{tag}_v ON wl_t_{tag} (v);
VACUUM wl_t_{tag};
""")


def vacuum_truncates_tail(cluster, tag):
    """VACUUM sets VM bits (vm fork block refs), then truncates heap and VM."""
    cluster.sql(f"""
CREATE TABLE wl_tail_{tag} (id int, pad text) WITH (autovacuum_enabled = off);
INSERT INTO wl_tail_{tag} SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g;
VACUUM wl_tail_{tag};
DELETE FROM wl_tail_{tag} WHERE id > 4000;
VACUUM wl_tail_{tag};
""")


def truncate_and_drop(cluster, tag):
    cluster.sql(f"""
CREATE TABLE wl_trunc_{tag} AS SELECT g AS id FROM generate_series(1, 5000) g;
TRUNCATE wl_trunc_{tag};
INSERT INTO wl_trunc_{tag} SELECT generate_series(1, 100);
CREATE TABLE wl_drop_{tag} AS SELECT g AS id FROM generate_series(1, 5000) g;
DROP TABLE wl_drop_{tag};
BEGIN;
CREATE TABLE wl_aborted_{tag} AS SELECT g AS id FROM generate_series(1, 1000) g;
ROLLBACK;
CREATE UNLOGGED TABLE wl_unlogged_{tag} (id int PRIMARY KEY);
INSERT INTO wl_unlogged_{tag} SELECT generate_series(1, 1000);
""")


def databases(cluster, tag, tablespace=None):
    """CREATE DATABASE with both strategies, write into one, drop both; the
    last drop spans two tablespaces when one is given."""
    cluster.sql(f"""
CREATE DATABASE wl_db_wal_{tag} STRATEGY wal_log;
CREATE DATABASE wl_db_copy_{tag} STRATEGY file_copy;
""")
    ts_clause = f" TABLESPACE {tablespace}" if tablespace else ""
    cluster.sql(f"""
CREATE TABLE wl_in_db (id int){ts_clause};
INSERT INTO wl_in_db SELECT generate_series(1, 1000);
""", db=f"wl_db_wal_{tag}")
    cluster.sql(f"""
DROP DATABASE wl_db_copy_{tag};
DROP DATABASE wl_db_wal_{tag};
CREATE DATABASE wl_db_keep_{tag} STRATEGY wal_log;
""")


def tablespace_move(cluster, tag, in_place=False):
    """CREATE TABLESPACE and move a table (and its index) there; returns its name.

    in_place: a directory inside pg_tblspc/ (allow_in_place_tablespaces), for
    a primary whose standby on this host replays the CREATE TABLESPACE."""
    if in_place:
        create = f"SET allow_in_place_tablespaces = on;\nCREATE TABLESPACE wl_ts_{tag} LOCATION ''"
    else:
        location = cluster.make_tablespace_dir(f"ts_{tag}")
        create = f"CREATE TABLESPACE wl_ts_{tag} LOCATION '{location}'"
    cluster.sql(f"""
{create};
ALTER TABLE wl_t_{tag} SET TABLESPACE wl_ts_{tag};
ALTER INDEX wl_t_{tag}_v SET TABLESPACE wl_ts_{tag};
UPDATE wl_t_{tag} SET v = 'moved' WHERE id < 100;
CREATE TABLE wl_ts_tmp_{tag} TABLESPACE wl_ts_{tag} AS SELECT generate_series(1, 500) AS id;
DROP TABLE wl_ts_tmp_{tag};
""")
    return f"wl_ts_{tag}"


def two_phase(cluster, tag):
    """COMMIT PREPARED that drops a table, ROLLBACK PREPARED of a created one."""
    cluster.sql(f"""
CREATE TABLE wl_2pc_old_{tag} AS SELECT g AS id FROM generate_series(1, 2000) g;
BEGIN;
CREATE TABLE wl_2pc_new_{tag} AS SELECT g AS id FROM generate_series(1, 2000) g;
DROP TABLE wl_2pc_old_{tag};
PREPARE TRANSACTION 'wl_commit_{tag}';
COMMIT PREPARED 'wl_commit_{tag}';
BEGIN;
CREATE TABLE wl_2pc_gone_{tag} AS SELECT g AS id FROM generate_series(1, 2000) g;
PREPARE TRANSACTION 'wl_abort_{tag}';
ROLLBACK PREPARED 'wl_abort_{tag}';
""")


STEPS = ["dml_and_index", "vacuum_truncates_tail", "truncate_and_drop",
         "tablespace_move", "databases", "two_phase"]


def run_workload(cluster, tag, pgbench_seconds=3, init_pgbench=True, in_place_tablespace=False):
    """The whole mixed workload (about 6-10 s on a small machine)."""
    if init_pgbench:
        pgbench_init(cluster)
    pgbench_run(cluster, seconds=pgbench_seconds)
    dml_and_index(cluster, tag)
    vacuum_truncates_tail(cluster, tag)
    truncate_and_drop(cluster, tag)
    ts = tablespace_move(cluster, tag, in_place_tablespace)
    databases(cluster, tag, tablespace=ts)
    two_phase(cluster, tag)
