"""Width balance in the ridge start: the head with it and without it.

The ridge start of stage 1 weighs the head's groups of features (each block the
head reads, and the raw-pixel group where the gate turns it on) by
`tltf.probe.group_weights`. Since 2026-12-05 each group's columns are also
scaled by one over the square root of its width, so that every group brings the
same total variance to the ridge: on standardised columns a group's variance
grows with its width, and VGG16's two top blocks (512 columns each) otherwise
drown its 64-column first block. This script runs each split twice in one
process, with the balance (as shipped) and without it (`group_weights(...,
balance=False)`, the head before), and changes nothing else:

- `--head closed` (the default): the closed-form head alone (`prepare_head`, no
  gradient step: the head stage 1 starts from and the one the guard's hand-back
  refits); seconds a split.
- `--head fine_tune`: `build_model` + `fine_tune` with every default, seeded.

Real data and weights as in `benchmarks/realdata.py`, 64 px, k images per class
for training, `--test` per class for the test.

Usage:
    .venv/bin/python benchmarks/width_balance.py [--head closed] \
        [--bases demo vgg16] [--tasks digits fonts textures mnist faces] \
        [--k 5 10 20] [--seeds 0 1 2] [--test 30]

Each row prints both test accuracies and logistic regression on the pixels. The
last line prints the mean test accuracy with the balance over that without it.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import functools
import time

import keras
import numpy as np
import realdata

import tltf.schedule
from tltf.cache import feature_model
from tltf.probe import group_weights
from tltf.schedule import prepare_head


def _accuracy(head, name, weights_dir, train, test, seed, balance) -> float:
    """Test accuracy of one head, with or without the width balance."""
    tltf.schedule.group_weights = functools.partial(group_weights, balance=balance)
    try:
        keras.utils.set_random_seed(seed)
        classes = int(max(train[1].max(), test[1].max())) + 1
        model = tltf.build_model(
            realdata.benchmark_base(name, 64, weights_dir), classes
        )
        if head == "closed":
            part = feature_model(model)  # the head's input: what stage 1 caches
            features = part.predict(train[0].astype("float32"), verbose=0)
            prepare_head(model, features, train[1])
        else:
            tltf.fine_tune(model, train, seed=seed, verbose=0)
        return realdata.accuracy(model, *test)
    finally:
        tltf.schedule.group_weights = group_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", choices=("closed", "fine_tune"), default="closed")
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument(
        "--tasks", nargs="+", default=["digits", "fonts", "textures", "mnist", "faces"]
    )
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test", type=int, default=30, help="test images per class")
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for task in args.tasks:
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.task_split(task, k, seed, args.test)
                    start = time.perf_counter()
                    before, after = (
                        _accuracy(args.head, name, weights_dir, train, test, seed, b)
                        for b in (False, True)
                    )
                    pixels = realdata.logreg_pixels(train, test)
                    rows.append((task, name, before, after, pixels))
                    print(
                        f"{task:8s} {name[-12:]:12s} k={k:<3d} seed {seed}  "
                        f"unbalanced {before:.3f}  balanced {after:.3f}  "
                        f"logreg pixels {pixels:.3f}  "
                        f"({time.perf_counter() - start:.0f}s)",
                        flush=True,
                    )
    for task in args.tasks:
        for name in args.bases:
            sel = [r[2:] for r in rows if r[:2] == (task, name)]
            b, a, p = np.mean(sel, axis=0)
            print(
                f"mean {task:8s} {name[-12:]:12s} unbalanced {b:.3f}  "
                f"balanced {a:.3f}  logreg pixels {p:.3f}"
            )
    table = np.array([r[2:] for r in rows])
    change = table[:, 1] - table[:, 0]
    print(
        f"{len(rows)} runs: balanced higher in {int(np.sum(change > 0))}, level in "
        f"{int(np.sum(change == 0))}, lower in {int(np.sum(change < 0))} (from "
        f"{100 * change.min():+.1f} to {100 * change.max():+.1f} points); below "
        f"logistic regression on the pixels: {int(np.sum(table[:, 0] < table[:, 2]))}"
        f" unbalanced, {int(np.sum(table[:, 1] < table[:, 2]))} balanced"
    )
    before, after = table[:, 0].mean(), table[:, 1].mean()
    print(
        f"mean test accuracy, balanced / unbalanced: {after:.4f} / {before:.4f} = "
        f"{after / before:.3f}x"
    )


if __name__ == "__main__":
    main()
