#!/usr/bin/env python3
"""Benchmarks of the WAL summarizer on a real PostgreSQL cluster (15 by
default; PG_BIN chooses another).

Each figure is measured next to its peer in the same run, so that ratios
hold on a noisy machine:
  * catch-up: a WAL backlog written with summarization off, then the time
    for the worker to summarize it, against `pg_waldump --stats=record`
    over the same WAL (the floor: it decodes the same records) and, on 17
    and later, against PostgreSQL's own summarizer (`summarize_wal`, off
    while the backlog is written, turned on after ours has caught up), with
    the size of its summaries;
  * overhead: pgbench TPS with the worker on and off, alternating;
  * memory: the worker's peak RSS during the catch-up;
  * size: summary bytes per WAL byte;
  * query rate: rows per second of changed_blocks() over the backlog.

Usage: python3 pg_test/bench/bench_summarizer.py [--scale N] [--wal-gb G]
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from harness import extension  # noqa: E402
from harness.cluster import TestDir, pg_bin, run, wait_until  # noqa: E402
from harness.lsn import parse_lsn  # noqa: E402


def pgbench(cluster, *args, timeout=3600):
    argv = [pg_bin("pgbench"), "-h", cluster.sockdir, "-p", str(cluster.port), *args, "postgres"]
    return run(argv, as_postgres=True, timeout=timeout).stdout


def tps_of(output):
    for line in output.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    raise AssertionError(f"no tps in pgbench output:\n{output}")


def set_summarize(cluster, on):
    cluster.sql(f"ALTER SYSTEM SET blockbackup.summarize_wal = {'on' if on else 'off'}; "
                "SELECT pg_reload_conf()")
    wait_until(lambda: (extension.summarizer_pid(cluster) is not None) == on, 30,
               what=f"summarizer {'on' if on else 'off'}")


def peak_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def timed(fn):
    began = time.monotonic()
    result = fn()
    return time.monotonic() - began, result


def server_major():
    out = run([pg_bin("pg_config"), "--version"]).stdout
    return int(out.split()[1].split(".")[0])


def set_builtin_summarize(cluster, on):
    cluster.sql(f"ALTER SYSTEM SET summarize_wal = {'on' if on else 'off'}; "
                "SELECT pg_reload_conf()")
    wait_until(lambda: (builtin_state(cluster)[2] > 0) == on, 30,
               what=f"built-in summarizer {'on' if on else 'off'}")


def builtin_state(cluster):
    """(summarized_lsn, pending_lsn, pid) of PostgreSQL's own summarizer."""
    row = cluster.sql("SELECT summarized_lsn, pending_lsn, summarizer_pid "
                      "FROM pg_get_wal_summarizer_state()")[0]
    return row[0], row[1], int(row[2]) if row[2] else 0


def wait_builtin_summarized(cluster, lsn):
    """Polls inside the server (every 10 ms) until the built-in summarizer
    has written summaries up to `lsn`."""
    cluster.sql("DO $$ BEGIN WHILE (SELECT summarized_lsn FROM pg_get_wal_summarizer_state()) "
                f"< '{lsn}'::pg_lsn LOOP PERFORM pg_sleep(0.01); END LOOP; END $$", timeout=3600)


def builtin_summary_bytes(cluster, start, end):
    """Bytes and count of the built-in summary files inside [start, end]."""
    total = count = 0
    summaries_dir = os.path.join(cluster.wal_dir, "summaries")
    for name in os.listdir(summaries_dir):
        if not name.endswith(".summary") or len(name) != 48:
            continue
        first = (int(name[8:16], 16) << 32) | int(name[16:24], 16)
        last = (int(name[24:32], 16) << 32) | int(name[32:40], 16)
        if first >= parse_lsn(start) and last <= parse_lsn(end):
            total += os.path.getsize(os.path.join(summaries_dir, name))
            count += 1
    return total, count


def redo_point_of_checkpoint(cluster):
    cluster.sql("CHECKPOINT")
    return cluster.sql_value("SELECT redo_lsn FROM pg_control_checkpoint()")


def bench_catch_up(cluster, scale, wal_bytes_goal, builtin):
    # Both summarizers have summaries up to a checkpoint's redo point (ours
    # ends one there on 17+; before 17 after the checkpoint record, a few
    # bytes on), then are turned off: each resumes where its summaries end,
    # and the figures cover the summaries from there to the backlog's end.
    first = redo_point_of_checkpoint(cluster)
    extension.wait_for_summary(cluster, first)
    if builtin:
        wait_builtin_summarized(cluster, first)
        set_builtin_summarize(cluster, False)
    set_summarize(cluster, False)
    start = first if builtin else extension.status(cluster).summarized_lsn
    pgbench(cluster, "-i", "-q", "-s", str(scale))
    while parse_lsn(cluster.current_lsn()) - parse_lsn(start) < wal_bytes_goal:
        pgbench(cluster, "-n", "-c", "2", "-j", "2", "-T", "20")
    end = redo_point_of_checkpoint(cluster)
    wal_bytes = parse_lsn(end) - parse_lsn(start)

    waldump_s, _ = timed(lambda: run([pg_bin("pg_waldump"), "--stats=record", "-p",
                                      cluster.wal_dir, "-s", start, "-e", end],
                                     as_postgres=True, timeout=3600))
    began = time.monotonic()
    set_summarize(cluster, True)
    pid = extension.summarizer_pid(cluster)
    extension.wait_for_summary(cluster, end, timeout_ms=3_600_000)
    summarize_s = time.monotonic() - began
    rss_kb = peak_rss_kb(pid)
    result = {}
    if builtin:
        began = time.monotonic()
        set_builtin_summarize(cluster, True)
        builtin_pid = builtin_state(cluster)[2]
        wait_builtin_summarized(cluster, end)
        result["builtin_s"] = time.monotonic() - began
        result["builtin_rss_kb"] = peak_rss_kb(builtin_pid)
        result["builtin_bytes"], result["builtin_summaries"] = \
            builtin_summary_bytes(cluster, start, end)
        set_builtin_summarize(cluster, False)

    sums = [s for s in extension.summaries(cluster)
            if parse_lsn(s.start_lsn) >= parse_lsn(start) and parse_lsn(s.end_lsn) <= parse_lsn(end) + 64]
    summary_bytes = sum(s.size_bytes for s in sums)
    first, last = extension.boundaries_spanning(extension.summaries(cluster), start, end)
    rows_and_seconds = cluster.sql(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - statement_timestamp()) "
        f"FROM blockbackup.changed_blocks('{first}', '{last}')")[0]
    return {
        **result,
        "wal_bytes": wal_bytes,
        "waldump_s": waldump_s,
        "summarize_s": summarize_s,
        "rss_kb": rss_kb,
        "summaries": len(sums),
        "summary_bytes": summary_bytes,
        "changed_rows": int(rows_and_seconds[0]),
        "changed_s": float(rows_and_seconds[1]),
    }


def bench_overhead(cluster, rounds, seconds):
    on, off = [], []
    for i in range(rounds):
        for state, samples in ((True, on), (False, off)) if i % 2 == 0 else ((False, off), (True, on)):
            set_summarize(cluster, state)
            samples.append(tps_of(pgbench(cluster, "-n", "-c", "2", "-j", "2", "-T", str(seconds))))
    set_summarize(cluster, True)
    return on, off


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--wal-gb", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=20)
    args = parser.parse_args()

    settings = {"shared_buffers": "1GB", "max_wal_size": "16GB", "wal_keep_size": "16GB",
                "checkpoint_timeout": "5min", "synchronous_commit": "off", "autovacuum": "off"}
    builtin = server_major() >= 17
    if builtin:
        settings["summarize_wal"] = "on"
    with TestDir(prefix="pgbb-bench-") as td:
        cluster = td.cluster(settings=settings).initdb().start()
        extension.create_extension(cluster)
        catch_up = bench_catch_up(cluster, args.scale, int(args.wal_gb * 1024**3), builtin)
        on, off = bench_overhead(cluster, args.rounds, args.seconds)

    mb = 1024 * 1024
    c = catch_up
    print("| figure | pg_blockbackup | peer (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| catch-up over {c['wal_bytes'] / mb:.0f} MB of pgbench WAL | {c['summarize_s']:.2f} s "
          f"| pg_waldump --stats=record {c['waldump_s']:.2f} s | {c['summarize_s'] / c['waldump_s']:.2f}x |")
    if builtin:
        print(f"| catch-up, PostgreSQL's own summarizer | {c['builtin_s']:.2f} s "
              f"| pg_waldump --stats=record {c['waldump_s']:.2f} s "
              f"| {c['builtin_s'] / c['waldump_s']:.2f}x (ours: {c['summarize_s'] / c['builtin_s']:.2f}x "
              f"the built-in's time) |")
    print(f"| summary size | {c['summary_bytes'] / 1024:.0f} kB in {c['summaries']} files "
          f"| WAL {c['wal_bytes'] / mb:.0f} MB | {100 * c['summary_bytes'] / c['wal_bytes']:.4f}% |")
    if builtin:
        print(f"| summary size, PostgreSQL's own | {c['builtin_bytes'] / 1024:.0f} kB in "
              f"{c['builtin_summaries']} files | ours {c['summary_bytes'] / 1024:.0f} kB "
              f"| ours {c['summary_bytes'] / c['builtin_bytes']:.2f}x the built-in's |")
        print(f"| built-in summarizer peak RSS (VmHWM) during catch-up "
              f"| {c['builtin_rss_kb'] / 1024:.1f} MB | | |")
    print(f"| worker peak RSS (VmHWM) during catch-up | {c['rss_kb'] / 1024:.1f} MB "
          f"| blockbackup.summarizer_max_memory 64 MB | |")
    rate = c["changed_rows"] / c["changed_s"] if c["changed_s"] else float("inf")
    print(f"| changed_blocks() over the backlog | {c['changed_rows']} rows in {c['changed_s']:.3f} s "
          f"| | {rate / 1e6:.2f} M rows/s |")
    on_m, off_m = statistics.median(on), statistics.median(off)
    print(f"| pgbench TPS, worker on vs off ({args.rounds} alternating rounds of {args.seconds} s) "
          f"| {on_m:.0f} (samples {', '.join(f'{x:.0f}' for x in on)}) "
          f"| off {off_m:.0f} (samples {', '.join(f'{x:.0f}' for x in off)}) "
          f"| {100 * (off_m - on_m) / off_m:+.2f}% overhead |")


if __name__ == "__main__":
    main()
