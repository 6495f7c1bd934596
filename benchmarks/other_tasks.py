"""Regression and multi-label on real images: `fine_tune`'s defaults against baselines.

Two tasks built from real images (`benchmarks/realdata.py`), at 64 px:

- "angle" (regression): a letter in one of matplotlib's fonts, rotated by a
  random angle in [-45, 45] degrees; the target is the angle. Scored by the
  test RMSE in degrees (lower is better; predicting the mean scores about 26).
- "pairs" (multi-label): two of scikit-learn's handwritten digits side by
  side; the labels are the digits present. Scored by the test mean average
  precision over the ten labels (higher is better); each row also prints the
  micro-F1 at a threshold of 0.5.

Columns, each on the same split:

- "tltf defaults": `build_model` + `fine_tune` with every default (a ridge
  start of the head, the held-out guard with its hand-back);
- "tltf before": the same without the ridge start and the guard
  (`head_init="random"`, `keep_best=False`) and with the top third of the
  blocks unfrozen: what the defaults did for these tasks before they covered
  them;
- "linear probe": tltf's closed-form head alone (`head_steps=0`,
  `fine_tune_epochs=0`);
- "keras.io recipe": the recipe of `benchmarks/defaults.py` with a linear
  output and mean squared error, or sigmoid outputs and binary cross-entropy;
- "pixels": scikit-learn on the grayscale pixels: ridge regression, or one
  logistic regression per label, the strength chosen by cross-validation.

More on request (`--columns`): "top third" (the defaults, but the top third of
the blocks unfrozen, as `unfreeze="auto"` did for these tasks before the probe
scored them by R²); and, behind the choice not to hold a slice out for
multi-label by default, "ridge, no guard" (`keep_best=False`) and "random,
holdout" (`head_init="random"`, `keep_best="holdout"`: the slice without the
ridge start and its closed-form hand-back), "ridge, holdout"
(`keep_best="holdout"`) and "stage 1" (`fine_tune_epochs=0`: the head trained
from the ridge start, no fine-tuning), "closed-form stage 1" (`head_steps=0`:
stage 2 starts from the ridge head), "500 head steps" (`head_steps=500`) and
"no head L2" (`head_l2=0`: the head trains without the L2 penalty of its
ridge start, as the defaults did before it), "stage 1, no head L2" and
"features guard" (`keep_best="features"`: stage 2 scored by the leave-one-out
R² of the features of every training image, instead of a held-out slice), and
"small-set rule" (the defaults with `tltf.settings.LARGE_SET_IMAGES` out of
reach: from 1,000 training images the defaults fine-tune every block at 3e-4,
this column the probe's depth at 1e-4, as below 1,000).

Two sources (`--cheap P`): half of the training images, drawn at random, are
a cheaply labelled source whose targets are each replaced, with probability P,
by the targets of another training image; they weigh 0.25, the careful half 1.
Every column then trains on the noisy targets, and three more can be asked
for: "weighted" (the defaults on `(images, targets, sample_weights)`),
"careful only" (the defaults on the careful half alone) and "weighted probe"
(the linear probe, weighted).

Usage:
    .venv/bin/python benchmarks/other_tasks.py [--bases demo vgg16] \
        [--tasks angle pairs] [--n 50 200] [--seeds 0 1 2] [--test 300] \
        [--cheap 0.6 --columns weighted "tltf defaults" "careful only"]

The last line prints, over all runs, tltf's mean score over the recipe's (for
"angle", the recipe's RMSE over tltf's, so that above 1 means tltf is better);
with `--cheap`, the weighted defaults' over the unweighted ones', the same way;
with "small-set rule" and without the recipe, the defaults' over that
column's.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time
from unittest import mock

import keras
import numpy as np
import realdata
from defaults import recipe_model

import tltf.settings
from tltf.probe import sigmoid

COLUMNS = ("tltf defaults", "tltf before", "linear probe", "keras.io recipe", "pixels")
#: Stands for the top third of the base's blocks (at least one).
TOP_THIRD = "top third"
SETTINGS = {
    "tltf defaults": {},
    "tltf before": {"head_init": "random", "keep_best": False, "unfreeze": TOP_THIRD},
    "top third": {"unfreeze": TOP_THIRD},
    "linear probe": {"head_steps": 0, "fine_tune_epochs": 0},
    "ridge, no guard": {"keep_best": False},
    "ridge, holdout": {"keep_best": "holdout"},
    "stage 1": {"fine_tune_epochs": 0},
    "closed-form stage 1": {"head_steps": 0},
    "500 head steps": {"head_steps": 500},
    "no head L2": {"head_l2": 0},
    "stage 1, no head L2": {"fine_tune_epochs": 0, "head_l2": 0},
    "features guard": {"keep_best": "features"},
    "random, holdout": {"head_init": "random", "keep_best": "holdout"},
}
#: Columns of `fine_tune`'s defaults under a patched `tltf.settings` value:
#: "small-set rule" puts `LARGE_SET_IMAGES` out of reach, so that a training set
#: of 1,000 images or more gets what every smaller one gets (the probe's depth,
#: at 1e-4) instead of every block at 3e-4.
PATCHED = {"small-set rule": ("LARGE_SET_IMAGES", 2**62)}
#: Columns of `--cheap` runs: the data each trains on, and its settings.
TWO_SOURCES = {
    "weighted": ("weighted", {}),
    "careful only": ("careful", {}),
    "weighted probe": ("weighted", {"head_steps": 0, "fine_tune_epochs": 0}),
}
#: The weight of the cheap source's images.
CHEAP_WEIGHT = 0.25
TASKS = {
    "angle": ("regression", realdata.rotated_letters),
    "pairs": ("multilabel", realdata.digit_pairs),
}


def score(task: str, predictions: np.ndarray, targets: np.ndarray) -> float:
    """RMSE (angle) or the mean average precision over labels (pairs)."""
    from sklearn.metrics import average_precision_score

    if task == "angle":
        return float(np.sqrt(np.mean((predictions.reshape(-1) - targets) ** 2)))
    return float(average_precision_score(targets > 0.5, predictions, average="macro"))


def micro_f1(predictions: np.ndarray, targets: np.ndarray) -> float:
    """Micro-averaged F1 of multi-label probabilities at a threshold of 0.5."""
    hit, truth = predictions > 0.5, targets > 0.5
    return float(2 * np.sum(hit & truth) / max(1, np.sum(hit) + np.sum(truth)))


def two_sources(train, noise: float, seed: int):
    """The training data with a cheap half: `{"noisy": (x, t), "weighted":
    (x, t, w), "careful": (x, t) of the careful half}`."""
    x, t = train
    rng = np.random.default_rng([seed, 23])
    cheap = np.zeros(len(t), dtype=bool)
    cheap[rng.permutation(len(t))[: len(t) // 2]] = True
    swap = cheap & (rng.random(len(t)) < noise)
    noisy = t.copy()
    noisy[swap] = t[rng.integers(0, len(t), int(swap.sum()))]
    w = np.where(cheap, CHEAP_WEIGHT, 1.0).astype("float32")
    return {
        "noisy": (x, noisy),
        "weighted": (x, noisy, w),
        "careful": (x[~cheap], noisy[~cheap]),
    }


def _tltf(name, weights_dir, kind, train, test, seed, settings):
    keras.utils.set_random_seed(seed)
    base = realdata.benchmark_base(name, 64, weights_dir)
    units = 1 if kind == "regression" else train[1].shape[1]
    model = tltf.build_model(base, units, task=kind)
    if settings.get("unfreeze") == TOP_THIRD:
        blocks = len(tltf.model_info(model).block_map)
        settings = {**settings, "unfreeze": max(1, blocks // 3)}
    tltf.fine_tune(model, train, seed=seed, verbose=0, **settings)
    return model.predict(test[0], batch_size=64, verbose=0)


def _recipe(name, weights_dir, kind, train, test, seed):
    keras.utils.set_random_seed(seed)
    base = realdata.benchmark_base(name, 64, weights_dir)
    if kind == "regression":
        loss, units = keras.losses.MeanSquaredError(), 1
    else:
        loss, units = keras.losses.BinaryCrossentropy(from_logits=True), 10
    model = recipe_model(base, units, train, 10, 10, loss, metrics=[])
    out = model.predict(test[0], batch_size=64, verbose=0)
    return out if kind == "regression" else sigmoid(out)


def _pixels(kind, train, test):
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import GridSearchCV
    from sklearn.multiclass import OneVsRestClassifier
    from threadpoolctl import threadpool_limits

    def gray(images):
        return (np.asarray(images).mean(axis=-1) / 255.0).reshape(len(images), -1)

    x, xt = gray(train[0]), gray(test[0])
    with threadpool_limits(1):
        if kind == "regression":
            model = RidgeCV(alphas=np.logspace(-3, 4, 15)).fit(x, train[1])
            return model.predict(xt)
        search = GridSearchCV(
            OneVsRestClassifier(LogisticRegression(max_iter=2000)),
            {"estimator__C": [0.01, 0.1, 1.0, 10.0]},
            cv=3,
            scoring="f1_micro",
        )
        search.fit(x, train[1].astype(int))
        return search.predict_proba(xt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--n", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--test", type=int, default=300)
    parser.add_argument("--weights-dir", default=None)
    parser.add_argument(
        "--columns",
        nargs="+",
        default=list(COLUMNS),
        choices=[*COLUMNS, *SETTINGS, *PATCHED, *TWO_SOURCES],
    )
    parser.add_argument("--cheap", type=float, default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for task in args.tasks:
        kind, make = TASKS[task]
        for n in args.n:
            for seed in args.seeds:
                x, y = make(n + args.test, seed=seed)
                train, test = (x[:n], y[:n]), (x[n:], y[n:])
                sources = None
                if args.cheap is not None:
                    sources = two_sources(train, args.cheap, seed)
                    train = sources["noisy"]
                for name in args.bases:
                    row = {"task": task, "base": name, "n": n, "seed": seed}
                    parts = []
                    for column in args.columns:
                        start = time.perf_counter()
                        if column in TWO_SOURCES:
                            data, settings = TWO_SOURCES[column]
                            out = _tltf(
                                name,
                                weights_dir,
                                kind,
                                sources[data],
                                test,
                                seed,
                                settings,
                            )
                        elif column in SETTINGS:
                            out = _tltf(
                                name,
                                weights_dir,
                                kind,
                                train,
                                test,
                                seed,
                                SETTINGS[column],
                            )
                        elif column in PATCHED:
                            with mock.patch.object(tltf.settings, *PATCHED[column]):
                                out = _tltf(
                                    name, weights_dir, kind, train, test, seed, {}
                                )
                        elif column == "keras.io recipe":
                            out = _recipe(name, weights_dir, kind, train, test, seed)
                        else:
                            out = _pixels(kind, train, test)
                        out = np.asarray(out)
                        row[column] = score(task, out, test[1])
                        f1 = ""
                        if kind == "multilabel":
                            f1 = f", F1 {micro_f1(out, test[1]):.3f}"
                        parts.append(
                            f"{column}: {row[column]:.3f}{f1} "
                            f"({time.perf_counter() - start:.0f}s)"
                        )
                    rows.append(row)
                    print(
                        f"{task:6} {name:6} n={n:<4} seed {seed}  " + "  ".join(parts),
                        flush=True,
                    )
    for task in args.tasks:
        for name in args.bases:
            sel = [r for r in rows if r["task"] == task and r["base"] == name]
            print(
                f"mean {task:6} {name:6} "
                + "  ".join(
                    f"{c}: {np.mean([r[c] for r in sel]):.3f}" for c in args.columns
                )
            )
    ratios = []
    other = "keras.io recipe" if args.cheap is None else "tltf defaults"
    if other not in args.columns and "small-set rule" in args.columns:
        other = "small-set rule"  # a large set's rule against the smaller sets'
    ours_column = "tltf defaults" if args.cheap is None else "weighted"
    for r in rows:
        ours, theirs = r.get(ours_column), r.get(other)
        if ours is not None and theirs is not None:
            ratios.append(theirs / ours if r["task"] == "angle" else ours / theirs)
    if ratios:
        print(
            f"{len(rows)} runs; mean ratio, {ours_column} over {other} "
            f"(RMSE inverted, so above 1 is better): {np.mean(ratios):.3f}x"
        )


if __name__ == "__main__":
    main()
