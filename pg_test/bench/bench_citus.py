#!/usr/bin/env python3
"""Benchmark of take_cluster_backup on a real Citus cluster (a coordinator
and two workers on this machine), every figure next to its peer measured in
the same run, on the same data:

  * each node holds pgbench tables of `--scale` (local to the node), so the
    three have about the same data; each node's take_backup('full') alone,
    one after the other, against take_cluster_backup('full') of all three
    (the ratio to the slowest single node is the figure);
  * while pgbench clients run the bank's transfers across workers (each
    committed by two-phase commit), `--sets` cluster backups, each
    reporting how long distributed commits were held up by its restore
    point (commits_blocked_ms: from asking for Citus's locks to their
    release), and the transfers' largest latency in the same seconds.

Usage: python3 pg_test/bench/bench_citus.py [--scale 30] [--sets 5] [--compression lz4]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from harness import backup as bk  # noqa: E402
from harness import citus  # noqa: E402
from harness.cluster import TestDir, quote_literal  # noqa: E402
from harness.workload import pgbench_argv  # noqa: E402


def cpu_times():
    """The machine's (busy, iowait) CPU seconds so far, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    tick = os.sysconf("SC_CLK_TCK")
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / tick, iowait / tick


def timed(fn, cores=None):
    """(seconds, result) of fn(); with `cores` a dict, also the cores it kept
    busy on average and the cores' share of the time waiting on the disk."""
    busy0, wait0 = cpu_times()
    began = time.monotonic()
    result = fn()
    seconds = time.monotonic() - began
    if cores is not None:
        busy1, wait1 = cpu_times()
        cores["busy"] = round((busy1 - busy0) / seconds, 2)
        cores["iowait"] = round((wait1 - wait0) / seconds, 2)
    return seconds, result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--sets", type=int, default=5)
    parser.add_argument("--compression", default=None,
                        help="blockbackup.compression on every node (default: the extension's)")
    args = parser.parse_args()
    with TestDir(prefix="pgbb-bench-citus-") as td:
        cc = citus.CitusCluster(td, workers=2)
        citus.create_bank(cc.coordinator)
        for node in cc.nodes:
            subprocess.run(pgbench_argv(node, "-i", "-q", "-s", str(args.scale)), check=True,
                           capture_output=True, timeout=1800)
            node.sql("CHECKPOINT")
            if args.compression:
                node.sql(f"ALTER SYSTEM SET blockbackup.compression = {quote_literal(args.compression)}; "
                         "SELECT pg_reload_conf()")
        singles, single_cores = {}, {}
        for node in cc.nodes:
            name = os.path.basename(node.root)
            single_cores[name] = {}
            seconds, _ = timed(lambda: bk.take_backup(node, "full", timeout=3600),
                               single_cores[name])
            singles[name] = round(seconds, 2)
        cluster_cores = {}
        cluster_seconds, rows = timed(lambda: cc.coordinator.sql(
            "SELECT node, status FROM blockbackup.take_cluster_backup('full')", timeout=3600),
            cluster_cores)
        assert all(r[1] == "DONE" for r in rows), rows

        script = citus.transfer_script(td)
        log_prefix = os.path.join(td.subdir("pgbench_log"), "transfers")
        bench = subprocess.Popen(pgbench_argv(cc.coordinator, "-n", "-c", "4", "-T", "3600",
                                              "-D", "accounts=200", "-f", script, "-l",
                                              "--log-prefix", log_prefix),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                 cwd=os.path.dirname(log_prefix))
        try:
            time.sleep(3)
            for _ in range(args.sets):
                cc.coordinator.sql("SELECT status FROM blockbackup.take_cluster_backup('auto')",
                                   timeout=3600)
                time.sleep(1)
        finally:
            bench.terminate()
            bench.communicate(timeout=120)
        blocked = [float(v) for (v,) in cc.coordinator.sql(
            "SELECT commits_blocked_ms FROM blockbackup.cluster_backups() "
            "WHERE mode = 'auto' ORDER BY start_time")]
        latencies = []
        log_dir = os.path.dirname(log_prefix)
        for name in os.listdir(log_dir):
            with open(os.path.join(log_dir, name)) as f:
                # The last line may be cut short where pgbench was stopped.
                latencies += [int(fields[2]) / 1000.0 for fields in map(str.split, f)
                              if len(fields) >= 3 and fields[2].isdigit()]
        latencies.sort()
        slowest = max(singles.values())
        print(json.dumps({
            "scale_per_node": args.scale,
            "compression": args.compression or "default",
            "single_node_full_s": singles,
            "single_node_cores": single_cores,
            "cluster_full_s": round(cluster_seconds, 2),
            "cluster_cores": cluster_cores,
            "machine_cores": os.cpu_count(),
            "cluster_over_slowest_single": round(cluster_seconds / slowest, 2),
            # The nodes share this machine's cores and disk: what they did
            # together against what they did one after the other.
            "cluster_over_sum_of_singles": round(cluster_seconds / sum(singles.values()), 2),
            "cluster_cpu_over_singles_cpu": round(
                cluster_cores["busy"] * cluster_seconds
                / sum(single_cores[n]["busy"] * singles[n] for n in singles), 2),
            "sets_under_load": args.sets,
            "commits_blocked_ms": blocked,
            "commits_blocked_ms_max": max(blocked) if blocked else None,
            "transfers": len(latencies),
            "transfer_latency_ms_p50": latencies[len(latencies) // 2] if latencies else None,
            "transfer_latency_ms_max": latencies[-1] if latencies else None,
        }, indent=2))


if __name__ == "__main__":
    main()
