"""Integration-test harness for pg_blockbackup: clusters, workload and oracles."""


class SkipTest(Exception):
    """Raise from a test to skip it (counted as skipped by run.py, not failed)."""
