"""Dump agents on real clusters: launch_dump_agent runs the server's own
pg_dump as a supervised background worker; its dumps restore with
pg_restore (or psql) into databases whose pg_dump equals the source's; bad
requests start nothing; cancel (cancel_dump_agent, or cancelling the
launching query) and a server shutdown stop pg_dump and leave an ERROR
entry without output; two agents run at once; the catalog functions cover
dumps.

The oracles are PostgreSQL's own pg_dump/pg_restore/psql and /proc.
"""
import contextlib
import os
import subprocess
import time

from harness import backup as bk
from harness import extension as ext
from harness.cluster import TestDir, pg_bin, quote_literal, run, wait_until
from harness.workload import pgbench_argv

TEST_TIMEOUT = 900

AGENT_FUNCTIONS = ("launch_dump_agent", "dump_agents", "wait_dump_agent", "cancel_dump_agent")
# Messages hold pg_dump's lines; one psql row per agent needs them on one line.
RESULT_COLUMNS = ("agent_id, status, exit_code, output_path, bytes, duration_ms, "
                  "replace(message, E'\\n', ' | ') AS message, backup_id")
RESULT_KEYS = ("agent_id", "status", "exit_code", "output_path", "bytes", "duration_ms", "message",
               "backup_id")


def agent_cluster(td, name="primary"):
    c = ext.extension_cluster(td, name, functions=AGENT_FUNCTIONS)
    repo = bk.make_repository(td, f"repo_{name}")
    bk.configure_repository(c, repo)
    return c, repo


def make_database(cluster, db, scale=2):
    cluster.sql(f"CREATE DATABASE {db}")
    subprocess.run(pgbench_argv(cluster, "-i", "-q", "-s", str(scale), db=db), check=True,
                   capture_output=True, timeout=300)
    cluster.sql("""
        CREATE SCHEMA app;
        CREATE TABLE app.orders (id bigserial PRIMARY KEY, note text, payload jsonb,
                                 created timestamptz DEFAULT '2026-01-01');
        INSERT INTO app.orders (note, payload)
          SELECT 'order ' || g, jsonb_build_object('n', g) FROM generate_series(1, 5000) g;
        CREATE INDEX ON app.orders ((payload->>'n'));
        CREATE VIEW app.big_orders AS SELECT * FROM app.orders WHERE id > 4000;
        CREATE FUNCTION app.total() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM app.orders';
        COMMENT ON TABLE app.orders IS 'orders, with a comment';
        CREATE TABLE public.audit_log (at timestamptz, what text);
        INSERT INTO public.audit_log SELECT '2026-01-01', 'x' FROM generate_series(1, 100);
    """, db=db)


def launch(cluster, db, fmt=None, jobs=None, extra_args=None, wait=None, user="postgres"):
    args = [quote_literal(db)]
    args += [a for a in (
        f"format => {quote_literal(fmt)}" if fmt else None,
        f"jobs => {jobs}" if jobs else None,
        (f"extra_args => ARRAY[{', '.join(quote_literal(a) for a in extra_args)}]::text[]"
         if extra_args else None),
        f"wait => {'true' if wait else 'false'}" if wait is not None else None,
    ) if a]
    rows = cluster.sql(f"SELECT {RESULT_COLUMNS} FROM blockbackup.launch_dump_agent({', '.join(args)})",
                       user=user, timeout=600)
    assert len(rows) == 1, rows
    return result(rows[0])


def result(row):
    r = dict(zip(RESULT_KEYS, row))
    r["agent_id"] = int(r["agent_id"])
    r["bytes"] = int(r["bytes"])
    r["exit_code"] = None if r["exit_code"] is None else int(r["exit_code"])
    return r


def agents(cluster):
    rows = cluster.sql("SELECT agent_id, pid, dbname, status, exit_code, output_path, bytes, "
                       "replace(message, E'\\n', ' | '), backup_id FROM blockbackup.dump_agents() "
                       "ORDER BY agent_id")
    return {int(r[0]): dict(zip(("agent_id", "pid", "dbname", "status", "exit_code",
                                  "output_path", "bytes", "message", "backup_id"), r))
            for r in rows}


def wait_agent(cluster, agent_id, timeout_ms=None):
    arg = f", {timeout_ms}" if timeout_ms is not None else ""
    rows = cluster.sql(f"SELECT {RESULT_COLUMNS} FROM blockbackup.wait_dump_agent({agent_id}{arg})",
                       timeout=600)
    return result(rows[0])


def pg_dump_text(cluster, db):
    """The source of truth for equality: the plain pg_dump of a database."""
    return run([pg_bin("pg_dump"), "-h", cluster.sockdir, "-p", str(cluster.port), "-U", "postgres",
                "--no-sync", "-d", db], timeout=300).stdout


def restore_into(cluster, fmt, output_path, db):
    cluster.sql(f"CREATE DATABASE {db}")
    conn = ["-h", cluster.sockdir, "-p", str(cluster.port), "-U", "postgres", "-d", db]
    if fmt == "plain":
        run([pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", *conn, "-f", output_path],
            as_postgres=True, timeout=300)
    else:
        run([pg_bin("pg_restore"), "--exit-on-error", *conn, output_path], as_postgres=True,
            timeout=300)


def assert_no_partial_dump(repo, backup_id):
    """An ERROR dump keeps its record and log, not its partial output."""
    dump = os.path.join(repo, "backups", backup_id, "dump")
    assert not os.path.exists(dump) or os.listdir(dump) == [], os.listdir(dump)
    assert os.path.isfile(os.path.join(repo, "backups", backup_id, "pg_dump.log"))


def pg_dump_processes(application_substring=None):
    """PIDs of running pg_dump processes (from /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0].decode(errors="replace")) == "pg_dump":
            if application_substring is None or any(application_substring.encode() in a
                                                    for a in argv):
                pids.append(int(entry))
    return pids


def process_gone(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


@contextlib.contextmanager
def lock_held(cluster, db, table):
    """A psql session holding ACCESS EXCLUSIVE on table for the block (killed
    at its end): pg_dump blocks on it, which makes a dump as long as the test
    needs."""
    with cluster.sql_in_background(f"BEGIN; LOCK TABLE {table}; SELECT pg_sleep(600);",
                                   db=db) as proc:
        wait_until(lambda: cluster.sql_value(
            "SELECT count(*) FROM pg_locks WHERE mode = 'AccessExclusiveLock' AND relation = "
            f"{quote_literal(table)}::regclass", db=db) == "1", timeout=30, what="the lock")
        yield proc


def test_dumps_restore_equal_in_every_format():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        make_database(c, "appdb")
        source = pg_dump_text(c, "appdb")
        for fmt, jobs in (("custom", None), ("directory", 2), ("tar", None), ("plain", None)):
            r = launch(c, "appdb", fmt=fmt, jobs=jobs)
            assert r["status"] == "DONE" and r["exit_code"] == 0, r
            assert r["bytes"] > 0 and r["backup_id"], r
            assert r["output_path"].startswith(os.path.join(repo, "backups", r["backup_id"])), r
            assert os.path.exists(r["output_path"]), r
            restored = f"restored_{fmt}"
            restore_into(c, fmt, r["output_path"], restored)
            bk.assert_dumps_equal(source, pg_dump_text(c, restored), f"database restored from {fmt}")
            entry = bk.backups(c)[r["backup_id"]]
            assert entry.mode == "dump" and entry.status == "DONE", entry
            assert entry.bytes_written == r["bytes"], (entry, r)
            record = bk.read_json(repo, r["backup_id"], "backup.json")
            assert record["dump"]["database"] == "appdb" and record["dump"]["format"] == fmt, record
            assert record["dump"]["exit_code"] == 0, record
        # Extra arguments are passed on: a schema filter leaves the rest out.
        r = launch(c, "appdb", fmt="plain", extra_args=["--schema", "app", "--no-owner"])
        assert r["status"] == "DONE", r
        with open(r["output_path"]) as f:
            text = f.read()
        assert "CREATE TABLE app.orders" in text and "pgbench_accounts" not in text
        assert "OWNER TO" not in text
        # validate_backup rereads every file of a dump; a flipped byte is CORRUPT.
        checked = bk.validate(c)
        assert all(v.status == "OK" for v in checked.values()), checked
        custom = [e for e in bk.backups(c).values() if e.mode == "dump"][0]
        path = os.path.join(repo, "backups", custom.backup_id, "dump", "dump.custom")
        bk.flip_byte(path)
        v = bk.validate(c, custom.backup_id)[custom.backup_id]
        assert v.status == "CORRUPT" and "dump.custom" in v.errors[0], v
        # A dump is not restored by restore_backup.
        state, message = c.sql_error(f"SELECT * FROM blockbackup.restore_backup("
                                     f"{quote_literal(custom.backup_id)}, "
                                     f"{quote_literal(td.subdir('target'))})")
        assert state == "42809" and "pg_restore" in message, (state, message)


def test_bad_requests_start_nothing():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        c.sql("CREATE DATABASE appdb; CREATE DATABASE closed; "
              "ALTER DATABASE closed ALLOW_CONNECTIONS false")
        cases = [
            ("SELECT blockbackup.launch_dump_agent('nosuchdb')", "3D000", "does not exist"),
            ("SELECT blockbackup.launch_dump_agent('closed')", "55000", "connections"),
            ("SELECT blockbackup.launch_dump_agent('appdb', format => 'zip')", "22023", "format"),
            ("SELECT blockbackup.launch_dump_agent('appdb', jobs => 4)", "22023", "directory"),
            ("SELECT blockbackup.launch_dump_agent('appdb', 'directory', jobs => 0)", "22023",
             "jobs"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{--file=/tmp/x}')",
             "22023", "not allowed"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{--host,elsewhere}')",
             "22023", "not allowed"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{--role=postgres}')",
             "22023", "not allowed"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{otherdb}')", "22023",
             "not an option"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => "
             "ARRAY['--schema=public; touch /tmp/pgbb_pwned'])", "22023", "shell"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => "
             "ARRAY['--table=$(touch /tmp/pgbb_pwned)'])", "22023", "shell"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{-n}')", "22023",
             "needs a value"),
            ("SELECT blockbackup.launch_dump_agent('appdb', extra_args => '{--compress=11}')",
             "22023", "compression"),
            ("SELECT blockbackup.wait_dump_agent(424242)", "42704", "does not exist"),
            ("SELECT blockbackup.cancel_dump_agent(424242)", "42704", "does not exist"),
        ]
        for query, want_state, want_text in cases:
            state, message = c.sql_error(query)
            assert state == want_state and want_text in message, (query, state, message)
        assert agents(c) == {}, agents(c)
        assert bk.backups(c) == {}, bk.backups(c)
        assert not os.path.exists("/tmp/pgbb_pwned")
        assert c.sql_value("SELECT count(*) FROM pg_stat_activity "
                           "WHERE application_name LIKE 'pg_blockbackup dump agent%'") == "0"
        # Nothing is executable by PUBLIC.
        c.sql("CREATE ROLE nobody LOGIN")
        state, _ = c.sql_error("SELECT blockbackup.launch_dump_agent('appdb')", user="nobody")
        assert state == "42501", state


def test_cancel_stops_pg_dump_and_keeps_no_partial_dump():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        make_database(c, "appdb", scale=1)
        with lock_held(c, "appdb", "app.orders"):
            # 1. cancel_dump_agent on an agent launched without waiting.
            r = launch(c, "appdb", fmt="directory", jobs=2, wait=False)
            assert r["status"] == "RUNNING" and r["backup_id"], r
            wait_until(lambda: agents(c)[r["agent_id"]]["pid"] is not None, timeout=30,
                       what="pg_dump to start")
            pid = int(agents(c)[r["agent_id"]]["pid"])
            assert not process_gone(pid)
            assert bk.backups(c)[r["backup_id"]].status == "RUNNING"
            state, _ = c.sql_error(f"SELECT blockbackup.delete_backup({quote_literal(r['backup_id'])})")
            assert state == "55006", state
            assert c.sql_value(f"SELECT blockbackup.cancel_dump_agent({r['agent_id']})") == "t"
            assert process_gone(pid), "pg_dump survived the cancel"
            assert pg_dump_processes(f"dump agent {r['agent_id']}'") == []
            a = agents(c)[r["agent_id"]]
            assert a["status"] == "ERROR" and "cancelled" in a["message"], a
            entry = bk.backups(c)[r["backup_id"]]
            assert entry.status == "ERROR", entry
            assert_no_partial_dump(repo, r["backup_id"])
            assert c.sql_value(f"SELECT blockbackup.cancel_dump_agent({r['agent_id']})") == "f"

            # 2. Cancelling the query that launched and waits (Ctrl-C) cancels the agent.
            with c.sql_in_background("SELECT agent_id FROM "
                                     "blockbackup.launch_dump_agent('appdb')") as waiting:
                wait_until(lambda: any(a["status"] == "RUNNING" and a["pid"]
                                       for a in agents(c).values()), timeout=30,
                           what="the second agent to run")
                second = [a for a in agents(c).values() if a["status"] == "RUNNING"][0]
                c.sql("SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
                      "WHERE query LIKE '%launch_dump_agent(''appdb'')%' AND pid <> pg_backend_pid()")
                _, err = waiting.communicate(timeout=60)
            assert waiting.returncode != 0 and "57014" in err, err
            wait_until(lambda: agents(c)[int(second["agent_id"])]["status"] == "ERROR",
                       timeout=30, what="the agent of the cancelled launch to end")
            assert process_gone(int(second["pid"]))
            assert bk.backups(c)[second["backup_id"]].status == "ERROR"


def test_two_agents_at_once_and_retention():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        make_database(c, "one", scale=2)
        make_database(c, "two", scale=2)
        first = launch(c, "one", wait=False)
        second = launch(c, "two", fmt="directory", jobs=2, wait=False)
        assert first["backup_id"] != second["backup_id"]
        both = [wait_agent(c, first["agent_id"]), wait_agent(c, second["agent_id"])]
        assert all(r["status"] == "DONE" and r["exit_code"] == 0 for r in both), both
        listed = agents(c)
        assert {listed[r["agent_id"]]["dbname"] for r in both} == {"one", "two"}
        # A wait with a timeout on a finished agent returns at once; a third dump of "one".
        assert wait_agent(c, first["agent_id"], timeout_ms=0)["status"] == "DONE"
        third = launch(c, "one")
        # keep_full 1 keeps the newest dump of each database.
        expired = c.sql("SELECT backup_id, action FROM blockbackup.expire_backups(keep_full => 1)")
        assert [r[0] for r in expired] == [first["backup_id"]], expired
        remaining = bk.backups(c)
        assert set(remaining) == {second["backup_id"], third["backup_id"]}, remaining
        assert bk.delete(c, second["backup_id"]) == 1
        assert not os.path.exists(os.path.join(repo, "backups", second["backup_id"]))


def test_shutdown_and_killed_agent_end_in_error():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        make_database(c, "appdb", scale=1)
        with lock_held(c, "appdb", "app.orders") as locker:
            r = launch(c, "appdb", wait=False)
            wait_until(lambda: agents(c)[r["agent_id"]]["pid"] is not None, timeout=30,
                       what="pg_dump to start")
            pid = int(agents(c)[r["agent_id"]]["pid"])
            c.stop("fast")
            locker.wait(timeout=30)
        assert process_gone(pid), "pg_dump survived a server shutdown"
        c.start()
        entry = bk.backups(c)[r["backup_id"]]
        assert entry.status == "ERROR", entry
        record = bk.read_json(repo, r["backup_id"], "backup.json")
        # The agent sees SIGTERM, or pg_dump's backend is terminated first.
        error = record.get("error") or ""
        assert any(why in error for why in ("shut down", "interrupted",
                                            "administrator command")), record
        assert_no_partial_dump(repo, r["backup_id"])

        # kill -9 of the agent's worker: the server restarts, pg_dump dies with
        # the worker, and the entry it left RUNNING is marked ERROR.
        with lock_held(c, "appdb", "app.orders"):
            r = launch(c, "appdb", wait=False)
            wait_until(lambda: agents(c)[r["agent_id"]]["pid"] is not None, timeout=30,
                       what="pg_dump to start")
            worker = int(c.sql_value(f"SELECT worker_pid FROM blockbackup.dump_agents() "
                                     f"WHERE agent_id = {r['agent_id']}"))
            pid = int(agents(c)[r["agent_id"]]["pid"])
            c.kill9(worker)
            wait_until(lambda: process_gone(pid), timeout=30, what="pg_dump to die with its agent")
        c.wait_ready()
        wait_until(lambda: bk.backups(c)[r["backup_id"]].status == "ERROR", timeout=30,
                   what="the killed agent's dump to be marked ERROR")


def test_connection_rules_are_explained():
    with TestDir() as td:
        c, repo = agent_cluster(td)
        c.sql("CREATE DATABASE appdb; CREATE ROLE dumper SUPERUSER NOLOGIN")
        hba = os.path.join(c.datadir, "pg_hba.conf")
        with open(hba) as f:
            rules = f.read()
        with open(hba, "w") as f:
            f.write("local all dumper reject\n" + rules)
        c.reload()
        time.sleep(1)
        rows = c.sql("SET SESSION AUTHORIZATION dumper;\n"
                     f"SELECT {RESULT_COLUMNS} FROM blockbackup.launch_dump_agent('appdb');")
        r = result(rows[0])
        assert r["status"] == "ERROR" and r["exit_code"] == 1, r
        assert "pg_hba.conf" in r["message"] and "dumper" in r["message"], r["message"]
        assert "HINT" in r["message"] and "local" in r["message"], r["message"]
        assert bk.backups(c)[r["backup_id"]].status == "ERROR"
