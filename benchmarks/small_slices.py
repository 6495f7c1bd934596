"""The guard on tasks with few classes: a held-out slice of a few images.

`fine_tune`'s guard (`keep_best=True`) holds out a stratified slice of the
training images (a fifth of each class, at least one image) and keeps the best
of stage 1 and every stage-2 epoch by their loss on it. With two or three
classes and k images per class, that slice is 2 to 12 images. This benchmark
runs, on the same splits: tltf's defaults, `keep_best="features"` (stage 2
judged by the leave-one-out accuracy of a ridge probe on every training
image's features; no slice), and tltf's linear probe (`fine_tune_epochs=0`).

Tasks: scikit-image's faces (`realdata.faces`, binary), and the first two and
the first three classes of the multi-class real tasks (`digits:0,1` takes
classes 0 and 1 of `realdata.digits`, relabelled from 0). A two-class task
trains a one-sigmoid head (`task="binary"`), as keras.io's binary recipe does.

Usage:
    .venv/bin/python benchmarks/small_slices.py [--bases demo vgg16] [--k 5 10] \
        [--seeds 0 1 2] [--tasks faces digits:0,1 ...] [--weights-dir DIR] \
        [--columns "tltf defaults" "features guard" "linear probe"]

The last line prints the mean test accuracy of the first column over the last.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

from tltf.guard import holdout_rows

COLUMNS = {
    "tltf defaults": {},
    "features guard": {"keep_best": "features"},
    "linear probe": {"fine_tune_epochs": 0},
}
TASKS = [
    "faces",
    "digits:0,1",
    "digits:0,1,2",
    "fonts:0,1",
    "fonts:0,1,2",
    "textures:0,1",
    "textures:0,1,2",
]


def task(spec: str, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The images and labels of "name" or "name:i,j,...", classes relabelled."""
    name, _, classes = spec.partition(":")
    x, y = realdata.task_data(name, size)
    if not classes:
        return x, y
    keep = [int(c) for c in classes.split(",")]
    rows = np.isin(y, keep)
    relabel = {c: i for i, c in enumerate(keep)}
    return x[rows], np.array([relabel[int(c)] for c in y[rows]], dtype="int64")


def task_kind(y: np.ndarray) -> str:
    """ "binary" for labels of two classes (a one-sigmoid head), else "multiclass"."""
    return "binary" if int(y.max()) == 1 else "multiclass"


def seeded_model(base: str, y: np.ndarray, seed: int, weights_dir):
    """A fresh model for labels `y` on a benchmark base, after seeding Keras."""
    keras.utils.set_random_seed(seed)
    kind = task_kind(y)
    classes = None if kind == "binary" else int(y.max()) + 1
    return tltf.build_model(
        realdata.benchmark_base(base, 64, weights_dir), classes, task=kind
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tasks", nargs="+", default=TASKS)
    parser.add_argument("--test", type=int, default=60, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--columns", nargs="+", default=list(COLUMNS), choices=list(COLUMNS)
    )
    args = parser.parse_args()
    if len(args.columns) < 2:
        parser.error("--columns: give two or more (the last line compares them)")
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for spec in args.tasks:
        x, y = task(spec)
        kind = task_kind(y)
        for base in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, args.test)
                    row, started = {}, time.perf_counter()
                    for name in args.columns:
                        model = seeded_model(base, y, seed, weights_dir)
                        tltf.fine_tune(
                            model, train, seed=seed, verbose=0, **COLUMNS[name]
                        )
                        row[name] = realdata.accuracy(model, *test)
                    rows.append(row)
                    held = len(holdout_rows(train[1], seed, kind)[1])
                    cells = "  ".join(f"{c}: {a:.3f}" for c, a in row.items())
                    print(
                        f"{spec:15s} {base:6s} k={k:<3d} seed {seed}  slice {held:2d}  "
                        f"{cells}  ({time.perf_counter() - started:.0f} s)",
                        flush=True,
                    )
    means = {c: float(np.mean([r[c] for r in rows])) for c in args.columns}
    print(
        f"{len(rows)} runs; means: "
        + ", ".join(f"{c} {a:.3f}" for c, a in means.items())
    )
    first, last = args.columns[0], args.columns[-1]
    print(
        f"mean test accuracy, {first} / {last}: {means[first]:.3f} / "
        f"{means[last]:.3f} = {means[first] / means[last]:.3f}x"
    )


if __name__ == "__main__":
    main()
