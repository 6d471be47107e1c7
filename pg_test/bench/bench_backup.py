#!/usr/bin/env python3
"""Benchmarks of pg_blockbackup's backups on a real PostgreSQL 15 cluster,
each figure next to its peer measured in the same run on the same cluster:

  * full: take_backup('full') uncompressed (one thread and `--parallel`)
    against pg_basebackup -Fp -X fetch; zstd (level 3) against
    pg_basebackup -Ft --compress=server-zstd:level=3 and pgBackRest
    compress-type=zst; lz4 and gzip against pgBackRest lz4 and gz; every
    compressed one with `--parallel` threads and pgBackRest with as many
    processes (process-max);
  * incremental after ~1% of pages changed by scattered single-row updates
    (1,639 `UPDATE pgbench_accounts ... WHERE aid = X` at scale 100): bytes
    written against what it must hold (changed_blocks() x 8 kB, the files
    that go whole, the WAL from its start to its stop LSN) and against
    pgBackRest incr (2.45 copies changed files whole), time against the full;
  * restore of a full + 3 incrementals against `cp -r` of the result
    followed by `sync` (the restore makes its files durable);
  * on PostgreSQL 17 and later (PG_BIN), with `summarize_wal = on`, each
    incremental also against `pg_basebackup --incremental` taken right
    after it on the same data, and the restore against `pg_combinebackup`
    of that chain (pgBackRest 2.45 does not run on them).

Usage: python3 pg_test/bench/bench_backup.py [--scale 100] [--updates 1639]
       [--dir /var/tmp] [--parallel 2] [--zstd-level 3] [--gzip-level 6]
       [--drop-caches] [--peers-only]
--peers-only runs only pg_basebackup and pgBackRest (no extension needed).
"""
import argparse
import json
import os
import random
import shlex
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import backup as bk  # noqa: E402
from harness import extension  # noqa: E402
from harness.cluster import PG_USER, TestDir, chown_postgres, pg_bin, run  # noqa: E402

MB = 1024 * 1024
GB = 1024 * MB
BLCKSZ = 8192


def timed(fn):
    began = time.monotonic()
    result = fn()
    return time.monotonic() - began, result


def tree_bytes(path):
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            full = os.path.join(dirpath, name)
            if not os.path.islink(full):
                total += os.path.getsize(full)
    return total


TMP_ROOT = None          # the run's temporary directory, shown as $TMP in the table


def shown(argv):
    """A command for the table, with the temporary directory shown as $TMP
    and PostgreSQL's programs by name."""
    text = shlex.join(argv).replace(pg_bin(""), "")
    return text.replace(TMP_ROOT, "$TMP") if TMP_ROOT else text


class Figures:
    def __init__(self):
        self.rows = {}

    def add(self, key, what, command, seconds, written, **extra):
        self.rows[key] = {"what": what, "command": command, "seconds": seconds,
                          "written": written, **extra}
        print(f"  {what}: {seconds:.2f} s, {written / MB:.1f} MB written", flush=True)


# ---- peers ------------------------------------------------------------------

def pg_basebackup(td, cluster, figures, key="basebackup", parent=None, keep=False):
    """A plain-format pg_basebackup (incremental on `parent`'s manifest when
    given); returns its directory when kept."""
    target = os.path.join(td.path, key)
    argv = [pg_bin("pg_basebackup"), "-D", target, "-Fp", "-X", "fetch", "-c", "fast",
            "-h", cluster.sockdir, "-p", str(cluster.port), "-U", PG_USER]
    if parent:
        argv.append(f"--incremental={os.path.join(parent, 'backup_manifest')}")
    secs, _ = timed(lambda: run(argv, as_postgres=True, timeout=7200))
    what = "pg_basebackup --incremental" if parent else "pg_basebackup full"
    figures.add(key, what, shown(argv) + " (as postgres)", secs, tree_bytes(target))
    if not keep:
        shutil.rmtree(target)
    return target


def pg_basebackup_zstd(td, cluster, figures, level):
    """pg_basebackup -Ft with zstd on the server (file by file in one
    stream, one thread of the server's)."""
    target = os.path.join(td.path, "basebackup_zstd")
    argv = [pg_bin("pg_basebackup"), "-D", target, "-Ft", "-X", "fetch", "-c", "fast",
            f"--compress=server-zstd:level={level}",
            "-h", cluster.sockdir, "-p", str(cluster.port), "-U", PG_USER]
    proc_secs, proc = timed(lambda: run(argv, as_postgres=True, timeout=7200, check=False))
    if proc.returncode != 0:
        print(f"# pg_basebackup with server-zstd failed, no row: {proc.stderr.strip()}")
        return
    figures.add("basebackup_zstd", f"pg_basebackup -Ft server-zstd:{level}",
                shown(argv) + " (as postgres)", proc_secs, tree_bytes(target))
    shutil.rmtree(target)


def server_major():
    out = run([pg_bin("pg_config"), "--version"]).stdout
    return int(out.split()[1].split(".")[0])


class PgBackRest:
    """One stanza per compression type, each with its own repository."""

    def __init__(self, td, cluster, compress, level, processes):
        self.compress = compress
        root = td.subdir(f"pgbackrest_{compress}")
        for sub in ("repo", "log", "lock"):
            td.subdir(os.path.join(f"pgbackrest_{compress}", sub))
        self.conf = os.path.join(root, "pgbackrest.conf")
        with open(self.conf, "w") as f:
            f.write("[global]\n"
                    f"repo1-path={root}/repo\n"
                    "repo1-retention-full=100\n"
                    f"log-path={root}/log\n"
                    f"lock-path={root}/lock\n"
                    "log-level-file=off\n"
                    "start-fast=y\n"
                    "archive-check=n\n"
                    f"compress-type={compress}\n"
                    f"compress-level={level}\n"
                    f"process-max={processes}\n"
                    "\n[bench]\n"
                    f"pg1-path={cluster.datadir}\n"
                    f"pg1-port={cluster.port}\n"
                    f"pg1-socket-path={cluster.sockdir}\n")
        chown_postgres(self.conf)

    def argv(self, *args):
        return ["pgbackrest", f"--config={self.conf}", "--stanza=bench",
                "--log-level-console=warn", *args]

    def run(self, *args, timeout=7200):
        return run(self.argv(*args), as_postgres=True, timeout=timeout)

    def stanza_create(self):
        self.run("stanza-create")

    def backup(self, kind):
        argv = self.argv("backup", f"--type={kind}")
        secs, _ = timed(lambda: run(argv, as_postgres=True, timeout=7200))
        info = json.loads(self.run("info", "--output=json").stdout)
        last = info[0]["backup"][-1]
        assert last["type"] == kind, last
        written = last["info"]["repository"]["delta"]
        return secs, written, shown(argv) + " (as postgres)"


# What pgBackRest is compared at: the codec name ours uses, and the level.
PGBACKREST_TYPES = {"gz": "gzip", "zst": "zstd", "lz4": "lz4", "none": "none"}


def has_pgbackrest(major):
    """Debian's pgBackRest 2.45 supports PostgreSQL up to 15 among ours."""
    return shutil.which("pgbackrest") is not None and major <= 15


# ---- ours ---------------------------------------------------------------------

def take(cluster, mode, compress, parallel):
    query = bk.take_backup_query(mode, None, compress, parallel)
    secs, b = timed(lambda: bk.take_backup(cluster, mode, compress=compress, parallel=parallel,
                                           timeout=7200))
    return secs, b, query


def scattered_updates(cluster, scale, count, seed):
    rng = random.Random(seed)
    aids = [rng.randint(1, scale * 100000) for _ in range(count)]
    script = "".join(f"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = {a};\n"
                     for a in aids)
    cluster.sql(script, timeout=3600)
    return len(set(aids))


def changed_block_count(cluster, start, end):
    extension.wait_for_summary(cluster, end, timeout_ms=600000)
    return int(cluster.sql_value(
        f"SELECT count(*) FROM blockbackup.changed_blocks('{start}', '{end}')"))


def lsn_value(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def stored_breakdown(repo, backup_id):
    """Bytes a backup stored, by kind: incremental files, whole files, WAL."""
    out = {"incremental": 0, "whole": 0, "wal": 0}
    for f in bk.read_json(repo, backup_id, "contents.json")["files"]:
        out[f["kind"].lower()] += f["stored_size"]
    return out


def drop_caches(enabled):
    if not enabled:
        return
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ---- main -----------------------------------------------------------------------

def check_space(path, scale, peers_only):
    need = int((10 if peers_only else 20) * GB * max(scale, 1) / 100) + 4 * GB
    free = bk.free_bytes(path)
    if free < need:
        sys.exit(f"{path}: {free / GB:.1f} GB free, this run needs about {need / GB:.1f} GB "
                 "(pass --dir)")
    return free


def level_of(codec, args):
    return {"gzip": args.gzip_level, "zstd": args.zstd_level, "lz4": 1, "none": 0}[codec]


def fulls_of_peers(td, cluster, figures, args, major, keep_plain):
    """pg_basebackup plain and with server zstd; pgBackRest full of every
    type (where it runs). Returns the plain backup's directory and the
    pgBackRest stanzas by type."""
    plain = pg_basebackup(td, cluster, figures, keep=keep_plain)
    pg_basebackup_zstd(td, cluster, figures, args.zstd_level)
    rests = {}
    if not has_pgbackrest(major):
        print(f"# pgbackrest not installed or not for PostgreSQL {major}: no pgBackRest rows")
        return plain, rests
    for kind, codec in PGBACKREST_TYPES.items():
        rests[kind] = PgBackRest(td, cluster, kind, level_of(codec, args), args.parallel)
        rests[kind].stanza_create()
        secs, written, cmd = rests[kind].backup("full")
        figures.add(f"pgbackrest_full_{codec}", f"pgBackRest full ({kind})", cmd, secs, written)
    return plain, rests


def fulls_of_ours(cluster, figures, args):
    """take_backup('full') of every codec with --parallel threads, and
    uncompressed with one thread; the uncompressed one with --parallel last,
    as the parent of the incrementals."""
    runs = [("none", 1), ("gzip", args.parallel), ("zstd", args.parallel),
            ("lz4", args.parallel), ("none", args.parallel)]
    for codec, threads in runs:
        cluster.sql(f"ALTER SYSTEM SET blockbackup.compress_level = {level_of(codec, args)}; "
                    "SELECT pg_reload_conf()")
        key = f"full_{codec}" if threads == args.parallel else f"full_{codec}_1"
        secs, b, query = take(cluster, "full", codec, threads)
        figures.add(key, f"take_backup full ({codec}, parallel {threads})", query, secs,
                    b.bytes_written, backup=b)
    cluster.sql("ALTER SYSTEM RESET blockbackup.compress_level; SELECT pg_reload_conf()")


def incrementals(td, cluster, repo, figures, args, rests, pg_chain, pg_incremental):
    """Three rounds of scattered updates, each followed by
    take_backup('incremental') and its peers; returns the newest backup."""
    parent = figures.rows["full_none"]["backup"]
    for i in range(1, 4):
        scattered_updates(cluster, args.scale, args.updates, args.seed + i - 1)
        if i == 1 and "none" in rests:
            secs, written, cmd = rests["none"].backup("incr")
            figures.add("pgbackrest_incr", "pgBackRest incr (none)", cmd, secs, written)
        secs, b, query = take(cluster, "incremental", "none", args.parallel)
        assert b.parent_backup_id == parent.backup_id, (b, parent)
        blocks = changed_block_count(cluster, parent.start_lsn, b.start_lsn)
        figures.add(f"incr_{i}", f"take_backup incremental #{i} (none, parallel {args.parallel})",
                    query, secs, b.bytes_written, backup=b, changed_blocks=blocks,
                    stored=stored_breakdown(repo, b.backup_id),
                    wal_used=lsn_value(b.stop_lsn) - lsn_value(b.start_lsn))
        parent = b
        if pg_incremental:
            pg_chain.append(pg_basebackup(td, cluster, figures, key=f"pg_incr_{i}",
                                          parent=pg_chain[-1], keep=True))
    return parent


def restores(td, cluster, figures, args, newest, pg_chain):
    """restore_backup of the newest (full + 3 incrementals) with --parallel
    threads; `cp -r` of the result then `sync`; pg_combinebackup."""
    target = bk.new_target(td, "restored", cluster)
    drop_caches(args.drop_caches)
    query = (f"SET blockbackup.parallel = {args.parallel}; "
             + bk.restore_query(newest.backup_id, target.datadir))
    secs, _ = timed(lambda: cluster.sql(query, timeout=7200))
    figures.add("restore", f"restore_backup of full + 3 incrementals (parallel {args.parallel})",
                query.replace(TMP_ROOT, "$TMP"), secs, tree_bytes(target.datadir))
    drop_caches(args.drop_caches)
    copy = os.path.join(td.path, "restored_copy")
    argv = ["cp", "-r", target.datadir, copy]
    secs, _ = timed(lambda: (run(argv, timeout=7200), run(["sync"], timeout=7200)))
    figures.add("cp", "cp -r of the restored directory, then sync", shown(argv) + " && sync",
                secs, tree_bytes(copy))
    if len(pg_chain) > 1:
        combined = os.path.join(td.path, "combined")
        drop_caches(args.drop_caches)
        argv = [pg_bin("pg_combinebackup"), *pg_chain, "-o", combined]
        secs, _ = timed(lambda: run(argv, as_postgres=True, timeout=7200))
        figures.add("combine", "pg_combinebackup of full + 3 incrementals",
                    shown(argv) + " (as postgres)", secs, tree_bytes(combined))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scale", type=int, default=100, help="pgbench scale (100 = 1.5 GB)")
    parser.add_argument("--updates", type=int, default=1639,
                        help="scattered single-row UPDATEs before each incremental")
    parser.add_argument("--dir", default="/var/tmp", help="where the temporary directory goes")
    parser.add_argument("--parallel", type=int, default=2,
                        help="take_backup's and restore's threads, pgBackRest's process-max")
    parser.add_argument("--zstd-level", type=int, default=3)
    parser.add_argument("--gzip-level", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--drop-caches", action="store_true",
                        help="sync and drop the page cache before each restore/copy figure")
    parser.add_argument("--peers-only", action="store_true",
                        help="only pg_basebackup and pgBackRest (no extension needed)")
    args = parser.parse_args()

    free = check_space(args.dir, args.scale, args.peers_only)
    tempfile.tempdir = args.dir
    settings = {"shared_buffers": "1GB", "max_wal_size": "16GB", "wal_keep_size": "16GB",
                "checkpoint_timeout": "30min", "autovacuum": "off"}
    major = server_major()
    pg_incremental = major >= 17 and not args.peers_only
    if pg_incremental:
        settings["summarize_wal"] = "on"
    figures = Figures()
    with TestDir(prefix="pgbb-bench-") as td:
        global TMP_ROOT
        TMP_ROOT = td.path
        print(f"# in {td.path} ({free / GB:.0f} GB free)", flush=True)
        cluster = td.cluster(preload=not args.peers_only, settings=settings).initdb().start()
        repo = None
        if not args.peers_only:
            extension.create_extension(cluster)
            repo = bk.make_repository(td)
            bk.configure_repository(cluster, repo)
        print(f"# pgbench -i -s {args.scale}", flush=True)
        run([pg_bin("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", cluster.sockdir,
             "-p", str(cluster.port), "-U", PG_USER, "postgres"], timeout=7200)
        cluster.sql("CHECKPOINT")
        db_bytes = int(cluster.sql_value("SELECT sum(pg_database_size(oid)) FROM pg_database"))

        plain, rests = fulls_of_peers(td, cluster, figures, args, major, pg_incremental)
        pg_chain = [plain]
        if not args.peers_only:
            fulls_of_ours(cluster, figures, args)
            newest = incrementals(td, cluster, repo, figures, args, rests, pg_chain,
                                  pg_incremental)
            restores(td, cluster, figures, args, newest, pg_chain)
        cluster.stop()

    report(figures.rows, args, db_bytes)


def ratio(a, b):
    return f"{a / b:.2f}x" if b else "n/a"


def report(rows, args, db_bytes):
    print()
    print(f"Cluster: pgbench scale {args.scale}, {db_bytes / MB:.0f} MB in databases; "
          f"{args.updates} scattered updates before each incremental; parallel "
          f"{args.parallel} (pgBackRest process-max {args.parallel}); zstd level "
          f"{args.zstd_level}, gzip level {args.gzip_level}, lz4 level 1.")
    print()
    print("| figure | command | time | written | ratio |")
    print("|---|---|---|---|---|")

    def line(key, ratio_text=""):
        r = rows.get(key)
        if r:
            extra = f" ({r['changed_blocks']} changed blocks)" if "changed_blocks" in r else ""
            print(f"| {r['what']}{extra} | `{r['command']}` | {r['seconds']:.2f} s "
                  f"| {r['written'] / MB:.1f} MB | {ratio_text} |")

    base = rows["basebackup"]
    line("basebackup", f"{db_bytes / MB / base['seconds']:.0f} MB/s")
    line("basebackup_zstd",
         f"time vs pg_basebackup plain {ratio(rows['basebackup_zstd']['seconds'], base['seconds'])}"
         if "basebackup_zstd" in rows else "")
    for codec in ("none", "gzip", "zstd", "lz4"):
        line(f"pgbackrest_full_{codec}")
    for key in ("full_none_1", "full_none", "full_gzip", "full_zstd", "full_lz4"):
        r = rows.get(key)
        if not r:
            continue
        codec = key.split("_")[1]
        text = f"{db_bytes / MB / r['seconds']:.0f} MB/s"
        if codec == "none":
            text += f"; time vs pg_basebackup {ratio(r['seconds'], base['seconds'])}"
        if codec == "zstd" and "basebackup_zstd" in rows:
            peer = rows["basebackup_zstd"]
            text += (f"; vs pg_basebackup server-zstd: time {ratio(r['seconds'], peer['seconds'])}"
                     f", bytes {ratio(r['written'], peer['written'])}")
        peer = rows.get(f"pgbackrest_full_{codec}")
        if peer:
            text += (f"; vs pgBackRest: time {ratio(r['seconds'], peer['seconds'])}, "
                     f"bytes {ratio(r['written'], peer['written'])}")
        line(key, text)
    line("pgbackrest_incr")
    for i in range(1, 4):
        r = rows.get(f"incr_{i}")
        if not r:
            continue
        st = r["stored"]
        must = r["changed_blocks"] * BLCKSZ + st["whole"] + r["wal_used"]
        text = (f"bytes vs needed {ratio(r['written'], must)} (changed blocks "
                f"{r['changed_blocks'] * BLCKSZ / MB:.1f} MB, whole files {st['whole'] / MB:.1f} MB, "
                f"WAL start to stop {r['wal_used'] / MB:.2f} MB; stored: incremental files "
                f"{st['incremental'] / MB:.1f} MB, WAL {st['wal'] / MB:.2f} MB); "
                f"time vs full {ratio(r['seconds'], rows['full_none']['seconds'])}")
        if i == 1 and "pgbackrest_incr" in rows:
            text += f"; bytes vs pgBackRest incr {ratio(r['written'], rows['pgbackrest_incr']['written'])}"
        peer = rows.get(f"pg_incr_{i}")
        if peer:
            text += (f"; vs pg_basebackup --incremental: time {ratio(r['seconds'], peer['seconds'])}"
                     f", bytes {ratio(r['written'], peer['written'])}")
        line(f"incr_{i}", text)
        line(f"pg_incr_{i}")
    if "restore" in rows:
        text = f"time vs cp -r + sync {ratio(rows['restore']['seconds'], rows['cp']['seconds'])}"
        if "combine" in rows:
            text += f"; vs pg_combinebackup {ratio(rows['restore']['seconds'], rows['combine']['seconds'])}"
        line("restore", text)
        line("cp")
        if "combine" in rows:
            line("combine", f"time vs cp -r + sync {ratio(rows['combine']['seconds'], rows['cp']['seconds'])}")
    print()
    print("$TMP is the run's temporary directory; every time is wall clock around the command "
          "(SQL through psql); `written` is bytes on disk (pg_basebackup: the directory; "
          "pgBackRest: `info` repository delta; take_backup: bytes_written).")


if __name__ == "__main__":
    main()
