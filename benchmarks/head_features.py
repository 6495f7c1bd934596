"""Which blocks should the head read? Ridge classifiers on each feature set.

For each real task and base (see `benchmarks/realdata.py`), k images per class
and 30 test images per class, one forward pass pools every block of the base
(`HeadConfig(pool_from=<every block>)`), the features are standardised on the
training images, and `tltf.probe.ridge_fit` (L2 chosen by leave-one-out) is fitted
on each candidate feature set, then scored on the test images:

- "top": the top block only (the keras.io head);
- "three depths": the top block and the blocks at 1/2 and 3/4 of the depth
  (`pool_from="auto"` before it read every block);
- "every block": every block at equal weight (`pool_from="auto"` now);
- "half weight": every block, those below the top at half weight;
- "best single": the one block with the best leave-one-out accuracy.

This measures the head's starting point (the ridge start of `fine_tune`), not the
end of fine-tuning: `benchmarks/defaults.py --real` does that.

Usage:
    .venv/bin/python benchmarks/head_features.py [--bases vgg16 demo] \
        [--tasks digits fonts textures] [--seeds 0 1] [--k 10]

The last line prints the mean test accuracy of "every block" divided by that of
"three depths" (the previous default).
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse

import numpy as np
import realdata

from tltf.cache import feature_extractor
from tltf.heads import HeadConfig
from tltf.probe import ridge_fit

CANDIDATES = ("top", "three depths", "every block", "half weight", "best single")


def _features(model, x) -> np.ndarray:
    extract = feature_extractor(model)
    return np.concatenate(
        [extract(x[i : i + 64]).numpy() for i in range(0, len(x), 64)]
    )


def _score(z_train, y_train, z_test, y_test, classes, weights):
    fit = ridge_fit(z_train * weights, y_train, classes)
    loo = float(np.mean(fit.loo.argmax(axis=1) == y_train))
    predicted = ((z_test * weights) @ fit.weights + fit.prior).argmax(axis=1)
    return loo, float(np.mean(predicted == y_test))


def run(base, x, y, k: int, seed: int) -> dict[str, float]:
    """Test accuracy of each candidate feature set on one split."""
    classes = int(y.max()) + 1
    names = base.block_map.names
    model = tltf.build_model(base, classes, head=HeadConfig(pool_from=tuple(names)))
    widths = [int(t.shape[-1]) for t in model.get_layer("head_pool").input]
    block = np.repeat(np.arange(len(widths)), widths)
    (x_train, y_train), (x_test, y_test) = realdata.few_shot(x, y, k, seed, 30)
    f_train = _features(model, x_train.astype("float32"))
    f_test = _features(model, x_test.astype("float32"))
    mean, std = f_train.mean(axis=0), f_train.std(axis=0) + 1e-3
    z_train, z_test = (f_train - mean) / std, (f_test - mean) / std
    top = len(widths) - 1
    three = {int(f * top + 0.5) for f in (0.5, 0.75)} | {top}

    def score(weights):
        return _score(z_train, y_train, z_test, y_test, classes, weights)

    singles = [score((block == b).astype(float)) for b in range(len(widths))]
    return {
        "top": singles[top][1],
        "three depths": score(np.isin(block, list(three)).astype(float))[1],
        "every block": score(np.ones(len(block)))[1],
        "half weight": score(np.where(block == top, 1.0, 0.5))[1],
        "best single": max(singles, key=lambda s: s[0])[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["vgg16", "demo"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for task in args.tasks:
        x, y = realdata.task_data(task)
        for name in args.bases:
            for seed in args.seeds:
                base = realdata.benchmark_base(name, 64, weights_dir)
                row = run(base, x, y, args.k, seed)
                rows.append((name, row))
                cells = "  ".join(f"{c}: {row[c]:.3f}" for c in CANDIDATES)
                print(f"{task:8s} {name:6s} seed {seed}  {cells}", flush=True)
    for name in args.bases:
        sel = [r for b, r in rows if b == name]
        cells = "  ".join(
            f"{c}: {np.mean([r[c] for r in sel]):.3f}" for c in CANDIDATES
        )
        print(f"mean {name:6s} ({len(sel)} runs)  {cells}")
    every = np.mean([r["every block"] for _, r in rows])
    three = np.mean([r["three depths"] for _, r in rows])
    print(
        "mean test accuracy, every block / three depths: "
        f"{every:.3f} / {three:.3f} = {every / three:.2f}x"
    )


if __name__ == "__main__":
    main()
