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
import subprocess
import time

from harness import backup as bk
from harness import extension as ext
from harness.cluster import CommandError, TestDir, chown_postgres, quote_literal, run, wait_until
from harness.object_store import Rclone, SeaweedFS
from harness.workload import backup_churn, pgbench_init, run_workload, small_change

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


def configure_s3(td, cluster, store, **kwargs):
    """Writes the S3 settings to a file outside the data directory, has
    postgresql.conf include it, reloads and waits for it to apply."""
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
    cluster.sql("SELECT pg_reload_conf()")
    wait_until(lambda: cluster.sql_value("SHOW blockbackup.repository") == settings["blockbackup.repository"],
               timeout=30, what="the S3 settings to apply")
    return settings["blockbackup.repository"]


def s3_cluster(td, store, name="primary", **settings):
    c = ext.extension_cluster(td, name, functions=BACKUP_FUNCTIONS, **settings)
    return c, configure_s3(td, c, store)


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
