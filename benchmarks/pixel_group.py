"""A raw-pixel group in the head: the closed-form head with and without it.

The default head reads every block of the base, and its ridge start weighs the
blocks by their own leave-one-out accuracy (`tltf.probe.group_weights`). Where
the base adds little (scikit-learn's digits on the demo base, at k = 5), the
defaults lose to logistic regression on the pixels. This script asks whether a
group of raw pixels (the image average-pooled to `side` x `side`, RGB,
standardised like the blocks) among the head's groups would fix that without
costing elsewhere. It compares, on the same split, the test accuracy of the
closed-form head (`group_weights` on the standardised features, as the ridge
start computes it) without the group and with it at 8, 16 and 32 px. No
gradient step is taken: this is the head stage 1 starts from, and the one the
guard's hand-back refits.

Real data and weights as in `benchmarks/realdata.py`, 64 px, k images per class
for training, 30 per class for the test.

Usage:
    .venv/bin/python benchmarks/pixel_group.py [--bases demo vgg16] \
        [--tasks digits fonts textures] [--k 5 10 20] [--seeds 0 1 2]

Each row: the test accuracy and leave-one-out accuracy without the group, then
for each side the test accuracy, the leave-one-out accuracy and the weight the
pixel group got. The last line prints the mean test accuracy with the 8-px
group over that without it.
"""

from __future__ import annotations

import tltf  # isort: skip  (first: imports TensorFlow quietly)

import argparse

import keras
import numpy as np
import realdata

from tltf.probe import group_weights

SIDES = (8, 16, 32)


def pooled_pixels(images: np.ndarray, side: int) -> np.ndarray:
    """The images average-pooled to `side` x `side` (RGB), one row each."""
    x = np.asarray(images, dtype="float32")
    factor = x.shape[1] // side
    rows = x.reshape(len(x), side, factor, side, factor, 3).mean(axis=(2, 4))
    return rows.reshape(len(x), -1)


def _standardise(train: np.ndarray, test: np.ndarray, epsilon: float = 1e-3):
    mean, scale = train.mean(axis=0), 1 / (train.std(axis=0) + epsilon)
    return (train - mean) * scale, (test - mean) * scale


def closed_form(z, y, z_test, y_test, widths, classes):
    """`(test accuracy, leave-one-out accuracy, group weights)` of the ridge start."""
    chosen = group_weights(z, y, classes, widths)
    columns = np.repeat(chosen.weights, widths)
    scores = (z_test * columns) @ chosen.fit.weights + chosen.fit.prior
    return (
        float(np.mean(scores.argmax(axis=1) == y_test)),
        float(np.mean(chosen.fit.loo.argmax(axis=1) == y)),
        chosen.weights,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bases", nargs="+", default=["demo", "vgg16"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "fonts", "textures"])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 20])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--weights-dir", default=None)
    args = parser.parse_args()
    weights_dir = realdata.weights_folder(args.weights_dir, args.bases)
    rows = []
    for name in args.bases:
        for task in args.tasks:
            for k in args.k:
                for seed in args.seeds:
                    (x, y), (xt, yt) = realdata.task_split(task, k, seed, 30)
                    classes = int(y.max()) + 1
                    base = realdata.benchmark_base(name, 64, weights_dir)
                    model = tltf.build_model(base, classes)
                    groups = keras.Model(
                        model.inputs, model.get_layer("head_pool").input
                    )
                    train = groups.predict(x, batch_size=64, verbose=0)
                    test = groups.predict(xt, batch_size=64, verbose=0)
                    widths = [int(a.shape[1]) for a in train]
                    z, zt = _standardise(
                        np.concatenate(train, axis=1), np.concatenate(test, axis=1)
                    )
                    accuracy, loo, _ = closed_form(z, y, zt, yt, widths, classes)
                    row = [accuracy, loo]
                    for side in SIDES:
                        p, pt = _standardise(
                            pooled_pixels(x, side), pooled_pixels(xt, side)
                        )
                        accuracy, loo, weights = closed_form(
                            np.concatenate([z, p], axis=1),
                            y,
                            np.concatenate([zt, pt], axis=1),
                            yt,
                            [*widths, p.shape[1]],
                            classes,
                        )
                        row += [accuracy, loo, float(weights[-1])]
                    rows.append(row)
                    print(
                        f"{name:6} {task:8} k={k:<3} seed {seed}  none "
                        f"{row[0]:.3f} (loo {row[1]:.3f})  "
                        + "  ".join(
                            f"{side}px {row[2 + 3 * i]:.3f} (loo "
                            f"{row[3 + 3 * i]:.3f}, weight {row[4 + 3 * i]:.2f})"
                            for i, side in enumerate(SIDES)
                        ),
                        flush=True,
                    )
    table = np.array(rows)
    print(
        f"{len(rows)} runs; mean test accuracy: none {table[:, 0].mean():.4f}, "
        + ", ".join(
            f"{side}px {table[:, 2 + 3 * i].mean():.4f}" for i, side in enumerate(SIDES)
        )
    )
    print(
        "mean test accuracy of the closed-form head, with the 8-px pixel group / "
        f"without: {table[:, 2].mean():.4f} / {table[:, 0].mean():.4f} = "
        f"{table[:, 2].mean() / table[:, 0].mean():.3f}x"
    )


if __name__ == "__main__":
    main()
