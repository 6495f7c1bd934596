"""Sample weights: a clean source and a noisy one, weighed and not.

`fine_tune(model, (images, labels, sample_weights))` weighs each image in both
stages' loss, the closed-form fits and the guard's slice, as Keras's
`fit(x, y, sample_weight=w)` weighs its loss. The case a user has: images from
two sources, one labelled carefully and one labelled cheaply (a web search, a
weak model), and a weight that says how far to trust each.

Each run draws 2k training images per class of a real task: k keep their
labels (weight 1), and the other k are the cheap source, whose labels are
replaced by a random class with probability `--noise` (weight `--weight`, not
tuned: a user's guess). The arms, all with tltf's defaults:
- "weighted": the `(images, labels, sample_weights)` arrays;
- "weighted tf.data": the same as a reshuffled, batched `tf.data.Dataset` of
  `(image, label, weight)` (read into memory for the guard's slice);
- "unweighted": the same images and labels, every image alike;
- "clean only": the k careful images per class alone;
- "weighted probe" (only when `--arms` names it): the weighted arrays with
  `fine_tune_epochs=0`, stage 1's head alone (no guard, no hand-back).

Real data and weights as in `benchmarks/realdata.py`.

Usage:
    .venv/bin/python benchmarks/sample_weights.py [--bases demo vgg16] \\
        [--weights-dir W] [--tasks digits fonts photos textures] [--k 10] \\
        [--seeds 0 1 2] [--noise 0.6] [--weight 0.25]

The last line prints the mean test accuracy of "weighted" over "unweighted".
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata
import tensorflow as tf

ARMS = ("weighted", "weighted tf.data", "unweighted", "clean only", "weighted probe")
#: The arms run unless `--arms` names others.
DEFAULT_ARMS = ARMS[:4]


def two_sources(train, k: int, noise: float, weight: float, seed: int):
    """`(images, labels, weights)` with the cheap half's labels made noisy, and
    the mask of the careful half."""
    x, y = train
    rng = np.random.default_rng([seed, 17])
    careful = np.zeros(len(y), dtype=bool)
    for label in np.unique(y):
        careful[rng.permutation(np.flatnonzero(y == label))[:k]] = True
    noisy = y.copy()
    flip = ~careful & (rng.random(len(y)) < noise)
    noisy[flip] = rng.integers(0, int(y.max()) + 1, int(flip.sum()))
    w = np.where(careful, 1.0, weight).astype("float32")
    return (x, noisy, w), careful


def run(name, weights_dir, data, test, seed: int, dataset: bool, settings) -> float:
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(realdata.benchmark_base(name, 64, weights_dir), classes)
    if dataset:
        x, y, w = data
        data = (
            tf.data.Dataset.from_tensor_slices((x.astype("float32"), y, w))
            .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
            .batch(32)
        )
    tltf.fine_tune(model, data, seed=seed, verbose=0, **settings)
    return realdata.accuracy(model, *test)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo"])
    parser.add_argument(
        "--tasks", nargs="+", default=["digits", "fonts", "photos", "textures"]
    )
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--noise", type=float, default=0.6)
    parser.add_argument("--weight", type=float, default=0.25)
    parser.add_argument("--arms", nargs="+", default=list(DEFAULT_ARMS), choices=ARMS)
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores: dict[str, list[float]] = {arm: [] for arm in args.arms}
    print("| task | base | seed | " + " | ".join(args.arms) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.arms))
    for task in args.tasks:
        for name in args.bases:
            for seed in args.seeds:
                train, test = realdata.task_split(task, 2 * args.k, seed)
                (x, y, w), careful = two_sources(
                    train, args.k, args.noise, args.weight, seed
                )
                inputs = {
                    "weighted": ((x, y, w), False, {}),
                    "weighted tf.data": ((x, y, w), True, {}),
                    "unweighted": ((x, y), False, {}),
                    "clean only": ((x[careful], y[careful]), False, {}),
                    "weighted probe": ((x, y, w), False, {"fine_tune_epochs": 0}),
                }
                cells = []
                for arm in args.arms:
                    data, dataset, settings = inputs[arm]
                    start = time.perf_counter()
                    got = run(name, weights_dir, data, test, seed, dataset, settings)
                    scores[arm].append(got)
                    cells.append(f"{got:.3f} ({time.perf_counter() - start:.0f}s)")
                print(
                    f"| {task} | {name} | {seed} | " + " | ".join(cells) + " |",
                    flush=True,
                )
    means = {arm: float(np.mean(v)) for arm, v in scores.items()}
    print("means: " + ", ".join(f"{arm} {m:.4f}" for arm, m in means.items()))
    if "weighted" in means and "unweighted" in means:
        now, alike = means["weighted"], means["unweighted"]
        print(
            f"mean test accuracy over {len(scores['weighted'])} runs, weighted / "
            f"unweighted: {now:.4f} / {alike:.4f} = {now / alike:.4f}x"
        )


if __name__ == "__main__":
    main()
