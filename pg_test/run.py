#!/usr/bin/python3
"""Run the integration tests: every test_* function of every test_*.py here,
or only those named (function names or file names) on the command line.

  python3 pg_test/run.py                         # everything
  python3 pg_test/run.py test_oracles_selftest.py
  python3 pg_test/run.py test_bad_input test_crash_recovery
  python3 pg_test/run.py -test_s3.py             # everything but these

Each test is bounded by its module's TEST_TIMEOUT (seconds, default 600).
PGBB_KEEP=1 keeps the test directories for inspection.
Ends with the line `N passed, N failed[, N skipped]`; exit 1 if any failed.
"""
import importlib
import inspect
import os
import signal
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
DEFAULT_TIMEOUT = 600

from harness import SkipTest  # noqa: E402


class TestTimeout(Exception):
    pass


def test_modules():
    names = sorted(f[:-3] for f in os.listdir(HERE) if f.startswith("test_") and f.endswith(".py"))
    return [importlib.import_module(n) for n in names]


def collect(selected):
    tests = []
    for module in test_modules():
        funcs = [f for name, f in inspect.getmembers(module, inspect.isfunction)
                 if name.startswith("test_") and f.__module__ == module.__name__]
        funcs.sort(key=lambda f: f.__code__.co_firstlineno)
        for f in funcs:
            if not selected or f.__name__ in selected or f"{module.__name__}.py" in selected \
                    or module.__name__ in selected:
                tests.append((module, f))
    return tests


def _on_alarm(signum, frame):
    raise TestTimeout("test timed out")


def failure_reason(exc):
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if os.path.basename(f.filename).startswith("test_")]
    where = f" [{os.path.basename(frames[-1].filename)}:{frames[-1].lineno}]" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def run_one(module, func):
    timeout = getattr(module, "TEST_TIMEOUT", DEFAULT_TIMEOUT)
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(timeout)
    started = time.monotonic()
    try:
        func()
        return "PASS", None, time.monotonic() - started
    except SkipTest as exc:
        return "SKIP", str(exc), time.monotonic() - started
    except BaseException as exc:  # noqa: BLE001 - every failure is reported
        if isinstance(exc, KeyboardInterrupt):
            raise
        if os.environ.get("PGBB_TRACEBACK"):
            traceback.print_exc()
        return "FAIL", failure_reason(exc), time.monotonic() - started
    finally:
        signal.alarm(0)


def main(argv):
    # `-NAME` leaves a test (or a file's tests) out of the others.
    left_out = {a[1:] for a in argv if a.startswith("-")}
    selected = {a for a in argv if not a.startswith("-")}
    tests = [(m, f) for m, f in collect(selected)
             if f.__name__ not in left_out and f"{m.__name__}.py" not in left_out]
    selected |= left_out
    known = {f.__name__ for _, f in collect(set())} | {m.__name__ for m in test_modules()}
    unknown = {s for s in selected if s.removesuffix(".py") not in known}
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    for name in sorted(unknown):
        print(f"FAIL {name}: no such test", flush=True)
        counts["FAIL"] += 1
    for module, func in tests:
        print(f"---- {module.__name__}.{func.__name__}", flush=True)
        outcome, reason, secs = run_one(module, func)
        counts[outcome] += 1
        suffix = f": {reason}" if reason else ""
        print(f"{outcome} {func.__name__} ({secs:.1f}s){suffix}", flush=True)
    summary = f"{counts['PASS']} passed, {counts['FAIL']} failed"
    if counts["SKIP"]:
        summary += f", {counts['SKIP']} skipped"
    print(summary)
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
