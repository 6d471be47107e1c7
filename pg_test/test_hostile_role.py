"""A backup role that is not a superuser, used as a hostile user would use
it, and values that must survive the trip into files PostgreSQL parses.

The role gets what the README's security section grants: EXECUTE on the
extension's functions and on pg_backup_start, pg_backup_stop and
pg_create_restore_point. Every test here failed on the code before the
hardening issue (the SQLSTATEs, the refusals, the files left untouched).
"""
import os

from harness import backup as bk
from harness import extension as ext
from harness.cluster import TestDir, chown_postgres, make_postgres_dir, quote_literal, wait_until

TEST_TIMEOUT = 900

ROLE = "backup_role"


def grant_backup_role(cluster, role=ROLE, server_functions=True):
    cluster.sql(f"""
        CREATE ROLE {role} LOGIN;
        GRANT USAGE ON SCHEMA blockbackup TO {role};
        GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA blockbackup TO {role};
    """)
    if server_functions:
        cluster.sql(f"""
            GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_start(text, boolean) TO {role};
            GRANT EXECUTE ON FUNCTION pg_catalog.pg_backup_stop(boolean) TO {role};
            GRANT EXECUTE ON FUNCTION pg_catalog.pg_create_restore_point(text) TO {role};
        """)


def role_cluster(td, name="primary"):
    c = ext.extension_cluster(td, name)
    repo = bk.make_repository(td, f"repo_{name}")
    bk.configure_repository(c, repo)
    grant_backup_role(c)
    return c, repo


def entries_unchanged(cluster, repo, check):
    """check() must leave the repository and the catalog as they were."""
    stored = os.path.join(repo, "backups")
    before, catalog = bk.tree_snapshot(stored), bk.backups(cluster)
    result = check()
    diff = bk.snapshot_diff(before, bk.tree_snapshot(stored))
    assert diff is None, f"the repository changed: {diff}"
    assert bk.backups(cluster) == catalog
    return result


def test_restore_places_for_a_backup_role():
    """Item 1: a role without superuser rights restores only under
    blockbackup.restore_directory (not at all while it is unset), and no one
    restores into a directory the server reads configuration from."""
    with TestDir() as td:
        c, repo = role_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS id")
        b = bk.take_backup(c, "full", user=ROLE)

        # A configuration directory, empty, as the report found it.
        confd = make_postgres_dir(os.path.join(td.path, "conf.d"))
        extra_dir = make_postgres_dir(os.path.join(td.path, "extra"))
        extra = os.path.join(extra_dir, "extra.conf")
        with open(extra, "w") as f:
            f.write("work_mem = '5MB'\n")
        chown_postgres(extra)
        with open(os.path.join(c.datadir, "postgresql.conf"), "a") as f:
            f.write(f"\ninclude_dir = {quote_literal(confd)}\n"
                    f"include_if_exists = {quote_literal(extra)}\n")
        # From PostgreSQL 16 on, pg_hba.conf includes files too.
        hba_dir = None
        if int(c.sql_value("SHOW server_version_num")) >= 160000:
            hba_dir = make_postgres_dir(os.path.join(td.path, "hba.d"))
            with open(os.path.join(c.datadir, "pg_hba.conf"), "a") as f:
                f.write(f'\ninclude_dir "{hba_dir}"\n')   # hba quoting: double quotes
        c.reload()
        wait_until(lambda: c.sql_value("SHOW work_mem") == "5MB", timeout=30,
                   what="the included file to be read")

        restores = make_postgres_dir(os.path.join(td.path, "restores"))
        outside = os.path.join(td.path, "elsewhere")

        # Unset: no restore for the role, wherever.
        entries_unchanged(c, repo, lambda: bk.expect_sqlstate(
            c, bk.restore_query(b.backup_id, os.path.join(restores, "a")), "42501",
            user=ROLE, contains=r"restore_directory", hint=True))
        assert not os.listdir(restores), os.listdir(restores)

        # Only a superuser may set it; the role cannot.
        bk.expect_sqlstate(c, f"SET blockbackup.restore_directory = {quote_literal(outside)}",
                           "42501", user=ROLE)
        bk.set_config(c, "blockbackup.restore_directory", restores)

        bk.expect_sqlstate(c, bk.restore_query(b.backup_id, outside), "42501",
                           user=ROLE, contains=r"restore_directory")
        assert not os.path.exists(outside), f"a refused restore wrote {outside}"
        for inside_confined in (restores, os.path.join(restores, "..", "x")):
            bk.expect_sqlstate(c, bk.restore_query(b.backup_id, inside_confined),
                               ("42501", "22023"), user=ROLE)

        # Where the server reads configuration: refused for everyone, the
        # superuser too, and the role even inside its restore directory.
        bk.set_config(c, "blockbackup.restore_directory", td.path)
        for user in (ROLE, "postgres"):
            for target in (confd, os.path.join(confd, "sub"), extra_dir,
                           os.path.join(extra_dir, "x")) + ((hba_dir,) if hba_dir else ()):
                bk.expect_sqlstate(c, bk.restore_query(b.backup_id, target), "22023",
                                   user=user, contains=r"configuration")
            assert os.listdir(confd) == [], f"restore wrote into include_dir: {os.listdir(confd)}"
            assert os.listdir(extra_dir) == ["extra.conf"], os.listdir(extra_dir)
        # The server still reloads and restarts with its configuration.
        c.reload()
        c.restart()
        assert c.sql_value("SHOW work_mem") == "5MB"

        # Allowed: a new directory under the restore directory.
        bk.set_config(c, "blockbackup.restore_directory", restores)
        mine = os.path.join(restores, "mine")
        rows = c.sql(bk.restore_query(b.backup_id, mine), user=ROLE)
        assert len(rows) == 1 and int(rows[0][0]) > 0, rows
        assert os.path.isfile(os.path.join(mine, "PG_VERSION"))
        bk.verifybackup(mine)


def test_arguments_a_backup_role_can_pass():
    """Weaker spots: NULLs, arrays, settings, labels, missing grants, each a
    clear error with its SQLSTATE that changes nothing."""
    with TestDir() as td:
        c, repo = role_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
        b = bk.take_backup(c, "full")
        target = os.path.join(td.path, "never")

        def refused(query, state, user=ROLE, contains=None):
            return entries_unchanged(c, repo, lambda: bk.expect_sqlstate(
                c, query, state, user=user, contains=contains))

        # A NULL where a value is needed: 22004 naming the argument, everywhere.
        # (restore_backup's backup_id may be NULL: the newest backup that
        # reaches the recovery target.)
        for query, argument in (
                ("SELECT blockbackup.delete_backup(NULL)", "backup_id"),
                (f"SELECT blockbackup.delete_backup('{b.backup_id}', NULL)", "cascade"),
                ("SELECT * FROM blockbackup.take_backup(NULL)", "mode"),
                ("SELECT * FROM blockbackup.backup_start(NULL)", "label"),
                ("SELECT * FROM blockbackup.backup_start('x', NULL)", "fast"),
                (f"SELECT * FROM blockbackup.restore_backup('{b.backup_id}', NULL)", "target_dir"),
                ("SELECT * FROM blockbackup.create_restore_point(NULL)", "name"),
                ("SELECT * FROM blockbackup.launch_dump_agent(NULL)", "dbname"),
                ("SELECT * FROM blockbackup.launch_dump_agent('postgres', NULL)", "format"),
                ("SELECT * FROM blockbackup.launch_dump_agent('postgres', jobs => NULL)", "jobs"),
                ("SELECT * FROM blockbackup.launch_dump_agent('postgres', extra_args => NULL)",
                 "extra_args"),
                ("SELECT * FROM blockbackup.launch_dump_agent('postgres', wait => NULL)", "wait"),
                ("SELECT blockbackup.cancel_dump_agent(NULL)", "agent_id"),
                ("SELECT * FROM blockbackup.wait_dump_agent(NULL)", "agent_id"),
                ("SELECT blockbackup.wait_for_summary(NULL)", "lsn"),
                ("SELECT blockbackup.wait_for_summary(pg_current_wal_lsn(), NULL)", "timeout_ms"),
                ("SELECT count(*) FROM blockbackup.changed_blocks(NULL, '0/1')", "start_lsn"),
                ("SELECT count(*) FROM blockbackup.changed_relations('0/1', NULL)", "end_lsn"),
        ):
            err = refused(query, "22004", contains=argument)
            assert "argument" in err.message, (query, err.message)
        assert not os.path.exists(target)
        refused("SELECT * FROM blockbackup.launch_dump_agent('postgres', "
                "extra_args => ARRAY[NULL]::text[])", "22004", contains=r"extra_args\[1\]")
        refused("SELECT * FROM blockbackup.launch_dump_agent('postgres', "
                "extra_args => ARRAY[['--no-owner'], ['--no-acl']])", "22023",
                contains="dimension")

        # Settings are checked when they are set, with the choices.
        bk.expect_sqlstate(c, "SET blockbackup.compression = 'bogus'", "22023",
                           user=ROLE, contains=(r"none.*gzip",))

        # Labels: a line break, an overlong one.
        refused(bk.take_backup_query("full", label="x\nSTART TIMELINE: 9"), "22023",
                contains="label")
        err = refused(bk.take_backup_query("full", label="x" * 2000), "22023",
                      contains=r"too long")
        assert "DETAIL:  \n" not in err.stderr and "DETAIL:  $" not in err.stderr, err.stderr
        refused("SELECT * FROM blockbackup.backup_start(E'a\\nb')", "22023", contains="label")

        # Without the pg_backup_start grant: 42501 saying what to grant, no
        # Rust backtrace, no entry.
        grant_backup_role(c, "weak_role", server_functions=False)
        err = refused(bk.take_backup_query("full"), "42501", user="weak_role",
                      contains="pg_backup_start")
        assert "GRANT" in err.stderr, err.stderr
        # (LOCATION, which psql's verbose mode prints, names our file: fine.)
        shown = "\n".join(l for l in err.stderr.splitlines() if not l.startswith("LOCATION:"))
        for noise in ("backtrace", "panicked", "src/", ".rs:"):
            assert noise not in shown, f"{noise!r} in {err.stderr!r}"
        refused("SELECT * FROM blockbackup.create_restore_point('rp_weak')", "42501",
                user="weak_role", contains="pg_create_restore_point")
        # What the role may do works.
        assert bk.take_backup(c, "auto", user=ROLE).mode == "incremental"


def test_values_written_into_configuration_files_round_trip():
    """Item 3: a label that would add a line to backup_label is refused;
    restore point names with a backslash, or the two characters \\n, are
    quoted as ALTER SYSTEM quotes them and recovery reaches exactly them; a
    name with a real line break is refused."""
    with TestDir() as td:
        c, repo = role_cluster(td)
        c.sql("CREATE TABLE marks (name text)")
        b = bk.take_backup(c, "full", user=ROLE)
        names = ["nightly\\", "a\\nb", "it's"]
        for name in names:
            c.sql(f"INSERT INTO marks VALUES ({quote_literal(name)})")
            c.sql(f"SELECT * FROM blockbackup.create_restore_point({quote_literal(name)})",
                  user=ROLE)
        c.sql("INSERT INTO marks VALUES ('after')")
        bk.expect_sqlstate(c, "SELECT * FROM blockbackup.create_restore_point(E'two\\nlines')",
                           "22023", user=ROLE)
        for i, name in enumerate(names):
            target = bk.new_target(td, f"restored_{i}", c)
            c.sql(f"SELECT * FROM blockbackup.restore_backup({quote_literal(b.backup_id)}, "
                  f"{quote_literal(target.datadir)}, recovery_target_name => {quote_literal(name)})")
            with open(os.path.join(target.datadir, "postgresql.auto.conf")) as f:
                conf = f.read()
            escaped = name.replace("\\", "\\\\").replace("'", "''")
            assert f"recovery_target_name = '{escaped}'" in conf, conf
            bk.start_restored(target)
            got = [r[0] for r in target.sql("SELECT name FROM marks")]
            assert got == names[:i + 1], f"restore to {name!r} holds {got}"
            target.stop()


def test_settings_for_the_restored_copy():
    """restore_backup's settings (and the offline command's --setting) land
    after the restore's own in postgresql.auto.conf, quoted, and the copy
    runs with them; a backup role may not pass them, and a bad name, a name
    twice, a setting the restore writes itself or an unwritable value is
    refused before anything is written."""
    with TestDir() as td:
        c, repo = role_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
        b = bk.take_backup(c, "full", user=ROLE)
        restores = make_postgres_dir(os.path.join(td.path, "restores"))
        bk.set_config(c, "blockbackup.restore_directory", restores)

        def query(target, settings):
            return (f"SELECT files FROM blockbackup.restore_backup({quote_literal(b.backup_id)}, "
                    f"{quote_literal(target)}, settings => {quote_literal(settings)})")

        theirs = os.path.join(restores, "theirs")
        entries_unchanged(c, repo, lambda: bk.expect_sqlstate(
            c, query(theirs, '{"work_mem": "7MB"}'), "42501", user=ROLE,
            contains=r"superuser", hint=True))
        assert not os.path.exists(theirs)

        refused = os.path.join(restores, "refused")
        for bad, words in (('{"restore_command": "cp /x %p"}', r"itself"),
                           ('{"Recovery_Target_Name": "x"}', r"itself"),
                           ('{"allow_in_place_tablespaces": "off"}', r"itself"),
                           ('{"9lives": 1}', r"not a setting name"),
                           ('{"a.b.c": 1}', r"not a setting name"),
                           ('{"work_mem = 1; x": 1}', r"not a setting name"),
                           ('{"work_mem": "1MB", "WORK_MEM": "2MB"}', r"twice"),
                           ('{"work_mem": "1MB\\nport = 1"}', r"line break"),
                           ('{"work_mem": ["1MB"]}', r"string, a number or a boolean"),
                           ('["work_mem"]', r"JSON object")):
            entries_unchanged(c, repo, lambda: bk.expect_sqlstate(
                c, query(refused, bad), "22023", contains=words, hint=True))
            assert not os.path.exists(refused), bad

        target = bk.new_target(td, "copy", c)
        c.sql(query(target.datadir, '{"work_mem": "7MB", "pgbb.note": "it\'s a copy", '
                                    '"jit": false, "max_parallel_workers": 3}'))
        with open(os.path.join(target.datadir, "postgresql.auto.conf")) as f:
            conf = f.read()
        ours = conf.index("recovery_target_action")
        for line in ("work_mem = '7MB'", "pgbb.note = 'it''s a copy'", "jit = 'off'",
                     "max_parallel_workers = '3'"):
            assert conf.index(line) > ours, conf
        bk.verifybackup(target.datadir)
        bk.start_restored(target)
        assert target.sql("SHOW work_mem; SHOW pgbb.note; SHOW jit") == \
            [("7MB",), ("it's a copy",), ("off",)]
        assert target.sql_value("SELECT count(*) FROM t") == "100"
        target.stop()

        # The offline command: the same settings, the same refusals.
        bk.require_cli()
        c.stop()
        offline = bk.new_target(td, "offline", c)
        bk.cli(repo, "restore", b.backup_id, offline.datadir, "--setting", "work_mem=9MB")
        with open(os.path.join(offline.datadir, "postgresql.auto.conf")) as f:
            assert "work_mem = '9MB'" in f.read()
        unused = bk.new_target(td, "offline_bad", c)
        for bad in ("restore_command=cp /x %p", "no_value", "a.b.c=1"):
            proc = bk.cli(repo, "restore", b.backup_id, unused.datadir, "--setting", bad,
                          check=False)
            assert proc.returncode != 0 and "setting" in proc.stderr, (bad, proc.stderr)
            assert os.listdir(unused.datadir) == [], (bad, os.listdir(unused.datadir))
        bk.start_restored(offline)
        assert offline.sql_value("SHOW work_mem") == "9MB"


def test_recovery_targets_the_backup_cannot_reach():
    """Item 4: an LSN past the WAL the backup holds is refused before
    anything is written; its stop LSN and its restore point are reached."""
    with TestDir() as td:
        c, repo = role_cluster(td)
        c.sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS id")
        b = bk.take_backup(c, "full")
        unreachable = os.path.join(td.path, "unreachable")
        for lsn in ("FFFFFFFF/0", "FFFFFFFF/FFFFFFFF"):
            bk.expect_sqlstate(c, bk.restore_query(b.backup_id, unreachable, lsn),
                               "22023", contains=(r"reach",))
            assert not os.path.exists(unreachable), f"a refused restore wrote {unreachable}"
        c.sql("INSERT INTO t VALUES (101)")
        point = c.sql("SELECT restore_point_lsn FROM blockbackup.create_restore_point('rp')")[0][0]
        c.sql("INSERT INTO t VALUES (102)")
        for lsn, rows in ((b.stop_lsn, "100"), (point, "101")):
            target = bk.new_target(td, f"at_{lsn.replace('/', '_')}", c)
            bk.restore(c, b.backup_id, target.datadir, recovery_target_lsn=lsn)
            bk.start_restored(target)
            assert target.sql_value("SELECT count(*) FROM t") == rows, lsn
            target.stop()


def test_offline_command_applies_the_same_target_checks():
    """Item 5: the offline restore refuses a target in the repository, and
    the catalog stays readable."""
    with TestDir() as td:
        bk.require_cli()
        c, repo = role_cluster(td)
        b = bk.take_backup(c, "full")
        inside = os.path.join(repo, "backups", "x")
        proc = bk.cli(repo, "restore", b.backup_id, inside, check=False)
        assert proc.returncode != 0, "the offline restore wrote into the repository"
        assert "repository" in proc.stderr, proc.stderr
        assert not os.path.exists(inside)
        proc = bk.cli(repo, "restore", b.backup_id, "relative/dir", check=False)
        assert proc.returncode != 0 and "absolute" in proc.stderr, proc.stderr
        assert set(bk.backups(c)) == {b.backup_id}
        assert bk.take_backup(c).parent_backup_id == b.backup_id
