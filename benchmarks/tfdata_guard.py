"""The guard on a `tf.data.Dataset` input: its held-out slice, before and after.

Without validation data `fine_tune`'s guard holds a slice of the training images
out of both stages, scores stage 2 on it and hands it back at the end (section
"The held-out guard" of RESULTS.md). It did that for arrays and `load_data`
bundles only: a `tf.data.Dataset` (what `keras.utils.image_dataset_from_directory`
and `tfds.load` give) kept the older guard, the leave-one-out accuracy of the
training images' features, and no hand-back. Now a dataset that fits in
`tltf.guard.HOLDOUT_READ_BYTES` and gives the same images every pass is read
into memory and held out of like arrays.

Each run trains on the same split, k images per class, as:
- "arrays": the `(images, labels)` arrays (the defaults, as before);
- "tf.data, now": a batched `tf.data.Dataset` of them that reshuffles every pass;
- "tf.data, before": the same dataset with `keep_best="features"`, what the
  defaults did with a dataset before (no slice, no hand-back);
- "linear probe": the arrays with `fine_tune_epochs=0` (tltf's own linear probe).

Real data and weights as in `benchmarks/realdata.py`. `--arms` picks a subset.

Usage:
    .venv/bin/python benchmarks/tfdata_guard.py [--bases demo vgg16] \\
        [--weights-dir W] [--tasks digits fonts photos textures] [--k 10] \\
        [--seeds 0 1 2]

The last line prints the mean test accuracy of a dataset input now over before.
"""

from __future__ import annotations

import tltf  # noqa: F401  # isort: skip  (first: imports TensorFlow quietly)

import argparse
import time

import keras
import numpy as np
import realdata
import tensorflow as tf

ARMS = {
    "arrays": (False, {}),
    "tf.data, now": (True, {}),
    "tf.data, before": (True, {"keep_best": "features"}),
    "linear probe": (False, {"fine_tune_epochs": 0}),
}


def as_dataset(train, seed: int) -> tf.data.Dataset:
    """The training arrays as a user's pipeline gives them: reshuffled, batched."""
    x, y = train
    return (
        tf.data.Dataset.from_tensor_slices((x.astype("float32"), y))
        .shuffle(len(y), seed=seed, reshuffle_each_iteration=True)
        .batch(32)
    )


def run(name, weights_dir, train, test, seed, dataset: bool, settings) -> float:
    keras.utils.set_random_seed(seed)
    classes = int(np.max(test[1])) + 1
    model = tltf.build_model(realdata.benchmark_base(name, 64, weights_dir), classes)
    data = as_dataset(train, seed) if dataset else train
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
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    scores: dict[str, list[float]] = {arm: [] for arm in args.arms}
    print("| task | base | seed | " + " | ".join(args.arms) + " |")
    print("| --- | --- | --- |" + " --- |" * len(args.arms))
    for task in args.tasks:
        for name in args.bases:
            for seed in args.seeds:
                train, test = realdata.task_split(task, args.k, seed)
                cells = []
                for arm in args.arms:
                    dataset, settings = ARMS[arm]
                    start = time.perf_counter()
                    got = run(name, weights_dir, train, test, seed, dataset, settings)
                    scores[arm].append(got)
                    cells.append(f"{got:.3f} ({time.perf_counter() - start:.0f}s)")
                print(f"| {task} | {name} | {seed} | " + " | ".join(cells) + " |")
    means = {arm: float(np.mean(v)) for arm, v in scores.items()}
    print("means: " + ", ".join(f"{arm} {m:.4f}" for arm, m in means.items()))
    if "tf.data, now" in means and "tf.data, before" in means:
        now, before = means["tf.data, now"], means["tf.data, before"]
        print(
            f"mean test accuracy over {len(scores['tf.data, now'])} runs, "
            f"tf.data input now / before: {now:.4f} / {before:.4f} = "
            f"{now / before:.4f}x"
        )


if __name__ == "__main__":
    main()
