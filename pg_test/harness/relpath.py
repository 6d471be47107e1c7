"""Relation file paths (as PostgreSQL 15 prints and stores them) to
(tablespace oid, database oid, relfilenode, fork number)."""
import re

MAIN, FSM, VM, INIT = 0, 1, 2, 3
FORK_BY_NAME = {"main": MAIN, "fsm": FSM, "vm": VM, "init": INIT}
DEFAULTTABLESPACE_OID = 1663
GLOBALTABLESPACE_OID = 1664

_RELPATH = re.compile(
    r"(?:global/(?P<g_rel>\d+)"
    r"|base/(?P<b_db>\d+)/(?P<b_rel>\d+)"
    r"|pg_tblspc/(?P<t_spc>\d+)/PG_[^/]+/(?P<t_db>\d+)/(?P<t_rel>\d+))"
    r"(?:_(?P<fork>fsm|vm|init))?"
    r"(?:\.(?P<seg>\d+))?$")


def parse_relpath(path):
    """'base/5/16384_vm' -> ((1663, 5, 16384, 2), segno); None if not a relation file."""
    m = _RELPATH.search(path)
    if not m:
        return None
    if m["g_rel"]:
        spc, db, rel = GLOBALTABLESPACE_OID, 0, int(m["g_rel"])
    elif m["b_rel"]:
        spc, db, rel = DEFAULTTABLESPACE_OID, int(m["b_db"]), int(m["b_rel"])
    else:
        spc, db, rel = int(m["t_spc"]), int(m["t_db"]), int(m["t_rel"])
    fork = FORK_BY_NAME[m["fork"] or "main"]
    return (spc, db, rel, fork), int(m["seg"] or 0)


def relpath_key(path):
    parsed = parse_relpath(path)
    if parsed is None:
        raise ValueError(f"not a relation path: {path!r}")
    return parsed[0]
