"""Assertions comparing the extension's answer with the two oracles."""
from . import extension, pagelsn, waldump
from .lsn import format_lsn, parse_lsn
from .relpath import FSM

SAMPLE = 8


def _sample(items):
    items = sorted(items)
    more = f" ... (+{len(items) - SAMPLE} more)" if len(items) > SAMPLE else ""
    return f"{items[:SAMPLE]}{more}"


def _without_fsm_limits(limits):
    """FSM limits are not part of the contract (the FSM is always copied whole)."""
    return {k: v for k, v in limits.items() if k[3] != FSM}


def diff_blocks(expected, actual):
    problems = []
    if expected - actual:
        problems.append(f"{len(expected - actual)} blocks in WAL but not in changed_blocks: "
                        f"{_sample(expected - actual)}")
    if actual - expected:
        problems.append(f"{len(actual - expected)} blocks in changed_blocks but not in WAL: "
                        f"{_sample(actual - expected)}")
    return problems


def diff_limits(expected, actual):
    expected, actual = _without_fsm_limits(expected), _without_fsm_limits(actual)
    wrong = {k: (expected.get(k), actual.get(k)) for k in expected.keys() | actual.keys()
             if expected.get(k) != actual.get(k)}
    if not wrong:
        return []
    shown = _sample(f"{k}: waldump {e} ext {a}" for k, (e, a) in wrong.items())
    return [f"{len(wrong)} limit blocks differ: {shown}"]


def check_waldump_oracle(cluster, start, end, timeline=1):
    """Oracle 1 both ways for summary boundaries start..end; returns the model."""
    model = waldump.expected_changes(cluster.wal_dir, start, end, timeline)
    actual_blocks = extension.changed_blocks(cluster, start, end)
    actual_limits = extension.changed_limits(cluster, start, end)
    problems = diff_blocks(model.blocks, actual_blocks) + diff_limits(model.limits, actual_limits)
    if problems:
        raise AssertionError(f"oracle 1 (pg_waldump) {start}..{end}: " + "; ".join(problems))
    return model


def check_pagelsn_oracle(cluster, start, end):
    """Oracle 2: pages on disk with start < pd_lsn <= end are all covered."""
    cluster.sql("CHECKPOINT")
    blocks = extension.changed_blocks(cluster, start, end)
    limits = extension.changed_limits(cluster, start, end)
    missing = pagelsn.uncovered_pages(cluster.datadir, parse_lsn(start), parse_lsn(end),
                                      blocks, limits)
    if missing:
        shown = _sample((k, b, format_lsn(lsn)) for k, b, lsn in missing)
        raise AssertionError(f"oracle 2 (page LSN) {start}..{end}: {len(missing)} pages "
                             f"changed on disk but not reported: {shown}")


def check_both_oracles(cluster, start, end, timeline=1):
    check_waldump_oracle(cluster, start, end, timeline)
    check_pagelsn_oracle(cluster, start, end)
