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


# ---- additions for the backup tests (new functions only) ------------------

def backup_churn(cluster, tag, old_tag, pgbench_seconds=2):
    """Changes, after a backup, to objects that `run_workload(cluster, old_tag)`
    made before it: a heap truncated by VACUUM below its backed-up length, a
    TRUNCATE (new relfilenode), a table moved back out of a tablespace and
    another moved into it, a database dropped and recreated under the same
    name (file_copy) and a new one (wal_log) with data in the tablespace,
    and pgbench. Runs once per tag; old_tag's objects must still exist."""
    ts = f"wl_ts_{old_tag}"
    cluster.sql(f"""
DELETE FROM wl_tail_{old_tag} WHERE id > 1000;
VACUUM wl_tail_{old_tag};
TRUNCATE wl_trunc_{old_tag};
INSERT INTO wl_trunc_{old_tag} SELECT generate_series(1, 300);
ALTER TABLE wl_t_{old_tag} SET TABLESPACE pg_default;
CREATE TABLE wl_moved_{tag} AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 5000) g;
ALTER TABLE wl_moved_{tag} SET TABLESPACE {ts};
UPDATE wl_t_{old_tag} SET v = 'churn_{tag}' WHERE id % 7 = 0;
""")
    cluster.sql(f"""
DROP DATABASE IF EXISTS wl_db_keep_{old_tag};
CREATE DATABASE wl_db_keep_{old_tag} STRATEGY file_copy;
CREATE DATABASE wl_db_re_{tag} STRATEGY wal_log;
""")
    cluster.sql(f"""
CREATE TABLE recreated (id int, tag text);
INSERT INTO recreated SELECT g, '{tag}' FROM generate_series(1, 2000) g;
""", db=f"wl_db_keep_{old_tag}")
    cluster.sql(f"""
CREATE TABLE in_ts (id int) TABLESPACE {ts};
INSERT INTO in_ts SELECT generate_series(1, 3000);
CREATE INDEX ON in_ts (id);
""", db=f"wl_db_re_{tag}")
    if pgbench_seconds:
        pgbench_run(cluster, seconds=pgbench_seconds)


def small_change(cluster, tag, rows=100):
    """A few scattered updates and one new small table."""
    cluster.sql(f"""
UPDATE pgbench_accounts SET abalance = abalance + 1
 WHERE aid IN (SELECT (random() * (SELECT count(*) FROM pgbench_branches) * 100000)::int + 1
                 FROM generate_series(1, {int(rows)}));
CREATE TABLE wl_small_{tag} AS SELECT generate_series(1, {int(rows)}) AS id;
""")


SEQ_WRITER_SCRIPT = "\\set n :n + 1\nINSERT INTO seq_rows VALUES (:n);\n"


def seq_writer_start(cluster, script_dir, seconds=600):
    """One pgbench client inserting n = max+1, max+2, ... into seq_rows, one
    committed transaction per row: every n up to a committed max(n) is
    committed. Returns the Popen; stop it with seq_writer_stop."""
    import os
    cluster.sql("CREATE TABLE IF NOT EXISTS seq_rows (n bigint PRIMARY KEY)")
    start = int(cluster.sql_value("SELECT coalesce(max(n), 0) FROM seq_rows"))
    path = os.path.join(script_dir, "seq_writer.sql")
    with open(path, "w") as f:
        f.write(SEQ_WRITER_SCRIPT)
    return subprocess.Popen(pgbench_argv(cluster, "-n", "-c", "1", "-T", str(int(seconds)),
                                         "-f", path, "-D", f"n={start}"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd="/")


def seq_writer_stop(proc, timeout=30):
    """Stop the writer (SIGTERM if still running); returns its stderr tail."""
    if proc.poll() is None:
        proc.terminate()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate(timeout=timeout)
    return (err or "")[-500:]
