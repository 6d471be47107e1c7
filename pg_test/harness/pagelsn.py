"""Oracle 2: page LSNs on disk. Every page whose pd_lsn says it was last
changed by a record ending inside the range must be reported changed.

A page LSN is the *end* of the record that last changed the page, so for a
range [start, end) of record starts (both ends record boundaries) the pages
to check are those with start < pd_lsn <= end.
"""
import os
import struct

from .relpath import FSM, INIT, parse_relpath

BLCKSZ = 8192
RELSEG_BLOCKS = 131072  # 1 GB segments


def relation_files(datadir):
    """Yield (logical path, real path) of every file under base/, global/
    and each pg_tblspc/<oid>/PG_*/ of a data directory."""
    for top in ("base", "global"):
        yield from _walk(os.path.join(datadir, top), top)
    tblspc = os.path.join(datadir, "pg_tblspc")
    for spc in sorted(os.listdir(tblspc)):
        location = os.path.realpath(os.path.join(tblspc, spc))
        for version_dir in sorted(os.listdir(location)):
            if version_dir.startswith("PG_"):
                yield from _walk(os.path.join(location, version_dir),
                                 f"pg_tblspc/{spc}/{version_dir}")


def _walk(real_top, logical_top):
    for dirpath, _, filenames in os.walk(real_top):
        rel = os.path.relpath(dirpath, real_top)
        logical_dir = logical_top if rel == "." else f"{logical_top}/{rel}"
        for name in sorted(filenames):
            yield f"{logical_dir}/{name}", os.path.join(dirpath, name)


def page_lsns(real_path):
    """Yield (block number within the file, pd_lsn) of each full page; a file
    unlinked meanwhile (a dropped relation) has none."""
    try:
        f = open(real_path, "rb")
    except FileNotFoundError:
        return
    with f:
        blkno = 0
        while True:
            page = f.read(BLCKSZ)
            if len(page) < BLCKSZ:
                return
            xlogid, xrecoff = struct.unpack_from("<II", page, 0)
            yield blkno, (xlogid << 32) | xrecoff
            blkno += 1


def unlogged_relations(files):
    """(spc, db, rel) of relations with an init fork: their other forks are
    not WAL-logged (and not backed up), so their pages prove nothing."""
    return {key[:3] for key, _ in files if key[3] == INIT}


def relation_forks(datadir):
    """[(key, segno, logical path, real path)] of the WAL-logged relation files."""
    parsed = []
    for logical, real in relation_files(datadir):
        p = parse_relpath(logical)
        if p is not None:
            parsed.append((p[0], p[1], logical, real))
    unlogged = unlogged_relations((k, s) for k, s, _, _ in parsed)
    return [(k, s, lp, rp) for k, s, lp, rp in parsed
            if k[3] != FSM and (k[3] == INIT or k[:3] not in unlogged)]


def pages_in_range(datadir, start, end):
    """Yield (key, blk, lsn) of pages with start < pd_lsn <= end."""
    for key, segno, _, real in relation_forks(datadir):
        for blk, lsn in page_lsns(real):
            if start < lsn <= end:
                yield key, segno * RELSEG_BLOCKS + blk, lsn


def is_covered(key, blk, blocks, limits):
    spc, db = key[:2]
    if (*key, blk) in blocks:
        return True
    limit = limits.get(key)
    if limit is not None and limit <= blk:
        return True
    return limits.get((spc, db, 0, 0)) is not None


def uncovered_pages(datadir, start, end, blocks, limits):
    """Pages changed in the range that the answer does not cover: [(key, blk, lsn)]."""
    return [(key, blk, lsn) for key, blk, lsn in pages_in_range(datadir, start, end)
            if not is_covered(key, blk, blocks, limits)]
