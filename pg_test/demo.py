#!/usr/bin/env python3
"""The main job, end to end, on a throwaway cluster: start PostgreSQL 15
with pg_blockbackup preloaded, run pgbench, and ask from SQL which blocks
changed, checking the answer against pg_waldump and the page LSNs on disk.

Run by scripts/demo.sh after setup; PGBB_KEEP=1 keeps the cluster's
directory for a look afterwards.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

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


if __name__ == "__main__":
    main()
