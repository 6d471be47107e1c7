#!/usr/bin/env python3
"""The main job, end to end, on a throwaway cluster: start PostgreSQL 15
with pg_blockbackup preloaded, run pgbench, ask from SQL which blocks
changed (checked against pg_waldump and the page LSNs on disk), take a full
and an incremental backup by SQL, restore the incremental into a new
directory, start it, and check it with pg_verifybackup, pg_amcheck and a
pg_dumpall comparison with the source.

Run by scripts/demo.sh after setup; PGBB_KEEP=1 keeps the cluster's
directory for a look afterwards.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import backup as bk  # noqa: E402
from harness import extension  # noqa: E402
from harness.cluster import TestDir, wait_until  # noqa: E402
from harness.oracle_check import check_both_oracles  # noqa: E402
from harness.workload import pgbench_init, pgbench_run  # noqa: E402


def show(cluster, title, query):
    print(f"\n-- {title}\n{query}")
    rows = cluster.sql(query)
    for row in rows:
        print("  " + " | ".join("NULL" if v is None else v for v in row))
    return rows


def main():
    with TestDir(prefix="pgbb-demo-") as td:
        cluster = td.cluster("demo").initdb().start()
        print(f"throwaway cluster on port {cluster.port} in {cluster.datadir}")
        cluster.sql("CREATE EXTENSION pg_blockbackup")
        wait_until(lambda: extension.summarizer_pid(cluster), 30, what="the summarizer")
        pgbench_init(cluster, scale=10)
        cluster.sql("CHECKPOINT")
        start = extension.wait_for_summary(cluster, cluster.current_lsn())
        print(f"pgbench database ready; WAL summarized up to {start}")

        pgbench_run(cluster, seconds=10)
        cluster.sql("CHECKPOINT")
        end = extension.wait_for_summary(cluster, cluster.current_lsn())
        print(f"after 10 s of pgbench, WAL summarized up to {end}")

        show(cluster, "the summarizer", "SELECT * FROM blockbackup.summarizer_status()")
        show(cluster, "summaries of the pgbench run",
             f"SELECT * FROM blockbackup.summaries() WHERE end_lsn > '{start}'")
        show(cluster, "what pgbench changed, per relation",
             f"""SELECT c.relname, r.relforknumber, r.changed_blocks,
       pg_relation_size(c.oid) / 8192 AS relation_blocks, r.path
  FROM blockbackup.changed_relations('{start}', '{end}') r
  JOIN pg_class c ON c.relfilenode = r.relfilenode
 WHERE c.relname LIKE 'pgbench%' ORDER BY r.changed_blocks DESC""")

        check_both_oracles(cluster, start, end)
        blocks = cluster.sql_value(
            f"SELECT count(*) FROM blockbackup.changed_blocks('{start}', '{end}')")
        print(f"\nverified: the {blocks} changed blocks from {start} to {end} equal the "
              "block references pg_waldump prints for that WAL, and every page on disk "
              "newer than the start is among them")

        backup_and_restore(td, cluster)


def backup_and_restore(td, cluster):
    repo = bk.make_repository(td, "repository")
    bk.configure_repository(cluster, repo)
    full = bk.take_backup(cluster, "full")
    print(f"\nfull backup {full.backup_id}: {full.files} files, {full.bytes_written} bytes "
          f"in {full.duration_ms} ms")
    pgbench_run(cluster, seconds=5)
    incremental = bk.take_backup(cluster)
    print(f"incremental backup {incremental.backup_id} on {incremental.parent_backup_id}: "
          f"{incremental.bytes_written} bytes in {incremental.duration_ms} ms")
    show(cluster, "the catalog", "SELECT backup_id, mode, status, parent_backup_id, start_lsn, "
                                 "stop_lsn, bytes_written FROM blockbackup.backups()")
    show(cluster, "validation", "SELECT backup_id, status, files_checked, bytes_checked "
                                "FROM blockbackup.validate_backup()")
    source_dump = bk.dumpall(cluster)
    restored, result = bk.restore_and_start(td, cluster, incremental.backup_id, "restored")
    print(f"\nrestored {incremental.backup_id}: {result.files} files, {result.bytes} bytes; "
          f"pg_verifybackup accepted it and it started on port {restored.port}")
    bk.assert_dumps_equal(source_dump, bk.dumpall(restored))
    bk.amcheck(restored)
    print("verified: the restored cluster's pg_dumpall equals the source's, "
          "and pg_amcheck finds nothing")


if __name__ == "__main__":
    main()
