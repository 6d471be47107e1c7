"""Oracle 1: the expected changed-block model of a WAL range, built from
the text output of PostgreSQL's own pg_waldump (independent of our code).

pg_waldump 15 prints one line per record, block references included:

  rmgr: Heap2 len (rec/tot): 59/59, tx: 728, lsn: 0/0177EF58, prev 0/0177D5C8,
    desc: VISIBLE cutoff xid 0 flags 0x03, blkref #0: rel 1663/5/16396 fork vm blk 0,
    blkref #1: rel 1663/5/16396 blk 1
  (" fork F" only when not main; " FPW" after the block when an image is included)

Records interpreted besides block references (the desc texts seen):
  Storage     CREATE base/5/16435_vm | pg_tblspc/16434/PG_15_202209061/5/16435
  Storage     TRUNCATE base/5/16414 to 118 blocks flags 7
  Transaction COMMIT|ABORT <time>; rels: base/5/1 base/5/2; dropped stats: ...
  Transaction COMMIT_PREPARED|ABORT_PREPARED <xid>: <time>; rels: ...
  Database    CREATE_FILE_COPY copy dir 1663/1 to 1663/16440
  Database    CREATE_WAL_LOG create dir 1663/16439
  Database    DROP dir 1663/16439 16434/16439
"""
import math
import os
import re
import subprocess
import time
from collections import Counter, defaultdict

from .cluster import pg_bin
from .lsn import parse_lsn
from .relpath import FORK_BY_NAME, FSM, INIT, MAIN, VM, parse_relpath

HEAPBLOCKS_PER_VM_PAGE = (8192 - 24) * 4  # 32672
SMGR_TRUNCATE_HEAP, SMGR_TRUNCATE_VM = 0x1, 0x2
DROP_COMMANDS = {"COMMIT", "ABORT", "COMMIT_PREPARED", "ABORT_PREPARED"}

_RECORD = re.compile(r"^rmgr: (?P<rmgr>\S+)\s+len .*?lsn: (?P<lsn>[0-9A-F]+/[0-9A-F]+), "
                     r"prev [0-9A-F]+/[0-9A-F]+, desc: (?P<desc>.*)$")
_BLKREF = re.compile(r"blkref #\d+: rel (\d+)/(\d+)/(\d+)(?: fork (\w+))? blk (\d+)")
_PATH = re.compile(r"(?:global|base|pg_tblspc)/\S+")
_SPC_DB = re.compile(r"(\d+)/(\d+)")
_TRUNCATE = re.compile(r"^TRUNCATE (\S+) to (\d+) blocks flags (\d+)")
_DROPPED_RELS = re.compile(r"(?:^|;\s*)rels: ([^;]*)")
_LSN_IN_TEXT = re.compile(r"\b([0-9A-F]{1,8}/[0-9A-F]{1,8})\b")
_SEGMENT_NAME = re.compile(r"^[0-9A-F]{24}$")


class WaldumpError(RuntimeError):
    pass


class ChangeModel:
    """Changed blocks and limit blocks of a WAL range, FSM excluded."""

    def __init__(self):
        self.fork_blocks = defaultdict(set)  # (spc, db, rel, fork) -> {blk}
        self.limits = {}                     # (spc, db, rel, fork) -> limit block
        self.kinds = Counter()               # what was interpreted (self-test)
        self.records = 0

    @property
    def blocks(self):
        """The set of (spc, db, rel, fork, blk)."""
        return {(*key, blk) for key, blks in self.fork_blocks.items() for blk in blks}

    def add_block(self, key, blk):
        if key[3] != FSM:
            self.fork_blocks[key].add(blk)

    def set_limit(self, key, limit):
        """Lower the fork's limit to `limit`, dropping recorded blocks >= it."""
        if key[3] == FSM:
            return
        self.limits[key] = min(self.limits.get(key, limit), limit)
        if key in self.fork_blocks:
            kept = {b for b in self.fork_blocks[key] if b < limit}
            if kept:
                self.fork_blocks[key] = kept
            else:
                del self.fork_blocks[key]

    def drop_relation(self, rel_key):
        for fork in (MAIN, VM, INIT):
            self.set_limit((*rel_key[:3], fork), 0)

    def drop_database(self, spc, db):
        """A database created or dropped voids what its relations recorded
        before: the database-level entry (relation 0, limit 0) covers them."""
        for key in [k for k in self.fork_blocks if k[:2] == (spc, db)]:
            del self.fork_blocks[key]
        for key in [k for k in self.limits if k[:2] == (spc, db)]:
            del self.limits[key]
        self.limits[(spc, db, 0, 0)] = 0


def record_command(desc):
    return desc.split(" ", 1)[0].rstrip(",")


def apply_block_refs(model, desc):
    for spc, db, rel, fork, blk in _BLKREF.findall(desc):
        key = (int(spc), int(db), int(rel), FORK_BY_NAME[fork or "main"])
        model.add_block(key, int(blk))
        model.kinds[f"blkref:{fork or 'main'}"] += 1


def apply_storage(model, command, desc):
    if command == "CREATE":
        key, _ = parse_relpath(desc.split()[1])
        model.set_limit(key, 0)
        model.kinds["smgr_create"] += 1
    elif command == "TRUNCATE":
        path, nblocks, flags = _TRUNCATE.match(desc).groups()
        key, nblocks, flags = parse_relpath(path)[0], int(nblocks), int(flags)
        if flags & SMGR_TRUNCATE_HEAP:
            model.set_limit(key, nblocks)
        if flags & SMGR_TRUNCATE_VM:
            model.set_limit((*key[:3], VM), math.ceil(nblocks / HEAPBLOCKS_PER_VM_PAGE))
        model.kinds["smgr_truncate"] += 1


def apply_transaction(model, command, desc):
    if command not in DROP_COMMANDS:
        return
    m = _DROPPED_RELS.search(desc)
    if not m:
        return
    for path in _PATH.findall(m.group(1)):
        key, _ = parse_relpath(path)
        model.drop_relation(key)
        model.kinds[f"drop:{command}"] += 1
        if path.startswith("pg_tblspc/"):
            model.kinds["drop:tablespace_path"] += 1


def apply_database(model, command, desc):
    pairs = [(int(s), int(d)) for s, d in _SPC_DB.findall(desc)]
    if command == "CREATE_FILE_COPY":
        pairs = pairs[-1:]          # "copy dir SRC to DST"
    elif command not in ("CREATE_WAL_LOG", "DROP"):
        return
    for spc, db in pairs:
        model.drop_database(spc, db)
    model.kinds[f"database:{command}"] += 1
    if command == "DROP" and len(pairs) > 1:
        model.kinds["database:DROP_multi_tablespace"] += 1


APPLY_BY_RMGR = {"Storage": apply_storage, "Transaction": apply_transaction,
                 "Database": apply_database}


def apply_record(model, rmgr, desc):
    model.records += 1
    apply_block_refs(model, desc)
    apply = APPLY_BY_RMGR.get(rmgr)
    if apply:
        apply(model, record_command(desc), desc)


def parse_record(line):
    """(lsn, rmgr, desc) of a pg_waldump record line, or None."""
    m = _RECORD.match(line)
    return (parse_lsn(m["lsn"]), m["rmgr"], m["desc"]) if m else None


def model_from_lines(lines, start, end, model_class=None):
    """Model the records with start <= lsn < end; returns (model, reached_end)."""
    model = (model_class or ChangeModel)()
    for line in lines:
        record = parse_record(line)
        if record is None:
            continue
        lsn, rmgr, desc = record
        if lsn >= end:
            return model, True
        if lsn >= start:
            apply_record(model, rmgr, desc)
    return model, False


def wal_segments(wal_dir, timeline):
    names = sorted(n for n in os.listdir(wal_dir)
                   if _SEGMENT_NAME.match(n) and int(n[:8], 16) == timeline)
    if not names:
        raise WaldumpError(f"no WAL segment of timeline {timeline} in {wal_dir}")
    return names


def wal_segment_size(wal_dir, segment):
    """All segment files have the segment size (PG's default is 16 MB)."""
    return os.path.getsize(os.path.join(wal_dir, segment))


def segment_name(lsn, timeline, segsize):
    segno, per_xlogid = lsn // segsize, 0x100000000 // segsize
    return f"{timeline:08X}{segno // per_xlogid:08X}{segno % per_xlogid:08X}"


def waldump_argv(wal_dir, start, timeline):
    """Name the first and the last segment of the timeline: with only -s,
    pg_waldump takes the segment size from whichever file it sees first, and
    a preallocated segment has a zero header ("WAL file ... header specifies
    0 bytes"); with only STARTSEG it stops at that segment's end."""
    segments = wal_segments(wal_dir, timeline)
    first = segment_name(parse_lsn(start), timeline, wal_segment_size(wal_dir, segments[-1]))
    return [pg_bin("pg_waldump"), "-p", wal_dir, "-s", start, first, segments[-1]]


def expected_changes(wal_dir, start, end, timeline=1, timeout=300, model_class=None):
    """Run pg_waldump from `start` and model records with start LSN in [start, end).

    No -e is passed: pg_waldump -e hides a record that starts before the end
    but ends after it; we read on and stop at the first record >= end."""
    start_i, end_i = parse_lsn(start), parse_lsn(end)
    proc = subprocess.Popen(waldump_argv(wal_dir, start, timeline), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd="/")
    deadline = time.monotonic() + timeout
    try:
        model, reached = model_from_lines(_bounded(proc.stdout, deadline), start_i, end_i,
                                          model_class)
    finally:
        proc.kill()
        _, stderr = proc.communicate()
    if not reached:
        _check_ran_to_end(stderr, end_i)
    return model


def _bounded(stream, deadline):
    for line in stream:
        if time.monotonic() > deadline:
            raise WaldumpError("pg_waldump took too long")
        yield line


def _check_ran_to_end(stderr, end):
    """pg_waldump stopped before a record >= end: accept only an end of WAL
    at or past `end`, e.g. "error in WAL record at 0/75C0D48: invalid record
    length at 0/75C0DC0: wanted 24, got 0" or "invalid magic number 0000 in
    WAL segment ..., LSN 0/4000000, offset 0"."""
    positions = [parse_lsn(x) for x in _LSN_IN_TEXT.findall(stderr)]
    if not positions or max(positions) < end:
        raise WaldumpError(f"pg_waldump stopped before the end of the range: {stderr.strip()}")
