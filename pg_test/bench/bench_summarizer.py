#!/usr/bin/env python3
"""Benchmarks of the WAL summarizer on a real PostgreSQL 15 cluster.

Each figure is measured next to its peer in the same run, so that ratios
hold on a noisy machine:
  * catch-up: a WAL backlog written with summarization off, then the time
    for the worker to summarize it, against `pg_waldump --stats=record`
    over the same WAL (the floor: it decodes the same records);
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


def bench_catch_up(cluster, scale, wal_bytes_goal):
    extension.wait_for_summary(cluster, cluster.current_lsn())
    set_summarize(cluster, False)
    start = extension.status(cluster).summarized_lsn
    pgbench(cluster, "-i", "-q", "-s", str(scale))
    while parse_lsn(cluster.current_lsn()) - parse_lsn(start) < wal_bytes_goal:
        pgbench(cluster, "-n", "-c", "2", "-j", "2", "-T", "20")
    cluster.sql("SELECT pg_switch_wal()")
    end = cluster.sql_value("SELECT pg_current_wal_flush_lsn()")
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

    sums = [s for s in extension.summaries(cluster)
            if parse_lsn(s.start_lsn) >= parse_lsn(start) and parse_lsn(s.end_lsn) <= parse_lsn(end) + 64]
    summary_bytes = sum(s.size_bytes for s in sums)
    first, last = extension.boundaries_spanning(extension.summaries(cluster), start, end)
    rows_and_seconds = cluster.sql(
        "SELECT count(*), extract(epoch FROM clock_timestamp() - statement_timestamp()) "
        f"FROM blockbackup.changed_blocks('{first}', '{last}')")[0]
    return {
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
    with TestDir(prefix="pgbb-bench-") as td:
        cluster = td.cluster(settings=settings).initdb().start()
        extension.create_extension(cluster)
        catch_up = bench_catch_up(cluster, args.scale, int(args.wal_gb * 1024**3))
        on, off = bench_overhead(cluster, args.rounds, args.seconds)

    mb = 1024 * 1024
    c = catch_up
    print("| figure | pg_blockbackup | peer (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| catch-up over {c['wal_bytes'] / mb:.0f} MB of pgbench WAL | {c['summarize_s']:.2f} s "
          f"| pg_waldump --stats=record {c['waldump_s']:.2f} s | {c['summarize_s'] / c['waldump_s']:.2f}x |")
    print(f"| summary size | {c['summary_bytes'] / 1024:.0f} kB in {c['summaries']} files "
          f"| WAL {c['wal_bytes'] / mb:.0f} MB | {100 * c['summary_bytes'] / c['wal_bytes']:.4f}% |")
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
