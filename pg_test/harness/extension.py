"""What pg_blockbackup answers, read through SQL into plain Python values."""
from collections import namedtuple

import os

from .cluster import pg_bin, quote_literal, run, wait_until
from .lsn import parse_lsn

Summary = namedtuple("Summary", "tli start_lsn end_lsn relation_forks blocks size_bytes")
Status = namedtuple("Status", "summarized_tli summarized_lsn pending_lsn summarizer_pid "
                              "slot_restart_lsn")


def require_installed():
    pkglibdir = run([pg_bin("pg_config"), "--pkglibdir"]).stdout.strip()
    library = os.path.join(pkglibdir, "pg_blockbackup.so")
    assert os.path.exists(library), \
        f"pg_blockbackup is not installed ({library} missing): run `cargo pgrx install` first"


def extension_cluster(td, name="primary", functions=(), **settings):
    """A started cluster that preloads pg_blockbackup, with the extension
    created and its summarizer running; `functions` must all exist."""
    require_installed()
    c = td.cluster(name, preload=True, settings=settings).initdb().start()
    create_extension(c)
    wait_until(lambda: summarizer_pid(c), timeout=30, what="the summarizer to start")
    if functions:
        names = ", ".join(f"({quote_literal(f)})" for f in functions)
        missing = c.sql_value(f"SELECT count(*) FROM (VALUES {names}) f(name) WHERE NOT EXISTS "
                              "(SELECT FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
                              "WHERE n.nspname = 'blockbackup' AND p.proname = f.name)")
        assert missing == "0", f"{missing} functions of the contract are not installed"
    return c


def create_extension(cluster, db="postgres"):
    cluster.sql("CREATE EXTENSION IF NOT EXISTS pg_blockbackup", db=db)


def summaries(cluster):
    rows = cluster.sql("SELECT tli, start_lsn, end_lsn, relation_forks, blocks, size_bytes "
                       "FROM blockbackup.summaries() ORDER BY tli, start_lsn")
    return [Summary(int(r[0]), r[1], r[2], int(r[3]), int(r[4]), int(r[5])) for r in rows]


def status(cluster):
    rows = cluster.sql("SELECT summarized_tli, summarized_lsn, pending_lsn, summarizer_pid, "
                       "slot_restart_lsn FROM blockbackup.summarizer_status()")
    return Status(*rows[0])


def summarizer_pid(cluster):
    pid = status(cluster).summarizer_pid
    return int(pid) if pid is not None else None


def wait_for_summary(cluster, lsn, timeout_ms=60000):
    return cluster.sql_value(f"SELECT blockbackup.wait_for_summary({quote_literal(lsn)}, "
                             f"{int(timeout_ms)})")


def changed_blocks(cluster, start, end):
    rows = cluster.sql("SELECT reltablespace, reldatabase, relfilenode, relforknumber, "
                       f"relblocknumber FROM blockbackup.changed_blocks({quote_literal(start)}, "
                       f"{quote_literal(end)})", timeout=600)
    return {tuple(int(x) for x in r) for r in rows}


def changed_limits(cluster, start, end):
    rows = cluster.sql("SELECT reltablespace, reldatabase, relfilenode, relforknumber, "
                       f"limit_block FROM blockbackup.changed_relations({quote_literal(start)}, "
                       f"{quote_literal(end)}) WHERE limit_block IS NOT NULL", timeout=600)
    return {tuple(int(x) for x in r[:4]): int(r[4]) for r in rows}


def boundaries_spanning(sums, first_lsn, last_lsn, tli=None):
    """The summary boundaries (start, end) that enclose [first_lsn, last_lsn]:
    the last summary start <= first_lsn and the first summary end >= last_lsn."""
    sums = [s for s in sums if tli is None or s.tli == tli]
    starts = [s.start_lsn for s in sums if parse_lsn(s.start_lsn) <= parse_lsn(first_lsn)]
    ends = [s.end_lsn for s in sums if parse_lsn(s.end_lsn) >= parse_lsn(last_lsn)]
    if not starts or not ends:
        raise AssertionError(f"no summaries span {first_lsn}..{last_lsn} (tli {tli}): "
                             f"{[(s.tli, s.start_lsn, s.end_lsn) for s in sums][:20]}")
    return max(starts, key=parse_lsn), min(ends, key=parse_lsn)


def tiling_gaps(sums):
    """Adjacent summaries on one timeline that do not tile: start != previous end."""
    gaps = []
    for prev, cur in zip(sums, sums[1:]):
        if prev.tli == cur.tli and cur.start_lsn != prev.end_lsn:
            gaps.append((prev, cur))
    return gaps
