"""Imbalanced few-shot data: does `class_weight="balanced"` reach the model?

Half the classes get `--major` training images each, the other half `--minor`
(the minority classes); the test set is balanced (`--test` per class), so its
accuracy is the balanced accuracy. Columns, on the same split:

- "none": `fine_tune`'s defaults, no class weights;
- "balanced": the defaults with `class_weight="balanced"`: each image weighs
  `n / (classes * count of its class)` in the loss and, since 2026-12-05, in
  the closed-form fits (the head's ridge start and the refit on every image
  that ends a run without validation data);
- "balanced before": the same, with the closed-form fits unweighted, as before
  that change (`tltf.schedule._row_weights` patched to return None: the
  weights then reach only the gradient steps, and the final refit drops them);
- "logreg pixels": logistic regression on the raw pixels (scikit-learn,
  `class_weight="balanced"`: `realdata.logreg_pixels`).

Each cell is the test accuracy, and for the three tltf columns also the
recall of the minority classes. Real data and weights as in
`benchmarks/realdata.py`, 64 px.

Usage:
    .venv/bin/python benchmarks/class_weight.py [--bases vgg16 demo] \
        [--tasks digits fonts textures mnist] [--major 20] [--minor 4] \
        [--seeds 0 1 2] [--weights-dir W]

The last line prints the mean accuracy of "balanced" over "balanced before".
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time
from unittest import mock

import keras
import numpy as np
import realdata

import tltf.schedule

COLUMNS = ("none", "balanced", "balanced before")


def imbalanced_split(x, y, major: int, minor: int, test: int, seed: int):
    """`major` training images for the first half of the classes, `minor` for
    the rest, and `test` test images for every class."""
    rng = np.random.default_rng(seed)
    classes = int(y.max()) + 1
    train, held = [], []
    for label in range(classes):
        k = major if label < classes // 2 else minor
        indices = rng.permutation(np.flatnonzero(y == label))
        train.append(indices[:k])
        held.append(indices[k : k + test])
    train, held = rng.permutation(np.concatenate(train)), np.concatenate(held)
    return (x[train], y[train]), (x[held], y[held])


def _tltf(base_name, weights_dir, train, test, seed, column):
    keras.utils.set_random_seed(seed)
    classes = int(test[1].max()) + 1
    base = realdata.benchmark_base(base_name, 64, weights_dir)
    model = tltf.build_model(base, classes)
    weights = None if column == "none" else "balanced"
    unweighted = column == "balanced before"
    with mock.patch.object(
        tltf.schedule,
        "_row_weights",
        (lambda *_: None) if unweighted else tltf.schedule._row_weights,
    ):
        tltf.fine_tune(model, train, class_weight=weights, seed=seed, verbose=0)
    predicted = np.argmax(model.predict(test[0], verbose=0), axis=-1)
    minority = test[1] >= classes // 2
    return (
        float(np.mean(predicted == test[1])),
        float(np.mean(predicted[minority] == test[1][minority])),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument(
        "--tasks", nargs="+", default=["digits", "fonts", "textures", "mnist"]
    )
    parser.add_argument("--major", type=int, default=20)
    parser.add_argument("--minor", type=int, default=4)
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir)
    rows = []
    for task in args.tasks:
        x, y = realdata.task_data(task, 64)
        for base_name in args.bases:
            for seed in args.seeds:
                train, test = imbalanced_split(
                    x, y, args.major, args.minor, args.test, seed
                )
                start = time.perf_counter()
                row = {
                    c: _tltf(base_name, weights_dir, train, test, seed, c)
                    for c in COLUMNS
                }
                row["logreg pixels"] = (
                    realdata.logreg_pixels(train, test, class_weight="balanced"),
                    None,
                )
                rows.append(row)
                cells = "  ".join(
                    f"{c}: {a:.3f}" + (f" (minority {m:.3f})" if m is not None else "")
                    for c, (a, m) in row.items()
                )
                print(
                    f"{task:8s} {base_name:6s} seed {seed}  {cells}  "
                    f"({time.perf_counter() - start:.0f}s)",
                    flush=True,
                )
    print()
    for column in (*COLUMNS, "logreg pixels"):
        accuracy = np.mean([r[column][0] for r in rows])
        minority = [r[column][1] for r in rows if r[column][1] is not None]
        tail = f", minority recall {np.mean(minority):.3f}" if minority else ""
        print(f"{column}: mean accuracy {accuracy:.3f}{tail}")
    now = np.mean([r["balanced"][0] for r in rows])
    before = np.mean([r["balanced before"][0] for r in rows])
    print(
        f"{len(rows)} runs; mean test accuracy, balanced / balanced before: "
        f"{now:.3f} / {before:.3f} = {now / before:.3f}x"
    )


if __name__ == "__main__":
    main()
