"""A pytest plugin: where the test suite's CPU time goes.

Each test's CPU time in its pytest process (`time.process_time()`) and in the
child processes it waited for (`RUSAGE_CHILDREN`: the killed and resumed runs,
the CLI subprocesses, the distributed workers; not the notebooks' kernels, which
jupyter_client reaps outside the test) is appended to `pytest-cpu.<pid>.jsonl`
in `$TLTF_CPU_DIR` (default: the current folder), with the test's xdist worker,
its start and end (`time.time()`), and the seconds its process spent in the
garbage collector's full (generation 2) passes, and its process's peak resident
memory so far. Run as a script, it prints the totals by file, then per worker:
tests, the second its last test ended (from the first start of the run), its time
in full collections and its peak memory.

Usage (from the repository root):
    TLTF_CPU_DIR=/tmp/cpu PYTHONPATH=benchmarks .venv/bin/python -m pytest -n 2 -p pytest_cpu
    .venv/bin/python benchmarks/pytest_cpu.py /tmp/cpu
"""

from __future__ import annotations

import collections
import gc
import glob
import json
import os
import resource
import sys
import time

import pytest

#: Seconds this process has spent in full collections, and when the current one began.
_full = {"seconds": 0.0, "began": 0.0}


def _time_full_collections(phase, info):
    if info["generation"] == 2:
        if phase == "start":
            _full["began"] = time.perf_counter()
        else:
            _full["seconds"] += time.perf_counter() - _full["began"]


gc.callbacks.append(_time_full_collections)


def _children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    cpu, children, wall = time.process_time(), _children(), time.perf_counter()
    start, full = time.time(), _full["seconds"]
    yield
    row = {
        "id": item.nodeid,
        "cpu": time.process_time() - cpu,
        "children": _children() - children,
        "wall": time.perf_counter() - wall,
        "worker": os.environ.get("PYTEST_XDIST_WORKER", "main"),
        "start": start,
        "end": time.time(),
        "gc_full": _full["seconds"] - full,
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    folder = os.environ.get("TLTF_CPU_DIR", ".")
    with open(os.path.join(folder, f"pytest-cpu.{os.getpid()}.jsonl"), "a") as f:
        f.write(json.dumps(row) + "\n")


def summary(folder: str, top: int = 25) -> None:
    """Prints the CPU seconds by test file, largest first."""
    rows = []
    for path in glob.glob(os.path.join(folder, "pytest-cpu.*.jsonl")):
        with open(path) as f:
            rows += [json.loads(line) for line in f]
    by_file = collections.defaultdict(lambda: [0.0, 0.0, 0])
    for row in rows:
        entry = by_file[row["id"].split("::")[0]]
        entry[0] += row["cpu"]
        entry[1] += row["children"]
        entry[2] += 1
    cpu = sum(r["cpu"] for r in rows)
    children = sum(r["children"] for r in rows)
    print(f"{len(rows)} tests: {cpu:.0f} s in pytest, {children:.0f} s in children")
    ranked = sorted(by_file.items(), key=lambda kv: -(kv[1][0] + kv[1][1]))
    for name, (own, kids, n) in ranked[:top]:
        print(f"{own + kids:7.1f} s ({own:6.1f} + {kids:6.1f} children) {n:4d}  {name}")
    first = min(r["start"] for r in rows)
    for worker in sorted({r["worker"] for r in rows}):
        mine = [r for r in rows if r["worker"] == worker]
        last = max(r["end"] for r in mine) - first
        full = sum(r["gc_full"] for r in mine)
        peak = max(r.get("max_rss_mb", 0.0) for r in mine)
        print(
            f"{worker}: {len(mine)} tests, last ended at {last:.1f} s, "
            f"{full:.1f} s in full collections, peak memory {peak:.0f} MB"
        )


if __name__ == "__main__":
    summary(sys.argv[1] if len(sys.argv) > 1 else ".")
