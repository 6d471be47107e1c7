"""A repository in an S3 bucket, against real object stores started here on
127.0.0.1: SeaweedFS (`weed mini`) and rclone's S3 server, two
implementations, since S3-compatible stores differ.

What is checked, beside the functions' own answers:
  * the restored clusters against their source (pg_dumpall, pg_amcheck,
    pg_verifybackup on the restore and on the full backup as stored in the
    bucket, read back with the harness's own S3 client);
  * the bucket through that client: the objects a backup lists are there,
    no multipart upload is left unfinished, and the secret is in none;
  * faults: the store stopped in the middle of a backup, a wrong secret, a
    missing bucket, an unreachable endpoint;
  * the secret stays a superuser's: no other role can read it, and no log
    line, function output or stored object holds it.

The S3 settings, the secret among them, go in a file outside the data
directory that postgresql.conf includes: settings inside it (ALTER SYSTEM)
would be copied by every backup into the bucket.
"""
import os
import time

from harness import backup as bk
from harness import extension as ext
from harness.cluster import TestDir, chown_postgres, pg_bin, quote_literal, run, wait_until
from harness.object_store import Rclone, SeaweedFS
from harness.workload import backup_churn, pgbench_init, run_workload, small_change
from test_archive import switch_segment, values, wait_archived

TEST_TIMEOUT = 1500

KEY = "pgbb-access-key"
SECRET = "pgbb-Secret-7f3a9c1e5b"
BUCKET = "pgbb-bucket"
PREFIX = "clusters/primary"
BACKUP_FUNCTIONS = ("take_backup", "backups", "restore_backup", "validate_backup",
                    "expire_backups", "delete_backup")


def s3_environment(store):
    """What the offline command and a restored server's restore_command
    read the credentials and endpoint from."""
    return {"AWS_ACCESS_KEY_ID": store.key, "AWS_SECRET_ACCESS_KEY": store.secret}


class credentials_in_environment:
    """Puts the store's credentials in this process's environment, which
    pg_ctl and runuser hand on to the servers and commands started meanwhile."""

    def __init__(self, store):
        self.values = s3_environment(store)

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_settings(store, prefix=PREFIX, secret=None, bucket=None):
    settings = {
        "blockbackup.repository": f"s3://{bucket or store.bucket}/{prefix}",
        "blockbackup.s3_endpoint": store.endpoint,
        "blockbackup.s3_uri_style": "path",
        "blockbackup.s3_key": store.key,
        "blockbackup.s3_key_secret": secret or store.secret,
    }
    if store.ca_file:
        settings["blockbackup.s3_ca_file"] = store.ca_file
    return settings


def configure_s3(td, cluster, store, restart=False, **kwargs):
    """Writes the S3 settings to a file outside the data directory, has
    postgresql.conf include it, reloads (or restarts: PostgreSQL logs the
    new value of every setting a reload changes) and waits for it to apply."""
    path = os.path.join(td.subdir("s3conf"), f"{os.path.basename(cluster.datadir)}.conf")
    settings = s3_settings(store, **kwargs)
    with open(path, "w") as f:
        for name, value in settings.items():
            f.write(f"{name} = {quote_literal(value)}\n")
    os.chmod(path, 0o600)
    chown_postgres(path)
    conf = os.path.join(cluster.datadir, "postgresql.conf")
    with open(conf) as f:
        text = f.read()
    line = f"include {quote_literal(path)}\n"
    if line not in text:
        with open(conf, "a") as f:
            f.write(line)
    if restart:
        cluster.restart()
    else:
        cluster.sql("SELECT pg_reload_conf()")
    wait_until(lambda: cluster.sql_value("SHOW blockbackup.repository") == settings["blockbackup.repository"],
               timeout=30, what="the S3 settings to apply")
    return settings["blockbackup.repository"]


def s3_cluster(td, store, name="primary", restart=False, **settings):
    c = ext.extension_cluster(td, name, functions=BACKUP_FUNCTIONS, **settings)
    return c, configure_s3(td, c, store, restart=restart)


def cli_s3(store, repository, *args, check=True, timeout=bk.BACKUP_TIMEOUT):
    """The offline command on the bucket, credentials from the environment."""
    argv = [bk.require_cli(), "--repository", repository, "--s3-endpoint", store.endpoint,
            "--s3-uri-style", "path", *(["--s3-ca-file", store.ca_file] if store.ca_file else []), *args]
    with credentials_in_environment(store):
        return run(argv, as_postgres=True, timeout=timeout, check=check)


def stored_keys(store, backup_id, prefix=PREFIX):
    return store.list_keys(f"{prefix}/backups/{backup_id}/")


def download_pgdata(store, backup_id, directory, prefix=PREFIX):
    """The backup's pgdata/ as the bucket holds it, read with the harness's
    own client (not ours) into `directory`."""
    client = store.client()
    base = f"{prefix}/backups/{backup_id}/pgdata/"
    count = 0
    for key in store.list_keys(base):
        path = os.path.join(directory, key[len(base):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(client.get_object(key))
        count += 1
    for root, dirs, files in os.walk(directory):
        for name in dirs + files:
            chown_postgres(os.path.join(root, name))
    chown_postgres(directory)
    os.chmod(directory, 0o700)
    return count


def assert_no_unfinished_uploads(store):
    uploads = store.client().list_multipart_uploads()
    assert uploads == [], f"unfinished multipart uploads left in the bucket: {uploads}"


def backups_restore_equal(store_class):
    with TestDir() as td:
        with store_class(td.subdir("store"), BUCKET, KEY, SECRET) as store:
            c, repository = s3_cluster(td, store, autovacuum="off")
            pgbench_init(c, scale=5)
            run_workload(c, "a", init_pgbench=False)
            full = bk.take_backup(c, "full", parallel=4)
            assert full.mode == "full" and full.files > 0, full
            keys = stored_keys(store, full.backup_id)
            assert f"{PREFIX}/backups/{full.backup_id}/backup.json" in keys, keys[:5]
            assert any(k.endswith("/pgdata/global/pg_control") for k in keys), "no pg_control in the bucket"

            run_workload(c, "b", init_pgbench=False)
            backup_churn(c, "b", "a")
            inc1 = bk.take_backup(c)
            assert inc1.mode == "incremental" and inc1.parent_backup_id == full.backup_id, inc1
            small_change(c, "c")
            inc2 = bk.take_backup(c, "incremental")
            assert inc2.parent_backup_id == inc1.backup_id, inc2
            for b in (full, inc1, inc2):
                entry = bk.backups(c)[b.backup_id]
                assert entry.status in bk.USABLE and entry.bytes_written == b.bytes_written, entry
            rows = bk.validate(c)
            assert rows and all(r.status == "OK" for r in rows.values()), rows
            source_dump = bk.dumpall(c)

            restored, result = bk.restore_and_start(td, c, inc2.backup_id, "restored")
            assert result.files > 0, result
            bk.assert_dumps_equal(source_dump, bk.dumpall(restored))
            bk.amcheck(restored)
            restored.stop()

            # The full backup as the bucket holds it is itself a backup
            # pg_verifybackup accepts.
            copy = td.subdir("full_from_bucket")
            assert download_pgdata(store, full.backup_id, copy) > 100
            bk.verifybackup(copy)

            # The same restore with the offline command and the server down.
            c.stop()
            target = bk.new_target(td, "offline", c)
            cli_s3(store, repository, "restore", inc2.backup_id, target.datadir)
            bk.check_restored_layout(target.datadir)
            bk.verifybackup(target.datadir)
            bk.start_restored(target)
            bk.assert_dumps_equal(source_dump, bk.dumpall(target))
            listing = cli_s3(store, repository, "list").stdout
            assert inc2.backup_id in listing and full.backup_id in listing, listing
            assert_no_unfinished_uploads(store)


def test_backups_in_seaweedfs_restore_equal_to_their_source():
    backups_restore_equal(SeaweedFS)


def test_backups_in_rclone_restore_equal_to_their_source():
    backups_restore_equal(Rclone)


# ---- point-in-time restore from the bucket, over TLS ----------------------

def test_point_in_time_restore_from_the_bucket_over_tls():
    """The archive module writes every segment to the bucket (TLS, the
    store's certificate checked against its CA file); a restore to a time
    between two commits fetches the WAL from the bucket with the offline
    command, its credentials from the restored server's environment only."""
    with TestDir() as td:
        bk.require_cli()
        with SeaweedFS(td.subdir("store"), BUCKET, KEY, SECRET, tls=True) as store:
            assert store.endpoint.startswith("https://"), store.endpoint
            c = ext.extension_cluster(td, "primary", functions=BACKUP_FUNCTIONS, archive_mode="on",
                                      archive_library="pg_blockbackup", archive_timeout=0)
            configure_s3(td, c, store)
            bk.set_config(c, "blockbackup.compression", "zstd")
            full = bk.take_backup(c, "full")
            c.sql("CREATE TABLE pitr(v text); INSERT INTO pitr VALUES ('A')")
            time.sleep(1.2)
            moment = c.sql_value("SELECT clock_timestamp()")
            time.sleep(1.2)
            c.sql("INSERT INTO pitr VALUES ('B')")
            last = switch_segment(c)
            wait_archived(c, last)
            assert c.sql_value("SELECT failed_count FROM pg_stat_archiver") == "0", c.log_tail()
            archived = store.list_keys(f"{PREFIX}/archive/")
            assert any(f"/{last}-" in key for key in archived), (last, archived[-3:])
            newest = c.sql_value("SELECT max(end_wal) FROM blockbackup.archived_wal()")
            assert newest >= last, (newest, last)

            target = bk.new_target(td, "to_time", c)
            target.settings["archive_mode"] = "off"
            c.sql(f"SELECT files FROM blockbackup.restore_backup({quote_literal(full.backup_id)}, "
                  f"{quote_literal(target.datadir)}, recovery_target_time => {quote_literal(moment)})",
                  timeout=600)
            with open(os.path.join(target.datadir, "postgresql.auto.conf")) as f:
                auto = f.read()
            assert "archive-get" in auto and store.endpoint in auto, auto
            assert SECRET not in auto and KEY not in auto, "the restore_command carries a credential"
            with credentials_in_environment(store):
                bk.start_restored(target)
            assert values(target) == ["A"], values(target)
            target.stop()

            # The offline command reads the archive from the bucket too.
            fetched = os.path.join(td.subdir("fetched"), last)
            cli_s3(store, f"s3://{BUCKET}/{PREFIX}", "archive-get", last, fetched)
            with open(fetched, "rb") as f, open(os.path.join(c.datadir, "pg_wal", last), "rb") as g:
                assert f.read() == g.read(), "archive-get from the bucket differs from pg_wal"
            missing = cli_s3(store, f"s3://{BUCKET}/{PREFIX}", "archive-get", "0000000100000000000000FF",
                             fetched + ".none", check=False)
            assert missing.returncode == 1, (missing.returncode, missing.stderr)


# ---- faults ----------------------------------------------------------------

def test_the_store_stopped_during_a_backup():
    """The backup ERRORs (connection failure, after bounded retries), earlier
    backups stay DONE and restorable, the catalog cannot be read while the
    store is down (an error, not a hang), the next backup works once it is
    back, and no multipart upload of the failed one is left."""
    with TestDir() as td:
        with Rclone(td.subdir("store"), BUCKET, KEY, SECRET) as store:
            c, _ = s3_cluster(td, store)
            pgbench_init(c, scale=12)
            first = bk.take_backup(c, "full")
            source_dump = bk.dumpall(c)
            prefix = f"{PREFIX}/backups/"
            with bk.take_backup_background(c, "full", parallel=2) as running:
                wait_until(lambda: len([k for k in store.list_keys(prefix) if first.backup_id not in k]) > 20,
                           timeout=60, interval=0.02,
                           what=f"the second backup to upload (the first took {first.duration_ms} ms)")
                store.stop()
                out, err = running.communicate(timeout=180)
            assert running.returncode != 0, out
            assert "ERROR:  08006" in err, err
            started = time.monotonic()
            bk.expect_sqlstate(c, "SELECT * FROM blockbackup.backups()", "08006",
                               contains="object store", hint=True)
            assert time.monotonic() - started < 60, "an unreachable store must not hang a query"

            store.start()
            catalog = bk.backups(c)
            assert catalog[first.backup_id].status in bk.USABLE, catalog
            failed = [e for e in catalog.values() if e.backup_id != first.backup_id]
            assert [e.status for e in failed] == ["ERROR"], failed
            second = bk.take_backup(c, "full")
            assert bk.backups(c)[second.backup_id].status in bk.USABLE
            assert not stored_keys(store, failed[0].backup_id + "/pgdata"), "the failed backup's files stayed"
            assert_no_unfinished_uploads(store)
            restored, _ = bk.restore_and_start(td, c, first.backup_id, "restored")
            bk.assert_dumps_equal(source_dump, bk.dumpall(restored))


def test_bad_store_settings_are_told_apart():
    with TestDir() as td:
        with Rclone(td.subdir("store"), BUCKET, KEY, SECRET) as store:
            c, _ = s3_cluster(td, store)
            wrong = "not-the-Secret-4d2b"
            configure_s3(td, c, store, secret=wrong)
            err = bk.expect_sqlstate(c, bk.take_backup_query("full"), "28000",
                                     contains="SignatureDoesNotMatch", hint=True)
            assert wrong not in err.stderr and SECRET not in err.stderr, err.stderr
            configure_s3(td, c, store, bucket="no-such-bucket")
            bk.expect_sqlstate(c, bk.take_backup_query("full"), "58P01", contains="bucket", hint=True)
            configure_s3(td, c, store)
            bk.set_config(c, "blockbackup.repository", "s3://Not_A_Bucket/x")
            bk.expect_sqlstate(c, bk.take_backup_query("full"), "22023", contains="bucket", hint=True)
            bk.set_config(c, "blockbackup.repository", f"s3://{BUCKET}/{PREFIX}")
            full = bk.take_backup(c, "full")
            port = store.port
            store.stop()
            started = time.monotonic()
            err = bk.expect_sqlstate(c, "SELECT * FROM blockbackup.backups()", "08006",
                                     contains="127.0.0.1", hint=True)
            assert "gave up after" in err.stderr, err.stderr
            assert time.monotonic() - started < 60
            # The offline command says the same, and exits.
            out = cli_s3(store, f"s3://{BUCKET}/{PREFIX}", "list", check=False)
            assert out.returncode == 1 and "127.0.0.1" in out.stderr, out.stderr
            assert SECRET not in out.stderr
            store.start()
            assert store.port == port
            assert full.backup_id in bk.backups(c)
            refused = run([bk.require_cli(), "--repository", f"s3://{BUCKET}/{PREFIX}",
                           "--s3-key-secret", SECRET, "list"], as_postgres=True, check=False)
            assert refused.returncode != 0 and "AWS_SECRET_ACCESS_KEY" in refused.stderr, refused.stderr


# ---- the secret stays secret -----------------------------------------------

def test_the_secret_stays_a_superusers():
    with TestDir() as td:
        with SeaweedFS(td.subdir("store"), BUCKET, KEY, SECRET) as store:
            c, _ = s3_cluster(td, store, restart=True, log_min_messages="debug1", log_statement="all")
            pgbench_init(c, scale=1)
            c.sql("CREATE ROLE plain LOGIN")
            for query in ("SHOW blockbackup.s3_key_secret", "SELECT current_setting('blockbackup.s3_key_secret')",
                          "SHOW blockbackup.s3_key", "SHOW blockbackup.s3_token",
                          "SET blockbackup.s3_key_secret = 'x'"):
                bk.expect_sqlstate(c, query, "42501", user="plain")
            shown = run(c.psql_argv(user="plain") + ["-c", "SHOW ALL", "-c", "TABLE pg_settings"],
                        check=True).stdout
            assert SECRET not in shown and KEY not in shown, "a plain role reads a credential"
            bk.expect_sqlstate(c, bk.take_backup_query("full"), "42501", user="plain")
            bk.expect_sqlstate(c, "SELECT * FROM blockbackup.launch_dump_agent('postgres', 'directory')",
                               "0A000", contains="S3", hint=True)

            full = bk.take_backup(c, "full")
            small_change(c, "s")
            bk.take_backup(c)
            outputs = [c.sql(q) for q in ("SELECT * FROM blockbackup.backups()",
                                         "SELECT * FROM blockbackup.validate_backup()",
                                         "SELECT * FROM blockbackup.check()")]
            assert SECRET not in repr(outputs), "a function's output holds the secret"
            client = store.client()
            keys = store.list_keys("")
            assert len(keys) > 100, len(keys)
            for key in keys:
                assert SECRET.encode() not in client.get_object(key), f"{key} holds the secret"
            with open(c.logfile, errors="replace") as f:
                log = f.read()
            assert "take_backup" in log and SECRET not in log, "the server log holds the secret"

            # Credentials from the server's environment instead, where a
            # reload never shows them.
            conf = os.path.join(td.path, "s3conf", f"{os.path.basename(c.datadir)}.conf")
            with open(conf) as f:
                kept = [line for line in f if not line.startswith(("blockbackup.s3_key", ))]
            with open(conf, "w") as f:
                f.writelines(kept)
            c.stop()
            with credentials_in_environment(store):
                c.start()
            assert c.sql_value("SHOW blockbackup.s3_key_secret") == ""
            second = bk.take_backup(c, "full")
            assert bk.backups(c)[second.backup_id].status in bk.USABLE
            assert full.backup_id in bk.backups(c)


# ---- dump agents into the bucket -------------------------------------------

def dump_agent_row(c, query):
    return dict(zip(("agent_id", "status", "backup_id", "exit_code", "output_path"),
                    c.sql(f"SELECT agent_id, status, backup_id, exit_code, output_path FROM ({query}) a",
                          timeout=600)[0]))


def test_dumps_stream_into_the_bucket():
    """Custom and plain dumps land in the bucket (the harness's client
    reads them back): pg_restore of the custom one and psql of the plain one
    give databases whose pg_dump equals the source's; pg_dump's log is
    stored beside them; validation checks them; no upload is left."""
    with TestDir() as td:
        with Rclone(td.subdir("store"), BUCKET, KEY, SECRET) as store:
            c, _ = s3_cluster(td, store)
            c.sql("CREATE DATABASE appdb")
            c.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 200000) g; "
                  "CREATE INDEX ON t (h); CREATE VIEW v AS SELECT count(*) FROM t", db="appdb")
            source = run([pg_bin("pg_dump"), "-h", c.sockdir, "-p", str(c.port), "appdb"],
                         as_postgres=True).stdout
            client = store.client()
            for fmt, name in (("custom", "dump.custom"), ("plain", "dump.sql")):
                agent = dump_agent_row(c, f"SELECT * FROM blockbackup.launch_dump_agent('appdb', '{fmt}')")
                assert agent["status"] == "DONE" and agent["exit_code"] == "0", agent
                key = f"{PREFIX}/backups/{agent['backup_id']}/dump/{name}"
                assert agent["output_path"] == f"s3://{BUCKET}/{key}", agent
                assert f"{PREFIX}/backups/{agent['backup_id']}/pg_dump.log" in store.list_keys(
                    f"{PREFIX}/backups/{agent['backup_id']}/"), "no pg_dump.log stored"
                local = os.path.join(td.subdir(f"dl_{fmt}"), name)
                with open(local, "wb") as f:
                    f.write(client.get_object(key))
                chown_postgres(local)
                entry = bk.backups(c)[agent["backup_id"]]
                assert entry.status in bk.USABLE and entry.bytes_written == os.path.getsize(local), entry
                c.sql(f"CREATE DATABASE back_{fmt}")
                if fmt == "custom":
                    run([pg_bin("pg_restore"), "-h", c.sockdir, "-p", str(c.port), "-d", f"back_{fmt}", local],
                        as_postgres=True)
                else:
                    run([pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", c.sockdir, "-p",
                         str(c.port), "-d", f"back_{fmt}", "-f", local], as_postgres=True)
                restored = run([pg_bin("pg_dump"), "-h", c.sockdir, "-p", str(c.port), f"back_{fmt}"],
                               as_postgres=True).stdout
                assert bk.normalize_dump(restored) == bk.normalize_dump(source), \
                    f"the {fmt} dump from the bucket restores to another database"
            rows = bk.validate(c)
            assert all(r.status == "OK" for r in rows.values()), rows
            assert_no_unfinished_uploads(store)
