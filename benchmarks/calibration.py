"""Calibration of `fine_tune`'s defaults on a real binary task: accuracy and log-loss.

Faces against other patches (scikit-image's `lfw_subset`, `realdata.faces`), k
training images per class, every other image for testing, 64 px, a one-sigmoid
head (`task="binary"`). Columns, on the same split: tltf's defaults, and tltf's
linear probe (the same call with `fine_tune_epochs=0`: the head alone, from its
ridge start); on request (`--columns`), "features guard": the defaults with
`keep_best="features"` (stage 2 judged by leave-one-out on every training
image's features instead of a held-out slice). Each prints the test accuracy and the test log-loss (binary
cross-entropy of the predicted probabilities; lower is better).

The features separate the two classes of a few images perfectly: this is where
the ridge start's temperature had no finite optimum (see `_temperature` in
`tltf/schedule.py`). To compare with an earlier commit, run this file with that
commit's tltf first on the path (`PYTHONPATH=<checkout of the commit>`).

Usage:
    .venv/bin/python benchmarks/calibration.py [--bases demo vgg16] [--k 5 10 20] \
        [--seeds 0 1 2] [--weights-dir DIR] [--columns "tltf defaults" ...]

The last line prints the mean test log-loss of the defaults over the probe's.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse

import keras
import numpy as np
import realdata

COLUMNS = {
    "tltf defaults": {},
    "linear probe": {"fine_tune_epochs": 0},
    "features guard": {"keep_best": "features"},
}


def scores(model, test) -> tuple[float, float]:
    """Test accuracy and log-loss of a one-sigmoid model."""
    p = np.clip(model.predict(test[0], verbose=0)[:, 0], 1e-7, 1 - 1e-7)
    y = test[1]
    nll = -np.mean(np.where(y == 1, np.log(p), np.log(1 - p)))
    return float(np.mean((p > 0.5) == y)), float(nll)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--columns",
        nargs="+",
        default=["tltf defaults", "linear probe"],
        choices=list(COLUMNS),
    )
    args = parser.parse_args()
    if len(args.columns) < 2:
        parser.error(
            "--columns: give two or more (the last line compares the first two)"
        )
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    x, y = realdata.faces(64)
    rows = []
    for base in args.bases:
        for k in args.k:
            for seed in args.seeds:
                train, test = realdata.few_shot(x, y, k, seed)
                row = {}
                for name in args.columns:
                    settings = COLUMNS[name]
                    keras.utils.set_random_seed(seed)
                    model = tltf.build_model(
                        realdata.benchmark_base(base, 64, weights_dir), task="binary"
                    )
                    tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
                    row[name] = scores(model, test)
                rows.append(row)
                cells = "  ".join(
                    f"{name}: {acc:.3f} (log-loss {nll:.3f})"
                    for name, (acc, nll) in row.items()
                )
                print(f"faces {base:6s} k={k:<3d} seed {seed}  {cells}", flush=True)
    means = {c: np.mean([r[c] for r in rows], axis=0) for c in args.columns}
    print(
        f"{len(rows)} runs; means: "
        + ", ".join(f"{c} {a:.3f} (log-loss {n:.3f})" for c, (a, n) in means.items())
    )
    (first, ours), (second, theirs) = [(c, means[c][1]) for c in args.columns[:2]]
    print(
        f"mean test log-loss, {first} / {second}: {ours:.3f} / {theirs:.3f} "
        f"= {ours / theirs:.2f}x"
    )


if __name__ == "__main__":
    main()
