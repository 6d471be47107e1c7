"""pg_blockbackup's summarizer held against PostgreSQL's own (17 and later):
the same server, the same WAL, two independent summarizers.

A cluster runs with `summarize_wal = on` and pg_blockbackup preloaded. The
range is bracketed by the redo points of two checkpoints, taken while
pgbench writes, so that records fall between each redo point and its
checkpoint record. Both summarizers end a summary at a redo point (the
built-in one always; ours on 17+, where the redo point is a record of its
own, XLOG_CHECKPOINT_REDO), so both answer exactly for that range.

What is compared, both ways:
- blocks: the built-in summaries that tile the range, merged in LSN order
  as an incremental pg_basebackup merges them (each summary's limit blocks
  first, then its blocks; a limit that is not lower than the fork's limit
  so far changes nothing), against our changed_blocks;
- limit blocks: the smallest limit per fork over those summaries (the
  is_limit_block rows, relfilenode 0 for a whole database) against the
  limit_block column of our changed_relations.

The FSM fork: both leave it out (neither marks its blocks nor its limits);
the test asserts that the built-in one reports no FSM row at all.

Two differences are by design and are checked, not ignored. Both are
blocks that neither summarizer's user needs, because a limit block (or a
database-level entry) already makes a backup take the whole file:
- A limit that is not lower than the fork's limit so far: the built-in
  table then changes nothing (BlockRefTableSetLimitBlock returns early),
  while our map forgets the fork's blocks at or past the limit every time.
  E.g. a table created in the range (limit 0), filled, then dropped by
  ALTER TABLE ... SET TABLESPACE (limit 0 again): the built-in summary
  keeps its blocks, ours has only the limit.
- A database created or dropped: our map forgets what it had recorded for
  that database's relations before, since the database-level entry (limit
  0 on relfilenode 0) covers them; the built-in summary keeps those
  entries next to its database-level one.
So the built-in one reports more blocks (and, for those databases, more
limits). The test models both rules over the same WAL from pg_waldump's
output and requires the built-in one's extra blocks and limits to be
exactly those that the two rules tell apart.
"""
import re

from harness import SkipTest, waldump
from harness import extension as ext
from harness.cluster import pg_bin, run, wait_until, TestDir
from harness.lsn import parse_lsn
from harness.relpath import FSM
from harness.workload import pgbench_background, pgbench_init, run_workload

TEST_TIMEOUT = 420


def server_major():
    out = run([pg_bin("pg_config"), "--version"]).stdout
    m = re.search(r"PostgreSQL (\d+)", out)
    return int(m.group(1)) if m else 0


def require_builtin_summarizer():
    major = server_major()
    if major < 17:
        raise SkipTest(f"PostgreSQL {major} has no WAL summarizer of its own (17+)")


def builtin_state(cluster):
    row = cluster.sql("SELECT summarized_tli, summarized_lsn, pending_lsn, summarizer_pid "
                      "FROM pg_get_wal_summarizer_state()")[0]
    return int(row[0]), row[1], row[2], int(row[3]) if row[3] else 0


def wait_builtin_summarized(cluster, lsn, timeout=120):
    wait_until(lambda: parse_lsn(builtin_state(cluster)[1]) >= parse_lsn(lsn), timeout=timeout,
               what=f"the built-in summarizer to reach {lsn}")


def redo_point_of_checkpoint(cluster):
    cluster.sql("CHECKPOINT")
    return cluster.sql_value("SELECT redo_lsn FROM pg_control_checkpoint()")


def builtin_summaries_tiling(cluster, start, end, tli=1):
    """The built-in summaries that tile [start, end) exactly, oldest first."""
    rows = cluster.sql("SELECT tli, start_lsn, end_lsn FROM pg_available_wal_summaries() "
                       f"WHERE tli = {int(tli)} ORDER BY start_lsn")
    inside = [(int(t), s, e) for t, s, e in rows
              if parse_lsn(s) >= parse_lsn(start) and parse_lsn(e) <= parse_lsn(end)]
    assert inside and inside[0][1] == start and inside[-1][2] == end, \
        f"built-in summaries do not start at {start} and end at {end}: {rows}"
    for (_, _, prev_end), (_, next_start, _) in zip(inside, inside[1:]):
        assert prev_end == next_start, f"built-in summaries do not tile: {inside}"
    return inside


class BuiltinMerge:
    """Built-in summaries merged in LSN order, as an incremental backup
    merges them: blocks per fork and the smallest limit block per fork."""

    def __init__(self):
        self.blocks = set()     # (spc, db, rel, fork, blk)
        self.limits = {}        # (spc, db, rel, fork) -> limit
        self.fsm_rows = 0

    def add_summary(self, rows):
        for key, limit in [(k, b) for k, b, is_limit in rows if is_limit]:
            if key in self.limits and self.limits[key] <= limit:
                continue
            self.limits[key] = limit
            self.blocks = {blk for blk in self.blocks if blk[:4] != key or blk[4] < limit}
        self.blocks |= {(*key, b) for key, b, is_limit in rows if not is_limit}


def builtin_contents(cluster, summaries):
    merged = BuiltinMerge()
    for tli, start, end in summaries:
        rows = cluster.sql("SELECT reltablespace, reldatabase, relfilenode, relforknumber, "
                           "relblocknumber, is_limit_block FROM pg_wal_summary_contents("
                           f"{tli}, '{start}', '{end}')", timeout=600)
        parsed = []
        for spc, db, rel, fork, blk, is_limit in rows:
            key = (int(spc), int(db), int(rel), int(fork))
            if key[3] == FSM:
                merged.fsm_rows += 1
            parsed.append((key, int(blk), is_limit == "t"))
        merged.add_summary(parsed)
    return merged


class BuiltinRulesModel(waldump.ChangeModel):
    """The pg_waldump model with the built-in summarizer's two rules: a
    limit no lower than the fork's limit so far changes nothing, and a
    database create or drop adds a database-level entry, forgetting
    nothing."""

    def set_limit(self, key, limit):
        if key in self.limits and self.limits[key] <= limit:
            return
        super().set_limit(key, limit)

    def drop_database(self, spc, db):
        self.limits[(spc, db, 0, 0)] = 0


def sample(items, n=8):
    items = sorted(items)
    return f"{items[:n]}{' ...' if len(items) > n else ''} ({len(items)})"


def compare(builtin, ours_blocks, ours_limits, voided_blocks, voided_limits, databases):
    problems = []
    only_ours = ours_blocks - builtin.blocks
    if only_ours:
        problems.append(f"blocks in changed_blocks but in no built-in summary: {sample(only_ours)}")
    only_builtin = builtin.blocks - ours_blocks
    if only_builtin != voided_blocks:
        problems.append("blocks only in the built-in summaries that no database event explains: "
                        f"{sample(only_builtin - voided_blocks)}; "
                        f"voided blocks we report anyway: {sample(voided_blocks - only_builtin)}")
    wrong_limits = {k: (builtin.limits.get(k), ours_limits.get(k))
                    for k in builtin.limits.keys() | ours_limits.keys()
                    if builtin.limits.get(k) != ours_limits.get(k) and k not in voided_limits}
    if wrong_limits:
        problems.append(f"limit blocks differ (built-in, ours): {sample(wrong_limits.items())}")
    for key in voided_limits:
        if key in ours_limits or key not in builtin.limits:
            problems.append(f"voided limit {key}: ours {ours_limits.get(key)}, "
                            f"built-in {builtin.limits.get(key)}")
    outside = {k[:2] for k in voided_limits} - databases
    if outside:
        problems.append(f"extra built-in limits outside a created or dropped database: "
                        f"{sorted(outside)}")
    if builtin.fsm_rows:
        problems.append(f"the built-in summaries have {builtin.fsm_rows} FSM rows")
    return problems


def test_same_blocks_as_builtin_summarizer():
    require_builtin_summarizer()
    with TestDir() as td:
        c = ext.extension_cluster(td, summarize_wal="on")
        wait_until(lambda: builtin_state(c)[3] > 0, timeout=30,
                   what="the built-in summarizer to start")
        pgbench_init(c)
        bench = pgbench_background(c, seconds=4)
        start = redo_point_of_checkpoint(c)
        bench.wait(timeout=120)
        run_workload(c, "b", init_pgbench=False)
        bench = pgbench_background(c, seconds=4)
        end = redo_point_of_checkpoint(c)
        bench.wait(timeout=120)

        ext.wait_for_summary(c, end)
        wait_builtin_summarized(c, end)
        ours = [(s.start_lsn, s.end_lsn) for s in ext.summaries(c)
                if s.tli == 1 and parse_lsn(start) <= parse_lsn(s.start_lsn) < parse_lsn(end)]
        assert ours and ours[0][0] == start and ours[-1][1] == end, \
            f"our summaries do not begin at the redo point {start} and end at {end}: {ours}"
        summaries = builtin_summaries_tiling(c, start, end)

        builtin = builtin_contents(c, summaries)
        ours_blocks = ext.changed_blocks(c, start, end)
        ours_limits = ext.changed_limits(c, start, end)
        our_rules = waldump.expected_changes(c.wal_dir, start, end)
        builtin_rules = waldump.expected_changes(c.wal_dir, start, end,
                                                 model_class=BuiltinRulesModel)
        voided_blocks = builtin_rules.blocks - our_rules.blocks
        voided_limits = builtin_rules.limits.keys() - our_rules.limits.keys()
        databases = {k[:2] for k in builtin_rules.limits if k[2] == 0}

        assert len(ours_blocks) > 1000 and databases, (len(ours_blocks), databases)
        problems = compare(builtin, ours_blocks, ours_limits, voided_blocks, voided_limits,
                           databases)
        assert not problems, f"{start}..{end}: " + "; ".join(problems)
        print(f"  {start}..{end}: {len(summaries)} built-in summaries, {len(ours)} of ours; "
              f"{len(ours_blocks)} blocks, {len(ours_limits)} limits agree; "
              f"{len(voided_blocks)} blocks and {len(voided_limits)} limits that only the "
              f"built-in one keeps, as its rules for limits and databases predict")
