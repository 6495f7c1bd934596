"""Throughput of the procedural image generator in tltf.datasets, on one core.

Generates ``--n`` images (default 5,000 at 64x64) of a task with one CPU core and
prints images per second. The baseline is the *same* generator forced to render
one image at a time (``chunk_pixels=1``): identical maths and output, but no
vectorisation across images, which is what a straightforward per-image
implementation of these signed-distance renderers would do. The last line
prints the speed-up over that baseline.

Exits with status 1 if the throughput is below ``--min-rate`` (default 1,000
images/s).

Usage:
    python benchmarks/datasets_throughput.py [--task shapes_source] [--n 5000]
        [--size 64] [--baseline-n 500] [--min-rate 1000]
"""

from __future__ import annotations

import os

# One core: pin the process and keep every threaded library single-threaded.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from tltf import datasets  # noqa: E402


def _rate(
    task: str, n: int, size: int, repeats: int, chunk_pixels: int | None = None
) -> tuple[float, np.ndarray]:
    """Best images/s over ``repeats`` runs, and the images of the last run."""
    kwargs = {} if chunk_pixels is None else {"chunk_pixels": chunk_pixels}
    best = float("inf")
    images = np.empty(0)
    for _ in range(repeats):
        start = time.perf_counter()
        images, _ = datasets._generate(task, n, None, size, 0, **kwargs)
        best = min(best, time.perf_counter() - start)
    return n / best, images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default=datasets.SOURCE_TASK, choices=datasets.TASKS)
    parser.add_argument("--n", type=int, default=5000, help="images to generate")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument(
        "--baseline-n", type=int, default=500, help="images for the slow baseline"
    )
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed runs; the best counts"
    )
    parser.add_argument(
        "--min-rate", type=float, default=1000.0, help="fail below this images/s"
    )
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    print(f"task={args.task} size={args.size}px cores={cores} numpy={np.__version__}")
    datasets.make_images(args.task, n=64, image_size=args.size)  # warm-up

    rate, _ = _rate(args.task, args.n, args.size, args.repeats)
    print(
        f"vectorised: {args.n} images in {args.n / rate:.2f} s -> {rate:,.0f} images/s"
    )
    for task in datasets.TASKS:
        if task != args.task:
            other, _ = _rate(task, args.n // 5, args.size, 1)
            print(f"  ({task}: {other:,.0f} images/s)")

    m = max(1, min(args.baseline_n, args.n))
    base, slow = _rate(args.task, m, args.size, args.repeats, chunk_pixels=1)
    # The first m images of an n-image set differ from an m-image set (labels are
    # drawn for the whole set), so compare against a fresh m-image fast run.
    _, fast_m = _rate(args.task, m, args.size, 1)
    diff = int(np.abs(slow.astype(np.int16) - fast_m.astype(np.int16)).max())
    print(
        f"baseline (same generator, one image per batch): {base:,.0f} images/s; max pixel difference to vectorised output: {diff}"
    )

    ok = rate >= args.min_rate
    if not ok:
        print(
            f"FAIL: {rate:,.0f} images/s is below the required {args.min_rate:,.0f} images/s"
        )
    print(
        f"speed-up over one-image-at-a-time baseline: {rate / base:.1f}x ({rate:,.0f} vs {base:,.0f} images/s)"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
