"""Does `rank_bases` on a seeded sample rank bases as it does on every image?

`tltf.rank_bases` scores at most `max_images` images (default
`tltf.probe.PROBE_IMAGES`, 2,000): of a larger set, a seeded sample stratified
by class, the same images for every candidate. This benchmark ranks the five
candidates of `benchmarks/rank_bases.py` (the real VGG16, VGG16 cut after
block4, the demo base, the demo base cut in the middle, a random
MobileNetV3Small) on real tasks of 3,000 to 5,200 images (`benchmarks/realdata.py`:
5,000 MNIST digits, 5,200 letters rendered from matplotlib's fonts, 3,087
texture patches cut as 24-px tiles), once on every image (`max_images=None`)
and then on samples of several sizes and seeds. The Keras session is cleared
before each ranking, so that no ranking pays for the models of the ones before.

`--knn-sizes N ...` instead times the kNN score alone on N random 576-wide
features (the demo base's width) and reports the peak of the memory that numpy
allocated for it (`tracemalloc`): the similarities are computed a block of rows
at a time, so the peak grows with N, not with N squared.

Reported for each sample: each score's Kendall tau with the same score on every
image, whether its top candidate is the same, and the time. The last line is
the time of ranking every image over that of the default sample.

Usage:
    .venv/bin/python benchmarks/rank_sample.py --weights-dir /tmp/me/w \\
        [--tasks mnist fonts textures] [--sizes 500 1000 2000] [--seeds 0 1]
    .venv/bin/python benchmarks/rank_sample.py --knn-sizes 10000 60000
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import realdata
from rank_bases import SIZE, make_candidates

from tltf.probe import PROBE_IMAGES
from tltf.ranking import SCORES, kendall_tau, knn_accuracy

#: The tasks: `realdata`'s loaders, textures cut into smaller tiles (more images).
TASKS = {
    "mnist": realdata.mnist,
    "fonts": realdata.font_chars,
    "textures": lambda size: realdata.texture_patches(size, tile=24),
}


def compare(full, sampled) -> dict:
    """`{score: (tau, same top)}` of a sample's ranking against the full one."""
    names = [r["candidate"] for r in full.table]
    rows = {r["candidate"]: r for r in sampled.table}
    out = {}
    for score in SCORES:
        a = [r[score] for r in full.table]
        b = [rows[n][score] for n in names]
        out[score] = (
            kendall_tau(a, b),
            names[int(np.argmax(a))] == names[int(np.argmax(b))],
        )
    return out


def knn_cost(n: int) -> None:
    """Times `knn_accuracy` on `n` random features; prints its numpy peak."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(n, 576)).astype("float32")
    labels = rng.integers(0, 10, n)
    tracemalloc.start()
    start = time.perf_counter()
    knn_accuracy(features, labels, 5)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    whole = 2 * n * n * 8  # one n x n float64 matrix and its int64 argsort
    print(
        f"kNN on {n:,} examples: {seconds:.1f}s, numpy peak {peak / 2**20:,.0f} MiB "
        f"(the whole similarity matrix and its sort: {whole / 2**20:,.0f} MiB)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[500, 1000, PROBE_IMAGES]
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument("--knn-sizes", type=int, nargs="+", default=None)
    args = parser.parse_args()
    if args.knn_sizes:
        for n in args.knn_sizes:
            knn_cost(n)
        return
    weights_dir = realdata.weights_folder(args.weights_dir)
    bases = make_candidates(Path(tempfile.mkdtemp(prefix="tltf_rank_")), weights_dir, 0)
    results, seconds = [], {"all": 0.0}
    for task in args.tasks:
        x, y = TASKS[task](SIZE)
        keras.backend.clear_session()
        full = tltf.rank_bases(
            bases, (x, y), max_images=None, weights_dir=weights_dir, verbose=0
        )
        seconds["all"] += full.seconds
        print(f"\n== {task}: {len(y)} images, every image ({full.seconds:.0f}s)")
        print(full, flush=True)
        for size in args.sizes:
            for seed in args.seeds:
                keras.backend.clear_session()
                sampled = tltf.rank_bases(
                    bases,
                    (x, y),
                    max_images=size,
                    seed=seed,
                    weights_dir=weights_dir,
                    verbose=0,
                )
                seconds[size] = seconds.get(size, 0.0) + sampled.seconds / len(
                    args.seeds
                )
                found = compare(full, sampled)
                results.append((task, size, seed, found))
                print(
                    f"  sample {sampled.num_examples} (max_images={size}, seed {seed}, "
                    f"{sampled.seconds:.0f}s): "
                    + "; ".join(
                        f"{s} tau {t:+.2f}{'' if same else ' (other top)'}"
                        for s, (t, same) in found.items()
                    ),
                    flush=True,
                )
    print(
        "\n| max_images | "
        + " | ".join(f"{s}: mean tau, same top" for s in SCORES)
        + " | seconds |"
    )
    print("|---|" + "---|" * (len(SCORES) + 1))
    for size in args.sizes:
        runs = [r[3] for r in results if r[1] == size]
        cells = " | ".join(
            f"{np.mean([r[s][0] for r in runs]):+.2f}, "
            f"{sum(r[s][1] for r in runs)}/{len(runs)}"
            for s in SCORES
        )
        print(f"| {size} | {cells} | {seconds[size]:.0f} |")
    print(f"| all | | | | {seconds['all']:.0f} |")
    default = PROBE_IMAGES if PROBE_IMAGES in seconds else args.sizes[-1]
    print(
        f"ranking every image {seconds['all']:.0f}s vs a sample of {default} "
        f"{seconds[default]:.0f}s: {seconds['all'] / seconds[default]:.2f}x"
    )


if __name__ == "__main__":
    main()
