"""Self-tests of the harness and the two oracles on plain PostgreSQL 15
clusters (no extension needed): oracle 1's parser on real pg_waldump output
of the workload, oracle 2 on real files, agreement between the two, and
the cluster helpers (errors, processes, standby, promotion)."""
from harness import pagelsn, waldump
from harness.cluster import TestDir, wait_until
from harness.relpath import FSM, INIT, MAIN, VM
from harness.workload import run_workload

TEST_TIMEOUT = 300

REQUIRED_KINDS = [
    "blkref:main", "blkref:vm", "blkref:init", "smgr_create", "smgr_truncate",
    "drop:COMMIT", "drop:ABORT", "drop:COMMIT_PREPARED", "drop:ABORT_PREPARED",
    "drop:tablespace_path", "database:CREATE_WAL_LOG", "database:CREATE_FILE_COPY",
    "database:DROP", "database:DROP_multi_tablespace",
]


def plain_cluster(td, name="primary"):
    return td.cluster(name, preload=False).initdb().start()


def checkpointed_lsn(cluster):
    cluster.sql("CHECKPOINT")
    return cluster.current_lsn()


def workload_model(cluster, tag, timeline=1, **workload_args):
    start = checkpointed_lsn(cluster)
    run_workload(cluster, tag, **workload_args)
    end = checkpointed_lsn(cluster)
    return start, end, waldump.expected_changes(cluster.wal_dir, start, end, timeline)


def relfilenode(cluster, table):
    return int(cluster.sql_value(f"SELECT pg_relation_filenode('{table}')"))


def blocks_of(model, spc, db, rel):
    return {b for b in model.blocks if b[:3] == (spc, db, rel)}


# ---- parser on synthetic lines (formats copied from real pg_waldump 15 output)

LINES = """\
rmgr: Heap2       len (rec/tot):     64/  8256, tx:        728, lsn: 0/0177B570, prev 0/01779BE0, desc: VISIBLE cutoff xid 0 flags 0x03, blkref #0: rel 1663/5/16396 fork vm blk 0 FPW, blkref #1: rel 1663/5/16396 blk 0
rmgr: XLOG        len (rec/tot):     49/  8241, tx:        724, lsn: 0/0177B600, prev 0/0177B570, desc: FPI_FOR_HINT , blkref #0: rel 1663/5/2608 fork fsm blk 2 FPW
rmgr: Heap        len (rec/tot):     59/    59, tx:        730, lsn: 0/0177B700, prev 0/0177B600, desc: INSERT off 2 flags 0x00, blkref #0: rel 16434/5/16435 blk 7
rmgr: Heap        len (rec/tot):     59/    59, tx:        730, lsn: 0/0177B800, prev 0/0177B700, desc: INSERT off 2 flags 0x00, blkref #0: rel 1664/0/1262 blk 0
rmgr: Storage     len (rec/tot):     46/    46, tx:       4024, lsn: 0/0177B900, prev 0/0177B800, desc: TRUNCATE base/5/16396 to 40000 blocks flags 7
rmgr: Transaction len (rec/tot):   1485/  1485, tx:       4045, lsn: 0/0177BA00, prev 0/0177B900, desc: PREPARE gid g: 2026-11-21 12:06:15.706924 UTC; rels(commit): base/5/16435; rels(abort): base/5/16448; commit dropped stats: 2/5/16445
rmgr: Transaction len (rec/tot):    825/   825, tx:          0, lsn: 0/0177BB00, prev 0/0177BA00, desc: COMMIT_PREPARED 4045: 2026-11-21 12:06:15.707567 UTC; rels: pg_tblspc/16434/PG_15_202209061/5/16435 global/4177; dropped stats: 2/5/16445; inval msgs: catcache 80
rmgr: Database    len (rec/tot):     42/    42, tx:       4042, lsn: 0/0177BC00, prev 0/0177BB00, desc: DROP dir 1663/16439 16434/16439
rmgr: Storage     len (rec/tot):     42/    42, tx:       4034, lsn: 0/0177BD00, prev 0/0177BC00, desc: CREATE base/16500/16501_init
rmgr: Heap        len (rec/tot):     59/    59, tx:        731, lsn: 0/0177BE00, prev 0/0177BD00, desc: INSERT off 2 flags 0x00, blkref #0: rel 1663/5/99 blk 1
"""


def test_parser_on_known_lines():
    lines = LINES.splitlines(keepends=True)
    model, reached = waldump.model_from_lines(lines, 0x177B570, 0x177BE00)
    assert reached, "a record at the end LSN must stop the reading"
    assert model.records == 9, model.records
    assert model.blocks == {(1663, 5, 16396, VM, 0), (1663, 5, 16396, MAIN, 0),
                            (1664, 0, 1262, MAIN, 0)}, model.blocks
    assert model.limits == {
        (1663, 5, 16396, MAIN): 40000, (1663, 5, 16396, VM): 2,        # ceil(40000/32672)
        (16434, 5, 16435, MAIN): 0, (16434, 5, 16435, VM): 0, (16434, 5, 16435, INIT): 0,
        (1664, 0, 4177, MAIN): 0, (1664, 0, 4177, VM): 0, (1664, 0, 4177, INIT): 0,
        (1663, 16439, 0, 0): 0, (16434, 16439, 0, 0): 0,
        (1663, 16500, 16501, INIT): 0,
    }, model.limits
    late, _ = waldump.model_from_lines(lines, 0x177B700, 1 << 64)
    assert (16434, 5, 16435, MAIN, 7) not in late.blocks, "dropped later in range"
    assert (1663, 5, 99, MAIN, 1) in late.blocks


def test_limit_semantics():
    m = waldump.ChangeModel()
    key = (1663, 5, 1, MAIN)
    for blk in (1, 5, 9):
        m.add_block(key, blk)
    m.set_limit(key, 6)
    m.set_limit(key, 8)          # smallest length wins
    m.add_block(key, 20)         # written after the truncation: kept
    assert m.limits[key] == 6 and m.blocks == {(*key, 1), (*key, 5), (*key, 20)}, m.blocks
    m.add_block((1663, 5, 1, FSM), 3)
    assert (1663, 5, 1, FSM, 3) not in m.blocks


# ---- oracle 1 on real WAL ---------------------------------------------------

def test_waldump_model_of_workload():
    with TestDir() as td:
        c = plain_cluster(td)
        _, _, model = workload_model(c, "a")
        missing = [k for k in REQUIRED_KINDS if not model.kinds[k]]
        assert not missing, f"record kinds not seen: {missing}; seen {dict(model.kinds)}"
        assert any(b[0] not in (1663, 1664) for b in model.blocks), "no tablespace blocks"
        assert not any(b[3] == FSM for b in model.blocks), "FSM blocks must be excluded"
        assert any(b[3] == INIT for b in model.blocks), "no init fork blocks"
        live_dbs = {int(r[0]) for r in c.sql("SELECT oid FROM pg_database")}
        dropped = {(k[0], k[1]) for k in model.limits if k[2] == 0 and k[1] not in live_dbs}
        assert len(dropped) >= 3, f"expected >= 3 dropped (spc, db) entries: {dropped}"
        leftovers = [b for b in model.blocks if (b[0], b[1]) in dropped]
        assert not leftovers, f"blocks of dropped databases remain: {leftovers[:5]}"


def test_waldump_truncate_and_drop_limits():
    with TestDir() as td:
        c = plain_cluster(td)
        c.sql("""CREATE TABLE tail (id int, pad text) WITH (autovacuum_enabled = off);
                 INSERT INTO tail SELECT g, repeat('x', 200) FROM generate_series(1, 40000) g;
                 VACUUM tail;
                 CREATE TABLE doomed AS SELECT generate_series(1, 10000) AS id;
                 VACUUM doomed;""")
        rel, doomed = relfilenode(c, "tail"), relfilenode(c, "doomed")
        db = int(c.sql_value("SELECT oid FROM pg_database WHERE datname = 'postgres'"))
        start = checkpointed_lsn(c)
        c.sql("DELETE FROM tail WHERE id > 4000; VACUUM tail;")
        c.sql("BEGIN; DROP TABLE doomed; PREPARE TRANSACTION 'd'; COMMIT PREPARED 'd';")
        nblocks = int(c.sql_value("SELECT pg_relation_size('tail') / 8192"))
        end = checkpointed_lsn(c)
        model = waldump.expected_changes(c.wal_dir, start, end)
        assert model.limits.get((1663, db, rel, MAIN)) == nblocks, \
            (nblocks, {k: v for k, v in model.limits.items() if k[2] == rel})
        assert model.limits.get((1663, db, rel, VM)) == 1
        assert not [b for b in blocks_of(model, 1663, db, rel) if b[3] == MAIN and b[4] >= nblocks]
        assert blocks_of(model, 1663, db, rel), "the DELETE/VACUUM changed blocks below the limit"
        assert all(model.limits.get((1663, db, doomed, f)) == 0 for f in (MAIN, VM, INIT))
        assert not blocks_of(model, 1663, db, doomed)


# ---- oracle 2 on real files -------------------------------------------------

def test_pagelsn_agrees_with_waldump():
    with TestDir() as td:
        c = plain_cluster(td)
        start, end, model = workload_model(c, "a")
        c.stop()
        pages = list(pagelsn.pages_in_range(c.datadir, waldump.parse_lsn(start),
                                            waldump.parse_lsn(end)))
        assert len(pages) > 1000, f"only {len(pages)} pages changed on disk"
        assert any(k[0] not in (1663, 1664) for k, _, _ in pages), "no tablespace pages read"
        blocks, limits = model.blocks, model.limits
        missing = pagelsn.uncovered_pages(c.datadir, waldump.parse_lsn(start),
                                          waldump.parse_lsn(end), blocks, limits)
        assert not missing, f"{len(missing)} pages not in the WAL model: {missing[:5]}"
        # the oracle has teeth: forget some changed blocks, they are reported
        plain = [(k, b) for k, b, _ in pages if (*k, b) in blocks and k not in limits
                 and (k[0], k[1], 0, 0) not in limits][:50]
        reduced = blocks - {(*k, b) for k, b in plain}
        missing = pagelsn.uncovered_pages(c.datadir, waldump.parse_lsn(start),
                                          waldump.parse_lsn(end), reduced, limits)
        assert len(missing) == len(plain) > 0, (len(missing), len(plain))


def test_pagelsn_path_mapping():
    from harness.relpath import parse_relpath
    assert parse_relpath("base/5/16384") == ((1663, 5, 16384, MAIN), 0)
    assert parse_relpath("base/5/16384_vm.2") == ((1663, 5, 16384, VM), 2)
    assert parse_relpath("global/1262") == ((1664, 0, 1262, MAIN), 0)
    assert parse_relpath("pg_tblspc/16434/PG_15_202209061/5/16435_init") == \
        ((16434, 5, 16435, INIT), 0)
    for other in ("base/5/PG_VERSION", "global/pg_filenode.map", "base/5/pg_internal.init",
                  "base/5/t3_16384", "global/pg_control"):
        assert parse_relpath(other) is None, other


# ---- the cluster helpers ----------------------------------------------------

def test_cluster_errors_and_processes():
    with TestDir() as td:
        c = plain_cluster(td)
        assert c.sql_error("SELECT 1/0") == ("22012", "division by zero")
        c.sql("CREATE ROLE plain LOGIN; CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1';"
              " REVOKE ALL ON FUNCTION f() FROM PUBLIC;")
        state, msg = c.sql_error("SELECT f()", user="plain")
        assert state == "42501" and "permission denied" in msg, (state, msg)
        assert c.sql("SELECT NULL::int, 'a'") == [(None, "a")]
        pid = c.pid_of_backend_type("checkpointer")
        assert pid and c.pid_of_backend_type("no such type") is None
        walwriter = c.pid_of_backend_type("walwriter")
        c.kill9(walwriter)       # a crash: the postmaster reinitialises
        c.wait_ready()
        wait_until(lambda: c.pid_of_backend_type("walwriter") not in (None, walwriter),
                   timeout=30, what="a new walwriter")
        c.stop("immediate")
        c.start()
        assert c.sql_value("SELECT 1") == "1"


def test_standby_promotion_helpers():
    with TestDir() as td:
        primary = plain_cluster(td)
        standby = td.standby_of(primary).start()
        run_workload(primary, "p", pgbench_seconds=1, in_place_tablespace=True)
        target = primary.current_lsn()
        wait_until(lambda: waldump.parse_lsn(standby.current_lsn()) >= waldump.parse_lsn(target),
                   timeout=60, what="standby replay")
        standby.promote()
        assert standby.sql_value("SELECT pg_is_in_recovery()") == "f"
        assert standby.timeline() == 2, standby.timeline()
        start, end, model = workload_model(standby, "s", timeline=2, init_pgbench=False,
                                           pgbench_seconds=1, in_place_tablespace=True)
        assert model.records > 1000 and model.kinds["database:CREATE_WAL_LOG"], model.kinds
        start, end = waldump.parse_lsn(start), waldump.parse_lsn(end)
        pages = list(pagelsn.pages_in_range(standby.datadir, start, end))
        assert any(k[0] not in (1663, 1664) for k, _, _ in pages), "no in-place tablespace pages"
        missing = pagelsn.uncovered_pages(standby.datadir, start, end, model.blocks, model.limits)
        assert not missing, f"{len(missing)} pages not in the WAL model: {missing[:5]}"
