#!/usr/bin/env python3
"""Benchmark of a repository in S3 on a real PostgreSQL 15 cluster, every
figure next to its peer measured in the same run, on the same data:

  * full backup (uncompressed, `--parallel` threads) to SeaweedFS on
    127.0.0.1 over TLS, against the same backup to a local directory
    (throughput ratio) and against Debian's pgBackRest 2.45 with
    repo1-type=s3 on the same store and endpoint (path style,
    process-max = `--parallel`, verify-tls=n; ours verifies the
    certificate against the store's CA);
  * an incremental after scattered single-row updates, to the bucket and to
    the directory: bytes written by each;
  * restore of the full from the bucket against the same restore from the
    directory (`--parallel` threads both);
  * beside each full, the CPU time the store's process used meanwhile
    (it shares the machine with PostgreSQL).

Usage: python3 pg_test/bench/bench_s3.py [--scale 100] [--parallel 4]
       [--updates 1639] [--dir /var/tmp] [--drop-caches]
"""
import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness import backup as bk  # noqa: E402
from harness import extension as ext  # noqa: E402
from harness.cluster import TestDir, chown_postgres, run  # noqa: E402
from harness.object_store import SeaweedFS  # noqa: E402
from harness.workload import pgbench_init  # noqa: E402
import test_s3  # noqa: E402

MB = 1024 * 1024


def timed(fn):
    began = time.monotonic()
    result = fn()
    return time.monotonic() - began, result


def cpu_seconds(pid):
    """utime + stime of process `pid` and of its threads, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def drop_caches(enabled):
    if enabled:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")


def pgbackrest_s3(td, cluster, store, processes):
    root = td.subdir("pgbackrest")
    for sub in ("log", "lock", "spool"):
        td.subdir(os.path.join("pgbackrest", sub))
    conf = os.path.join(root, "pgbackrest.conf")
    port = store.endpoint.rsplit(":", 1)[1]
    with open(conf, "w") as f:
        f.write("[global]\n"
                "repo1-type=s3\n"
                "repo1-path=/pgbackrest\n"
                f"repo1-s3-bucket={store.bucket}\n"
                "repo1-s3-endpoint=127.0.0.1\n"
                f"repo1-storage-port={port}\n"
                "repo1-s3-uri-style=path\n"
                "repo1-storage-verify-tls=n\n"
                "repo1-s3-region=us-east-1\n"
                f"repo1-s3-key={store.key}\n"
                f"repo1-s3-key-secret={store.secret}\n"
                "repo1-retention-full=100\n"
                f"log-path={root}/log\nlock-path={root}/lock\nspool-path={root}/spool\n"
                "log-level-file=off\nstart-fast=y\narchive-check=n\n"
                f"compress-type=none\nprocess-max={processes}\n"
                f"\n[bench]\npg1-path={cluster.datadir}\npg1-port={cluster.port}\n"
                f"pg1-socket-path={cluster.sockdir}\n")
    os.chmod(conf, 0o600)
    chown_postgres(conf)
    argv = ["pgbackrest", f"--config={conf}", "--stanza=bench", "--log-level-console=warn"]
    run(argv + ["stanza-create"], as_postgres=True, timeout=600)
    return argv


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--updates", type=int, default=1639)
    parser.add_argument("--dir", default="/var/tmp")
    parser.add_argument("--drop-caches", action="store_true")
    args = parser.parse_args()
    rows = []

    def add(what, command, seconds, written):
        rows.append({"what": what, "command": command, "seconds": round(seconds, 2), "written": written})
        print(f"# {what}: {seconds:.2f} s, {written / MB:.1f} MB", flush=True)

    with TestDir(prefix=os.path.join(args.dir, "pgbb-bench-s3-")) as td:
        with SeaweedFS(td.subdir("store"), test_s3.BUCKET, test_s3.KEY, test_s3.SECRET, tls=True) as store:
            c = ext.extension_cluster(td, "bench", functions=test_s3.BACKUP_FUNCTIONS,
                                      checkpoint_timeout="30min", max_wal_size="8GB")
            s3_repo = test_s3.configure_s3(td, c, store)
            local_repo = bk.make_repository(td, "repo_local")
            pgbench_init(c, scale=args.scale)
            c.sql("CHECKPOINT")
            db_bytes = int(c.sql_value("SELECT sum(pg_database_size(oid)) FROM pg_database"))
            print(f"# {db_bytes / MB:.0f} MB of databases", flush=True)
            query = bk.take_backup_query("full", None, "none", args.parallel)

            def full(repository, what):
                bk.set_config(c, "blockbackup.repository", repository)
                drop_caches(args.drop_caches)
                store_cpu = cpu_seconds(store.proc.pid)
                secs, b = timed(lambda: bk.take_backup(c, "full", compress="none", parallel=args.parallel,
                                                       timeout=7200))
                add(what, query, secs, b.bytes_written)
                store_cpu = cpu_seconds(store.proc.pid) - store_cpu
                print(f"# the store used {store_cpu:.1f} CPU seconds meanwhile, of the "
                      f"{secs * os.cpu_count():.1f} the machine had", flush=True)
                return b

            local_full = full(local_repo, "full to a local directory")
            s3_full = full(s3_repo, "full to SeaweedFS over TLS")
            pgbr = pgbackrest_s3(td, c, store, args.parallel)
            drop_caches(args.drop_caches)
            secs, _ = timed(lambda: run(pgbr + ["backup", "--type=full"], as_postgres=True, timeout=7200))
            info = json.loads(run(pgbr + ["info", "--output=json"], as_postgres=True).stdout)
            add("pgBackRest full to SeaweedFS over TLS", " ".join(pgbr + ["backup", "--type=full"]),
                secs, info[0]["backup"][-1]["info"]["repository"]["delta"])

            rng = random.Random(7)
            c.sql("".join(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = "
                          f"{rng.randint(1, args.scale * 100000)};\n" for _ in range(args.updates)),
                  timeout=3600)
            incremental_query = bk.take_backup_query("incremental", None, "none", args.parallel)
            for repository, what in ((local_repo, "incremental to a local directory"),
                                     (s3_repo, "incremental to SeaweedFS over TLS")):
                bk.set_config(c, "blockbackup.repository", repository)
                secs, b = timed(lambda: bk.take_backup(c, "incremental", compress="none",
                                                       parallel=args.parallel, timeout=7200))
                add(what, incremental_query, secs, b.bytes_written)

            for repository, backup, what in ((local_repo, local_full, "restore from a local directory"),
                                             (s3_repo, s3_full, "restore from SeaweedFS over TLS")):
                bk.set_config(c, "blockbackup.repository", repository)
                bk.set_config(c, "blockbackup.parallel", str(args.parallel))
                target = bk.new_target(td, what.split()[-1] + "_restore", c)
                drop_caches(args.drop_caches)
                secs, result = timed(lambda: bk.restore(c, backup.backup_id, target.datadir))
                add(what, f"SELECT * FROM blockbackup.restore_backup('{backup.backup_id}', '<dir>')",
                    secs, result.bytes)

    by = {r["what"]: r for r in rows}
    local, s3 = by["full to a local directory"], by["full to SeaweedFS over TLS"]
    peer = by["pgBackRest full to SeaweedFS over TLS"]
    print()
    print(f"full: {s3['seconds']} s to S3, {local['seconds']} s to a directory: "
          f"S3 throughput {local['seconds'] / s3['seconds']:.2f}x the directory's (goal >= 0.7x); "
          f"pgBackRest {peer['seconds']} s: ours {peer['seconds'] / s3['seconds']:.2f}x its throughput")
    li, si = by["incremental to a local directory"], by["incremental to SeaweedFS over TLS"]
    print(f"incremental: {si['written']} bytes to S3, {li['written']} to a directory")
    lr, sr = by["restore from a local directory"], by["restore from SeaweedFS over TLS"]
    print(f"restore: {sr['seconds']} s from S3, {lr['seconds']} s from a directory: "
          f"{lr['seconds'] / sr['seconds']:.2f}x its throughput (goal >= 0.7x)")
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
